"""The patient's cloud-film page on a throttled phone: first image visible after the PIN.

    python bench/patient_page.py [--repeat 7] [--slices 60] [--targets embedded,pg-s3]
                                 [--json OUT.json]

`lancang web` runs as a real process; a CT study (bench/ctgen.py's 512x512 phantom, fresh
UIDs) is imported with `lancang import` and derived; each repeat makes a new link with
`lancang share create`. Chromium (Debian's, through Playwright) opens it in a fresh
context at a phone viewport (390 x 844, 3x, touch) with the network throttled through
CDP Network.emulateNetworkConditions: 1.6 Mbit/s down, 0.75 Mbit/s up, 150 ms latency.

The clock starts in the page when the PIN form is submitted and stops two animation
frames after the first image's load event on the study page (it is then painted):
the POST, the redirect, the page, its stylesheet and script, and the image all go
through the throttled link. The screen-sized renderings the server caches are deleted
before every repeat, so each figure is a first view (the patient is the first to look);
a second, warm view in another fresh context is reported for comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if not __package__:
    sys.path.insert(0, str(REPO))

from bench import ctgen, peers  # noqa: E402
from bench.runinfo import percentile, uptime  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PHONE = dict(viewport={"width": 390, "height": 844}, device_scale_factor=3, is_mobile=True, has_touch=True,
             locale="zh-CN", user_agent="Mozilla/5.0 (Linux; Android 13; Phone) AppleWebKit/537.36 "
             "(KHTML, like Gecko) Chrome/120 Mobile Safari/537.36 LancangBench")
NETWORK = {"offline": False, "latency": 150, "downloadThroughput": 1.6e6 / 8, "uploadThroughput": 0.75e6 / 8,
           "connectionType": "cellular3g"}
GOAL_S = 2.0
TIMING = """
document.addEventListener('submit', () => sessionStorage.setItem('t0', String(Date.now())), true);
document.addEventListener('load', (event) => {
  if (event.target && event.target.id === 'film-image' && !sessionStorage.getItem('t1')) {
    requestAnimationFrame(() => requestAnimationFrame(() => sessionStorage.setItem('t1', String(Date.now()))));
  }
}, true);
"""


@dataclass
class Sample:
    target: str
    repeat: int
    cold_s: float
    warm_s: float
    image_bytes: int
    page_bytes: int
    load1: float


class Site:
    def __init__(self, name: str, workdir: Path, stack: contextlib.ExitStack):
        self.name, self.workdir = name, workdir
        self.port = peers.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LANCANG_")}
        self.env.update(LANCANG_DATA_DIR=str(workdir / "var"), LANCANG_HTTP_PORT=str(self.port),
                        LANCANG_BIND_HOST="127.0.0.1", LANCANG_PUBLIC_URL=self.url, LANCANG_LOG_LEVEL="WARNING")
        if name == "pg-s3":
            from tests.services import PostgresServer, RedisServer, S3Server

            servers = [PostgresServer(dbname="film"), S3Server(), RedisServer()]
            for server in servers:
                stack.callback(server.close)
                server.start()
            pg, s3, redis = servers
            self.env.update(LANCANG_DATABASE_URL=pg.create_database(), LANCANG_OBJECT_STORE="s3",
                            LANCANG_S3_ENDPOINT=s3.endpoint, LANCANG_S3_PUBLIC_ENDPOINT=s3.url,
                            LANCANG_S3_ACCESS_KEY=s3.access_key, LANCANG_S3_SECRET_KEY=s3.secret_key,
                            LANCANG_S3_REGION=s3.region, LANCANG_S3_BUCKET="film", LANCANG_BROKER_URL=redis.url,
                            LANCANG_SECRET_KEY=secrets.token_hex(32))
        self.web: subprocess.Popen | None = None

    def cli(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "lancang.cli", *args], env=self.env, cwd=self.workdir,
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"lancang {' '.join(args)}: {done.stderr[-2000:]}")
        return done.stdout

    def runtime(self):
        from storage.runtime import bootstrap
        from storage.settings import Settings

        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(self.env)
        try:
            return bootstrap(Settings(_env_file=None), component="bench")
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def prepare(self, source: list[Path]) -> str:
        from pydicom import dcmread
        from pydicom.uid import generate_uid
        from sqlalchemy import select

        from imaging import derive
        from imaging.models import Series

        folder = self.workdir / "study"
        folder.mkdir()
        study_uid, series_uid = generate_uid(), generate_uid()
        for path in source:
            ds = dcmread(path)
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study_uid, series_uid, generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            (folder / path.name).write_bytes(buffer.getvalue())
        self.cli("institution", "add", "LC-T01", "--name", "澜沧县勐朗镇卫生院", "--level", "township")
        self.cli("import", str(folder), "--institution", "LC-T01", "--quiet")
        self.rt = self.runtime()
        with self.rt.db.scope(readonly=True) as session:
            series_pk = session.scalar(select(Series.id).where(Series.series_instance_uid == series_uid))
        derive.derive_series(self.rt.db, self.rt.store, series_pk)   # what the worker does
        self.study_uid = study_uid
        log = open(self.workdir / "web.log", "ab")
        self.web = subprocess.Popen([sys.executable, "-m", "lancang.cli", "web"], env=self.env, cwd=self.workdir,
                                    stdout=log, stderr=subprocess.STDOUT)
        peers.wait_http(f"{self.url}/healthz", timeout=120, proc=self.web)
        return study_uid

    def forget_renders(self) -> int:
        """Delete the cached screen renderings: the next view renders on demand (a first view)."""
        keys = [k for k in self.rt.store.list(f"derived/{self.study_uid}/") if "/screen/" in k]
        for key in keys:
            self.rt.store.delete(key)
        return len(keys)

    def stop(self) -> None:
        if self.web is not None and self.web.poll() is None:
            self.web.terminate()
            try:
                self.web.wait(20)
            except subprocess.TimeoutExpired:
                self.web.kill()
                self.web.wait()
        self.rt.db.dispose()


def view_once(browser, url: str, pin: str) -> tuple[float, int, int]:
    """Seconds from PIN submit to the first image painted, image bytes, page bytes."""
    context = browser.new_context(**PHONE)
    try:
        page = context.new_page()
        cdp = context.new_cdp_session(page)
        cdp.send("Network.enable")
        cdp.send("Network.emulateNetworkConditions", NETWORK)
        finished: list[tuple[str, int]] = []   # (url, bytes on the wire), in order
        urls: dict[str, str] = {}
        cdp.on("Network.responseReceived", lambda e: urls.__setitem__(e["requestId"], e["response"]["url"]))
        cdp.on("Network.loadingFinished",
               lambda e: finished.append((urls.get(e["requestId"], ""), int(e["encodedDataLength"]))))
        page.add_init_script(TIMING)
        page.goto(url)
        page.fill("#pin", pin)
        page.click("button[type=submit]")
        page.wait_for_function("() => sessionStorage.getItem('t1')", timeout=60000)
        t0, t1 = (int(page.evaluate(f"sessionStorage.getItem('{k}')")) for k in ("t0", "t1"))
        first = page.evaluate("document.getElementById('film-image').src")
        image = next((n for u, n in finished if u == first), 0)
        html = next((n for u, n in finished if u.endswith("/view")), 0)
        return (t1 - t0) / 1000, image, html
    finally:
        context.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--slices", type=int, default=60, help="slices in the study (default 60)")
    parser.add_argument("--targets", default="embedded,pg-s3")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright

    source_dir = Path("/tmp/ct200")
    if not ctgen.is_generated(source_dir, 200):
        ctgen.generate(source_dir, count=200)
    source = ctgen.list_files(source_dir)[:args.slices]
    print(f"patient_page: {len(source)}-slice CT, phone 390x844@3x, {NETWORK['downloadThroughput'] * 8 / 1e6:.1f} "
          f"Mbit/s down, {NETWORK['latency']} ms latency; {uptime()}", flush=True)
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="lancang-film-") as tmp, contextlib.ExitStack() as stack, \
            sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        for name in args.targets.split(","):
            workdir = Path(tmp) / name
            workdir.mkdir()
            site = Site(name, workdir, stack)
            try:
                study_uid = site.prepare(source)
                for repeat in range(args.repeat):
                    share = json.loads(site.cli("share", "create", study_uid))
                    forgotten = site.forget_renders()
                    load = round(os.getloadavg()[0], 2)
                    cold, image_bytes, page_bytes = view_once(browser, share["url"], share["pin"])
                    warm, _, _ = view_once(browser, share["url"], share["pin"])
                    samples.append(Sample(name, repeat, round(cold, 3), round(warm, 3), image_bytes, page_bytes, load))
                    print(f"  {name:8s} #{repeat}  first view {cold:5.2f} s | warm {warm:5.2f} s | "
                          f"image {image_bytes / 1024:5.1f} KiB | page {page_bytes / 1024:4.1f} KiB | "
                          f"cached renders dropped {forgotten} | load {load}",
                          flush=True)
            finally:
                site.stop()
        browser.close()
    print(f"\nresults ({uptime()}):")
    summary = {}
    for name in args.targets.split(","):
        cold = [s.cold_s for s in samples if s.target == name]
        warm = [s.warm_s for s in samples if s.target == name]
        summary[name] = {"n": len(cold), "first_view_median_s": round(statistics.median(cold), 3),
                         "first_view_p95_s": round(percentile(cold, 95), 3), "warm_median_s": round(statistics.median(warm), 3)}
        verdict = "meets" if summary[name]["first_view_p95_s"] <= GOAL_S else "MISSES"
        print(f"  {name:8s} PIN -> first image visible: median {summary[name]['first_view_median_s']:.2f} s, "
              f"p95 {summary[name]['first_view_p95_s']:.2f} s ({verdict} the {GOAL_S:.0f} s goal); "
              f"warm median {summary[name]['warm_median_s']:.2f} s (n={len(cold)})")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "samples": [asdict(s) for s in samples]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
