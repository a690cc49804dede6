#!/usr/bin/env python3
"""Turns capture.sh's packet capture into the fuzzing corpus (format in README.md here).

    extract.py <capture.pcap> <output directory> [phases file]

Reads the capture with tshark (UDP payloads, TCP payloads of the TURN port, WebSocket text
frames of the signaling port), tells who sent each item, sorts the items into categories
by RFC 7983's first-byte ranges, and keeps a bounded, deterministic sample of each kind so
the corpus stays small. Pure standard library besides tshark.

Who sent what: each signaling WebSocket's HTTP upgrade names its browser (User-Agent); the
client's offers and answers on it carry the client's ICE ufrag, the server's carry the
server's ufrag and password, and the join response the TURN username. A UDP or TCP flow is
then attributed by the USERNAME of the STUN/TURN messages it carries (ICE:
"server-ufrag:client-ufrag"; TURN: the username handed out in the join response). What
came after the browser tests (capture.sh's phases file) is coturn's uclient.
"""
import json
import os
import re
import struct
import subprocess
import sys
from collections import OrderedDict, defaultdict

MEDIA_PORT = 7882
TURN_PORT = 3478
HTTP_PORT = 7880

# How many items of one kind (sender, receiver, sub-kind) to keep, evenly spaced.
KEEP = {
    "stun": 6,
    "dtls": 8,
    "srtp": 6,
    "srtcp": 6,
    "turn-udp": 6,
    "turn-tcp": 6,
}
# Signaling: client frames of one type per sender; offers/answers are kept more.
KEEP_SIGNAL = {"offer": 12, "answer": 12, "trickle": 12}
KEEP_SIGNAL_DEFAULT = 6
KEEP_SERVER_SIGNAL = 3


def tshark(pcap, display_filter, fields):
    cmd = ["tshark", "-r", pcap, "-Y", display_filter, "-T", "fields",
           "-E", "separator=\t", "-E", "occurrence=f"]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [line.split("\t") for line in out.splitlines() if line]


def stun_attrs(data):
    """Attributes of a STUN message as (type, value) pairs; [] if it is not one."""
    if len(data) < 20 or data[0] & 0xC0 or data[4:8] != b"\x21\x12\xa4\x42":
        return []
    (length,) = struct.unpack("!H", data[2:4])
    out, at = [], 20
    while at + 4 <= min(len(data), 20 + length):
        typ, alen = struct.unpack("!HH", data[at:at + 4])
        out.append((typ, data[at + 4:at + 4 + alen]))
        at += 4 + ((alen + 3) & ~3)
    return out


def stun_username(data):
    for typ, value in stun_attrs(data):
        if typ == 0x0006:
            return value.decode("utf-8", "replace")
    return None


def stun_kind(data):
    (t,) = struct.unpack("!H", data[0:2])
    attrs = ",".join("%04x" % typ for typ, _ in stun_attrs(data))
    return "%04x[%s]" % (t, attrs)


def sub_kind(category, data):
    """What makes two items of a category different enough to keep both."""
    if category in ("stun", "turn-udp", "turn-tcp"):
        if data and data[0] & 0xC0 == 0x40:
            return "channeldata"
        if len(data) >= 20 and data[0] & 0xC0 == 0:
            return stun_kind(data)
        return "other"
    if category == "dtls":
        # Content type, and the handshake type of a handshake record (epoch 0 only).
        ctype = data[0]
        epoch = data[3:5] if len(data) > 5 else b""
        hs = data[13] if ctype == 22 and epoch == b"\0\0" and len(data) > 13 else -1
        return "%d/%d/%d" % (ctype, int.from_bytes(epoch, "big") if epoch else -1, hs)
    if category == "srtp":
        return "pt%d/x%d" % (data[1] & 0x7F, (data[0] >> 4) & 1) if len(data) > 1 else "?"
    if category == "srtcp":
        return "pt%d/fmt%d" % (data[1], data[0] & 0x1F) if len(data) > 1 else "?"
    return ""


def media_category(data):
    if not data:
        return None
    b = data[0]
    if b <= 3:
        return "stun"
    if 20 <= b <= 63:
        return "dtls"
    if 128 <= b <= 191:
        if len(data) > 1 and 192 <= data[1] <= 223:
            return "srtcp"
        return "srtp"
    return None


def sample(items, keep):
    """Up to `keep` evenly spaced items of a list (first and last included)."""
    if len(items) <= keep:
        return items
    if keep == 1:
        return items[:1]
    step = (len(items) - 1) / (keep - 1)
    return [items[round(i * step)] for i in range(keep)]


def stream_frames(data):
    """Cuts a TURN-over-TCP byte stream into STUN / ChannelData frames (RFC 8656 §12.5)."""
    frames, at = [], 0
    while at + 4 <= len(data):
        (length,) = struct.unpack("!H", data[at + 2:at + 4])
        if data[at] & 0xC0 == 0:
            n = 20 + length
        elif data[at] & 0xC0 == 0x40:
            n = 4 + ((length + 3) & ~3)
        else:
            break  # TLS or garbage: not a TURN stream
        if at + n > len(data):
            break
        frames.append(data[at:at + n])
        at += n
    return frames


def browser_of(user_agent):
    if "Firefox" in user_agent:
        return "firefox"
    if "Chrome" in user_agent:
        return "chromium"
    return None


def main():
    pcap, out_dir = sys.argv[1], sys.argv[2]
    phases_file = sys.argv[3] if len(sys.argv) > 3 else os.path.join(os.path.dirname(pcap), "phases")
    uclient_from = float("inf")
    if os.path.exists(phases_file):
        for line in open(phases_file):
            name, when = line.split()
            if name == "uclient":
                uclient_from = float(when)

    # ---- signaling: who is who ----
    stream_browser = {}
    for stream, ua in tshark(pcap, "http.user_agent and http.request.uri contains \"/v1/signal\"",
                             ["tcp.stream", "http.user_agent"]):
        if browser_of(ua):
            stream_browser[stream] = browser_of(ua)
    frames = tshark(pcap, "websocket.payload.text", [
        "frame.number", "tcp.stream", "tcp.srcport", "websocket.payload.text"])
    ufrag_browser, turn_user_browser, ice_keys = {}, {}, OrderedDict()
    signal_items = []  # (from, to, kind, text)
    bad_json = 0
    for _, stream, srcport, text in frames:
        browser = stream_browser.get(stream)
        if browser is None:
            continue
        try:
            msg = json.loads(text)
        except ValueError:
            bad_json += 1
            continue
        if not isinstance(msg, dict) or not msg:
            continue
        kind = next(iter(msg))
        from_server = srcport == str(HTTP_PORT)
        body = msg[kind] if isinstance(msg[kind], dict) else {}
        sdp = body.get("sdp", "")
        ufrag = re.search(r"a=ice-ufrag:(\S+)", sdp)
        pwd = re.search(r"a=ice-pwd:(\S+)", sdp)
        if from_server:
            if ufrag and pwd:
                ice_keys[ufrag.group(1)] = (pwd.group(1), browser)
            for server in body.get("iceServers", []):
                if server.get("username"):
                    turn_user_browser[server["username"]] = browser
                    ice_keys.setdefault("turn:" + server["username"], (server.get("credential", ""), browser))
            signal_items.append(("hearth", browser, kind, text))
        else:
            if ufrag:
                ufrag_browser[ufrag.group(1)] = browser
            signal_items.append((browser, "hearth", kind, text))

    # ---- UDP: media port and TURN port ----
    udp = tshark(pcap, "udp.port == %d or udp.port == %d" % (MEDIA_PORT, TURN_PORT), [
        "frame.time_epoch", "ip.src", "udp.srcport", "ip.dst", "udp.dstport", "udp.payload"])
    # Attribute flows: the client's address -> sender name.
    flow_name = {}

    def name_for(data, when):
        if when >= uclient_from:
            return "uclient"
        user = stun_username(data)
        if user is None:
            return None
        if ":" in user:
            server_ufrag, client_ufrag = user.split(":", 1)
            if client_ufrag in ufrag_browser:
                return ufrag_browser[client_ufrag]
        return turn_user_browser.get(user)

    packets = []
    for when, src, sport, dst, dport, payload in udp:
        data = bytes.fromhex(payload.replace(":", ""))
        when = float(when)
        server_port = MEDIA_PORT if MEDIA_PORT in (int(sport), int(dport)) else TURN_PORT
        to_server = int(dport) == server_port
        client = (src, sport) if to_server else (dst, dport)
        key = (server_port, client)
        if to_server and key not in flow_name:
            name = name_for(data, when)
            if name:
                flow_name[key] = name
        packets.append((server_port, to_server, key, data))

    buckets = defaultdict(list)  # (category, from, to, sub) -> [bytes]
    unattributed = 0
    for server_port, to_server, key, data in packets:
        name = flow_name.get(key)
        if name is None:
            unattributed += 1
            continue
        src, dst = (name, "hearth") if to_server else ("hearth", name)
        if server_port == TURN_PORT:
            category = "turn-udp"
        else:
            category = media_category(data)
            if category is None:
                continue
        buckets[(category, src, dst, sub_kind(category, data))].append(data)

    # ---- TURN over TCP ----
    tcp = tshark(pcap, "tcp.port == %d and tcp.len > 0" % TURN_PORT, [
        "frame.time_epoch", "tcp.stream", "tcp.srcport", "tcp.dstport", "tcp.payload"])
    streams = OrderedDict()
    for when, stream, sport, dport, payload in tcp:
        to_server = int(dport) == TURN_PORT
        s = streams.setdefault((stream, to_server), [float(when), bytearray()])
        s[1] += bytes.fromhex(payload.replace(":", ""))
    stream_name = {}
    for (stream, to_server), (when, data) in streams.items():
        if to_server:
            for frame in stream_frames(bytes(data)):
                name = name_for(frame, when)
                if name:
                    stream_name[stream] = name
                    break
    for (stream, to_server), (_, data) in streams.items():
        name = stream_name.get(stream)
        if name is None:
            continue
        src, dst = (name, "hearth") if to_server else ("hearth", name)
        for frame in stream_frames(bytes(data)):
            buckets[("turn-tcp", src, dst, sub_kind("turn-tcp", frame))].append(frame)

    # ---- write ----
    os.makedirs(out_dir, exist_ok=True)
    counts = defaultdict(lambda: defaultdict(int))
    files = {}
    for (category, src, dst, sub), items in sorted(buckets.items()):
        unique = list(OrderedDict.fromkeys(items))
        for data in sample(unique, KEEP[category]):
            files.setdefault(category, []).append("%s %s %s" % (src, dst, data.hex()))
            counts[category]["%s>%s" % (src, dst)] += 1
    for category, lines in files.items():
        with open(os.path.join(out_dir, category + ".hex"), "w") as f:
            f.writelines(line + "\n" for line in lines)

    by_kind = defaultdict(list)
    for item in signal_items:
        by_kind[item[:3]].append(item)
    with open(os.path.join(out_dir, "signaling.jsonl"), "w") as f:
        for (src, dst, kind), items in sorted(by_kind.items()):
            unique = list(OrderedDict((i[3], i) for i in items).values())
            keep = KEEP_SERVER_SIGNAL if src == "hearth" else KEEP_SIGNAL.get(kind, KEEP_SIGNAL_DEFAULT)
            for s, d, k, text in sample(unique, keep):
                f.write(json.dumps({"from": s, "to": d, "frame": text}) + "\n")
                counts["signaling"]["%s>%s" % (s, d)] += 1

    # The same sampled SDP and candidates as plain text for the engine's tests (no JSON
    # there): "%% <from> <to> <offer|answer|candidate>" then the lines, LF for CRLF.
    with open(os.path.join(out_dir, "sdp.txt"), "w") as f:
        for (src, dst, kind), items in sorted(by_kind.items()):
            if kind not in ("offer", "answer", "trickle"):
                continue
            unique = list(OrderedDict((i[3], i) for i in items).values())
            keep = KEEP_SERVER_SIGNAL if src == "hearth" else KEEP_SIGNAL.get(kind, KEEP_SIGNAL_DEFAULT)
            for s, d, k, text in sample(unique, keep):
                body = json.loads(text)[k]
                if k == "trickle":
                    f.write("%%%% %s %s candidate\n%s\n" % (s, d, body.get("candidate", "")))
                else:
                    lines = body.get("sdp", "").replace("\r\n", "\n").rstrip("\n")
                    f.write("%%%% %s %s %s\n%s\n" % (s, d, k, lines))

    with open(os.path.join(out_dir, "keys.txt"), "w") as f:
        f.write("# ICE: server ufrag, server password, browser; TURN: username, password, browser\n")
        for ufrag, (pwd, browser) in ice_keys.items():
            kind = "turn" if ufrag.startswith("turn:") else "ice"
            f.write("%s %s %s %s\n" % (kind, ufrag.removeprefix("turn:"), pwd, browser))
        # capture.sh's uclient credentials: a static user and the REST API secret.
        f.write("turn alice secret uclient\n")
        f.write("turn-rest-secret restuser rest-secret uclient\n")

    for category in sorted(counts):
        print("%-10s %s" % (category, dict(sorted(counts[category].items()))))
    print("unattributed UDP datagrams: %d, undecodable WebSocket frames: %d" % (unattributed, bad_json))


if __name__ == "__main__":
    main()
