"""Issue 18, loading: "priors and the next study on the worklist prefetch in the background when
the line is idle". In real Chromium: the reader opens a study from the study list; once every
slice of the shown series is loaded (and not before), the viewer fetches the person's prior and
then the next study of the list, one request at a time; "Next study" opens the next one, and
its frames then come from the browser's cache, not over the line again."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from tests.conftest import embedded_settings
from tests.dicomdata import ct_instance
from tests.web.test_upload_browser import CHROMIUM, LiveApp, login, seed
from tests.web.test_viewer_app import browser  # noqa: F401 (the module's Chromium fixture)

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")


def _resident() -> str:
    from imaging.persons import check_character

    body = "53082819850312002"
    return body + check_character(body)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    from imaging.service import Ingestor
    from storage.models import Institution
    from storage.runtime import bootstrap

    settings = embedded_settings(tmp_path_factory.mktemp("idle"))
    seed(settings, {"li": ("radiographer", "TOWN")})
    runtime = bootstrap(settings, component="test")
    with runtime.db.scope(readonly=True) as session:
        town = session.query(Institution).filter_by(code="TOWN").one().id
    ingestor = Ingestor(runtime.db, runtime.store)
    studies = {}
    # (name, patient, date, slices): the current study, its prior, and another patient's study.
    for name, patient, day, count in (("current", "P001", "20261102", 10), ("prior", "P001", "20260501", 6),
                                      ("other", "P777", "20261101", 5)):
        study, series = generate_uid(), generate_uid()
        studies[name] = study
        ids = (("RESIDENT_ID_CN", _resident()),) if patient == "P001" else ()
        for n in range(count):
            ingestor.ingest(ct_instance(study_uid=study, series_uid=series, instance_number=n + 1, size=64,
                                        patient_id=patient, study_date=day, other_ids=ids, seed=n,
                                        position=(0.0, 0.0, 5.0 * n)), institution_id=town, source="test")
    ingestor.close()
    runtime.db.dispose()
    with LiveApp(settings) as app:
        app.studies = studies
        yield app


def _poll(page, js: str, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = page.evaluate(js)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"never true: {js}: {page.evaluate('window.lancangViewer && window.lancangViewer.idle()')}")


def test_priors_and_the_next_study_load_while_the_line_is_idle(live, browser):
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    page = context.new_page()
    login(page, live.url, "li", "/")
    page.goto(f"{live.url}/studies")  # newest first: current, other, prior
    frames: list[str] = []
    page.on("request", lambda r: "/frames/" in r.url and "/rendered" not in r.url and frames.append(r.url))
    page.goto(f"{live.url}/studies/{live.studies['current']}/view")
    page.evaluate("window.lancangViewer.ready")
    done = _poll(page, "(() => { const d = window.lancangViewer.idle(); return d && d.studies.length === 2 && d; })()")
    assert done["studies"] == [live.studies["prior"], live.studies["other"]], done
    # Each study's first image natively (as the viewer asks for it), the rest JPEG-LS: fewer
    # bytes than native frames (64 x 64 x 2 bytes each).
    assert done["frames"] == 6 + 5 and 0 < done["bytes"] < 11 * 64 * 64 * 2, done

    # Not one background request before the shown series was complete.
    owner = lambda url: next(name for name, uid in live.studies.items() if uid in url)  # noqa: E731
    order = [owner(url) for url in frames]
    first_background = min(i for i, name in enumerate(order) if name != "current")
    assert order[:first_background].count("current") == 10 and "current" not in order[first_background:], order

    # "Next study" is the list's next one; its frames come from the browser's cache now.
    link = page.locator('[data-role="next-study"]')
    assert link.is_visible() and link.get_attribute("href") == f"/studies/{live.studies['other']}/view"
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    cached, fetched = [], []
    raw_frame = lambda url: "/frames/" in url and "/rendered" not in url  # noqa: E731 (not the preview)
    cdp.on("Network.responseReceived", lambda e: raw_frame(e["response"]["url"]) and (
        cached if e["response"].get("fromDiskCache") or e["response"].get("fromPrefetchCache") else fetched).append(
        e["response"]["url"]))
    cdp.on("Network.requestServedFromCache", lambda e: cached.append(e["requestId"]))
    link.click()
    page.wait_for_url(f"**/studies/{live.studies['other']}/view")
    page.evaluate("window.lancangViewer.ready")
    _poll(page, "window.lancangViewer.progress().loaded === 5")
    assert not fetched and len(cached) >= 5, (cached, fetched)
    context.close()


def test_a_low_resolution_preview_stands_in_until_the_full_frame_arrives(live, browser):
    """18: "a low-resolution preview first ... replaced by full quality without the reader
    noticing anything but sharpness". The frames are held (a slow line); the 128-pixel
    preview shows at once, labelled as its slice and as a preview, still "loading"; released,
    the full frame replaces it under the same label."""
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    page = context.new_page()
    login(page, live.url, "li", "/")
    held, line = [], {"open": False}

    def gate(route):  # raw frames wait until the line "opens"; /rendered previews pass
        if line["open"]:
            route.continue_()
        else:
            held.append(route)
    page.route("**/frames/*", gate)
    page.goto(f"{live.url}/studies/{live.studies['current']}/view")
    shown = _poll(page, "(() => { const s = window.lancangViewer && window.lancangViewer.state();"
                        " return s && s.preview && s; })()")
    assert shown["loading"] and shown["index"] == 0 and shown["sopInstanceUid"], shown
    overlay = page.locator("[data-role=ov-br]").inner_text()
    assert "预览 Preview" in overlay and "Im 1/10" in overlay, overlay
    assert page.evaluate("window.lancangViewer.firstPreviewAt()") is not None
    page.screenshot(path="/tmp/lancang-viewer-preview.png")
    assert held, "the full frame was asked for beside the preview"
    line["open"] = True
    for route in held:
        route.continue_()
    full = page.evaluate("window.lancangViewer.ready")
    full = _poll(page, "(() => { const s = window.lancangViewer.state(); return !s.loading && s; })()")
    assert not full["preview"] and full["sopInstanceUid"] == shown["sopInstanceUid"], full
    assert "预览" not in page.locator("[data-role=ov-br]").inner_text()
    context.close()
