"""Live ultrasound in the consult room: the presenter's page shares a capture device (Chromium's
fake capture fed from a 1024x768 30 fps synthetic ultrasound, bench/room_ultrasound.py
write_y4m) and the specialist's page receives it at the source's size and frame rate; in
low-bandwidth mode at 480 lines, 15 fps, under 1 Mbps. The run (`bench.room_ultrasound
--check`) happens inside `unshare -n` (TESTING.md, Browser); the slot shaping is unit-tested
here too."""

from __future__ import annotations

import asyncio
import fractions
import json
import shutil
import subprocess
import sys
from pathlib import Path

from types import SimpleNamespace

import pytest
from aiortc.mediastreams import MediaStreamTrack
from av import VideoFrame

from consult import rooms

ROOT = Path(__file__).resolve().parents[2]


def test_the_specialist_receives_the_ultrasound_as_the_capture_card_sends_it(tmp_path):
    if shutil.which("unshare") is None or not Path("/usr/bin/chromium").exists():
        pytest.fail("unshare (util-linux) and /usr/bin/chromium are needed (TESTING.md, Browser)")
    command = f"ip link set lo up && exec {sys.executable} -m bench.room_ultrasound --check {tmp_path}"
    done = subprocess.run(["unshare", "-n", "bash", "-c", command], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    verdict = json.loads(done.stdout.strip().splitlines()[-1])
    normal, low = verdict["normal"], verdict["low"]
    # The presenter's page lists the capture device (a USB card shows as a camera).
    assert any("ultrasound.y4m" in label for label in verdict["devices"]), verdict["devices"]
    # Normal mode: every decoded frame had the source's size, no step down on the way...
    assert normal["sizes_seen"] == ["1024x768"] and normal["caption"].startswith("超声 Ultrasound 1024×768 · "), normal
    # ...and the source's frame rate within 10%: three seconds in a row at >= 27 fps on average,
    # within 90 s of the share (it took 7-26 s here, as the bitrate climbs: the specialist's
    # REMB grows 8% a second)...
    assert verdict["full_rate_s"] is not None, (normal, verdict["load"])
    # ...then 6 s with a mean of >= 20 fps (two thirds). On 2 cores the two Chromiums (one encoding
    # 1024x768 in software) and the server share the machine and a frame late for one second
    # counts in the next: 27-29 fps on a quiet machine, 20-24 with other jobs at a load average
    # of 7-10, 11 at 15. The caps this catches show as 15 fps or less (low mode's, or an
    # encoder starved of bitrate).
    assert normal["fps"] >= 20, (normal, verdict["load"])
    # Low-bandwidth mode: 480 lines, the aspect kept; 15 fps (the server keeps one frame in 2);
    # the ultrasound within its 500 kbps ceiling (+10% for RTP headers and the encoder's
    # overshoot) and everything the page receives under the 1 Mbps the mode is for.
    assert low["size"] == "640x480" and "弱网 Low" in low["caption"], low
    assert 12 <= low["fps"] <= 16, low
    assert low["ultrasound_kbps"] <= 550 and low["all_media_kbps"] < 1000, low
    # The presenter stops: the stage leaves the specialist's page.
    assert verdict["stopped"]
    for shot in verdict["shots"]:
        assert Path(shot).stat().st_size > 10_000, shot


class _Frames(MediaStreamTrack):
    """A source of `fps` frames at `size` (pts on a 90 kHz clock)."""

    kind = "video"

    def __init__(self, fps: float, size=(1024, 768), count: int = 30):
        super().__init__()
        self.fps, self.size, self.left, self.n = fps, size, count, 0

    async def recv(self):
        if self.left == 0:
            await asyncio.sleep(3600)
        self.left -= 1
        frame = VideoFrame(*self.size, "yuv420p")
        frame.pts, frame.time_base = round(self.n * 90000 / self.fps), fractions.Fraction(1, 90000)
        self.n += 1
        return frame


async def _pull(slot: rooms.SlotTrack, count: int) -> list:
    return [await asyncio.wait_for(slot.recv(), 5) for _ in range(count)]


@pytest.mark.parametrize("fps, kept", [(30, 15), (25, 12.5), (60, 15), (10, 10)])
def test_an_ultrasound_slot_in_low_mode_keeps_480_lines_and_at_most_15_fps(fps, kept):
    async def scenario():
        slot = rooms.SlotTrack("video")
        slot.shape = rooms.SHAPES[("ultrasound", "low")]
        slot.set_source(_Frames(fps, count=int(fps * 2)))
        frames = await _pull(slot, int(kept * 2) - 1)
        seconds = float((frames[-1].pts - frames[0].pts) * frames[0].time_base)
        assert {(f.width, f.height) for f in frames} == {(640, 480)}
        assert abs((len(frames) - 1) / seconds - kept) < 0.01
        slot.stop()

    asyncio.run(scenario())


def test_a_wide_source_keeps_its_aspect_and_normal_mode_leaves_it_alone():
    assert rooms._fewer_lines(1280, 720, 480) == (854, 480)
    assert rooms._fewer_lines(640, 480, 480) is None and rooms._fewer_lines(1024, 768, None) is None

    async def scenario():
        slot = rooms.SlotTrack("video")
        slot.shape = rooms.SHAPES[("ultrasound", "normal")]
        slot.set_source(_Frames(30, count=10))
        frames = await _pull(slot, 10)
        assert {(f.width, f.height) for f in frames} == {(1024, 768)} and len(frames) == 10
        slot.stop()

    asyncio.run(scenario())


def test_slots_share_the_receivers_estimate_instead_of_each_taking_all_of_it():
    async def scenario():
        us, camera, voice, empty = (rooms.SlotTrack(k) for k in ("video", "video", "audio", "video"))
        for track in (us, camera, voice, empty):
            track.siblings = [us, camera, voice, empty]
        us.shape, camera.shape = rooms.SHAPES[("ultrasound", "normal")], rooms.SHAPES[("camera", "normal")]
        us.set_source(_Frames(30))
        assert us.bitrate_for(3_000_000) == 2_500_000  # alone: all of it, to its ceiling
        camera.set_source(_Frames(15, (640, 480)))
        voice.set_source(_Frames(1))
        us.encoder, camera.encoder = SimpleNamespace(sent_bps=550_000), SimpleNamespace(sent_bps=330_000)
        # A 1 Mbps link, both sending: 120 kbps for the voice, the rest 2.5 : 1.5 (the slots'
        # ceilings); aiortc alone gave each encoder the whole REMB, 2 Mbps of video on that link.
        assert us.bitrate_for(1_000_000) == 550_000 and camera.bitrate_for(1_000_000) == 330_000
        camera.encoder.sent_bps = 30_000  # the camera turned off: black frames
        assert us.bitrate_for(1_000_000) == 850_000  # what it leaves is the ultrasound's
        us.shape, camera.shape = rooms.SHAPES[("ultrasound", "low")], rooms.SHAPES[("camera", "low")]
        assert us.bitrate_for(1_000_000) == 500_000 and camera.bitrate_for(1_000_000) == 200_000
        assert us.bitrate_for(300_000) == 200_000  # never under the floor
        for track in (us, camera, voice):
            track.stop()

    asyncio.run(scenario())


def test_the_answer_tells_chromium_to_start_the_ultrasound_at_its_start_bitrate():
    sdp = "\r\n".join(["v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0",
                       "m=video 9 UDP/TLS/RTP/SAVPF 97 98", "a=mid:0", "a=rtpmap:97 VP8/90000",
                       "a=rtpmap:98 rtx/90000", "a=fmtp:98 apt=97",
                       "m=video 9 UDP/TLS/RTP/SAVPF 97 98", "a=mid:2", "a=rtpmap:97 VP8/90000",
                       "a=rtpmap:98 rtx/90000", "a=fmtp:98 apt=97", ""])
    out = rooms._start_bitrate(sdp, "2", 1500).split("\r\nm=")
    assert "a=rtpmap:97 VP8/90000\r\na=fmtp:97 x-google-start-bitrate=1500" in out[2]  # the ultrasound's
    assert "x-google-start-bitrate" not in out[1]  # the camera's m-line as it was
    assert rooms._start_bitrate(sdp, None, 1500) == sdp  # no ultrasound m-line offered


def _member(name: str, role: str, *, stage: bool, ultrasound: bool = False) -> rooms.Participant:
    """A participant with media as _claim_slots leaves it: a camera and microphone, MAX_REMOTE
    slot pairs, and the stage slot when the page offered one (pages since this change do)."""
    from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

    media = rooms.Media(pc=None, camera={"video": VideoStreamTrack(), "audio": AudioStreamTrack()})
    if ultrasound:
        media.camera["ultrasound"] = VideoStreamTrack()
    media.slots = [rooms.Slot(video=rooms.SlotTrack("video"), audio=rooms.SlotTrack("audio"), video_mid=f"v{i}",
                              audio_mid=f"a{i}") for i in range(rooms.MAX_REMOTE)]
    if stage:
        media.slots.append(rooms.Slot(video=rooms.SlotTrack("video"), audio=None, video_mid="stage", audio_mid=None,
                                      only="ultrasound"))
    seat = rooms.Seat(consult_id=1, user_id=hash(name) % 1000, username=name, display_name=name, role=role)
    return rooms.Participant(seat=seat, send=None, media=media, ultrasound=ultrasound)


def _shown(participant: rooms.Participant) -> dict[str, tuple[str, str]]:
    return {slot.video_mid: (slot.owner, slot.source) for slot in participant.media.slots if slot.owner}


def test_a_full_room_still_shows_the_ultrasound_on_every_page_in_its_stage_slot():
    """Six people with cameras fill every page's five slots; the presenter's ultrasound goes to
    each page's stage slot, and a camera never takes the stage."""
    async def scenario():
        room = rooms.Room(1, registry=None)
        people = [_member("zhang", "presenter", stage=True, ultrasound=True)]
        people += [_member(f"reader{i}", "specialist", stage=True) for i in range(rooms.MAX_REMOTE)]
        room.participants = {p.username: p for p in people}
        room._assign_slots()
        for viewer in people[1:]:
            shown = _shown(viewer)
            assert shown["stage"] == ("zhang", "ultrasound"), shown
            cameras = {owner for owner, source in shown.values() if source == "camera"}
            assert cameras == {p.username for p in people} - {viewer.username}, shown  # all five
        # The presenter's own page: the five others' cameras, its stage empty (its own ultrasound).
        assert "stage" not in _shown(people[0]) and len(_shown(people[0])) == rooms.MAX_REMOTE
        # A page from before the stage (no stage slot): its five slots in joining order, as before.
        old = _member("old-page", "reviewer", stage=False)
        room.participants.pop("reader4")
        room.participants["old-page"] = old
        room._assign_slots()
        assert list(_shown(old).values()) == [("zhang", "camera"), ("zhang", "ultrasound"), ("reader0", "camera"),
                                              ("reader1", "camera"), ("reader2", "camera")]
        for p in people:
            for slot in p.media.slots:
                slot.clear()

    asyncio.run(scenario())


def test_an_ultrasound_takes_the_stage_first_leaving_slots_for_cameras_that_come_later():
    async def scenario():
        room = rooms.Room(1, registry=None)
        presenter, reader = _member("zhang", "presenter", stage=True, ultrasound=True), _member("wang", "specialist",
                                                                                                stage=True)
        room.participants = {"zhang": presenter, "wang": reader}
        room._assign_slots()
        assert _shown(reader) == {"v0": ("zhang", "camera"), "stage": ("zhang", "ultrasound")}
        assert rooms._free_slot(reader.media.slots, "camera").video_mid == "v1"
        assert rooms._free_slot(reader.media.slots, "ultrasound").video_mid == "v1"  # the stage is taken
        presenter.ultrasound = False
        room._assign_slots()
        assert _shown(reader) == {"v0": ("zhang", "camera")}

    asyncio.run(scenario())
