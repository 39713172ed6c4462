"""Cloud film: links and PINs, lockout, expiry, revocation, audit, the patient endpoints,
the radiographer's API and page, time-limited image URLs (S3 checks signatures), the CLI."""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
import zipfile
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.uid import generate_uid
from sqlalchemy import select, update

from film import service as shares
from imaging import derive
from film.models import Share
from imaging.models import Instance, Series
from imaging.service import Ingestor
from storage import service as tenancy
from storage.access import SYSTEM
from storage.models import AuditRecord
from storage.types import utcnow
from tests.cli import run_cli
from tests.conftest import settings_env
from tests.dicomdata import ct_instance
from storage import identity
from web.app import create_app

PHONE = {"user-agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0) LancangTest", "accept": "text/html"}


@dataclass
class World:
    study_uid: str
    other_study_uid: str
    tokens: dict
    sop_uids: list


@pytest.fixture
def world(runtime) -> World:
    """TOWN (performing, under COUNTY) with a derived 3-slice CT; OTHER with one study."""
    tokens = {}
    with runtime.db.scope() as session:
        tenancy.add_institution(session=session, code="COUNTY", name="澜沧县人民医院", level="county")
        town = tenancy.add_institution(session=session, code="TOWN", name="勐朗镇卫生院", level="township",
                                       parent_code="COUNTY")
        other = tenancy.add_institution(session=session, code="OTHER", name="另一镇卫生院", level="township")
        for username, role, code in (("town-rad", "radiographer", "TOWN"), ("town-spec", "specialist", "TOWN"),
                                     ("other-rad", "radiographer", "OTHER"), ("county-admin", "admin", "COUNTY")):
            user = identity.add_user(session=session, username=username, role=role, institution_code=code,
                                     password="password-1")
            tokens[username] = identity.issue_token(session=session, user=user)[0]
        town_id, other_id = town.id, other.id
    ingestor = Ingestor(runtime.db, runtime.store)
    study_uid, series_uid = generate_uid(), generate_uid()
    sops = []
    for number in (1, 2, 3):
        result = ingestor.ingest(ct_instance(study_uid=study_uid, series_uid=series_uid, instance_number=number,
                                             size=96), institution_id=town_id, source="test")
        sops.append(result.sop_instance_uid)
    other = ingestor.ingest(ct_instance(patient_id="O-1"), institution_id=other_id, source="test")
    ingestor.close()
    derive.derive_series(runtime.db, runtime.store, result.series_pk)
    return World(study_uid, other.study_instance_uid, tokens, sops)


@pytest.fixture
def client(runtime):
    with TestClient(create_app(runtime.settings)) as client:
        yield client


def _bearer(world: World, username: str) -> dict:
    return {"Authorization": f"Bearer {world.tokens[username]}"}


def _create(runtime, study_uid: str, days: float = 30) -> dict:
    settings = runtime.settings
    with runtime.db.scope() as session:
        created = shares.create_share(session=session, principal=SYSTEM, study_uid=study_uid, days=days,
                                      secret_key=settings.effective_secret_key,
                                      public_url=settings.effective_public_url)
        out = created.as_json()
    out["token"] = out["url"].rsplit("/f/", 1)[1]
    return out


def _unlock(client, share: dict) -> httpx.Response:
    return client.post(f"/f/{share['token']}/unlock", data={"pin": share["pin"]}, headers=PHONE,
                       follow_redirects=False)


def _wrong_pin(share: dict) -> str:
    return "000000" if share["pin"] != "000000" else "111111"


def httpx_get_without_cookie(client, path: str) -> int:
    saved = list(client.cookies.jar)
    client.cookies.clear()
    try:
        return client.get(path).status_code
    finally:
        for cookie in saved:  # with their paths (a path-less copy would shadow the others)
            client.cookies.jar.set_cookie(cookie)


def _audits_like(runtime, prefix: str) -> list[AuditRecord]:
    with runtime.db.scope(readonly=True) as session:
        return list(session.scalars(select(AuditRecord).where(AuditRecord.action.startswith(prefix))
                                    .order_by(AuditRecord.seq)))


def _audits(runtime, action: str) -> list[AuditRecord]:
    with runtime.db.scope(readonly=True) as session:
        rows = session.scalars(select(AuditRecord).where(AuditRecord.action == action)
                               .order_by(AuditRecord.seq)).all()
        for row in rows:
            session.expunge(row)
    return rows


# --------------------------------------------------------------------------- secrets


@pytest.mark.parametrize("backend", ["embedded"])
def test_token_is_random_and_only_hashes_are_stored(runtime, world):
    first, second = _create(runtime, world.study_uid), _create(runtime, world.study_uid)
    assert first["token"] != second["token"] and first["id"] != second["id"]
    assert len(first["token"]) >= 43                       # 256-bit HMAC of a 128-bit random nonce
    assert re.fullmatch(r"\d{6}", first["pin"])
    with runtime.db.scope(readonly=True) as session:
        row = session.get(Share, first["id"])
        stored = " ".join(str(getattr(row, c.key)) for c in Share.__table__.columns)
    assert first["token"] not in stored and first["pin"] not in row.pin_hash
    assert row.token_hash == hashlib.sha256(first["token"].encode()).hexdigest()
    assert len(row.token_nonce) == 32                      # 128 random bits
    secret = runtime.settings.effective_secret_key
    assert shares.link_token(secret, row.token_nonce) == first["token"]   # the film sheet can reprint it
    assert shares.link_token("another secret", row.token_nonce) != first["token"]
    created = _audits(runtime, "film.share.create")
    assert [r.object_id for r in created] == [str(first["id"]), str(second["id"])]


# --------------------------------------------------------------------------- patient flow


def test_pin_then_cookie_then_the_study_in_chinese(runtime, world, client):
    share = _create(runtime, world.study_uid)
    token = share["token"]
    page = client.get(f"/f/{token}", headers=PHONE)
    assert page.status_code == 200 and "提取码" in page.text
    # Nothing about the study or the patient before the PIN.
    for secret in ("张秀英", "勐朗镇卫生院", "胸部CT", "2026年", "<img", world.study_uid):
        assert secret not in page.text
    with runtime.db.scope(readonly=True) as session:
        instance_id = session.scalar(select(Instance.id).where(Instance.sop_instance_uid == world.sop_uids[0]))
    for path in (f"/f/{token}/img/{instance_id}/0.jpg", f"/f/{token}/pv/{instance_id}.jpg"):
        assert client.get(path).status_code == 401
        opened = client.get(path, headers=PHONE, follow_redirects=False)  # typed into the address bar
        assert opened.status_code == 303 and opened.headers["location"] == f"/f/{token}"
    assert client.get(f"/f/{token}/view", headers=PHONE, follow_redirects=False).headers["location"] == f"/f/{token}"
    assert client.get(f"/f/{token}/download", follow_redirects=False).status_code == 303

    wrong = client.post(f"/f/{token}/unlock", data={"pin": _wrong_pin(share)}, headers=PHONE)
    assert wrong.status_code == 403 and "还可尝试 4 次" in wrong.text and "张秀英" not in wrong.text
    for malformed in ("", "abcdef", "1" * 5000):
        assert client.post(f"/f/{token}/unlock", data={"pin": malformed}, headers=PHONE).status_code == 403
    with runtime.db.scope() as session:  # reset the count the malformed tries used up
        session.execute(update(Share).where(Share.id == share["id"]).values(failed_attempts=0))

    unlocked = _unlock(client, share)
    assert unlocked.status_code == 303 and unlocked.headers["location"] == f"/f/{token}/view"
    cookie = unlocked.headers["set-cookie"]
    assert "HttpOnly" in cookie and f"Path=/f/{token}" in cookie and "Max-Age=1800" in cookie

    view = client.get(f"/f/{token}/view", headers=PHONE)
    assert view.status_code == 200
    for fact in ("勐朗镇卫生院", "2026年11月1日", "胸部CT平扫", "张秀英", "共 3 幅", "报告尚未出具"):
        assert fact in view.text, fact
    assert view.headers["cache-control"] == "no-store"
    image = client.get(f"/f/{token}/img/{instance_id}/0.jpg?w=320")
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(image.content)).size == (96, 96)  # never enlarged: the phone scales up
    assert client.get(f"/f/{token}/img/{instance_id}/0.jpg?w=320").content == image.content  # cached
    assert client.get(f"/f/{token}/pv/{instance_id}.jpg").status_code == 200

    download = client.get(f"/f/{token}/download", headers=PHONE)
    assert download.status_code == 200 and download.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(download.content))
    assert archive.testzip() is None
    members = sorted(n for n in archive.namelist() if n.endswith(".dcm"))
    assert len(members) == 3 and "README.txt" in archive.namelist()
    with runtime.db.scope(readonly=True) as session:
        stored = {runtime.store.get(key) for key in session.scalars(
            select(Instance.object_key).where(Instance.sop_instance_uid.in_(world.sop_uids)))}
    assert {archive.read(name) for name in members} == stored

    for action in ("film.open", "film.unlock", "film.view", "film.download", "film.image", "film.preview"):
        records = _audits(runtime, action)
        assert records, action
        # 13.6: the image reads were not audited on the previous code.
        assert all(r.source == "testclient" for r in records), action
        assert all("LancangTest" in r.detail["user_agent"] for r in records if "user_agent" in r.detail), action
    assert {r.object_id for r in _audits(runtime, "film.image")} == {world.sop_uids[0]}
    unlocks = _audits(runtime, "film.unlock")
    assert [r.outcome for r in unlocks] == ["denied"] * 4 + ["ok"]


def test_five_wrong_pins_lock_the_link(runtime, world, client):
    share = _create(runtime, world.study_uid)
    token = share["token"]
    for attempt in range(1, 5):
        answer = client.post(f"/f/{token}/unlock", data={"pin": _wrong_pin(share)}, headers=PHONE)
        assert answer.status_code == 403 and f"还可尝试 {5 - attempt} 次" in answer.text
    fifth = client.post(f"/f/{token}/unlock", data={"pin": _wrong_pin(share)}, headers=PHONE)
    # The patient is told what to do (wait until a Beijing time, or call the hospital).
    assert fifth.status_code == 423 and "北京时间" in fifth.text and "联系检查医院" in fifth.text
    right = _unlock(client, share)
    assert right.status_code == 423 and "set-cookie" not in right.headers
    assert client.get(f"/f/{token}", headers=PHONE).status_code == 423
    with runtime.db.scope(readonly=True) as session:
        row = session.get(Share, share["id"])
    assert row.lockouts == 1 and shares.share_state(row) == "locked"
    assert 55 <= (row.locked_until - row.locked_at).total_seconds() <= 60  # the first pause: a minute
    assert _audits(runtime, "film.unlock")[-1].outcome == "denied"


def test_a_lockout_is_temporary_escalates_and_staff_can_lift_it_or_set_a_new_pin(runtime, world, client):
    """13 (Low): five wrong PINs locked the link for ever on the previous code (anyone with
    the link could lock the patient out). Now the pause grows (1, 5, 15 minutes...), ends
    on its own, and the hospital can lift it or set a new PIN without reprinting."""
    share = _create(runtime, world.study_uid)
    token = share["token"]

    def five_wrong():
        for _ in range(5):
            client.post(f"/f/{token}/unlock", data={"pin": _wrong_pin(share)}, headers=PHONE)

    def expire_lock():
        with runtime.db.scope() as session:
            session.execute(update(Share).where(Share.id == share["id"]).values(locked_until=utcnow()))

    five_wrong()
    expire_lock()  # a minute later
    assert client.get(f"/f/{token}", headers=PHONE).status_code == 200
    five_wrong()
    with runtime.db.scope(readonly=True) as session:
        row = session.get(Share, share["id"])
        assert row.lockouts == 2 and 295 <= (row.locked_until - row.locked_at).total_seconds() <= 300
    staff = _bearer(world, "town-rad")
    assert client.post(f"/api/shares/{share['id']}/unlock", headers=staff).status_code == 200
    assert _unlock(client, share).status_code == 303
    fresh = client.post(f"/api/shares/{share['id']}/pin", headers=staff).json()["pin"]
    assert fresh != share["pin"] and len(fresh) == 6
    assert _unlock(client, share).status_code == 403  # the old PIN is gone
    assert client.post(f"/f/{token}/unlock", data={"pin": fresh}, headers=PHONE,
                       follow_redirects=False).status_code == 303
    assert [r.action for r in _audits_like(runtime, "film.share.")][-2:] == ["film.share.unlock",
                                                                             "film.share.new_pin"]
    assert client.post(f"/api/shares/{share['id']}/unlock", headers=_bearer(world, "other-rad")).status_code == 404
    assert client.post(f"/api/shares/{share['id']}/pin", headers=_bearer(world, "other-rad")).status_code == 404


def test_expired_and_revoked_links_are_gone_even_for_an_open_viewer(runtime, world, client):
    expiring, revoked = _create(runtime, world.study_uid), _create(runtime, world.study_uid)
    thumbnails = {}
    client.cookies.clear()  # another test's hand-made cookie (path /) would shadow ours
    for share in (expiring, revoked):
        assert _unlock(client, share).status_code == 303
        view = client.get(f"/f/{share['token']}/view", headers=PHONE)
        assert "film-series" in view.text  # the images page, not the PIN form again
        assert view.status_code == 200
        # 13 (Low): thumbnails were 15-minute signed /objects/ URLs that outlived a revoke.
        found = re.findall(r'<img src="([^"]+)" alt="" width="72"', view.text)
        assert found and all(url.startswith(f"/f/{share['token']}/th/") for url in found), found
        thumbnails[share["id"]] = found[0]
        assert client.get(found[0]).status_code == 200
        assert httpx_get_without_cookie(client, found[0]) == 401
    with runtime.db.scope() as session:
        session.execute(update(Share).where(Share.id == expiring["id"]).values(expires_at=utcnow() - timedelta(1)))
        shares.revoke_share(session=session, principal=SYSTEM, share_id=revoked["id"])
    with runtime.db.scope(readonly=True) as session:
        instance_id = session.scalar(select(Instance.id).where(Instance.sop_instance_uid == world.sop_uids[1]))
    for share in (expiring, revoked):
        token = share["token"]
        for path in (f"/f/{token}", f"/f/{token}/view", f"/f/{token}/download"):
            page = client.get(path, headers=PHONE)
            assert page.status_code == 410 and "链接已失效" in page.text, path
        assert client.get(f"/f/{token}/img/{instance_id}/0.jpg").status_code == 410
        assert client.get(thumbnails[share["id"]]).status_code == 410
        assert _unlock(client, share).status_code == 410
    assert any(r.outcome == "denied" and r.detail.get("reason") == "gone" for r in _audits(runtime, "film.open"))


@pytest.mark.parametrize("backend", ["embedded"])
def test_bad_input_is_never_a_server_error(runtime, world, client):
    share = _create(runtime, world.study_uid)
    other = _create(runtime, world.other_study_uid)
    token = share["token"]
    for path in ("/f/abc", "/f/" + "x" * 43, "/f/" + "x" * 500, f"/f/{token[:-1]}!", "/f/%00"):
        page = client.get(path, headers=PHONE)
        assert page.status_code == 404 and ("链接不存在" in page.text or "未找到" in page.text), path
    assert _unlock(client, share).status_code == 303
    with runtime.db.scope(readonly=True) as session:
        mine = session.scalar(select(Instance.id).where(Instance.sop_instance_uid == world.sop_uids[0]))
        foreign = session.scalar(select(Instance.id).join(Series).where(Series.study_pk != session.scalar(
            select(Share.study_pk).where(Share.id == share["id"]))))
    assert client.get(f"/f/{token}/img/{foreign}/0.jpg").status_code == 404      # another study's image
    assert client.get(f"/f/{token}/img/{mine}/7.jpg").status_code == 404         # no such frame
    assert client.get(f"/f/{token}/img/999999/0.jpg").status_code == 404
    assert client.get(f"/f/{token}/img/{mine}/0.jpg?w=-5").status_code == 200    # snapped to a known width
    assert client.get(f"/f/{token}/img/{mine}/0.jpg?w=99999").status_code == 200
    assert client.get(f"/f/{token}/img/{mine}/0.jpg?w=abc").status_code == 422
    assert client.get(f"/f/{token}/img/abc/0.jpg").status_code == 422
    # The unlocked cookie of one link opens nothing of another, and a forged one nothing at all.
    cookie = client.cookies.get("lancang_film", path=f"/f/{token}")
    fresh = TestClient(client.app)
    fresh.cookies.set("lancang_film", cookie, path=f"/f/{other['token']}")
    assert fresh.get(f"/f/{other['token']}/img/{foreign}/0.jpg").status_code == 401
    expires, _, mac = cookie.partition(".")
    for forged in (f"{int(expires) + 9999}.{mac}", f"{expires}.{'0' * 64}", "garbage", ""):
        fresh.cookies.clear()
        fresh.cookies.set("lancang_film", forged, path=f"/f/{token}")
        assert fresh.get(f"/f/{token}/img/{mine}/0.jpg").status_code == 401, forged


@pytest.mark.parametrize("backend", ["embedded"])
def test_public_endpoints_are_rate_limited(runtime, world, client):
    share = _create(runtime, world.study_uid)
    codes = [client.post(f"/f/{share['token']}/unlock", data={"pin": _wrong_pin(share)}, headers=PHONE).status_code
             for _ in range(25)]
    assert codes[:4] == [403] * 4 and codes[4] == 423 and 429 in codes
    limited = client.post(f"/f/{share['token']}/unlock", data={"pin": share["pin"]}, headers=PHONE)
    assert limited.status_code == 429 and "操作太频繁" in limited.text


# --------------------------------------------------------------------------- time-limited image URLs


def test_signed_image_urls_are_refused_when_tampered_or_expired(runtime, world, client, backend):
    """Staff downloads (film sheets) are time-limited object-store links: S3 presigned
    (SeaweedFS checks the signature) or HMAC-signed filesystem links served by /objects.
    (Patient thumbnails no longer are: they go through /f/, which checks the share.)"""
    with runtime.db.scope(readonly=True) as session:
        thumbnail = session.scalar(select(Series.thumbnail_key).where(Series.thumbnail_key.is_not(None)))
    urls = [runtime.store.url(thumbnail, timedelta(minutes=5))]

    def fetch(url: str) -> httpx.Response:
        if backend == "servers":
            return httpx.get(url, timeout=10)
        return client.get("/" + url.split("://", 1)[1].split("/", 1)[1])  # the app serves /objects

    good = fetch(urls[0])
    assert good.status_code == 200 and Image.open(io.BytesIO(good.content)).size == (96, 96)
    signature = "X-Amz-Signature=" if backend == "servers" else "signature="
    head, _, tail = urls[0].partition(signature)
    flipped = ("0" if tail[0] != "0" else "1") + tail[1:]
    assert fetch(head + signature + flipped).status_code == 403
    other_key = urls[0].replace("series.jpg", "x/preview.jpg")  # the signature covers the key
    assert fetch(other_key).status_code in (403, 404)

    with runtime.db.scope(readonly=True) as session:
        key = session.scalar(select(Series.thumbnail_key).where(Series.thumbnail_key.is_not(None)))
    short = runtime.store.url(key, timedelta(seconds=1))
    time.sleep(2.2)
    assert fetch(short).status_code in (403, 410)


# --------------------------------------------------------------------------- radiographer


def test_radiographer_api_creates_lists_and_revokes(runtime, world, client):
    rad = _bearer(world, "town-rad")
    created = client.post(f"/api/studies/{world.study_uid}/shares", json={"days": 7}, headers=rad)
    assert created.status_code == 201
    body = created.json()
    assert set(body) >= {"id", "url", "pin", "expires_at"} and body["url"].startswith(
        runtime.settings.effective_public_url + "/f/")
    assert created.headers["cache-control"] == "no-store"
    assert client.post(f"/api/studies/{world.study_uid}/shares", headers=rad).status_code == 201  # default 30 days
    listing = client.get(f"/api/studies/{world.study_uid}/shares", headers=rad).json()
    assert [s["state"] for s in listing] == ["active", "active"] and "pin" not in listing[0]
    assert client.get(f"/api/studies/{world.study_uid}/shares", headers=_bearer(world, "county-admin")).status_code == 200

    assert client.post(f"/api/studies/{world.study_uid}/shares", headers=_bearer(world, "town-spec")).status_code == 403
    assert client.post(f"/api/studies/{world.study_uid}/shares", headers=_bearer(world, "other-rad")).status_code == 404
    assert client.post(f"/api/studies/{world.study_uid}/shares").status_code == 401
    assert client.post(f"/api/studies/{world.study_uid}/shares", json={"days": 0}, headers=rad).status_code == 422
    assert client.post(f"/api/studies/{world.study_uid}/shares", json={"days": "x"}, headers=rad).status_code == 422
    assert client.post("/api/studies/1.2.3.4/shares", headers=rad).status_code == 404
    assert client.delete(f"/api/shares/{body['id']}", headers=_bearer(world, "other-rad")).status_code == 404

    revoked = client.delete(f"/api/shares/{body['id']}", headers=rad)
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    assert client.delete(f"/api/shares/{body['id']}", headers=rad).status_code == 200  # idempotent
    token = body["url"].rsplit("/f/", 1)[1]
    assert client.get(f"/f/{token}", headers=PHONE).status_code == 410
    assert len(_audits(runtime, "film.share.revoke")) == 1


@pytest.mark.parametrize("backend", ["embedded"])
def test_radiographer_page_creates_shows_the_pin_once_and_revokes(runtime, world, client):
    rad = {**_bearer(world, "town-rad"), "accept": "text/html"}
    page = client.get(f"/studies/{world.study_uid}/film", headers=rad)
    assert page.status_code == 200 and "创建云胶片链接" in page.text and "还没有链接" in page.text
    created = client.post(f"/studies/{world.study_uid}/film", data={"days": "7"}, headers=rad)
    assert created.status_code == 201
    pin = re.search(r'id="created-pin">(\d{6})<', created.text).group(1)
    url = re.search(r'id="created-url">([^<]+)<', created.text).group(1)
    assert "<svg" in created.text and "只显示这一次" in created.text
    again = client.get(f"/studies/{world.study_uid}/film", headers=rad)
    assert pin not in again.text and "有效 Active" in again.text
    share_id = int(re.search(r'data-share="(\d+)"', again.text).group(1))
    revoke = client.post(f"/studies/{world.study_uid}/film/{share_id}/revoke", headers=rad, follow_redirects=False)
    assert revoke.status_code == 303
    assert "已撤销 Revoked" in client.get(f"/studies/{world.study_uid}/film", headers=rad).text
    token = url.rsplit("/f/", 1)[1]
    assert client.post(f"/f/{token}/unlock", data={"pin": pin}, headers=PHONE).status_code == 410
    assert client.get(f"/studies/{world.study_uid}/film", headers={"accept": "text/html"},
                      follow_redirects=False).status_code == 303  # to the login page


@pytest.mark.parametrize("backend", ["embedded"])
def test_cli_share_create_and_revoke(runtime, world):
    env = settings_env(runtime.settings)

    def cli(*args, check=True):
        return run_cli(env, "share", *args, check=check)

    created = json.loads(cli("create", world.study_uid, "--days", "3").stdout)
    assert set(created) >= {"url", "pin", "expires_at", "id"}
    hours = (datetime.fromisoformat(created["expires_at"]) - utcnow()).total_seconds() / 3600
    assert 71 < hours <= 72
    default = json.loads(cli("create", world.study_uid).stdout)
    with runtime.db.scope(readonly=True) as session:
        row = session.get(Share, default["id"])
        assert 29.9 < (row.expires_at - utcnow()).total_seconds() / 86400 <= 30
    assert "revoked" in cli("revoke", created["url"]).stdout
    assert "revoked" in cli("revoke", str(default["id"])).stdout
    with runtime.db.scope(readonly=True) as session:
        assert all(s.revoked_at is not None for s in session.scalars(select(Share)))
    failed = cli("revoke", "https://example.org/nothing", check=False)
    assert failed.returncode == 2 and "error:" in failed.stderr
    assert cli("create", "1.2.3.999", check=False).returncode == 2
    assert [r.actor for r in _audits(runtime, "film.share.create")] == ["system:cli", "system:cli"]


@pytest.mark.parametrize("backend", ["embedded"])
def test_the_film_page_warns_when_qr_codes_point_at_this_machine(runtime, world):
    """16.16: with the default public URL (http://127.0.0.1:8000) every QR code printed for a
    patient opens nothing on a phone; the film page says so (and the web process logs it at
    start). With a real public URL the warning is gone."""
    rad = {**_bearer(world, "town-rad"), "accept": "text/html"}
    with TestClient(create_app(runtime.settings)) as client:
        page = client.get(f"/studies/{world.study_uid}/film", headers=rad).text
    assert 'id="loopback-warning"' in page and "LANCANG_PUBLIC_URL" in page and "127.0.0.1" in page
    public = runtime.settings.model_copy(update={"public_url": "https://yingxiang.example.cn"})
    assert not public.public_url_is_loopback and runtime.settings.public_url_is_loopback
    with TestClient(create_app(public)) as client:
        page = client.get(f"/studies/{world.study_uid}/film", headers=rad).text
    assert 'id="loopback-warning"' not in page
