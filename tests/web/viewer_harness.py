"""Harness for the diagnostic viewer: a real Orthanc (DICOMweb plugin) behind a tiny page server.

Everything here binds sockets Orthanc cannot restrict to loopback, so run it inside a private
network namespace: ``unshare -n bash -c 'ip link set lo up; python tests/web/viewer_harness.py serve'``.

The page server renders ``web/templates/viewer.html`` with Jinja2 exactly as the product does
(``study_uid``, ``dicomweb_base``, ``user``), serves ``web/static`` at ``/static`` and
reverse-proxies ``/dicom-web/*`` to Orthanc.  ``/dw406/*`` is the same proxy but refuses every
octet-stream frame request with 406, so the viewer's ``/rendered`` fallback can be exercised;
``/view406/{study}`` renders the page against it, and ``/viewbroken/{study}`` against a
base that does not exist.  ``/__log`` returns the proxied request lines.
"""

from __future__ import annotations

import json
import mimetypes
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pydicom
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "web"
PLUGIN_DIRS = [Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc/plugins")]

STUDY_UID = "1.2.826.0.1.3680043.8.498.10000000000000000000000000000001"
PATIENT_NAME = "Wang^Fang=王^芳"

# Geometry of the synthetic CT: non-square pixels so a measurement proves row/column order.
CT_SLICES = 40
CT_ROWS, CT_COLS = 192, 256
CT_PIXEL_SPACING = (0.5, 0.8)  # (row spacing = vertical mm, column spacing = horizontal mm)
CT_WINDOW = (40, 400)


@dataclass
class SeriesInfo:
    key: str
    number: int
    uid: str
    description: str
    files: list[Path] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def _file_meta(ds: Dataset, ts=ExplicitVRLittleEndian) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ts
    ds.file_meta = meta


def _base(ds: Dataset, modality: str, series_uid: str, number: int, description: str) -> None:
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: Chinese names and descriptions
    ds.PatientName = PATIENT_NAME
    ds.PatientID = "LC-0001"
    ds.StudyInstanceUID = STUDY_UID
    ds.StudyDate = "20240315"
    ds.StudyDescription = "Viewer test"
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = number
    ds.SeriesDescription = description


def synthetic_ct_slice(index: int) -> np.ndarray:
    """Stored values (HU + 1024) of one slice: air, a body, lungs, a spine and a moving marker."""
    yy, xx = np.mgrid[0:CT_ROWS, 0:CT_COLS]
    hu = np.full((CT_ROWS, CT_COLS), -1000, dtype=np.int32)
    body = ((xx - CT_COLS / 2) / 110) ** 2 + ((yy - CT_ROWS / 2) / 80) ** 2 <= 1
    hu[body] = 40
    for cx in (CT_COLS / 2 - 50, CT_COLS / 2 + 50):
        lung = ((xx - cx) / 35) ** 2 + ((yy - CT_ROWS / 2 + 5) / 45) ** 2 <= 1
        hu[lung] = -800
    spine = (xx - CT_COLS / 2) ** 2 + (yy - CT_ROWS / 2 - 50) ** 2 <= 14**2
    hu[spine] = 900
    # A soft gradient so window changes visibly change many pixels.
    hu[body & ~spine] += ((xx[body & ~spine] - CT_COLS / 2) // 4).astype(np.int32)
    # A bright marker whose position encodes the slice index.
    mx = 20 + (index * 5) % (CT_COLS - 40)
    hu[8:20, mx:mx + 8] = 1500
    return (hu + 1024).astype(np.int16)


def make_dataset(out: Path) -> list[SeriesInfo]:
    """Write every test series (one study) into ``out`` and describe them."""
    out.mkdir(parents=True, exist_ok=True)
    series: list[SeriesInfo] = []

    # 1. Synthetic CT, 40 slices. InstanceNumber runs opposite to z on purpose.
    ct = SeriesInfo("ct", 1, generate_uid(), "CT 胸部 synthetic", extra={
        "rows": CT_ROWS, "cols": CT_COLS, "pixel_spacing": CT_PIXEL_SPACING, "window": CT_WINDOW})
    for i in range(CT_SLICES):
        ds = Dataset()
        _base(ds, "CT", ct.uid, ct.number, ct.description)
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [-100.0, -80.0, float(200 - 2.5 * i)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.SliceThickness = 2.5
        ds.SliceLocation = float(200 - 2.5 * i)
        ds.PixelSpacing = list(CT_PIXEL_SPACING)
        ds.Rows, ds.Columns = CT_ROWS, CT_COLS
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = CT_WINDOW
        ds.PixelData = synthetic_ct_slice(i).tobytes()
        _file_meta(ds)
        path = out / f"ct_{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        ct.files.append(path)
        ct.extra.setdefault("sops", []).append(ds.SOPInstanceUID)
    series.append(ct)

    def sample(key: str, number: int, name: str, description: str, **extra) -> None:
        src = get_testdata_file(name)
        if src is None:
            return
        ds = pydicom.dcmread(src)
        uid = generate_uid()
        _base(ds, ds.get("Modality", "OT") or "OT", uid, number, description)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = out / f"{key}.dcm"
        ds.save_as(path, enforce_file_format=True)
        series.append(SeriesInfo(key, number, uid, description, [path], extra))

    sample("ct_small", 2, "CT_small.dcm", "CT_small")
    sample("mr", 3, "MR_small.dcm", "MR_small")
    # Same pixels, JPEG-LS lossless: must look exactly like "mr".
    sample("mr_jls", 4, "MR_small_jpeg_ls_lossless.dcm", "MR_small JPEG-LS")
    sample("us_rgb", 5, "US1_UNCR.dcm", "US RGB")
    sample("emri", 6, "emri_small.dcm", "emri multi-frame", frames=10)
    sample("ybr_jpeg", 8, "SC_rgb_dcmtk_+eb+cy+np.dcm", "RGB JPEG YBR_FULL_422")

    # 7. Synthetic MONOCHROME1: low values must display white.
    m1 = SeriesInfo("mono1", 7, generate_uid(), "CR MONOCHROME1 synthetic", extra={"window": (500, 1000)})
    ds = Dataset()
    _base(ds, "CR", m1.uid, m1.number, m1.description)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = 1
    ds.Rows, ds.Columns = 128, 128
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.ImagerPixelSpacing = [0.2, 0.2]
    ds.WindowCenter, ds.WindowWidth = 500, 1000
    px = np.full((128, 128), 100, dtype=np.uint16)
    px[48:80, 48:80] = 900  # high value: dark on a MONOCHROME1 display
    ds.PixelData = px.tobytes()
    _file_meta(ds)
    path = out / "mono1.dcm"
    ds.save_as(path, enforce_file_format=True)
    m1.files.append(path)
    series.append(m1)

    series.sort(key=lambda s: s.number)
    return series


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dicomweb_plugin() -> Path:
    for d in PLUGIN_DIRS:
        p = d / "libOrthancDicomWeb.so"
        if p.exists():
            return p
    raise FileNotFoundError("libOrthancDicomWeb.so not found (apt-get install orthanc-dicomweb)")


class Orthanc:
    """One Orthanc process with the DICOMweb plugin, storage in a temporary directory."""

    def __init__(self, workdir: Path):
        self.dir = workdir / "orthanc"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20) -> None:
        config = {
            "Name": "lancang-viewer-test",
            "StorageDirectory": str(self.dir / "db"),
            "IndexDirectory": str(self.dir / "db"),
            "HttpPort": self.port,
            "DicomServerEnabled": False,
            "DicomPort": free_port(),
            "RemoteAccessAllowed": True,
            "AuthenticationEnabled": False,
            "HttpCompressionEnabled": False,
            "StorageCompression": False,
            "DefaultEncoding": "Utf8",
            "Plugins": [str(dicomweb_plugin())],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        }
        cfg = self.dir / "orthanc.json"
        cfg.write_text(json.dumps(config))
        self._log = open(self.dir / "orthanc.log", "wb")
        self.proc = subprocess.Popen(["Orthanc", str(cfg)], stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "TCP_NODELAY": "1"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("Orthanc exited: " + (self.dir / "orthanc.log").read_text()[-2000:])
            try:
                if httpx.get(self.url + "/system", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError("Orthanc did not start")

    def upload(self, paths: list[Path]) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            for p in paths:
                r = client.post("/instances", content=p.read_bytes(),
                                headers={"Content-Type": "application/dicom"})
                r.raise_for_status()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if getattr(self, "_log", None):
            self._log.close()


_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "server", "date"}


class PageServer:
    """Static files + the viewer template + a DICOMweb reverse proxy, on a free loopback port."""

    # page prefix -> the dicomweb_base the template gets ("/nope" does not exist: error banner)
    VIEWS = {"view": "/dicom-web", "view406": "/dw406", "viewbroken": "/nope"}

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.log: list[str] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = Environment(loader=FileSystemLoader(WEB / "templates"), autoescape=select_autoescape())
        # No session here: the page's CSRF token is empty (web/app.install_csrf sets the real ones).
        self.env.globals.update(csrf_token=lambda request: "", csrf_field=lambda request: "", request=None)
        self.client = httpx.Client(base_url=upstream, timeout=60)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                server.handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.client.close()

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str, headers: dict | None = None):
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        path = parts.path
        try:
            if path.startswith("/static/"):
                target = (WEB / "static" / path[len("/static/"):]).resolve()
                if not target.is_relative_to(WEB / "static") or not target.is_file():
                    return self._send(h, 404, b"not found", "text/plain")
                ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
                if target.suffix == ".js":
                    ctype = "text/javascript"
                return self._send(h, 200, target.read_bytes(), ctype + "; charset=utf-8"
                                  if ctype.startswith("text/") else ctype)
            page = path.split("/")[1]
            if page in self.VIEWS and path.count("/") == 2:
                base = self.VIEWS[page]
                study = path.split("/", 2)[2]
                html = self.env.get_template("viewer.html").render(study_uid=study, dicomweb_base=base, user=None)
                return self._send(h, 200, html.encode(), "text/html; charset=utf-8")
            if path == "/__log":
                return self._send(h, 200, json.dumps(self.log).encode(), "application/json")
            if path.startswith("/dicom-web/") or path.startswith("/dw406/"):
                accept = h.headers.get("Accept", "")
                self.log.append(f"GET {h.path} | {accept}")
                if path.startswith("/dw406/"):
                    if "/frames/" in path and not path.endswith("/rendered") and "octet-stream" in accept:
                        return self._send(h, 406, b"not acceptable", "text/plain")
                    path = "/dicom-web/" + path[len("/dw406/"):]
                url = path + (("?" + parts.query) if parts.query else "")
                r = self.client.get(url, headers={"Accept": accept} if accept else {})
                headers = {k: v for k, v in r.headers.items() if k.lower() not in _HOP and k.lower() != "content-type"}
                return self._send(h, r.status_code, r.content, r.headers.get("content-type", "application/octet-stream"),
                                  headers)
            return self._send(h, 404, b"not found", "text/plain")
        except (BrokenPipeError, ConnectionResetError):
            pass


class Harness:
    """Orthanc + page server + data, as a context manager."""

    def __init__(self, workdir: Path | None = None):
        self._own = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="lancang-viewer-"))
        self.orthanc = Orthanc(self.workdir)
        self.series: list[SeriesInfo] = []
        self.pages: PageServer | None = None

    def __enter__(self) -> "Harness":
        self.series = make_dataset(self.workdir / "data")
        self.orthanc.start()
        self.orthanc.upload([p for s in self.series for p in s.files])
        self.pages = PageServer(self.orthanc.url)
        self.pages.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.pages:
            self.pages.stop()
        self.orthanc.stop()
        if self._own:
            shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def url(self) -> str:
        return self.pages.url

    def by_key(self, key: str) -> SeriesInfo:
        return next(s for s in self.series if s.key == key)


def in_private_netns() -> bool:
    """True when only the loopback interface exists (as inside ``unshare -n``)."""
    # /proc/net/dev follows the process's network namespace (/sys/class/net would need a remount).
    try:
        lines = Path("/proc/net/dev").read_text().splitlines()[2:]
    except OSError:
        return False
    return [line.split(":", 1)[0].strip() for line in lines] == ["lo"]


if __name__ == "__main__":
    # python tests/web/viewer_harness.py serve [seconds]  (inside unshare -n)
    if not in_private_netns():
        sys.exit("run inside: unshare -n bash -c 'ip link set lo up; python tests/web/viewer_harness.py serve'")
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 3600
    with Harness() as hx:
        print(json.dumps({"url": hx.url, "orthanc": hx.orthanc.url, "study": STUDY_UID,
                          "viewer": f"{hx.url}/view/{STUDY_UID}"}), flush=True)
        time.sleep(seconds)
