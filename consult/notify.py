"""In-app notifications, plus a pluggable sender for e-mail/SMS gateways (a log by default)."""

from __future__ import annotations

import logging
from typing import Protocol

from sqlalchemy.orm import Session

from consult.models import Notification
from storage.db import after_commit

log = logging.getLogger("lancang.consult")


class Sender(Protocol):
    def send(self, *, user_id: int, title: str, body: str, link: str) -> None: ...


class LogSender:
    """The default sender: writes the message to the log (no gateway configured)."""

    def send(self, *, user_id: int, title: str, body: str, link: str) -> None:
        log.info("consult.notify.sent user_id=%s title=%s link=%s", user_id, title, link)


_sender: Sender = LogSender()


def set_sender(sender: Sender) -> None:
    """Install an SMS or e-mail adapter (anything with send(user_id=, title=, body=, link=))."""
    global _sender
    _sender = sender


def notify(session: Session, user_ids: set[int] | list[int], *, kind: str, title: str, body: str = "",
           link: str = "") -> None:
    """Store an in-app notification per user; push through the sender once committed."""
    for user_id in sorted(set(user_ids)):
        session.add(Notification(user_id=user_id, kind=kind, title=title, body=body, link=link))
        after_commit(session, lambda uid=user_id: _sender.send(user_id=uid, title=title, body=body, link=link))


def notify_consult(session: Session, consult, user_ids: set[int] | list[int], *, kind: str, title: str,
                   body: str = "") -> None:
    """A notification about a consult: it links to the consult's page."""
    notify(session, user_ids, kind=kind, title=title, body=body, link=f"/consults/{consult.id}")
