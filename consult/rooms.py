"""Live consult rooms: a server-side aiortc peer per participant, media forwarded through a
MediaRelay, the shared DICOM view and chat fanned out over data channels, recording.

Negotiation happens once per connection and never again: a participant offers its camera
and microphone (sendonly) plus MAX_REMOTE pairs of recvonly transceivers ("slots"). The
server puts other participants' relayed tracks into free slots with a SlotTrack whose
source can change, so joins, leaves and rejoins never need a renegotiation (aiortc's
renegotiation support is thin, and glare between browser and server is avoided).

aiortc encodes once per receiving peer (aiortc issue #1155): a camera forwarded to N
viewers costs N encodes. bench/rooms.py measures it.

The presenter may also send an ultrasound (a capture card that the machine's video output
feeds) on a second sendonly video m-line named in the offer; it goes into a slot of its own,
sent at its own size and frame rate (SHAPES below; bench/room_ultrasound.py measures it).

Database functions are keyword-only and never commit; the async room code calls them in a
thread inside `db.scope()` so the event loop never waits on a database lock.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import logging
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc import sdp as sdp_parser
from aiortc.codecs import vpx
from aiortc.contrib.media import MediaRecorder, MediaRelay
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, VideoFrame
from sqlalchemy import select
from sqlalchemy.orm import Session

from consult import compat_aiortc
from consult.models import Booking, ConsultRequest
from consult.room_models import Recording, RoomChatMessage, RoomConsent
from storage import audit, keys
from storage.errors import Conflict, NotFound, NotPermitted
from storage.models import User
from storage.types import utcnow

log = logging.getLogger("lancang.consult.rooms")

MAX_REMOTE = 5  # slots per participant: a room holds at most MAX_REMOTE + 1 people with media
LIVE_STATUSES = ("scheduled", "in_progress")
ROLES = ("presenter", "specialist", "reviewer", "coordinator")  # also who leads first, in order
JOIN_EARLY = timedelta(minutes=15)  # the join button is active this long before the slot
LOW_SIZE = (320, 240)  # what a participant in low-bandwidth mode receives of a camera
MODES = ("normal", "low", "audio")
MAX_SDP = 200_000
MAX_MESSAGE = 64_000
MAX_CHAT = 2000
RECORDING_TYPE = "video/mp4"  # libx264 + AAC in MP4: what MediaRecorder writes reliably here


@dataclass(frozen=True)
class SlotShape:
    """What a receive slot sends of a source in one mode."""

    size: tuple[int, int] | None = None  # a fixed size
    lines: int | None = None  # at most this many lines, the aspect kept
    fps: float | None = None  # at most this frame rate (frames dropped before encoding)
    bitrate: tuple[int, int] = (vpx.MIN_BITRATE, vpx.MAX_BITRATE)  # floor, ceiling (bps); aiortc's own


# The ultrasound is diagnostic. Normal mode sends it as it comes (1024x768 or 1280x720 at
# 25-30 fps) with up to 2.5 Mbps, Chromium's own ceiling for that size: aiortc's 1.5 Mbps keeps
# size and rate (libvpx neither drops nor resizes here) but smears the speckle.
# Low-bandwidth mode must stay watchable on a 1 Mbps link, and for ultrasound that means the
# anatomy can still be read: 480 lines (640x480 from 4:3, 854x480 from 16:9) keep the edges
# of small structures (a follicle, the fetal heart's chambers) and the machine's calipers and
# text, which the camera's 320x240 loses. The frame rate gives way instead: 15 fps still
# follows the probe's sweep (over such a link the specialist judges anatomy, not timing), and
# each frame gets twice the bits. At most 500 kbps (0.11 bit a pixel at 640x480x15, twice what
# a 720p camera gets at 1.5 Mbps) leaves the rest of the 1 Mbps for the presenter's camera
# (<= 200 kbps), voice (AUDIO_ON_WIRE), RTCP and retransmissions. The floors keep a picture
# when the receiver's estimate is poor. A slot's share of that estimate: SlotTrack.bitrate_for.
SHAPES = {
    ("camera", "normal"): SlotShape(),
    ("camera", "low"): SlotShape(size=LOW_SIZE, bitrate=(100_000, 200_000)),
    ("ultrasound", "normal"): SlotShape(bitrate=(vpx.MIN_BITRATE, 2_500_000)),
    ("ultrasound", "low"): SlotShape(lines=480, fps=15, bitrate=(200_000, 500_000)),
}
AUDIO_ON_WIRE = 120_000  # aiortc's Opus (96 kbps) with RTP, SRTP, UDP and IP headers, 50 packets a second

# The presenter's Chromium gets no REMB from us (why: consult/compat_aiortc.py no_remb) and
# paces by loss alone, from its 300 kbps start at about 8% a second: it sent the ultrasound at
# 1-4 fps for 14 s (keeping every line, it drops frames) and at 30 fps after ~22 s. Told to
# start at 1 Mbps (x-google-start-bitrate) it sent 7 fps at once and 27 after 8 s; at 1.5 Mbps
# the specialist had 27 fps 6.7 s after the share instead of 15 s. A slower uplink loses
# packets at once and Chromium steps down; the presenter's low-bandwidth mode caps it at 500 kbps.
ULTRASOUND_START_KBPS = 1500


# ---- who may be in a room (database side) -----------------------------------------------

@dataclass(frozen=True)
class Seat:
    consult_id: int
    user_id: int
    username: str
    display_name: str
    role: str


def room_role(session: Session, consult: ConsultRequest, user: User) -> str | None:
    """The user's role in the consult's room: an active booking, or the consult's coordinator."""
    booking = session.scalar(select(Booking).where(Booking.consult_id == consult.id, Booking.user_id == user.id,
                                                   Booking.cancelled_at.is_(None)).order_by(Booking.id.desc()))
    if booking is not None and booking.role in ROLES:
        return booking.role
    if user.id == consult.coordinator_id:
        return "coordinator"
    return None


@dataclass(frozen=True)
class Door:
    """The way into a consult's room as one participant sees it on a page.

    state: "open" (join now), "soon" (opens at `opens_at`), "unscheduled" (a live consult
    not booked yet) or "ended" (the consult is past its live part)."""

    consult_id: int
    state: str
    opens_at: datetime | None = None
    starts_at: datetime | None = None

    @property
    def url(self) -> str:
        return f"/consults/{self.consult_id}/room"


EMERGENCY_OPEN = ("requested", "accepted", "assigned", "scheduled", "in_progress")


def room_is_open(consult: ConsultRequest) -> bool:
    """A live consult's room is open while it is scheduled or running; an emergency's from the
    moment it is raised (no booking) until it is reported."""
    return consult.status in (EMERGENCY_OPEN if consult.emergency else LIVE_STATUSES)


def door(session: Session, consult: ConsultRequest, user: User, now: datetime | None = None) -> Door | None:
    """Whether and when `user` may go into the room; None when it is not their room at all
    (a read, or not a participant)."""
    if consult.kind != "live" or room_role(session, consult, user) is None:
        return None
    if consult.emergency and room_is_open(consult):
        return Door(consult.id, "open")  # 危重孕产妇: open from the moment it is raised
    if consult.status not in LIVE_STATUSES:
        return Door(consult.id, "unscheduled" if consult.status in ("accepted", "assigned") else "ended")
    slot = session.scalar(select(Booking).where(Booking.consult_id == consult.id, Booking.cancelled_at.is_(None))
                          .order_by(Booking.starts_at))
    if slot is None:
        return Door(consult.id, "open")  # started without a booking: the coordinator opened it
    opens = slot.starts_at - JOIN_EARLY
    state = "open" if (now or utcnow()) >= opens else "soon"
    return Door(consult.id, state, opens_at=opens, starts_at=slot.starts_at)


def seat_for(*, session: Session, consult_id: int, user: User) -> Seat:
    """The seat of a participant of a live consult that is scheduled or running, or raise."""
    consult = session.get(ConsultRequest, consult_id)
    if consult is None:
        raise NotFound("未找到该会诊 / consult not found")
    role = room_role(session, consult, user)
    if role is None:
        raise NotPermitted("仅会诊参与者可进入 / only the consult's participants may join")
    if consult.kind != "live" or not room_is_open(consult):
        raise Conflict(f"会诊室未开放 / this consult has no open room ({consult.kind}, {consult.status})")
    return Seat(consult_id=consult.id, user_id=user.id, username=user.username,
                display_name=user.display_name or user.username, role=role)


def require_participant(*, session: Session, consult_id: int, user: User) -> ConsultRequest:
    """Participants and the coordinator, whatever the consult's status (recordings, chat)."""
    consult = session.get(ConsultRequest, consult_id)
    if consult is None:
        raise NotFound("未找到该会诊 / consult not found")
    if room_role(session, consult, user) is None:
        raise NotPermitted("仅会诊参与者可访问 / only the consult's participants")
    return consult


def save_chat(*, session: Session, consult_id: int, user_id: int, text: str) -> RoomChatMessage:
    message = RoomChatMessage(consult_id=consult_id, user_id=user_id, text=text, at=utcnow())
    session.add(message)
    session.flush()
    return message


def chat_out(message: RoomChatMessage, user: User) -> dict:
    return {"type": "chat", "id": message.id, "from": user.username, "name": user.display_name or user.username,
            "at": message.at.isoformat(), "text": message.text}


def chat_history(*, session: Session, consult_id: int, limit: int = 500) -> list[dict]:
    rows = session.execute(select(RoomChatMessage, User).join(User, User.id == RoomChatMessage.user_id)
                           .where(RoomChatMessage.consult_id == consult_id)
                           .order_by(RoomChatMessage.id.desc()).limit(limit)).all()
    return [chat_out(message, user) for message, user in reversed(rows)]


def record_consent(*, session: Session, consult_id: int, user_id: int, username: str, given: bool) -> None:
    """Append the decision (the history is kept) and audit it."""
    session.add(RoomConsent(consult_id=consult_id, user_id=user_id, given=given, at=utcnow()))
    audit.append(session, principal=None, actor=username, action="room.consent", object_type="consult",
                 object_id=str(consult_id), detail={"given": given})


def current_consent(*, session: Session, consult_id: int, user_id: int) -> bool:
    latest = session.scalar(select(RoomConsent.given).where(RoomConsent.consult_id == consult_id,
                                                            RoomConsent.user_id == user_id)
                            .order_by(RoomConsent.id.desc()).limit(1))
    return bool(latest)


def recording_key(consult_id: int, room_session: str) -> str:
    return keys.recording(consult_id, room_session)


def list_recordings(*, session: Session, consult_id: int) -> list[Recording]:
    return list(session.scalars(select(Recording).where(Recording.consult_id == consult_id,
                                                        Recording.deleted_at.is_(None)).order_by(Recording.id)))


def purge_expired(*, session: Session, store, now: datetime | None = None) -> int:
    """Delete recordings past their retention date (object first, then mark the row)."""
    now = now or utcnow()
    expired = session.scalars(select(Recording).where(Recording.retain_until <= now,
                                                      Recording.deleted_at.is_(None))).all()
    for row in expired:
        store.delete(row.object_key)
        row.deleted_at = now
        audit.append(session, principal=None, actor="system:retention", action="recording.purge",
                     object_type="consult", object_id=str(row.consult_id), detail={"recording": row.id})
    return len(expired)


# ---- ICE servers: STUN and coturn's TURN REST credentials ----------------------------------

def turn_credentials(secret: str, username: str, ttl_s: int, now: float | None = None) -> tuple[str, str]:
    """coturn `use-auth-secret`: username "<expiry>:<user>", password base64(HMAC-SHA1(secret, username))."""
    expiry = int((now if now is not None else time.time()) + ttl_s)
    name = f"{expiry}:{username}"
    digest = hmac.new(secret.encode(), name.encode(), hashlib.sha1).digest()
    return name, base64.b64encode(digest).decode()


def _secret(value) -> str:
    return value.get_secret_value() if hasattr(value, "get_secret_value") else (value or "")


def ice_servers(settings, username: str, now: float | None = None) -> list[dict]:
    """What a browser passes to RTCPeerConnection: STUN, then TURN (UDP and TCP) when configured."""
    servers: list[dict] = []
    stun = list(getattr(settings, "room_stun_urls", []) or [])
    if stun:
        servers.append({"urls": stun})
    turn = list(getattr(settings, "room_turn_urls", []) or [])
    secret = _secret(getattr(settings, "room_turn_secret", ""))
    if turn and secret:
        name, credential = turn_credentials(secret, username, int(getattr(settings, "room_turn_ttl_s", 3600)), now)
        servers.append({"urls": turn, "username": name, "credential": credential})
    return servers


def server_configuration(settings) -> RTCConfiguration:
    """The server's own peers: STUN only when configured (never aioice's public default)."""
    stun = list(getattr(settings, "room_stun_urls", []) or [])
    return RTCConfiguration(iceServers=[RTCIceServer(urls=stun)] if stun else [])


# ---- media plumbing ---------------------------------------------------------------------

class SlotTrack(MediaStreamTrack):
    """A track whose source can be swapped (or removed) while a sender keeps reading it.

    An RTCRtpSender stops for good when its track raises MediaStreamError, so a slot must
    outlive the participant shown in it: recv() waits for the next source instead."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.shape = SlotShape()
        self._source: MediaStreamTrack | None = None
        self._changed = asyncio.Event()
        self._stamped: MediaStreamTrack | None = None  # the source the timestamp offset belongs to
        self._offset = 0
        self._last_pts: int | None = None
        self._kept: float | None = None  # the source's time of the last frame sent (frame-rate cap)
        self.siblings: list[SlotTrack] = [self]  # every slot of the same receiving connection
        self.encoder = None  # its sender's compat_aiortc.BoundedVp8Encoder, once negotiated

    @property
    def showing(self) -> bool:
        return self._source is not None

    def bitrate_for(self, estimate: int) -> int:
        """This slot's share of the receiver's estimate, for its encoder (asked every frame): a
        REMB is one figure for the whole connection. The audio comes off the top; of the rest
        a video slot may have its fair part (in proportion to the ceilings: an ultrasound's
        2.5 Mbps to a camera's 1.5) or whatever the others leave unsent, the more of the two,
        within its shape's bounds. Left unsent, the estimate never grows: Chromium's REMB
        stays under 1.5 times what arrives (a camera turned off held the ultrasound at 250 kbps)."""
        floor, ceiling = self.shape.bitrate
        video = [t for t in self.siblings if t.kind == "video" and t.showing] or [self]
        available = estimate - sum(AUDIO_ON_WIRE for t in self.siblings if t.kind == "audio" and t.showing)
        fair = available * ceiling / sum(t.shape.bitrate[1] for t in video)
        left = available - sum(t.encoder.sent_bps for t in video if t is not self and t.encoder is not None)
        return int(max(floor, min(max(fair, left), ceiling)))

    def set_source(self, track: MediaStreamTrack | None) -> None:
        old, self._source = self._source, track
        self._changed.set()
        if old is not None and old is not track:
            old.stop()

    async def recv(self):
        while self.readyState == "live":
            source = self._source
            self._changed.clear()
            if source is None:
                await self._changed.wait()
                continue
            getter = asyncio.ensure_future(source.recv())
            waker = asyncio.ensure_future(self._changed.wait())
            try:
                done, _ = await asyncio.wait((getter, waker), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (getter, waker):
                    if not task.done():
                        task.cancel()
            if getter not in done:
                continue  # the source was swapped while we waited
            try:
                frame = getter.result()
            except MediaStreamError:
                if self._source is source:
                    self._source = None
                continue
            if self._skip(frame, source):
                continue
            return self._restamp(self._shape(frame), source)
        raise MediaStreamError

    def _skip(self, frame, source) -> bool:
        """Drop frames above the shape's frame rate, by the source's own clock (arrival jitters);
        5 ms of slack so that 30 fps becomes exactly 15, 25 becomes 12.5."""
        fps = self.shape.fps
        if fps is None or self.kind != "video" or frame.pts is None or frame.time_base is None:
            return False
        at = float(frame.pts * frame.time_base)
        if source is self._stamped and self._kept is not None and 0 <= at - self._kept < 1 / fps - 0.005:
            return True
        self._kept = at
        return False

    def _shape(self, frame):
        if self.kind != "video":
            return frame
        size = self.shape.size or _fewer_lines(frame.width, frame.height, self.shape.lines)
        if size is None or (frame.width, frame.height) == size:
            return frame
        small = frame.reformat(width=size[0], height=size[1])
        small.pts, small.time_base = frame.pts, frame.time_base
        return small

    def _restamp(self, frame, source):
        """Keep this slot's timestamps increasing across sources: encoders refuse a pts that goes
        back (a rejoined camera starts at 0 again). The relay hands one frame object to every
        subscriber, so a shifted frame is a copy, never the shared one."""
        if source is not self._stamped:
            self._stamped = source
            step = getattr(frame, "samples", 0) or 3000
            behind = self._last_pts is not None and frame.pts <= self._last_pts
            self._offset = self._last_pts + step - frame.pts if behind else 0
        if self._offset:
            frame = _copy_frame(frame, frame.pts + self._offset)
        self._last_pts = frame.pts
        return frame

    def stop(self) -> None:
        super().stop()
        source, self._source = self._source, None
        self._changed.set()
        if source is not None:
            source.stop()


def _fewer_lines(width: int, height: int, lines: int | None) -> tuple[int, int] | None:
    """The size with at most `lines` lines and the same aspect (even, for 4:2:0), or None."""
    if lines is None or height <= lines:
        return None
    return max(2, round(width * lines / height / 2) * 2), lines


def _copy_frame(frame, pts: int):
    if isinstance(frame, AudioFrame):
        copy = AudioFrame.from_ndarray(frame.to_ndarray(), format=frame.format.name, layout=frame.layout.name)
        copy.sample_rate = frame.sample_rate
    else:
        if frame.format.name != "yuv420p":
            frame = frame.reformat(format="yuv420p")
        copy = VideoFrame.from_ndarray(frame.to_ndarray(), format="yuv420p")
    copy.pts, copy.time_base = pts, frame.time_base
    return copy


@dataclass
class Slot:
    video: SlotTrack | None
    audio: SlotTrack | None
    video_mid: str | None
    audio_mid: str | None
    owner: str | None = None
    owner_media: int | None = None  # serial of the owner's Media: a rejoin brings new tracks
    source: str | None = None  # "camera" (with the microphone) or "ultrasound" (video only)
    only: str | None = None  # the one source this slot shows ("ultrasound": the page's stage)

    def takes(self, source: str) -> bool:
        return self.owner is None and self.only in (None, source)

    def clear(self) -> None:
        for track in (self.video, self.audio):
            if track is not None:
                track.set_source(None)
        self.owner = self.owner_media = self.source = None


@dataclass
class Media:
    """One negotiated peer connection of a participant and what it carries."""

    pc: RTCPeerConnection
    # "video" (the camera), "audio" (the microphone), "ultrasound" -> the participant's track
    camera: dict[str, MediaStreamTrack] = field(default_factory=dict)
    slots: list[Slot] = field(default_factory=list)
    channel: Any = None
    frames: dict[str, int] = field(default_factory=lambda: {"video": 0, "audio": 0, "ultrasound": 0})
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # "video"/"ultrasound": latest frame's
    ultrasound_mid: str | None = None
    tasks: list[asyncio.Task] = field(default_factory=list)
    closed: bool = False
    serial: int = field(default_factory=lambda: next(_serials))


_serials = itertools.count(1)


@dataclass
class Participant:
    seat: Seat
    send: Callable[[dict], Awaitable[None]]  # the signalling WebSocket
    mode: str = "normal"
    media: Media | None = None
    consent: bool = False
    gone: bool = False
    ultrasound: bool = False  # sending the ultrasound on the m-line its offer named

    @property
    def username(self) -> str:
        return self.seat.username

    def public(self) -> dict:
        return {"username": self.username, "name": self.seat.display_name, "role": self.seat.role,
                "mode": self.mode, "consent": self.consent, "media": self.media is not None,
                "ultrasound": self.ultrasound}


def _free_slot(slots: list[Slot], source: str) -> Slot | None:
    """A slot that may show `source`: one kept for it (the stage, for an ultrasound) before a
    general one, which a camera may need."""
    free = [slot for slot in slots if slot.takes(source)]
    return min(free, key=lambda slot: slot.only != source, default=None)


def _sources(participant: Participant) -> list[str]:
    """What of a participant everyone else is shown: the camera (with the microphone) when it
    offered either, and the ultrasound while it says it sends one."""
    camera = participant.media.camera if participant.media is not None else {}
    wanted = ["camera"] if "video" in camera or "audio" in camera else []
    if participant.ultrasound and "ultrasound" in camera:
        wanted.append("ultrasound")
    return wanted


def _start_bitrate(sdp: str, mid: str | None, kbps: int) -> str:
    """The answer with `x-google-start-bitrate` on the VP8 of m-line `mid`, which Chromium
    takes as where its bitrate estimate starts."""
    if mid is None:
        return sdp
    sections = sdp.split("\r\nm=")
    for i, section in enumerate(sections):
        lines = section.split("\r\n")
        if i == 0 or f"a=mid:{mid}" not in lines:
            continue
        vp8 = [line.split()[0].split(":")[1] for line in lines if line.startswith("a=rtpmap:") and " VP8/" in line]
        for pt in vp8:
            if not any(line.startswith(f"a=fmtp:{pt} ") for line in lines):
                at = next(k for k, line in enumerate(lines) if line.startswith(f"a=rtpmap:{pt} "))
                lines.insert(at + 1, f"a=fmtp:{pt} x-google-start-bitrate={kbps}")
        sections[i] = "\r\n".join(lines)
    return "\r\nm=".join(sections)


def _safe_json(raw: str | bytes) -> dict | None:
    if isinstance(raw, bytes):
        try:
            raw = raw.decode()
        except UnicodeDecodeError:
            return None
    if len(raw) > MAX_MESSAGE + MAX_SDP:
        return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) and isinstance(value.get("type"), str) else None


def parse_offer(text: Any) -> sdp_parser.SessionDescription:
    """Parse an offer's SDP or raise ValueError: garbage never reaches a peer connection."""
    if not isinstance(text, str) or not text.startswith("v=0") or len(text) > MAX_SDP:
        raise ValueError("not an SDP offer")
    parsed = sdp_parser.SessionDescription.parse(text)
    if not parsed.media:
        raise ValueError("the offer has no media")
    for media in parsed.media:
        if media.kind in ("audio", "video") and (not media.ice.usernameFragment or not media.dtls
                                                  or not media.dtls.fingerprints):
            raise ValueError("the offer lacks ICE or DTLS parameters")
    return parsed


# ---- recording --------------------------------------------------------------------------

class RoomRecording:
    """One recorded stretch: every present participant's audio and video into one MP4 file."""

    def __init__(self, room: "Room", sources: dict[tuple[str, str], MediaStreamTrack],
                 sizes: dict[tuple[str, str], tuple[int, int]]):
        self.session = uuid.uuid4().hex
        self.started_at = utcnow()
        self.participants = sorted({username for username, _ in sources})
        self.sources = {key: id(track) for key, track in sources.items()}
        fd, self.path = tempfile.mkstemp(prefix="lancang-room-", suffix=".mp4")
        os.close(fd)
        self.recorder = MediaRecorder(self.path, format="mp4")
        for key, track in sorted(sources.items()):
            relayed = room.relay.subscribe(track, buffered=key[1] == "audio")
            self.recorder.addTrack(relayed)
            _prepare_stream(self.recorder, relayed, sizes.get(key))

    async def start(self) -> None:
        await self.recorder.start()

    async def stop(self) -> str:
        """Finish the file (the MP4 index is written on close); returns its path."""
        for context in compat_aiortc.recorder_tracks(self.recorder).values():
            task = context.task
            if task is not None and task.done() and not task.cancelled() and task.exception() is not None:
                log.error("room.recording.track.failed session=%s error=%r", self.session, task.exception())
        try:
            await self.recorder.stop()
        except Exception:  # a stream that never got a frame cannot be flushed; the others are written
            log.exception("room.recording.stop.failed session=%s", self.session)
        return self.path


def _prepare_stream(recorder: MediaRecorder, track: MediaStreamTrack, size: tuple[int, int] | None) -> None:
    """MediaRecorder sizes a video stream from its first frame, but the MP4 header (which opens
    every codec) is written at the first packet of any stream: resizing then fails and that
    camera is lost. Sizing every
    stream up front keeps them all. x264's default preset is slow and runs in the event loop:
    ultrafast keeps a recorded room from delaying signalling and the shared view."""
    context = compat_aiortc.recorder_tracks(recorder).get(track)
    stream = getattr(context, "stream", None)
    if stream is None or stream.type != "video":
        return
    if size:
        stream.width, stream.height = size
        context.started = True  # else its first frame resizes a codec the header already opened
    stream.options = {"preset": "ultrafast"}


def store_recording(*, db, store, consult_id: int, recording: RoomRecording, path: str,
                    retention_days: int) -> int | None:
    """Put the file in the object store and link it to the consult (runs in a thread)."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            return None
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        key = recording_key(consult_id, recording.session)
        with open(path, "rb") as handle:
            store.put(key, handle, length=size, content_type=RECORDING_TYPE)
        ended = utcnow()
        with db.scope() as session:
            row = Recording(consult_id=consult_id, session=recording.session, object_key=key,
                            content_type=RECORDING_TYPE, size=size, sha256=digest.hexdigest(),
                            started_at=recording.started_at, ended_at=ended, participants=recording.participants,
                            retain_until=ended + timedelta(days=retention_days))
            session.add(row)
            session.flush()
            audit.append(session, principal=None, actor="system:rooms", action="recording.store",
                         object_type="consult", object_id=str(consult_id),
                         detail={"recording": row.id, "key": key, "size": size, "participants": recording.participants})
            return row.id
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


# ---- rooms ------------------------------------------------------------------------------

class Room:
    """The participants of one consult's room, their peers, the lead, the view, the recording."""

    def __init__(self, consult_id: int, registry: "RoomRegistry"):
        self.consult_id = consult_id
        self.registry = registry
        self.participants: dict[str, Participant] = {}
        self.relay = MediaRelay()
        self.lead: str | None = None
        self.view: dict | None = None
        self.view_seq = 0
        self.record_wanted = False
        self.recording: RoomRecording | None = None
        self.recordings_stored: list[int] = []
        self._record_lock = asyncio.Lock()

    # -- membership --

    async def join(self, participant: Participant) -> None:
        old = self.participants.get(participant.username)
        if old is not None:  # a rejoin replaces the stale connection
            await self.leave(old, replaced=True)
        self.participants[participant.username] = participant
        # The presenter leads by default; whoever was handed the lead keeps it across a rejoin.
        if self.lead not in self.participants or (participant.seat.role == "presenter" and self.view is None
                                                  and self._role(self.lead) != "presenter"):
            self.lead = self._next_lead()
        await self._send(participant, {"type": "welcome", "you": participant.public(), "lead": self.lead,
                                       "participants": [p.public() for p in self.participants.values()],
                                       "slots": MAX_REMOTE, "view": self.view, "recording": self._record_state()})
        await self._broadcast({"type": "participants", "participants": [p.public() for p in self.participants.values()],
                               "lead": self.lead})

    async def leave(self, participant: Participant, replaced: bool = False) -> None:
        if participant.gone:
            return
        participant.gone = True
        if self.participants.get(participant.username) is participant:
            del self.participants[participant.username]
        await self._close_media(participant)
        if self.lead == participant.username and not replaced:
            self.lead = self._next_lead()
        self._assign_slots()
        if not replaced:
            await self._broadcast({"type": "participants", "lead": self.lead,
                                   "participants": [p.public() for p in self.participants.values()]})
            await self._broadcast_slots()
            await self.update_recording()
        log.info("room.leave.ok consult=%s user=%s replaced=%s", self.consult_id, participant.username, replaced)

    def _role(self, username: str | None) -> str | None:
        p = self.participants.get(username or "")
        return p.seat.role if p else None

    def _next_lead(self) -> str | None:
        for role in ROLES:
            for p in self.participants.values():
                if p.seat.role == role:
                    return p.username
        return None

    # -- signalling --

    async def handle_signal(self, participant: Participant, raw: str | bytes) -> None:
        """One WebSocket message; bad input gets an error reply and changes nothing."""
        message = _safe_json(raw)
        if message is None:
            await self._error(participant, "bad-message", "expected a JSON object with a type")
            return
        kind = message["type"]
        try:
            if kind == "offer":
                await self._offer(participant, message.get("sdp"), message.get("ultrasound"), message.get("stage"))
            elif kind == "ultrasound":
                await self._set_ultrasound(participant, message.get("on"))
            elif kind == "mode":
                await self._set_mode(participant, message.get("mode"))
            elif kind == "consent":
                await self._consent(participant, message.get("given"))
            elif kind == "record":
                await self._record(participant, message.get("on"))
            elif kind == "ping":
                await self._send(participant, {"type": "pong", "t": message.get("t")})
            elif kind in ("view", "pointer", "chat", "lead", "shown"):
                await self.handle_room_message(participant, message)
            else:
                await self._error(participant, "unknown-type", f"unknown message type {kind[:40]!r}")
        except Exception:  # never let one participant's message take the room down
            log.exception("room.signal.failed consult=%s user=%s type=%s", self.consult_id,
                          participant.username, kind[:40])
            await self._error(participant, "failed", "the server could not handle this message")

    async def _offer(self, participant: Participant, text: Any, ultrasound_mid: Any = None,
                     stage_mid: Any = None) -> None:
        """Answer an offer; `ultrasound_mid` names the sendonly video m-line that carries the
        ultrasound (the presenter's page offers one, with no track until it is shared);
        `stage_mid` a recvonly video m-line beside the slots that only an ultrasound fills."""
        try:
            parsed = parse_offer(text)
        except Exception as exc:
            await self._error(participant, "bad-sdp", f"malformed SDP offer: {str(exc)[:200]}")
            return
        media = Media(pc=RTCPeerConnection(server_configuration(self.registry.settings)))
        self.registry.pcs.add(media.pc)
        self._watch(participant, media)
        try:
            await media.pc.setRemoteDescription(RTCSessionDescription(sdp=text, type="offer"))
            self._claim_slots(media, parsed, ultrasound_mid if isinstance(ultrasound_mid, str) else None,
                              stage_mid if isinstance(stage_mid, str) else None)
            await media.pc.setLocalDescription(await media.pc.createAnswer())
            self._bound_encoders(media)
        except Exception as exc:
            # The participant's current connection (if any) and the room stay as they were.
            await self._close(media)
            await self._error(participant, "bad-sdp", f"the offer could not be negotiated: {str(exc)[:200]}")
            return
        if participant.gone:
            await self._close(media)
            return
        old, participant.media = participant.media, media
        if old is not None:
            await self._close(old)
        self._drain_camera(participant, media)
        answer = _start_bitrate(media.pc.localDescription.sdp, media.ultrasound_mid, ULTRASOUND_START_KBPS)
        await self._send(participant, {"type": "answer", "sdp": answer})
        self._assign_slots()
        await self._broadcast_slots()
        await self._broadcast({"type": "participants", "lead": self.lead,
                               "participants": [p.public() for p in self.participants.values()]})
        log.info("room.offer.ok consult=%s user=%s tracks=%s", self.consult_id, participant.username,
                 sorted(media.camera))

    def _watch(self, participant: Participant, media: Media) -> None:
        pc = media.pc

        @pc.on("datachannel")
        def on_datachannel(channel):
            media.channel = channel

            @channel.on("message")
            def on_message(raw):
                task = asyncio.ensure_future(self._channel_message(participant, media, raw))
                media.tasks.append(task)
                task.add_done_callback(lambda t: t in media.tasks and media.tasks.remove(t))

            asyncio.ensure_future(self._greet_channel(participant, media))

        @pc.on("connectionstatechange")
        async def on_state():
            if pc.connectionState == "failed" and participant.media is media:
                log.warning("room.peer.failed consult=%s user=%s", self.consult_id, participant.username)
                participant.media = None
                await self._close(media)
                self._assign_slots()
                await self._broadcast_slots()
                await self.update_recording()
                await self._error(participant, "peer-failed", "the media connection failed; offer again")

    def _claim_slots(self, media: Media, parsed: sdp_parser.SessionDescription, ultrasound_mid: str | None,
                     stage_mid: str | None = None) -> None:
        """Offered sendonly/sendrecv m-lines carry the participant's camera and microphone (the
        first of each kind) and the ultrasound (the m-line named); recvonly ones are slots for
        the others (answered sendonly with a SlotTrack), the stage (named) one for an
        ultrasound only, so that a full room still shows it."""
        directions = {m.rtp.muxId: m.direction for m in parsed.media if m.kind in ("audio", "video")}
        free: dict[str, list] = {"video": [], "audio": []}
        stage = None
        for transceiver in media.pc.getTransceivers():
            offered = directions.get(transceiver.mid)
            if offered == "recvonly" and transceiver.kind == "video" and transceiver.mid == stage_mid:
                stage = Slot(video=SlotTrack("video"), audio=None, video_mid=stage_mid, audio_mid=None,
                             only="ultrasound")
                transceiver.sender.replaceTrack(stage.video)
                transceiver.direction = "sendonly"
            elif offered in ("sendonly", "sendrecv"):
                transceiver.direction = "recvonly"
                named = transceiver.kind == "video" and transceiver.mid == ultrasound_mid
                media.camera.setdefault("ultrasound" if named else transceiver.kind, transceiver.receiver.track)
                media.ultrasound_mid = ultrasound_mid if named else media.ultrasound_mid
            elif offered == "recvonly" and len(free[transceiver.kind]) < MAX_REMOTE:
                track = SlotTrack(transceiver.kind)
                transceiver.sender.replaceTrack(track)
                transceiver.direction = "sendonly"
                free[transceiver.kind].append((transceiver.mid, track))
            else:
                transceiver.direction = "inactive" if offered != "sendrecv" else "recvonly"
        tracks = [track for kind in free.values() for _, track in kind] + ([stage.video] if stage else [])
        for track in tracks:
            track.siblings = tracks
        for i in range(max(len(free["video"]), len(free["audio"]))):
            video = free["video"][i] if i < len(free["video"]) else (None, None)
            audio = free["audio"][i] if i < len(free["audio"]) else (None, None)
            media.slots.append(Slot(video=video[1], audio=audio[1], video_mid=video[0], audio_mid=audio[0]))
        if stage is not None:
            media.slots.append(stage)
        if media.ultrasound_mid is not None:
            # Chromium takes a REMB as the cap of its whole connection, whichever stream it names:
            # the camera's would hold the ultrasound down too (why none: consult/compat_aiortc.py).
            for transceiver in media.pc.getTransceivers():
                if transceiver.kind == "video" and directions.get(transceiver.mid) in ("sendonly", "sendrecv"):
                    compat_aiortc.no_remb(transceiver.receiver)

    def _bound_encoders(self, media: Media) -> None:
        """Every video slot's encoder takes its share of the receiver's REMB within its shape's
        bounds (SlotTrack.bitrate_for), not aiortc's one range and the whole REMB each."""
        answer = sdp_parser.SessionDescription.parse(media.pc.localDescription.sdp)
        codecs = {m.rtp.muxId: m.rtp.codecs[0].mimeType.lower() for m in answer.media
                  if m.kind == "video" and m.rtp.codecs}
        for transceiver in media.pc.getTransceivers():
            track = transceiver.sender.track
            if not isinstance(track, SlotTrack) or track.kind != "video":
                continue
            if codecs.get(transceiver.mid) == "video/vp8":
                compat_aiortc.bound_vp8(transceiver.sender, track.bitrate_for)
                track.encoder = compat_aiortc.sender_encoder(transceiver.sender)
            else:
                log.warning("room.slot.codec consult=%s mid=%s codec=%s: aiortc's own bitrate range applies",
                            self.consult_id, transceiver.mid, codecs.get(transceiver.mid))

    def _drain_camera(self, participant: Participant, media: Media) -> None:
        """Read every incoming track through the relay even when nobody watches: aiortc queues
        undelivered frames without bound, and the counts tell when media really flows."""
        for kind, track in media.camera.items():
            sink = self.relay.subscribe(track, buffered=False)
            media.tasks.append(asyncio.ensure_future(self._drain(participant, media, kind, sink)))

    async def _drain(self, participant: Participant, media: Media, kind: str, sink: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await sink.recv()
                media.frames[kind] = media.frames.get(kind, 0) + 1
                if kind != "audio":
                    media.sizes[kind] = (frame.width, frame.height)
                if media.frames[kind] == 1 and self.record_wanted:
                    await self.update_recording()
        except (MediaStreamError, asyncio.CancelledError):
            pass
        finally:
            sink.stop()

    def _assign_slots(self) -> None:
        """Show everyone's camera, and an ultrasound being shared, in slots of everyone else;
        clear slots whose person or ultrasound has gone. A full set of slots shows cameras of
        those who came first (MAX_REMOTE + 1 people with media fit); an ultrasound goes to the
        page's stage slot first, so it shows in a full room too."""
        live = {p.username: p for p in self.participants.values() if p.media is not None}
        for viewer in live.values():
            for slot in viewer.media.slots:
                owner = live.get(slot.owner or "")
                if slot.owner is not None and (owner is None or owner.media.serial != slot.owner_media
                                               or slot.source not in _sources(owner)):
                    slot.clear()
            shown = {(slot.owner, slot.source) for slot in viewer.media.slots if slot.owner}
            for other in live.values():
                for source in _sources(other) if other is not viewer else ():
                    slot = _free_slot(viewer.media.slots, source)
                    if slot is None or (other.username, source) in shown:
                        continue
                    slot.owner, slot.owner_media, slot.source = other.username, other.media.serial, source
                    self._fill(slot, other.media, viewer.mode)

    def _fill(self, slot: Slot, source: Media, mode: str) -> None:
        """The slot's tracks read its owner's camera and microphone, or the ultrasound alone,
        shaped for the viewer's mode (SHAPES)."""
        ultrasound = slot.source == "ultrasound"
        video = source.camera.get("ultrasound" if ultrasound else "video")
        audio = None if ultrasound else source.camera.get("audio")
        if slot.video is not None:
            slot.video.shape = SHAPES.get((slot.source or "camera", mode), SlotShape())
            slot.video.set_source(self.relay.subscribe(video, buffered=False) if video and mode != "audio" else None)
        if slot.audio is not None:
            slot.audio.set_source(self.relay.subscribe(audio) if audio else None)

    async def _set_ultrasound(self, participant: Participant, on: Any) -> None:
        """The presenter starts or stops sending the ultrasound: a slot of its own appears in
        everyone else's page, or goes."""
        if not isinstance(on, bool):
            await self._error(participant, "bad-ultrasound", "on is true or false")
            return
        participant.ultrasound = on
        self._assign_slots()
        await self._broadcast_slots()
        await self._broadcast({"type": "participants", "lead": self.lead,
                               "participants": [p.public() for p in self.participants.values()]})

    async def _set_mode(self, participant: Participant, mode: Any) -> None:
        """Low bandwidth: receive 320x240 video, or audio only (no video sent down at all)."""
        if mode not in MODES:
            await self._error(participant, "bad-mode", f"mode is one of {', '.join(MODES)}")
            return
        before, participant.mode = participant.mode, mode
        if participant.media is not None and before != mode:
            for slot in participant.media.slots:
                owner = self.participants.get(slot.owner or "")
                if owner is not None and owner.media is not None:
                    self._fill(slot, owner.media, mode)
        await self._broadcast({"type": "participants", "lead": self.lead,
                               "participants": [p.public() for p in self.participants.values()]})

    async def _broadcast_slots(self) -> None:
        for p in list(self.participants.values()):
            if p.media is None:
                continue
            slots = [{"video_mid": s.video_mid, "audio_mid": s.audio_mid, "participant": s.owner,
                      "name": self.participants[s.owner].seat.display_name if s.owner in self.participants else None,
                      "role": self._role(s.owner), "source": s.source} for s in p.media.slots]
            await self._send(p, {"type": "slots", "slots": slots})

    # -- data channel: shared view, lead, chat --

    async def _greet_channel(self, participant: Participant, media: Media) -> None:
        """Whoever (re)joins starts from the current view, lead and chat."""
        try:
            history = await asyncio.to_thread(self.registry.chat_history, self.consult_id)
        except Exception:
            log.exception("room.chat.history.failed consult=%s", self.consult_id)
            history = []
        self._channel_send(media, {"type": "state", "lead": self.lead, "view": self.view, "seq": self.view_seq,
                                   "chat": history})

    async def _channel_message(self, participant: Participant, media: Media, raw) -> None:
        message = _safe_json(raw)
        if message is None:
            self._channel_send(media, {"type": "error", "code": "bad-message", "detail": "expected JSON with a type"})
            return
        try:
            await self.handle_room_message(participant, message)
        except Exception:
            log.exception("room.channel.failed consult=%s user=%s", self.consult_id, participant.username)
            self._channel_send(media, {"type": "error", "code": "failed", "detail": "message not handled"})

    async def handle_room_message(self, participant: Participant, message: dict) -> None:
        kind = message["type"]
        if kind == "view":
            await self._view(participant, message)
        elif kind == "pointer":
            self._pointer(participant, message)
        elif kind == "lead":
            await self._hand_over(participant, message.get("to"))
        elif kind == "chat":
            await self._chat(participant, message.get("text"))
        elif kind == "shown":
            self._shown(participant, message)
        elif kind == "ping":
            self._reply(participant, {"type": "pong", "t": message.get("t")})
        else:
            self._reply(participant, {"type": "error", "code": "unknown-type", "detail": kind[:40]})

    async def _view(self, participant: Participant, message: dict) -> None:
        state = message.get("state")
        if participant.username != self.lead:
            self._reply(participant, {"type": "error", "code": "not-lead", "detail": f"{self.lead} leads the view"})
            return
        if not isinstance(state, dict) or len(json.dumps(state)) > MAX_MESSAGE:
            self._reply(participant, {"type": "error", "code": "bad-view", "detail": "state must be a small object"})
            return
        self.view = state
        self.view_seq += 1
        out = {"type": "view", "from": participant.username, "seq": self.view_seq, "t": message.get("t"),
               "state": state}
        for other in self.participants.values():
            if other is not participant and other.media is not None:
                self._channel_send(other.media, out)

    def _shown(self, participant: Participant, message: dict) -> None:
        """A follower says what its viewer shows of the shared view (still loading, or the
        slice on its canvas): told to the lead only, so the presenter does not talk about an
        image the specialist does not see yet. Never kept."""
        lead = self.participants.get(self.lead or "")
        loading, label = message.get("loading"), message.get("label", "")
        if lead is None or lead is participant or lead.media is None or not isinstance(loading, bool):
            return
        self._channel_send(lead.media, {"type": "shown", "from": participant.username,
                                        "name": participant.seat.display_name, "loading": loading,
                                        "seq": message.get("seq") if isinstance(message.get("seq"), int) else None,
                                        "label": str(label)[:80]})

    def _pointer(self, participant: Participant, message: dict) -> None:
        """The lead's pointer in image pixels: fanned out, never kept (it changes every few ms)."""
        x, y = message.get("x"), message.get("y")
        if participant.username != self.lead or not all(isinstance(v, (int, float)) for v in (x, y)):
            return
        out = {"type": "pointer", "from": participant.username, "x": x, "y": y}
        for other in self.participants.values():
            if other is not participant and other.media is not None:
                self._channel_send(other.media, out)

    async def _hand_over(self, participant: Participant, to: Any) -> None:
        if participant.username != self.lead and participant.seat.role != "coordinator":
            self._reply(participant, {"type": "error", "code": "not-lead", "detail": "only the lead hands over"})
            return
        if not isinstance(to, str) or to not in self.participants:
            self._reply(participant, {"type": "error", "code": "bad-lead", "detail": "not in the room"})
            return
        self.lead = to
        await self._broadcast({"type": "lead", "lead": to, "by": participant.username}, channel=True)

    async def _chat(self, participant: Participant, text: Any) -> None:
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_CHAT:
            self._reply(participant, {"type": "error", "code": "bad-chat", "detail": f"1 to {MAX_CHAT} characters"})
            return
        out = await asyncio.to_thread(self.registry.save_chat, self.consult_id, participant.seat.user_id, text.strip())
        await self._broadcast(out, channel=True)

    # -- consent and recording --

    async def _consent(self, participant: Participant, given: Any) -> None:
        if not isinstance(given, bool):
            await self._error(participant, "bad-consent", "given is true or false")
            return
        await asyncio.to_thread(self.registry.record_consent, self.consult_id, participant.seat, given)
        participant.consent = given
        await self.update_recording()

    async def _record(self, participant: Participant, on: Any) -> None:
        if not isinstance(on, bool):
            await self._error(participant, "bad-record", "on is true or false")
            return
        self.record_wanted = on
        await self.update_recording()

    def _record_state(self) -> dict:
        missing = sorted(p.username for p in self.participants.values() if not p.consent)
        state = "recording" if self.recording else ("waiting-consent" if self.record_wanted and missing
                                                     else "waiting-media" if self.record_wanted else "off")
        return {"state": state, "missing_consent": missing, "stored": list(self.recordings_stored)}

    def _record_sources(self) -> dict[tuple[str, str], MediaStreamTrack]:
        """Tracks that have delivered frames (an unused stream cannot be finished in MP4)."""
        found = {}
        for p in self.participants.values():
            if p.media is None:
                continue
            for kind, track in p.media.camera.items():
                if p.media.frames.get(kind, 0) > 0:
                    found[(p.username, kind)] = track
        return found

    async def update_recording(self) -> None:
        """Record while it is wanted and everyone present consents; a change of who is in the
        room closes the current file and starts the next one (MP4 streams are fixed)."""
        async with self._record_lock:
            present = list(self.participants.values())
            allowed = self.record_wanted and present and all(p.consent for p in present)
            sources = self._record_sources() if allowed else {}
            current = self.recording
            if current is not None and (not allowed or current.sources != {k: id(t) for k, t in sources.items()}):
                self.recording = None
                await self._finish(current)
            if allowed and sources and self.recording is None:
                sizes = {(p.username, kind): size for p in present if p.media is not None
                         for kind, size in p.media.sizes.items()}
                self.recording = RoomRecording(self, sources, sizes)
                await self.recording.start()
                log.info("room.recording.start consult=%s session=%s sources=%s", self.consult_id,
                         self.recording.session, sorted(sources))
        await self._broadcast({"type": "recording", **self._record_state()})

    async def _finish(self, recording: RoomRecording) -> None:
        path = await recording.stop()
        try:
            row_id = await asyncio.to_thread(self.registry.store_recording, self.consult_id, recording, path)
        except Exception:
            log.exception("room.recording.store.failed consult=%s session=%s", self.consult_id, recording.session)
            return
        if row_id is not None:
            self.recordings_stored.append(row_id)
            log.info("room.recording.stored consult=%s recording=%s", self.consult_id, row_id)

    # -- sending and closing --

    async def _send(self, participant: Participant, message: dict) -> None:
        if participant.gone and message.get("type") != "error":
            return
        try:
            await participant.send(message)
        except Exception:  # a socket that is going away; its handler cleans up
            pass

    async def _error(self, participant: Participant, code: str, detail: str) -> None:
        await self._send(participant, {"type": "error", "code": code, "detail": detail})

    def _reply(self, participant: Participant, message: dict) -> None:
        """Answer on the data channel when there is one, else on the WebSocket."""
        if participant.media is not None and participant.media.channel is not None \
                and participant.media.channel.readyState == "open":
            self._channel_send(participant.media, message)
        else:
            asyncio.ensure_future(self._send(participant, message))

    @staticmethod
    def _channel_send(media: Media, message: dict) -> None:
        channel = media.channel
        if channel is not None and channel.readyState == "open":
            try:
                channel.send(json.dumps(message, ensure_ascii=False))
            except Exception:
                log.debug("room.channel.send.failed", exc_info=True)

    async def _broadcast(self, message: dict, channel: bool = False) -> None:
        for p in list(self.participants.values()):
            if channel and p.media is not None and p.media.channel is not None \
                    and p.media.channel.readyState == "open":
                self._channel_send(p.media, message)
            else:
                await self._send(p, message)

    async def _close_media(self, participant: Participant) -> None:
        media, participant.media = participant.media, None
        if media is not None:
            await self._close(media)

    async def _close(self, media: Media) -> None:
        """Close a peer and everything reading from it; safe to call twice."""
        if media.closed:
            return
        media.closed = True
        for task in list(media.tasks):
            task.cancel()
        for slot in media.slots:
            for track in (slot.video, slot.audio):
                if track is not None:
                    track.stop()
        try:
            await media.pc.close()
        except Exception:
            log.exception("room.peer.close.failed consult=%s", self.consult_id)
        self.registry.pcs.discard(media.pc)

    async def close(self) -> None:
        """Stop and store a running recording, then hang up on everyone."""
        self.record_wanted = False
        for p in list(self.participants.values()):
            p.gone = True
            await self._close_media(p)
        self.participants.clear()
        if self.recording is not None:
            current, self.recording = self.recording, None
            await self._finish(current)


class RoomRegistry:
    """Every room and every RTCPeerConnection of this process, closed on shutdown."""

    def __init__(self, *, settings, db, store):
        self.settings = settings
        self.db = db
        self.store = store
        self.rooms: dict[int, Room] = {}
        self.pcs: set[RTCPeerConnection] = set()
        self.closed = False

    def room(self, consult_id: int) -> Room:
        if consult_id not in self.rooms:
            self.rooms[consult_id] = Room(consult_id, self)
        return self.rooms[consult_id]

    async def join(self, seat: Seat, send: Callable[[dict], Awaitable[None]]) -> tuple[Room, Participant]:
        if self.closed:
            raise Conflict("the server is shutting down")
        room = self.room(seat.consult_id)
        consent = await asyncio.to_thread(self._consent_of, seat)
        participant = Participant(seat=seat, send=send, consent=consent)
        await room.join(participant)
        return room, participant

    async def leave(self, room: Room, participant: Participant) -> None:
        await room.leave(participant)
        if not room.participants and room.recording is None and self.rooms.get(room.consult_id) is room:
            del self.rooms[room.consult_id]

    async def close(self) -> None:
        """App shutdown: store recordings, close every peer connection. Safe to call twice."""
        self.closed = True
        for room in list(self.rooms.values()):
            await room.close()
        self.rooms.clear()
        for pc in list(self.pcs):
            await pc.close()
        self.pcs.clear()

    # The thread-side helpers: each is one unit of work.

    def _consent_of(self, seat: Seat) -> bool:
        with self.db.scope(readonly=True) as session:
            return current_consent(session=session, consult_id=seat.consult_id, user_id=seat.user_id)

    def chat_history(self, consult_id: int) -> list[dict]:
        with self.db.scope(readonly=True) as session:
            return chat_history(session=session, consult_id=consult_id)

    def save_chat(self, consult_id: int, user_id: int, text: str) -> dict:
        with self.db.scope() as session:
            message = save_chat(session=session, consult_id=consult_id, user_id=user_id, text=text)
            return chat_out(message, session.get(User, user_id))

    def record_consent(self, consult_id: int, seat: Seat, given: bool) -> None:
        with self.db.scope() as session:
            record_consent(session=session, consult_id=consult_id, user_id=seat.user_id, username=seat.username,
                           given=given)

    def store_recording(self, consult_id: int, recording: RoomRecording, path: str) -> int | None:
        days = int(getattr(self.settings, "room_recording_retention_days", 365))
        return store_recording(db=self.db, store=self.store, consult_id=consult_id, recording=recording, path=path,
                               retention_days=days)
