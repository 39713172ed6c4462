"""13.5: what one upload may cost. A STOW body past LANCANG_MAX_UPLOAD_BYTES is 413; a
deflated instance that inflates past LANCANG_MAX_INFLATED_BYTES is refused over STOW,
C-STORE and import before anything inflates it; a zip member past
LANCANG_MAX_INSTANCE_BYTES is rejected unread. Failed on the previous code: the bomb was
stored (0x0000 / 200) and the whole body was read into memory."""

from __future__ import annotations

import io
import zipfile

import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid
from sqlalchemy import func, select

from imaging.dicomweb import multipart
from imaging.importer import run_import
from imaging.limits import Limits, check_inflated, data_set_offset
from imaging.models import Instance
from imaging.service import Ingestor
from storage import service as tenancy
from tests.dicomdata import ct_instance
from tests.imaging.conftest import node, write_files  # noqa: F401 (fixture)
from storage import identity
from web.app import create_app

MiB = 1024 * 1024


def deflate_bomb(inflated_mib: int) -> bytes:
    """A small Deflated Explicit VR LE instance whose data set inflates to ~inflated_mib."""
    ds = dcmread(io.BytesIO(ct_instance(study_uid=generate_uid(), patient_id="BOMB")))
    ds.add_new(0x00091010, "LO", "BOMB")  # private creator
    ds.add_new(0x00091011, "OB", bytes(inflated_mib * MiB))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _instances(runtime) -> int:
    with runtime.db.scope(readonly=True) as session:
        return session.scalar(select(func.count()).select_from(Instance))


@pytest.fixture
def uploader(runtime):
    with runtime.db.scope() as session:
        tenancy.add_institution(session=session, code="T01", name="思茅镇卫生院", level="township")
        user = identity.add_user(session=session, username="tech", role="radiographer", institution_code="T01",
                                 password="password-1")
        return identity.issue_token(session=session, user=user)[0]


def test_inflation_is_measured_in_bounded_steps():
    bomb = deflate_bomb(40)
    assert len(bomb) < MiB // 4
    with pytest.raises(Exception, match="inflates beyond 8 MiB"):
        check_inflated(memoryview(bomb)[data_set_offset(bomb)[0]:], 8 * MiB)


def test_stow_refuses_a_deflate_bomb_and_an_oversized_body(runtime, uploader):
    settings = runtime.settings.model_copy(update={"max_inflated_bytes": 8 * MiB, "max_upload_bytes": 4 * MiB})
    headers = {"Authorization": f"Bearer {uploader}",
               "Content-Type": 'multipart/related; type="application/dicom"; boundary=XyZ'}
    bomb = deflate_bomb(40)
    good = ct_instance(study_uid=generate_uid(), patient_id="GOOD")
    with TestClient(create_app(settings)) as client:
        answer = client.post("/dicom-web/studies", headers=headers,
                             content=multipart.encode([("application/dicom", bomb), ("application/dicom", good)], "XyZ"))
        assert answer.status_code == 202, answer.text
        failed = answer.json()["00081198"]["Value"]
        assert [f["00081197"]["Value"][0] for f in failed] == [0xA700]
        assert len(answer.json()["00081199"]["Value"]) == 1  # the good one stored
        big = multipart.encode([("application/dicom", ct_instance(size=1100))], "XyZ")  # ~2.4 MB
        too_big = client.post("/dicom-web/studies", headers=headers, content=big + big)
        assert too_big.status_code == 413 and too_big.json()["error"] == "payload_too_large"

        def chunked():  # no Content-Length: refused while streaming
            for _ in range(3):
                yield big
        streamed = client.post("/dicom-web/studies", headers=headers, content=chunked())
        assert streamed.status_code == 413
    assert _instances(runtime) == 1


def test_c_store_refuses_a_deflate_bomb_before_decoding(node, tmp_path):
    from pynetdicom import AE

    node.receiver.limits = node.receiver.ingestor.limits = Limits(max_instance=64 * MiB, max_inflated=8 * MiB)
    bomb = deflate_bomb(40)
    ae = AE(ae_title="MOD1")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", [DeflatedExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", node.port, ae_title="LANCANG")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(write_files(tmp_path, [bomb])[0])
    finally:
        assoc.release()
    assert status.Status == 0xA700 and "inflates beyond" in str(status.get("ErrorComment", ""))
    assert _instances(node.runtime) == 0


def test_c_store_never_holds_an_oversized_instance_in_memory(node, tmp_path):
    """A 64 MiB uncompressed instance against an 8 MiB limit, sent by dcmtk's storescu (its
    own process, so only the receiver's allocations are traced). The data set goes to the
    spool file as it arrives and is refused by its size unread: the receiver's traced peak
    stays far below the instance. On the previous code pynetdicom gathered all 64 MiB in a
    BytesIO before the size check (peak > 64 MiB)."""
    import subprocess
    import tracemalloc

    from imaging.scp import spool_directory

    node.receiver.limits = node.receiver.ingestor.limits = Limits(max_instance=8 * MiB, max_inflated=8 * MiB)
    big = write_files(tmp_path / "big", [ct_instance(study_uid=generate_uid(), size=5800)])[0]
    assert big.stat().st_size > 64 * MiB
    tracemalloc.start()
    try:
        sent = subprocess.run(["/usr/bin/storescu", "-v", "-aet", "MOD1", "-aec", "LANCANG", "127.0.0.1",
                               str(node.port), str(big)], capture_output=True, text=True, timeout=120)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "Refused: OutOfResources" in sent.stderr, sent.stderr
    assert peak < 16 * MiB, f"receiver peak {peak / MiB:.1f} MiB for a refused 64 MiB instance"
    assert _instances(node.runtime) == 0
    assert not list(spool_directory(node.runtime.settings).glob("*.dcm"))  # nothing left behind


def test_a_broken_transfer_leaves_nothing_in_the_spool_for_long(node, tmp_path):
    """An association that breaks mid-data-set leaves pynetdicom's spool file behind (it
    unlinks only after the handler ran); the receiver sweeps files nobody writes to."""
    import subprocess
    import time as clock

    from imaging import compat_pynetdicom as netshim
    from imaging.scp import spool_directory

    big = write_files(tmp_path / "big", [ct_instance(study_uid=generate_uid(), size=4000)])[0]
    sender = subprocess.Popen(["/usr/bin/storescu", "-aet", "MOD1", "-aec", "LANCANG", "--max-send-pdu", "16384",
                               "127.0.0.1", str(node.port), str(big)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    spool = spool_directory(node.runtime.settings)
    deadline = clock.monotonic() + 30
    while not list(spool.glob("*.dcm")) and clock.monotonic() < deadline:
        clock.sleep(0.01)
    sender.kill()
    sender.wait()
    left = list(spool.glob("*.dcm"))
    assert left, "the transfer finished before it could be broken"
    clock.sleep(0.5)
    assert netshim.sweep(spool, idle_s=60) == 0  # recent: may still be in use
    assert netshim.sweep(spool, idle_s=0.1) == len(left)
    assert not list(spool.glob("*.dcm"))
    assert _instances(node.runtime) == 0


def test_a_declared_element_length_costs_only_the_bytes_received(runtime):
    """Bare (not deflated) data: an element claiming ~4 GiB inside a small instance is read
    only as far as the bytes go, so its cost is bounded by LANCANG_MAX_INSTANCE_BYTES; the
    instance is refused with a reason, never allocated."""
    import struct
    import tracemalloc

    from imaging.dataset import InvalidInstance

    data = ct_instance(study_uid=generate_uid())
    start, _ = data_set_offset(data)
    claim = struct.pack("<HH", 0x0009, 0x1012) + b"OB\0\0" + struct.pack("<I", 0xFFFFFFF0)
    evil = data[:start] + claim + data[start:]
    ingestor = Ingestor(runtime.db, runtime.store)
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInstance):
            ingestor.ingest(evil, institution_id=1, source="test")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        ingestor.close()
    assert peak < 4 * MiB


def test_import_rejects_oversized_zip_members_unread(runtime, tmp_path):
    with runtime.db.scope() as session:
        institution = tenancy.add_institution(session=session, code="T09", name="镇卫生院", level="township")
        institution_id = institution.id
    archive = tmp_path / "cd.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as out:
        out.writestr("big.dcm", bytes(20 * MiB))  # 20 MiB of zeros: ~20 KB in the zip
        out.writestr("bomb.dcm", deflate_bomb(40))
        out.writestr("ok.dcm", ct_instance(study_uid=generate_uid()))
    ingestor = Ingestor(runtime.db, runtime.store, limits=Limits(max_instance=8 * MiB, max_inflated=8 * MiB))
    try:
        summary = run_import(ingestor, [archive], institution_id=institution_id)
    finally:
        ingestor.close()
    reasons = " ".join(summary.lines())
    assert "LANCANG_MAX_INSTANCE_BYTES" in reasons and "inflates beyond" in reasons, reasons
    assert _instances(runtime) == 1
