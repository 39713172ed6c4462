"""16.18: users change their own password in a real browser (errors next to the field that
caused them; other sessions end, this one stays), and an admin resets one with
`lancang user passwd` (audited, every session ended). There was no way to do either."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from storage import service as tenancy
from storage.models import AuditRecord
from tests.cli import run_cli
from tests.conftest import settings_env
from tests.services import free_port
from tests.web.live import serving
from tests.browser import CHROMIUM, CHROMIUM_ARGS
from storage import identity
from storage.deps import SESSION_COOKIE
from web.app import create_app
from web.csrf import token_for


@pytest.fixture
def person(runtime):
    with runtime.db.scope() as session:
        tenancy.add_institution(session=session, code="TOWN", name="勐朗镇卫生院", level="township")
        user = identity.add_user(session=session, username="li", role="radiographer", institution_code="TOWN",
                                 password="old-password-1", display_name="李技师")
        return identity.issue_token(session=session, user=user)[0]


def _sign_in(page, base: str, username: str, password: str, next_path: str) -> None:
    page.goto(f"{base}/login?next={next_path}")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


def _login(client, password: str) -> int:
    return client.post("/login", data={"username": "li", "password": password}, follow_redirects=False).status_code


def test_an_admin_resets_a_password_from_the_cli(runtime, person):
    done = run_cli(settings_env(runtime.settings), "user", "passwd", "li", "--password", "reset-pass-22", check=False)
    assert done.returncode == 0, done.stderr
    with TestClient(create_app(runtime.settings)) as client:
        assert client.get("/api/me", headers={"Authorization": f"Bearer {person}"}).status_code == 401  # ended
        assert _login(client, "old-password-1") == 401 and _login(client, "reset-pass-22") == 303
    with runtime.db.scope(readonly=True) as session:
        assert session.scalars(select(AuditRecord.action).where(AuditRecord.action == "admin.user.passwd")).all()


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")
def test_a_password_chosen_by_someone_else_is_replaced_at_first_sign_in(runtime):
    """16.18: the demo admin (run.sh prints its password) and a user whose password an admin
    reset are taken to the password page at sign-in, and every page asks until they choose one."""
    from playwright.sync_api import sync_playwright

    with runtime.db.scope() as session:
        tenancy.add_institution(session=session, code="CITY", name="普洱市人民医院", level="city")
        identity.add_user(session=session, username="admin", role="admin", institution_code="CITY",
                          password="printed-by-run-sh", must_change_password=True)
    settings = runtime.settings.model_copy(update={"http_port": free_port()})
    with serving(settings) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        _sign_in(page, base, "admin", "printed-by-run-sh", "/consults")
        page.wait_for_url(base + "/account/password?first=1")
        assert "别人为您设置" in page.locator("#password-first").inner_text()
        page.goto(base + "/consults")  # any other page keeps asking
        assert "请修改初始密码" in page.locator("main").inner_text()
        page.goto(base + "/account/password")
        page.fill("input[name=current]", "printed-by-run-sh")
        page.fill("input[name=new]", "only-i-know-it-7")
        page.fill("input[name=again]", "only-i-know-it-7")
        page.click("button[type=submit]")
        page.wait_for_selector("#password-done")
        page.goto(base + "/consults")
        assert "请修改初始密码" not in page.locator("main").inner_text()
        browser.close()
    done = run_cli(settings_env(runtime.settings), "user", "passwd", "admin", "--password", "reset-by-admin-3",
                   check=False)
    assert done.returncode == 0, done.stderr
    with runtime.db.scope(readonly=True) as session:
        assert identity.get_user(session=session, username="admin").must_change_password  # asked again


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")
def test_a_user_changes_their_own_password_in_chromium(tmp_path, runtime, person):
    from playwright.sync_api import sync_playwright

    settings = runtime.settings.model_copy(update={"http_port": free_port()})
    with serving(settings) as base:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 390, "height": 844})
            _sign_in(page, base, "li", "old-password-1", "/account/password")
            page.wait_for_url(base + "/account/password")
            page.fill("input[name=current]", "wrong-password")
            page.fill("input[name=new]", "new-password-9")
            page.fill("input[name=again]", "new-password-9")
            page.click("button[type=submit]")
            error = page.locator("#err-current")
            assert "当前密码不正确" in error.inner_text()
            # the message sits right under the field that caused it
            field = page.locator("input[name=current]").bounding_box()
            box = error.bounding_box()
            assert 0 <= box["y"] - (field["y"] + field["height"]) < 40
            page.screenshot(path="/tmp/lancang-password-error-390.png", full_page=True)
            page.fill("input[name=current]", "old-password-1")
            page.fill("input[name=new]", "new-password-9")
            page.fill("input[name=again]", "new-password-9")
            page.click("button[type=submit]")
            page.wait_for_selector("#password-done")
            page.goto(base + "/")  # this session still works
            assert "李技师" in page.content()
            browser.close()
    with TestClient(create_app(runtime.settings)) as client:
        assert client.get("/api/me", headers={"Authorization": f"Bearer {person}"}).status_code == 401
        assert _login(client, "old-password-1") == 401 and _login(client, "new-password-9") == 303
    with runtime.db.scope(readonly=True) as session:
        outcomes = session.scalars(select(AuditRecord.outcome).where(AuditRecord.action == "auth.password.change")
                                   .order_by(AuditRecord.id)).all()
    assert outcomes == ["denied", "ok"]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")
def test_an_admin_resets_a_password_on_a_page(runtime):
    """16.18: an admin resets a forgotten password on /admin/users (users of their subtree only);
    the temporary password is shown once and must be replaced at the user's next sign-in."""
    from playwright.sync_api import sync_playwright

    with runtime.db.scope() as session:
        tenancy.add_institution(session=session, code="CITY", name="普洱市人民医院", level="city")
        tenancy.add_institution(session=session, code="TOWN", name="勐朗镇卫生院", level="township", parent_code="CITY")
        tenancy.add_institution(session=session, code="SH", name="上海合作医院", level="partner")
        identity.add_user(session=session, username="admin", role="admin", institution_code="CITY",
                          password="admin-password-1")
        identity.add_user(session=session, username="li", role="radiographer", institution_code="TOWN",
                          password="forgotten-pass-1", display_name="李技师")
        identity.add_user(session=session, username="xu", role="specialist", institution_code="SH",
                          password="not-yours-pass-1")
    settings = runtime.settings.model_copy(update={"http_port": free_port()})
    with serving(settings) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        _sign_in(page, base, "admin", "admin-password-1", "/admin/users")
        page.wait_for_url(base + "/admin/users")
        assert page.locator("tr[data-user=li]").count() == 1 and page.locator("tr[data-user=xu]").count() == 0
        page.locator("tr[data-user=li] form[action$=password] button").click()
        page.locator("#reset-done").wait_for()
        temporary = page.locator("#temporary-password").inner_text()
        assert len(temporary) >= 12
        assert "待改密码" in page.locator("tr[data-user=li]").inner_text()
        page.screenshot(path="/tmp/lancang-admin-users-1366.png", full_page=True)
        other = browser.new_page()
        _sign_in(other, base, "li", temporary, "/consults")
        other.wait_for_url(base + "/account/password?first=1")  # choose a password of her own first
        browser.close()
    with TestClient(create_app(runtime.settings)) as client:
        assert _login(client, "forgotten-pass-1") == 401
        client.post("/login", data={"username": "admin", "password": "admin-password-1"})
        token = token_for(runtime.settings.effective_secret_key, client.cookies.get(SESSION_COOKIE))
        outside = client.post("/admin/users/xu/password", headers={"X-CSRF-Token": token})
        assert outside.status_code == 404  # outside the admin's subtree: as if unknown
        assert client.post("/admin/users/li/password", headers={"X-CSRF-Token": token}).status_code == 200
    with runtime.db.scope(readonly=True) as session:
        records = session.scalars(select(AuditRecord).where(AuditRecord.action == "admin.user.passwd")).all()
        assert [r.object_id for r in records] == ["li", "li"]
