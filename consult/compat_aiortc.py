"""The one place Lancang reaches into aiortc beyond its public API, checked at import.

`MediaRecorder` keeps its per-track encoder contexts in a name-mangled attribute
(`_MediaRecorder__tracks`). consult/rooms.py needs them twice: to size every video stream
before the MP4 header is written (else a camera whose first frame comes late is lost), and
to log a track whose encoding task failed.

`RTCRtpSender` makes its encoder on the first frame (`self.__encoder`, name-mangled) and
aiortc's `Vp8Encoder` clamps every bitrate to one process-wide range (250 kbps-1.5 Mbps,
`aiortc.codecs.vpx`), and each sender gives its encoder the whole of a REMB, though a REMB
is one figure for the whole connection: two video streams to one page sent twice what its
link carries (on a 1 Mbps link: 1.6 Mbps of video, 40,000 retransmissions in 15 s, nothing
decoded). And with aiortc's libvpx settings (coarsest quantiser 56, no frame dropping) the
1024x768 ultrasound took 1.1 Mbps whatever the target: 500 kbps asked, 1.1 Mbps sent.
`bound_vp8` puts a `BoundedVp8Encoder` into a sender before its first frame: aiortc's
encoder and packetiser, with the bitrate `target_for(estimate)` makes of the REMB and a
codec it opens itself (before `Vp8Encoder.encode` would) that may quantise down to 63 and
then drop frames to keep to it.

`RTCRtpReceiver` estimates the incoming bitrate from packet arrival times as Python handles
them (`self.__remote_bitrate_estimator`) and sends that as REMB: on a busy server its own
delays read as congestion, and Chromium, which obeys REMB, sent the 1024x768 ultrasound at
30-400 kbps and 1-4 fps on an idle loopback (bench/room_ultrasound.py). `no_remb` turns the
estimator off for one receiver; the browser then paces by loss (RTCP receiver reports).

pyproject.toml bounds the aiortc version; a version that keeps any of these elsewhere fails
here, at start.
"""

from __future__ import annotations

import inspect
import os
import time
from typing import Callable

import av
from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.codecs import vpx
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.contrib.media import MediaRecorder

_TRACKS = "_MediaRecorder__tracks"
_SENDER_ENCODER = "_RTCRtpSender__encoder"
_ESTIMATOR = "_RTCRtpReceiver__remote_bitrate_estimator"


def check() -> None:
    source = inspect.getsource(MediaRecorder.__init__)
    if "self.__tracks" not in source or "stream" not in inspect.getsource(MediaRecorder.addTrack):
        raise RuntimeError("aiortc's MediaRecorder no longer keeps self.__tracks with a stream per track: "
                           "check consult/compat_aiortc.py against this aiortc version")
    _check_sender()
    _check_receiver()


def _check_sender() -> None:
    made = inspect.getsource(RTCRtpSender._next_encoded_frame)
    remb = inspect.getsource(RTCRtpSender._handle_rtcp_packet)
    if "if self.__encoder is None:" not in made or "self.__encoder.target_bitrate = bitrate" not in remb:
        raise RuntimeError("aiortc's RTCRtpSender no longer makes self.__encoder on the first frame and sets its "
                           "target_bitrate from REMB: check consult/compat_aiortc.py against this aiortc version")
    encode = inspect.getsource(Vp8Encoder.encode)
    if "if self.codec is None:" not in encode or "self.target_bitrate - self.codec.bit_rate" not in encode \
            or "self.picture_id = (self.picture_id + 1)" not in encode or not hasattr(vpx, "DEFAULT_BITRATE") \
            or not hasattr(vpx, "number_of_threads"):
        raise RuntimeError("aiortc's Vp8Encoder.encode() no longer keeps a codec it is given at the target "
                           "bitrate and counts picture IDs: check consult/compat_aiortc.py against this aiortc version")


def _check_receiver() -> None:
    made = inspect.getsource(RTCRtpReceiver.__init__)
    used = inspect.getsource(RTCRtpReceiver._handle_rtp_packet)
    if "self.__remote_bitrate_estimator = RemoteBitrateEstimator()" not in made \
            or "if self.__remote_bitrate_estimator is not None:" not in used:
        raise RuntimeError("aiortc's RTCRtpReceiver no longer keeps an optional self.__remote_bitrate_estimator "
                           "for REMB: check consult/compat_aiortc.py against this aiortc version")


check()


class BoundedVp8Encoder(Vp8Encoder):
    """aiortc's VP8 encoder whose bitrate is `target_for(estimate)`, asked on every frame so
    that a slot's mode or its neighbours apply at once; `estimate` is the receiver's latest
    REMB for the whole connection.

    Every keyframe is costly on a slow link (1024x768: 50-80 KB, half a second of 1 Mbps), and
    aiortc makes one for every bitrate change over 10% (it opens a new codec) and for every
    keyframe request. So the target moves only when `target_for` leaves 85-130% of it, and a
    requested keyframe waits until the last one has had twice its own transmission time (at
    least a second): a lost keyframe otherwise draws requests for more, each as big."""

    def __init__(self, target_for: Callable[[int], int], start: int = vpx.DEFAULT_BITRATE):
        super().__init__()
        self.target_for = target_for
        self.estimate = start
        self.keyframes = 0  # made, for the logs and the benchmark
        self.sent_bps = 0  # what it sent over its last second or so
        self._window = (float("-inf"), 0)  # (since, bits)
        self._held: int | None = None
        self._keyframe_at = float("-inf")
        self._keyframe_bits = 0
        self._wanted_keyframe = False

    @property
    def target_bitrate(self) -> int:
        wanted, held = self.target_for(self.estimate), self._held
        if held is None or not 0.85 * held <= wanted <= 1.3 * held:
            self._held = held = wanted
        return held

    @target_bitrate.setter
    def target_bitrate(self, bitrate: int) -> None:
        self.estimate = bitrate

    def encode(self, frame, force_keyframe: bool = False):
        now = time.monotonic()
        target = self.target_bitrate
        codec = self.codec
        if codec is None or (frame.width, frame.height) != (codec.width, codec.height) \
                or abs(target - codec.bit_rate) / codec.bit_rate > 0.1:  # as Vp8Encoder would reopen
            self._open(frame.width, frame.height, target)
        self._wanted_keyframe = self._wanted_keyframe or force_keyframe
        gap = max(1.0, 2 * self._keyframe_bits / target)
        force = self._wanted_keyframe and now - self._keyframe_at >= gap
        payloads, timestamp = super().encode(frame, force)
        self._count(now, 8 * sum(len(p) for p in payloads))
        if not payloads:  # dropped to keep the rate: no gap in the picture IDs (a receiver waits for it)
            self.picture_id = (self.picture_id - 1) % (1 << 15)
        elif force or self.codec is not codec:  # asked for, or a new codec: its first frame is one
            self._wanted_keyframe = False
            self._keyframe_at, self._keyframe_bits = now, 8 * sum(len(p) for p in payloads)
            self.keyframes += 1
        return payloads, timestamp

    def _count(self, now: float, bits: int) -> None:
        since, total = self._window
        if since == float("-inf"):
            since = now
        elif now - since >= 1.0:
            self.sent_bps, since, total = int(total / (now - since)), now, 0
        self._window = (since, total + bits)

    def _open(self, width: int, height: int, target: int) -> None:
        """libvpx for real time at `target` bps (constant bitrate over a one-second buffer),
        which may use VP8's coarsest quantiser and then drop frames (when its buffer falls
        under 30%) rather than send more than the link was said to carry. A keyframe may take
        three frames' bits: 8 KB at 1024x768 instead of 43 KB at 1.2 Mbps (82 KB at 2.5), a
        burst that read as congestion at every step of the bitrate, and the next frames
        sharpen it."""
        codec = av.CodecContext.create("libvpx", "w")
        codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
        codec.bit_rate, codec.gop_size, codec.qmin, codec.qmax = target, 3000, 2, 63
        rate = str(target)
        codec.options = {"deadline": "realtime", "cpu-used": "-6", "lag-in-frames": "0", "bufsize": rate,
                         "minrate": rate, "maxrate": rate, "drop-threshold": "30", "static-thresh": "1",
                         "noise-sensitivity": "4", "undershoot-pct": "100", "overshoot-pct": "15", "partitions": "0",
                         "max-intra-rate": "300"}
        codec.thread_count = vpx.number_of_threads(width * height, os.cpu_count() or 1)
        self.codec = codec


def bound_vp8(sender: RTCRtpSender, target_for: Callable[[int], int], start: int = vpx.DEFAULT_BITRATE) -> bool:
    """Give a video sender whose negotiated codec is VP8 a BoundedVp8Encoder; False when the
    sender already made its encoder (it has sent a frame), which is then left alone."""
    if not hasattr(sender, _SENDER_ENCODER):
        raise RuntimeError("this RTCRtpSender keeps no __encoder: check consult/compat_aiortc.py")
    if getattr(sender, _SENDER_ENCODER) is not None:
        return False
    setattr(sender, _SENDER_ENCODER, BoundedVp8Encoder(target_for, start))
    return True


def sender_encoder(sender: RTCRtpSender):
    """The encoder a sender made or was given (None before its first frame)."""
    return getattr(sender, _SENDER_ENCODER, None)


def recorder_tracks(recorder: MediaRecorder) -> dict:
    """{track: context with .stream, .started, .task} of a MediaRecorder."""
    return getattr(recorder, _TRACKS)


def no_remb(receiver: RTCRtpReceiver) -> None:
    """Send no REMB for what this receiver gets (the sender then paces by loss)."""
    if not hasattr(receiver, _ESTIMATOR):
        raise RuntimeError("this RTCRtpReceiver keeps no __remote_bitrate_estimator: check consult/compat_aiortc.py")
    setattr(receiver, _ESTIMATOR, None)


def sends_remb(receiver: RTCRtpReceiver) -> bool:
    return getattr(receiver, _ESTIMATOR, None) is not None
