#!/usr/bin/env python3
"""A WHIP publisher and a WHEP player on aiortc: a WebRTC stack independent of Hearth's and
of the browsers', driving RFC 9725's HTTP exchange by hand.

    aiortc_client.py publish <endpoint URL> <token>   # a moving test pattern and audio
    aiortc_client.py play <endpoint URL> <token>      # receive-only audio and video

Prints JSON lines on stdout: {"event": "started", "location": ..., "links": [...]} once
the answer is applied; a player then prints {"event": "frames", ...} every half second
(decoded video frames, their size, audio frames). When stdin closes, the session is ended
with DELETE and {"event": "deleted", "status": ...} is printed. Errors:
{"event": "error", "status": ..., "body": ...} and exit code 1.
"""

import asyncio
import json
import sys
import urllib.error
import urllib.parse
import urllib.request

import av
from aiortc import RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError


def emit(**fields):
    print(json.dumps(fields), flush=True)


class Pattern(VideoStreamTrack):
    """320x240 frames whose brightness and colour change every frame (an encoder that sees
    a still picture sends almost nothing)."""

    def __init__(self):
        super().__init__()
        self.n = 0

    async def recv(self):
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame(width=320, height=240, format="yuv420p")
        values = ((self.n * 5) % 220 + 16, (self.n * 3) % 256, 255 - (self.n * 3) % 256)
        for plane, value in zip(frame.planes, values):
            plane.update(bytes([value]) * plane.buffer_size)
        frame.pts = pts
        frame.time_base = time_base
        self.n += 1
        return frame


def http(method, url, token, body=None, content_type=None):
    request = urllib.request.Request(url, data=body, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            headers = response.headers  # case-insensitive
            return response.status, headers, response.read().decode(), headers.get_all("Link") or []
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode(), []


async def main(mode, endpoint, token):
    pc = RTCPeerConnection()
    counts = {"video": 0, "audio": 0, "width": 0, "height": 0}
    consumers = []

    async def consume(track):
        try:
            while True:
                frame = await track.recv()
                counts[track.kind] += 1
                if track.kind == "video":
                    counts["width"], counts["height"] = frame.width, frame.height
        except MediaStreamError:
            pass

    if mode == "publish":
        pc.addTrack(Pattern())
        pc.addTrack(AudioStreamTrack())
    else:
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")

        @pc.on("track")
        def on_track(track):
            consumers.append(asyncio.ensure_future(consume(track)))

    # aiortc gathers every candidate before setLocalDescription returns: no trickle needed.
    await pc.setLocalDescription(await pc.createOffer())
    status, headers, body, links = await asyncio.to_thread(
        http, "POST", endpoint, token, pc.localDescription.sdp.encode(), "application/sdp"
    )
    if status != 201:
        emit(event="error", status=status, body=body)
        await pc.close()
        return 1
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    location = urllib.parse.urljoin(endpoint, headers.get("Location", ""))
    emit(event="started", location=location, etag=headers.get("ETag"), links=links)

    stdin_closed = asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    while not stdin_closed.done():
        await asyncio.wait([stdin_closed], timeout=0.5)
        if mode == "play":
            emit(event="frames", connection=pc.connectionState, **counts)
        else:
            emit(event="state", connection=pc.connectionState)
    status, _, _, _ = await asyncio.to_thread(http, "DELETE", location, token)
    emit(event="deleted", status=status)
    await pc.close()
    for c in consumers:
        c.cancel()
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("publish", "play"):
        sys.exit(__doc__)
    sys.exit(asyncio.run(main(*sys.argv[1:])))
