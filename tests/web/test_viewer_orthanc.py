"""The diagnostic viewer in a real Chromium against a real Orthanc DICOMweb server.

Orthanc binds 0.0.0.0, so the whole run (Orthanc, the page server, Chromium) happens in a
private network namespace: the pytest test re-executes this file with ``--inner`` under
``unshare -n`` and reads the JSON it writes, one entry per check. Screenshots land in
/tmp/viewer-*.png. Run by hand: ``python tests/web/test_viewer_orthanc.py`` (prints the JSON).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import pytest

# Spelled here, not imported from tests/browser.py: this file also runs as a script (--inner,
# in its own network namespace) where the `tests` package is not importable.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

HERE = Path(__file__).resolve().parent

CHECKS = [
    "desktop.ready", "desktop.sorted_by_position", "desktop.strip_thumbnails", "desktop.wheel", "desktop.keys",
    "desktop.slider", "desktop.slice_content", "desktop.wl_drag", "desktop.presets", "desktop.measure_mm",
    "desktop.zoom_pan", "desktop.apply", "desktop.statechange", "desktop.mono1_inverted", "desktop.imager_spacing", "desktop.color",
    "desktop.ybr_jpeg_color", "desktop.compressed_same_as_raw", "desktop.multiframe_cine", "desktop.px_without_spacing",
    "phone.layout", "phone.swipe", "phone.touch_wl", "phone.pinch", "phone.series_tap",
    "fallback.rendered", "fallback.wl_refetch", "error.banner", "error.http_banner", "units.parsers_and_pixels",
]


# ---- outer: pytest ------------------------------------------------------------------------

def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return "chromium not installed"
    if not shutil.which("Orthanc"):
        return "Orthanc not installed"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright not installed"
    sys.path.insert(0, str(HERE))
    from viewer_harness import dicomweb_plugin, in_private_netns
    try:
        dicomweb_plugin()
    except FileNotFoundError as exc:
        return str(exc)
    if not in_private_netns() and (not shutil.which("unshare") or os.geteuid() != 0):
        return "needs root for unshare -n (Orthanc cannot bind to loopback only)"
    return None


@pytest.fixture(scope="module")
def results():
    reason = _missing()
    if reason:
        pytest.skip(reason)
    from viewer_harness import in_private_netns
    out = Path(tempfile.mkdtemp(prefix="viewer-test-")) / "results.json"
    inner = [sys.executable, str(Path(__file__).resolve()), "--inner", str(out)]
    if in_private_netns():
        cmd = inner
    else:
        cmd = ["unshare", "-n", "bash", "-c", 'ip link set lo up && exec "$@"', "bash", *inner]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    if not out.exists():
        pytest.fail(f"viewer run failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    data = json.loads(out.read_text())
    shutil.rmtree(out.parent, ignore_errors=True)
    return data


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", CHECKS)
def test_viewer(results, name):
    assert name in results, f"check {name} did not run: {results.get('_crash')}"
    assert results[name]["ok"], json.dumps(results[name], ensure_ascii=False, indent=1)


# ---- inner: the browser session --------------------------------------------------------------

INIT_JS = """
window.__rendered = []; window.__changes = []; window.__pointer = [];
for (const t of ['pointerdown', 'pointerup', 'pointercancel'])
  document.addEventListener(t, e => window.__pointer.push(`${t}:${e.pointerId}:${e.pointerType}:${e.target.tagName}`), true);
document.addEventListener('viewer:rendered', e => window.__rendered.push(e.detail));
document.addEventListener('viewer:statechange', e => window.__changes.push(e.detail));
"""

# Statistics of the canvas inside an image-space rectangle (defaults to the whole image).
STATS_JS = """
([x0, y0, x1, y1]) => {
  const v = window.lancangViewer, c = document.querySelector('[data-role=canvas]');
  const r = c.getBoundingClientRect(), sx = c.width / r.width, sy = c.height / r.height;
  const a = v.imageToClient(x0, y0), b = v.imageToClient(x1, y1);
  const left = Math.max(0, Math.ceil((a.x - r.left) * sx)), top = Math.max(0, Math.ceil((a.y - r.top) * sy));
  const w = Math.min(c.width, Math.floor((b.x - r.left) * sx)) - left;
  const h = Math.min(c.height, Math.floor((b.y - r.top) * sy)) - top;
  const d = c.getContext('2d').getImageData(left, top, Math.max(1, w), Math.max(1, h)).data;
  let sum = 0, colour = 0, hash = 0;
  for (let i = 0; i < d.length; i += 4) {
    sum += d[i];
    if (Math.abs(d[i] - d[i + 1]) > 24 || Math.abs(d[i + 1] - d[i + 2]) > 24) colour++;
    hash = (hash * 31 + d[i] * 7 + d[i + 1] * 3 + d[i + 2]) % 1000000007;
  }
  const n = d.length / 4;
  return {mean: sum / n, colourFraction: colour / n, hash, n};
}
"""

PIXEL_JS = """
([x, y]) => {
  const v = window.lancangViewer, c = document.querySelector('[data-role=canvas]');
  const r = c.getBoundingClientRect(), p = v.imageToClient(x, y);
  const d = c.getContext('2d').getImageData(Math.round((p.x - r.left) * c.width / r.width),
                                            Math.round((p.y - r.top) * c.height / r.height), 1, 1).data;
  return [d[0], d[1], d[2]];
}
"""


class Session:
    def __init__(self, page, hx, check):
        self.page = page
        self.hx = hx
        self.check = check

    def state(self):
        return self.page.evaluate("() => window.lancangViewer.state()")

    def wait_rendered(self, cond: str, timeout=8000):
        """Wait until the last viewer:rendered detail `s` satisfies the JS expression `cond`."""
        self.page.wait_for_function(
            # Spliced in, not eval'd in the page: the CSP (script-src 'self') refuses new Function.
            "() => { const a = window.__rendered; const s = a[a.length - 1];"
            f" return s && ({cond}); }}", timeout=timeout)
        return self.page.evaluate("() => window.__rendered[window.__rendered.length - 1]")

    def image_stats(self, rows, cols, margin=1):
        return self.page.evaluate(STATS_JS, [margin, margin, cols - margin, rows - margin])

    def pixel(self, x, y):
        return self.page.evaluate(PIXEL_JS, [x, y])

    def client(self, x, y):
        p = self.page.evaluate("([x, y]) => window.lancangViewer.imageToClient(x, y)", [x, y])
        return p["x"], p["y"]

    def canvas_box(self):
        return self.page.locator("[data-role=canvas]").bounding_box()

    def select_series(self, uid):
        item = self.page.locator(f'.lcv-series[data-series="{uid}"]')
        item.scroll_into_view_if_needed()
        item.click()
        return self.wait_rendered(f"s.seriesUid === {json.dumps(uid)}")

    def proxied(self):
        return self.page.evaluate("() => fetch('/__log').then(r => r.json())")


def run_checks(s: Session, name: str, fn):
    try:
        fn(s)
    except Exception as exc:  # a crash fails this scenario's remaining checks, not the run
        try:
            context = s.page.evaluate("() => ({pointer: window.__pointer.slice(-12), state: window.lancangViewer.state()})")
        except Exception:
            context = None
        s.check(f"{name}.crash", False, error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc()[-1500:],
                context=context)
        try:
            s.page.screenshot(path=f"/tmp/viewer-{name}-crash.png")
        except Exception:
            pass


def desktop(s: Session):
    from viewer_harness import CT_PIXEL_SPACING, CT_ROWS, CT_COLS, CT_SLICES, STUDY_UID
    page, hx, check = s.page, s.hx, s.check
    ct = hx.by_key("ct")
    page.goto(f"{hx.url}/view/{STUDY_UID}")
    st = page.evaluate("() => window.lancangViewer.ready")
    check("desktop.ready", st["seriesUid"] == ct.uid and st["count"] == CT_SLICES and st["index"] == 0
          and st["windowCenter"] == 40 and st["windowWidth"] == 400, state=st)
    # InstanceNumber 1 is the most cranial slice; sorting by position must keep it first.
    check("desktop.sorted_by_position", st["sopInstanceUid"] == ct.extra["sops"][0], got=st["sopInstanceUid"])

    n_series = len(hx.series)
    page.wait_for_function(
        "(n) => [...document.querySelectorAll('.lcv-thumb img')].filter(i => i.complete && i.naturalWidth > 0).length === n",
        arg=n_series, timeout=15000)
    labels = page.locator(".lcv-series").all_inner_texts()
    check("desktop.strip_thumbnails", len(labels) == n_series and "胸部" in labels[0], labels=labels)

    box = s.canvas_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)
    page.mouse.wheel(0, 100)
    a = s.wait_rendered("s.index === 1")["index"]
    for _ in range(3):
        page.mouse.wheel(0, 100)
    b = s.wait_rendered("s.index === 4")["index"]
    page.mouse.wheel(0, -100)
    c = s.wait_rendered("s.index === 3")["index"]
    check("desktop.wheel", (a, b, c) == (1, 4, 3), got=[a, b, c])

    page.locator("[data-role=canvas]").focus()
    page.keyboard.press("ArrowDown")
    k1 = s.wait_rendered("s.index === 4")["index"]
    page.keyboard.press("PageDown")
    k2 = s.wait_rendered("s.index === 8")["index"]
    page.keyboard.press("End")
    k3 = s.wait_rendered(f"s.index === {CT_SLICES - 1}")["index"]
    page.keyboard.press("Home")
    k4 = s.wait_rendered("s.index === 0")["index"]
    page.keyboard.press("PageUp")  # at the start: stays
    page.wait_for_timeout(150)
    check("desktop.keys", (k1, k2, k3, k4) == (4, 8, CT_SLICES - 1, 0) and s.state()["index"] == 0,
          got=[k1, k2, k3, k4])

    page.locator("[data-role=slider]").fill("20")
    sl = s.wait_rendered("s.index === 20")
    check("desktop.slider", sl["index"] == 20 and sl["sopInstanceUid"] == ct.extra["sops"][20], got=sl["index"])

    # The bright marker's column encodes the slice: it must sit where slice 20 put it.
    mx20 = 20 + (20 * 5) % (CT_COLS - 40) + 4
    mx0 = 20 + 4
    on, off = s.pixel(mx20, 14), s.pixel(mx0, 14)
    check("desktop.slice_content", on[0] > 240 and off[0] < 30, marker_slice20=on, marker_slice0=off)

    before = s.image_stats(CT_ROWS, CT_COLS)
    page.mouse.move(cx, cy)
    page.mouse.down(button="right")
    page.mouse.move(cx + 120, cy + 60, steps=6)
    page.mouse.up(button="right")
    wl = s.wait_rendered("s.windowWidth !== 400 && s.windowCenter !== 40")
    page.wait_for_timeout(100)
    after = s.image_stats(CT_ROWS, CT_COLS)
    check("desktop.wl_drag", wl["windowWidth"] > 400 and wl["windowCenter"] > 40 and before["hash"] != after["hash"],
          state=[wl["windowCenter"], wl["windowWidth"]], before=before, after=after)

    presets = {}
    for name, (w, c) in {"lung": (1500, -600), "mediastinum": (350, 50), "bone": (2000, 500),
                         "brain": (80, 40), "abdomen": (400, 50)}.items():
        page.select_option("[data-role=preset]", name)
        got = s.wait_rendered(f"s.windowWidth === {w} && s.windowCenter === {c}")
        presets[name] = [got["windowWidth"], got["windowCenter"]]
    page.select_option("[data-role=preset]", "lung")
    s.wait_rendered("s.windowWidth === 1500")
    lung_mean = s.image_stats(CT_ROWS, CT_COLS)["mean"]
    page.select_option("[data-role=preset]", "default")
    d = s.wait_rendered("s.windowWidth === 400 && s.windowCenter === 40")
    check("desktop.presets", len(presets) == 5 and d["windowWidth"] == 400 and lung_mean > before["mean"],
          presets=presets, lung_mean=lung_mean, default_mean=before["mean"])

    # Length measurement: PixelSpacing is (0.5 row, 0.8 column) mm.
    page.locator('[data-tool="measure"]').click()
    rs, cs = CT_PIXEL_SPACING
    results = []
    for (x0, y0, x1, y1) in [(40, 100, 140, 100), (200, 40, 200, 140), (30, 30, 90, 110)]:
        p0, p1 = s.client(x0, y0), s.client(x1, y1)
        page.mouse.move(*p0)
        page.mouse.down()
        page.mouse.move(*p1, steps=5)
        page.mouse.up()
        m = s.wait_rendered(f"s.measurements.length === {len(results) + 1}")["measurements"][-1]
        expect = math.hypot((x1 - x0) * cs, (y1 - y0) * rs)
        (px0, py0), (px1, py1) = m["points"]
        exact = math.hypot((px1 - px0) * cs, (py1 - py0) * rs)
        results.append({"mm": m["mm"], "expected": round(expect, 2), "from_points": round(exact, 2), "unit": m["unit"]})
    ok = all(abs(r["mm"] - r["expected"]) / r["expected"] < 0.01 and abs(r["mm"] - r["from_points"]) < 0.02
             and r["unit"] == "mm" for r in results)
    page.screenshot(path="/tmp/viewer-desktop.png")
    check("desktop.measure_mm", ok, measurements=results)

    page.mouse.move(cx, cy)
    page.keyboard.down("Control")
    page.mouse.wheel(0, -300)
    page.keyboard.up("Control")
    z = s.wait_rendered("s.zoom > 1.2")
    page.locator('[data-tool="pan"]').click()
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx + 80, cy + 40, steps=4)
    page.mouse.up()
    p = s.wait_rendered(f"s.pan.x !== {z['pan']['x']}")
    scale = page.evaluate("""() => { const v = window.lancangViewer, a = v.imageToClient(0, 0), b = v.imageToClient(100, 0);
                                     return (b.x - a.x) / 100; }""")
    moved = (p["pan"]["x"] - z["pan"]["x"]) * scale, (p["pan"]["y"] - z["pan"]["y"]) * scale
    check("desktop.zoom_pan", z["zoom"] > 1.2 and abs(moved[0] - 80) < 2 and abs(moved[1] - 40) < 2,
          zoom=z["zoom"], pan_screen_px=moved)

    page.wait_for_timeout(250)  # let the trailing (throttled) statechange of the pan go out
    n_changes = page.evaluate("() => window.__changes.length")
    applied = page.evaluate("""() => window.lancangViewer.apply({index: 5, windowCenter: 40, windowWidth: 80,
                                       zoom: 1, pan: {x: 0, y: 0}})""")
    page.wait_for_timeout(300)
    after_changes = page.evaluate("() => window.__changes.length")
    st = s.state()
    check("desktop.apply", applied["index"] == 5 and st["windowWidth"] == 80 and st["windowCenter"] == 40
          and st["zoom"] == 1 and st["pan"] == {"x": 0, "y": 0} and after_changes == n_changes
          and json.loads(json.dumps(st)) == st, applied=applied, state=st, changes=[n_changes, after_changes])

    page.locator("[data-role=canvas]").focus()
    page.keyboard.press("ArrowDown")
    page.wait_for_function("(n) => window.__changes.length > n", arg=after_changes, timeout=3000)
    last = page.evaluate("() => window.__changes[window.__changes.length - 1]")
    check("desktop.statechange", n_changes > 0 and last["index"] == 6 and len(last["measurements"]) == 3,
          changes=n_changes, last_index=last["index"])

    # MONOCHROME1: stored 100 (window 500/1000 -> dark grey level) must show white, 900 black.
    m1 = hx.by_key("mono1")
    st = s.select_series(m1.uid)
    bg, sq = s.pixel(10, 10), s.pixel(64, 64)
    stats = s.image_stats(128, 128)
    page.screenshot(path="/tmp/viewer-mono1.png")
    check("desktop.mono1_inverted", bg[0] > 200 and sq[0] < 60 and stats["mean"] > 170,
          background=bg, square=sq, mean=stats["mean"], state=[st["windowCenter"], st["windowWidth"]])

    # ImagerPixelSpacing (0.2 mm) only: millimetres at the detector, marked as approximate.
    page.locator('[data-tool="measure"]').click()
    p0, p1 = s.client(20, 20), s.client(20, 120)
    page.mouse.move(*p0)
    page.mouse.down()
    page.mouse.move(*p1, steps=3)
    page.mouse.up()
    m = s.wait_rendered("s.measurements.length === 4")["measurements"][-1]
    check("desktop.imager_spacing", m["unit"] == "mm*" and abs(m["mm"] - 20) < 0.2, measurement=m)

    us = hx.by_key("us_rgb")
    st = s.select_series(us.uid)
    page.wait_for_timeout(100)
    cs_ = s.image_stats(480, 640)
    wl_disabled = page.locator('[data-tool="wl"]').is_disabled()
    page.screenshot(path="/tmp/viewer-color.png")
    check("desktop.color", st["windowCenter"] is None and wl_disabled and cs_["colourFraction"] > 0.005 and cs_["mean"] > 5,
          stats=cs_, wl_disabled=wl_disabled)

    yb = hx.by_key("ybr_jpeg")
    s.select_series(yb.uid)
    page.wait_for_timeout(100)
    ys = s.image_stats(100, 100, margin=3)
    check("desktop.ybr_jpeg_color", ys["colourFraction"] > 0.3, stats=ys)

    # JPEG-LS lossless must look exactly like the uncompressed original, decoded from raw frames.
    mr, jls = hx.by_key("mr"), hx.by_key("mr_jls")
    s.select_series(mr.uid)
    page.wait_for_timeout(100)
    raw = s.image_stats(64, 64)
    s.select_series(jls.uid)
    page.wait_for_timeout(100)
    comp = s.image_stats(64, 64)
    log = s.proxied()
    jls_frames = [line for line in log if f"/series/{jls.uid}/instances/" in line and "/frames/" in line]
    overlay = page.locator("[data-role=ov-bl]").inner_text()
    # Raw frames (the viewer may also list JPEG-LS first; the 128-pixel preview is the only
    # /rendered request allowed, and it is replaced by the decoded frame).
    frames = [line for line in jls_frames if "/rendered" not in line]
    previews = [line for line in jls_frames if "/rendered" in line]
    check("desktop.compressed_same_as_raw", raw["hash"] == comp["hash"] and frames
          and all("octet-stream" in line for line in frames) and all("viewport=128,128" in line for line in previews)
          and "server-rendered" not in overlay, raw=raw, compressed=comp, requests=jls_frames[:3])

    em = hx.by_key("emri")
    st = s.select_series(em.uid)
    cine_visible = page.locator("[data-role=cine]").is_visible()
    page.locator("[data-role=fps]").fill("20")
    page.locator("[data-role=fps]").press("Enter")
    page.locator('[data-action="play"]').click()
    t0 = time.monotonic()
    page.wait_for_function("() => window.lancangViewer.state().index >= 5", timeout=5000)
    played = time.monotonic() - t0
    page.locator('[data-action="play"]').click()
    # state() reports the frame on the canvas: let the one asked for at the pause arrive.
    page.wait_for_function("() => !window.lancangViewer.state().loading", timeout=5000)
    i1 = s.state()["index"]
    page.wait_for_timeout(300)
    i2 = s.state()
    check("desktop.multiframe_cine", st["count"] == 10 and cine_visible and i1 == i2["index"]
          and i2["cine"] == {"playing": False, "fps": 20} and i2["frame"] == i2["index"] + 1,
          count=st["count"], seconds_to_frame5=round(played, 2), paused_at=[i1, i2["index"]])

    # emri has no pixel spacing at all: measurements are in pixels.
    page.locator('[data-tool="measure"]').click()
    p0, p1 = s.client(10, 10), s.client(40, 50)
    page.mouse.move(*p0)
    page.mouse.down()
    page.mouse.move(*p1, steps=3)
    page.mouse.up()
    m = s.wait_rendered("s.measurements.length === 5")["measurements"][-1]
    check("desktop.px_without_spacing", m["unit"] == "px" and m["mm"] is None and abs(m["px"] - 50) < 1, measurement=m)


def touch(cdp, kind, points):
    cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [{"x": x, "y": y} for x, y in points]})


def swipe(cdp, start, end, steps=8):
    touch(cdp, "touchStart", [start])
    for i in range(1, steps + 1):
        t = i / steps
        touch(cdp, "touchMove", [(start[0] + (end[0] - start[0]) * t, start[1] + (end[1] - start[1]) * t)])
    touch(cdp, "touchEnd", [])


def tap_until(page, locator, condition: str, attempts: int = 4):
    """Tap until `condition` holds. Chromium sometimes turns no click out of a tap that follows a
    synthetic swipe closely (the gesture detector still sees a fling); a person is never that fast."""
    for _ in range(attempts):
        page.wait_for_timeout(300)
        locator.tap()
        try:
            page.wait_for_function(f"() => {condition}", timeout=1500)
            return
        except Exception:
            continue
    raise AssertionError(f"tapping {locator} never made {condition} true")


def phone(s: Session):
    from viewer_harness import STUDY_UID
    page, hx, check = s.page, s.hx, s.check
    page.goto(f"{hx.url}/view/{STUDY_UID}")
    st = page.evaluate("() => window.lancangViewer.ready")
    page.wait_for_function("() => document.querySelectorAll('.lcv-thumb img').length > 2", timeout=15000)
    canvas = s.canvas_box()
    strip = page.locator("[data-role=strip]").bounding_box()
    heights = page.evaluate("() => [...document.querySelectorAll('.lcv-toolbar button, .lcv-nav button')]"
                            ".filter(b => b.offsetParent).map(b => b.getBoundingClientRect().height)")
    overflow = page.evaluate("() => document.documentElement.scrollWidth")
    page.screenshot(path="/tmp/viewer-phone.png")
    check("phone.layout", strip["y"] >= canvas["y"] + canvas["height"] and min(heights) >= 40 and overflow <= 391
          and canvas["width"] >= 380 and canvas["height"] >= 300 and st["tool"] == "scroll",
          canvas=canvas, strip=strip, min_button=min(heights), scroll_width=overflow, tool=st["tool"])

    cdp = page.context.new_cdp_session(page)
    cx, cy = canvas["x"] + canvas["width"] / 2, canvas["y"] + canvas["height"] / 2
    swipe(cdp, (cx, cy + 100), (cx, cy - 100))
    try:
        sw = s.wait_rendered("s.index > 0")
    except Exception:
        check("phone.swipe", False, pointer_events=page.evaluate("() => window.__pointer"), state=s.state(),
              box=canvas)
        raise
    swipe(cdp, (cx, cy - 60), (cx, cy + 60))
    back = s.wait_rendered(f"s.index < {sw['index']}")
    check("phone.swipe", sw["index"] >= 5 and back["index"] < sw["index"], forward=sw["index"], back=back["index"])

    tap_until(page, page.locator('[data-tool="wl"]'), "window.lancangViewer.state().tool === 'wl'")
    before = s.image_stats(192, 256)
    swipe(cdp, (cx - 80, cy), (cx + 60, cy + 40))
    wl = s.wait_rendered("s.windowWidth !== 400")
    page.wait_for_timeout(100)
    after = s.image_stats(192, 256)
    check("phone.touch_wl", wl["windowWidth"] > 400 and after["hash"] != before["hash"],
          window=[wl["windowCenter"], wl["windowWidth"]])

    touch(cdp, "touchStart", [(cx - 40, cy), (cx + 40, cy)])
    for i in range(1, 9):
        d = 40 + 10 * i
        touch(cdp, "touchMove", [(cx - d, cy), (cx + d, cy)])
    touch(cdp, "touchEnd", [])
    z = s.wait_rendered("s.zoom > 1.5")
    page.screenshot(path="/tmp/viewer-phone-zoomed.png")
    check("phone.pinch", 2.5 < z["zoom"] < 3.5 and len(z["measurements"]) == 0, zoom=z["zoom"])

    m1 = hx.by_key("mono1")
    item = page.locator(f'.lcv-series[data-series="{m1.uid}"]')
    item.scroll_into_view_if_needed()
    tap_until(page, item, f"window.lancangViewer.state().seriesUid === {json.dumps(m1.uid)}")
    st = s.wait_rendered(f"s.seriesUid === {json.dumps(m1.uid)}")
    check("phone.series_tap", st["seriesUid"] == m1.uid, state=st["seriesUid"])
    page.screenshot(path="/tmp/viewer-phone-mono1.png")


def fallback(s: Session):
    from viewer_harness import CT_ROWS, CT_COLS, STUDY_UID
    page, hx, check = s.page, s.hx, s.check
    page.goto(f"{hx.url}/view406/{STUDY_UID}")
    st = page.evaluate("() => window.lancangViewer.ready")
    overlay = page.locator("[data-role=ov-bl]").inner_text()
    log = s.proxied()
    rendered = [line for line in log if line.startswith("GET /dw406/") and "/frames/" in line and "/rendered" in line]
    refused = [line for line in log if line.startswith("GET /dw406/") and "/frames/" in line and "/rendered" not in line]
    check("fallback.rendered", st["count"] == 40 and "server-rendered" in overlay and rendered and refused,
          overlay=overlay, rendered=rendered[:2], refused=len(refused))

    before = s.image_stats(CT_ROWS, CT_COLS)
    box = s.canvas_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)
    page.mouse.down(button="right")
    page.mouse.move(cx + 150, cy + 80, steps=5)
    page.mouse.up(button="right")
    wl = s.wait_rendered("s.windowWidth !== 400")
    window = f"window={wl['windowCenter']:g},{wl['windowWidth']:g},linear"
    page.wait_for_function("(w) => fetch('/__log').then(r => r.json()).then(l => l.some(x => x.includes(w)))",
                           arg=window, timeout=5000)
    page.wait_for_timeout(400)
    after = s.image_stats(CT_ROWS, CT_COLS)
    page.screenshot(path="/tmp/viewer-fallback.png")
    check("fallback.wl_refetch", after["hash"] != before["hash"], window=window, before=before, after=after)


def errors(s: Session):
    page, hx, check = s.page, s.hx, s.check
    page.goto(f"{hx.url}/view/1.2.3.4.5.6.7")
    ok = page.evaluate("() => window.lancangViewer.ready.then(() => false, () => true)")
    banner = page.locator("[data-role=banner]")
    text = banner.inner_text() if banner.is_visible() else ""
    page.screenshot(path="/tmp/viewer-error.png")
    check("error.banner", ok and "没有" in text and "no images" in text, text=text)

    page.goto(f"{hx.url}/viewbroken/1.2.3.4.5.6.7")
    ok = page.evaluate("() => window.lancangViewer.ready.then(() => false, () => true)")
    text = banner.inner_text() if banner.is_visible() else ""
    check("error.http_banner", ok and "无法加载序列列表" in text and "Could not load the series list" in text
          and "404" in text, text=text)


UNITS_JS = r"""
async () => {
  const dw = await import('/static/viewer/dicomweb.js');
  const im = await import('/static/viewer/imaging.js');
  const enc = (t) => new TextEncoder().encode(t);
  const cat = (...parts) => { const n = parts.reduce((a, p) => a + p.length, 0), out = new Uint8Array(n);
                              let o = 0; for (const p of parts) { out.set(p, o); o += p.length; } return out; };
  const r = {};
  const ct = dw.parseContentType('multipart/related; type="application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"; boundary="a b;c"');
  r.content_type = ct.type === 'multipart/related' && ct.params.boundary === 'a b;c'
    && ct.params.type === 'application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1';
  const payload = new Uint8Array([1, 2, 13, 10, 45, 45, 3]);  // holds CRLF-- but not the boundary
  const body = cat(enc('--a b;c\r\nContent-Type: application/octet-stream\r\n\r\n'), payload,
                   enc('\r\n--a b;c\r\n\r\n'), new Uint8Array([9, 9]), enc('\r\n--a b;c--\r\n'));
  const parts = dw.parseMultipart(body, 'a b;c');
  r.multipart_two_parts = parts.length === 2 && parts[0].body.join() === payload.join()
    && parts[1].body.join() === '9,9' && parts[0].headers['content-type'] === 'application/octet-stream';
  const sniffed = dw.parseMultipart(cat(enc('--xyz\r\n\r\n'), new Uint8Array([7, 8])), undefined);
  r.multipart_sniffed_unclosed = sniffed.length === 1 && sniffed[0].body.join() === '7,8';
  const info = {rows: 1, cols: 3, bitsAllocated: 16, bitsStored: 12, signed: true, slope: 1, intercept: 0,
                photometric: 'MONOCHROME2', voiFunction: 'LINEAR'};
  const raw = new Uint8Array(new Int16Array([0x0fff, 0x07ff, 0xf800 - 0x10000]).buffer);  // 12-bit -1, 2047, -2048
  const odd = new Uint8Array(raw.length + 1); odd.set(raw, 1);                            // unaligned view
  const d = im.decodeGray(odd.subarray(1), info);
  r.sign_extend_12bit = [...d.pixels].join() === '-1,2047,-2048' && d.min === -2048 && d.max === 2047;
  const img = new ImageData(3, 1);
  im.renderGray(d, {...info, photometric: 'MONOCHROME1'}, {center: 0, width: 4096}, img);
  r.mono1_lut = img.data[4] < 5 && img.data[8] > 250;   // 2047 -> black, -2048 -> white
  const lru = new im.LruCache(10); lru.set('a', 1, 4); lru.set('b', 2, 4); lru.get('a'); lru.set('c', 3, 4);
  r.lru = lru.has('a') && !lru.has('b') && lru.has('c') && lru.bytes === 8;
  const inst = (sop, n, z, frames) => ({'00080018': {Value: [sop]}, '00200013': {Value: [n]}, '00280010': {Value: [2]},
    '00280011': {Value: [2]}, '00200032': {Value: [0, 0, z]}, '00200037': {Value: [1, 0, 0, 0, 1, 0]},
    ...(frames ? {'00280008': {Value: [String(frames)]}} : {})});
  const stack = im.buildStack([inst('b', 2, 5), inst('a', 1, 10), inst('c', 3, 0)]);
  r.sort_by_position = stack.map((e) => e.sop).join() === 'a,b,c';
  const mf = im.buildStack([inst('m', 1, 0, 3)]);
  r.multiframe_stack = mf.map((e) => e.key).join() === 'm/1,m/2,m/3';
  r.person_name = dw.personName({'00100010': {Value: [{Alphabetic: 'Wang^Fang', Ideographic: '王^芳'}]}}, '00100010')
    === '王芳 (Wang Fang)';
  return r;
}
"""


def units(s: Session):
    from viewer_harness import STUDY_UID
    s.page.goto(f"{s.hx.url}/view/{STUDY_UID}")
    got = s.page.evaluate(UNITS_JS)
    s.check("units.parsers_and_pixels", all(got.values()), results=got)


def inner(out_path: Path) -> int:
    sys.path.insert(0, str(HERE))
    from playwright.sync_api import sync_playwright
    from viewer_harness import Harness

    results: dict = {}

    def check(name, ok, **detail):
        results[name] = {"ok": bool(ok), **detail}

    t0 = time.monotonic()
    try:
        with Harness() as hx, sync_playwright() as pw:
            results["_timing"] = {"harness_s": round(time.monotonic() - t0, 2)}
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            console: list[str] = []

            def new_page(**kw):
                ctx = browser.new_context(**kw)
                page = ctx.new_page()
                page.add_init_script(INIT_JS)
                page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
                page.on("console", lambda m: m.type == "error" and console.append(f"console: {m.text}"))
                page.set_default_timeout(10000)
                return page

            scenarios = [
                ("desktop", dict(viewport={"width": 1280, "height": 800}), desktop),
                ("phone", dict(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                               device_scale_factor=2), phone),
                ("fallback", dict(viewport={"width": 1280, "height": 800}), fallback),
                ("error", dict(viewport={"width": 1280, "height": 800}), errors),
                ("units", dict(viewport={"width": 800, "height": 600}), units),
            ]
            for name, kw, fn in scenarios:
                t = time.monotonic()
                page = new_page(**kw)
                run_checks(Session(page, hx, check), name, fn)
                page.context.close()
                results["_timing"][name + "_s"] = round(time.monotonic() - t, 2)
            browser.close()
            # Uncaught page errors fail the run; failed resource loads (404 thumbnail probe,
            # the deliberate 406s and the broken base) are expected console noise.
            results["_page_errors"] = [c for c in console if c.startswith("pageerror")]
            for name in CHECKS:
                crash = results.get(name.split(".")[0] + ".crash")
                results.setdefault(name, {"ok": False, "error": "not reached", "crash": crash})
            if results["_page_errors"]:
                for name in CHECKS:
                    results[name] = {**results[name], "ok": False, "page_errors": results["_page_errors"]}
    except Exception:
        results["_crash"] = traceback.format_exc()
    results["_timing"] = {**results.get("_timing", {}), "total_s": round(time.monotonic() - t0, 2)}
    out_path.write_text(json.dumps(results, ensure_ascii=False, indent=1))
    return 0 if all(results.get(n, {}).get("ok") for n in CHECKS) else 1


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--inner":
        sys.exit(inner(Path(sys.argv[2])))
    # By hand: run everything in a private network namespace and print the results.
    out = Path(tempfile.mkdtemp(prefix="viewer-test-")) / "results.json"
    cmd = ["unshare", "-n", "bash", "-c", 'ip link set lo up && exec "$@"', "bash",
           sys.executable, str(Path(__file__).resolve()), "--inner", str(out)]
    rc = subprocess.run(cmd).returncode
    print(out.read_text() if out.exists() else "no results")
    sys.exit(rc)
