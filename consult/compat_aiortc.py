"""The one place Lancang reaches into aiortc beyond its public API, checked at import.

`MediaRecorder` keeps its per-track encoder contexts in a name-mangled attribute
(`_MediaRecorder__tracks`). consult/rooms.py needs them twice: to size every video stream
before the MP4 header is written (else a camera whose first frame comes late is lost), and
to log a track whose encoding task failed. pyproject.toml bounds the aiortc version; a
version whose MediaRecorder keeps them elsewhere fails here, at start.
"""

from __future__ import annotations

import inspect

from aiortc.contrib.media import MediaRecorder

_TRACKS = "_MediaRecorder__tracks"


def check() -> None:
    source = inspect.getsource(MediaRecorder.__init__)
    if "self.__tracks" not in source or "stream" not in inspect.getsource(MediaRecorder.addTrack):
        raise RuntimeError("aiortc's MediaRecorder no longer keeps self.__tracks with a stream per track: "
                           "check consult/compat_aiortc.py against this aiortc version")


check()


def recorder_tracks(recorder: MediaRecorder) -> dict:
    """{track: context with .stream, .started, .task} of a MediaRecorder."""
    return getattr(recorder, _TRACKS)
