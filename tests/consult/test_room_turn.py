"""TURN for live consult rooms, for real: coturn (`turnserver`) on 127.0.0.1 with the TURN
REST shared secret (`--use-auth-secret`, as in compose.yaml), the app handing out
time-limited credentials at GET /api/rooms/{id}/ice, and two aiortc participants that may
use relay candidates only (`iceTransportPolicy="relay"`).

Checked: decoded frames both ways through the relay, over UDP to a coturn that has no TCP
listener and over TCP to a coturn that has no UDP listener (a network that blocks UDP);
the nominated ICE pair is relay on the client and the client's relay address on the
server's peer; coturn's own log shows the allocations under the REST usernames; expired,
forged and lapsed credentials get no allocation and no connection. And the real room page
in headless Chromium, relay only, sharing its (synthetic) screen to an aiortc participant.

The server's peers (consult/rooms.py, `server_configuration`) gather host candidates only:
that is enough, because a relay-only client's checks arrive from coturn's relay address,
which the server's host candidates reach directly (here 127.0.0.1 <-> the machine's
address over the loopback route; in compose, coturn runs with network_mode: host).
No network namespace is needed: relay-only clients never pair host candidates, so the
loopback problem of TESTING.md (Browser) does not arise. The server's peers do need a
non-loopback IPv4 address (aioice leaves 127.0.0.1 out), as every machine here has.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import uvicorn
import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack
from aiortc.rtcconfiguration import RTCIceTransportPolicy

from bench.rooms import COLOURS, SLOTS, PatternTrack, RoomClient, looks_like
from consult.models import ConsultRequest
from storage.runtime import bootstrap
from tests.conftest import embedded_settings
from tests.consult.room_scenario import CHROMIUM_ARGS, world
from tests.consult.test_rooms import live_consult, room_app
from tests.services import find_binary, free_port, log_tail, stop_pid, wait_until

SECRET = "turn-rest-shared-secret-for-tests"
REALM = "lancang"


# ---- coturn ------------------------------------------------------------------------------

def _free_udp_and_tcp_port() -> int:
    for _ in range(100):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no port free for both UDP and TCP")


class Coturn:
    """One `turnserver` on 127.0.0.1 with REST credentials, stopped by its PID.

    `transports` picks the client listeners: ("udp",) starts it with --no-tcp, ("tcp",)
    with --no-udp, so a call that works proves which transport carried it."""

    def __init__(self, workdir: Path, transports: tuple[str, ...]):
        self.dir = workdir
        self.transports = transports
        self.port = _free_udp_and_tcp_port()
        self.log_path = workdir / "turnserver.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Coturn":
        self.dir.mkdir(parents=True, exist_ok=True)
        config = self.dir / "turnserver.conf"
        config.write_text("# empty: every option is on the command line (Debian's sends logs to syslog)\n")
        command = [
            # coturn block-buffers stdout into a file; line buffering lets the test read it live.
            "stdbuf", "-oL", find_binary("turnserver"), "-c", str(config),
            f"--listening-port={self.port}", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1",
            "--use-auth-secret", f"--static-auth-secret={SECRET}", f"--realm={REALM}",
            "--allow-loopback-peers", "--no-tls", "--no-dtls", "--no-cli", "--fingerprint",
            "--log-file=stdout", "--simple-log", "--verbose",
            f"--pidfile={self.dir / 'turnserver.pid'}", f"--userdb={self.dir / 'turndb'}",
            *(["--no-tcp"] if "tcp" not in self.transports else []),
            *(["--no-udp"] if "udp" not in self.transports else []),
        ]
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        opened = {"udp": "UDP listener opened on", "tcp": "TCP listener opened on"}
        wait_until(lambda: all(opened[t] in self.log() for t in self.transports), "turnserver", self.log_path,
                   self.proc, timeout=20)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc.pid, proc=self.proc, timeout=10)
            self.proc = None

    def url(self, transport: str) -> str:
        return f"turn:127.0.0.1:{self.port}?transport={transport}"


@pytest.fixture(scope="module")
def coturn(tmp_path_factory):
    """One coturn that listens on UDP only and one that listens on TCP only."""
    servers = {}
    try:
        for transport in ("udp", "tcp"):
            servers[transport] = Coturn(tmp_path_factory.mktemp(f"coturn-{transport}"), (transport,)).start()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


# ---- the app -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def people(tmp_path_factory):
    """Users, a study and a first live consult in one embedded data dir the apps share."""
    if not aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False):
        pytest.fail("the server's peers need a non-loopback IPv4 address to reach coturn's relay on 127.0.0.1 "
                    "(aioice never offers 127.0.0.1); not inside `unshare -n`")
    settings = embedded_settings(tmp_path_factory.mktemp("turn-rooms"))
    runtime = bootstrap(settings, component="test")
    api, sessions, first = world(runtime)
    with runtime.db.scope(readonly=True) as session:
        study = session.get(ConsultRequest, first).studies[0].study_instance_uid
    counter = iter(range(1, 100))
    yield SimpleNamespace(settings=settings, tokens=api, sessions=sessions, runtime=runtime,
                          consult=lambda: live_consult(runtime, study, next(counter)))
    runtime.db.dispose()


@contextmanager
def serve(settings):
    """The product app under uvicorn on 127.0.0.1 (a thread), with these settings."""
    app = room_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="turn-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield SimpleNamespace(app=app, base=f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert not app.state.rooms.pcs, "shutdown left peer connections open"


def app_settings(people, urls: list[str], ttl_s: int = 600):
    return people.settings.model_copy(update={"room_turn_urls": urls, "room_turn_secret": SECRET,
                                              "room_turn_ttl_s": ttl_s})


def fetch_ice(base: str, token: str, consult_id: int) -> dict:
    """What a participant's browser gets: the ICE servers with fresh TURN REST credentials."""
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as http:
        response = http.get(f"/api/rooms/{consult_id}/ice")
    assert response.status_code == 200, response.text
    return response.json()


def as_rtc(ice_servers: list[dict]) -> list[RTCIceServer]:
    return [RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
            for s in ice_servers]


# ---- a relay-only room client -------------------------------------------------------------

@dataclass
class RelayClient(RoomClient):
    """bench.rooms.RoomClient with the ICE servers the app handed out and relay candidates only
    (RoomClient hard-codes RTCConfiguration(iceServers=[]))."""

    ice_servers: list = field(default_factory=list)

    async def join(self, timeout: float = 20) -> "RelayClient":
        self.opened_at = time.monotonic()
        await self.open_socket()
        await self.wait_for(lambda: any(m.get("type") in ("welcome", "error") for m in self.messages), timeout)
        if not any(m.get("type") == "welcome" for m in self.messages):
            raise PermissionError(self.messages[-1])
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=self.ice_servers,
                                                     iceTransportPolicy=RTCIceTransportPolicy.RELAY))
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
        self.offered = self.pc.localDescription.sdp
        await self.send({"type": "offer", "sdp": self.offered})
        answer = await asyncio.wait_for(self._answer, timeout)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await self.wait_for(lambda: self.pc.connectionState in ("connected", "failed", "closed")
                            and (self.pc.connectionState != "connected" or self.channel.readyState == "open"),
                            timeout)
        if self.pc.connectionState != "connected":
            raise ConnectionError(f"peer connection {self.pc.connectionState}")
        return self


def ice_connection(pc: RTCPeerConnection):
    """aioice's Connection under a (bundled) peer connection. aiortc's getStats() has no
    candidate-pair entries, so the nominated pair is read from aioice."""
    return pc.sctp.transport.transport._connection


def nominated(pc: RTCPeerConnection):
    pair = ice_connection(pc)._nominated.get(1)
    assert pair is not None, "no nominated candidate pair"
    return pair.local_candidate, pair.remote_candidate


def offered_candidate_types(sdp: str) -> set[str]:
    return set(re.findall(r"a=candidate:\S+ \d \S+ \d+ \S+ \d+ typ (\w+)", sdp))


def allocations(log: str) -> list[str]:
    """The username of each successful ALLOCATE in coturn's log.

    coturn does not log the client transport per session; each coturn here has one client
    listener only, so the transport is fixed by how it was started."""
    return re.findall(r"user <([^>]*)>: incoming packet ALLOCATE processed, success", log)


def relayed_peers(log: str) -> set[tuple[str, int]]:
    """Peer addresses coturn was asked to relay to (permissions and channel binds)."""
    found = re.findall(r"peer (\d+\.\d+\.\d+\.\d+):(\d+) lifetime updated", log)
    return {(host, int(port)) for host, port in found}


def rest_credential(secret: str, username: str, expiry: int) -> tuple[str, str]:
    """coturn's TURN REST scheme, computed here independently of consult/rooms.py."""
    name = f"{expiry}:{username}"
    return name, base64.b64encode(hmac.new(secret.encode(), name.encode(), hashlib.sha1).digest()).decode()


def run(coro, timeout: float = 60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


# ---- the tests ---------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_two_participants_meet_through_coturn_only(people, coturn, transport):
    turn = coturn[transport]
    cid = people.consult()
    with serve(app_settings(people, [turn.url(transport)])) as app:
        ice = {user: fetch_ice(app.base, people.tokens[user], cid) for user in ("li", "wang")}
        for user, got in ice.items():
            (server,) = got["iceServers"]
            assert server["urls"] == [turn.url(transport)]
            expiry, name = server["username"].split(":", 1)
            assert name == user and 590 <= int(expiry) - time.time() <= 601 and got["ttl"] == 600
            assert (server["username"], server["credential"]) == rest_credential(SECRET, user, int(expiry))

        server_hosts: set = set()

        async def scenario():
            li = RelayClient(app.base, cid, people.tokens["li"], colour="red",
                             ice_servers=as_rtc(ice["li"]["iceServers"]))
            wang = RelayClient(app.base, cid, people.tokens["wang"], colour="blue",
                               ice_servers=as_rtc(ice["wang"]["iceServers"]))
            await li.join()
            await wang.join()
            assert looks_like((await wang.frames_from("li", 10)).rgb, "red")
            assert looks_like((await li.frames_from("wang", 10)).rgb, "blue")
            verdict = {}
            for client in (li, wang):
                # Only relay candidates were offered, and the nominated pair is the relay.
                assert offered_candidate_types(client.offered) == {"relay"}, client.offered
                local, remote = nominated(client.pc)
                assert local.type == "relay" and local.host == "127.0.0.1" and local.port != turn.port
                verdict[client.token] = (local, remote)
                # The TURN leg uses the transport asked for (aioice's TCP client frames STUN over a stream).
                relay = next(p for p in ice_connection(client.pc)._protocols if p.local_candidate.type == "relay")
                inner = type(relay.transport._TurnTransport__inner_protocol).__name__
                assert inner == {"udp": "TurnClientUdpProtocol", "tcp": "TurnClientTcpProtocol"}[transport], inner
            # The server's peers reached both relay addresses from their host candidates.
            relay_addresses = {(local.host, local.port) for local, _ in verdict.values()}
            server_sides = [nominated(pc) for pc in list(app.app.state.rooms.pcs)]
            assert len(server_sides) == 2
            assert {(remote.host, remote.port) for _, remote in server_sides} == relay_addresses
            assert all(local.type == "host" and remote.type == "relay" for local, remote in server_sides)
            server_hosts.update((local.host, local.port) for local, _ in server_sides)
            # Media keeps flowing through the relay.
            before = wang.from_participant("li").frames
            await asyncio.sleep(1.0)
            assert wang.from_participant("li").frames > before
            for client in (li, wang):
                await client.close()

        run(scenario())
    # coturn's own account: allocations under each participant's REST username, and relaying
    # to the server peers' host addresses (the only place the media could have gone).
    log = turn.log()
    users = {s["iceServers"][0]["username"] for s in ice.values()}
    assert users <= set(allocations(log)), log_tail(turn.log_path, 60)
    assert server_hosts <= relayed_peers(log), (server_hosts, relayed_peers(log))


def test_expired_forged_and_lapsed_credentials_get_no_relay(people, coturn):
    """coturn refuses the allocation (401), so a relay-only client has no candidate and never
    connects. Three participants try at once: li with a past expiry, wang with a future
    expiry signed with the wrong secret, zhou with the app's own credential after its TTL."""
    turn = coturn["udp"]
    cid = people.consult()
    now = int(time.time())
    bad = {"li": rest_credential(SECRET, "li", now - 60),                   # right secret, past expiry
           "wang": rest_credential("not-the-secret", "wang", now + 600)}   # future expiry, wrong secret

    async def refused(base: str, user: str, username: str, credential: str, not_before: float = 0) -> float:
        await asyncio.sleep(max(0.0, not_before - time.time()))
        client = RelayClient(base, cid, people.tokens[user], audio=False,
                             ice_servers=[RTCIceServer(urls=turn.url("udp"), username=username,
                                                       credential=credential)])
        started = time.monotonic()
        with pytest.raises((ConnectionError, TimeoutError)):
            await client.join(timeout=5)
        assert offered_candidate_types(client.offered) == set(), client.offered  # no allocation, nothing to offer
        assert client.pc.connectionState != "connected"
        await client.close()
        return time.monotonic() - started

    with serve(app_settings(people, [turn.url("udp")], ttl_s=2)) as app:
        # The app's own credential, used once its TTL (2 s here) has run out.
        lapsed = fetch_ice(app.base, people.tokens["zhou"], cid)["iceServers"][0]
        expiry = int(lapsed["username"].split(":")[0])
        assert lapsed["username"] == f"{expiry}:zhou" and expiry <= time.time() + 2
        bad["zhou"] = (lapsed["username"], lapsed["credential"])

        async def attempts():
            return await asyncio.gather(refused(app.base, "li", *bad["li"]), refused(app.base, "wang", *bad["wang"]),
                                        refused(app.base, "zhou", *bad["zhou"], not_before=expiry + 1.2))

        seconds = run(attempts())
        # A fresh credential from the same app works: the refusals were about the credentials.
        fresh = fetch_ice(app.base, people.tokens["li"], cid)["iceServers"][0]

        async def works():
            client = RelayClient(app.base, cid, people.tokens["li"], audio=False, ice_servers=as_rtc([fresh]))
            await client.join()
            assert nominated(client.pc)[0].type == "relay"
            await client.close()

        run(works())
    assert all(s < 7 for s in seconds), seconds
    log = turn.log()
    made = set(allocations(log))
    assert not {username for username, _ in bad.values()} & made, made
    assert fresh["username"] in made
    # coturn answered each bad credential with 401 Unauthorized, naming it.
    for username, _ in bad.values():
        assert re.search(rf"user <{re.escape(username)}>: incoming packet \w+ processed, error 401", log), \
            (username, log_tail(turn.log_path, 80))


# ---- Chromium: the real room page, relay only, sharing its screen ---------------------------

# The page builds RTCPeerConnection({iceServers}) from /api/rooms/{id}/ice; the test adds
# iceTransportPolicy "relay" (as a network that allows nothing but TURN would) and keeps
# the peer so its stats can be read.
RELAY_ONLY_PAGE = """
(() => {
  const Native = window.RTCPeerConnection;
  window.__lancangPcs = [];
  window.RTCPeerConnection = class extends Native {
    constructor(config, ...rest) {
      super({ ...(config || {}), iceTransportPolicy: "relay" }, ...rest);
      window.__lancangPcs.push(this);
    }
  };
})();
"""

SELECTED_PAIR = """async () => {
  const pc = window.__lancangPcs[window.__lancangPcs.length - 1];
  const stats = [...(await pc.getStats()).values()];
  const byId = Object.fromEntries(stats.map((s) => [s.id, s]));
  const transport = stats.find((s) => s.type === "transport" && s.selectedCandidatePairId);
  const pair = transport && byId[transport.selectedCandidatePairId];
  if (!pair) return null;
  const local = byId[pair.localCandidateId], remote = byId[pair.remoteCandidateId];
  return { local: local.candidateType, relayProtocol: local.relayProtocol, localAddress: local.address,
           remote: remote.candidateType, remoteAddress: remote.address, remotePort: remote.port,
           iceServers: pc.getConfiguration().iceServers.map((s) => s.urls).flat(),
           policy: pc.getConfiguration().iceTransportPolicy,
           username: pc.getConfiguration().iceServers.map((s) => s.username)[0] };
}"""

SENT_TRACK = """() => {
  const pc = window.__lancangPcs[window.__lancangPcs.length - 1];
  const sender = pc.getSenders().find((s) => s.track && s.track.kind === "video");
  return sender ? { label: sender.track.label, surface: sender.track.getSettings().displaySurface || null } : null;
}"""


def test_chromium_shares_its_screen_through_coturn(people, coturn):
    """Headless Chromium has no desktop to capture; with --use-fake-ui-for-media-stream (no
    picker) and --use-fake-device-for-media-stream getDisplayMedia returns Chromium's
    synthetic 1280x720 "screen". The presenter's page shares it, relay only; an aiortc
    participant (relay only too) decodes the camera first, then the 16:9 screen."""
    if not Path("/usr/bin/chromium").exists():
        pytest.fail("/usr/bin/chromium is needed (TESTING.md, Browser)")
    turn = coturn["udp"]
    cid = people.consult()
    with serve(app_settings(people, [turn.url("udp")])) as app:

        async def scenario():
            from playwright.async_api import async_playwright

            wang = RelayClient(app.base, cid, people.tokens["wang"], colour="blue", audio=False,
                               ice_servers=as_rtc(fetch_ice(app.base, people.tokens["wang"], cid)["iceServers"]))
            await wang.join()
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
                try:
                    context = await browser.new_context()
                    await context.add_cookies([{"name": "lancang_session", "value": people.sessions["li"],
                                                "url": app.base}])
                    await context.add_init_script(RELAY_ONLY_PAGE)
                    page = await context.new_page()
                    await page.goto(f"{app.base}/consults/{cid}/room")
                    camera = await wang.frames_from("li", 5, 30)
                    assert camera.size == (640, 480), camera
                    pair = await page.evaluate(SELECTED_PAIR)
                    assert pair and pair["policy"] == "relay" and pair["iceServers"] == [turn.url("udp")], pair
                    assert pair["local"] == "relay" and pair["relayProtocol"] == "udp", pair
                    assert (await page.evaluate(SENT_TRACK))["surface"] is None  # the camera

                    await page.click("#room-screen")
                    await page.wait_for_function(
                        "() => document.getElementById('room-screen').getAttribute('aria-pressed') === 'true'",
                        timeout=10_000)
                    sent = await page.evaluate(SENT_TRACK)
                    assert sent["surface"] == "monitor" and sent["label"].startswith("screen:"), sent
                    # The same slot, no renegotiation: what wang decodes turns 16:9.
                    await wang.wait_for(lambda: (r := wang.from_participant("li")).size is not None
                                        and abs(r.size[0] / r.size[1] - 16 / 9) < 0.02, 30)
                    shared = wang.from_participant("li")
                    before = shared.frames
                    await asyncio.sleep(1.0)
                    assert wang.from_participant("li").frames > before
                    # The server's peer for the page answers the page's relay addresses. aiortc folds
                    # the bundled m-lines onto one transport but keeps the candidates of another
                    # m-line (Chromium allocates a relay per m-line before BUNDLE is agreed), so the
                    # one in use is learnt from the page's checks: "prflx", at a relay address the
                    # offer listed.
                    wang_relay = nominated(wang.pc)[0]
                    (page_pc,) = [pc for pc in app.app.state.rooms.pcs
                                  if f" {wang_relay.host} {wang_relay.port} typ relay" not in pc.remoteDescription.sdp]
                    offered = set(re.findall(r"a=candidate:\S+ \d udp \d+ (\S+) (\d+) typ relay",
                                             page_pc.remoteDescription.sdp))
                    local, remote = nominated(page_pc)
                    assert local.type == "host" and remote.type in ("relay", "prflx"), (local, remote)
                    assert (remote.host, str(remote.port)) in offered, (remote, offered)
                    assert (pair["remoteAddress"], pair["remotePort"]) == (local.host, local.port), pair
                    return {"camera": camera.size, "screen": shared.size, "pair": pair, "sent": sent}
                finally:
                    await browser.close()
                    await wang.close()

        verdict = run(scenario(), 90)
    assert verdict["screen"][0] >= 320, verdict
    # The page used the REST credential it fetched from /ice, and coturn allocated under it.
    username = verdict["pair"]["username"]
    expiry, user = username.split(":", 1)
    assert user == "li" and 500 < int(expiry) - time.time() <= 600, username
    assert username in allocations(turn.log())
