"""Reading over a county line: Lancang's viewer in Chromium with the link throttled.

    python bench/reading.py [--slices 200] [--profiles 8mbit,4g] [--repeat 2] [--json OUT.json]

A 200-slice 512x512 CT (bench/ctgen.py: a body phantom with noise, 525 KB a slice) goes into
Lancang on embedded defaults (`lancang import`) and into Orthanc + its DICOMweb plugin
(storescu), which OHIF 3 (prebuilt `@ohif/app`, bench/ohif_site.py) reads. Headless Chromium
reaches each through bench/linkproxy.py, one TCP proxy per walk that shares a rate limit
between all connections and adds the one-way delay (DevTools throttling does not reach the
fetches of OHIF's web workers, so it would not be the same link):

    8mbit   8 Mbit/s each way, 40 ms round trip (a county line)
    4g      20 Mbit/s each way, 60 ms round trip

and opens `/studies/{uid}/view`. Printed per profile, each beside its anchor from the same run:
time to the first image on screen (goal <= 1.0 s at 8 Mbit/s), time until every slice of the
series is displayable at full quality (Lancang: the viewer's own progress, decoded; OHIF: its
last frame through the link, before decoding: a lower bound for OHIF), the bytes the link
carried to the browser (goal: whole series <= 1.25x the floor and <= 0.5x OHIF); the floor is the
series' pixel data compressed losslessly (the smaller of gzip -9 and JPEG-LS of the native
frames; JPEG-LS here) divided by the link rate. Lancang's viewer asks for JPEG-LS frames and
decodes them in a worker (WebAssembly CharLS); its first low-resolution preview is printed
beside its first full-quality image.

Everything runs in a private network namespace; processes started here are stopped by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if not __package__:
    sys.path.insert(0, str(REPO))

from bench import ctgen, peers  # noqa: E402
from bench.linkproxy import LinkProxy  # noqa: E402
from bench.dicomweb import INSTITUTION, PASSWORD, USERNAME, LancangSite  # noqa: E402
from bench.runinfo import lancang_revision, load1, uptime  # noqa: E402

PROFILES = {"8mbit": (8_000_000, 40), "4g": (20_000_000, 60)}
TARGETS = {"jls": "Lancang (frames JPEG-LS)", "ohif": "OHIF 3 + Orthanc"}
ohif_server: list = []  # the running OHIF site (bench/ohif_site.py), for its served-frame log
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-quic", "--no-first-run", "--use-gl=swiftshader",
                 "--enable-unsafe-swiftshader", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def floor_bytes(files: list[Path]) -> tuple[int, int, int]:
    """(raw pixel bytes, gzip -9 of them, JPEG-LS lossless of them) over the series."""
    from pydicom import dcmread

    from imaging import jpegls

    raw = packed = jls = 0
    for path in files:
        ds = dcmread(path)
        data = ds.PixelData
        raw += len(data)
        packed += len(gzip.compress(data, 9, mtime=0))
        jls += len(jpegls.encode_frame(ds, data))
    return raw, packed, jls


def walk(browser, base: str, study: str, bits: int, latency: int) -> dict:
    """Sign in directly, then open the viewer through the slow link; times from navigation
    start, bytes as the link carried them towards the browser."""
    context = browser.new_context(viewport={"width": 1366, "height": 768}, service_workers="block")
    page = context.new_page()
    page.goto(f"{base}/login?next=/menu")
    page.fill("input[name=username]", USERNAME)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/menu")
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
    link = LinkProxy(int(base.rsplit(":", 1)[1]), rate_bits=bits, rtt_ms=latency).__enter__()
    started = time.perf_counter()
    page.goto(f"http://127.0.0.1:{link.port}/studies/{study}/view", wait_until="commit")
    first = whole = None
    deadline = started + 600
    while time.perf_counter() < deadline:
        state = page.evaluate("window.lancangViewer ? [window.lancangViewer.state(), "
                              "window.lancangViewer.progress()] : null")
        now = time.perf_counter() - started
        if state:
            shown, progress = state
            if first is None and shown["count"] and not shown["loading"]:
                first = now
            if progress["total"] and progress["loaded"] >= progress["total"]:
                whole = now
                break
        time.sleep(0.02)
    total = link.received
    preview = page.evaluate("window.lancangViewer.firstPreviewAt()")  # ms from navigation start
    context.close()
    link.__exit__(None, None, None)
    return {"first_s": round(first, 3) if first else None, "whole_s": round(whole, 3) if whole else None,
            "preview_s": round(preview / 1000, 3) if preview else None, "bytes": total}


FIRST_PIXEL_JS = """() => {
  for (const c of document.querySelectorAll('canvas')) {
    if (c.width < 100 || c.height < 100) continue;
    let ctx = null;
    try { ctx = c.getContext('2d'); } catch (e) { continue; }
    if (!ctx) continue;
    const d = ctx.getImageData(c.width >> 1, c.height >> 1, 1, 1).data;
    if (d[0] + d[1] + d[2] > 0) return true;
  }
  return false;
}"""


def walk_ohif(browser, base: str, study: str, slices: int, bits: int, latency: int) -> dict:
    """OHIF on the same throttled link: first image = OHIF's own "studyToFirstImage" mark (its
    console timer), or a drawn viewport canvas, whichever comes first; whole series = the last of
    the series' frames received (network only: a lower bound for OHIF, which still decodes
    after that). Its service worker is blocked: DevTools throttling does not reach a worker's
    fetches, and OHIF would then read unthrottled."""
    context = browser.new_context(viewport={"width": 1366, "height": 768}, service_workers="block")
    page = context.new_page()
    marks, own = [], []

    def console(message) -> None:
        if "studyToFirstImage" in message.text:
            marks.append(time.perf_counter())
            own.extend(float(x) for x in re.findall(r"([0-9.]+) ?ms", message.text)[:1])
    page.on("console", console)
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
    server = ohif_server[0]
    server.served.clear()
    link = LinkProxy(server.server_address[1], rate_bits=bits, rtt_ms=latency).__enter__()
    started, monotonic_start = time.perf_counter(), time.monotonic()
    page.goto(f"http://127.0.0.1:{link.port}/viewer?StudyInstanceUIDs={study}", wait_until="commit")
    frames_done = _FramesServed(server, monotonic_start)
    first = None
    deadline = started + 900
    while time.perf_counter() < deadline and (first is None or len(frames_done) < slices):
        if first is None and (marks or page.evaluate(FIRST_PIXEL_JS)):
            first = (marks[0] if marks else time.perf_counter()) - started
        time.sleep(0.05)
    whole = sorted(frames_done.times())[slices - 1] if len(frames_done) >= slices else None
    total = link.received
    context.close()
    link.__exit__(None, None, None)
    return {"first_s": round(first, 3) if first else None, "whole_s": round(whole, 3) if whole else None,
            "bytes": total, "frames": len(frames_done), "ohif_study_to_first_image_s": own[0] / 1000 if own else None}


class _FramesServed:
    """The frame answers the OHIF site handed to the link (it waits for the link to take the
    last byte: the link's buffer, 16 KB, is the error), as seconds from navigation start."""

    def __init__(self, server, offset: float):
        self.server, self.offset = server, offset

    def times(self) -> list[float]:
        return [t - self.offset for t, path in list(self.server.served) if "/frames/" in path]

    def __len__(self) -> int:
        return len(self.times())


def start_ohif(args, stack: contextlib.ExitStack, files: list[Path], workdir: Path) -> str | None:
    """Orthanc + DICOMweb filled by storescu, and OHIF served in front of it; None without OHIF."""
    from bench import ohif_site

    dist = Path(args.ohif)
    if not (dist / "index.html").exists():
        print(f"OHIF not found at {dist} (npm pack @ohif/app, see bench/ohif_site.py): skipped", flush=True)
        return None
    orthanc = stack.enter_context(peers.start_orthanc(workdir / "orthanc", peers.free_port(), peers.free_port(),
                                                      aet="ORTHANC", dicomweb=True))
    peers.time_storescu("127.0.0.1", orthanc.dicom_port, "ORTHANC", files, 4, "BENCH")
    port = peers.free_port()
    server = ohif_site.serve(dist, port, orthanc.http_port)
    stack.callback(server.shutdown)
    ohif_server[:] = [server]
    print(f"Orthanc pid {orthanc.pid} ({orthanc.instance_count()} instances) behind OHIF on :{port}", flush=True)
    return f"http://127.0.0.1:{port}"


def run(args, stack: contextlib.ExitStack) -> dict:
    from playwright.sync_api import sync_playwright

    data = Path(args.data)
    files = ctgen.generate(data, count=args.slices, studies=1, seed=7)
    plan = ctgen.plan_studies(args.slices, 1, 7)
    raw, packed, jls = floor_bytes(files)
    print(f"{len(files)} slices, pixel data {raw / 1e6:.1f} MB raw, {packed / 1e6:.1f} MB gzip -9 "
          f"({packed / raw:.2f}), {jls / 1e6:.1f} MB JPEG-LS ({jls / raw:.2f})", flush=True)
    floor_bytes_ = min(packed, jls)  # the least a lossless transfer carries with the better codec
    workdir = Path(tempfile.mkdtemp(prefix="bench-reading-"))
    stack.callback(shutil.rmtree, workdir, True)
    site = LancangSite(workdir / "lancang")
    stack.callback(site.stop)
    site.cli("institution", "add", INSTITUTION, "--name", "澜沧县第一人民医院", "--level", "county")
    site.cli("import", str(data / plan[0].dirname), "--institution", INSTITUTION, "--quiet")
    site.add_reader()
    base = site.start_web()
    print(f"lancang web pid {site.webs[-1].pid} on {base}; start {uptime()}", flush=True)
    ohif = start_ohif(args, stack, files, workdir) if args.ohif else None
    pw = stack.enter_context(sync_playwright())
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    stack.callback(browser.close)
    rows = []
    for name in args.profiles.split(","):
        bits, latency = PROFILES[name]
        floor_s = floor_bytes_ * 8 / bits
        for round_ in range(args.repeat):
            for wire in ("jls", "ohif") if ohif else ("jls",):
                got = (walk_ohif(browser, ohif, plan[0].study_uid, len(files), bits, latency) if wire == "ohif"
                       else walk(browser, base, plan[0].study_uid, bits, latency))
                row = {"profile": name, "round": round_, "wire": wire,
                       "floor_s": round(floor_s, 2), "load1": load1(), **got}
                rows.append(row)
                ratio = got["whole_s"] / floor_s if got["whole_s"] else float("nan")
                own = (f"   (OHIF's own studyToFirstImage {got['ohif_study_to_first_image_s']:.2f} s: after its "
                       f"app has loaded)" if got.get("ohif_study_to_first_image_s") else "")
                preview = f" (preview {got['preview_s']} s)" if got.get("preview_s") else ""
                print(f"  {name:<6} round {round_} {TARGETS[wire]:<30} first image {got['first_s']} s{preview}   whole series "
                      f"{got['whole_s']} s ({ratio:.2f}x floor {floor_s:.2f} s)   received "
                      f"{got['bytes'] / 1e6:.1f} MB   load1 {row['load1']:.2f}{own}", flush=True)
    print(f"end {uptime()}")
    summary = []
    print(f"\n{len(files)}-slice CT, Chromium through bench/linkproxy.py (one shared rate, one-way delay); "
          f"median of {args.repeat}")
    print(f"{'profile':<7} {'target':<30} {'first s':>8} {'whole s':>8} {'floor s':>8} {'x floor':>8} {'MB':>6}"
          f" {'x OHIF':>7}")
    for name in args.profiles.split(","):
        ohif_whole = [r["whole_s"] for r in rows if r["profile"] == name and r["wire"] == "ohif" and r["whole_s"]]
        for wire in ("jls", "ohif"):
            group = [r for r in rows if r["profile"] == name and r["wire"] == wire and r["whole_s"]]
            if not group:
                continue
            first = statistics.median(r["first_s"] for r in group)
            whole = statistics.median(r["whole_s"] for r in group)
            floor_s = group[0]["floor_s"]
            mb = statistics.median(r["bytes"] for r in group) / 1e6
            x_ohif = whole / statistics.median(ohif_whole) if ohif_whole else float("nan")
            summary.append({"profile": name, "wire": wire, "first_s": first, "whole_s": whole, "floor_s": floor_s,
                            "x_floor": round(whole / floor_s, 2), "mb": round(mb, 1), "x_ohif": round(x_ohif, 2)})
            print(f"{name:<7} {TARGETS[wire]:<30} {first:>8.2f} {whole:>8.2f} {floor_s:>8.2f} {whole / floor_s:>8.2f} "
                  f"{mb:>6.1f} {x_ohif:>7.2f}")
    return {"rows": rows, "summary": summary, "raw_bytes": raw, "gzip9_bytes": packed, "jpegls_bytes": jls,
            "revision": lancang_revision()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--profiles", default="8mbit,4g")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--data", default="/tmp/ct-reading")
    parser.add_argument("--ohif", default="/tmp/ohif/package/dist", help="prebuilt @ohif/app dist ('' to skip)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    peers.ensure_private_netns()
    with contextlib.ExitStack() as stack:
        result = run(args, stack)
    if args.json:
        Path(args.json).write_text(json.dumps(result, ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
