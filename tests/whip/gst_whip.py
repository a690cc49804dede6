#!/usr/bin/python3
"""A WHIP publisher on GStreamer's webrtcbin (Debian's GStreamer 1.22 and libnice, through
PyGObject): the third WebRTC stack of the WHIP test, beside the browsers' and aiortc's.
It drives RFC 9725's exchange by hand, the way a streaming tool built on GStreamer does:

    gst_whip.py <endpoint URL> <token>

A moving test pattern (VP8, 320x240 at 30 frames/s) and a tone (Opus) go out on one
BUNDLE transport, non-trickle: the offer is POSTed once ICE gathering is complete.

Prints JSON lines on stdout: {"event": "started", "location": ...} once the answer is
applied, {"event": "connected"} when ICE and DTLS are up. When stdin closes, the session is
ended with DELETE and {"event": "deleted", "status": ...} is printed. Errors:
{"event": "error", ...} and exit code 1.

Run it with Debian's /usr/bin/python3 (python3-gi, python3-gst-1.0, gir1.2-gst-plugins-bad-1.0;
tests/run.sh installs them).
"""

import json
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

PIPELINE = (
    "webrtcbin name=pc bundle-policy=max-bundle "
    "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1 "
    "! vp8enc deadline=1 target-bitrate=300000 keyframe-max-dist=30 ! rtpvp8pay pt=96 "
    "! application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000 ! pc. "
    "audiotestsrc is-live=true wave=sine freq=440 ! audioconvert ! audioresample ! opusenc "
    "! rtpopuspay pt=111 "
    "! application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000 ! pc. "
)


def emit(**fields):
    print(json.dumps(fields), flush=True)


class Publisher:
    def __init__(self, endpoint, token):
        self.endpoint = endpoint
        self.token = token
        self.location = None
        self.posted = False
        self.loop = GLib.MainLoop()
        self.failed = False
        self.pipe = Gst.parse_launch(PIPELINE)
        self.pc = self.pipe.get_by_name("pc")
        self.pc.connect("on-negotiation-needed", self.on_negotiation_needed)
        self.pc.connect("notify::ice-gathering-state", self.on_gathering)
        self.pc.connect("notify::connection-state", self.on_connection)
        bus = self.pipe.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self.on_bus_error)

    def fail(self, **fields):
        emit(event="error", **fields)
        self.failed = True
        self.loop.quit()

    def on_bus_error(self, _bus, message):
        err, debug = message.parse_error()
        self.fail(message=str(err), debug=str(debug))

    def on_negotiation_needed(self, _pc):
        # Publish only: nothing comes back on these transceivers.
        for i in range(16):
            t = self.pc.emit("get-transceiver", i)
            if t is None:
                break
            t.set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)
        promise = Gst.Promise.new_with_change_func(self.on_offer, None)
        self.pc.emit("create-offer", None, promise)

    def on_offer(self, promise, _data):
        reply = promise.get_reply()
        offer = reply.get_value("offer") if reply is not None else None
        if offer is None:
            self.fail(message="webrtcbin made no offer")
            return
        self.pc.emit("set-local-description", offer, Gst.Promise.new())

    def on_gathering(self, _pc, _param):
        state = self.pc.get_property("ice-gathering-state")
        if state == GstWebRTC.WebRTCICEGatheringState.COMPLETE and not self.posted:
            self.posted = True
            GLib.idle_add(self.post_offer)

    def on_connection(self, _pc, _param):
        state = self.pc.get_property("connection-state")
        if state == GstWebRTC.WebRTCPeerConnectionState.CONNECTED:
            emit(event="connected")
        elif state == GstWebRTC.WebRTCPeerConnectionState.FAILED:
            self.fail(message="the peer connection failed")

    def post_offer(self):
        sdp = self.pc.get_property("local-description").sdp.as_text()
        request = urllib.request.Request(
            self.endpoint,
            data=sdp.encode(),
            method="POST",
            headers={
                "Content-Type": "application/sdp",
                "Authorization": f"Bearer {self.token}",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status = response.status
                answer = response.read().decode()
                location = response.headers.get("Location")
        except urllib.error.HTTPError as e:
            self.fail(status=e.code, body=e.read().decode(errors="replace"))
            return False
        except OSError as e:
            self.fail(message=str(e))
            return False
        if status != 201 or not location:
            self.fail(status=status, body=answer)
            return False
        self.location = urllib.parse.urljoin(self.endpoint, location)
        ok, message = GstSdp.SDPMessage.new_from_text(answer)
        if ok != GstSdp.SDPResult.OK:
            self.fail(message="the answer is not SDP", body=answer)
            return False
        desc = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, message)
        promise = Gst.Promise.new_with_change_func(self.on_answer_applied, None)
        self.pc.emit("set-remote-description", desc, promise)
        return False

    def on_answer_applied(self, promise, _data):
        reply = promise.get_reply()
        if reply is not None and reply.has_field("error"):
            error = reply.get_value("error")
            GLib.idle_add(self.fail_and_delete, f"webrtcbin refused the answer: {error}")
            return
        emit(event="started", location=self.location)

    def fail_and_delete(self, message):
        emit(event="error", message=message)
        self.failed = True
        self.delete()
        return False

    def delete(self):
        status = None
        if self.location:
            request = urllib.request.Request(
                self.location,
                method="DELETE",
                headers={"Authorization": f"Bearer {self.token}"},
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    status = response.status
            except urllib.error.HTTPError as e:
                status = e.code
            except OSError as e:
                status = str(e)
        emit(event="deleted", status=status)
        self.loop.quit()
        return False

    def run(self):
        def wait_for_stdin():
            sys.stdin.read()
            GLib.idle_add(self.delete)

        threading.Thread(target=wait_for_stdin, daemon=True).start()
        if self.pipe.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            self.fail(message="the pipeline did not start")
            return 1
        self.loop.run()
        self.pipe.set_state(Gst.State.NULL)
        return 1 if self.failed else 0


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    Gst.init(None)
    return Publisher(sys.argv[1], sys.argv[2]).run()


if __name__ == "__main__":
    sys.exit(main())
