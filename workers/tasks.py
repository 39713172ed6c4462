"""Celery tasks: thin, named, idempotent; each takes IDs and calls a domain service."""

from __future__ import annotations

import logging
from functools import lru_cache

from celery import shared_task

from lancang.runtime import Runtime, bootstrap
from lancang.settings import get_settings

log = logging.getLogger("lancang.workers")


@lru_cache
def runtime() -> Runtime:
    """The worker process's runtime, built on first use (after fork, never at import)."""
    return bootstrap(get_settings(), component="worker")


@shared_task(name="storage.verify_audit_chain", queue="maintenance", acks_late=True,
             autoretry_for=(ConnectionError,), retry_backoff=True, max_retries=3)
def verify_audit_chain() -> None:
    """Checks the audit hash chain and records the outcome in the chain itself."""
    from storage import audit

    db = runtime().db
    with db.scope(readonly=True) as session:
        result = audit.verify(session)
    outcome = "ok" if result.ok else "failed"
    log.info("storage.audit_verify.%s checked=%s", outcome, result.checked)
    audit.record(db, principal=None, actor="system:worker", action="audit.verify", outcome=outcome,
                 detail={"checked": result.checked, "first_bad_seq": result.first_bad_seq,
                         "head_hash": result.head_hash, "reason": result.reason})


# --- imaging: derived images and cloud film --------------------------------------------

# Backends that are down come back: retry those, with backoff. Bad pixel data never gets
# better; imaging.derive records it per instance instead of raising.
def _transient() -> tuple[type[BaseException], ...]:
    from sqlalchemy.exc import OperationalError

    from storage.objects import StoreUnavailable

    return (StoreUnavailable, OperationalError, ConnectionError, TimeoutError)


SWEEP_INTERVAL_S = 300.0
STARTUP_SWEEP_SETTLE_S = 5.0


@shared_task(name="imaging.derive_series", queue="derive", acks_late=True, reject_on_worker_lost=True,
             autoretry_for=_transient(), retry_backoff=2, retry_backoff_max=300, retry_jitter=True,
             default_retry_delay=5, max_retries=6)
def derive_series(series_pk: int) -> str:
    """Series thumbnail and per-instance previews, once the series has stopped receiving."""
    from imaging import derive

    rt = runtime()
    return derive.derive_series(rt.db, rt.store, int(series_pk)).status


@shared_task(name="imaging.make_film_sheet", queue="render", acks_late=True, reject_on_worker_lost=True,
             autoretry_for=_transient(), retry_backoff=2, retry_backoff_max=300, retry_jitter=True,
             default_retry_delay=5, max_retries=6)
def make_film_sheet(share_id: int) -> None:
    """The printable A4 film sheet of one cloud-film share."""
    from imaging import filmsheet

    rt = runtime()
    filmsheet.make_film_sheet(rt.db, rt.store, int(share_id), secret_key=rt.settings.effective_secret_key,
                              public_url=rt.settings.effective_public_url)


@shared_task(name="imaging.sweep_underived", queue="maintenance", acks_late=True, reject_on_worker_lost=True,
             autoretry_for=_transient(), retry_backoff=2, retry_backoff_max=300, default_retry_delay=10,
             max_retries=3)
def sweep_underived(settle_s: float | None = None) -> int:
    """Announce series whose derived images are missing or older than their newest instance."""
    from imaging import derive
    from storage import jobs

    rt = runtime()
    kwargs = {} if settle_s is None else {"settle_s": float(settle_s)}
    stale = derive.sweep_underived(rt.db, **kwargs)
    for series_pk in stale:
        jobs.send_now("imaging.derive_series", (series_pk,), "derive")
    log.info("imaging.sweep_underived.ok announced=%s", len(stale))
    return len(stale)


from celery.signals import worker_ready  # noqa: E402  (kept with the imaging tasks it serves)


@worker_ready.connect
def _sweep_at_startup_and_periodically(sender=None, **_kwargs) -> None:
    """A worker that starts sweeps at once (what was lost while none ran: announcements of a
    receiver that died, tasks of the embedded broker), then every SWEEP_INTERVAL_S from a
    daemon thread. Every worker does this; the sweep and the derivation are idempotent."""
    import threading

    app = sender.app

    def send(settle_s: float | None) -> None:
        try:
            app.send_task("imaging.sweep_underived", args=[settle_s], queue="maintenance")
        except Exception:  # the broker is down: the next round tries again
            log.exception("imaging.sweep_underived.send_failed")

    send(STARTUP_SWEEP_SETTLE_S)
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(SWEEP_INTERVAL_S):
            send(None)

    threading.Thread(target=loop, name="lancang-sweep", daemon=True).start()
