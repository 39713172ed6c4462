"""A real Celery worker process on a real Redis broker runs a task against PostgreSQL."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from sqlalchemy import select

from storage.runtime import bootstrap
from storage import audit
from storage.models import AuditRecord
from tests.conftest import server_settings, settings_env
from storage.broker import make_celery


def test_task_runs_in_a_real_worker_on_redis(tmp_path, servers):
    settings = server_settings(tmp_path, servers)
    runtime = bootstrap(settings, component="test")
    audit.record(runtime.db, principal=None, actor="system:test", action="seed")
    worker = subprocess.Popen([sys.executable, "-m", "lancang.cli", "worker", "--concurrency", "1"],
                              env=settings_env(settings), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        make_celery(settings).send_task("storage.verify_audit_chain", queue="maintenance")
        record = _wait_for_verify(runtime)
        assert record.outcome == "ok" and record.detail["checked"] == 1
    finally:
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=30)
    assert "storage.verify_audit_chain" in output


def test_task_runs_in_a_real_worker_on_the_embedded_broker(tmp_path):
    from tests.conftest import embedded_settings

    settings = embedded_settings(tmp_path)
    runtime = bootstrap(settings, component="test")
    worker = subprocess.Popen([sys.executable, "-m", "lancang.cli", "worker", "--concurrency", "1"],
                              env=settings_env(settings), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        make_celery(settings).send_task("storage.verify_audit_chain", queue="maintenance")
        assert _wait_for_verify(runtime).outcome == "ok"
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=30)


def _wait_for_verify(runtime, timeout: float = 60) -> AuditRecord:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with runtime.db.scope(readonly=True) as session:
            found = session.scalar(select(AuditRecord).where(AuditRecord.action == "audit.verify"))
            if found is not None:
                session.expunge(found)
                return found
        time.sleep(0.3)
    raise AssertionError("the worker never ran the task")


def test_each_queue_has_its_own_binding(tmp_path, servers):
    """Publishing by exchange and routing key reaches exactly one queue (13, Low). Failed on
    the previous code: all four queues were bound to exchange 'derive' with key 'derive'."""
    import redis

    from storage.broker import EXCHANGE, QUEUES

    settings = server_settings(tmp_path, servers)
    app = make_celery(settings)
    client = redis.Redis.from_url(settings.broker_url)
    before = {name: client.llen(name) for name in QUEUES}  # the Redis server is shared by the suite
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        for queue in app.conf.task_queues:
            queue.bind(channel).declare()
        for name in QUEUES:
            app.send_task("storage.verify_audit_chain", exchange=EXCHANGE.name, routing_key=name)
        app.send_task("storage.verify_audit_chain", exchange=EXCHANGE.name, routing_key="derive")
    added = {name: client.llen(name) - before[name] for name in QUEUES}
    assert added == {"derive": 2, "render": 1, "notify": 1, "maintenance": 1}
    assert {(q.exchange.name, q.routing_key) for q in app.conf.task_queues} == {(EXCHANGE.name, n) for n in QUEUES}
