"""consult/compat_aiortc.py: MediaRecorder's per-track contexts, checked at import."""

from __future__ import annotations

import pytest
from aiortc.contrib.media import MediaRecorder
from aiortc.mediastreams import VideoStreamTrack

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
