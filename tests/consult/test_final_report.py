"""16.1: each version's PDF states its own status, prints every signer with name, title,
institution and Beijing signing time, and its QR opens that exact version. Checked on the
rendered PDFs (pdftotext, and zbarimg on a pdftoppm rendering), not on status fields.

On the previous code the co-signed final said "审核医师 … 时间: 待审核 Pending review", the
reader's time was "—", nothing said 终审, and its QR opened the preliminary's page."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import update

from storage.models import User
from tests.consult.test_flow import api, ok, world  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["embedded"])
def backend(request):
    return request.param


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is needed (poppler-utils / zbar-tools)"
    return path


def _text(pdf: bytes, tmp_path: Path, name: str) -> str:
    path = tmp_path / f"{name}.pdf"
    path.write_bytes(pdf)
    return subprocess.run([_tool("pdftotext"), "-layout", str(path), "-"], capture_output=True, check=True,
                          text=True).stdout


def _qr(pdf: bytes, tmp_path: Path, name: str) -> str:
    path = tmp_path / f"{name}.pdf"
    path.write_bytes(pdf)
    subprocess.run([_tool("pdftoppm"), "-r", "200", "-png", "-singlefile", str(path), str(tmp_path / name)],
                   check=True)
    done = subprocess.run([_tool("zbarimg"), "--raw", "-q", str(tmp_path / f"{name}.png")], capture_output=True,
                          text=True)
    return done.stdout.strip()


def test_each_version_says_what_it_is_who_signed_it_and_its_qr_opens_it(runtime, world, api, tmp_path):
    _, study = world
    with runtime.db.scope() as session:
        session.execute(update(User).where(User.username == "wang").values(title="主治医师"))
        session.execute(update(User).where(User.username == "chen").values(title="主任医师"))
    cid = ok(api("POST", "li", "/api/consults", json={
        "kind": "read", "target": "COUNTY", "study_uids": [study], "clinical_question": "咳嗽两周"}), 201)["id"]
    ok(api("POST", "zhou", f"/api/consults/{cid}/accept"))
    ok(api("POST", "zhou", f"/api/consults/{cid}/assign", json={"reader": "wang", "reviewer": "chen"}))
    ok(api("PUT", "wang", f"/api/consults/{cid}/report/draft", json={
        "template": "ct_head", "findings": "右下肺见斑片状高密度影。", "impression": "右下肺炎",
        "recommendation": "抗感染治疗后复查", "fields": {}}))
    ok(api("POST", "wang", f"/api/consults/{cid}/report/sign", json={"password": "sign-wang"}))
    final = ok(api("POST", "chen", f"/api/consults/{cid}/report/cosign", json={"password": "sign-chen"}))
    preliminary_v, final_v = final["versions"]
    assert (preliminary_v["kind"], final_v["kind"]) == ("preliminary", "final")
    preliminary_pdf = api("GET", "li", preliminary_v["pdf_url"]).content
    final_pdf = api("GET", "li", final_v["pdf_url"]).content

    text = _text(final_pdf, tmp_path, "final")
    assert "终审报告 Final report" in text and "待审核" not in text and "初步报告" not in text
    assert "王医生 主治医师" in text and "陈主任 主任医师" in text
    assert "澜沧县人民医院" in text and "普洱市人民医院" in text  # each signer's institution
    assert text.count("北京时间") == 3 and text.count("已电子签名 Digitally signed") == 2  # two signers and the report time
    assert "UTC" not in text and "2026年11月1日" in text and "头部 HEAD" in text  # exam date and body part
    final_url = _qr(final_pdf, tmp_path, "final")
    assert final_url.endswith(f"/verify/{final_v['public_id']}")
    page = api.client.get("/verify/" + final_url.rsplit("/verify/", 1)[1])
    assert page.status_code == 200 and "终审报告" in page.text

    # 16.5: the patient's page shows the final report completely, signers and Beijing time.
    from fastapi.testclient import TestClient

    share = ok(api("POST", "li", f"/api/studies/{study}/shares", json={"days": 7}), 201)
    token = share["url"].rstrip("/").rsplit("/", 1)[-1]
    patient = TestClient(api.client.app)
    patient.post(f"/f/{token}/unlock", data={"pin": share["pin"]})
    view = patient.get(f"/f/{token}/view").text
    for shown in ("右下肺见斑片状高密度影", "右下肺炎", "抗感染治疗后复查", "王医生 主治医师 · 澜沧县人民医院",
                  "陈主任 主任医师 · 普洱市人民医院", "终审报告 Final report", "北京时间"):
        assert shown in view, shown
    assert "UTC" not in view

    text = _text(preliminary_pdf, tmp_path, "preliminary")
    assert "初步报告 Preliminary report" in text and "待审核 Awaiting review" in text
    assert "终审报告 Final report" not in text
    assert _qr(preliminary_pdf, tmp_path, "preliminary").endswith(f"/verify/{preliminary_v['public_id']}")


def test_verification_and_the_consult_page_state_each_versions_standing(runtime, world, api):
    """16.3: a version the senior sent back gets no green tick and says it was returned and
    by which version it was superseded; the final says it is current (the page gave every
    version the same "已签名" tick)."""
    _, study = world
    cid = ok(api("POST", "li", "/api/consults", json={
        "kind": "read", "target": "COUNTY", "study_uids": [study], "clinical_question": "咳嗽"}), 201)["id"]
    ok(api("POST", "zhou", f"/api/consults/{cid}/accept"))
    ok(api("POST", "zhou", f"/api/consults/{cid}/assign", json={"reader": "wang", "reviewer": "chen"}))
    draft = {"template": "ct_head", "findings": "所见", "impression": "印象", "recommendation": "", "fields": {}}
    ok(api("PUT", "wang", f"/api/consults/{cid}/report/draft", json=draft))
    ok(api("POST", "wang", f"/api/consults/{cid}/report/sign", json={"password": "sign-wang"}))
    ok(api("POST", "chen", f"/api/consults/{cid}/report/return", json={"comments": "请补充"}))
    ok(api("PUT", "wang", f"/api/consults/{cid}/report/draft", json={**draft, "findings": "所见，已补充"}))
    ok(api("POST", "wang", f"/api/consults/{cid}/report/sign", json={"password": "sign-wang"}))
    versions = ok(api("POST", "chen", f"/api/consults/{cid}/report/cosign", json={"password": "sign-chen"}))["versions"]
    assert [(v["kind"], v["current"]) for v in versions] == [("preliminary", False), ("preliminary", False),
                                                            ("final", True)]
    assert "已退回修改" in versions[0]["standing"] and "version 2" in versions[0]["standing"]
    assert "审核签发为第 3 版终审报告" in versions[1]["standing"]
    returned = api.client.get(f"/verify/{versions[0]['public_id']}").text
    assert 'class="warn-box"' in returned and "已退回修改" in returned and "✔" not in returned.split('id="standing"')[1][:20]
    final = api.client.get(f"/verify/{versions[2]['public_id']}").text
    assert 'class="ok-box" id="standing"' in final and "当前有效的终审报告" in final
    assert "UTC" not in final and "北京时间" in final


def test_the_consult_page_shows_beijing_time(runtime, world, api):
    """16.7 for the consult pages: bookings, versions, history and due times were "08:15 UTC"."""
    _, study = world
    cid = ok(api("POST", "li", "/api/consults", json={
        "kind": "read", "target": "COUNTY", "study_uids": [study], "clinical_question": "咳嗽"}), 201)["id"]
    from fastapi.testclient import TestClient

    from web.app import create_app

    with TestClient(create_app(runtime.settings)) as client:
        client.post("/login", data={"username": "li", "password": "password-1"})
        pages = [client.get(f"/consults/{cid}"), client.get("/consults"), client.get("/calendar")]
    for page in pages:
        assert page.status_code == 200 and "UTC" not in page.text, page.url


def test_a_report_lists_each_study_it_covers_with_its_own_details(runtime, world, api, tmp_path):
    """16.2: a consult covering a CT and a chest X-ray printed the first study's modality,
    date and accession for both; now each study has its row."""
    import io

    from pydicom import dcmread
    from pydicom.uid import generate_uid

    from imaging.service import Ingestor
    from tests.dicomdata import ct_instance

    _, ct_study = world
    chest = generate_uid()
    ds = dcmread(io.BytesIO(ct_instance(study_uid=chest, modality="DX", study_date="20240301", accession="XR-77",
                                        patient_id="P001", sop_class="1.2.840.10008.5.1.4.1.1.1.1")))
    ds.BodyPartExamined = "CHEST"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    with runtime.db.scope(readonly=True) as session:
        from storage.models import Institution
        from sqlalchemy import select
        town = session.scalar(select(Institution.id).where(Institution.code == "TOWN"))
    ingestor = Ingestor(runtime.db, runtime.store)
    ingestor.ingest(out.getvalue(), institution_id=town, source="test")
    ingestor.close()
    cid = ok(api("POST", "li", "/api/consults", json={"kind": "read", "target": "COUNTY",
                                                      "study_uids": [ct_study, chest], "clinical_question": "咳嗽"}), 201)["id"]
    ok(api("POST", "zhou", f"/api/consults/{cid}/accept"))
    ok(api("POST", "zhou", f"/api/consults/{cid}/assign", json={"reader": "wang", "reviewer": "chen"}))
    ok(api("PUT", "wang", f"/api/consults/{cid}/report/draft", json={
        "template": "ct_head", "findings": "所见", "impression": "印象", "recommendation": "", "fields": {}}))
    version = ok(api("POST", "wang", f"/api/consults/{cid}/report/sign", json={"password": "sign-wang"}))["versions"][0]
    text = _text(api("GET", "li", version["pdf_url"]).content, tmp_path, "two")
    assert "2 项检查 studies" in text
    ct_row = next(line for line in text.splitlines() if "A001" in line)
    xr_row = next(line for line in text.splitlines() if "XR-77" in line)
    assert "CT" in ct_row and "2026年11月1日" in ct_row
    assert "DX" in xr_row and "2024年3月1日" in xr_row and "胸部 CHEST" in xr_row


def test_an_obstetric_final_report_is_laid_out_as_a_hospital_accepts_it(runtime, world, api, tmp_path):
    """16.4: the header names the department and address and the report time; obstetric
    biometry is a table with GA (孕24+1周) and EFW; the maternal risk colour is printed;
    findings are left-aligned (no justified gaps). Checked on the rendered PDF."""
    import io

    from pydicom import dcmread
    from pydicom.uid import generate_uid
    from sqlalchemy import select

    from imaging.service import Ingestor
    from storage import service as tenancy
    from storage.models import Institution
    from tests.dicomdata import ct_instance

    study = generate_uid()  # an ultrasound with the 住院号 the modality wrote (Admission ID)
    ds = dcmread(io.BytesIO(ct_instance(study_uid=study, modality="US", patient_id="P001",
                                        sop_class="1.2.840.10008.5.1.4.1.1.6.1")))
    ds.AdmissionID = "ZY2026-0815"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    with runtime.db.scope() as session:
        tenancy.set_institution_details(session=session, code="COUNTY", department="医学影像科",
                                        address="云南省普洱市澜沧县勐朗镇民主路 8 号")
        town = session.scalar(select(Institution.id).where(Institution.code == "TOWN"))
    ingestor = Ingestor(runtime.db, runtime.store)
    ingestor.ingest(out.getvalue(), institution_id=town, source="test")
    ingestor.close()
    cid = ok(api("POST", "li", "/api/consults", json={
        "kind": "read", "target": "COUNTY", "study_uids": [study], "risk_colour": "orange",
        "clinical_question": "孕24周，胎儿生长评估"}), 201)["id"]
    ok(api("POST", "zhou", f"/api/consults/{cid}/accept"))
    ok(api("POST", "zhou", f"/api/consults/{cid}/assign", json={"reader": "wang", "reviewer": "chen"}))
    ok(api("PUT", "wang", f"/api/consults/{cid}/report/draft", json={
        "template": "obstetric_us", "findings": "宫内单活胎，胎心搏动可见，胎位头位。",
        "impression": "宫内单活胎，超声孕周与孕龄相符。", "recommendation": "四周后复查",
        "fields": {"bpd_mm": "60", "hc_mm": "222", "ac_mm": "196", "fl_mm": "44", "efw_g": "680",
                   "ga_weeks": "24+1", "fhr_bpm": "146"}}))
    ok(api("POST", "wang", f"/api/consults/{cid}/report/sign", json={"password": "sign-wang"}))
    final = ok(api("POST", "chen", f"/api/consults/{cid}/report/cosign", json={"password": "sign-chen"}))
    pdf = api("GET", "li", final["versions"][-1]["pdf_url"]).content
    text = _text(pdf, tmp_path, "obstetric")
    assert "医学影像科" in text and "勐朗镇民主路" in text
    assert "门诊/住院号 Visit No." in text and "ZY2026-0815" in text
    assert re.search(r"报告时间 Report time: \d{4}年\d{1,2}月\d{1,2}日 \d{2}:\d{2}", text), text
    assert "测量 Measurements" in text and "孕24+1周" in text and "680 g" in text and "双顶径 BPD" in text
    assert "橙色 较高风险 Orange" in text and "孕产妇风险分级" in text
    assert "终审" in text
    findings = next(line for line in text.splitlines() if "宫内单活胎，胎心" in line)
    assert "  " not in findings.strip(), findings  # left-aligned, no stretched gaps
    subprocess.run([_tool("pdftoppm"), "-r", "110", "-png", "-singlefile", str(tmp_path / "obstetric.pdf"),
                    "/tmp/lancang-report-obstetric-final"], check=True)
