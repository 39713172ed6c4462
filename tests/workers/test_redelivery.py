"""A worker killed with SIGKILL in the middle of imaging.derive_series, and what brings
the task back to completion.

acks_late + task_reject_on_worker_lost behave differently for the two ways a worker dies:

* the pool process running the task dies (OOM killer, a decoder crash): the worker's main
  process sees it, rejects the message with requeue, and the broker delivers it again at
  once, to a fresh pool process (Redis and the embedded broker alike);
* the whole worker dies: nobody rejects anything. Redis keeps the unacknowledged message
  and hands it to another worker once its visibility timeout has passed; the embedded
  (filesystem) broker holds unacknowledged messages in the dead process's memory, so it
  is lost, and the sweep that every worker runs at startup announces the series again.

The slow task comes from LANCANG_DERIVE_PREVIEW_DELAY_S (imaging/derive.py sleeps after each
preview), so the kill lands while previews are being made.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from imaging.models import Instance, Series
from imaging.service import Ingestor
from storage.runtime import bootstrap
from storage import service as tenancy
from storage.types import utcnow
from tests.conftest import embedded_settings, server_settings, settings_env
from tests.dicomdata import ct_instance
from storage.broker import make_celery

SLICES = 12
DELAY_S = 0.25       # per preview: the task takes ~3 s, plenty of time to kill it mid-way

# A worker as `lancang worker` runs it, with broker transport options the test chooses
# (a short Redis visibility timeout), which the product's settings do not expose.
WORKER = """
import json, logging, os, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout)  # as `lancang worker` configures it
from storage.settings import get_settings
from workers.app import make_worker_app
app = make_worker_app(get_settings())
extra = json.loads(os.environ["TEST_TRANSPORT_OPTIONS"])
app.conf.broker_transport_options = {**(app.conf.broker_transport_options or {}), **extra}
pool, concurrency, queues, name = sys.argv[1:5]
app.worker_main(["worker", f"--pool={pool}", f"--concurrency={concurrency}", f"--queues={queues}",
                 "--loglevel=INFO", "--without-mingle", "--without-gossip", f"--hostname={name}@%h"])
"""


def _start_worker(settings, log: Path, *, name: str, pool: str = "prefork", queues: str = "derive",
                  delay: float = 0.0, transport: dict | None = None) -> subprocess.Popen:
    env = settings_env(settings)
    env["LANCANG_DERIVE_PREVIEW_DELAY_S"] = str(delay)
    env["TEST_TRANSPORT_OPTIONS"] = json.dumps(transport or {})
    handle = open(log, "ab")
    return subprocess.Popen([sys.executable, "-c", WORKER, pool, "1", queues, name], env=env, stdout=handle,
                            stderr=subprocess.STDOUT)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _series(runtime) -> int:
    with runtime.db.scope() as session:
        institution_id = tenancy.add_institution(session=session, code="T01", name="勐朗镇卫生院",
                                                 level="township").id
    ingestor = Ingestor(runtime.db, runtime.store)
    study_uid, series_uid = generate_uid(), generate_uid()
    for number in range(1, SLICES + 1):
        result = ingestor.ingest(ct_instance(study_uid=study_uid, series_uid=series_uid, instance_number=number,
                                             size=64), institution_id=institution_id, source="test")
    ingestor.close()
    return result.series_pk


def _state(runtime, series_pk: int) -> Series:
    with runtime.db.scope(readonly=True) as session:
        series = session.get(Series, series_pk)
        session.expunge(series)
    return series


def _wait_for(runtime, series_pk: int, predicate, timeout: float, what: str, logs=()) -> Series:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        series = _state(runtime, series_pk)
        if predicate(series):
            return series
        time.sleep(0.1)
    tails = "\n".join(f"--- {p.name}\n" + p.read_text(errors="replace")[-3000:] for p in logs)
    raise AssertionError(f"timed out waiting for {what}; state={series.derive_state} "
                         f"attempts={series.derive_attempts}\n{tails}")


def _mid_task(series: Series) -> bool:
    # The thumbnail is committed first; previews follow, one DELAY_S apart.
    return series.derive_state == "running" and series.thumbnail_key is not None


def _assert_complete(runtime, series_pk: int) -> None:
    series = _state(runtime, series_pk)
    assert series.derive_state == "done" and series.derived_through == series.last_received_at
    assert series.derive_attempts == 0
    with runtime.db.scope(readonly=True) as session:
        previews = session.scalars(select(Instance.preview_key).where(Instance.series_pk == series_pk)).all()
    assert len(previews) == SLICES and all(previews)
    assert all(runtime.store.exists(key) for key in previews)


def _settings(backend: str, tmp_path, request, redis_db: int = 5):
    if backend == "embedded":
        return embedded_settings(tmp_path)
    settings = server_settings(tmp_path, request.getfixturevalue("servers"))
    # A Redis database of its own: no other test's messages, none of ours left for them.
    database = redis_db
    return settings.model_copy(update={"broker_url": settings.broker_url.rsplit("/", 1)[0] + f"/{database}"})


@pytest.mark.parametrize("broker", ["embedded", "redis"])
def test_killed_pool_process_the_task_is_redelivered_and_completed(broker, tmp_path, request):
    settings = _settings("embedded" if broker == "embedded" else "servers", tmp_path, request)
    runtime = bootstrap(settings, component="test")
    series_pk = _series(runtime)
    log = tmp_path / "worker.log"
    worker = _start_worker(settings, log, name="w1", delay=DELAY_S)
    try:
        task_id = make_celery(settings).send_task("imaging.derive_series", args=[series_pk], queue="derive").id
        _wait_for(runtime, series_pk, _mid_task, 90, "the task to start", [log])
        pool = _children(worker.pid)
        assert pool, "no pool process"
        for pid in pool:
            os.kill(pid, signal.SIGKILL)
        # The redelivered task claims the series again: a second attempt is counted ...
        _wait_for(runtime, series_pk, lambda s: s.derive_attempts == 2 or s.derive_state == "done", 60,
                  "the redelivery", [log])
        # ... and completes it, in a fresh pool process of the same worker.
        _wait_for(runtime, series_pk, lambda s: s.derive_state == "done", 90, "completion", [log])
        assert worker.poll() is None
    finally:
        _stop(worker)
    _assert_complete(runtime, series_pk)
    text = log.read_text(errors="replace")
    assert re.search(r"WorkerLostError|signal 9", text), text[-3000:]
    assert text.count(f"imaging.derive_series[{task_id}] received") == 2, text[-3000:]
    assert f"imaging.derive_series[{task_id}] succeeded" in text


def test_killed_worker_on_redis_another_worker_gets_the_task_after_the_visibility_timeout(tmp_path, request):
    settings = _settings("servers", tmp_path, request, redis_db=6)
    runtime = bootstrap(settings, component="test")
    series_pk = _series(runtime)
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = _start_worker(settings, first_log, name="first", pool="solo", delay=DELAY_S)
    try:
        task_id = make_celery(settings).send_task("imaging.derive_series", args=[series_pk], queue="derive").id
        _wait_for(runtime, series_pk, _mid_task, 90, "the task to start", [first_log])
        os.kill(first.pid, signal.SIGKILL)  # the whole worker: nobody is left to reject the message
        first.wait(timeout=10)
    finally:
        _stop(first)
    killed_at = time.monotonic()
    # Only the derive queue: the startup sweep's task stays queued, so only a redelivery can finish it.
    second = _start_worker(settings, second_log, name="second", pool="prefork",
                           transport={"visibility_timeout": 3, "unacked_restore_interval": 1,
                                      "unacked_restore_throttle": 1})
    try:
        _wait_for(runtime, series_pk, lambda s: s.derive_state == "done", 90, "completion by the second worker",
                  [first_log, second_log])
    finally:
        _stop(second)
    assert time.monotonic() - killed_at >= 2.5   # not before the visibility timeout
    _assert_complete(runtime, series_pk)
    text = second_log.read_text(errors="replace")
    assert f"imaging.derive_series[{task_id}] received" in text, text[-3000:]
    assert f"imaging.derive_series[{task_id}] succeeded" in text


def test_killed_worker_on_the_embedded_broker_the_startup_sweep_finishes_the_series(tmp_path):
    settings = embedded_settings(tmp_path)
    runtime = bootstrap(settings, component="test")
    series_pk = _series(runtime)
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = _start_worker(settings, first_log, name="first", pool="solo", delay=DELAY_S)
    try:
        task_id = make_celery(settings).send_task("imaging.derive_series", args=[series_pk], queue="derive").id
        _wait_for(runtime, series_pk, _mid_task, 90, "the task to start", [first_log])
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        _stop(first)
    # The sweep leaves series alone while they may still be receiving (5 s at startup).
    received = _state(runtime, series_pk).last_received_at
    time.sleep(max(0.0, 5.5 - (utcnow() - received).total_seconds()))
    second = _start_worker(settings, second_log, name="second", pool="prefork", queues="derive,maintenance")
    try:
        _wait_for(runtime, series_pk, lambda s: s.derive_state == "done", 90, "completion after the sweep",
                  [first_log, second_log])
    finally:
        _stop(second)
    _assert_complete(runtime, series_pk)
    text = second_log.read_text(errors="replace")
    assert "imaging.sweep_underived" in text and "announced=1" in text, text[-3000:]
    assert task_id not in text  # the file broker lost it with the process: the sweep made a new one
    assert re.search(r"imaging\.derive_series\[[0-9a-f-]+\] succeeded", text)
