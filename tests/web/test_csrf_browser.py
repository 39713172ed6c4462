"""13.4 in real Chromium: a page on the same site (127.0.0.1) but another port is another
origin. With the victim signed in (session cookie, SameSite=Lax, which the browser does
send there), it tries what the review did: create and revoke cloud-film shares with
auto-submitted forms, and open the live-room WebSocket. Each is refused; the same actions
from our own page (token from <meta name=csrf-token>) still work.

Failed on the previous code: the forms created and revoked shares as the victim."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import func, select

from film.models import Share
from storage.models import User
from tests.browser import CHROMIUM, CHROMIUM_ARGS
from tests.film.test_film_browser import site  # noqa: F401 (fixture)
from storage import identity

pytestmark = pytest.mark.skipif(not __import__("pathlib").Path(CHROMIUM).exists(), reason="chromium")


class Attacker:
    """Another origin on the same host: serves one page, given as HTML."""

    def __init__(self):
        self.page = b""
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.end_headers()
                self.wfile.write(outer.page)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def victim(site):
    with site.runtime.db.scope() as session:
        if session.scalar(select(User).where(User.username == "csrf-victim")) is None:
            identity.add_user(session=session, username="csrf-victim", role="radiographer", institution_code="TOWN",
                              password="password-1")
        user = session.scalar(select(User).where(User.username == "csrf-victim"))
        return identity.issue_token(session=session, user=user, kind="session", days=1)[0]


def _shares(site) -> tuple[int, int]:
    with site.runtime.db.scope(readonly=True) as session:
        total = session.scalar(select(func.count()).select_from(Share).where(Share.study_instance_uid == site.study_uid))
        revoked = session.scalar(select(func.count()).select_from(Share).where(
            Share.study_instance_uid == site.study_uid, Share.revoked_at.is_not(None)))
    return total, revoked


def test_another_origin_cannot_act_as_the_signed_in_user(site, victim):
    from playwright.sync_api import sync_playwright

    attacker = Attacker()
    target = site.share()["id"]
    before = _shares(site)
    forms = f"""<!doctype html><body>
<iframe name="a"></iframe><iframe name="b"></iframe>
<form id="create" method="post" target="a" action="{site.url}/studies/{site.study_uid}/film">
  <input name="days" value="30"></form>
<form id="revoke" method="post" target="b" action="{site.url}/studies/{site.study_uid}/film/{target}/revoke"></form>
<script>
document.getElementById('create').submit();
document.getElementById('revoke').submit();
window.ws = 'pending';
const ws = new WebSocket('{site.url.replace("http", "ws")}/ws/rooms/1');
ws.onopen = () => window.ws = 'open';
ws.onclose = (e) => window.ws = 'closed ' + e.code;
</script></body>"""
    attacker.page = forms.encode()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            context = browser.new_context()
            context.add_cookies([{"name": "lancang_session", "value": victim, "url": site.url}])
            page = context.new_page()
            page.goto(attacker.url)
            page.wait_for_function("() => window.ws !== 'pending'", timeout=10000)
            page.wait_for_timeout(1500)  # let both form posts finish
            assert page.evaluate("window.ws") != "open"
            assert _shares(site) == before, "a cross-origin form changed shares"

            # Our own page, same cookie: the token in the page makes the same actions work.
            own = context.new_page()
            own.goto(f"{site.url}/studies/{site.study_uid}/film")
            token = own.get_attribute('meta[name="csrf-token"]', "content")
            assert token and own.locator('form.film-create input[name="csrf_token"]').get_attribute("value") == token
            own.locator("form.film-create button[type=submit], form.film-create button").first.click()
            own.wait_for_load_state()
            assert _shares(site)[0] == before[0] + 1
            status = own.evaluate(f"""async () => (await fetch('/api/shares/{target}', {{method: 'DELETE'}})).status""")
            assert status == 200 and _shares(site)[1] == before[1] + 1
            browser.close()
    finally:
        attacker.stop()
