"""Notifications outside the platform (16.9): e-mail through a real SMTP server (aiosmtpd on
127.0.0.1) and a 企业微信 group robot (a local HTTP receiver that answers as the robot does).
Each carries the title and a link, never the clinical question; a failed channel is retried
without sending the others twice; delivery is idempotent."""

from __future__ import annotations

import json
import threading
from email import message_from_bytes
from email.header import decode_header, make_header
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller

from consult import notify, service
from consult.models import Notification
from storage import identity
from storage import service as tenancy
from storage.runtime import bootstrap
from tests.conftest import embedded_settings
from tests.services import free_port

QUESTION = "孕32周，胎儿生长受限？请会诊"


class Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd's handler hook
        self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content)))
        return "250 OK"


@pytest.fixture
def smtp():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, inbox
    controller.stop()


class Robot:
    """Answers like the 企业微信 webhook: HTTP 200 with errcode (0 = sent)."""

    def __init__(self):
        self.posts, self.headers, self.errcode = [], [], 0
        robot = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers["Content-Length"])
                robot.posts.append((self.path, json.loads(self.rfile.read(length))))
                robot.headers.append(dict(self.headers))
                body = json.dumps({"errcode": robot.errcode, "errmsg": "ok" if not robot.errcode else "bad"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/cgi-bin/webhook/send?key=test-key"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def robot():
    robot = Robot()
    yield robot
    robot.server.shutdown()


@pytest.fixture
def world(tmp_path, smtp, robot):
    controller, _ = smtp
    settings = embedded_settings(tmp_path, notify_smtp_host="127.0.0.1", notify_smtp_port=controller.port,
                                 notify_smtp_from="lancang@county.example.cn", notify_wecom_webhook=robot.url,
                                 notify_timeout_s=5, public_url="https://yxy.lancang.example.cn",
                                 secret_key="notify-test-secret-key-0123456789abcdef")
    runtime = bootstrap(settings, component="test")
    with runtime.db.scope() as session:
        tenancy.add_institution(session=session, code="COUNTY", name="澜沧县人民医院", level="county")
        tenancy.add_institution(session=session, code="TOWN", name="勐朗镇卫生院", level="township", parent_code="COUNTY")
        li = identity.add_user(session=session, username="li", role="radiographer", institution_code="TOWN",
                               password="long-enough-1", display_name="李技师")
        zhou = identity.add_user(session=session, username="zhou", role="coordinator", institution_code="COUNTY",
                                 password="long-enough-1", display_name="周协调")
        identity.set_contact(session=session, user=zhou, email="zhou@county.example.cn", mobile="13800001234")
        identity.set_contact(session=session, user=li, mobile="13900005678")  # no e-mail
    yield runtime
    runtime.db.dispose()


def _request_consult(runtime) -> int:
    from imaging.service import Ingestor
    from pydicom.uid import generate_uid
    from tests.dicomdata import ct_instance

    with runtime.db.scope() as session:
        town = tenancy.get_institution(session=session, code="TOWN").id
    study = generate_uid()
    ingestor = Ingestor(runtime.db, runtime.store)
    ingestor.ingest(ct_instance(study_uid=study), institution_id=town, source="test")
    ingestor.close()
    with runtime.db.scope() as session:
        consult = service.create(session=session, requester=identity.get_user(session=session, username="li"),
                                 kind="read", target_code="COUNTY", study_uids=[study], clinical_question=QUESTION)
        return consult.id


def _deliver(runtime, notification_id):
    with runtime.db.scope() as session:
        return notify.deliver(session, notification_id, notify.senders_for(runtime.settings),
                              runtime.settings.effective_public_url)


def _the_request_notice(runtime):
    with runtime.db.scope(readonly=True) as session:
        row = session.query(Notification).filter_by(kind="consult.requested").one()
        return row.id, row.body


def test_email_and_wecom_carry_the_title_and_link_never_the_question(world, smtp, robot):
    consult = _request_consult(world)
    notice, body = _the_request_notice(world)
    assert QUESTION in body  # in the app, behind the login, the question is there

    assert _deliver(world, notice) == []
    _, inbox = smtp
    [(recipients, message)] = inbox.messages
    assert recipients == ["zhou@county.example.cn"]
    subject = str(make_header(decode_header(message["Subject"])))
    assert subject == f"新会诊申请 New consult request #{consult}"
    text = message.get_payload(decode=True).decode(message.get_content_charset())
    assert f"https://yxy.lancang.example.cn/consults/{consult}" in text
    assert "孕32周" not in text and "胎儿" not in text

    [(path, posted)] = robot.posts
    assert path.endswith("key=test-key") and posted["msgtype"] == "text"
    assert posted["text"]["mentioned_mobile_list"] == ["13800001234"]
    assert f"/consults/{consult}" in posted["text"]["content"] and "胎儿" not in posted["text"]["content"]

    assert _deliver(world, notice) == []  # delivered once: a repeated task sends nothing
    assert len(inbox.messages) == 1 and len(robot.posts) == 1


def test_a_refused_channel_is_retried_alone(world, smtp, robot):
    _request_consult(world)
    notice, _ = _the_request_notice(world)
    robot.errcode = 93000  # the robot refuses (e.g. an invalid key)
    failures = _deliver(world, notice)
    assert failures and "93000" in failures[0]
    _, inbox = smtp
    assert len(inbox.messages) == 1  # e-mail went out
    with world.db.scope(readonly=True) as session:
        row = session.get(Notification, notice)
        assert row.delivered == "email" and row.delivered_at is None

    robot.errcode = 0
    assert _deliver(world, notice) == []
    assert len(inbox.messages) == 1 and len(robot.posts) == 2  # no second e-mail
    with world.db.scope(readonly=True) as session:
        assert session.get(Notification, notice).delivered_at is not None


def test_an_unreachable_mail_server_fails_the_delivery_for_a_retry(tmp_path):
    settings = embedded_settings(tmp_path, notify_smtp_host="127.0.0.1", notify_smtp_port=free_port(),
                                 notify_timeout_s=2)
    sender = notify.senders_for(settings)[0]

    class Person:
        username, display_name, email, mobile = "zhou", "周协调", "zhou@county.example.cn", ""

    with pytest.raises(notify.DeliveryFailed, match="e-mail to zhou"):
        sender.send(user=Person(), title="t", link="https://x/consults/1")
    assert [s.channel for s in notify.senders_for(embedded_settings(tmp_path))] == ["log"]
