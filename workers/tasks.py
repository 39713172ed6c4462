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
