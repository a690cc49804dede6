#!/usr/bin/env python3
"""Splits `perf script -F ip,sym` call stacks of a Hearth server into cost buckets.

usage: cpu_breakdown.py STACKS_TXT US_PER_FORWARDED_PACKET

Buckets cover both server stacks: Hearth's own transport (`hearth_engine::transport`, the
send legs) and, for profiling builds before it, webrtc-rs `rtc`. Each sample goes to the first bucket whose rule matches any frame of its stack, in the
order below, so a sample inside SRTP encryption under the rtc write pipeline counts as
SRTP, and the kernel's loopback delivery (the receiving socket's softirq work, done in the
sender's context on loopback) is split from the send path proper. Prints a Markdown table
of percent of samples and µs per forwarded packet.
"""
import collections
import sys

RULES = [
    ("kernel: loopback delivery to the receiving socket (charged to the sender)",
     lambda s: has(s, "__sys_sendto", "__sys_sendmsg", "__sys_sendmmsg") and has(s, "net_rx_action")),
    ("kernel: UDP send (syscall, routing, loopback xmit)",
     lambda s: has(s, "__sys_sendto", "__sys_sendmsg", "__sys_sendmmsg")),
    ("kernel: UDP receive", lambda s: has(s, "__sys_recvfrom", "__sys_recvmsg", "recvmmsg")),
    # (Hearth's own AES-GCM sealer and opener call the provider's AEAD directly.)
    ("SRTP/SRTCP encrypt (cipher)",
     lambda s: has(s, "encrypt_rtp", "encrypt_rtcp", "AeadCipher>::seal_in_place")),
    ("SRTP/SRTCP decrypt (cipher)",
     lambda s: has(s, "decrypt_rtp", "decrypt_rtcp", "AeadCipher>::open_in_place")),
    # Hearth's own transport (engine/src/transport) and the send legs.
    ("hearth transport: RTP header parse, demux, TWCC, RTCP",
     lambda s: has(s, "transport::peer::Peer::handle_datagram", "Peer::on_srtp", "Peer::on_srtcp",
                   "twcc::", "transport::rtcp::")),
    ("hearth: send legs (forwarder rewrite, sealing outside the cipher)",
     lambda s: has(s, "SendLeg", "RtpSealer")),
    ("rtc: interceptor chain (TWCC receiver, RTCP marking, terminus)",
     lambda s: has(s, "InterceptorHandler")),
    ("rtc: other write-pipeline handlers and message moves",
     lambda s: has(s, "flush_writes", "RTCRtpSender::write_rtp", "write_rtcp")),
    ("rtc: other read-pipeline handlers",
     lambda s: has(s, "handle_read", "pump_reads", "pump_events", "poll_read")),
    ("rtc: timers", lambda s: has(s, "poll_timeout", "handle_timeout") and has(s, "rtc")),
    ("kernel: other (scheduling, futex, epoll, timers)",
     lambda s: "[k]" in s[0] or s[0].startswith("0xffff")
     or has(s[:1], "entry_SYSCALL", "do_syscall", "schedule", "futex", "epoll")),
    ("hearth: forwarding (fan-out, sequence rewrite, queues)",
     lambda s: has(s, "on_media", "send_rtp", "publish_packet", "Forwarder", "UdpMux")),
    ("hearth: other actor code", lambda s: has(s, "hearth_actors", "hearth_engine")),
    ("runtime: ractor + tokio (mailboxes, wake-ups, scheduling)",
     lambda s: has(s, "ractor", "tokio")),
]


def has(stack, *patterns):
    return any(p in frame for frame in stack for p in patterns)


def read_stacks(path):
    stacks, cur = [], []
    for line in open(path, encoding="utf-8", errors="replace"):
        line = line.strip()
        if not line:
            if cur:
                stacks.append(cur)
                cur = []
            continue
        parts = line.split(None, 1)
        cur.append(parts[1] if len(parts) > 1 else "?")
    if cur:
        stacks.append(cur)
    return stacks


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    stacks = read_stacks(sys.argv[1])
    us = float(sys.argv[2])
    if not stacks:
        sys.exit("no samples")
    counts = collections.Counter()
    for s in stacks:
        bucket = next((name for name, rule in RULES if rule(s)), "other")
        counts[bucket] += 1
    n = len(stacks)
    print(f"{n} samples, {us:.2f} µs of server CPU per forwarded packet\n")
    print("| where | share | µs per forwarded packet |")
    print("|---|---|---|")
    for name, c in counts.most_common():
        print(f"| {name} | {100 * c / n:.1f} % | {us * c / n:.2f} |")


if __name__ == "__main__":
    main()
