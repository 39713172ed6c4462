"""The viewer's tools in a real Chromium (issue 18, "tools a radiologist expects"): angle, rectangle
and ellipse ROIs with mean/SD/min/max in HU (the modality LUT applied), the HU probe, the text
arrow, orientation markers from ImageOrientationPatient that follow rotate and flip, a scale bar,
the help overlay, and the side panel. Saved measurements go into the study as a DICOM SR
(TID 1500) and a second reader opening the study sees them; key images are saved as a KOS.

Expected numbers are computed here from the same pixel data the synthetic CT was made of
(tests/dicomdata.ct_instance draws it from a seeded generator), over the points the viewer
reports, with the viewer's rule: a region holds the pixels whose centres lie inside it.
Screenshots: docs/screens/viewer-tools-1366.png, viewer-tools-390.png.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import generate_uid

from tests.conftest import embedded_settings
from tests.dicomdata import ct_instance
from tests.web.test_upload_browser import CHROMIUM, LiveApp, seed
from tests.web.test_viewer_app import browser  # noqa: F401 (the module's Chromium fixture)
from tests.web.test_viewer_app import Viewer

SLICES, SIZE, SPACING, SEED, INTERCEPT = 6, 128, 0.7, 11, -1024
SCREENS = Path(__file__).resolve().parents[2] / "docs" / "screens"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")


def stored_pixels(instance_number: int) -> np.ndarray:
    """The stored values ct_instance wrote for this instance (its seeded generator, replayed)."""
    rng = np.random.default_rng(SEED + instance_number)
    return rng.integers(0, 2000, size=(SIZE, SIZE), dtype=np.uint16).astype(np.float64)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    from imaging.service import Ingestor
    from storage.models import Institution
    from storage.runtime import bootstrap

    settings = embedded_settings(tmp_path_factory.mktemp("tools"))
    seed(settings, {"li": ("radiographer", "TOWN"), "wang": ("radiographer", "TOWN"), "zhao": ("specialist", "OTHER")})
    runtime = bootstrap(settings, component="test")
    with runtime.db.scope(readonly=True) as session:
        town = session.query(Institution).filter_by(code="TOWN").one().id
    study, series = generate_uid(), generate_uid()
    ingestor = Ingestor(runtime.db, runtime.store)
    sops = {}
    for n in range(1, SLICES + 1):
        sop = generate_uid()
        sops[sop] = n
        ingestor.ingest(ct_instance(study_uid=study, series_uid=series, sop_uid=sop, instance_number=n, size=SIZE,
                                    seed=SEED, position=(-44.8, -44.8, 5.0 * n)), institution_id=town, source="test")
    ingestor.close()
    runtime.db.dispose()
    with LiveApp(settings) as app:
        app.study, app.series, app.sops = study, series, sops
        yield app


def drag(v: Viewer, points: list[tuple[float, float]]) -> None:
    """Press at the first image point, move through the others, release at the last."""
    page = v.page
    page.mouse.move(*v.client(*points[0]))
    page.mouse.down()
    for p in points[1:]:
        page.mouse.move(*v.client(*p), steps=4)
    page.mouse.up()


def click(v: Viewer, x: float, y: float) -> None:
    v.page.mouse.click(*v.client(x, y))


def last_measurement(v: Viewer, count: int) -> dict:
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        found = v.page.evaluate("window.lancangViewer.state().measurements")
        if len(found) == count:
            return found[-1]
        time.sleep(0.05)
    raise AssertionError(f"expected {count} measurements\n{v.why()}")


def region_stats(pixels: np.ndarray, kind: str, p, q) -> dict:
    """Mean, SD, min, max in HU over the pixels whose centres lie inside the region."""
    x0, x1 = sorted((p[0], q[0]))
    y0, y1 = sorted((p[1], q[1]))
    ys, xs = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    if kind == "rect":
        inside = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
    else:
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        inside = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1
    hu = pixels[inside] + INTERCEPT
    return {"mean": hu.mean(), "sd": hu.std(), "min": hu.min(), "max": hu.max()}


def wait_for(v: Viewer, js: str, timeout: float = 10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = v.page.evaluate(js)
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"never true: {js}\n{v.why()}")


def test_measuring_tools_give_hu_statistics_angles_and_labels(live, browser):
    v = Viewer(browser, live, "li", viewport={"width": 1366, "height": 768})
    page = v.page
    first = v.open(live.study)
    pixels = stored_pixels(live.sops[first["sopInstanceUid"]])

    page.keyboard.press("a")  # the angle tool by its key
    assert v.page.evaluate("window.lancangViewer.state().tool") == "angle"
    drag(v, [(20, 64), (64, 64)])  # the first arm, ending at the vertex
    click(v, 64, 20)  # the end of the second arm
    angle = last_measurement(v, 1)
    assert angle["type"] == "angle" and len(angle["points"]) == 3
    a, b, c = angle["points"]
    u, w = np.subtract(a, b), np.subtract(c, b)  # square pixels here: image and physical angles agree
    expected = math.degrees(math.acos(np.dot(u, w) / (np.linalg.norm(u) * np.linalg.norm(w))))
    assert abs(angle["values"]["angleDeg"] - expected) < 0.01 and abs(expected - 90) < 2, angle

    for n, kind in enumerate(("rect", "ellipse"), start=2):
        page.locator(f'[data-tool="{kind}"]').click()
        drag(v, [(30.3, 40.2), (71.6, 90.7)])
        m = last_measurement(v, n)
        want = region_stats(pixels, kind, *m["points"])
        got = m["values"]
        assert m["valueUnit"] == "HU", m
        for key in ("mean", "sd", "min", "max"):
            assert abs(got[key] - want[key]) < 0.01, (kind, key, got, want)
        w = abs(m["points"][1][0] - m["points"][0][0]) * SPACING
        h = abs(m["points"][1][1] - m["points"][0][1]) * SPACING
        area = w * h if kind == "rect" else math.pi * w * h / 4
        assert abs(got["areaMm2"] - area) < 0.01, (got, area)

    page.keyboard.press("u")
    click(v, 50.5, 77.5)
    probe = last_measurement(v, 4)
    px, py = probe["points"][0]
    assert probe["values"]["value"] == pixels[int(py), int(px)] + INTERCEPT, probe

    page.keyboard.press("t")
    drag(v, [(90, 30), (110, 12)])
    last_measurement(v, 5)
    page.keyboard.type("结节 nodule")  # the panel's text box has the focus after an arrow
    arrow = last_measurement(v, 5)
    assert arrow["type"] == "arrow" and arrow["text"] == "结节 nodule", arrow
    assert page.locator('[data-role="m-list"] li').count() == 5
    assert page.locator("[data-role=panel]").is_visible()  # the arrow opened it for its text
    panel = page.locator('[data-role="m-list"]').inner_text()
    assert "角度 Angle" in panel and "HU" in panel and "椭圆 Ellipse" in panel, panel

    # Delete removes the selected measurement (picked in the panel).
    page.locator('[data-role="m-list"] li').nth(3).locator('[data-action="pick"]').click()
    page.locator("[data-role=canvas]").focus()
    page.keyboard.press("Delete")
    assert [m["type"] for m in v.page.evaluate("window.lancangViewer.state().measurements")] == \
        ["angle", "rect", "ellipse", "arrow"]
    SCREENS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENS / "viewer-tools-1366.png"))
    assert not v.errors, v.why()
    v.context.close()


def test_orientation_markers_scale_bar_rotate_flip_and_help(live, browser):
    v = Viewer(browser, live, "li", viewport={"width": 1366, "height": 768})
    page = v.page
    v.open(live.study)
    def letters(want=None):
        """The edge letters once the canvas has drawn them (they change on the next frame)."""
        js = "['top','right','bottom','left'].map(s => document.querySelector(`[data-role=or-${s}]`).textContent)"
        deadline = time.monotonic() + 5
        while (got := page.evaluate(js)) != want and want is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        return got

    # Axial, ImageOrientationPatient 1\0\0\0\1\0: rows run to the patient's left, columns posterior.
    assert letters(["A", "L", "P", "R"]) == ["A", "L", "P", "R"]
    page.locator("[data-role=canvas]").focus()
    page.keyboard.press("]")
    wait_for(v, "window.lancangViewer.state().rotation === 90 && window.lancangViewer.state()")
    assert letters(["R", "A", "L", "P"]) == ["R", "A", "L", "P"], letters()  # turned clockwise: anterior is now on the right
    page.keyboard.press("h")
    wait_for(v, "window.lancangViewer.state().flipH")
    assert letters(["L", "A", "R", "P"]) == ["L", "A", "R", "P"], letters()
    assert "旋转 Rot 90°" in page.locator("[data-role=ov-bl]").inner_text()

    # A length drawn on the turned, flipped image still measures in image millimetres.
    page.keyboard.press("l")
    drag(v, [(20, 64), (100, 64)])
    m = last_measurement(v, 1)
    assert abs(m["mm"] - 80 * SPACING) < 0.02 * 80 * SPACING, m
    assert v.page.evaluate("window.lancangViewer.clientToImage(...Object.values(window.lancangViewer.imageToClient(33, 77)))") \
        == pytest.approx({"x": 33, "y": 77}, abs=1e-6)

    # The scale bar: a round length near a fifth of the viewport, from the pixel spacing and zoom.
    bar = float(page.locator("#lcv").get_attribute("data-scale-bar-mm"))
    box = page.locator("[data-role=viewport]").bounding_box()
    mm_per_px = SPACING / (min(box["width"], box["height"]) / SIZE)
    want = max(s for s in (1, 2, 5, 10, 20, 50, 100, 200, 500) if s <= box["width"] / 5 * mm_per_px)
    assert bar == want, (bar, want)

    page.keyboard.press("0")  # reset turns and flips back
    wait_for(v, "window.lancangViewer.state().rotation === 0 && !window.lancangViewer.state().flipH")
    assert letters(["A", "L", "P", "R"]) == ["A", "L", "P", "R"]

    page.keyboard.press("?")
    assert page.locator("[data-role=help]").is_visible()
    help_text = page.locator("[data-role=help]").inner_text()
    assert all(k in help_text for k in ("Rectangle, ellipse ROI", "Probe, text arrow", "Rotate left", "unmark key image", "Delete"))
    page.keyboard.press("Escape")
    assert not page.locator("[data-role=help]").is_visible()
    assert not v.errors, v.why()
    v.context.close()


def test_saved_measurements_reopen_for_a_second_reader_and_key_images_are_kept(live, browser):
    v = Viewer(browser, live, "li", viewport={"width": 1366, "height": 768})
    page = v.page
    v.open(live.study)
    wait_for(v, "document.getElementById('lcv').dataset.notesLoaded === 'true'")
    page.locator('[data-action="panel"]').click()
    page.locator('[data-tool="ellipse"]').click()
    drag(v, [(30, 30), (60, 50)])
    made = last_measurement(v, 1)
    page.locator('[data-tool="measure"]').click()
    drag(v, [(10, 100), (90, 100)])
    last_measurement(v, 2)
    page.locator('[data-action="save-measurements"]').click()
    status = page.locator('[data-role="m-status"]')
    wait_for(v, "document.querySelector('[data-role=m-status]').textContent.includes('已保存')")
    assert "2" in status.inner_text(), status.inner_text()

    page.locator("[data-role=canvas]").focus()
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    key_state = wait_for(v, "(() => { const s = window.lancangViewer.state(); return !s.loading && s.index === 2 && s; })()")
    page.keyboard.press("k")
    assert wait_for(v, "window.lancangViewer.state().keyImage")
    page.locator('[data-action="save-keys"]').click()
    wait_for(v, "document.querySelector('[data-role=k-status]').textContent.includes('已保存')")
    assert "★ 关键图像 Key image" in page.locator("[data-role=ov-tr]").inner_text()
    # A cloud-film link for the patient (the radiographer makes it from the page's session).
    share = page.evaluate("fetch('/api/studies/' + window.lancangViewer.state().studyUid + '/shares', {method: 'POST',"
                          " headers: {'Content-Type': 'application/json'}, body: JSON.stringify({days: 7})})"
                          ".then(r => r.json())")
    assert not v.errors, v.why()
    v.context.close()

    # The patient's phone: the key image comes first, as its own group.
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    patient = phone.new_page()
    patient.goto(share["url"].replace("http://127.0.0.1:8000", live.url))
    patient.fill("#pin", share["pin"])
    with patient.expect_navigation():
        patient.click("button[type=submit]")
    first_group = patient.locator(".film-series-item").first
    assert "关键图像 Key images" in first_group.inner_text() and "1 幅" in first_group.inner_text()
    assert patient.locator("#film-counter").inner_text().strip() == "1 / 1"
    patient.screenshot(path=str(SCREENS / "film-key-image-390.png"))
    phone.close()

    # A second reader of the same institution opens the study: the report and key image are there.
    w = Viewer(browser, live, "wang", viewport={"width": 1366, "height": 768})
    w.open(live.study)
    wait_for(w, "document.getElementById('lcv').dataset.notesLoaded === 'true'")
    seen = w.page.evaluate("window.lancangViewer.state().measurements")
    assert sorted(m["type"] for m in seen) == ["ellipse", "length"], seen
    ellipse = next(m for m in seen if m["type"] == "ellipse")
    flat = lambda points: [c for p in points for c in p]  # noqa: E731
    assert ellipse["author"] == "li" and flat(ellipse["points"]) == pytest.approx(flat(made["points"]), abs=1e-3)
    assert ellipse["valueUnit"] == "HU", ellipse
    assert ellipse["values"]["mean"] == pytest.approx(made["values"]["mean"], abs=1e-3)
    assert w.page.evaluate("window.lancangViewer.keyImages()") == [
        {"seriesUid": live.series, "sopInstanceUid": key_state["sopInstanceUid"], "frame": 1}]
    w.page.locator('[data-action="panel"]').click()
    assert "li 已保存 saved" in w.page.locator('[data-role="m-list"]').inner_text()
    # Someone else's saved measurements are theirs: no delete button for this reader.
    assert w.page.locator('[data-role="m-list"] [data-action="remove"]').count() == 0
    assert not w.errors, w.why()
    w.context.close()


def test_tools_on_a_phone(live, browser):
    v = Viewer(browser, live, "li", viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
               device_scale_factor=2)
    page = v.page
    v.open(live.study)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 391
    page.locator('[data-action="panel"]').click()
    assert page.locator("[data-role=panel]").is_visible()
    page.screenshot(path=str(SCREENS / "viewer-tools-390.png"))
    canvas = page.locator("[data-role=canvas]").bounding_box()
    assert canvas["height"] >= 200, canvas
    assert not v.errors, v.why()
    v.context.close()
