"""Issue 19: an obstetric report, once co-signed, goes into its study as a TID 5000 OB-GYN
Ultrasound Procedure Report (Comprehensive SR, imaging/ob_sr.py) through the Ingestor:

* dciodvfy finds no error in the stored object (its only warnings: the private coding scheme
  99LANCANG, which dicom3tools cannot know, for presentation and placenta);
* pydicom reads every measurement back with its value, UCUM unit and code, the dates, the
  private codes; highdicom parses the document;
* the study lists the SR series (study API and QIDO-RS); exporting the same final again adds
  nothing; the final PDF prints the biometry table.

On the previous code a co-signed obstetric report left nothing in the study."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from consult import reports
from consult.models import ConsultRequest
from imaging import ob_sr
from imaging.models import Instance, Series, Study
from imaging.service import Ingestor
from storage.models import Institution
from tests.consult import test_flow
from tests.dicomdata import ct_instance

world, api, ok = test_flow.world, test_flow.api, test_flow.ok
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
FIELDS = {"ga_weeks": "24+1", "lmp": "2026-05-16", "bpd_mm": "60", "hc_mm": "222", "ac_mm": "196", "fl_mm": "44",
          "efw_g": "680", "afi_cm": "12", "fhr_bpm": "146", "cervix_mm": "38", "presentation": "头位",
          "placenta": "前壁", "placenta_grade": "I", "gravida": "2", "para": "1"}
# What dciodvfy may say that is not an error: dicom3tools knows no private coding scheme.
EXPLAINED = ("Unrecognized defined term <99LANCANG> for value 1 of attribute <Coding Scheme Designator>",)


@pytest.fixture(params=["embedded"])
def backend(request):
    return request.param


def _us_study(runtime) -> str:
    """Two obstetric ultrasound images of 张秀英 at the township (the consult's study)."""
    study_uid, series_uid = generate_uid(), generate_uid()
    with runtime.db.scope(readonly=True) as session:
        town_id = session.scalar(select(Institution.id).where(Institution.code == "TOWN"))
    ingestor = Ingestor(runtime.db, runtime.store)
    for n in (1, 2):
        ingestor.ingest(ct_instance(study_uid=study_uid, series_uid=series_uid, instance_number=n, modality="US",
                                    sop_class=US_IMAGE, body_part="PELVIS", size=32),
                        institution_id=town_id, source="test")
    ingestor.close()
    return study_uid


def _final_obstetric_report(api, study_uid: str) -> dict:
    cid = ok(api("POST", "li", "/api/consults", json={
        "kind": "read", "target": "COUNTY", "study_uids": [study_uid], "clinical_question": "孕24周，胎儿生长评估"}),
        201)["id"]
    ok(api("POST", "zhou", f"/api/consults/{cid}/accept"))
    ok(api("POST", "zhou", f"/api/consults/{cid}/assign", json={"reader": "wang", "reviewer": "chen"}))
    ok(api("PUT", "wang", f"/api/consults/{cid}/report/draft", json={
        "template": "obstetric_us", "findings": "宫内单活胎，胎心搏动可见，胎位头位。",
        "impression": "宫内单活胎，超声孕周与孕龄相符。", "recommendation": "4周后复查", "fields": FIELDS}))
    ok(api("POST", "wang", f"/api/consults/{cid}/report/sign", json={"password": "sign-wang"}))
    return ok(api("POST", "chen", f"/api/consults/{cid}/report/cosign", json={"password": "sign-chen"}))


def _documents(runtime, study_uid: str) -> list[tuple[str, str]]:
    with runtime.db.scope(readonly=True) as session:
        return session.execute(
            select(Instance.sop_instance_uid, Instance.object_key).join(Series, Series.id == Instance.series_pk)
            .join(Study, Study.id == Series.study_pk)
            .where(Study.study_instance_uid == study_uid, Instance.sop_class_uid == ob_sr.COMPREHENSIVE_SR)).all()


def dciodvfy(data: bytes, tmp_path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) dciodvfy prints for the object."""
    tool = shutil.which("dciodvfy")
    assert tool, "dciodvfy is needed (Debian dicom3tools)"
    path = tmp_path / "ob-sr.dcm"
    path.write_bytes(data)
    done = subprocess.run([tool, str(path)], capture_output=True, text=True)
    lines = (done.stdout + done.stderr).splitlines()
    return ([line for line in lines if line.startswith("Error")],
            [line for line in lines if line.startswith("Warning")])


def _code(item) -> tuple[str, str]:
    return item.CodeValue, item.CodingSchemeDesignator


def _walk(item, found: dict) -> None:
    for child in item.get("ContentSequence", []):
        if child.ValueType in ("DATE", "CODE", "TEXT"):
            key = _code(child.ConceptNameCodeSequence[0])
            found.setdefault(child.ValueType, {})[key] = (
                child.Date if child.ValueType == "DATE" else
                _code(child.ConceptCodeSequence[0]) if child.ValueType == "CODE" else child.TextValue)
        _walk(child, found)


@pytest.mark.parametrize("backend", ["embedded", "servers"])
def test_the_cosigned_obstetric_report_is_a_valid_tid_5000_sr_in_the_study(runtime, world, api, tmp_path):
    study_uid = _us_study(runtime)
    final = _final_obstetric_report(api, study_uid)
    documents = _documents(runtime, study_uid)
    assert len(documents) == 1
    data = runtime.store.get(documents[0].object_key)
    errors, warnings = dciodvfy(data, tmp_path)
    assert errors == []
    assert {w.removeprefix("Warning - ") for w in warnings if "DICOMDIR" not in w} <= set(EXPLAINED), warnings

    ds = dcmread(io.BytesIO(data))
    assert (ds.SOPClassUID, ds.Modality, ds.StudyInstanceUID) == (ob_sr.COMPREHENSIVE_SR, "SR", study_uid)
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "5000"
    assert _code(ds.ConceptNameCodeSequence[0]) == ("125000", "DCM")
    assert (ds.CompletionFlag, ds.VerificationFlag, ds.PreliminaryFlag) == ("COMPLETE", "VERIFIED", "FINAL")
    assert ds.VerifyingObserverSequence[0].VerifyingOrganization == "普洱市人民医院"  # chen co-signed
    assert {s.StudyInstanceUID for s in ds.CurrentRequestedProcedureEvidenceSequence} == {study_uid}
    assert isinstance(hd.sr.ComprehensiveSR.from_dataset(ds), hd.sr.ComprehensiveSR)
    _every_value_reads_back(ds)

    # listed by the study's series, as any instance
    series = ok(api("GET", "chen", f"/api/studies/{study_uid}"))["series"]
    assert ("SR", ob_sr.SERIES_DESCRIPTION) in {(s["modality"], s["description"]) for s in series}
    qido = api("GET", "li", f"/dicom-web/studies/{study_uid}/series", params={"Modality": "SR"}).json()
    assert [item["0020000E"]["Value"][0] for item in qido] == [ds.SeriesInstanceUID]

    # the same final exported again adds nothing
    with runtime.db.scope() as session:
        consult = session.get(ConsultRequest, final["id"])
        report = reports.get_report(session=session, consult=consult)
        reports._export_obstetric_sr(session, runtime.store, consult, report, report.versions[-1])
    assert len(_documents(runtime, study_uid)) == 1
    with runtime.db.scope(readonly=True) as session:
        assert session.scalar(select(func.count()).select_from(Series).join(Study, Study.id == Series.study_pk)
                              .where(Study.study_instance_uid == study_uid, Series.modality == "SR")) == 1


def _every_value_reads_back(ds) -> None:
    numbers = {}
    for reading in ob_sr.readings(ds):
        numbers.setdefault((reading.container, reading.concept[:2]), []).append((reading.value, reading.unit))
    group, fetus = ("125005", "DCM"), ("125008", "DCM")
    expected = {
        (group, ("11820-8", "LN")): [(60.0, ("mm", "UCUM"))], (group, ("11984-2", "LN")): [(222.0, ("mm", "UCUM"))],
        (group, ("11979-2", "LN")): [(196.0, ("mm", "UCUM"))], (group, ("11963-6", "LN")): [(44.0, ("mm", "UCUM"))],
        (("121070", "DCM"), ("11627-7", "LN")): [(12.0, ("cm", "UCUM"))],
        (("125011", "DCM"), ("11961-0", "LN")): [(38.0, ("mm", "UCUM"))],
        (fetus, ("11948-7", "LN")): [(146.0, ("{H.B.}/min", "UCUM"))],
        (fetus, ("18185-9", "LN")): [(169.0, ("d", "UCUM"))], (fetus, ("11885-1", "LN")): [(169.0, ("d", "UCUM"))],
        (("121118", "DCM"), ("11996-6", "LN")): [(2.0, ("1", "UCUM"))],
        (("121118", "DCM"), ("11977-6", "LN")): [(1.0, ("1", "UCUM"))],
    }
    for key, values in expected.items():
        assert numbers.get(key) == values, key
    ga_by_measurement = numbers[(group, ("18185-9", "LN"))]
    assert len(ga_by_measurement) == 4
    assert all(unit == ("d", "UCUM") and 160 <= v <= 180 for v, unit in ga_by_measurement)
    (efw, unit), = numbers[(fetus, ("11727-5", "LN"))]
    assert unit == ("g", "UCUM") and 600 < efw < 780
    (composite, unit), = numbers[(fetus, ("11888-5", "LN"))]
    assert unit == ("d", "UCUM") and abs(composite - 169) <= 2
    assert {key[1] for key in numbers if key[0] == ("125001", "DCM")} == {("11947-9", "LN"), ("11871-1", "LN"),
                                                                         ("11872-9", "LN")}
    found: dict = {}
    _walk(ds, found)
    assert found["DATE"][("8665-2", "LN")] == "20260516" and found["DATE"][("11778-8", "LN")] == "20270220"
    assert found["CODE"][("OB-PRES", "99LANCANG")] == ("CEPHALIC", "99LANCANG")
    assert found["CODE"][("OB-PLAC", "99LANCANG")] == ("PL-ANTERIOR", "99LANCANG")
    assert found["CODE"][("OB-PLGR", "99LANCANG")] == ("PG-I", "99LANCANG")
    assert found["CODE"][("121420", "DCM")] in {("11902-4", "LN"), ("11932-1", "LN"), ("11892-7", "LN"),
                                                ("11920-6", "LN"), ("11732-5", "LN")}
    assert found["TEXT"][("121106", "DCM")] == "宫内单活胎，超声孕周与孕龄相符。"
    assert ds.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99LANCANG"


def test_the_final_pdf_prints_the_biometry_table(runtime, world, api, tmp_path):
    study_uid = _us_study(runtime)
    final = _final_obstetric_report(api, study_uid)
    pdf = api("GET", "li", final["versions"][-1]["pdf_url"]).content
    path = tmp_path / "ob-final.pdf"
    path.write_bytes(pdf)
    text = subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True, check=True).stdout
    for shown in ("测量 Measurements · 产科超声生物测量 Obstetric biometry", "双顶径 BPD", "60 mm", "680 g",
                  "Hadlock 687 g", "预期范围 Expected for GA",
                  "预产期 EDD 2027-02-20", "头位 Cephalic", "前壁 Anterior", "Hadlock 1985 (BPD, HC, AC, FL)"):
        assert shown in text, shown
    subprocess.run(["pdftoppm", "-png", "-r", "80", "-f", "1", "-l", "1", str(path), str(tmp_path / "ob-final")],
                   check=True)
