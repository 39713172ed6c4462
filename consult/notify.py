"""Notifications: a row per user in the app (the bell), then delivery outside it.

Outside the platform a notification goes by e-mail (SMTP), to a 企业微信 (WeChat Work)
group robot and as a text message through the region's SMS gateway, each on when its
settings are given, plus any adapter installed with `add_sender`. Delivery is a Celery task per notification
(`consult.deliver_notification`, queue "notify") announced once the row is committed, so a
slow mail server never holds a request. Channels outside carry the title and a link only:
the clinical question and the patient stay behind the login and its audit trail.
"""

from __future__ import annotations

import json
import logging
import smtplib
import urllib.error
import urllib.request
from email.message import EmailMessage
from datetime import timedelta
from typing import Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from consult.models import Notification
from storage import jobs
from storage.errors import NotFound
from storage.models import User
from storage.settings import Settings
from storage.types import utcnow

log = logging.getLogger("lancang.consult")

DELIVER_TASK = "consult.deliver_notification"


class DeliveryFailed(Exception):
    """A channel refused or could not be reached; the task retries the channels not yet done."""


class Sender(Protocol):
    channel: str  # a short name recorded in Notification.delivered

    def send(self, *, user: User, title: str, link: str) -> None:
        """Deliver to `user` (nothing to do when they have no address for this channel); raise
        DeliveryFailed when the channel refuses or cannot be reached."""


class LogSender:
    """Writes each notification to the log: the channel of an install with none configured."""

    channel = "log"

    def send(self, *, user: User, title: str, link: str) -> None:
        log.info("consult.notify.sent user=%s title=%s link=%s", user.username, title, link)


class SmtpSender:
    """E-mail through an SMTP server (STARTTLS and login when configured)."""

    channel = "email"

    def __init__(self, settings: Settings):
        self.host, self.port = settings.notify_smtp_host, settings.notify_smtp_port
        self.sender = settings.notify_smtp_from or f"lancang@{self.host}"
        self.login = (settings.notify_smtp_user, settings.notify_smtp_password.get_secret_value())
        self.starttls, self.timeout = settings.notify_smtp_starttls, settings.notify_timeout_s

    def send(self, *, user: User, title: str, link: str) -> None:
        if not user.email:
            return
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = self.sender, user.email, title
        message.set_content(f"{user.display_name or user.username}：\n\n{title}\n\n请登录澜沧影像云查看 "
                            f"Open it in Lancang:\n{link}\n")
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                if self.starttls:
                    smtp.starttls()
                if self.login[0]:
                    smtp.login(*self.login)
                smtp.send_message(message)
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryFailed(f"e-mail to {user.username}: {exc}") from exc


class WeComSender:
    """A 企业微信 group robot webhook: a text message mentioning the user's mobile number."""

    channel = "wecom"

    def __init__(self, settings: Settings):
        self.url, self.timeout = settings.notify_wecom_webhook, settings.notify_timeout_s

    def send(self, *, user: User, title: str, link: str) -> None:
        who = user.display_name or user.username
        payload = {"msgtype": "text", "text": {"content": f"{who}：{title}\n{link}",
                                               "mentioned_mobile_list": [user.mobile] if user.mobile else []}}
        request = urllib.request.Request(self.url, data=json.dumps(payload, ensure_ascii=False).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 (configured URL)
                answer = json.loads(response.read() or b"{}")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise DeliveryFailed(f"企业微信 webhook: {exc}") from exc
        if answer.get("errcode", 0) != 0:  # the robot answers 200 with an error code
            raise DeliveryFailed(f"企业微信 webhook refused: {answer.get('errcode')} {answer.get('errmsg', '')}")


class SmsGatewaySender:
    """Text messages through the region's SMS gateway (a 短信平台 behind an HTTP endpoint that
    takes {"mobile", "text"} as JSON with a bearer token; any 2xx means accepted). Only users
    with a mobile number get one; the text is the title and the link, like every outside channel."""

    channel = "sms"

    def __init__(self, settings: Settings):
        self.url, self.timeout = settings.notify_sms_url, settings.notify_timeout_s
        self.token = settings.notify_sms_token.get_secret_value()

    def send(self, *, user: User, title: str, link: str) -> None:
        if not user.mobile:
            return
        payload = {"mobile": user.mobile, "text": f"【澜沧影像云】{title} {link}"}
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url, data=json.dumps(payload, ensure_ascii=False).encode(),
                                         headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout):  # noqa: S310 (configured URL)
                pass  # urlopen raises on anything but 2xx/3xx
        except (urllib.error.URLError, OSError) as exc:
            raise DeliveryFailed(f"短信网关 SMS gateway: {exc}") from exc


_extra: list[Sender] = []


def add_sender(sender: Sender) -> None:
    """Install another channel (an SMS gateway): anything with `channel` and `send(user=, title=, link=)`."""
    _extra.append(sender)


def senders_for(settings: Settings) -> list[Sender]:
    """The channels this install delivers through, from its settings."""
    senders: list[Sender] = []
    if settings.notify_smtp_host:
        senders.append(SmtpSender(settings))
    if settings.notify_wecom_webhook:
        senders.append(WeComSender(settings))
    if settings.notify_sms_url:
        senders.append(SmsGatewaySender(settings))
    return [*senders, *_extra] or [LogSender()]


def notify(session: Session, user_ids: set[int] | list[int], *, kind: str, title: str, body: str = "",
           link: str = "") -> None:
    """Store an in-app notification per user; deliver each outside once committed."""
    for user_id in sorted(set(user_ids)):
        row = Notification(user_id=user_id, kind=kind, title=title, body=body, link=link)
        session.add(row)
        session.flush()
        jobs.send_after_commit(session, DELIVER_TASK, row.id, queue="notify")


def notify_consult(session: Session, consult, user_ids: set[int] | list[int], *, kind: str, title: str,
                   body: str = "") -> None:
    """A notification about a consult: it links to the consult's page."""
    notify(session, user_ids, kind=kind, title=title, body=body, link=f"/consults/{consult.id}")


def deliver(session: Session, notification_id: int, senders: list[Sender], public_url: str) -> list[str]:
    """Send one notification through every channel it has not reached yet; idempotent.

    Channels already done are skipped, so a retry after one channel failed does not send
    the others twice. Returns what failed (empty: delivered everywhere); the caller commits
    the progress first and then raises DeliveryFailed for a retry."""
    row = session.get(Notification, notification_id)
    if row is None or row.delivered_at is not None:
        return []
    user = session.get(User, row.user_id)
    done = set(filter(None, row.delivered.split(",")))
    link = public_url.rstrip("/") + row.link if row.link.startswith("/") else row.link
    failures = []
    for sender in senders:
        if sender.channel in done:
            continue
        try:
            sender.send(user=user, title=row.title, link=link)
            done.add(sender.channel)
        except DeliveryFailed as exc:
            failures.append(str(exc))
    row.delivered = ",".join(sorted(done))
    if not failures:
        row.delivered_at = utcnow()
    return failures


def mark_read(session: Session, user_id: int, notification_id: int) -> Notification:
    """The user's own notification, marked read (NotFound for anyone else's: ids are guessable)."""
    row = session.get(Notification, notification_id)
    if row is None or row.user_id != user_id:
        raise NotFound("未找到该通知 / no such notification")
    row.read_at = row.read_at or utcnow()
    return row


def unread_count(session: Session, user_id: int) -> int:
    return session.scalar(select(func.count()).select_from(Notification)
                          .where(Notification.user_id == user_id, Notification.read_at.is_(None))) or 0


# Kinds that cannot wait for someone to open the bell: every page shows them in a banner.
URGENT_KINDS = ("consult.emergency", "critical.flagged", "critical.escalated")
URGENT_WINDOW_H = 12


def urgent_unread(session: Session, user_id: int) -> list[Notification]:
    """Unread emergencies and critical results of the last hours, newest first."""
    since = utcnow() - timedelta(hours=URGENT_WINDOW_H)
    return list(session.scalars(select(Notification).where(
        Notification.user_id == user_id, Notification.read_at.is_(None), Notification.kind.in_(URGENT_KINDS),
        Notification.at >= since).order_by(Notification.id.desc()).limit(5)))
