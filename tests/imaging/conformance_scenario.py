"""The DICOM conformance run (issue 14): every transfer syntax pydicom's test data holds, plus
retired, big endian, deflated, 12-bit JPEG, multi-frame US and SEG instances, in by C-STORE
and out by C-FIND, C-MOVE, C-GET and WADO-RS, against real dcmtk peers.

The C-MOVE destinations are dcmtk storescp processes, which bind 0.0.0.0: run this inside
a private network namespace (python -m tests.imaging.conformance_scenario WORKDIR under
`unshare -n`; tests/imaging/test_conformance.py does). Prints one JSON verdict per line of
results, the last line being the whole verdict.

Receivers:
  RAW  storescp with its defaults: accepts the uncompressed syntaxes only;
  ALL  storescp +xa: accepts every syntax it supports (then what arrives must be the bytes
       Lancang stored).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid

from imaging.scp import Receiver, start_server
from storage.runtime import bootstrap
from storage.settings import Settings
from storage import service
from tests.imaging.scu import dataset_bytes
from tests.services import free_port
from storage import identity
from web.app import create_app

RETIRED_US = "1.2.840.10008.5.1.4.1.1.6"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"

# pydicom test files, one or more per transfer syntax (name, why it is here).
SOURCES = [
    ("MR_small_implicit.dcm", "Implicit VR Little Endian"),
    ("CT_small.dcm", "Explicit VR Little Endian"),
    ("image_dfl.dcm", "Deflated Explicit VR Little Endian"),
    ("MR_small_bigendian.dcm", "Explicit VR Big Endian (retired)"),
    ("ExplVR_BigEnd.dcm", "Explicit VR Big Endian, 8-bit RGB ultrasound"),
    ("liver_expb_1frame.dcm", "Explicit VR Big Endian, 1-bit segmentation"),
    ("SC_rgb_jpeg_dcmtk.dcm", "JPEG Baseline, YBR_FULL"),
    ("JPEG-lossy.dcm", "JPEG Extended, 12-bit"),
    ("JPEG-LL.dcm", "JPEG Lossless SV1"),
    ("MR_small_jpeg_ls_lossless.dcm", "JPEG-LS Lossless"),
    ("JPEGLSNearLossless_08.dcm", "JPEG-LS Near-Lossless"),
    ("MR_small_jp2klossless.dcm", "JPEG 2000 Lossless"),
    ("US1_J2KR.dcm", "JPEG 2000 Lossless, YBR_RCT ultrasound"),
    ("JPEG2000.dcm", "JPEG 2000"),
    ("MR_small_RLE.dcm", "RLE Lossless"),
    ("liver.dcm", "Segmentation, 1-bit, 3 frames"),
    ("emri_small.dcm", "Enhanced MR, 10 frames"),
]


def _fresh(ds: Dataset, label: str) -> Dataset:
    """New study/series/instance UIDs (pydicom's files share some) and a patient per file."""
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientID = f"CONF-{label}"[:64]
    return ds


def _derived(workdir: Path) -> list[tuple[str, Path]]:
    """Instances pydicom has no file for: a retired-class ultrasound and a multi-frame one."""
    out = []
    base = dcmread(get_testdata_file("US1_UNCR.dcm"))
    retired = _fresh(base.copy(), "retired-us")
    retired.SOPClassUID = retired.file_meta.MediaStorageSOPClassUID = RETIRED_US
    out.append(("retired Ultrasound Image Storage 1.2.840.10008.5.1.4.1.1.6", retired))
    multi = _fresh(base.copy(), "us-multiframe")
    multi.SOPClassUID = multi.file_meta.MediaStorageSOPClassUID = US_MULTIFRAME
    multi.NumberOfFrames = 3
    multi.PixelData = bytes(base.PixelData) * 3
    out.append(("Ultrasound Multi-frame, 3 frames", multi))
    sloppy = dcmread(get_testdata_file("CT_small.dcm"))
    _fresh(sloppy, "sloppy-uid")
    sloppy.SOPInstanceUID = sloppy.file_meta.MediaStorageSOPInstanceUID = generate_uid() + ".01.234567890.12345"
    out.append(("CT whose SOP Instance UID is longer than 64 characters (stored with 0xB007)", sloppy))
    paths = []
    for i, (why, ds) in enumerate(out):
        path = workdir / f"derived{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append((why, path))
    return paths


def prepare(workdir: Path) -> list[dict]:
    cases = []
    for i, (name, why) in enumerate(SOURCES):
        ds = _fresh(dcmread(get_testdata_file(name)), Path(name).stem)
        path = workdir / f"in{i:02d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        cases.append({"file": name, "why": why, "path": path})
    for why, path in _derived(workdir):
        cases.append({"file": path.name, "why": why, "path": path})
    for case in cases:
        ds = dcmread(case["path"])
        case.update(sop=str(ds.SOPInstanceUID), study=str(ds.StudyInstanceUID), patient=str(ds.PatientID),
                    series=str(ds.SeriesInstanceUID),
                    syntax=str(ds.file_meta.TransferSyntaxUID), sop_class=str(ds.SOPClassUID))
    return cases


def pixels(ds: Dataset):
    """Decoded pixel values as pydicom gives them (YBR converted to RGB), or None."""
    if "PixelData" not in ds:
        return None
    return ds.pixel_array


def same_pixels(a: Dataset, b: Dataset) -> bool:
    pa, pb = pixels(a), pixels(b)
    if pa is None or pb is None:
        return pa is None and pb is None
    return pa.shape == pb.shape and np.array_equal(pa, pb)


def run(command: list, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TCP_NODELAY": "1"}, **kwargs)


class Receivers:
    """Two storescp processes, one accepting uncompressed syntaxes only, one accepting all."""

    def __init__(self, workdir: Path):
        self.ports = {"RAW": free_port(), "ALL": free_port()}
        self.dirs = {name: workdir / f"recv-{name}" for name in self.ports}
        self.procs = []
        for name, port in self.ports.items():
            self.dirs[name].mkdir()
            extra = ["+xa"] if name == "ALL" else []
            self.procs.append(subprocess.Popen(
                ["/usr/bin/storescp", "+B", "-aet", name, *extra, "-od", str(self.dirs[name]), "-uf", str(port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(0.5)

    def take(self, name: str) -> dict[str, Path]:
        """Files received so far, by SOP Instance UID; emptied for the next round."""
        found = {}
        for path in list(self.dirs[name].iterdir()):
            found[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path
        return found

    def clear(self, name: str) -> None:
        for path in self.dirs[name].iterdir():
            path.unlink()

    def stop(self):
        for proc in self.procs:
            proc.terminate()
            proc.wait(timeout=10)


def main(workdir: Path) -> dict:
    logging.getLogger("pynetdicom").setLevel(logging.ERROR)
    cases = prepare(workdir)
    runtime = bootstrap(Settings(_env_file=None, data_dir=workdir / "var"), component="test")
    receivers = Receivers(workdir)
    port = free_port()
    with runtime.db.scope() as session:
        service.add_institution(session=session, code="T01", name="镇卫生院", level="township")
        service.add_node(session=session, ae_title="MODALITY", institution_code="T01")
        service.add_node(session=session, ae_title="PACS", institution_code="T01", can="store,query,retrieve")
        for name, dest_port in receivers.ports.items():
            service.add_node(session=session, ae_title=name, institution_code="T01", host="127.0.0.1",
                             port=dest_port)
        user = identity.add_user(session=session, username="rad", role="radiographer", institution_code="T01",
                                 password="password-1")
        token = identity.issue_token(session=session, user=user)[0]
    server = start_server(Receiver(runtime), runtime.settings, host="127.0.0.1", port=port)
    try:
        store_in(cases, port)
        stored = stored_objects(runtime, cases)
        find_each(cases, port)
        for name in ("RAW", "ALL"):
            move_each(cases, port, receivers, name, stored)
        get_each(cases, port, workdir, stored)
        get_all_each(cases, port, stored)
        wado_each(cases, runtime, token, stored)
    finally:
        server.shutdown()
        receivers.stop()
    return {"cases": [{k: v for k, v in c.items() if k != "path"} for c in cases]}


def store_in(cases: list[dict], port: int) -> None:
    """One pynetdicom association for everything, each file in its own syntax (one context
    per SOP class and transfer syntax, so nothing is converted on the way in), the retired
    class among the others. dcmtk's storescu converts to little endian by default and has
    no SEG context; its proposals are tested in tests/imaging/test_conformance.py."""
    from pynetdicom import AE

    ae = AE(ae_title="MODALITY")
    for pair in dict.fromkeys((c["sop_class"], c["syntax"]) for c in cases):
        ae.add_requested_context(*pair[:1], [pair[1]])
    assoc = ae.associate("127.0.0.1", port, ae_title="LANCANG")
    try:
        for case in cases:
            status = assoc.send_c_store(case["path"])
            case["c_store"] = f"0x{int(status.Status):04X}" if "Status" in status else "no response"
    finally:
        assoc.release()


def stored_objects(runtime, cases: list[dict]) -> dict[str, bytes]:
    from sqlalchemy import select

    from imaging.models import Instance

    with runtime.db.scope(readonly=True) as session:
        keys = dict(session.execute(select(Instance.sop_instance_uid, Instance.object_key)).all())
    return {sop: runtime.store.get(key) for sop, key in keys.items()}


def find_each(cases: list[dict], port: int) -> None:
    for case in cases:
        done = run(["/usr/bin/findscu", "-S", "-aet", "PACS", "-aec", "LANCANG", "-k", "QueryRetrieveLevel=STUDY",
                    "-k", f"StudyInstanceUID={case['study']}", "-k", "NumberOfStudyRelatedInstances",
                    "127.0.0.1", port])
        case["c_find"] = re.search(r"\(0020,1208\) IS \[1 ?\]", done.stdout + done.stderr) is not None


def _compare(case: dict, received: Path | None, stored: bytes | None, *, identical_expected: bool) -> str:
    """'identical' (data set bytes as stored), 'pixels' (converted, same pixel values), or
    what went wrong."""
    if stored is None:
        return "not stored"
    if received is None:
        return "missing"
    got = received.read_bytes()
    if dataset_bytes(got) == dataset_bytes(stored):
        return "identical"
    if identical_expected:
        return "changed"
    original, arrived = dcmread(io.BytesIO(stored)), dcmread(io.BytesIO(got))
    if UID(str(arrived.file_meta.TransferSyntaxUID)).is_compressed:
        return f"arrived compressed {arrived.file_meta.TransferSyntaxUID}"
    return "pixels" if same_pixels(original, arrived) else "pixels differ"


def move_each(cases: list[dict], port: int, receivers: Receivers, name: str, stored: dict) -> None:
    for case in cases:
        receivers.clear(name)
        done = run(["/usr/bin/movescu", "-d", "-S", "-aet", "PACS", "-aec", "LANCANG", "-aem", name,
                    "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={case['study']}", "127.0.0.1", port])
        output = done.stdout + done.stderr
        arrived = receivers.take(name).get(case["sop"])
        case[f"move_{name}"] = _compare(case, arrived, stored.get(case["sop"]), identical_expected=name == "ALL")
        case[f"move_{name}_counts"] = sub_operation_counts(output)


def sub_operation_counts(output: str) -> dict[str, int]:
    """The final response's counts as dcmtk prints them ("Number of Completed Suboperations : 1")."""
    counts = {}
    for kind in ("Remaining", "Completed", "Failed", "Warning"):
        found = re.findall(rf"Number of {kind} Suboperations\s*:\s*(\d+)", output)  # getscu -v
        found += re.findall(rf"D: {kind} Suboperations\s*:\s*(\d+)", output)  # movescu -d
        counts[kind.lower()] = int(found[-1]) if found else -1
    final = re.findall(r"(?:Received Final Move Response|Received C-GET Response) \(([^)]*)\)", output)
    final += re.findall(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})", output)[-1:]
    counts["final"] = final[-1] if final else ""
    return counts


def get_each(cases: list[dict], port: int, workdir: Path, stored: dict) -> None:
    """getscu with its defaults (it offers to take uncompressed syntaxes only)."""
    out = workdir / "get"
    out.mkdir()
    for case in cases:
        for path in out.iterdir():
            path.unlink()
        done = run(["/usr/bin/getscu", "-v", "+B", "-S", "-aet", "PACS", "-aec", "LANCANG", "-od", out, "-k", "QueryRetrieveLevel=STUDY",
             "-k", f"StudyInstanceUID={case['study']}", "127.0.0.1", port])
        arrived = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in out.iterdir()}
        case["get_default"] = _compare(case, arrived.get(case["sop"]), stored.get(case["sop"]),
                                       identical_expected=False)
        case["get_default_counts"] = sub_operation_counts(done.stdout + done.stderr)


def get_all_each(cases: list[dict], port: int, stored: dict) -> None:
    """C-GET by a pynetdicom SCU that takes every syntax the study holds, one per context:
    what arrives must be the stored data set bytes."""
    from pynetdicom import AE, build_role, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

    for case in cases:
        received: dict[str, bytes] = {}

        def on_store(event):
            # In this process pynetdicom spools received data sets (imaging/compat_pynetdicom.py) to a
            # file that holds File Meta first.
            try:
                spooled = event.dataset_path
            except AttributeError:
                spooled = None
            raw = Path(spooled).read_bytes() if spooled else event.encoded_dataset(include_meta=False)
            received[str(event.request.AffectedSOPInstanceUID)] = dataset_bytes(raw) if raw[128:132] == b"DICM" else raw
            return 0x0000

        ae = AE(ae_title="PACS")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        for syntax in dict.fromkeys([case["syntax"], "1.2.840.10008.1.2.1"]):
            ae.add_requested_context(case["sop_class"], [syntax])
        assoc = ae.associate("127.0.0.1", port, ae_title="LANCANG", ext_neg=[build_role(case["sop_class"], scp_role=True)],
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
        identifier = Dataset()
        identifier.QueryRetrieveLevel, identifier.StudyInstanceUID = "STUDY", case["study"]
        try:
            responses = list(assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet))
        finally:
            assoc.release()
        final = responses[-1][0] if responses else None
        got = received.get(case["sop"])
        original = stored.get(case["sop"])
        if original is None:
            case["get_all"] = "not stored"
        elif got is None:
            case["get_all"] = "missing"
        else:
            case["get_all"] = "identical" if got == dataset_bytes(original) else "changed"
        case["get_all_counts"] = {
            "remaining": int(final.get("NumberOfRemainingSuboperations", 0)) if final else -1,
            "completed": int(final.get("NumberOfCompletedSuboperations", -1)) if final else -1,
            "failed": int(final.get("NumberOfFailedSuboperations", -1)) if final else -1,
            "warning": int(final.get("NumberOfWarningSuboperations", -1)) if final else -1,
            "final": f"{int(final.Status):04x}" if final is not None and "Status" in final else ""}


def wado_each(cases: list[dict], runtime, token: str, stored: dict) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(runtime.settings)) as client:
        for case in cases:
            url = f"/dicom-web/studies/{case['study']}/series/{case['series']}/instances/{case['sop']}"
            for label, accept in (("wado_default", 'multipart/related; type="application/dicom"'),
                                  ("wado_any", 'multipart/related; type="application/dicom"; transfer-syntax=*')):
                answer = client.get(url, headers={**headers, "Accept": accept})
                if answer.status_code != 200:
                    case[label] = f"HTTP {answer.status_code}"
                    continue
                part = _single_part(answer)
                path = Path(f"/tmp/wado-{os.getpid()}.dcm")
                path.write_bytes(part)
                case[label] = _compare(case, path, stored.get(case["sop"]), identical_expected=label == "wado_any")
                path.unlink()


def _single_part(answer) -> bytes:
    boundary = answer.headers["content-type"].split("boundary=", 1)[1].split(";")[0].strip('"')
    body = answer.content
    first = body.index(b"\r\n\r\n", body.index(boundary.encode())) + 4
    end = body.index(b"\r\n--" + boundary.encode(), first)
    return body[first:end]


if __name__ == "__main__":
    verdict = main(Path(sys.argv[1]))
    print(json.dumps(verdict, ensure_ascii=False))
