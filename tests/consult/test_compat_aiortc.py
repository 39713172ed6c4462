"""consult/compat_aiortc.py: MediaRecorder's per-track contexts and a sender's VP8 encoder
with per-slot bitrate bounds, checked at import."""

from __future__ import annotations

import asyncio
import fractions
import inspect

import numpy as np
import pytest
from aiortc import RTCPeerConnection
from aiortc.codecs import vpx
from aiortc.codecs.vpx import VpxPayloadDescriptor
from aiortc.contrib.media import MediaRecorder
from aiortc.mediastreams import VideoStreamTrack
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, pack_remb_fci
from av import VideoFrame

from consult import compat_aiortc


def test_the_installed_aiortc_keeps_a_stream_per_track(tmp_path):
    compat_aiortc.check()
    recorder = MediaRecorder(str(tmp_path / "r.mp4"), format="mp4")
    track = VideoStreamTrack()
    recorder.addTrack(track)
    context = compat_aiortc.recorder_tracks(recorder)[track]
    assert context.stream.type == "video" and hasattr(context, "started") and hasattr(context, "task")


def test_an_aiortc_without_them_fails_loudly(monkeypatch):
    monkeypatch.setattr(compat_aiortc.inspect, "getsource", lambda obj: "")
    with pytest.raises(RuntimeError, match="MediaRecorder"):
        compat_aiortc.check()


def _frame(width: int = 1024, height: int = 768, pts: int = 0) -> VideoFrame:
    frame = VideoFrame.from_ndarray(np.random.default_rng(pts).integers(0, 255, (height, width, 3), np.uint8),
                                    format="rgb24").reformat(format="yuv420p")
    frame.pts, frame.time_base = pts, fractions.Fraction(1, 90000)
    return frame


def _within(floor: int, ceiling: int):
    return lambda estimate: max(floor, min(estimate, ceiling))


def test_a_bounded_encoder_goes_past_aiortcs_range_and_keeps_under_a_slots_ceiling():
    bounds = [(vpx.MIN_BITRATE, 2_500_000)]
    encoder = compat_aiortc.BoundedVp8Encoder(lambda estimate: _within(*bounds[0])(estimate))
    encoder.target_bitrate = 2_800_000  # what a REMB sets; aiortc's own encoder would keep 1.5 Mbps
    payloads, _ = encoder.encode(_frame())
    assert payloads and encoder.codec.bit_rate == 2_500_000 > vpx.MAX_BITRATE
    assert encoder.codec.qmax == 63  # our codec: down to VP8's coarsest quantiser before dropping
    bounds[0] = (200_000, 500_000)  # the viewer switched to low-bandwidth mode
    encoder.encode(_frame(pts=3000))
    assert encoder.codec.bit_rate == 500_000
    encoder.target_bitrate = 300_000
    encoder.encode(_frame(pts=6000))
    assert encoder.codec.bit_rate == 300_000
    encoder.target_bitrate = 50_000
    assert encoder.target_bitrate == 200_000  # never under the floor (aiortc's is 250 kbps)


def test_a_senders_encoder_is_ours_before_its_first_frame_and_remb_reaches_it_unclamped():
    async def scenario():
        pc = RTCPeerConnection()
        try:
            sender = pc.addTransceiver("video", direction="sendonly").sender
            assert compat_aiortc.sender_encoder(sender) is None
            assert compat_aiortc.bound_vp8(sender, _within(100_000, 4_000_000), start=1_000_000)
            encoder = compat_aiortc.sender_encoder(sender)
            assert isinstance(encoder, compat_aiortc.BoundedVp8Encoder) and encoder.target_bitrate == 1_000_000
            assert not compat_aiortc.bound_vp8(sender, _within(0, 0))  # one encoder per sender
            remb = RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=pack_remb_fci(3_000_000, [sender._ssrc]))
            await sender._handle_rtcp_packet(remb)
            assert encoder.estimate == 3_000_000 and encoder.target_bitrate == 3_000_000
        finally:
            await pc.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("missing, message", [("RTCRtpSender", "RTCRtpSender"), ("Vp8Encoder", "Vp8Encoder"),
                                              ("RTCRtpReceiver", "RTCRtpReceiver")])
def test_an_aiortc_whose_sender_or_encoder_changed_fails_loudly(monkeypatch, missing, message):
    real = inspect.getsource
    monkeypatch.setattr(compat_aiortc.inspect, "getsource",
                        lambda obj: "" if missing in getattr(obj, "__qualname__", "") else real(obj))
    with pytest.raises(RuntimeError, match=message):
        compat_aiortc.check()


def test_the_target_holds_through_a_wobbling_estimate_and_follows_a_real_change():
    encoder = compat_aiortc.BoundedVp8Encoder(_within(vpx.MIN_BITRATE, 2_500_000), start=2_000_000)
    assert encoder.target_bitrate == 2_000_000
    for wobble in (2_200_000, 1_800_000, 2_500_000):  # REMB's usual wobble: no new codec, no keyframe
        encoder.target_bitrate = wobble
        assert encoder.target_bitrate == 2_000_000
    encoder.target_bitrate = 1_600_000  # under 85%: a slower link, followed at once
    assert encoder.target_bitrate == 1_600_000
    encoder.target_bitrate = 2_100_000  # over 130%
    assert encoder.target_bitrate == 2_100_000


def test_a_keyframe_request_right_after_a_keyframe_waits_and_is_not_lost(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(compat_aiortc.time, "monotonic", lambda: clock[0])
    encoder = compat_aiortc.BoundedVp8Encoder(_within(vpx.MIN_BITRATE, 2_500_000), start=1_000_000)
    keys = []
    first = _frame(pts=0)
    for i, (at, asked) in enumerate([(0, False), (0.03, True), (0.07, False), (None, False), (0.03, False)]):
        if at is None:  # the gap: twice the first keyframe's transmission time at 1 Mbps, >= 1 s
            at = max(1.0, 2 * encoder._keyframe_bits / 1_000_000) + 0.01
        clock[0] += at
        frame = VideoFrame.from_ndarray(first.to_ndarray(), format="yuv420p")  # the same picture
        frame.pts, frame.time_base = 3000 * i, first.time_base
        payloads, _ = encoder.encode(frame, force_keyframe=asked)
        _, vp8 = VpxPayloadDescriptor.parse(payloads[0])
        keys.append(not vp8[0] & 1)  # RFC 6386 9.1: the frame tag's first bit is 0 on a keyframe
    # The first frame (a new codec) is a keyframe; the request 30 ms later waits for the gap
    # and is honoured after it by itself.
    assert keys == [True, False, False, True, False] and encoder.keyframes == 2


def test_a_slow_target_is_kept_by_dropping_frames_with_no_gap_in_picture_ids(tmp_path):
    """aiortc's own settings sent this 1024x768 ultrasound at 1.1 Mbps whatever the target."""
    from bench.room_ultrasound import write_y4m

    data = write_y4m(tmp_path / "us.y4m", seconds=2).read_bytes()
    size = 1024 * 768 * 3 // 2
    start = data.index(b"\n") + 1 + len(b"FRAME\n")
    planes = [np.frombuffer(data, np.uint8, size, start + i * (size + 6)).reshape(1152, 1024) for i in range(60)]
    encoder = compat_aiortc.BoundedVp8Encoder(_within(100_000, 500_000), start=500_000)
    sent, ids = [], []
    for i in range(90):  # 3 s at 30 fps
        frame = VideoFrame.from_ndarray(planes[i % 60], format="yuv420p")
        frame.pts, frame.time_base = 3000 * i, fractions.Fraction(1, 90000)
        before = encoder.picture_id
        payloads, _ = encoder.encode(frame)
        if payloads:
            ids.append(before)
        sent.append(sum(map(len, payloads)))
    steady = sum(sent[30:]) * 8 / 2  # the last 2 s, past the first keyframe and the rate buffer's start
    assert steady < 500_000 * 1.1, steady  # aiortc's Vp8Encoder: ~1,100,000
    assert 10 < len(ids) < 90, len(ids)  # some frames dropped to get there, not all
    assert all((b - a) % (1 << 15) == 1 for a, b in zip(ids, ids[1:]))  # picture IDs without a gap


def test_a_receiver_can_be_told_to_send_no_remb():
    async def scenario():
        pc = RTCPeerConnection()
        try:
            receiver = pc.addTransceiver("video", direction="recvonly").receiver
            assert compat_aiortc.sends_remb(receiver)  # aiortc's default for video
            compat_aiortc.no_remb(receiver)
            assert not compat_aiortc.sends_remb(receiver)
        finally:
            await pc.close()

    asyncio.run(scenario())
