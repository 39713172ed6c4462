"""Celery tasks: thin, named, idempotent; each takes IDs and calls a domain service."""

from __future__ import annotations

import logging
from functools import lru_cache

from celery import shared_task
from sqlalchemy.exc import OperationalError

from consult import critical, notify, rooms, scheduling
from film import sheet as filmsheet
from imaging import derive
from storage import audit, jobs
from storage.objects import StoreUnavailable
from storage.runtime import Runtime, bootstrap
from storage.settings import get_settings

log = logging.getLogger("lancang.workers")


@lru_cache
def runtime() -> Runtime:
    """The worker process's runtime, built on first use (after fork, never at import)."""
    return bootstrap(get_settings(), component="worker")


@shared_task(name="storage.verify_audit_chain", queue="maintenance", acks_late=True,
             autoretry_for=(ConnectionError,), retry_backoff=True, max_retries=3)
def verify_audit_chain() -> None:
    """Checks the audit hash chain and records the outcome in the chain itself."""
    db = runtime().db
    result = audit.verify_and_checkpoint(db, runtime().store)
    outcome = "ok" if result.ok else "failed"
    log.info("storage.audit_verify.%s checked=%s", outcome, result.checked)
    audit.record(db, principal=None, actor="system:worker", action="audit.verify", outcome=outcome,
                 detail={"checked": result.checked, "first_bad_seq": result.first_bad_seq,
                         "head_hash": result.head_hash, "reason": result.reason})


# --- imaging: derived images and cloud film --------------------------------------------

# Backends that are down come back: retry those, with backoff. Bad pixel data never gets
# better; imaging.derive records it per instance instead of raising.
def _transient() -> tuple[type[BaseException], ...]:
    return (StoreUnavailable, OperationalError, ConnectionError, TimeoutError)


SWEEP_INTERVAL_S = 300.0
STARTUP_SWEEP_SETTLE_S = 5.0


@shared_task(name="imaging.derive_series", queue="derive", acks_late=True, reject_on_worker_lost=True,
             autoretry_for=_transient(), retry_backoff=2, retry_backoff_max=300, retry_jitter=True,
             default_retry_delay=5, max_retries=6)
def derive_series(series_pk: int) -> str:
    """Series thumbnail and per-instance previews, once the series has stopped receiving."""
    rt = runtime()
    return derive.derive_series(rt.db, rt.store, int(series_pk),
                                preview_delay_s=rt.settings.derive_preview_delay_s).status


@shared_task(name="imaging.make_film_sheet", queue="render", acks_late=True, reject_on_worker_lost=True,
             autoretry_for=_transient(), retry_backoff=2, retry_backoff_max=300, retry_jitter=True,
             default_retry_delay=5, max_retries=6)
def make_film_sheet(share_id: int) -> None:
    """The printable A4 film sheet of one cloud-film share."""
    rt = runtime()
    filmsheet.make_film_sheet(rt.db, rt.store, int(share_id), secret_key=rt.settings.effective_secret_key,
                              public_url=rt.settings.effective_public_url)


@shared_task(name="imaging.sweep_underived", queue="maintenance", acks_late=True, reject_on_worker_lost=True,
             autoretry_for=_transient(), retry_backoff=2, retry_backoff_max=300, default_retry_delay=10,
             max_retries=3)
def sweep_underived(settle_s: float | None = None) -> int:
    """Announce series whose derived images are missing or older than their newest instance."""
    rt = runtime()
    kwargs = {} if settle_s is None else {"settle_s": float(settle_s)}
    stale = derive.sweep_underived(rt.db, **kwargs)
    for series_pk in stale:
        jobs.send_now("imaging.derive_series", (series_pk,), "derive")
    log.info("imaging.sweep_underived.ok announced=%s", len(stale))
    return len(stale)


# --- consult: reminders and recording retention ------------------------------------------


@shared_task(name="consult.send_reminders", queue="notify", acks_late=True, reject_on_worker_lost=True,
             autoretry_for=_transient(), retry_backoff=2, default_retry_delay=10, max_retries=3)
def send_reminders() -> int:
    """Remind everyone whose live consult starts within the next half hour (once each)."""
    with runtime().db.scope() as session:
        return scheduling.due_reminders(session=session)


@shared_task(name=notify.DELIVER_TASK, queue="notify", acks_late=True, reject_on_worker_lost=True,
             autoretry_for=(*_transient(), notify.DeliveryFailed), retry_backoff=5, retry_backoff_max=600,
             retry_jitter=True, default_retry_delay=10, max_retries=8)
def deliver_notification(notification_id: int) -> None:
    """E-mail / 企业微信 / other channels for one notification; the channels that worked are
    committed before a failure is raised, so the retry sends only what is missing."""
    rt = runtime()
    with rt.db.scope() as session:
        failures = notify.deliver(session, int(notification_id), notify.senders_for(rt.settings),
                                  rt.settings.effective_public_url)
    if failures:
        raise notify.DeliveryFailed("; ".join(failures))


@shared_task(name=critical.ESCALATE_TASK, queue="notify", acks_late=True, reject_on_worker_lost=True,
             autoretry_for=_transient(), retry_backoff=2, default_retry_delay=5, max_retries=5)
def escalate_critical(finding_id: int | None = None) -> int:
    """A 危急值 not acknowledged in time goes one step up (coordinators, then the region). Sent
    for each step's due time, and every 30 s without an id as a sweep for any step whose task
    was lost; a step that is not due, or already taken, does nothing."""
    rt = runtime()
    with rt.db.scope() as session:
        return critical.escalate_due(session=session, settings=rt.settings,
                                     finding_id=int(finding_id) if finding_id is not None else None)


@shared_task(name="consult.purge_recordings", queue="maintenance", acks_late=True, reject_on_worker_lost=True,
             autoretry_for=_transient(), retry_backoff=2, default_retry_delay=60, max_retries=3)
def purge_recordings() -> int:
    """Delete consult recordings past their retention date (the row stays, marked deleted)."""
    rt = runtime()
    with rt.db.scope() as session:
        return rooms.purge_expired(session=session, store=rt.store)


from celery.signals import worker_ready  # noqa: E402  (kept with the periodic tasks it drives)

# (task name, queue, first run after s, then every s). No beat process: every worker sends
# these; each task is idempotent, so a duplicate from a second worker is harmless.
PERIODIC = (
    ("imaging.sweep_underived", "maintenance", 0.0, SWEEP_INTERVAL_S),
    ("consult.send_reminders", "notify", 5.0, 60.0),
    (critical.ESCALATE_TASK, "notify", 10.0, 30.0),
    ("consult.purge_recordings", "maintenance", 60.0, 3600.0),
)


@worker_ready.connect
def _periodic_work(sender=None, **_kwargs) -> None:
    """A worker that starts sweeps at once (what was lost while none ran: announcements of a
    receiver that died, tasks of the embedded broker), then runs the PERIODIC schedule from a
    daemon thread."""
    import threading
    import time

    app = sender.app

    def send(name: str, queue: str, args: list) -> None:
        try:
            app.send_task(name, args=args, queue=queue)
        except Exception:  # the broker is down: the next round tries again
            log.exception("workers.periodic.send_failed task=%s", name)

    send("imaging.sweep_underived", "maintenance", [STARTUP_SWEEP_SETTLE_S])
    start = time.monotonic()
    due = {name: start + first + (every if name == "imaging.sweep_underived" else 0)
           for name, _q, first, every in PERIODIC}
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(1.0):
            now = time.monotonic()
            for name, queue, _first, every in PERIODIC:
                if now >= due[name]:
                    due[name] = now + every
                    send(name, queue, [])

    threading.Thread(target=loop, name="lancang-periodic", daemon=True).start()
