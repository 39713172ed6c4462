"""Announcing background work without importing the worker package.

Domains call `send_after_commit`; the process wires a dispatcher at startup (Celery's
send_task). Tasks are named, so nothing here depends on the worker's code, and nothing
is sent before the transaction that makes it meaningful has committed.
"""

from __future__ import annotations

import logging
from typing import Callable

from sqlalchemy.orm import Session

from storage.db import after_commit

log = logging.getLogger("lancang.jobs")
Dispatcher = Callable[[str, tuple, str, dict], None]
_dispatcher: Dispatcher | None = None


def set_dispatcher(dispatcher: Dispatcher | None) -> None:
    global _dispatcher
    _dispatcher = dispatcher


def send_now(name: str, args: tuple, queue: str, options: dict | None = None) -> None:
    if _dispatcher is None:
        log.warning("jobs.send.skipped name=%s reason=no-dispatcher", name)
        return
    try:
        _dispatcher(name, args, queue, options or {})
    except Exception:  # the commit stands; periodic sweeps pick up what was not announced
        log.exception("jobs.send.failed name=%s args=%s", name, args)


def send_after_commit(session: Session, name: str, *args, queue: str, **options) -> None:
    after_commit(session, lambda: send_now(name, args, queue, options))
