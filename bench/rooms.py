"""Live consult rooms on loopback: an aiortc room client (also used by the tests) and the
benchmark: time to first remote frame, shared-view latency p95, server CPU per forwarded
participant, and how many two-party rooms at 640x480 two cores sustain.

    python -m bench.rooms [--size 640x480] [--max-rooms 6] [--seconds 10]

The server runs in a child process (uvicorn, embedded settings, a fresh data dir) so its
CPU time is measured apart from the clients'. Prints one JSON line per figure.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from urllib.parse import quote

import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, MediaStreamTrack
from av import VideoFrame

SLOTS = 5
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 40, 220), "yellow": (230, 220, 30)}


class PatternTrack(MediaStreamTrack):
    """A synthetic camera: a solid colour recognisable after VP8, paced at `fps`."""

    kind = "video"

    def __init__(self, rgb: tuple[int, int, int], size: tuple[int, int] = (160, 120), fps: int = 15,
                 texture: bool = False):
        super().__init__()
        width, height = size
        picture = np.zeros((height, width, 3), dtype=np.int16)
        picture[:, :] = rgb
        if texture:  # a camera-like load for the encoder: fixed noise that moves every frame
            picture += np.random.default_rng(1).integers(-24, 25, (height, width, 1), dtype=np.int16)
        picture = picture.clip(0, 255).astype(np.uint8)
        self._yuv = VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p").to_ndarray()
        self._texture = texture
        self._fps = fps
        self._start: float | None = None
        self._count = 0

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            wait = self._start + self._count / self._fps - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        planes = np.roll(self._yuv, 4 * self._count, axis=1) if self._texture else self._yuv
        frame = VideoFrame.from_ndarray(planes, format="yuv420p")
        frame.pts = self._count * (90000 // self._fps)
        frame.time_base = fractions.Fraction(1, 90000)
        self._count += 1
        return frame


@dataclass
class Received:
    """What arrived on one receiving transceiver (one slot)."""

    frames: int = 0
    first_at: float | None = None
    size: tuple[int, int] | None = None
    rgb: tuple[float, float, float] | None = None


@dataclass
class RoomClient:
    """One participant: WebSocket signalling, an aiortc peer, a data channel.

    Offers its camera (and silence as microphone) sendonly plus SLOTS recvonly pairs, as
    web/static/room.js does, and records what each slot decodes."""

    base_url: str
    consult_id: int
    token: str
    colour: str = "red"
    size: tuple[int, int] = (160, 120)
    fps: int = 15
    audio: bool = True
    sample_every: int = 1
    texture: bool = False
    messages: list = field(default_factory=list)  # every signalling message
    channel_messages: list = field(default_factory=list)  # every data-channel message
    errors: list = field(default_factory=list)
    slots: list = field(default_factory=list)
    received: dict = field(default_factory=dict)  # mid -> Received
    on_view: object = None  # callback(message, arrived_at) for the shared-view benchmark

    async def open_socket(self):
        from websockets.asyncio.client import connect

        import httpx

        # A single-use ticket: the API token itself never goes into a URL.
        async with httpx.AsyncClient(timeout=30) as http:
            answer = await http.post(f"{self.base_url}/api/rooms/{self.consult_id}/ticket",
                                     headers={"Authorization": f"Bearer {self.token}"})
        answer.raise_for_status()
        ticket = answer.json()["ticket"]
        url = self.base_url.replace("http", "ws", 1) + f"/ws/rooms/{self.consult_id}?ticket={quote(ticket)}"
        self.ws = await connect(url, max_size=2 ** 22)
        self._answer: asyncio.Future = asyncio.get_running_loop().create_future()
        self._reader = asyncio.ensure_future(self._read())
        return self

    async def join(self, timeout: float = 20) -> "RoomClient":
        """Connect, negotiate, and wait until the peer connection is up."""
        self.opened_at = time.monotonic()
        await self.open_socket()
        await self.wait_for(lambda: any(m.get("type") in ("welcome", "error") for m in self.messages), timeout)
        if not any(m.get("type") == "welcome" for m in self.messages):
            raise PermissionError(self.messages[-1])
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.camera = PatternTrack(COLOURS[self.colour], self.size, self.fps, self.texture)
        self.pc.addTransceiver(self.camera, direction="sendonly")
        if self.audio:
            self.pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        for _ in range(SLOTS):
            self.pc.addTransceiver("video", direction="recvonly")
            if self.audio:
                self.pc.addTransceiver("audio", direction="recvonly")
        self.channel = self.pc.createDataChannel("room")
        self.channel.on("message", self._channel_message)
        self.pc.on("track", self._track)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        await self.send({"type": "offer", "sdp": self.pc.localDescription.sdp})
        answer = await asyncio.wait_for(self._answer, timeout)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await self.wait_for(lambda: self.pc.connectionState == "connected" and self.channel.readyState == "open",
                            timeout)
        return self

    async def send(self, message: dict) -> None:
        await self.ws.send(json.dumps(message))

    async def send_raw(self, text: str) -> None:
        await self.ws.send(text)

    def say(self, message: dict) -> None:
        """On the data channel (view, chat, lead)."""
        self.channel.send(json.dumps(message))

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                message = json.loads(raw)
                self.messages.append(message)
                kind = message.get("type")
                if kind == "answer" and not self._answer.done():
                    self._answer.set_result(message["sdp"])
                elif kind == "slots":
                    self._new_slots(message["slots"])
                elif kind == "error":
                    self.errors.append(message)
        except Exception:
            pass

    def _new_slots(self, slots: list) -> None:
        # A slot that now shows someone else (or the same person after a rejoin) starts afresh.
        before = {s["video_mid"]: s["participant"] for s in self.slots}
        for slot in slots:
            if slot["video_mid"] in self.received and before.get(slot["video_mid"]) != slot["participant"]:
                self.received[slot["video_mid"]] = Received()
        self.slots = slots

    def _channel_message(self, raw) -> None:
        message = json.loads(raw)
        arrived = time.perf_counter()
        self.channel_messages.append(message)
        if message.get("type") == "view" and callable(self.on_view):
            self.on_view(message, arrived)

    def _track(self, track) -> None:
        mid = next((t.mid for t in self.pc.getTransceivers() if t.receiver.track is track), None)
        if track.kind == "video" and mid is not None:
            self.received[mid] = Received()
            asyncio.ensure_future(self._consume(track, mid))
        else:
            asyncio.ensure_future(self._discard(track))

    async def _consume(self, track, mid: str) -> None:
        try:
            while True:
                frame = await track.recv()
                into = self.received[mid]
                into.frames += 1
                if into.first_at is None:
                    into.first_at = time.monotonic()
                into.size = (frame.width, frame.height)
                if into.frames % self.sample_every == 1 or self.sample_every == 1:
                    rgb = frame.to_ndarray(format="rgb24")
                    into.rgb = tuple(float(v) for v in rgb.reshape(-1, 3).mean(axis=0))
        except MediaStreamError:
            pass

    @staticmethod
    async def _discard(track) -> None:
        try:
            while True:
                await track.recv()
        except MediaStreamError:
            pass

    def from_participant(self, username: str) -> Received | None:
        """What this client decoded from `username`'s camera (through the slot the server chose)."""
        for slot in self.slots:
            if slot["participant"] == username and slot["video_mid"] in self.received:
                return self.received[slot["video_mid"]]
        return None

    async def wait_for(self, predicate, timeout: float = 20, step: float = 0.05) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out; last messages: {self.messages[-3:]} errors: {self.errors}")
            await asyncio.sleep(step)

    async def frames_from(self, username: str, count: int = 5, timeout: float = 20) -> Received:
        await self.wait_for(lambda: (r := self.from_participant(username)) is not None and r.frames >= count, timeout)
        return self.from_participant(username)

    async def close(self) -> None:
        """Hang up: peer, then socket. Safe to call twice."""
        for closer in (lambda: self.pc.close(), lambda: self.ws.close()):
            try:
                await closer()
            except Exception:
                pass
        if getattr(self, "_reader", None):
            self._reader.cancel()


def looks_like(rgb, colour: str, tolerance: float = 40) -> bool:
    """A decoded frame's mean colour is the sender's colour (VP8 keeps flat colours close)."""
    return rgb is not None and all(abs(a - b) <= tolerance for a, b in zip(rgb, COLOURS[colour]))


# ---- the benchmark ----------------------------------------------------------------------

def _world(data_dir: str, rooms: int) -> tuple[dict, list[int]]:
    """Institutions, a presenter and a specialist per room, a scheduled live consult each."""
    from datetime import datetime, timedelta

    from consult import scheduling, service
    from storage.localtime import zone

    LOCAL = zone()
    from storage.runtime import bootstrap
    from storage.settings import Settings
    from storage import service as tenancy
    from storage import identity

    from imaging.service import Ingestor
    from pydicom.uid import generate_uid
    from tests.dicomdata import ct_instance

    runtime = bootstrap(Settings(_env_file=None, data_dir=data_dir), component="bench")
    tokens, consults = {}, []
    with runtime.db.scope() as session:
        tenancy.add_institution(session=session, code="CITY", name="市医院", level="city")
        town = tenancy.add_institution(session=session, code="TOWN", name="镇卫生院", level="township",
                                       parent_code="CITY")
        town_id = town.id
        identity.add_user(session=session, username="coord", role="coordinator", institution_code="CITY",
                          password="password-1", display_name="协调")
    ingestor = Ingestor(runtime.db, runtime.store)
    study = generate_uid()
    ingestor.ingest(ct_instance(study_uid=study), institution_id=town_id, source="bench")
    ingestor.close()
    start = (datetime.now(LOCAL) + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    for i in range(rooms):
        with runtime.db.scope() as session:
            presenter = identity.add_user(session=session, username=f"p{i}", role="radiographer",
                                          institution_code="TOWN", password="password-1", display_name=f"镇{i}")
            specialist = identity.add_user(session=session, username=f"s{i}", role="specialist",
                                           institution_code="CITY", password="password-1", display_name=f"专家{i}")
            for user in (presenter, specialist):
                tokens[user.username] = identity.issue_token(session=session, user=user)[0]
            scheduling.set_weekly(session=session, user=specialist, windows=[(d, "00:00", "23:59") for d in range(7)])
            consult = service.create(session=session, requester=presenter, kind="live", target_code="CITY",
                                     study_uids=[study], clinical_question="bench")
            coordinator = identity.get_user(session=session, username="coord")
            service.accept(session=session, consult_id=consult.id, user=coordinator)
            # The coordinator is booked in every room: one half hour each.
            scheduling.book(session=session, consult_id=consult.id, coordinator=coordinator,
                            specialist_username=specialist.username,
                            starts_local=(start + timedelta(minutes=40 * i)).replace(tzinfo=None), minutes=30)
            consults.append(consult.id)
    runtime.db.dispose()
    return tokens, consults


def _serve(data_dir: str, port: int):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("LANCANG_")}
    env.update(LANCANG_DATA_DIR=data_dir, LANCANG_LOG_LEVEL="WARNING")
    code = ("import uvicorn; from bench.rooms import bench_app; "
            f"uvicorn.run(bench_app(), host='127.0.0.1', port={port}, log_level='warning')")
    return subprocess.Popen([sys.executable, "-c", code], env=env)


def bench_app():
    """The product web app (it wires the room router)."""
    from web.app import create_app

    return create_app()



def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _wait_http(url: str, timeout: float = 30) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(url + "/login")).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError("server did not start")


async def _pair(base, consult_id, tokens, i, size, fps) -> tuple[RoomClient, RoomClient]:
    presenter = RoomClient(base, consult_id, tokens[f"p{i}"], colour="red", size=size, fps=fps, sample_every=30,
                           texture=True)
    specialist = RoomClient(base, consult_id, tokens[f"s{i}"], colour="blue", size=size, fps=fps,
                            sample_every=30, texture=True)
    await presenter.join()
    await specialist.join()
    return presenter, specialist


async def _view_latency(presenter: RoomClient, follower: RoomClient, samples: int) -> list[float]:
    """Presenter's change -> follower has it (same clock: both clients live in this process)."""
    sent: dict[int, float] = {}
    got: dict[int, float] = {}
    follower.on_view = lambda message, arrived: got.setdefault(message["state"]["index"], arrived)
    for index in range(samples):
        sent[index] = time.perf_counter()
        presenter.say({"type": "view", "state": {"index": index, "windowCenter": 40, "windowWidth": 400 + index}})
        await asyncio.sleep(0.02)
    await follower.wait_for(lambda: len(got) >= samples, 10)
    return [(got[i] - sent[i]) * 1000 for i in range(samples)]


async def run(args) -> None:
    import tempfile

    from tests.services import free_port

    width, height = (int(v) for v in args.size.split("x"))
    data_dir = tempfile.mkdtemp(prefix="lancang-bench-rooms-")
    tokens, consults = _world(data_dir, args.max_rooms)
    port = free_port()
    server = _serve(data_dir, port)
    base = f"http://127.0.0.1:{port}"
    try:
        await _wait_http(base)
        # 1. Time to first remote frame and shared-view latency in one room.
        presenter, specialist = await _pair(base, consults[0], tokens, 0, (width, height), args.fps)
        got = await specialist.frames_from("p0", 1, 30)
        first_ms = (got.first_at - specialist.opened_at) * 1000
        print(json.dumps({"figure": "first_remote_frame_ms", "value": round(first_ms, 1),
                          "note": "specialist opens the socket -> first decoded frame of the presenter"}))
        latencies = await _view_latency(presenter, specialist, args.view_samples)
        p95 = statistics.quantiles(latencies, n=20)[18]
        print(json.dumps({"figure": "shared_view_latency_ms", "p50": round(statistics.median(latencies), 2),
                          "p95": round(p95, 2), "goal_p95": 100, "samples": len(latencies),
                          "note": "data channel, presenter -> server -> follower (render time not included)"}))
        clients = [presenter, specialist]
        # 2. Load: add two-party rooms until a room's video falls below 90% of the frame rate.
        per_rooms = []
        for n in range(1, args.max_rooms + 1):
            if n > 1:
                clients += await _pair(base, consults[n - 1], tokens, n - 1, (width, height), args.fps)
            await asyncio.sleep(2)
            before = {id(c): {m: r.frames for m, r in c.received.items()} for c in clients}
            cpu0, t0 = _cpu_seconds(server.pid), time.monotonic()
            await asyncio.sleep(args.seconds)
            cpu = (_cpu_seconds(server.pid) - cpu0) / (time.monotonic() - t0)
            rates = []
            for c in clients:
                for mid, r in c.received.items():
                    if r.frames:
                        rates.append((r.frames - before[id(c)].get(mid, 0)) / args.seconds)
            worst = min(rates) if rates else 0.0
            per_rooms.append({"rooms": n, "server_cpu_cores": round(cpu, 3), "forwarded_participants": 2 * n,
                              "cpu_per_forwarded_participant": round(cpu / (2 * n), 3),
                              "worst_fps": round(worst, 1), "target_fps": args.fps})
            print(json.dumps({"figure": "load", **per_rooms[-1]}))
            if worst < 0.9 * args.fps or cpu > 1.9:
                break
        sustained = max((r["rooms"] for r in per_rooms if r["worst_fps"] >= 0.9 * args.fps
                         and r["server_cpu_cores"] <= 1.9), default=0)
        print(json.dumps({"figure": "sustained_two_party_rooms", "value": sustained, "size": args.size,
                          "fps": args.fps, "cores": os.cpu_count(),
                          "note": "rooms whose every video kept >= 90% of the frame rate, server under 1.9 cores; "
                                  "clients share the same 2 cores"}))
        for c in clients:
            await c.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--max-rooms", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--view-samples", type=int, default=200)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
