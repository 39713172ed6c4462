"""Live consult rooms through the real signalling endpoint: aiortc clients against the app
under uvicorn on 127.0.0.1 (a thread), synthetic cameras of distinct colours, decoded
frames checked by colour. Two and three parties, shared view and lead, chat kept with the
consult, drop and rejoin, malformed input, refusals, recording stored and played back."""

from __future__ import annotations

import asyncio
import json
import io
import threading
import time
from datetime import datetime, timedelta
from types import SimpleNamespace

import av
import httpx
import pytest
import uvicorn
from pydicom.uid import generate_uid

from bench.rooms import RoomClient, looks_like
from consult import rooms, scheduling, service
from consult.room_routes import byte_range
from storage.localtime import zone as local_zone

LOCAL = local_zone()
from imaging.service import Ingestor
from storage.runtime import bootstrap
from storage import service as tenancy
from storage.errors import Invalid
from storage.models import AuditRecord
from tests.conftest import embedded_settings
from tests.dicomdata import ct_instance
from tests.services import free_port
from storage import identity
from web.app import create_app

PEOPLE = {  # username: (role, institution)
    "li": ("radiographer", "TOWN"),      # presenter (requests the consult)
    "zhou": ("coordinator", "COUNTY"),
    "wang": ("specialist", "COUNTY"),
    "sun": ("specialist", "COUNTY"),     # same hospital, not booked
}


def room_app(settings):
    """The product app (web/app.py wires the room router)."""
    return create_app(settings)


def live_consult(runtime, study: str, slot: int, *, status: str = "scheduled") -> int:
    """A live consult li -> COUNTY, booked with wang (zhou coordinates) in its own half hour."""
    start = (datetime.now(LOCAL) + timedelta(days=2)).replace(hour=8, minute=0, second=0, microsecond=0, tzinfo=None)
    with runtime.db.scope() as session:
        li, zhou = (identity.get_user(session=session, username=u) for u in ("li", "zhou"))
        consult = service.create(session=session, requester=li, kind="live", target_code="COUNTY",
                                 study_uids=[study], clinical_question="孕32周，胎儿生长受限？")
        service.accept(session=session, consult_id=consult.id, user=zhou)
        if status == "scheduled":
            scheduling.book(session=session, consult_id=consult.id, coordinator=zhou, specialist_username="wang",
                            starts_local=start + timedelta(minutes=40 * slot), minutes=30)
        return consult.id


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    runtime = bootstrap(embedded_settings(tmp_path_factory.mktemp("rooms")), component="test")
    tokens = {}
    with runtime.db.scope() as session:
        tenancy.add_institution(session=session, code="COUNTY", name="澜沧县人民医院", level="county")
        town = tenancy.add_institution(session=session, code="TOWN", name="勐朗镇卫生院", level="township",
                                       parent_code="COUNTY")
        town_id = town.id
        for username, (role, code) in PEOPLE.items():
            user = identity.add_user(session=session, username=username, role=role, institution_code=code,
                                     password="password-1", display_name=username.upper())
            tokens[username] = identity.issue_token(session=session, user=user)[0]
        scheduling.set_weekly(session=session, user=identity.get_user(session=session, username="wang"),
                              windows=[(d, "00:00", "23:59") for d in range(7)])
    ingestor = Ingestor(runtime.db, runtime.store)
    study = generate_uid()
    ingestor.ingest(ct_instance(study_uid=study), institution_id=town_id, source="test")
    ingestor.close()

    app = room_app(runtime.settings)
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, name="rooms-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    counter = iter(range(100))
    yield SimpleNamespace(runtime=runtime, app=app, base=f"http://127.0.0.1:{port}", tokens=tokens, study=study,
                          consult=lambda **kw: live_consult(runtime, study, next(counter), **kw))
    uv.should_exit = True
    thread.join(timeout=30)
    # Shutdown closed every peer connection the server held.
    assert not app.state.rooms.pcs and not app.state.rooms.rooms
    runtime.db.dispose()


def client(server, consult_id, user, colour, **kw) -> RoomClient:
    return RoomClient(server.base, consult_id, server.tokens[user], colour=colour, **kw)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def test_two_then_three_parties_media_view_chat_drop_and_rejoin(server):
    cid = server.consult()

    async def scenario():
        li, wang = client(server, cid, "li", "red"), client(server, cid, "wang", "blue")
        await li.join()
        await wang.join()
        # Each decodes the other's camera, recognisably.
        assert looks_like((await wang.frames_from("li")).rgb, "red")
        assert looks_like((await li.frames_from("wang")).rgb, "blue")

        zhou = client(server, cid, "zhou", "green")
        await zhou.join()
        for viewer, other, colour in ((zhou, "li", "red"), (zhou, "wang", "blue"), (li, "zhou", "green"),
                                      (wang, "zhou", "green")):
            got = await viewer.frames_from(other)
            assert looks_like(got.rgb, colour), (viewer.token, other, got)

        # The presenter leads the shared view; followers get it over the data channel.
        welcome = next(m for m in zhou.messages if m["type"] == "welcome")
        assert welcome["lead"] == "li"
        state = {"studyUid": server.study, "seriesUid": "1.2", "index": 7, "windowCenter": 40, "windowWidth": 80,
                 "zoom": 1.5, "pan": {"x": 3, "y": -2}, "measurements": []}
        li.say({"type": "view", "state": state})
        for follower in (wang, zhou):
            await follower.wait_for(lambda f=follower: any(m.get("type") == "view" and m["state"] == state
                                                           for m in f.channel_messages))
        # A follower tells the lead what its viewer shows (16.6); nobody else hears it.
        wang.say({"type": "shown", "seq": 1, "loading": True, "label": "加载中 Loading Im 8/20"})
        await li.wait_for(lambda: any(m.get("type") == "shown" and m["from"] == "wang" and m["loading"]
                                      and m["label"] == "加载中 Loading Im 8/20" for m in li.channel_messages))
        li.say({"type": "shown", "seq": 1, "loading": False, "label": "Im 8/20"})  # the lead's own: dropped
        zhou.say({"type": "shown", "loading": "yes"})  # malformed: dropped
        for c in (li, zhou):  # a ping after each: its pong means the message before was handled
            c.say({"type": "ping", "t": 1})
            await c.wait_for(lambda c=c: any(m.get("type") == "pong" for m in c.channel_messages))
        assert not any(m.get("type") == "shown" for m in zhou.channel_messages + wang.channel_messages)
        assert sum(m.get("type") == "shown" for m in li.channel_messages) == 1
        # A follower cannot steer until the lead is handed over.
        wang.say({"type": "view", "state": {**state, "index": 9}})
        await wang.wait_for(lambda: any(m.get("code") == "not-lead" for m in wang.channel_messages))
        li.say({"type": "lead", "to": "wang"})
        await li.wait_for(lambda: any(m.get("type") == "lead" and m["lead"] == "wang" for m in li.channel_messages))
        wang.say({"type": "view", "state": {**state, "index": 9}})
        await li.wait_for(lambda: any(m.get("type") == "view" and m["state"]["index"] == 9
                                      for m in li.channel_messages))

        # Chat reaches everyone and is kept with the consult.
        zhou.say({"type": "chat", "text": "请放大左下肺"})
        for c in (li, wang, zhou):
            await c.wait_for(lambda c=c: any(m.get("type") == "chat" and m["text"] == "请放大左下肺"
                                             for m in c.channel_messages))

        # wang drops (no goodbye) and comes back: the others see him again.
        await wang.close()
        await li.wait_for(lambda: all(s["participant"] != "wang" for s in li.slots), 30)
        back = client(server, cid, "wang", "yellow")
        await back.join()
        assert looks_like((await li.frames_from("wang")).rgb, "yellow")
        assert looks_like((await back.frames_from("li")).rgb, "red")
        # The lead went back to the presenter when wang dropped; he starts from the current view and chat.
        greeting = next(m for m in back.channel_messages if m["type"] == "state")
        assert greeting["lead"] == "li" and greeting["view"]["index"] == 9
        assert [m["text"] for m in greeting["chat"]] == ["请放大左下肺"]
        for c in (li, zhou, back):
            await c.close()

    run(scenario())
    with httpx.Client(base_url=server.base, headers={"Authorization": f"Bearer {server.tokens['zhou']}"}) as http:
        chat = http.get(f"/api/rooms/{cid}/chat")
    assert chat.status_code == 200, chat.text
    chat = chat.json()
    assert [(m["from"], m["text"]) for m in chat] == [("zhou", "请放大左下肺")]
    with server.runtime.db.scope(readonly=True) as session:
        joins = session.query(AuditRecord).filter_by(action="room.join", object_id=str(cid), outcome="ok").all()
    assert sorted(r.actor for r in joins) == ["li", "wang", "wang", "zhou"]


def test_malformed_input_gets_an_error_and_the_room_goes_on(server):
    cid = server.consult()

    async def scenario():
        li, wang = client(server, cid, "li", "red", audio=False), client(server, cid, "wang", "blue", audio=False)
        await li.join()
        await wang.join()
        await wang.frames_from("li")
        bad = ["not json", "[1, 2]", '{"no": "type"}', '{"type": "offer", "sdp": "v=0\\r\\nnonsense"}',
               '{"type": "offer", "sdp": 42}', '{"type": "mode", "mode": "8k"}', '{"type": "whatever"}',
               '{"type": "consent", "given": "yes"}']
        for raw in bad:
            await wang.send_raw(raw)
        # A syntactically valid offer without DTLS fingerprints is refused too.
        stripped = "\r\n".join(line for line in wang.pc.localDescription.sdp.splitlines()
                               if not line.startswith("a=fingerprint"))
        await wang.send({"type": "offer", "sdp": stripped})
        await wang.wait_for(lambda: len(wang.errors) >= len(bad) + 1)
        codes = [e["code"] for e in wang.errors]
        assert codes.count("bad-sdp") == 3 and "bad-message" in codes and "unknown-type" in codes, codes
        wang.say({"type": "view", "state": "x"})
        wang.channel.send("\x00garbage")
        await wang.wait_for(lambda: sum(m.get("type") == "error" for m in wang.channel_messages) >= 2)
        # Media still flows both ways on the original connections.
        before = wang.from_participant("li").frames, li.from_participant("wang").frames
        await asyncio.sleep(1.0)
        assert wang.from_participant("li").frames > before[0] and li.from_participant("wang").frames > before[1]
        assert wang.pc.connectionState == "connected"
        # Low-bandwidth mode: what wang receives drops to 320x240 (from 400x300 here).
        await li.close()
        big = client(server, cid, "li", "red", audio=False, size=(400, 300))
        await big.join()
        assert (await wang.frames_from("li")).size == (400, 300)
        await wang.send({"type": "mode", "mode": "low"})
        await wang.wait_for(lambda: wang.from_participant("li").size == (320, 240))
        for c in (big, wang):
            await c.close()

    run(scenario())


def test_only_participants_join(server):
    cid = server.consult()
    unbooked = server.consult(status="accepted")  # accepted, never scheduled: no room yet

    async def refused(token, consult_id=cid):
        c = RoomClient(server.base, consult_id, token)
        await c.open_socket()
        await c.wait_for(lambda: c.messages)
        await c.wait_for(lambda: c.ws.close_code is not None, 10)
        code = c.ws.close_code
        await c.close()
        return c.messages[0], code

    async def ticket_status(token, consult_id=cid) -> int:
        async with httpx.AsyncClient(base_url=server.base) as http:
            answer = await http.post(f"/api/rooms/{consult_id}/ticket", headers={"Authorization": f"Bearer {token}"})
            return answer.status_code

    async def socket_close_code(query: str) -> int:
        from websockets.asyncio.client import connect

        async with connect(server.base.replace("http", "ws", 1) + f"/ws/rooms/{cid}?{query}") as ws:
            await ws.recv()
            await ws.wait_closed()
            return ws.close_code

    async def scenario():
        # Only participants (and the coordinator) get a ticket.
        assert await ticket_status(server.tokens["sun"]) == 403
        assert await ticket_status("lct_not-a-token") == 401
        assert await ticket_status(server.tokens["wang"], 999999) == 404
        message, code = await refused(server.tokens["zhou"], unbooked)
        assert code in (4403, 4409)
        # 13 (Low): API tokens are not accepted in the URL any more (they end in access logs).
        assert await socket_close_code(f"token={server.tokens['wang']}") == 4401
        async with httpx.AsyncClient(base_url=server.base) as http:
            ticket = (await http.post(f"/api/rooms/{cid}/ticket", headers={
                "Authorization": f"Bearer {server.tokens['wang']}"})).json()["ticket"]
            assert (await http.get("/api/me", headers={"Authorization": f"Bearer {ticket}"})).status_code == 401
        from websockets.asyncio.client import connect

        async with connect(server.base.replace("http", "ws", 1) + f"/ws/rooms/{cid}?ticket={ticket}") as ws:
            assert json.loads(await ws.recv())["type"] == "welcome"
        assert await socket_close_code(f"ticket={ticket}") == 4401  # single use

    run(scenario())
    with httpx.Client(base_url=server.base) as http:
        sun = {"Authorization": f"Bearer {server.tokens['sun']}"}
        assert http.get(f"/api/rooms/{cid}/ice", headers=sun).status_code == 403
        assert http.get(f"/api/rooms/{cid}/recordings", headers=sun).status_code == 403
        assert http.get(f"/api/rooms/{cid}/recordings").status_code == 401
        ice = http.get(f"/api/rooms/{cid}/ice", headers={"Authorization": f"Bearer {server.tokens['li']}"}).json()
        assert ice["iceServers"] == []  # nothing configured: host candidates only
        assert http.get(f"/consults/{cid}/room", follow_redirects=False).status_code == 303
    with server.runtime.db.scope(readonly=True) as session:
        denied = session.query(AuditRecord).filter(AuditRecord.action.in_(("room.join", "room.ticket")),
                                                   AuditRecord.outcome == "denied").all()
    assert {(r.action, r.actor) for r in denied} >= {("room.ticket", "sun"), ("room.join", "zhou")}


def test_turn_rest_credentials_follow_coturn():
    import base64
    import hashlib
    import hmac

    settings = SimpleNamespace(room_stun_urls=["stun:turn.example.cn:3478"], room_turn_secret="s3cret",
                               room_turn_urls=["turn:turn.example.cn:3478?transport=udp",
                                               "turn:turn.example.cn:3478?transport=tcp"], room_turn_ttl_s=600)
    stun, turn = rooms.ice_servers(settings, "li", now=1_700_000_000)
    assert stun == {"urls": ["stun:turn.example.cn:3478"]}
    assert turn["username"] == "1700000600:li"
    expected = base64.b64encode(hmac.new(b"s3cret", b"1700000600:li", hashlib.sha1).digest()).decode()
    assert turn["credential"] == expected and any("transport=tcp" in u for u in turn["urls"])
    assert byte_range(None, 10) == (0, 10, 200) and byte_range("bytes=2-", 10) == (2, 8, 206)
    assert byte_range("bytes=-3", 10) == (7, 3, 206)
    with pytest.raises(Invalid):
        byte_range("bytes=20-30", 10)


def test_recording_needs_everyones_consent_and_plays_back(server):
    cid = server.consult()

    async def scenario():
        li, wang = client(server, cid, "li", "red"), client(server, cid, "wang", "blue")
        await li.join()
        await wang.join()
        await wang.frames_from("li")
        await li.frames_from("wang")
        await li.send({"type": "consent", "given": True})
        await li.send({"type": "record", "on": True})
        await li.wait_for(lambda: any(m.get("type") == "recording" and m["state"] == "waiting-consent"
                                      and m["missing_consent"] == ["wang"] for m in li.messages))
        await wang.send({"type": "consent", "given": True})
        await li.wait_for(lambda: any(m.get("type") == "recording" and m["state"] == "recording"
                                      for m in li.messages))
        await asyncio.sleep(2.5)
        await li.send({"type": "record", "on": False})
        await li.wait_for(lambda: any(m.get("type") == "recording" and m["state"] == "off" and m["stored"]
                                      for m in li.messages), 30)
        for c in (li, wang):
            await c.close()

    run(scenario())
    with httpx.Client(base_url=server.base) as http:
        listed = http.get(f"/api/rooms/{cid}/recordings",
                          headers={"Authorization": f"Bearer {server.tokens['zhou']}"}).json()
        assert len(listed) == 1 and sorted(listed[0]["participants"]) == ["li", "wang"]
        url = listed[0]["url"]
        assert http.get(url, headers={"Authorization": f"Bearer {server.tokens['sun']}"}).status_code == 403
        played = http.get(url, headers={"Authorization": f"Bearer {server.tokens['wang']}"})
        assert played.status_code == 200 and played.headers["content-type"] == "video/mp4"
        part = http.get(url, headers={"Authorization": f"Bearer {server.tokens['wang']}", "Range": "bytes=0-99"})
        assert part.status_code == 206 and part.content == played.content[:100]
    assert server.runtime.store.get(f"recordings/{cid}/{listed[0]['session']}.mp4") == played.content

    # Decode it: one video stream per camera (red and blue), audio too, about 2.5 s long.
    with av.open(io.BytesIO(played.content)) as container:
        videos = [s for s in container.streams if s.type == "video"]
        assert len(videos) == 2 and any(s.type == "audio" for s in container.streams), list(container.streams)
        colours, counts = [], []
        for stream in videos:
            frames = [f for f in container.decode(stream)]
            container.seek(0)
            counts.append(len(frames))
            rgb = frames[-1].to_ndarray(format="rgb24").reshape(-1, 3).mean(axis=0)
            colours.append(next(c for c in ("red", "blue") if looks_like(rgb, c)))
        assert sorted(colours) == ["blue", "red"] and min(counts) >= 15, counts
