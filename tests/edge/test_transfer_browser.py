"""The edge's transfer status (/edge/status, at the township) and the region's list of edges
(/admin/edges) in real Chromium, on a township PC (1366x768) and a phone (390x844):

* the radiographer sees the line down in plain words, the queue in sending order (the urgent
  study first) with bytes and an ETA, and the studies sent, with Beijing times (the next retry's);
* the region's admin sees each edge: last contact, backlog, version, and issues a credential
  that is shown once; a study half arrived says so on its page;
* nothing is wider than the screen and no script error (the CSP allows no inline script).

Screens go to $LANCANG_SCREENS when set."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from pydicom.uid import generate_uid

from edge import outbox, region
from storage import identity
from storage import service as tenancy
from storage.runtime import bootstrap
from storage.types import utcnow
from tests.conftest import embedded_settings
from tests.consult.test_consult_browser import browser  # noqa: F401 (the module's Chromium fixture)
from tests.edge.test_desk_browser import _fits, _page
from tests.edge.test_forward import _ingest, _register, _scan
from tests.edge.test_transfer_region import _instance, _manifest, _put
from tests.edge.transfer_world import gz
from tests.services import free_port
from tests.web.test_upload_browser import CHROMIUM, LiveApp, PASSWORD, login, screens_dir

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")


@pytest.fixture
def edge(tmp_path):
    """A township edge whose region is unreachable, with two studies queued (one urgent)."""
    settings = embedded_settings(tmp_path / "edge", edge_region_url=f"http://127.0.0.1:{free_port()}",
                                 edge_credential="lce_test")
    runtime = bootstrap(settings, component="test")
    with runtime.db.scope() as session:
        town = tenancy.add_institution(session=session, code="T01", name="糯福乡卫生院", level="township")
        identity.add_user(session=session, username="rad", role="radiographer", institution_code="T01",
                          password=PASSWORD, display_name="李技师")
    runtime.town_id = town.id
    routine, urgent = generate_uid(), generate_uid()
    for study, count in ((routine, 3), (urgent, 2)):
        for n in range(count):
            _ingest(runtime, study, n + 1)
    _register(runtime, urgent, 0, 1)
    _scan(runtime)
    with runtime.db.scope() as session:
        link = outbox.note_line_failure(session=session, kind="unreachable", detail="connection refused",
                                        now=utcnow())
        link.rate_bps, link.wire_ratio, link.measured_at = 50_000, 0.5, utcnow()
    runtime.studies = (urgent, routine)
    yield runtime
    runtime.db.dispose()


def test_the_township_reads_its_queue_and_the_region_its_edges(edge, browser, tmp_path):
    from web.pages import login_limiter

    screens, errors = screens_dir(tmp_path), []
    urgent, routine = edge.studies
    with LiveApp(edge.settings) as app:
        app.app.state.login_limiter = login_limiter()
        page = _page(browser, errors)
        login(page, app.url, "rad", "/edge/status")
        text = page.locator("main").inner_text()
        order = page.eval_on_selector_all("#queue article[data-study], article.transfer[data-study]",
                                          "rows => rows.map(r => r.dataset.study)")
        assert order[:2] == [urgent, routine], order  # the urgent study is sent first
        assert "无法连接县医院" in text and "急 Urgent" in text and "约 1 分钟" in text and "0/3 幅影像" in text
        assert "Traceback" not in text and "Errno" not in text
        assert _fits(page)
        page.screenshot(path=str(screens / "edge-status-1366.png"), full_page=True)
        phone = _page(browser, errors, 390, 844)
        login(phone, app.url, "rad", "/edge/status")
        assert "无法连接县医院" in phone.locator("main").inner_text()
        assert _fits(phone)
        phone.screenshot(path=str(screens / "edge-status-390.png"), full_page=True)

    at_region = bootstrap(embedded_settings(tmp_path / "region"), component="test")
    try:
        with at_region.db.scope() as session:
            tenancy.add_institution(session=session, code="COUNTY", name="澜沧县人民医院", level="county")
            tenancy.add_institution(session=session, code="T01", name="糯福乡卫生院", level="township",
                                    parent_code="COUNTY")
            identity.add_user(session=session, username="admin", role="admin", institution_code="COUNTY",
                              password=PASSWORD, display_name="管理员")
        secret = region.cli_issue(at_region.db, institution_code="T01", name="t01-edge")
        with at_region.db.scope() as session:
            node = region.list_edges(session=session)[0]
            region.note_report(session=session, edge=node, address="10.8.0.21",
                               report={"version": "0.9.0", "backlog_studies": 2, "backlog_bytes": 41_000_000,
                                       "oldest_queued_at": utcnow().isoformat()})
        with LiveApp(at_region.settings) as app:
            app.app.state.login_limiter = login_limiter()
            page = _page(browser, errors)
            login(page, app.url, "admin", "/admin/edges")
            text = page.locator("main").inner_text()
            assert "t01-edge" in text and "糯福乡卫生院" in text and "0.9.0" in text and "41.0 MB" in text
            assert page.locator("nav a[href='/admin/edges']").count() >= 1  # a section of the console
            page.fill("#add-edge input[name=name]", "t01-edge-2")
            page.select_option("#add-edge select[name=institution]", "T01")
            page.click("#add-edge button.primary")
            page.wait_for_load_state()
            shown = page.locator("main").inner_text()
            assert "lce_" in shown, shown[:1500]
            assert _fits(page)
            page.screenshot(path=str(screens / "admin-edges-1366.png"), full_page=True)
            page.goto(f"{app.url}/admin/edges")
            assert "lce_" not in page.locator("main").inner_text()  # shown once
            phone = _page(browser, errors, 390, 844)
            login(phone, app.url, "admin", "/admin/edges")
            assert _fits(phone)
            phone.screenshot(path=str(screens / "admin-edges-390.png"), full_page=True)

            # One of a study's two instances has arrived: its page says it is not whole yet.
            study = generate_uid()
            blobs = dict(_instance(study, n) for n in (1, 2))
            first = next(iter(blobs))
            with httpx.Client(base_url=app.url) as api:
                assert _manifest(api, secret, study, blobs).status_code == 200
                assert _put(api, secret, study, first, 0, gz(blobs[first])).json()["done"]
            for shown, size in ((page, "1366"), (phone, "390")):
                shown.goto(f"{app.url}/studies/{study}")
                said = shown.locator("#edge-transfer")
                assert said.get_attribute("data-complete") == "no" and "已校验 1/2 幅，尚未收齐" in said.inner_text()
                assert _fits(shown)
                shown.screenshot(path=str(screens / f"study-arriving-from-edge-{size}.png"), full_page=True)
    finally:
        at_region.db.dispose()
    assert errors == []
