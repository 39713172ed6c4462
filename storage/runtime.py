"""Wiring one process: settings -> residency check -> database, object store, task dispatch."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from storage import audit, jobs, residency
from storage.broker import dispatcher_for, make_celery
from storage.db import Database, get_database
from storage.objects import ObjectStore, S3Store, make_store
from storage.settings import Settings, get_settings

log = logging.getLogger("storage.runtime")


@dataclass
class Runtime:
    settings: Settings
    db: Database
    store: ObjectStore
    celery: object


def bootstrap(settings: Settings | None = None, *, component: str) -> Runtime:
    """Refuse endpoints abroad, migrate the database, open the store, wire task dispatch."""
    settings = settings or get_settings()
    overridden = residency.enforce(settings)
    audit.use_key(settings.effective_audit_key)
    db = get_database(settings)
    audit.check_key(db)
    store = make_store(settings)
    if isinstance(store, S3Store):
        store.ensure_bucket()
    celery = make_celery(settings)
    jobs.set_dispatcher(dispatcher_for(celery))
    for verdict in overridden:
        log.warning("residency.override component=%s reason=%s", component, verdict.reason)
        audit.record(db, principal=None, actor=f"system:{component}", action="residency.override",
                     outcome="ok", detail={"verdict": verdict.reason,
                                           "justification": settings.residency_override_reason})
    return Runtime(settings=settings, db=db, store=store, celery=celery)
