#!/usr/bin/env python3
"""One line per target of a hearth-loadgen scenario run, then the targets' CPU per
forwarded packet as multiples of the floor's.

usage: summary.py OUT_DIR SCENARIO TARGET...

Reads OUT_DIR/SCENARIO-TARGET.json (hearth-loadgen --json). "µs/pkt" is the server's CPU
(utime+stime from /proc/PID/stat, averaged over the hold) per packet the participants
received, the same for every target: hearth, janus, floor (floor_forwarder.c, one sendto
per copy) and floor-mmsg (the same with sendmmsg).
"""
import json
import sys


def load(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except Exception as e:  # noqa: BLE001 - a missing or partial report is a row, not a crash
        return e


def load_counters(path):
    """The key=value counters floor_forwarder prints at exit."""
    try:
        with open(path, encoding="utf-8") as f:
            line = f.read().strip()
    except OSError:
        return None
    return dict(kv.split("=", 1) for kv in line.split() if "=" in kv)


def us_per_pkt(r):
    cpu = r["server"].get("cpu_pct_avg") or 0
    pps = r["throughput"]["pps_in"] or 0
    return cpu * 10000 / pps if pps > 0 and cpu > 0 else None


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    out, name, targets = sys.argv[1], sys.argv[2], sys.argv[3:]
    cost = {}
    for target in targets:
        r = load(f"{out}/{name}-{target}.json")
        if isinstance(r, Exception):
            print(f"{name:<22} {target:<10} no report ({r})")
            continue
        s = r["server"]; t = r["throughput"]; l = r["latency_ms"]
        cpu = s.get("cpu_pct_avg") or 0
        us = us_per_pkt(r)
        cost[target] = us
        print(f"{name:<22} {target:<10} joined {r['participants_joined']:>5}/{r['participants_planned']:<5} "
              f"loss {r['loss_pct']:6.3f}%  p50 {l['p50']:7.3f} ms  p99 {l['p99']:8.3f} ms  p99.9 {l['p999']:8.3f} ms  "
              f"out {t['pps_in']:8.0f} pkt/s  cpu {cpu:5.1f}%  {us or 0:6.2f} µs/pkt  rss {s.get('rss_mb_peak') or 0:6.1f} MB  "
              f"join p95 {r['join_ms']['p95']:.0f} ms  loadgen cpu {s.get('loadgen_cpu_pct_avg') or 0:.0f}%")
    for target in targets:
        # The forwarder's own count of copies sent (whole run) against what the participants
        # expected and received: a difference is lost after its sendto, in the generator's
        # socket buffer (UDP RcvbufErrors), and inflates its µs/pkt by as much.
        r = load(f"{out}/{name}-{target}.json")
        counters = load_counters(f"{out}/{name}-{target}.counters")
        if isinstance(r, Exception) or not counters:
            continue
        p = r["packets"]
        print(f"{name:<22} {target:<10} forwarder: received {counters.get('in', '?')}, sent {counters.get('out', '?')} "
              f"copies ({counters.get('send_errors', '?')} send errors, {counters.get('mode', '?')}); participants "
              f"expected {p['expected']}, received {p['received']} ({p['lost']} lost after the forwarder)")
    for floor in ("floor", "floor-mmsg"):
        base = cost.get(floor)
        if not base:
            continue
        others = [f"{t} {cost[t] / base:.2f}x" for t in targets
                  if t not in ("floor", "floor-mmsg") and cost.get(t)]
        if others:
            print(f"{name:<22} per forwarded packet, as multiples of {floor} ({base:.2f} µs/pkt): "
                  + ", ".join(others))


if __name__ == "__main__":
    main()
