"""Identity over HTTP: login page and cookie, bearer tokens, /api/me, health, error shapes."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from storage import service as tenancy
from storage.models import ApiToken
from storage.types import utcnow
from storage import identity as service
from web.app import create_app


@pytest.fixture
def app_client(runtime):
    with TestClient(create_app(runtime.settings)) as client:
        yield client


@pytest.fixture
def alice(runtime):
    with runtime.db.scope() as session:
        tenancy.add_institution(session=session, code="T01", name="思茅镇卫生院", name_en="Simao THC", level="township")
        user = service.add_user(session=session, username="alice", role="radiographer", institution_code="T01",
                                password="correct-horse", display_name="李技师")
        token, _ = service.issue_token(session=session, user=user)
    return token


def test_me_requires_credentials(app_client):
    response = app_client.get("/api/me")
    assert response.status_code == 401
    assert response.json()["error"] == "not_authenticated"


def test_me_with_bearer_token(app_client, alice):
    response = app_client.get("/api/me", headers={"Authorization": f"Bearer {alice}"})
    assert response.status_code == 200
    body = response.json()
    assert body["username"] == "alice" and body["role"] == "radiographer"
    assert body["institution"] == {"code": "T01", "name": "思茅镇卫生院", "name_en": "Simao THC", "level": "township"}


@pytest.mark.parametrize("header", ["Bearer nonsense", "Basic abc", "Bearer ", "lct_only"])
def test_bad_credentials_are_401_not_500(app_client, alice, header):
    assert app_client.get("/api/me", headers={"Authorization": header}).status_code == 401


def test_revoked_and_expired_tokens_are_refused(app_client, alice, runtime):
    with runtime.db.scope() as session:
        service.revoke_token(session=session, secret=alice)
    response = app_client.get("/api/me", headers={"Authorization": f"Bearer {alice}"})
    assert response.status_code == 401 and "revoked" in response.json()["detail"]
    with runtime.db.scope() as session:
        user = service.get_user(session=session, username="alice")
        token, row = service.issue_token(session=session, user=user)
        row.expires_at = utcnow() - timedelta(seconds=1)
    response = app_client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401 and "expired" in response.json()["detail"]


def test_disabled_user_loses_access_at_once(app_client, alice, runtime):
    with runtime.db.scope() as session:
        service.set_user_active(session=session, username="alice", active=False)
    assert app_client.get("/api/me", headers={"Authorization": f"Bearer {alice}"}).status_code == 401


def test_tokens_are_stored_hashed(alice, runtime):
    with runtime.db.scope(readonly=True) as session:
        stored = [t.token_hash for t in session.query(ApiToken)]
    assert alice not in stored and service.hash_token(alice) in stored


def test_browser_login_sets_session_cookie(app_client, alice):
    page = app_client.get("/login")
    assert page.status_code == 200 and "登录" in page.text
    wrong = app_client.post("/login", data={"username": "alice", "password": "nope"}, follow_redirects=False)
    assert wrong.status_code == 401 and "用户名或密码错误" in wrong.text
    right = app_client.post("/login", data={"username": "alice", "password": "correct-horse", "next": "/"},
                            follow_redirects=False)
    assert right.status_code == 303
    cookie = right.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie.replace("Lax", "lax")
    assert app_client.get("/api/me").json()["display_name"] == "李技师"
    home = app_client.get("/")
    assert home.status_code == 200 and "李技师" in home.text
    forged = app_client.post("/logout", follow_redirects=False)  # no CSRF token: refused, still signed in
    assert forged.status_code == 403 and app_client.get("/api/me").status_code == 200
    token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', home.text).group(1)
    out = app_client.post("/logout", data={"csrf_token": token}, follow_redirects=False)
    assert app_client.get("/api/me").status_code == 401
    # The browser drops cached frames (privately cacheable for the viewer's prefetch) on sign-out.
    assert out.headers["clear-site-data"] == '"cache"'


def test_login_redirect_is_same_site_only(app_client, alice):
    response = app_client.post("/login", data={"username": "alice", "password": "correct-horse",
                                               "next": "//evil.example/"}, follow_redirects=False)
    assert response.headers["location"] == "/"


@pytest.mark.parametrize("target", ["/\\evil.example/", "/\t/evil.example/", "/\\\\evil.example/", "\\/evil.example/",
                                    "https://evil.example/"])
def test_login_redirect_refuses_what_a_browser_reads_as_another_host(app_client, alice, target):
    response = app_client.post("/login", data={"username": "alice", "password": "correct-horse", "next": target},
                               follow_redirects=False)
    assert response.headers["location"] == "/"


def test_pages_redirect_to_login_and_errors_are_friendly(app_client):
    home = app_client.get("/", headers={"Accept": "text/html"}, follow_redirects=False)
    assert home.status_code == 303 and home.headers["location"].startswith("/login")
    missing = app_client.get("/no/such/page", headers={"Accept": "text/html"})
    assert missing.status_code == 404 and "未找到" in missing.text
    api_missing = app_client.get("/api/nothing")
    assert api_missing.status_code == 404 and api_missing.json()["error"] == "not_found"


def test_validation_errors_are_4xx_json(app_client, alice):
    response = app_client.get("/api/studies?limit=abc", headers={"Authorization": f"Bearer {alice}"})
    assert response.status_code == 422 and response.json()["error"] == "invalid"


def test_healthz_reports_each_part(app_client):
    response = app_client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "object_store": "ok", "broker": "ok"}}


def test_openapi_is_served(app_client):
    assert "/api/me" in app_client.get("/openapi.json").json()["paths"]
    assert app_client.get("/docs").status_code == 200


def test_login_is_rate_limited(app_client, alice):
    codes = [app_client.post("/login", data={"username": "alice", "password": "bad"}).status_code
             for _ in range(12)]
    assert 429 in codes and 500 not in codes


def test_dicomweb_checks_tokens_like_the_user_path(app_client, alice, runtime):
    """The read resources authenticate in their one worker hop (principal_for_token): the same
    refusals as /api/me, and a session cookie's secret is not accepted as a bearer token."""
    qido = "/dicom-web/studies"
    ok = app_client.get(qido, headers={"Authorization": f"Bearer {alice}"})
    assert ok.status_code == 200 and ok.json() == []
    assert app_client.get(qido).status_code == 401
    assert app_client.get(qido, headers={"Authorization": "Bearer nonsense"}).status_code == 401
    with runtime.db.scope() as session:
        user = service.get_user(session=session, username="alice")
        expired, row = service.issue_token(session=session, user=user)
        row.expires_at = utcnow() - timedelta(seconds=1)
    response = app_client.get(qido, headers={"Authorization": f"Bearer {expired}"})
    assert response.status_code == 401 and "expired" in response.json()["detail"]
    with runtime.db.scope() as session:
        cookie, _ = service.issue_token(session=session, user=service.get_user(session=session, username="alice"),
                                        kind="session")
    assert app_client.get(qido, cookies={"lancang_session": cookie}).status_code == 200  # the browser session works
    app_client.cookies.clear()
    refused = app_client.get(qido, headers={"Authorization": f"Bearer {cookie}"})
    assert refused.status_code == 401 and "invalid" in refused.json()["detail"]
    with runtime.db.scope() as session:
        service.set_user_active(session=session, username="alice", active=False)
    response = app_client.get(qido, headers={"Authorization": f"Bearer {alice}"})
    assert response.status_code == 401 and "disabled" in response.json()["detail"]


def test_cookie_requests_need_the_token_and_our_origin_bearer_calls_do_not(app_client, alice):
    """13.4: a cookie-authenticated POST without the CSRF token, or from another origin, is
    refused (403, nothing done); an API call with a bearer token needs neither."""
    app_client.post("/login", data={"username": "alice", "password": "correct-horse"}, follow_redirects=False)
    home = app_client.get("/")
    token = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)"', home.text).group(1)
    no_token = app_client.post("/api/me/notifications/1/read")
    assert no_token.status_code == 403 and no_token.json()["error"] == "csrf"
    elsewhere = app_client.post("/api/me/notifications/1/read", headers={
        "X-CSRF-Token": token, "Origin": "http://127.0.0.1:9999"})
    assert elsewhere.status_code == 403 and "跨站" in elsewhere.json()["detail"]
    same = app_client.post("/api/me/notifications/1/read", headers={"X-CSRF-Token": token})
    assert same.status_code != 403
    # 14.7: a cookie never authenticates another origin's request, not even a read.
    assert app_client.get("/api/me", headers={"Origin": "http://127.0.0.1:9999"}).status_code == 401
    assert app_client.get("/api/me").status_code == 200
    bearer = httpx_client_without_cookies(app_client).post(
        "/api/me/notifications/1/read", headers={"Authorization": f"Bearer {alice}", "Origin": "http://x.example"})
    assert bearer.status_code != 403


def httpx_client_without_cookies(client):
    client.cookies.clear()
    return client


def test_room_websocket_from_another_origin_is_refused(app_client, alice):
    from starlette.websockets import WebSocketDisconnect

    app_client.post("/login", data={"username": "alice", "password": "correct-horse"}, follow_redirects=False)
    with pytest.raises(WebSocketDisconnect) as refused:
        with app_client.websocket_connect("/ws/rooms/1", headers={"Origin": "http://127.0.0.1:9999"}) as ws:
            ws.receive_text()
    assert refused.value.code == 4403


def test_security_headers_on_pages_and_apis(app_client, alice):
    for path in ("/login", "/api/me", "/healthz"):
        headers = app_client.get(path).headers
        assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "SAMEORIGIN"
        assert "frame-ancestors 'self'" in headers["content-security-policy"]
        # Scripts from our origin only; WebAssembly may compile (the viewer's JPEG-LS decoder),
        # JavaScript eval and inline script may not.
        scripts = headers["content-security-policy"].split("script-src", 1)[1].split(";", 1)[0].split()
        assert scripts == ["'self'", "'wasm-unsafe-eval'"], scripts
        assert headers["referrer-policy"] in ("same-origin", "no-referrer")


def test_an_account_locks_out_with_back_off_after_wrong_passwords(app_client, alice, runtime):
    """13 (Low): five wrong passwords lock the account (423, Beijing time in the message),
    even with the right password; the lockout ends on its own; success resets the count."""
    from sqlalchemy import update

    from storage.models import User

    for _ in range(5):
        assert app_client.post("/login", data={"username": "alice", "password": "nope"}).status_code == 401
    locked = app_client.post("/login", data={"username": "alice", "password": "correct-horse"})
    assert locked.status_code == 423 and "北京时间" in locked.text and "密码错误次数过多" in locked.text
    with runtime.db.scope() as session:
        user = session.scalar(select(User).where(User.username == "alice"))
        first = (user.locked_until - utcnow()).total_seconds()
        assert user.failed_logins == 5 and 50 < first <= 60
        session.execute(update(User).where(User.id == user.id).values(locked_until=utcnow() - timedelta(seconds=1)))
    app_client.app.state.login_limiter._hits.clear()  # the per-address limiter is another test's
    for _ in range(5):
        app_client.post("/login", data={"username": "alice", "password": "nope"})
    with runtime.db.scope() as session:
        user = session.scalar(select(User).where(User.username == "alice"))
        assert 110 < (user.locked_until - utcnow()).total_seconds() <= 120  # doubled
        session.execute(update(User).where(User.id == user.id).values(locked_until=None))
    ok = app_client.post("/login", data={"username": "alice", "password": "correct-horse"}, follow_redirects=False)
    assert ok.status_code == 303
    with runtime.db.scope(readonly=True) as session:
        assert session.scalar(select(User.failed_logins).where(User.username == "alice")) == 0


def test_forwarded_for_is_believed_only_from_configured_proxies(tmp_path):
    """13 (Low): uvicorn believed X-Forwarded-For from any loopback peer, so spoofed
    addresses each got their own login rate-limit bucket (fails on the previous code)."""
    import subprocess
    import sys
    import time

    import httpx

    from tests.conftest import embedded_settings, settings_env
    from tests.services import free_port

    def attempts_before_429(env: dict, port: int) -> int:
        process = subprocess.Popen([sys.executable, "-m", "lancang.cli", "web"], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                    break
                except httpx.HTTPError:
                    assert time.monotonic() < deadline and process.poll() is None, "lancang web did not start"
                    time.sleep(0.2)
            for n in range(1, 16):
                answer = httpx.post(f"http://127.0.0.1:{port}/login", data={"username": "x", "password": "y"},
                                    headers={"X-Forwarded-For": f"10.9.0.{n}"}, timeout=10)
                if answer.status_code == 429:
                    return n
            return 0
        finally:
            process.terminate()
            process.wait(timeout=30)

    port = free_port()
    env = settings_env(embedded_settings(tmp_path / "a", http_port=port))
    assert attempts_before_429(env, port) == 11  # spoofed headers ignored: one bucket for 127.0.0.1
    port = free_port()
    env = settings_env(embedded_settings(tmp_path / "b", http_port=port))
    env["LANCANG_TRUSTED_PROXIES"] = "127.0.0.1/32"
    assert attempts_before_429(env, port) == 0  # behind a trusted proxy: one bucket per client
