"""14.7 in real Chromium: a DICOMweb viewer served from another origin reads QIDO with a
bearer token when its origin is in LANCANG_CORS_ORIGINS (preflight answered), and is
blocked otherwise; a cookie never authenticates it. Failed on the previous code (no
Access-Control-Allow-Origin, OPTIONS answered 405)."""

from __future__ import annotations


import pytest
from pydicom.uid import generate_uid

from imaging.service import Ingestor
from storage import service as tenancy
from tests.conftest import embedded_settings
from tests.dicomdata import ct_instance
from tests.services import free_port
from tests.web.test_csrf_browser import Attacker
from tests.web.live import serving
from tests.browser import CHROMIUM, CHROMIUM_ARGS
from storage import identity

pytestmark = pytest.mark.skipif(not __import__("pathlib").Path(CHROMIUM).exists(), reason="chromium")

PAGE = """<!doctype html><script>
window.result = 'pending';
fetch('{base}/dicom-web/studies?PatientID=CORS-1', {{headers: {{'Authorization': 'Bearer {token}',
      'Accept': 'application/dicom+json'}}}})
  .then(r => r.json()).then(j => window.result = 'ok ' + j.length)
  .catch(e => window.result = 'blocked ' + e);
window.cookieResult = 'pending';
fetch('{base}/api/studies', {{credentials: 'include'}})
  .then(r => window.cookieResult = 'status ' + r.status).catch(e => window.cookieResult = 'blocked');
</script>"""


@pytest.mark.parametrize("allowed", [True, False])
def test_a_viewer_on_another_origin_reads_with_a_bearer_token_only_when_allowed(tmp_path, allowed):
    from playwright.sync_api import sync_playwright

    from storage.runtime import bootstrap

    viewer = Attacker()
    port = free_port()
    origin = viewer.url.rstrip("/")
    settings = embedded_settings(tmp_path, http_port=port, public_url=f"http://127.0.0.1:{port}",
                                 cors_origins=origin if allowed else "")
    runtime = bootstrap(settings, component="test")
    with runtime.db.scope() as session:
        tenancy.add_institution(session=session, code="T01", name="镇卫生院", level="township")
        user = identity.add_user(session=session, username="reader", role="radiographer", institution_code="T01",
                                 password="password-1")
        token = identity.issue_token(session=session, user=user)[0]
        cookie = identity.issue_token(session=session, user=user, kind="session")[0]
        institution_id = user.institution_id
    ingestor = Ingestor(runtime.db, runtime.store)
    ingestor.ingest(ct_instance(study_uid=generate_uid(), patient_id="CORS-1"), institution_id=institution_id,
                    source="test")
    ingestor.close()
    viewer.page = PAGE.format(base=settings.public_url, token=token).encode()
    try:
        with serving(settings), sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            context = browser.new_context()
            context.add_cookies([{"name": "lancang_session", "value": cookie, "url": settings.public_url}])
            page = context.new_page()
            page.goto(viewer.url)
            page.wait_for_function("() => window.result !== 'pending' && window.cookieResult !== 'pending'",
                                   timeout=15000)
            result, cookie_result = page.evaluate("[window.result, window.cookieResult]")
            browser.close()
    finally:
        viewer.stop()
    if allowed:
        assert result == "ok 1", result
    else:
        assert result.startswith("blocked"), result
    assert cookie_result == "blocked"  # never readable with the cookie (and the server ignored it)
