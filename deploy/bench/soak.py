#!/usr/bin/env python3
"""Soak and allocator runs against a real `hearth` node (release build), for BENCHMARKS.md.

  deploy/bench/soak.py soak  [--duration 2h] [--sample 60] [--out DIR]
      Mixed meetings with participants joining and leaving continuously: two lanes of
      hearth-loadgen runs, each run a fresh set of meetings (new seed) that ramps up, holds
      and leaves, the lanes staggered so that some meetings always start while others end.
      Lane A: audio rooms (4 participants, one speaker); lane B: video meetings (4 x 8).
      Every --sample seconds: the node's RSS, open files, threads, actors
      (`hearthctl tree`), meetings, participants and CPU per forwarded packet over the
      interval. After the load: the same for three minutes of idle, compared with the idle
      values before the load. Writes DIR/soak.csv and DIR/soak.txt.

  deploy/bench/soak.py billing [--rounds 3] [--repeats 2] [--pg-url URL] [--out DIR]
      The node's media CPU with usage metering on (SQLite; PostgreSQL too with --pg-url)
      versus off (--no-ledger), the same binary, in alternation: ROUNDS rounds of 40
      four-person audio meetings and ROUNDS of 8 four-person video meetings, the server's
      CPU per forwarded packet for each, and the ledger rows written. Writes DIR/billing.txt.

  deploy/bench/soak.py alloc [--rounds 4] [--out DIR] BIN...
      For each binary (e.g. target/alloc/hearth-system, -jemalloc, -mimalloc), twice in
      alternation: idle RSS, ROUNDS rounds of 40 four-person audio meetings (160
      participants) with the server's CPU per forwarded packet, then RSS 5 s, 30 s and 60 s
      after the last meeting ended. Writes DIR/alloc.txt.

The node runs on CPU 0, the load generator on CPU 1 (taskset). Environment: LOADGEN,
HEARTHCTL (default target/release/...).
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

KEY, SECRET = "APIsoak", "soak-secret-0123456789abcdef"
LOADGEN = os.environ.get("LOADGEN", "target/release/hearth-loadgen")
HEARTHCTL = os.environ.get("HEARTHCTL", "target/release/hearthctl")
TICKS = os.sysconf("SC_CLK_TCK")


def parse_duration(s):
    units = {"s": 1, "m": 60, "h": 3600}
    return int(s[:-1]) * units[s[-1]] if s[-1] in units else int(s)


class Node:
    def __init__(self, binary, port, out, empty_timeout="5s", extra=(), data="data"):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(os.path.join(out, f"node-{port}.log"), "w")
        self.proc = subprocess.Popen(
            ["taskset", "-c", "0", binary, "--http", f"127.0.0.1:{port}", "--media-port", "0",
             "--turn-port", "0", "--api-key", KEY, "--api-secret", SECRET,
             "--empty-timeout", empty_timeout, "--data-dir", os.path.join(out, data), *extra],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                urllib.request.urlopen(self.url + "/readyz", timeout=1).read()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{binary} did not become ready")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()

    def metrics(self):
        text = urllib.request.urlopen(self.url + "/metrics", timeout=5).read().decode()
        out = {}
        for line in text.splitlines():
            if line.startswith("#") or " " not in line:
                continue
            name, value = line.rsplit(" ", 1)
            try:
                out[name] = float(value)
            except ValueError:
                pass
        return out

    def proc_stats(self):
        pid = self.proc.pid
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / TICKS
        status = {}
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                status[k] = v.strip()
        rss = int(status["VmRSS"].split()[0])
        threads = int(status["Threads"])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        return cpu, rss, threads, fds

    def actors(self):
        try:
            out = subprocess.run(
                [HEARTHCTL, "--url", self.url, "--api-key", KEY, "--api-secret", SECRET,
                 "--json", "tree"], capture_output=True, text=True, timeout=10).stdout
            return len(json.loads(out).get("actors", []))
        except (subprocess.SubprocessError, ValueError):
            return -1


def loadgen(node, args, seed, json_path=None, local_net=None):
    cmd = ["taskset", "-c", "1", LOADGEN, "--url", node.url, "--api-key", KEY,
           "--api-secret", SECRET, "--server-pid", str(node.proc.pid), "--seed", str(seed)]
    if json_path:
        cmd += ["--json", json_path]
    if local_net:
        cmd += ["--local-net", local_net]
    return subprocess.run(cmd + args, capture_output=True, text=True)


def sample(node, prev):
    cpu, rss, threads, fds = node.proc_stats()
    m = node.metrics()
    pkts = m.get("hearth_media_packets_out_total", 0.0)
    row = {
        "t": round(time.time()), "rss_kib": rss, "fds": fds, "threads": threads,
        "actors": node.actors(), "meetings": int(m.get("hearth_meetings", 0)),
        "participants": int(m.get("hearth_participants", 0)),
        "pkts_out": int(pkts), "cpu_s": round(cpu, 2), "cpu_us_per_pkt": "",
        # The machine's 1-minute load average: above ~2 something else shared the cores
        # (a build), and that interval's CPU per packet is not comparable.
        "loadavg": open("/proc/loadavg").read().split()[0],
    }
    if prev and pkts > prev["pkts_out"]:
        row["cpu_us_per_pkt"] = round((cpu - prev["cpu_s"]) * 1e6 / (pkts - prev["pkts_out"]), 2)
    return row


def soak(a):
    os.makedirs(a.out, exist_ok=True)
    node = Node(a.hearth, 38880, a.out)
    rows, stop = [], threading.Event()
    lanes = {
        "A": (["--preset", "audio-rooms", "--meetings", "25", "--duration", "40s"], "127.64.0.0"),
        "B": (["--preset", "video-meeting", "--meetings", "1", "--duration", "40s",
               "--video-kbps", "300"], "127.96.0.0"),
    }
    runs = {"A": 0, "B": 0}
    failures = []

    def lane(name, delay):
        args, net = lanes[name]
        time.sleep(delay)
        seed = 1000 if name == "A" else 5000
        while not stop.is_set():
            seed += 1
            r = loadgen(node, args, seed, local_net=net)
            runs[name] += 1
            if r.returncode not in (0, 1):
                failures.append((name, seed, r.returncode, r.stderr[-300:]))

    writer_file = open(os.path.join(a.out, "soak.csv"), "w", newline="")
    fields = ["phase", "t", "rss_kib", "fds", "threads", "actors", "meetings", "participants",
              "pkts_out", "cpu_s", "cpu_us_per_pkt", "loadavg"]
    writer = csv.DictWriter(writer_file, fieldnames=fields)
    writer.writeheader()

    def record(phase, prev):
        row = sample(node, prev)
        row["phase"] = phase
        writer.writerow(row)
        writer_file.flush()
        rows.append(row)
        print(phase, row, flush=True)
        return row

    prev = None
    for _ in range(3):
        prev = record("idle-before", prev)
        time.sleep(5)
    threads = [threading.Thread(target=lane, args=("A", 0)),
               threading.Thread(target=lane, args=("B", 25))]
    for t in threads:
        t.start()
    end = time.time() + parse_duration(a.duration)
    while time.time() < end:
        time.sleep(a.sample)
        prev = record("load", prev)
    stop.set()
    for t in threads:
        t.join()
    for _ in range(18):  # three minutes of idle
        time.sleep(10)
        prev = record("idle-after", prev)
    node.stop()
    writer_file.close()
    summarize(rows, runs, failures, a)


def summarize(rows, runs, failures, a):
    def pick(phase):
        return [r for r in rows if r["phase"] == phase]
    before, load, after = pick("idle-before"), pick("load"), pick("idle-after")
    lines = [f"soak: {a.duration} of load, sample every {a.sample}s; loadgen runs: "
             f"lane A (audio rooms) {runs['A']}, lane B (video) {runs['B']}; "
             f"failed runs: {len(failures)}"]
    for f in failures[:5]:
        lines.append(f"  failed: {f}")
    lines.append(f"{'when':<14}{'RSS MiB':>9}{'fds':>6}{'threads':>8}{'actors':>7}"
                 f"{'meetings':>9}{'partic.':>8}{'µs/pkt':>8}{'load':>6}")

    def line(label, r):
        lines.append(f"{label:<14}{r['rss_kib'] / 1024:>9.1f}{r['fds']:>6}{r['threads']:>8}"
                     f"{r['actors']:>7}{r['meetings']:>9}{r['participants']:>8}"
                     f"{str(r['cpu_us_per_pkt']):>8}{r['loadavg']:>6}")
    line("idle before", before[-1])
    start = load[0]["t"] if load else 0
    for r in load:
        minutes = (r["t"] - start) // 60
        if minutes % 10 == 0 or r is load[-1]:
            line(f"load +{minutes}m", r)
    for r in after[::6] + after[-1:]:
        line(f"idle +{r['t'] - after[0]['t'] + 10}s", r)
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(a.out, "soak.txt"), "w") as f:
        f.write(text + "\n")


def alloc(a):
    os.makedirs(a.out, exist_ok=True)
    results = []
    for repeat in range(a.repeats):
        for binary in a.bins:
            node = Node(binary, 38900 + repeat, a.out, empty_timeout="2s")
            time.sleep(2)
            idle = node.proc_stats()[1]
            costs = []
            for rnd in range(a.rounds):
                path = os.path.join(a.out, f"{os.path.basename(binary)}-{repeat}-{rnd}.json")
                loadgen(node, ["--preset", "audio-rooms", "--meetings", "40", "--duration",
                               "20s"], 100 * repeat + rnd + 1, json_path=path)
                try:
                    with open(path) as f:
                        r = json.load(f)
                    cpu, pps = r["server"].get("cpu_pct_avg") or 0, r["throughput"]["pps_in"] or 0
                    if cpu and pps:
                        costs.append(cpu * 10000 / pps)
                except (OSError, ValueError, KeyError):
                    pass
            with open(f"/proc/{node.proc.pid}/status") as f:
                peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
            deadline = time.time() + 30
            while node.metrics().get("hearth_meetings", 1) > 0 and time.time() < deadline:
                time.sleep(0.5)
            after = []
            for wait in (5, 25, 30):
                time.sleep(wait)
                after.append(node.proc_stats()[1])
            node.stop()
            row = (os.path.basename(binary), repeat + 1, idle, peak, *after,
                   sum(costs) / len(costs) if costs else float("nan"), len(costs))
            print(row, flush=True)
            results.append(row)
    lines = [f"allocator comparison: {a.rounds} rounds of 40 x 4 audio meetings per run, "
             f"{a.repeats} runs per binary in alternation",
             f"{'binary':<18}{'run':>4}{'idle MiB':>9}{'peak':>7}{'+5s':>7}{'+30s':>7}"
             f"{'+60s':>7}{'µs/pkt':>8}"]
    for name, run, idle, peak, a5, a30, a60, cost, n in results:
        lines.append(f"{name:<18}{run:>4}{idle / 1024:>9.1f}{peak / 1024:>7.1f}{a5 / 1024:>7.1f}"
                     f"{a30 / 1024:>7.1f}{a60 / 1024:>7.1f}{cost:>8.2f}")
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(a.out, "alloc.txt"), "w") as f:
        f.write(text + "\n")


def billing(a):
    os.makedirs(a.out, exist_ok=True)
    known = {"off": ("ledger off", ["--no-ledger"]), "sqlite": ("ledger SQLite", [])}
    if a.pg_url:
        known["postgres"] = ("ledger PostgreSQL", ["--database-url", a.pg_url])
    # The order of one repeat, e.g. off,sqlite,sqlite,off (ABBA: drift cancels).
    variants = [known[v] for v in a.order.split(",") if v in known]
    scenarios = [("audio 40x4", ["--preset", "audio-rooms", "--meetings", "40"]),
                 ("video 8x4", ["--preset", "video-meeting", "--meetings", "8",
                                "--participants", "4"])]
    scenarios = [s for s in scenarios if s[0].split()[0] in a.scenarios.split(",")]
    results = []
    for repeat in range(a.repeats):
        for i, (label, extra) in enumerate(variants):
            port = 38950 + repeat * 10 + i
            node = Node(a.hearth, port, a.out, empty_timeout="2s", extra=extra,
                        data=f"data-{repeat}-{i}-{label.replace(' ', '-')}")
            time.sleep(1)
            for name, args in scenarios:
                costs = []
                for rnd in range(a.rounds):
                    path = os.path.join(a.out, f"{label}-{repeat}-{name}-{rnd}.json".replace(" ", "_"))
                    loadgen(node, args + ["--duration", "20s"], 1000 * repeat + rnd + 1,
                            json_path=path)
                    try:
                        with open(path) as f:
                            r = json.load(f)
                        cpu, pps = r["server"].get("cpu_pct_avg") or 0, r["throughput"]["pps_in"] or 0
                        if cpu and pps:
                            costs.append(cpu * 10000 / pps)
                    except (OSError, ValueError, KeyError):
                        pass
                rows = node.metrics().get("hearth_usage_rows_written_total", 0)
                cost = sum(costs) / len(costs) if costs else float("nan")
                print((label, repeat + 1, name, round(cost, 2), len(costs), int(rows)), flush=True)
                results.append((label, repeat + 1, name, cost, len(costs), int(rows)))
            node.stop()
    lines = [f"usage metering on vs off: {a.rounds} rounds of 20 s per scenario, "
             f"{a.repeats} runs per variant in alternation (server on CPU 0, loadgen on CPU 1)",
             f"{'variant':<20}{'run':>4}  {'scenario':<12}{'µs/pkt':>8}{'rounds':>7}{'rows':>8}"]
    for label, run, name, cost, n, rows in results:
        lines.append(f"{label:<20}{run:>4}  {name:<12}{cost:>8.2f}{n:>7}{rows:>8}")
    for name, _ in scenarios:
        for label in dict(variants):
            cs = [c for (l, _, s, c, n, _) in results if l == label and s == name and n]
            if cs:
                lines.append(f"mean {label:<15} {name:<12}{sum(cs) / len(cs):>8.2f}")
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(a.out, "billing.txt"), "w") as f:
        f.write(text + "\n")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("soak")
    s.add_argument("--duration", default="2h")
    s.add_argument("--sample", type=int, default=60)
    s.add_argument("--out", default="target/bench-soak")
    s.add_argument("--hearth", default="target/release/hearth")
    b = sub.add_parser("billing")
    b.add_argument("--rounds", type=int, default=3)
    b.add_argument("--repeats", type=int, default=2)
    b.add_argument("--pg-url")
    b.add_argument("--scenarios", default="audio,video", help="audio, video or both")
    b.add_argument("--order", default="off,sqlite,postgres",
                   help="variants of one repeat, in order (off, sqlite, postgres; e.g. off,sqlite,sqlite,off)")
    b.add_argument("--out", default="target/bench-billing")
    b.add_argument("--hearth", default="target/release/hearth")
    al = sub.add_parser("alloc")
    al.add_argument("--rounds", type=int, default=4)
    al.add_argument("--repeats", type=int, default=2)
    al.add_argument("--out", default="target/bench-alloc")
    al.add_argument("bins", nargs="+")
    a = p.parse_args()
    for tool in (LOADGEN, HEARTHCTL):
        if not os.access(tool, os.X_OK):
            sys.exit(f"{tool} missing: cargo build --release --bin hearth-loadgen --bin hearthctl")
    {"soak": soak, "alloc": alloc, "billing": billing}[a.cmd](a)


if __name__ == "__main__":
    main()
