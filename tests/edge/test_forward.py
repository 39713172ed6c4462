"""The edge's outbox and forwarder on a real embedded database: the scan of the local index,
the sending order, the time windows and the cap, the back-off, the retention, a clean stop on
SIGTERM, and the status page's plain words."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import date, datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import select

from edge import outbox
from edge.client import Paused, RegionClient
from edge.forward import Forwarder
from edge.models import EdgeLink, OutboxInstance, OutboxStudy
from edge.status import edge_status
from edge.windows import PAUSED, Throttle, cap_at, parse_windows, paused_until
from edge.worklist_models import WorklistEntry
from imaging.models import Instance, RecognitionDecision, Study
from imaging.service import Ingestor
from storage import identity
from storage import service as tenancy
from storage.models import AuditRecord
from storage.runtime import bootstrap
from storage.types import utcnow
from tests.conftest import embedded_settings, settings_env
from tests.dicomdata import ct_instance
from tests.edge.transfer_world import PASSWORD, region_app
from tests.services import free_port

BEIJING = timezone(timedelta(hours=8))


@pytest.fixture
def edge(tmp_path):
    """An edge's embedded installation (its region is nowhere: nothing here talks to it)."""
    settings = embedded_settings(tmp_path, edge_region_url=f"http://127.0.0.1:{free_port()}",
                                 edge_credential="lce_test", edge_windows="08:00-18:00=512,18:00-08:00=0")
    runtime = bootstrap(settings, component="test")
    with runtime.db.scope() as session:
        town = tenancy.add_institution(session=session, code="T01", name="糯福乡卫生院", level="township")
        identity.add_user(session=session, username="rad", role="radiographer", institution_code="T01",
                          password=PASSWORD)
    runtime.town_id = town.id
    yield runtime
    runtime.db.dispose()


SERIES: dict[str, str] = {}  # one series per study


def _ingest(runtime, study: str, number: int, *, seed: int = 0, sop: str | None = None) -> str:
    sop = sop or generate_uid()
    ingestor = Ingestor(runtime.db, runtime.store)
    ingestor.ingest(ct_instance(study_uid=study, series_uid=SERIES.setdefault(study, generate_uid()), sop_uid=sop,
                                instance_number=number, seed=seed),
                    institution_id=runtime.town_id, source="MODALITY")
    ingestor.close()
    return sop


def _scan(runtime, now=None) -> int:
    with runtime.db.scope() as session:
        return outbox.scan(session=session, now=now or utcnow())


def _register(runtime, study: str, priority: int, n: int) -> None:
    with runtime.db.scope() as session:
        session.add(WorklistEntry(study_instance_uid=study, accession_number=f"A{n}", priority=priority,
                                  urgent=priority == 0, institution_id=runtime.town_id, family_name="王",
                                  given_name="芳", name_pinyin="Wang^Fang", sex="F", birth_date=date(1990, 5, 1),
                                  patient_id=f"P{n}", modality="CT", procedure_code="CT", procedure="胸部CT",
                                  scheduled_at=utcnow(), registered_by="desk"))


def _next(runtime, now=None, busy=frozenset()):
    with runtime.db.scope(readonly=True) as session:
        return outbox.next_item(session=session, now=now or utcnow(), busy=busy)


def _study(runtime, uid: str) -> OutboxStudy:
    with runtime.db.scope(readonly=True) as session:
        row = session.scalar(select(OutboxStudy).where(OutboxStudy.study_instance_uid == uid))
        session.expunge(row)
        return row


def test_the_scan_queues_new_and_changed_instances_once(edge):
    study = generate_uid()
    sops = [_ingest(edge, study, n) for n in (1, 2, 3)]
    assert _scan(edge) == 3
    assert _scan(edge) == 0  # comparing a series twice changes nothing
    row = _study(edge, study)
    assert (row.state, row.instances) == ("queued", 3) and row.size > 3 * 2048
    with edge.db.scope() as session:
        for item in session.scalars(select(OutboxInstance)):
            outbox.note_progress(session=session, instance_id=item.id, sha256=item.sha256, offset=item.size,
                                 done=True, now=utcnow())
        outbox.note_sent(session=session, study_id=row.id, now=utcnow())
    _ingest(edge, study, 2, seed=99, sop=sops[1])  # a corrected re-send replaces instance 2 here
    _ingest(edge, study, 4)                         # and a late image joins the study
    assert _scan(edge) == 2
    row = _study(edge, study)
    assert (row.state, row.instances, row.sent_at) == ("queued", 4, None)
    with edge.db.scope(readonly=True) as session:
        pending = {sop for sop, in session.execute(select(OutboxInstance.sop_instance_uid)
                                                   .where(OutboxInstance.done.is_(False)))}
        local = session.scalar(select(Instance.sha256).where(Instance.sop_instance_uid == sops[1]))
        queued = session.scalar(select(OutboxInstance.sha256).where(OutboxInstance.sop_instance_uid == sops[1]))
    assert sops[1] in pending and len(pending) == 2 and queued == local  # the new version goes


def test_urgent_studies_go_first_then_the_oldest_and_a_refused_one_waits(edge):
    routine_old, urgent, routine_new = generate_uid(), generate_uid(), generate_uid()
    now = utcnow()
    for n, study in enumerate((routine_old, urgent, routine_new)):
        _ingest(edge, study, 1)
        _scan(edge, now + timedelta(seconds=n))  # queued in this order
    _register(edge, urgent, 0, 1)
    _register(edge, routine_new, 1, 2)
    order = []
    busy: set[int] = set()
    while (item := _next(edge, busy=frozenset(busy))) is not None:
        order.append(item.study_uid)
        busy.add(item.instance_id)
    assert order == [urgent, routine_old, routine_new]
    with edge.db.scope() as session:  # the desk marks the newest urgent late: it moves up
        session.execute(WorklistEntry.__table__.update().where(WorklistEntry.study_instance_uid == routine_new)
                        .values(priority=0))
    first = _next(edge)
    assert first.study_uid == urgent and _next(edge, busy=frozenset({first.instance_id})).study_uid == routine_new
    streams = Forwarder(edge, threading.Event())  # while an urgent instance is on the line, nothing routine
    claimed = streams._claim()
    assert (claimed.study_uid, claimed.priority) == (urgent, 0)
    assert streams._claim().study_uid == routine_new and streams._claim() is None  # routine_old waits
    with edge.db.scope() as session:  # the region refused the urgent one: it waits, the others go on
        failed = outbox.note_study_failure(session=session, study_id=_study(edge, urgent).id, kind="forbidden",
                                           detail="403", now=utcnow())
        assert timedelta(seconds=10) <= failed.next_attempt_at - utcnow() <= timedelta(seconds=12.1)
    assert _next(edge).study_uid == routine_new
    assert _next(edge, now=utcnow() + timedelta(seconds=13)).study_uid == urgent


def test_windows_and_the_cap():
    windows = parse_windows("08:00-18:00=512, 18:00-08:00=0")
    at = lambda hour, minute=0: datetime(2026, 12, 4, hour, minute, tzinfo=BEIJING)  # noqa: E731
    assert cap_at(windows, 0, at(10)) == 512 * 1000 / 8  # bytes per second
    assert cap_at(windows, 0, at(20)) is None and cap_at(windows, 0, at(7, 59)) is None  # across midnight
    assert cap_at(windows, 256, at(10)) == cap_at(windows, 256, at(20)) == 256 * 1000 / 8  # the lower cap
    assert cap_at([], 0, at(10)) is None
    lunch = parse_windows("12:00-13:00=off,08:00-18:00=1000")
    assert cap_at(lunch, 0, at(12, 30)) == PAUSED and paused_until(lunch, at(12, 30)) == "13:00"
    assert cap_at(lunch, 0, at(13)) == 125_000 and paused_until(lunch, at(13)) == ""
    for wrong in ("8-18=512", "25:00-26:00=1", "08:00-18:00=fast", "08:00-18:00"):
        with pytest.raises(ValueError):
            parse_windows(wrong)


def test_the_throttle_holds_the_rate_and_stops_when_paused():
    stop = threading.Event()
    throttle = Throttle(lambda: 1_000_000.0)
    started = time.monotonic()
    for _ in range(100):  # 1.6 MB in 16 KiB pieces
        assert throttle.take(16384, stop)
        throttle.sent(16384)
    took = time.monotonic() - started
    assert 1.3 < took < 2.0, took  # 1.64 s at the rate, less the first quarter-second burst
    assert 0.7e6 < throttle.measured() < 1.4e6
    paused = Throttle(lambda: PAUSED)
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    assert paused.take(100, stop) is False and time.monotonic() - started < 1.5


def test_the_back_off_is_bounded_and_goes_on_for_ever(edge):
    for attempt, base in enumerate(outbox.LINE_BACKOFF_S, start=1):
        assert base <= outbox.backoff(attempt, outbox.LINE_BACKOFF_S) <= base * 1.2
    assert outbox.LINE_BACKOFF_S[-1] <= outbox.backoff(1000, outbox.LINE_BACKOFF_S) <= outbox.LINE_BACKOFF_S[-1] * 1.2
    waits = []
    with edge.db.scope() as session:
        for _ in range(8):
            now = utcnow()
            link = outbox.note_line_failure(session=session, kind="unreachable", detail="refused", now=now)
            waits.append((link.next_attempt_at - now).total_seconds())
    assert all(base <= wait <= base * 1.2 + 0.05 for base, wait in zip((1, 2, 4, 8), waits))
    assert all(10 <= wait <= 12.05 for wait in waits[4:])  # and so on for ever
    with edge.db.scope() as session:
        link = outbox.note_line_failure(session=session, kind="credential", detail="401", now=utcnow())
        assert link.failures == 9 and link.next_attempt_at - utcnow() >= timedelta(seconds=299)
        link = outbox.note_contact(session=session, now=utcnow())
        assert (link.failures, link.next_attempt_at, link.error_kind) == (0, None, "")


def _sent_days_ago(edge, study: str, days: float) -> None:
    with edge.db.scope() as session:
        row = session.scalar(select(OutboxStudy).where(OutboxStudy.study_instance_uid == study))
        for item in session.scalars(select(OutboxInstance).where(OutboxInstance.study_id == row.id)):
            outbox.note_progress(session=session, instance_id=item.id, sha256=item.sha256, offset=item.size,
                                 done=True, now=utcnow())
        outbox.note_sent(session=session, study_id=row.id, now=utcnow() - timedelta(days=days))


def _purge_due(edge, *, now=None) -> list[str]:
    purged = []
    with edge.db.scope() as session:
        for row in outbox.purgeable(session=session, now=now or utcnow(), retention_days=30):
            keys = outbox.purge(session=session, study=row, now=utcnow())
            if row.state == "purged":
                purged.append(row.study_instance_uid)
                for key in keys:
                    edge.store.delete(key)
    return purged


def test_nothing_is_deleted_before_the_region_confirmed_and_the_retention_passed(edge):
    queued, kept, due, changed, referred = (generate_uid() for _ in range(5))
    for study in (queued, kept, due, changed, referred):
        _ingest(edge, study, 1)
    _scan(edge)
    assert _purge_due(edge, now=utcnow() + timedelta(days=400)) == []  # never confirmed: never deleted
    _sent_days_ago(edge, kept, 29)
    for study in (due, changed, referred):
        _sent_days_ago(edge, study, 31)
    with edge.db.scope(readonly=True) as session:
        keys = list(session.scalars(select(Instance.object_key).join(Instance.series).join(Study)
                                    .where(Study.study_instance_uid == due)))
    sop = None
    with edge.db.scope(readonly=True) as session:
        sop = session.scalar(select(Instance.sop_instance_uid).join(Instance.series).join(Study)
                             .where(Study.study_instance_uid == changed))
    _ingest(edge, changed, 1, seed=7, sop=sop)  # corrected here after the region confirmed it
    _scan(edge)
    with edge.db.scope() as session:  # a 互认 decision still refers to this one
        user = identity.get_user(session=session, username="rad")
        local = session.scalar(select(Study).where(Study.study_instance_uid == referred))
        session.add(RecognitionDecision(study_pk=local.id, study_instance_uid=referred, recognised=True,
                                        performing_institution_id=edge.town_id,
                                        deciding_institution_id=edge.town_id, user_id=user.id))
    assert _purge_due(edge) == [due]
    assert not any(edge.store.exists(key) for key in keys)
    with edge.db.scope(readonly=True) as session:
        left = set(session.scalars(select(Study.study_instance_uid)))
        states = dict(session.execute(select(OutboxStudy.study_instance_uid, OutboxStudy.state)).all())
    assert left == {queued, kept, changed, referred}
    assert states == {queued: "queued", kept: "sent", due: "purged", changed: "queued", referred: "sent"}


def test_the_forwarder_stops_on_sigterm_and_the_page_says_why_in_plain_words(edge):
    study = generate_uid()
    for n in (1, 2):
        _ingest(edge, study, n)
    _register(edge, study, 0, 1)
    forwarder = subprocess.Popen([sys.executable, "-m", "edge.forward"], env=settings_env(edge.settings),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with edge.db.scope(readonly=True) as session:
                link = session.get(EdgeLink, 1)
                if link is not None and link.failures >= 2:
                    break
            time.sleep(0.2)
        assert link is not None and link.failures >= 2 and link.error_kind == "unreachable"
    finally:
        os.kill(forwarder.pid, signal.SIGTERM)
        output, _ = forwarder.communicate(timeout=15)
    assert forwarder.returncode == 0 and "edge.forward.stop" in output
    with TestClient(region_app(edge.settings)) as client:
        client.post("/login", data={"username": "rad", "password": PASSWORD})
        page = client.get("/edge/status")
    assert page.status_code == 200
    assert "无法连接县医院" in page.text and "已自动重试（第" in page.text and "下次 " in page.text
    assert study in page.text and "急 Urgent" in page.text and "0/2 幅影像" in page.text
    assert "Traceback" not in page.text and "Errno" not in page.text


def test_the_status_page_counts_bytes_and_eta_in_sending_order(edge):
    first, second = generate_uid(), generate_uid()
    for study, count in ((first, 1), (second, 2)):
        for n in range(count):
            _ingest(edge, study, n + 1)
    _scan(edge)
    with edge.db.scope() as session:
        one = session.scalar(select(OutboxStudy.size).where(OutboxStudy.study_instance_uid == first))
        link = outbox.note_contact(session=session, now=utcnow())
        # half the bytes go on the wire, the first study in 60 s: the second's two instances take 120 s more
        link.rate_bps, link.wire_ratio, link.measured_at = one * 0.5 / 60, 0.5, utcnow()
    with edge.db.scope(readonly=True) as session:
        status = edge_status(session=session, settings=edge.settings, now=utcnow())
    assert [s.uid for s in status.queue] == [first, second] and status.line == "up"
    assert [s.eta for s in status.queue] == ["约 1 分钟 / about 1 min", "约 3 分钟 / about 3 min"]
    assert status.remaining == sum(s.size for s in status.queue) and "已连接县医院" in status.line_words


def test_xz_gives_way_to_gzip_only_when_the_line_waits_for_it():
    stop, data = threading.Event(), os.urandom(256 * 1024)  # xz cannot shrink it: the line has all of it
    encodings = {}
    for label, rate in (("fast line", None), ("slow line", 300_000.0)):  # 1 MB: 3.5 s on the slow line
        client = RegionClient("http://127.0.0.1:1", "lce_x", stop=stop, throttle=Throttle(lambda rate=rate: rate))
        client.encoding, client.wire_sent = "xz", 16 << 20  # past the socket buffers' first gulp
        for _ in range(4):
            assert b"".join(client._pieces(lambda at, n: data[at:at + n], 0, len(data), 32 * 1024, "xz"))
        encodings[label] = client.encoding
        client.shutdown()
    assert encodings == {"fast line": "gzip", "slow line": "xz"}


def test_an_off_window_abandons_the_request_between_pieces():
    stop, windows = threading.Event(), {"now": None}
    client = RegionClient("http://127.0.0.1:1", "lce_x", stop=stop, throttle=Throttle(lambda: windows["now"]))
    body = client._pieces(lambda at, n: os.urandom(n), 0, 1 << 20, 256 * 1024, "gzip")
    next(body)
    windows["now"] = PAUSED
    client.throttle._asked = 0.0  # (the throttle asks the windows once a second)
    with pytest.raises(Paused):
        for _ in body:
            pass
    client.shutdown()


def test_the_status_page_audits_its_read_and_is_not_found_where_there_is_no_region(edge, tmp_path):
    study = generate_uid()
    _ingest(edge, study, 1)
    _scan(edge)
    with TestClient(region_app(edge.settings)) as client:
        assert client.get("/edge/status", follow_redirects=False).status_code in (303, 401)  # signed in only
        client.post("/login", data={"username": "rad", "password": PASSWORD})
        assert client.get("/edge/status").status_code == 200
    with edge.db.scope(readonly=True) as session:
        actions = list(session.scalars(select(AuditRecord.action).where(AuditRecord.action == "edge.status.view")))
    assert actions == ["edge.status.view"]
    region = bootstrap(embedded_settings(tmp_path / "region"), component="test")
    try:
        with region.db.scope() as session:
            tenancy.add_institution(session=session, code="C01", name="澜沧县人民医院", level="county")
            identity.add_user(session=session, username="rad", role="radiographer", institution_code="C01",
                              password=PASSWORD)
        with TestClient(region_app(region.settings)) as client:
            client.post("/login", data={"username": "rad", "password": PASSWORD})
            page = client.get("/edge/status")
        assert page.status_code == 404 and "本机不是乡镇边缘节点" in page.text
    finally:
        region.db.dispose()
