"""The printable film sheet: an A4 PDF with the header, key images and a QR code that
really scans (poppler renders the page, zbar decodes it), made by a real worker process."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.uid import generate_uid
from sqlalchemy import select

from film import service as shares
from film import sheet as filmsheet
from imaging import derive, keyimages
from storage import fonts
from storage.settings import Settings
from film.models import Share
from imaging.service import Ingestor
from storage import service as tenancy
from storage.access import SYSTEM
from tests.conftest import embedded_settings, settings_env
from tests.dicomdata import ct_instance
from storage import identity
from web.app import create_app

pytestmark = pytest.mark.skipif(not all(shutil.which(t) for t in ("pdftoppm", "pdftotext", "zbarimg", "pdfimages")),
                                reason="poppler-utils and zbar-tools are needed (scripts/test.sh installs them)")


def _study(runtime, *, slices=(5, 2)) -> tuple[str, int]:
    with runtime.db.scope() as session:
        town = tenancy.add_institution(session=session, code="TOWN", name="勐朗镇卫生院", level="township")
        user = identity.add_user(session=session, username="rad", role="radiographer", institution_code="TOWN",
                                 password="password-1")
        token = identity.issue_token(session=session, user=user)[0]
        town_id = town.id
    ingestor = Ingestor(runtime.db, runtime.store)
    study_uid = generate_uid()
    series_pks = set()
    for count in slices:
        series_uid = generate_uid()
        for number in range(1, count + 1):
            series_pks.add(ingestor.ingest(ct_instance(study_uid=study_uid, series_uid=series_uid, size=128,
                                                       instance_number=number), institution_id=town_id,
                                           source="test").series_pk)
    ingestor.close()
    for pk in series_pks:
        derive.derive_series(runtime.db, runtime.store, pk)
    return study_uid, token


def _share(runtime, study_uid: str) -> shares.CreatedShare:
    settings = runtime.settings
    with runtime.db.scope() as session:
        created = shares.create_share(session=session, principal=SYSTEM, study_uid=study_uid,
                                      secret_key=settings.effective_secret_key,
                                      public_url=settings.effective_public_url)
        session.expunge(created.share)
    return created


def _run(*command: str) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


@pytest.mark.parametrize("backend", ["embedded"])
def test_sheet_shows_header_key_images_and_a_qr_code_that_scans(runtime, tmp_path):
    study_uid, _ = _study(runtime)
    created = _share(runtime, study_uid)
    key = filmsheet.make_film_sheet(runtime.db, runtime.store, created.share.id,
                                    secret_key=runtime.settings.effective_secret_key,
                                    public_url=runtime.settings.effective_public_url)
    assert key == f"derived/{study_uid}/film/share-{created.share.id}.pdf"
    pdf = tmp_path / "film.pdf"
    pdf.write_bytes(runtime.store.get(key))
    assert pdf.read_bytes().startswith(b"%PDF")

    info = _run("pdfinfo", str(pdf))
    assert re.search(r"^Pages:\s+1$", info, re.M) and "(A4)" in info
    text = _run("pdftotext", "-layout", str(pdf), "-")
    for words in ("勐朗镇卫生院", "云胶片", "胸部CT平扫", "张秀英", "2026年11月1日", "提取码", "手机扫码查看影像"):
        assert words in text, words
    assert created.pin not in text                  # the PIN is never printed
    images = [line for line in _run("pdfimages", "-list", str(pdf)).splitlines()[2:] if line.strip()]
    # 16.16: a chest CT prints each picked slice in the lung and the mediastinal window
    # (12 cells: 3 + 2 slices of the two series, twice), and the sheet names the patient fully.
    assert len(images) == 10
    assert "肺窗 Lung" in text and "纵隔窗 Mediastinum" in text
    assert "女 F" in text and "41岁" in text and "P001" in text

    _run("pdftoppm", "-r", "150", "-png", "-singlefile", str(pdf), str(tmp_path / "page"))
    decoded = subprocess.run(["zbarimg", "--quiet", "--raw", str(tmp_path / "page.png")], capture_output=True,
                             text=True)
    assert decoded.stdout.strip() == created.url
    page = np.asarray(Image.open(tmp_path / "page.png").convert("L"), dtype=float)
    grid = page[int(page.shape[0] * 0.2):int(page.shape[0] * 0.4)]
    assert grid.std() > 40                           # the key images are drawn (not a blank page)

    # Idempotent: a redelivered task finds the sheet made and leaves it.
    before = runtime.store.get(key)
    assert filmsheet.make_film_sheet(runtime.db, runtime.store, created.share.id,
                                     secret_key=runtime.settings.effective_secret_key,
                                     public_url=runtime.settings.effective_public_url) == key
    assert runtime.store.get(key) == before


def test_key_images_are_spread_through_the_series():
    @dataclass
    class Fake:
        id: int

    one = [(Fake(1), list(range(100)))]
    picks = filmsheet._pick_key_images(one, 12)
    positions = [p for _, _, p in picks]
    assert len(picks) == 12 and positions == sorted(positions) and 0 < positions[0] < 10 and positions[-1] > 90
    three = [(Fake(i), list(range(30))) for i in range(3)]
    assert [len([p for p in filmsheet._pick_key_images(three, 12) if p[0].id == i]) for i in range(3)] == [4, 4, 4]
    many = [(Fake(i), list(range(9))) for i in range(20)]
    assert [(s.id, p) for s, _, p in filmsheet._pick_key_images(many, 12)] == [(i, 4) for i in range(12)]
    assert filmsheet._pick_key_images([(Fake(1), [])], 12) == []


@pytest.mark.parametrize("backend", ["embedded"])
def test_radiographer_downloads_the_sheet_once_made(runtime):
    study_uid, token = _study(runtime, slices=(3,))
    bearer = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(runtime.settings)) as client:
        assert client.get(f"/api/studies/{study_uid}/film.pdf", headers=bearer).status_code == 404  # no link yet
        share_id = client.post(f"/api/studies/{study_uid}/shares", headers=bearer).json()["id"]
        pending = client.get(f"/api/shares/{share_id}/film.pdf", headers=bearer)
        assert pending.status_code == 202 and pending.headers["retry-after"] == "3"
        html = client.get(f"/api/shares/{share_id}/film.pdf", headers={**bearer, "accept": "text/html"})
        assert html.status_code == 202 and "胶片页正在生成" in html.text
        filmsheet.make_film_sheet(runtime.db, runtime.store, share_id,
                                  secret_key=runtime.settings.effective_secret_key,
                                  public_url=runtime.settings.effective_public_url)
        for path in (f"/api/shares/{share_id}/film.pdf", f"/api/studies/{study_uid}/film.pdf"):
            ready = client.get(path, headers=bearer)
            assert ready.status_code == 200 and ready.headers["content-type"] == "application/pdf"
            assert ready.content.startswith(b"%PDF") and "attachment" in ready.headers["content-disposition"]
        listing = client.get(f"/api/studies/{study_uid}/shares", headers=bearer).json()
        assert listing[0]["film_state"] == "ready" and listing[0]["film_url"]
        assert client.get(f"/api/shares/{share_id}/film.pdf").status_code == 401
        client.delete(f"/api/shares/{share_id}", headers=bearer)
        assert client.get(f"/api/studies/{study_uid}/film.pdf", headers=bearer).status_code == 404
    # A sheet is not made for a revoked link.
    assert filmsheet.make_film_sheet(runtime.db, runtime.store, share_id, secret_key="x", public_url="http://x") is None


def test_a_real_worker_makes_the_sheet_after_the_share_is_created(tmp_path):
    settings = embedded_settings(tmp_path)
    from storage.runtime import bootstrap

    runtime = bootstrap(settings, component="test")
    study_uid, _ = _study(runtime, slices=(4,))
    worker = subprocess.Popen([sys.executable, "-m", "lancang.cli", "worker", "--concurrency", "1",
                               "--queues", "render"], env=settings_env(settings), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        created = _share(runtime, study_uid)  # sends imaging.make_film_sheet after the commit
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with runtime.db.scope(readonly=True) as session:
                row = session.scalar(select(Share).where(Share.id == created.share.id))
            if row.film_state == "ready":
                break
            time.sleep(0.3)
        assert row.film_state == "ready", "the worker never made the film sheet"
        assert runtime.store.get(row.film_key).startswith(b"%PDF")
    finally:
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=30)
    assert "imaging.make_film_sheet" in output


def test_a_missing_font_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(fonts, "CJK_FONT_CANDIDATES", (str(tmp_path / "none.ttc"),))
    monkeypatch.setattr(filmsheet, "get_settings", lambda: Settings(film_font="", report_font=""))
    with pytest.raises(filmsheet.FilmFontError, match="fonts-noto-cjk"):
        filmsheet.find_font()


@pytest.mark.parametrize("backend", ["embedded"])
def test_a_single_radiograph_fills_the_page(runtime, tmp_path):
    """16.16: one DR image is printed across the page, not in a 64 mm cell of a 3-column grid."""
    with runtime.db.scope() as session:
        town = tenancy.add_institution(session=session, code="TOWN", name="勐朗镇卫生院", level="township").id
    study_uid = generate_uid()
    ingestor = Ingestor(runtime.db, runtime.store)
    done = ingestor.ingest(ct_instance(study_uid=study_uid, modality="DX", size=256,
                                       sop_class="1.2.840.10008.5.1.4.1.1.1.1"), institution_id=town, source="test")
    ingestor.close()
    derive.derive_series(runtime.db, runtime.store, done.series_pk)
    created = _share(runtime, study_uid)
    key = filmsheet.make_film_sheet(runtime.db, runtime.store, created.share.id,
                                    secret_key=runtime.settings.effective_secret_key,
                                    public_url=runtime.settings.effective_public_url)
    pdf = tmp_path / "dr.pdf"
    pdf.write_bytes(runtime.store.get(key))
    placed = _run("pdfimages", "-list", str(pdf)).splitlines()[2:]
    assert len([line for line in placed if line.strip()]) == 1
    # pdfimages prints each placement's resolution: 256 pixels over a 64 mm grid cell would be
    # ~100 ppi; over the page width (~186 mm) ~35 ppi.
    header = placed[0].split() if placed else []
    row = _run("pdfimages", "-list", str(pdf)).splitlines()[2].split()
    x_ppi = float(row[12])
    assert x_ppi < 45, (header, row)
    assert filmsheet.grid_columns(1) == 1 and filmsheet.grid_columns(4) == 2 and filmsheet.grid_columns(9) == 3


def test_the_sheet_prints_the_final_impression(tmp_path):
    """16.16: once the report is final the sheet carries its impression (the content comes from
    consult's patient_report, the same the patient page shows)."""
    pdf = tmp_path / "final.pdf"
    pdf.write_bytes(filmsheet.build_film_sheet(filmsheet.FilmSheetContent(
        institution="勐朗镇卫生院", patient_name="张秀英", exam="胸部X线", date="2026年11月1日", accession="A1",
        url="https://yxy.example.cn/f/x", expires="2027-01-01", sex="女 F", age="41岁", patient_id="P001",
        impression="右下肺炎，建议抗感染治疗后复查")))
    text = _run("pdftotext", "-layout", str(pdf), "-")
    assert "诊断意见 Impression" in text and "右下肺炎" in text and "41岁" in text


def _key_object(study_uid: str, series_uid: str, flagged: list[str]) -> bytes:
    """A Key Object Selection document (what a PACS or a reader's workstation sends) flagging
    `flagged` CT instances, in that order."""
    import io as _io

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ko = Dataset()
    ko.SpecificCharacterSet = "ISO_IR 192"
    ko.SOPClassUID, ko.SOPInstanceUID = keyimages.KEY_OBJECT_SELECTION, generate_uid()
    ko.StudyInstanceUID, ko.SeriesInstanceUID = study_uid, generate_uid()
    ko.Modality, ko.SeriesNumber, ko.InstanceNumber = "KO", 99, 1
    ko.PatientName, ko.PatientID = "张^秀英", "P001"
    ko.ValueType = "CONTAINER"
    content = []
    for uid in flagged:
        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", uid
        item = Dataset()
        item.RelationshipType, item.ValueType, item.ReferencedSOPSequence = "CONTAINS", "IMAGE", [ref]
        content.append(item)
    ko.ContentSequence = content
    series = Dataset()
    series.SeriesInstanceUID, series.ReferencedSOPSequence = series_uid, [i.ReferencedSOPSequence[0] for i in content]
    evidence = Dataset()
    evidence.StudyInstanceUID, evidence.ReferencedSeriesSequence = study_uid, [series]
    ko.CurrentRequestedProcedureEvidenceSequence = [evidence]
    ko.file_meta = FileMetaDataset()
    ko.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ko.file_meta.MediaStorageSOPClassUID, ko.file_meta.MediaStorageSOPInstanceUID = ko.SOPClassUID, ko.SOPInstanceUID
    buffer = _io.BytesIO()
    ko.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize("backend", ["embedded"])
def test_key_images_flagged_by_a_key_object_come_first(runtime, tmp_path):
    """16.16: when a Key Object Selection document flags images, the sheet prints them first, in
    the document's order, marked as key images; the rest of the grid is filled as before."""
    with runtime.db.scope() as session:
        town = tenancy.add_institution(session=session, code="TOWN", name="勐朗镇卫生院", level="township").id
    study_uid, series_uid = generate_uid(), generate_uid()
    ingestor = Ingestor(runtime.db, runtime.store)
    sops = [ingestor.ingest(ct_instance(study_uid=study_uid, series_uid=series_uid, size=64, instance_number=n,
                                        modality="MR", sop_class="1.2.840.10008.5.1.4.1.1.4"),
                            institution_id=town, source="test").sop_instance_uid for n in range(1, 21)]
    ingestor.ingest(_key_object(study_uid, series_uid, [sops[16], sops[2]]), institution_id=town, source="test")
    ingestor.close()
    created = _share(runtime, study_uid)
    key = filmsheet.make_film_sheet(runtime.db, runtime.store, created.share.id,
                                    secret_key=runtime.settings.effective_secret_key,
                                    public_url=runtime.settings.effective_public_url)
    pdf = tmp_path / "ko.pdf"
    pdf.write_bytes(runtime.store.get(key))
    text = _run("pdftotext", "-layout", str(pdf), "-")
    captions = [line for line in text.splitlines() if "幅" in line]
    first_row = captions[0]
    assert first_row.index("关键图像 Key") < first_row.index("第 17 幅") < first_row.index("第 3 幅"), first_row
    assert text.count("关键图像 Key") == 2
    assert len(_run("pdfimages", "-list", str(pdf)).splitlines()[2:]) == filmsheet.KEY_IMAGES  # the QR is vector
    assert keyimages.flagged_uids("not json") == [] and keyimages.flagged_uids("{}") == []
