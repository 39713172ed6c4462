"""Layouts (issue 18, "layouts 1x1, 1x2, 2x2 with drag-and-drop of series") in real Chromium:
three series of a study hang in a 2x2 grid of compact viewers; a series dragged from the list
onto a cell replaces that cell's series; the keys 1/2/3 switch layouts; a tool chosen once
applies to every cell; linked, scrolling one cell brings the others to the same slice position.
Screens: docs/screens/layout-2x2-1366.png, layout-390.png."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.conftest import embedded_settings
from tests.dicomdata import ct_instance
from tests.web.test_upload_browser import CHROMIUM, LiveApp, login, seed
from tests.web.test_viewer_app import browser  # noqa: F401 (the module's Chromium fixture)

SCREENS = Path(__file__).resolve().parents[2] / "docs" / "screens"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")


def _series_slices(study: str, number: int, count: int, z0: float) -> tuple[str, list[bytes]]:
    """One axial series (numbered `number`) of `count` slices 5 mm apart from z0."""
    series = generate_uid()
    slices = []
    for i in range(count):
        ds = pydicom.dcmread(io.BytesIO(ct_instance(study_uid=study, series_uid=series, instance_number=i + 1,
                                                    size=64, seed=number, position=(0.0, 0.0, z0 + 5 * i))))
        ds.SeriesNumber = number
        ds.SeriesDescription = f"序列{number} series {number}"
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        slices.append(out.getvalue())
    return series, slices


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    from imaging.service import Ingestor
    from storage.models import Institution
    from storage.runtime import bootstrap

    settings = embedded_settings(tmp_path_factory.mktemp("layout"))
    seed(settings, {"li": ("radiographer", "TOWN")})
    runtime = bootstrap(settings, component="test")
    with runtime.db.scope(readonly=True) as session:
        town = session.query(Institution).filter_by(code="TOWN").one().id
    study = generate_uid()
    ingestor = Ingestor(runtime.db, runtime.store)
    uids = []
    for number, count, z0 in ((1, 8, 0.0), (2, 12, -20.0), (3, 6, 10.0)):
        uid, slices = _series_slices(study, number, count, z0)
        uids.append(uid)
        for data in slices:
            ingestor.ingest(data, institution_id=town, source="test")
    ingestor.close()
    runtime.db.dispose()
    with LiveApp(settings) as app:
        app.study, app.series = study, uids
        yield app


def _poll(page, js: str, timeout: float = 15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = page.evaluate(js)
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"never true: {js}")


def _cell_state(page, i: int) -> dict:
    return page.evaluate(f"document.querySelectorAll('.hang-cell')[{i}].viewer.state()")


def test_layouts_drag_and_drop_tools_and_linked_scrolling(live, browser):
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    login(page, live.url, "li", "/")
    page.goto(f"{live.url}/studies/{live.study}/layout?grid=2x2")
    _poll(page, "document.getElementById('hang').dataset.ready === '4'")
    # Cells 1-3 hang the study's series in order; the fourth repeats the first.
    assert [_cell_state(page, i)["seriesUid"] for i in range(4)] == [*live.series, live.series[0]]
    assert "S2 CT" in page.locator(".hang-cell").nth(1).locator("figcaption").inner_text()

    # Drag series 3 onto cell 1.
    page.locator(f'.hang-card[data-series="{live.series[2]}"]').drag_to(page.locator(".hang-cell").nth(0))
    _poll(page, f"document.querySelectorAll('.hang-cell')[0].viewer.state().seriesUid === '{live.series[2]}'")
    _poll(page, "document.querySelector('.hang-cell figcaption').textContent.includes('S3 CT')")
    SCREENS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENS / "layout-2x2-1366.png"))

    # One tool for every cell.
    page.locator('.hang-bar [data-tool="wl"]').click()
    assert {_cell_state(page, i)["tool"] for i in range(4)} == {"wl"}

    # Key 2: 1x2; the third and fourth cells go away.
    page.locator(".hang-bar a").first.focus()
    page.keyboard.press("2")
    _poll(page, "document.getElementById('hang').dataset.grid === '1x2'")
    assert [page.locator(".hang-cell").nth(i).is_visible() for i in range(4)] == [True, True, False, False]
    assert page.url.endswith("?grid=1x2")

    # Linked: scrolling cell 1 (series 3, z 10..35) brings cell 2 (series 2, z -20..35) to the same z.
    page.locator("#hang-link").click()
    frame = page.frame_locator(".hang-cell >> nth=0 >> iframe")
    frame.locator("[data-role=canvas]").click()
    for _ in range(3):
        frame.locator("[data-role=canvas]").press("ArrowDown")
    _poll(page, "document.querySelectorAll('.hang-cell')[0].viewer.state().index === 3")
    target = _cell_state(page, 0)["position"]
    assert target == 25.0
    _poll(page, f"document.querySelectorAll('.hang-cell')[1].viewer.state().position === {target}")

    # A tap on a card (no drag) shows it in the active cell (the one last touched).
    page.locator(f'.hang-card[data-series="{live.series[0]}"]').click()
    _poll(page, f"document.querySelectorAll('.hang-cell')[0].viewer.state().seriesUid === '{live.series[0]}'")
    assert not errors, errors
    context.close()


def test_layout_on_a_phone(live, browser):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                                  device_scale_factor=2)
    page = context.new_page()
    login(page, live.url, "li", "/")
    page.goto(f"{live.url}/studies/{live.study}/layout?grid=1x2")
    _poll(page, "document.getElementById('hang').dataset.ready === '2'")
    assert page.evaluate("document.documentElement.scrollWidth") <= 391
    page.screenshot(path=str(SCREENS / "layout-390.png"))
    context.close()
