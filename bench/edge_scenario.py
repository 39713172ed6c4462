"""The township edge on a faulty line, shared by tests/edge/test_faulty_line.py (short) and
bench/edge_forward.py (full).

Two installations, each an embedded Lancang with its own data dir: the region (its web app
in uvicorn, with the edge routers) and the township edge (its DICOM receiver and the
forwarder, `python -m edge.forward`), all real processes started and stopped by PID. The
modality is dcmtk's storescu; the line from the edge to the region is bench/linkproxy.py.

    with Sites(root, chunk_bytes=...) as sites:
        sites.start_region()
        line = FaultProxy(sites.region_port, ...)       # the caller owns the line
        sites.start_edge(f"http://127.0.0.1:{line.port}")
        sites.storescu(files); sites.start_forwarder(); ...; sites.verify(files)
"""

from __future__ import annotations

import gzip
import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parent.parent
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
MODALITY_AE = "MODALITY"
SECRET = "bench-edge-secret-" + uuid.uuid4().hex
AUDIT_KEY = "bench-edge-audit-key-" + uuid.uuid4().hex


def region_app():
    """The region's app for `uvicorn --factory bench.edge_scenario:region_app`: web.app's, with
    the edge routers included when web/app.py does not include them (yet)."""
    from edge import routes, transfer_pages
    from web.app import create_app

    app = create_app()
    paths = {getattr(route, "path", "") for route in app.routes}
    if "/api/edge/hello" not in paths:
        app.include_router(routes.router)
    if "/edge/status" not in paths:
        app.include_router(transfer_pages.router)
    return app


# -- data ----------------------------------------------------------------------------------------


def us_cine(path: Path, *, frames: int, rows: int = 480, cols: int = 640, seed: int = 0,
            study_uid: str | None = None) -> Path:
    """An ultrasound cine: a sector of moving speckle, 8-bit grey, `frames` frames."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    radius, angle = np.hypot(xx - cols / 2, yy + rows * 0.05), np.arctan2(xx - cols / 2, yy + rows * 0.05)
    sector = (np.abs(angle) < 0.62) & (radius < rows * 0.98)
    coarse = rng.random((rows // 8 + 2, cols // 8 + 2)).astype(np.float32)
    tissue = np.kron(coarse, np.ones((8, 8), np.float32))
    stack = np.zeros((frames, rows, cols), np.uint8)
    for n in range(frames):
        moved = np.roll(tissue, n % 8, axis=0)[:rows, :cols]
        speckle = rng.rayleigh(0.45, (rows, cols)).astype(np.float32)
        stack[n] = np.clip(moved * speckle * 200, 0, 255).astype(np.uint8) * sector
    ds = _patient_study(Dataset(), study_uid or generate_uid(), "李娜", "US001", "产科超声 Obstetric US")
    ds.SOPClassUID, ds.SOPInstanceUID = US_MULTIFRAME, generate_uid()
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = "US", generate_uid(), 1, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.FrameTime, ds.FrameIncrementPointer = 33.3, 0x00181063
    ds.PixelData = stack.tobytes()
    return _save(ds, path)


def _patient_study(ds: Dataset, study_uid: str, name: str, patient_id: str, description: str) -> Dataset:
    ds.SpecificCharacterSet = "GB18030"
    ds.PatientName, ds.PatientID, ds.PatientSex, ds.PatientBirthDate = name, patient_id, "F", "19850119"
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = study_uid, "20261204", "100000"
    ds.AccessionNumber, ds.StudyDescription, ds.StudyID = patient_id + "A", description, "1"
    return ds


def _save(ds: Dataset, path: Path) -> Path:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def dataset_bytes(part10: bytes) -> bytes:
    """A Part 10 file's bytes after its File Meta (what a receiver may not rewrite)."""
    if part10[128:132] != b"DICM" or part10[132:136] != b"\x02\x00\x00\x00":
        raise ValueError("not a Part 10 file with a group length first")
    group_length = int.from_bytes(part10[140:144], "little")
    return part10[144 + group_length:]


def wire_bytes(data: bytes, chunk_bytes: int, encode=None) -> int:
    """What the edge puts on the line for these bytes from offset 0 (one member per chunk)."""
    encode = encode or (lambda raw: gzip.compress(raw, 6, mtime=0))
    return sum(len(encode(data[i:i + chunk_bytes])) for i in range(0, len(data), chunk_bytes))


# -- processes -------------------------------------------------------------------------------------


def env_of(settings) -> dict[str, str]:
    """The environment that makes a child process use these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LANCANG_")}
    for name, value in settings.model_dump().items():
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        if value not in (None, ""):
            env[f"LANCANG_{name.upper()}"] = str(value)
    return env


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Sites:
    root: Path
    chunk_bytes: int = 1024 * 1024
    region_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    credential: str = ""

    def __post_init__(self):
        from storage.settings import Settings

        self.region = Settings(_env_file=None, data_dir=self.root / "region", http_port=self.region_port,
                               secret_key=SECRET, audit_key=AUDIT_KEY, log_level="WARNING")
        self.edge = None
        self.logs = self.root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> "Sites":
        return self

    def __exit__(self, *exc) -> None:
        for name in list(self.processes):
            self.stop(name)

    def _start(self, name: str, command: list[str], settings) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")
        process = subprocess.Popen(command, env=env_of(settings), cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.processes[name] = process
        return process

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, sig)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(5)

    def runtime(self, settings):
        from storage.runtime import bootstrap

        return bootstrap(settings, component="bench")

    def start_region(self) -> None:
        """The region's tree, an edge credential for T01, and its web app."""
        from edge import region
        from storage import service as tenancy

        db = self.runtime(self.region).db
        with db.scope() as session:
            tenancy.add_institution(session=session, code="COUNTY", name="澜沧县人民医院", level="county")
            tenancy.add_institution(session=session, code="T01", name="糯福乡卫生院", level="township",
                                    parent_code="COUNTY")
        self.credential = region.cli_issue(db, institution_code="T01", name="nuofu-edge")
        self._start("region", [sys.executable, "-m", "uvicorn", "--factory", "bench.edge_scenario:region_app",
                               "--host", "127.0.0.1", "--port", str(self.region_port), "--log-level", "warning"],
                    self.region)
        _wait_http(f"http://127.0.0.1:{self.region_port}/healthz", self.processes["region"])

    def start_edge(self, region_url: str, *, urgent: tuple[str, ...] = ()) -> None:
        """The edge's institution, the modality's AE, the worklist's urgent exams, its receiver."""
        from edge.worklist_models import WorklistEntry
        from storage import service as tenancy
        from storage.settings import Settings
        from storage.types import utcnow

        self.edge = Settings(_env_file=None, data_dir=self.root / "edge", dicom_port=self.dicom_port,
                             http_port=free_port(), secret_key=SECRET, audit_key=AUDIT_KEY, log_level="INFO",
                             edge_region_url=region_url, edge_credential=self.credential,
                             edge_chunk_bytes=self.chunk_bytes)
        with self.runtime(self.edge).db.scope() as session:
            town = tenancy.add_institution(session=session, code="T01", name="糯福乡卫生院", level="township")
            tenancy.add_node(session=session, ae_title=MODALITY_AE, institution_code="T01")
            for n, study_uid in enumerate(urgent):  # registered at the desk as urgent
                session.add(WorklistEntry(
                    study_instance_uid=study_uid, accession_number=f"URG{n}", priority=0, urgent=True,
                    institution_id=town.id, family_name="李", given_name="娜", name_pinyin="Li^Na", sex="F",
                    birth_date=date(1985, 1, 19), patient_id=f"US{n:03d}", modality="US", procedure_code="US",
                    procedure="产科超声", scheduled_at=utcnow(), registered_by="bench"))
        self._start("dicom", [sys.executable, "-m", "lancang.cli", "dicom"], self.edge)
        _wait_echo(self.dicom_port, self.processes["dicom"])

    def storescu(self, files: list[Path]) -> float:
        started = time.monotonic()
        done = subprocess.run(["/usr/bin/storescu", "-aet", MODALITY_AE, "-aec", self.edge.dicom_ae_title,
                               "127.0.0.1", str(self.dicom_port), *map(str, files)],
                              env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"storescu failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
        return time.monotonic() - started

    def start_forwarder(self) -> subprocess.Popen:
        return self._start("forwarder", [sys.executable, "-m", "edge.forward"], self.edge)

    def kill_forwarder(self) -> None:
        """SIGKILL: no chance to tidy up."""
        self.stop("forwarder", signal.SIGKILL)


def _wait_http(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the process serving {url} exited")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


def _wait_echo(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the edge's DICOM receiver exited")
        done = subprocess.run(["/usr/bin/echoscu", "-aet", MODALITY_AE, "-aec", "LANCANG", "127.0.0.1", str(port)],
                              capture_output=True, timeout=30)
        if done.returncode == 0:
            return
        time.sleep(0.3)
    raise RuntimeError("the edge's DICOM receiver did not answer C-ECHO")


# -- watching and checking ---------------------------------------------------------------------------


def region_progress(db) -> tuple[int, int]:
    """(instances verified at the region, studies it confirmed complete)."""
    from sqlalchemy import func, select

    from edge.models import EdgeStudy, EdgeUpload

    with db.scope(readonly=True) as session:
        verified = session.scalar(select(func.count()).select_from(EdgeUpload).where(EdgeUpload.done.is_(True)))
        complete = session.scalar(select(func.count()).select_from(EdgeStudy)
                                  .where(EdgeStudy.completed_at.is_not(None)))
    return int(verified), int(complete)


def region_bytes(rt) -> int:
    """Bytes of the edge's instances the region holds: verified ones, and partial uploads."""
    from sqlalchemy import func, select

    from edge.models import EdgeUpload
    from edge.uploads import UPLOAD_DIR

    with rt.db.scope(readonly=True) as session:
        verified = session.scalar(select(func.coalesce(func.sum(EdgeUpload.size), 0)).where(EdgeUpload.done.is_(True)))
    partial = sum(p.stat().st_size for p in (rt.settings.data_dir / UPLOAD_DIR).rglob("*.part"))
    return int(verified) + partial


def edge_sent(db) -> dict[str, str]:
    """{study uid: outbox state} at the edge."""
    from sqlalchemy import select

    from edge.models import OutboxStudy

    with db.scope(readonly=True) as session:
        return dict(session.execute(select(OutboxStudy.study_instance_uid, OutboxStudy.state)).all())


@dataclass
class Verdict:
    expected: int
    at_region: int
    superseded: int
    identical_to_edge: int
    dataset_identical_to_modality: int
    studies_complete: int
    stored_audits: int
    problems: list[str]


def verify(region_rt, edge_rt, originals: list[Path]) -> Verdict:
    """Every instance the modality sent is at the region once, its bytes those the edge stored
    (File Meta included: the region stores what it verified), and its data set (after the File
    Meta, which the edge's receiver rewrites with the modality's AE) the modality's own."""
    from sqlalchemy import func, select

    from edge.models import EdgeStudy
    from imaging.models import Instance, SupersededInstance
    from storage.models import AuditRecord

    from pydicom import dcmread

    sent = {str(dcmread(path, stop_before_pixels=True).SOPInstanceUID): path.read_bytes() for path in originals}
    region, edge = _keys(region_rt), _keys(edge_rt)
    problems, same, same_ds = [], 0, 0
    for sop, original in sent.items():
        if sop not in region or sop not in edge:
            problems.append(f"{sop} missing at the {'region' if sop not in region else 'edge'}")
            continue
        at_region, at_edge = region_rt.store.get(region[sop]), edge_rt.store.get(edge[sop])
        same += hashlib.sha256(at_region).digest() == hashlib.sha256(at_edge).digest()
        same_ds += dataset_bytes(at_region) == dataset_bytes(original)
    with region_rt.db.scope(readonly=True) as session:
        superseded = session.scalar(select(func.count()).select_from(SupersededInstance))
        complete = session.scalar(select(func.count()).select_from(EdgeStudy)
                                  .where(EdgeStudy.completed_at.is_not(None)))
        audits = session.scalar(select(func.count()).select_from(AuditRecord)
                                .where(AuditRecord.action == "edge.instance.store"))
        count = session.scalar(select(func.count()).select_from(Instance))
    return Verdict(len(sent), int(count), int(superseded), same, same_ds, int(complete), int(audits), problems)


def _keys(rt) -> dict[str, str]:
    from sqlalchemy import select

    from imaging.models import Instance

    with rt.db.scope(readonly=True) as session:
        return dict(session.execute(select(Instance.sop_instance_uid, Instance.object_key)).all())
