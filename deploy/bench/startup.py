#!/usr/bin/env python3
"""Time from process start to the first 200 from /readyz, and idle RSS.

   deploy/bench/startup.py target/release/hearth [runs]

Spawns the binary on loopback ports, polls /readyz every 0.2 ms over fresh TCP
connections, records the time of the first 200, reads VmRSS from /proc after one second
idle, then stops it. Prints the median, p90 and max over the runs.
"""
import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

binary = sys.argv[1]
runs = int(sys.argv[2]) if len(sys.argv) > 2 else 20


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


startups, rss = [], []
for _ in range(runs):
    http_port, media_port = free_port(), free_port()
    data = tempfile.mkdtemp(prefix="hearth-bench-")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [binary, "--http", f"127.0.0.1:{http_port}", "--media-port", str(media_port),
         "--media-bind", "127.0.0.1", "--data-dir", data, "--dev"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ready = None
    while ready is None and time.perf_counter() - t0 < 10:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=1)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                ready = time.perf_counter() - t0
            conn.close()
        except OSError:
            time.sleep(0.0002)
    if ready is None:
        proc.kill()
        sys.exit("server did not become ready in 10 s")
    startups.append(ready * 1000)
    time.sleep(1.0)  # idle: what a freshly started node holds
    rss.append(rss_kib(proc.pid) / 1024)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)


def summary(name, values, unit):
    values = sorted(values)
    p90 = values[min(len(values) - 1, int(len(values) * 0.9))]
    print(f"{name}: median {statistics.median(values):.1f} {unit}, p90 {p90:.1f} {unit}, "
          f"max {values[-1]:.1f} {unit} ({len(values)} runs)")


summary("start to /readyz", startups, "ms")
summary("idle RSS", rss, "MiB")
