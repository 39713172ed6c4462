"""MPR (/viewer/{study}/mpr?series=, web/static/viewer/mpr.js and volume.js) in a real Chromium
against the real app: a synthetic CT of known geometry (40 columns × 48 rows × 30 slices,
PixelSpacing 0.8 mm rows / 0.6 mm columns, slices 2.0 mm apart, InstanceNumber running against
z, RescaleSlope 2 / Intercept -1024, a stored value unique to each voxel and not monotonic
along any axis) is loaded whole in the browser. The coronal and sagittal planes through a point
equal, pixel by pixel, the modality values computed here; setPoint moves the planes, a click and
the wheel move them as a user would; the slab MIP is the maximum over the slab; each view's
picture has the physical aspect of its spacings and the right orientation letters. A series
with uneven spacing or sheared slices gets the bilingual refusal, not a picture; another
institution's user gets 404. Screens: docs/screens/mpr-1366.png and mpr-390.png.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from tests.browser import CHROMIUM
from tests.conftest import embedded_settings
from tests.web.test_upload_browser import PASSWORD, LiveApp, login, seed
from tests.web.test_viewer_app import browser  # noqa: F401 (the module's Chromium fixture)

COLS, ROWS, SLICES = 40, 48, 30
ROW_MM, COL_MM, SLICE_MM = 0.8, 0.6, 2.0  # PixelSpacing = [row spacing (vertical), column spacing]
ORIGIN = (-12.0, -19.2, -30.0)
SLOPE, INTERCEPT = 2, -1024
SCREENS = Path(__file__).resolve().parents[2] / "docs" / "screens"

# Unique per voxel (a bijection onto 0..57599, 16 bits stored) and, through the permutations,
# not monotonic along rows or slices: a MIP that took the slab's last plane would be wrong.
_rng = np.random.default_rng(20240611)
ROW_ORDER = _rng.permutation(ROWS)
SLICE_ORDER = _rng.permutation(SLICES)


def stored(k: int) -> np.ndarray:
    """Stored values of slice k (index along +z), shape (rows, cols)."""
    j, i = np.mgrid[0:ROWS, 0:COLS]
    return (i + COLS * ROW_ORDER[j] + COLS * ROWS * SLICE_ORDER[k]).astype(np.uint16)


# The volume as the page should hold it: modality values, indexed [k, j, i].
VOLUME = np.stack([stored(k) for k in range(SLICES)]).astype(np.int64) * SLOPE + INTERCEPT

# A chest phantom for the screens (and the phone): 128 × 128 pixels of 2.6 mm, 60 slices 4 mm apart.
PH_SIZE, PH_PIXEL_MM, PH_SLICES, PH_SLICE_MM = 128, 2.6, 60, 4.0
PH_NODULE = (-60.0, -10.0, 40.0)  # LPS mm: in the right lung, above the middle


def phantom_hu(k: int) -> np.ndarray:
    """HU of phantom slice k: body, two lungs with domes, heart, spine, a liver under the right
    dome and a nodule in the right lung (patient's right = -x = the screen's left)."""
    c = (np.arange(PH_SIZE) - (PH_SIZE - 1) / 2) * PH_PIXEL_MM
    y, x = np.meshgrid(c, c, indexing="ij")
    z = (k - (PH_SLICES - 1) / 2) * PH_SLICE_MM
    hu = np.full((PH_SIZE, PH_SIZE), -1000.0)
    hu[(x / 150) ** 2 + (y / 100) ** 2 <= 1] = 30
    for side in (-1, 1):
        dome = -40 + 0.002 * (x - side * 65) ** 2 + (10 if side < 0 else 25)
        lung = ((x - side * 65) / 50) ** 2 + ((y + 5) / 70) ** 2 <= 1 - (max(0.0, z - 60) / 70) ** 2
        hu[lung & (z > dome)] = -850
    if -20 < z < 50:
        hu[((x - 20) / 45) ** 2 + ((y + 25) / 40) ** 2 <= 1 - ((z - 15) / 36) ** 2] = 45
    hu[(x ** 2 + (y - 70) ** 2) <= 16 ** 2] = 700
    hu[(x < 0) & (z < -35) & ((x + 50) ** 2 / 90 ** 2 + y ** 2 / 75 ** 2 <= 1)] = 60
    nx, ny, nz = PH_NODULE
    hu[(x - nx) ** 2 + (y - ny) ** 2 + (z - nz) ** 2 <= 9 ** 2] = 40
    return hu


pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")


def ct_slice(*, study: str, series: str, number: int, position, pixels: np.ndarray,
             description: str = "胸部 MPR synthetic", spacing=(ROW_MM, COL_MM), rescale=(SLOPE, INTERCEPT)) -> bytes:
    rows, cols = pixels.shape
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID, ds.PatientSex = "王^芳", "MPR001", "F"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20260301", "101500", "MPR1"
    ds.Modality, ds.SeriesNumber, ds.SeriesDescription = "CT", 1, description
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.SliceThickness = 5.0  # deliberately not the spacing: the page must use the positions
    ds.PixelSpacing = list(spacing)
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = *rescale, "HU"
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    from imaging.service import Ingestor
    from storage.models import Institution
    from storage.runtime import bootstrap

    settings = embedded_settings(tmp_path_factory.mktemp("mpr"))
    seed(settings, {"li": ("radiographer", "TOWN"), "zhao": ("specialist", "OTHER")})
    runtime = bootstrap(settings, component="test")
    with runtime.db.scope(readonly=True) as session:
        town = session.query(Institution).filter_by(code="TOWN").one().id
    study, ct, uneven, sheared, phantom = (generate_uid() for _ in range(5))
    ingestor = Ingestor(runtime.db, runtime.store)

    def ingest(data: bytes) -> None:
        ingestor.ingest(data, institution_id=town, source="test")

    for k in range(SLICES):  # InstanceNumber runs against z: sorting must follow the positions
        ingest(ct_slice(study=study, series=ct, number=SLICES - k, pixels=stored(k),
                        position=(ORIGIN[0], ORIGIN[1], ORIGIN[2] + SLICE_MM * k)))
    small = np.arange(64, dtype=np.uint16).reshape(8, 8)
    for n, z in enumerate([0.0, 2.0, 4.0, 7.0, 9.0]):
        ingest(ct_slice(study=study, series=uneven, number=n + 1, pixels=small, position=(0.0, 0.0, z),
                        description="uneven"))
    for n in range(5):  # a gantry tilt: the origin slides along y as z advances
        ingest(ct_slice(study=study, series=sheared, number=n + 1, pixels=small, position=(0.0, 0.9 * n, 2.0 * n),
                        description="tilted"))
    half = (PH_SIZE - 1) / 2 * PH_PIXEL_MM
    for k in range(PH_SLICES):
        ingest(ct_slice(study=study, series=phantom, number=k + 1, pixels=(phantom_hu(k) + 1024).astype(np.uint16),
                        position=(-half, -half, (k - (PH_SLICES - 1) / 2) * PH_SLICE_MM), description="胸部 phantom",
                        spacing=(PH_PIXEL_MM, PH_PIXEL_MM), rescale=(1, -1024)))
    ingestor.close()
    runtime.db.dispose()
    with LiveApp(settings) as app:
        app.study, app.ct, app.uneven, app.sheared, app.phantom = study, ct, uneven, sheared, phantom
        yield app


class Mpr:
    """One logged-in page on the MPR page, with page errors and failed requests recorded."""

    def __init__(self, browser, live, username="li", **context):
        self.live = live
        self.context = browser.new_context(**context)
        self.page = self.context.new_page()
        self.page.set_default_timeout(20000)
        self.errors: list[str] = []
        self.failed: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("response", lambda r: r.status >= 400 and self.failed.append(f"{r.status} {r.url}"))
        login(self.page, live.url, username, "/")

    def open(self, series: str) -> dict:
        self.response = self.page.goto(f"{self.live.url}/viewer/{self.live.study}/mpr?series={series}")
        assert self.response.status == 200, self.response.status
        try:
            return self.page.evaluate("() => window.lancangMpr.ready")
        except Exception as exc:
            raise AssertionError(f"the MPR page did not get ready: {exc}\n{self.why()}") from None

    def why(self) -> str:
        return json.dumps({"page_errors": self.errors, "failed": self.failed[:10]}, ensure_ascii=False)

    def state(self) -> dict:
        return self.page.evaluate("() => window.lancangMpr.state()")

    def pixels(self, view: str) -> np.ndarray:
        got = self.page.evaluate("(v) => window.lancangMpr.pixels(v)", view)
        return np.array(got["data"], dtype=np.float64).reshape(got["height"], got["width"])

    def wait(self, condition, what: str, timeout_s: float = 8.0) -> dict:
        """Poll state() from Python (the CSP blocks wait_for_function's string evaluation)."""
        for _ in range(int(timeout_s / 0.05)):
            st = self.state()
            if condition(st):
                return st
            self.page.wait_for_timeout(50)
        raise AssertionError(f"never {what}: {st}\n{self.why()}")

    def shows(self, selector: str, text: str) -> None:
        """Wait for an element's text (whitespace folded): the page draws a frame after state()."""
        locator = self.page.locator(selector)
        self.wait(lambda s: " ".join(locator.inner_text().split()) == text, f"shown {text!r} in {selector}")

    def client_xy(self, view: str, x: float, y: float) -> tuple[float, float]:
        """Page coordinates of picture position (x, y) (in voxels) of a view."""
        box = self.page.locator(f'[data-view="{view}"] canvas').bounding_box()
        v = self.state()["views"][view]
        return box["x"] + v["x"] + x * v["w"] / v["width"], box["y"] + v["y"] + y * v["h"] / v["height"]


def expected(view: str, point, slab_mm: float = 0.0) -> np.ndarray:
    """The plane as the page must display it: axial as acquired; coronal (j fixed) and sagittal
    (i fixed) with the head (+z) at the top, patient's right on the left / anterior on the left."""
    i, j, k = point

    def span(centre, spacing, size):
        half = int(np.floor(slab_mm / 2 / spacing + 1e-6)) if slab_mm > 0 else 0
        return slice(max(0, centre - half), min(size - 1, centre + half) + 1)

    if view == "axial":
        return VOLUME[span(k, SLICE_MM, SLICES)].max(axis=0)
    if view == "coronal":
        return VOLUME[:, span(j, ROW_MM, ROWS), :].max(axis=1)[::-1]
    return VOLUME[:, :, span(i, COL_MM, COLS)].max(axis=2)[::-1]


def check_planes(m: Mpr, point, slab_mm: float = 0.0) -> None:
    for view in ("axial", "coronal", "sagittal"):
        got, want = m.pixels(view), expected(view, point, slab_mm)
        assert got.shape == want.shape, (view, got.shape, want.shape)
        wrong = np.argwhere(got != want)
        assert not len(wrong), f"{view} at {point} slab {slab_mm}: {len(wrong)} pixels differ, first {wrong[:3].tolist()}"


def test_mpr_reformats_the_volume_exactly(live, browser):
    m = Mpr(browser, live, viewport={"width": 1366, "height": 768})
    page = m.page
    st = m.open(live.ct)
    assert st["status"] == "ready", (st, m.why())
    assert st["dims"] == [COLS, ROWS, SLICES] and st["spacing"] == pytest.approx([COL_MM, ROW_MM, SLICE_MM]), st
    assert st["point"] == [19, 23, 14] and st["loaded"] == st["total"] == SLICES, st
    assert (st["windowCenter"], st["windowWidth"]) == (40, 400), st
    assert page.locator("[data-role=progress]").is_hidden()
    assert page.locator("[data-role=progress-text]").inner_text() == f"加载中 {SLICES}/{SLICES}"
    frames = [f for f in m.failed if "/frames/" in f]
    assert not frames, m.why()

    check_planes(m, [19, 23, 14])
    for point in ([7, 11, 13], [39, 0, 0], [0, 47, 29]):
        st = page.evaluate("(p) => window.lancangMpr.setPoint(p)", point)
        assert st["point"] == point, st
        check_planes(m, point)
    # Out of range asks are clamped, not wrapped.
    assert page.evaluate("() => window.lancangMpr.setPoint([99, -4, 12.6])")["point"] == [39, 0, 13]

    # Thick-slab MIP: 5 mm is ±1 slice (2 mm), ±3 rows (0.8 mm), ±4 columns (0.6 mm), clipped at the edges.
    for point in ([20, 30, 15], [2, 46, 1]):
        page.evaluate("(p) => window.lancangMpr.setPoint(p)", point)
        st = page.evaluate("() => window.lancangMpr.setSlab(5)")
        assert st["slab"] == 5 and st["views"]["coronal"]["slabPlanes"] == 7, st
        check_planes(m, point, 5.0)
    assert page.locator("[data-role=slab]").input_value() == "5"
    page.fill("[data-role=slab]", "0")
    page.locator("[data-role=slab]").dispatch_event("change")
    assert m.wait(lambda s: s["slab"] == 0, "thin again")["views"]["axial"]["slabPlanes"] == 1
    check_planes(m, [2, 46, 1])

    # Each picture has the physical aspect of its pixels: columns × rows, columns × slices, rows × slices.
    views = m.wait(lambda s: s["drawn"] > 0, "drawn")["views"]
    for view, (width_mm, height_mm) in {"axial": (COLS * COL_MM, ROWS * ROW_MM),
                                        "coronal": (COLS * COL_MM, SLICES * SLICE_MM),
                                        "sagittal": (ROWS * ROW_MM, SLICES * SLICE_MM)}.items():
        v = views[view]
        assert v["w"] / v["h"] == pytest.approx(width_mm / height_mm, rel=0.02), (view, v)
        assert v["w"] > 200 and v["h"] > 200, (view, v)  # three useful views at 1366×768
    letters = {view: {side: page.locator(f'[data-view="{view}"] [data-part="or-{side}"]').inner_text()
                      for side in ("top", "right", "bottom", "left")} for view in views}
    assert letters == {"axial": {"top": "A", "right": "L", "bottom": "P", "left": "R"},
                       "coronal": {"top": "S", "right": "L", "bottom": "I", "left": "R"},
                       "sagittal": {"top": "S", "right": "P", "bottom": "I", "left": "A"}}, letters
    labels = [page.locator(f'[data-view="{v}"] [data-part="name"]').inner_text() for v in views]
    assert ["".join(x.split()) for x in labels] == ["轴位Axial", "冠状位Coronal", "矢状位Sagittal"], labels

    # A click in the coronal view sets column and slice (head at the top), keeps the row.
    page.evaluate("() => window.lancangMpr.setPoint([5, 17, 3])")
    page.mouse.click(*m.client_xy("coronal", 30.5, 4.5))
    st = m.wait(lambda s: s["point"] != [5, 17, 3], "moved by the click")
    assert st["point"] == [30, 17, SLICES - 1 - 4] and st["active"] == "coronal", st
    check_planes(m, st["point"])
    # A drag in the sagittal view moves row and slice with the pointer.
    page.mouse.move(*m.client_xy("sagittal", 10.5, 10.5))
    page.mouse.down()
    page.mouse.move(*m.client_xy("sagittal", 40.5, 20.5), steps=4)
    page.mouse.up()
    st = m.wait(lambda s: s["point"] == [30, 40, SLICES - 1 - 20], "dragged in the sagittal view")
    # The wheel and the arrow keys scroll the plane of the view under the pointer / in focus.
    page.mouse.move(*m.client_xy("axial", 20, 20))
    page.mouse.wheel(0, 100)
    st = m.wait(lambda s: s["point"][2] == SLICES - 1 - 20 + 1, "scrolled the axial plane")
    assert st["point"][:2] == [30, 40] and st["active"] == "axial", st
    page.locator('[data-view="sagittal"] canvas').focus()
    page.keyboard.press("ArrowUp")
    m.wait(lambda s: s["point"][0] == 29, "stepped the sagittal plane")
    m.shows('[data-view="sagittal"] [data-part="position"]', f"位置 Pos {ORIGIN[0] + 29 * COL_MM:.1f} mm 30/40")

    # Window/level: the right button drags it in any view; presets as in the viewer.
    page.mouse.move(*m.client_xy("coronal", 20, 15))
    page.mouse.down(button="right")
    page.mouse.move(*m.client_xy("coronal", 20, 15), steps=1)
    box = page.locator('[data-view="coronal"] canvas').bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2 + 90, box["y"] + box["height"] / 2 + 60, steps=5)
    page.mouse.up(button="right")
    st = m.wait(lambda s: s["windowWidth"] != 400, "changed the window")
    assert st["windowWidth"] > 400 and st["point"][0] == 29, st
    page.select_option("[data-role=preset]", "lung")
    st = m.wait(lambda s: s["windowWidth"] == 1500, "applied the lung preset")
    assert st["windowCenter"] == -600
    page.select_option("[data-role=preset]", "mediastinum")
    m.wait(lambda s: s["windowWidth"] == 350, "applied the mediastinum preset")
    assert page.locator("[data-role=back]").get_attribute("href") == f"/studies/{live.study}/view"
    assert not m.errors and not m.failed, m.why()

    # The screen: the chest phantom through its nodule, lung window.
    st = m.open(live.phantom)
    assert st["status"] == "ready" and st["dims"] == [PH_SIZE, PH_SIZE, PH_SLICES], (st, m.why())
    i, j, k = phantom_index(PH_NODULE)
    page.evaluate("(p) => window.lancangMpr.setPoint(p)", [i, j, k])
    assert m.pixels("axial")[j, i] == 40 and m.pixels("sagittal")[PH_SLICES - 1 - k, j] == 40  # the nodule, in HU
    page.select_option("[data-role=preset]", "lung")
    m.wait(lambda s: s["windowWidth"] == 1500, "applied the lung preset")
    page.wait_for_timeout(150)
    SCREENS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENS / "mpr-1366.png"))
    assert not m.errors and not m.failed, m.why()
    m.context.close()


def phantom_index(mm) -> list[int]:
    """The voxel index of a phantom position (LPS mm)."""
    centre = [(PH_SIZE - 1) / 2, (PH_SIZE - 1) / 2, (PH_SLICES - 1) / 2]
    return [round(c + v / s) for c, v, s in zip(centre, mm, (PH_PIXEL_MM, PH_PIXEL_MM, PH_SLICE_MM))]


def test_mpr_on_a_phone(live, browser):
    m = Mpr(browser, live, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
            device_scale_factor=2)
    page = m.page
    st = m.open(live.phantom)
    assert st["status"] == "ready", (st, m.why())
    assert page.locator(".mpr-tabs").is_visible()
    assert page.locator('[data-view="axial"]').is_visible()
    assert page.locator('[data-view="coronal"]').is_hidden() and page.locator('[data-view="sagittal"]').is_hidden()
    page.locator('[data-tab="coronal"]').tap()
    st = m.wait(lambda s: s["active"] == "coronal", "switched to the coronal tab")
    assert page.locator('[data-view="coronal"]').is_visible() and page.locator('[data-view="axial"]').is_hidden()
    v = m.wait(lambda s: s["views"]["coronal"]["w"] > 100, "drew the coronal view")["views"]["coronal"]
    assert v["w"] / v["h"] == pytest.approx(PH_SIZE * PH_PIXEL_MM / (PH_SLICES * PH_SLICE_MM), rel=0.02), v
    assert v["w"] > 330, v  # one large view
    nodule = phantom_index(PH_NODULE)
    page.tap('[data-view="coronal"] canvas', position={"x": v["x"] + (nodule[0] + 0.5) * v["w"] / v["width"],
                                                        "y": v["y"] + (PH_SLICES - 0.5 - nodule[2]) * v["h"] / v["height"]})
    st = m.wait(lambda s: s["point"][0] == nodule[0], "moved by a tap")
    assert st["point"] == [nodule[0], (PH_SIZE - 1) // 2, nodule[2]], st
    # No wheel on a phone: the buttons and the slider page the active view's plane.
    page.locator('[data-action="next"]').tap()
    st = m.wait(lambda s: s["point"][1] == (PH_SIZE - 1) // 2 + 1, "paged the coronal plane")
    m.shows("[data-role=counter]", f"冠状位 {(PH_SIZE - 1) // 2 + 2}/{PH_SIZE}")
    page.locator("[data-role=slider]").fill(str(nodule[1]))
    m.wait(lambda s: s["point"] == nodule, "moved the coronal plane through the nodule")
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways ({width} px)"
    page.wait_for_timeout(150)
    SCREENS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENS / "mpr-390.png"))
    assert not m.errors and not m.failed, m.why()
    m.context.close()


def test_mpr_refuses_a_series_that_is_not_a_regular_grid(live, browser):
    m = Mpr(browser, live, viewport={"width": 1366, "height": 768})
    st = m.open(live.uneven)
    assert st["status"] == "refused" and st["code"] == "spacing", st
    message = m.page.locator("[data-role=message]")
    assert message.is_visible()
    text = " ".join(message.inner_text().split())
    assert "该序列层间距不一致，无法重建 MPR" in text and "Slice spacing is not uniform: MPR is not available" in text, text
    assert m.page.locator('[data-view="axial"]').is_hidden()
    assert not [f for f in m.failed if "/frames/" in f] and st["loaded"] == 0, st  # no pixels fetched
    st = m.open(live.sheared)
    assert st["status"] == "refused" and st["code"] == "tilt", st
    assert "gantry tilt" in m.page.locator("[data-role=message]").inner_text()
    assert not m.errors, m.why()
    m.context.close()


def test_mpr_page_is_for_those_who_may_see_the_study(live, browser):
    m = Mpr(browser, live, username="zhao")
    answer = m.page.goto(f"{live.url}/viewer/{live.study}/mpr?series={live.ct}")
    assert answer.status == 404
    m.context.close()
    m = Mpr(browser, live, username="li")
    answer = m.page.goto(f"{live.url}/viewer/{live.study}/mpr?series={generate_uid()}")
    assert answer.status == 404  # a series of another study
    m.context.close()
    # Signed out: the login page, then back to the same series.
    context = browser.new_context()
    page = context.new_page()
    target = f"/viewer/{live.study}/mpr?series={live.ct}"
    page.goto(live.url + target)
    assert "/login?next=" in page.url
    page.fill("input[name=username]", "li")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(live.url + target)
    assert page.evaluate("() => window.lancangMpr.ready")["series"] == live.ct
    context.close()
