"""The forwarder: sends the edge's outbox to the region, for ever, until SIGTERM.

`run_forever(settings)` is what `lancang edge` starts as a supervised child process. One
thread scans the local index into the outbox, reports to the region (heartbeat), asks it to
confirm finished studies and deletes what the retention period lets go; STREAMS threads each
send one instance at a time over their own connection, so one stream's round trip never
leaves the line idle. Everything the forwarder learns is committed at once (the region's
offsets, what it verified), and the region keeps every byte it received: a forwarder killed
at any moment starts again where the region stands, without resending what arrived.

When the line fails every stream waits; the line is probed again after a back-off (1 s
doubling to 10 s, for ever) and the streams resume the moment it answers. A study the region
refuses waits on its own back-off while the others go on.
"""

from __future__ import annotations

import hashlib
import logging
import signal
import sys
import threading
import time
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version as package_version
from urllib.parse import urlsplit

from edge import outbox
from edge.client import SHA_MISMATCH, LinkDown, Paused, Refused, RegionClient, Stopped
from edge.models import EdgeLink, OutboxInstance, OutboxStudy
from edge.windows import PAUSED, Throttle, cap_at, parse_windows
from storage import audit, localtime
from storage.db import after_commit
from storage.objects import ObjectNotFound
from storage.runtime import Runtime, bootstrap
from storage.settings import Settings, get_settings
from storage.types import utcnow

log = logging.getLogger("lancang.edge.forward")
ACTOR = "system:edge-forward"
STREAMS = 3
REQUEST_CHUNKS = 8  # chunks per request: fewer round trips per large instance
EVERY_S = {"scan": 3.0, "heartbeat": 30.0, "measure": 5.0, "purge": 600.0}
MISMATCH_RETRIES = 3
DROPS_IN_A_ROW = 3  # broken connections without an answer between them: the line is down


def lancang_version() -> str:
    try:
        return package_version("lancang")
    except PackageNotFoundError:
        return "dev"


class Forwarder:
    def __init__(self, runtime: Runtime, stop: threading.Event, *, streams: int = STREAMS):
        self.runtime, self.settings, self.stop, self.streams = runtime, runtime.settings, stop, streams
        windows, zone = parse_windows(self.settings.edge_windows), localtime.zone(self.settings.timezone)
        self.throttle = Throttle(lambda: cap_at(windows, self.settings.edge_rate_limit_kbps, datetime.now(zone)))
        self.credential = self.settings.edge_credential.get_secret_value()
        self._lock = threading.Lock()
        self._busy: dict[int, int] = {}  # instance id -> its priority, while a stream sends it
        self._announced: dict[int, tuple] = {}  # study id -> the version of it the region has
        self._study_locks: dict[int, threading.Lock] = {}
        self._mismatches: dict[int, int] = {}
        self._unsure: set[int] = set()  # instances whose last request broke: ask where they stand
        self._line_up = threading.Event()
        self._clients: list[RegionClient] = []
        self._due = dict.fromkeys(EVERY_S, 0.0)
        self._contact_noted = 0.0
        self._main_drops = 0
        self.encoding = "gzip"

    def _client(self) -> RegionClient:
        client = RegionClient(self.settings.edge_region_url, self.credential, stop=self.stop, throttle=self.throttle)
        client.encoding = self.encoding
        self._clients.append(client)
        return client

    def run(self) -> None:
        threads = [threading.Thread(target=self._stream, name=f"edge-stream-{n}", daemon=True)
                   for n in range(self.streams)]
        for thread in threads:
            thread.start()
        main = self._client()
        try:
            while not self.stop.is_set():
                self._tick(main)
                self.stop.wait(0.5)
        finally:
            for client in self._clients:
                client.abort()  # a stream blocked on a stalled line returns now, not in IO_TIMEOUT_S
            for thread in threads:
                thread.join(timeout=5)
            for client in self._clients:
                client.shutdown()

    def _every(self, what: str) -> bool:
        now = time.monotonic()
        if now < self._due[what]:
            return False
        self._due[what] = now + EVERY_S[what]
        return True

    def _tick(self, main: RegionClient) -> None:
        if self._every("scan"):
            with self.runtime.db.scope() as session:
                found = outbox.scan(session=session, now=utcnow())
            if found:
                log.info("edge.outbox.scanned instances=%s", found)
        if self._every("purge"):
            self._purge()
        if self._every("measure"):
            self._measure()
        if not self._line_up.is_set():
            if self._line_due():
                self._hello(main)
            return
        if self._every("heartbeat"):
            self._hello(main)
        self._complete_ready(main)

    def _line_due(self) -> bool:
        with self.runtime.db.scope(readonly=True) as session:
            link = session.get(EdgeLink, 1)
            return link is None or link.next_attempt_at is None or link.next_attempt_at <= utcnow()

    # -- the line -----------------------------------------------------------------------------

    def _hello(self, main: RegionClient) -> bool:
        """Report to the region; its answer means the line is up."""
        with self.runtime.db.scope(readonly=True) as session:
            report = outbox.backlog(session=session)
            link = session.get(EdgeLink, 1)
            report.update(version=lancang_version(),
                          error=(link.error_kind if link else "") or outbox.study_error(session=session))
        try:
            answer = main.hello(report)
        except LinkDown as exc:
            if self._line_up.is_set():
                self._main_broken(exc)
            else:
                self._line_failed(exc.kind, exc.detail, probe=True)
            return False
        except Refused as exc:
            self._line_failed(exc.kind, exc.detail, probe=True)
            return False
        self._main_drops = 0
        offered = RegionClient.encoding_from(answer)
        if offered != self.encoding:  # (a connection that fell back to gzip for speed keeps it)
            self.encoding = offered
            for client in self._clients:
                client.encoding = offered
        with self.runtime.db.scope() as session:
            outbox.note_contact(session=session, now=utcnow())
        if not self._line_up.is_set():
            log.info("edge.line.up region=%s", urlsplit(self.settings.edge_region_url).hostname)
        self._line_up.set()
        return True

    def _line_failed(self, kind: str, detail: str, *, probe: bool = False) -> None:
        """Count a failure of the line once, however many streams saw it break."""
        with self._lock:
            if not probe and not self._line_up.is_set():
                return
            self._line_up.clear()
            self._announced.clear()  # ask the region where each study stands after the break
        with self.runtime.db.scope() as session:
            link = outbox.note_line_failure(session=session, kind=kind, detail=detail, now=utcnow())
            failures, retry = link.failures, link.next_attempt_at
        log.warning("edge.line.down kind=%s failures=%s retry_at=%s detail=%s", kind, failures,
                    retry.isoformat(timespec="seconds"), detail[:200])

    def _main_broken(self, exc: LinkDown) -> None:
        """The main thread's request broke while the line was up: a lossy line (try again at
        the next tick) unless it keeps happening, or a connection cannot be made at all."""
        self._main_drops = self._main_drops + 1 if exc.kind == "dropped" else DROPS_IN_A_ROW
        if self._main_drops >= DROPS_IN_A_ROW:
            self._main_drops = 0
            self._line_failed(exc.kind, exc.detail)

    def _noted_contact(self) -> None:
        if time.monotonic() - self._contact_noted > 5:
            self._contact_noted = time.monotonic()
            with self.runtime.db.scope() as session:
                outbox.note_contact(session=session, now=utcnow())

    def _measure(self) -> None:
        rate, raw = self.throttle.measured(), sum(client.raw_sent for client in self._clients)
        if rate <= 0 and not raw:
            return
        with self.runtime.db.scope() as session:
            link = outbox.link_row(session=session)
            if rate > 0:
                link.rate_bps, link.measured_at = rate, utcnow()
            if raw:
                link.wire_ratio = self.throttle.total / raw

    # -- the streams ----------------------------------------------------------------------------

    def _stream(self) -> None:
        client, dropped, upcoming = self._client(), 0, None
        while not self.stop.is_set():
            if not self._line_up.wait(timeout=1.0) or self.throttle.rate() == PAUSED:
                self.stop.wait(1.0)
                continue
            item, upcoming = upcoming or self._claim(), None
            if item is None:
                self.stop.wait(1.0)
                continue
            upcoming = self._claim()  # this stream's next instance, packed while this one is sent
            if upcoming is not None:
                self._prepare(client, upcoming)
            answered = client.answers
            try:
                self._send(client, item)
            except Stopped:
                return
            except LinkDown as exc:
                with self._lock:
                    self._unsure.add(item.instance_id)
                # A broken connection on a line that still answers is a lossy line, not a dead
                # one: reconnect at once (the region says where to resume). Breaks with no
                # answer in between, or no connection at all, are the line's failure.
                dropped = 0 if client.answers > answered else dropped
                dropped = dropped + 1 if exc.kind == "dropped" else DROPS_IN_A_ROW
                log.info("edge.send.broken sop=%s kind=%s in_a_row=%s detail=%s", item.sop, exc.kind, dropped,
                         exc.detail[:120])
                if dropped >= DROPS_IN_A_ROW:
                    self._failed(item, exc)
                else:
                    self._forget(item.study_id)
            except (Refused, ObjectNotFound, Paused) as exc:
                self._failed(item, exc)
            except Exception as exc:  # a bug must not end the stream: the study waits, the rest go on
                log.exception("edge.send.error sop=%s", item.sop)
                self._study_failed(item, "internal", f"{type(exc).__name__}: {exc}")
            finally:
                with self._lock:
                    self._busy.pop(item.instance_id, None)

    def _prepare(self, client: RegionClient, item: outbox.Item) -> None:
        if item.instance_id not in self._unsure:
            client.prepare(sop=item.sop, size=item.size, offset=item.confirmed,
                           read=lambda at, n: self.runtime.store.get(item.object_key, at, n),
                           chunk_bytes=self.settings.edge_chunk_bytes)

    def _forget(self, study_id: int) -> None:
        with self._lock:
            self._announced.pop(study_id, None)

    def _claim(self) -> outbox.Item | None:
        """The next instance for a stream. Not one of lower priority than an instance in flight:
        an urgent study gets the whole line (one stream keeps a line busy within a few percent;
        the others only hide round trips between small instances)."""
        with self._lock:
            with self.runtime.db.scope(readonly=True) as session:
                item = outbox.next_item(session=session, now=utcnow(), busy=frozenset(self._busy))
            if item is None or (self._busy and item.priority > min(self._busy.values())):
                return None
            self._busy[item.instance_id] = item.priority
            return item

    def _announce(self, client: RegionClient, study_id: int, study_uid: str) -> None:
        """Send the study's manifest unless the region has this version of it already; note
        which instances the region holds and where each resumes."""
        with self._lock:
            lock = self._study_locks.setdefault(study_id, threading.Lock())
        with lock:
            with self.runtime.db.scope(readonly=True) as session:
                study = session.get(OutboxStudy, study_id)
                current = (study.instances, study.size, study.changed_at)
                items = outbox.manifest_of(session=session, study_id=study_id)
            if self._announced.get(study_id) == current:
                return
            held = client.manifest(study_uid, items)
            with self.runtime.db.scope() as session:
                outbox.note_held(session=session, study_id=study_id, held=held, now=utcnow())
            self._announced[study_id] = current

    def _send(self, client: RegionClient, item: outbox.Item) -> None:
        self._announce(client, item.study_id, item.study_uid)
        with self.runtime.db.scope(readonly=True) as session:
            row = session.get(OutboxInstance, item.instance_id)
            if row is None or row.done or row.sha256 != item.sha256:
                return
            key, size, offset = row.object_key, row.size, row.confirmed
        if item.instance_id in self._unsure:
            # The region kept what arrived before the break, beyond its last answer: ask, rather
            # than send from a stale offset (which it would refuse before reading the body).
            done, offset = client.state(item.study_uid, item.sop)
            self._progress(item, offset, done)
            with self._lock:
                self._unsure.discard(item.instance_id)
            if done:
                return

        def read(start: int, length: int) -> bytes:
            if self.throttle.rate() == PAUSED:
                raise Paused()
            return self.runtime.store.get(key, start, length)

        outcome = client.upload(study=item.study_uid, sop=item.sop, sha256=item.sha256, size=size, offset=offset,
                                read=read, chunk_bytes=self.settings.edge_chunk_bytes,
                                request_bytes=self.settings.edge_chunk_bytes * REQUEST_CHUNKS,
                                progress=lambda held: self._progress(item, held, held >= size))
        self._mismatches.pop(item.instance_id, None)
        log.debug("edge.instance.sent sop=%s outcome=%s", item.sop, outcome)

    def _progress(self, item: outbox.Item, held: int, done: bool) -> None:
        with self.runtime.db.scope() as session:
            outbox.note_progress(session=session, instance_id=item.instance_id, sha256=item.sha256, offset=held,
                                 done=done, now=utcnow())
            if done:
                outbox.note_study_cleared(session=session, study_id=item.study_id)
        self._noted_contact()

    def _failed(self, item: outbox.Item, exc: Exception) -> None:
        """What a failure of one instance means: the line, this study, or nothing at all."""
        self._forget(item.study_id)
        if isinstance(exc, Paused):
            return
        if isinstance(exc, ObjectNotFound):  # replaced or deleted here since the scan
            self._study_failed(item, "local_missing", str(exc))
        elif isinstance(exc, LinkDown) and exc.kind == "busy":
            self.stop.wait(2.0)  # the region still writes our previous attempt: not a failure
        elif isinstance(exc, LinkDown) or exc.kind in ("credential",):
            self._line_failed(exc.kind, exc.detail)
        elif exc.kind == SHA_MISMATCH:
            self._mismatch(item, exc)
        else:
            self._study_failed(item, exc.kind, exc.detail)

    def _mismatch(self, item: outbox.Item, exc: Refused) -> None:
        """The region discarded bytes that did not match: damaged on the way (send again at
        once, a few times), or the local copy itself no longer matches its hash."""
        self._progress(item, 0, False)
        tries = self._mismatches[item.instance_id] = self._mismatches.get(item.instance_id, 0) + 1
        local = hashlib.sha256(self.runtime.store.get(item.object_key)).hexdigest()
        if local != item.sha256:
            self._study_failed(item, "local_corrupt", f"the stored object hashes to {local}, not {item.sha256}")
        elif tries >= MISMATCH_RETRIES:
            self._study_failed(item, SHA_MISMATCH, exc.detail)

    def _study_failed(self, item: outbox.Item, kind: str, detail: str) -> None:
        with self.runtime.db.scope() as session:
            study = outbox.note_study_failure(session=session, study_id=item.study_id, kind=kind, detail=detail,
                                              now=utcnow())
            retry = study.next_attempt_at
        log.warning("edge.study.refused study=%s kind=%s retry_at=%s detail=%s", item.study_uid, kind,
                    retry.isoformat(timespec="seconds"), detail[:300])

    # -- completion and retention -------------------------------------------------------------

    def _complete_ready(self, main: RegionClient) -> None:
        with self.runtime.db.scope(readonly=True) as session:
            ready = [(s.id, s.study_instance_uid) for s in outbox.ready_to_complete(session=session, now=utcnow())]
        for study_id, study_uid in ready:
            try:
                self._announce(main, study_id, study_uid)
                if self._pending(study_id):
                    continue  # the region lacks some after all: the streams send them
                answer = main.complete(study_uid)
            except LinkDown as exc:
                self._main_broken(exc)
                return
            except Refused as exc:
                self._failed(outbox.Item(0, study_id, study_uid, "", "", "", 0, 0), exc)
                continue
            self._main_drops = 0
            self._confirmed(study_id, study_uid, answer)

    def _pending(self, study_id: int) -> bool:
        with self.runtime.db.scope(readonly=True) as session:
            return outbox.has_pending(session=session, study_id=study_id)

    def _confirmed(self, study_id: int, study_uid: str, answer: dict) -> None:
        with self.runtime.db.scope() as session:
            if not answer.get("complete"):
                outbox.note_missing(session=session, study_id=study_id, sops=list(answer.get("missing") or []))
                self._announced.pop(study_id, None)
                log.warning("edge.study.incomplete study=%s missing=%s", study_uid, len(answer.get("missing") or []))
                return
            study = outbox.note_sent(session=session, study_id=study_id, now=utcnow())
            audit.append(session, principal=None, actor=ACTOR, action="edge.study.forwarded", object_type="study",
                         object_id=study_uid, detail={"instances": study.instances, "bytes": study.size,
                                                      "region": urlsplit(self.settings.edge_region_url).hostname})
        log.info("edge.study.sent study=%s instances=%s", study_uid, answer.get("instances"))

    def _purge(self) -> None:
        """Delete here what the region confirmed at least the retention period ago."""
        with self.runtime.db.scope(readonly=True) as session:
            due = [s.id for s in outbox.purgeable(session=session, now=utcnow(),
                                                  retention_days=self.settings.edge_retention_days)]
        for study_id in due:
            with self.runtime.db.scope() as session:
                study = session.get(OutboxStudy, study_id)
                keys = outbox.purge(session=session, study=study, now=utcnow())
                if study.state != "purged":
                    log.warning("edge.study.kept study=%s: it changed here or is still referred to",
                                study.study_instance_uid)
                    continue
                audit.append(session, principal=None, actor=ACTOR, action="edge.study.purged", object_type="study",
                             object_id=study.study_instance_uid, detail={"objects": len(keys)})
                after_commit(session, lambda keys=keys: self._delete_objects(keys))

    def _delete_objects(self, keys: list[str]) -> None:
        for key in keys:
            self.runtime.store.delete(key)


def run_forever(settings: Settings | None = None) -> int:
    """Forward this edge's studies to the region until SIGTERM or SIGINT (then stop cleanly:
    in-flight requests are abandoned, and the region keeps what they delivered)."""
    settings = settings or get_settings()
    if not settings.edge_region_url or not settings.edge_credential.get_secret_value():
        raise SystemExit("LANCANG_EDGE_REGION_URL and LANCANG_EDGE_CREDENTIAL must be set to forward to the region "
                         "/ 请设置县级平台地址和传输凭据")
    try:
        parse_windows(settings.edge_windows)  # a wrong setting stops here, saying which part
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    runtime = bootstrap(settings, component="edge-forward")
    stop = threading.Event()

    def on_signal(signum, _frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("edge.forward.start region=%s streams=%s chunk=%s", urlsplit(settings.edge_region_url).hostname,
             STREAMS, settings.edge_chunk_bytes)
    try:
        Forwarder(runtime, stop).run()
    finally:
        runtime.db.dispose()
        log.info("edge.forward.stop")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=get_settings().log_level.upper(), stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    sys.exit(run_forever())
