"""consult.reportpdf: the PDF renders Chinese text and a scannable QR code."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from datetime import date, datetime, timedelta, timezone

import pytest

from consult.reportpdf import ReportContent, build_report_pdf

TZ = timezone(timedelta(hours=8))
URL = "https://lancang.example.cn/verify/RPT-2025-000123?t=8f3a9c"


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} is not installed (poppler-utils / zbar-tools)"
        if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def _content(**overrides) -> ReportContent:
    fields = dict(
        institution="澜沧拉祜族自治县第一人民医院",
        department="医学影像科 Department of Radiology",
        report_id="RPT-2025-000123",
        patient_name="张秀英",
        patient_sex="F",
        patient_age="67岁",
        patient_id="P0012345",
        modality="CT",
        body_part="胸部 Chest",
        exam_date=date(2025, 3, 1),
        accession_number="ACC20250301001",
        clinical_question="咳嗽两周，发热三天，排除肺炎。Rule out pneumonia.",
        findings="右肺下叶见斑片状高密度影，边界模糊，内见支气管充气征。纵隔内未见明显肿大淋巴结。",
        impression="右肺下叶肺炎，建议抗感染治疗后复查。",
        recommendation="两周后复查胸部CT。Follow-up chest CT in two weeks.",
        reader_name="王医生",
        read_at=datetime(2025, 3, 1, 14, 5, tzinfo=TZ),
        reviewer_name="李主任",
        reviewed_at=datetime(2025, 3, 1, 16, 30, tzinfo=TZ),
        verify_url=URL,
        requesting_institution="勐朗镇卫生院",
    )
    fields.update(overrides)
    return ReportContent(**fields)


@pytest.fixture(scope="module")
def report_pdf(tmp_path_factory) -> tuple[bytes, object]:
    data = build_report_pdf(_content())
    path = tmp_path_factory.mktemp("report") / "report.pdf"
    path.write_bytes(data)
    return data, path


def _text(path) -> str:
    out = subprocess.run([_need("pdftotext"), "-layout", str(path), "-"],
                         capture_output=True, check=True)
    return out.stdout.decode("utf-8")


def test_is_an_a4_pdf_with_embedded_cjk_font(report_pdf):
    data, path = report_pdf
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    info = subprocess.run([_need("pdfinfo"), str(path)], capture_output=True,
                          check=True).stdout.decode()
    assert re.search(r"^Pages:\s+1$", info, re.M), info
    assert "595.28 x 841.89 pts (A4)" in info
    fonts = subprocess.run([_need("pdffonts"), str(path)], capture_output=True,
                           check=True).stdout.decode()
    cjk = [line for line in fonts.splitlines() if "CJK" in line or "WenQuanYi" in line]
    assert cjk and all(" yes yes yes " in line for line in cjk), fonts  # emb sub uni


def test_chinese_and_english_text_is_extractable(report_pdf):
    _, path = report_pdf
    text = _text(path)
    for expected in (
        "澜沧拉祜族自治县第一人民医院", "影像诊断报告", "Diagnostic Imaging Report",
        "张秀英", "女 Female", "67岁", "P0012345", "ACC20250301001", "2025-03-01",
        "临床问题", "Clinical question", "影像所见", "Findings", "支气管充气征",
        "诊断意见", "Impression", "建议", "Recommendation",
        "王医生", "李主任", "2025年3月1日 14:05（北京时间）", "2025年3月1日 16:30（北京时间）",
        "扫码验证", "勐朗镇卫生院", "RPT-2025-000123",
        "诊疗决策及其责任由申请会诊的医疗机构承担",  # 远程医疗服务管理规范
    ):
        assert expected in text, expected


def test_qr_code_decodes_to_the_verify_url(report_pdf, tmp_path):
    _, path = report_pdf
    subprocess.run([_need("pdftoppm"), "-r", "150", "-png", "-f", "1", "-l", "1",
                    str(path), str(tmp_path / "page")], check=True)
    pngs = sorted(tmp_path.glob("page*.png"))
    assert pngs
    out = subprocess.run([_need("zbarimg"), "-q", "--raw", str(pngs[0])],
                         capture_output=True)
    assert out.stdout.decode().strip() == URL


def test_long_report_flows_onto_more_pages(tmp_path):
    long_findings = "\n".join(
        f"{i}. 肝脏形态大小正常，各叶比例协调，实质密度均匀，未见异常密度影。" for i in range(1, 80)
    )
    data = build_report_pdf(_content(findings=long_findings, reviewed_at=None,
                                     patient_sex="M"))
    path = tmp_path / "long.pdf"
    path.write_bytes(data)
    info = subprocess.run([_need("pdfinfo"), str(path)], capture_output=True,
                          check=True).stdout.decode()
    pages = int(next(l for l in info.splitlines() if l.startswith("Pages:")).split()[1])
    assert pages >= 2
    text = _text(path)
    assert "79. 肝脏形态大小正常" in text
    assert "待审核" in text and "男 Male" in text
    assert f"第 {pages}/{pages} 页" in text
