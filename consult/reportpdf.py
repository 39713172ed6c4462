"""Diagnostic report PDF (诊断报告) in Chinese with English labels.

``build_report_pdf(ReportContent(...)) -> bytes`` makes an A4 PDF ready to be
signed by :mod:`consult.signing` (reader first, then reviewer, each as an
incremental update).

Library choice: fpdf2.  It is pure Python, actively maintained, embeds and
subsets OpenType fonts *with CFF outlines* through fontTools, so the Noto
Sans CJK collection that Debian ships (fonts-noto-cjk, .ttc/CFF) works as is;
reportlab's open-source edition only embeds TrueType-outline fonts (it would
need fonts-wqy-zenhei), and pyHanko's own layout engine is meant for
signature stamps, not multi-section documents (and needs uharfbuzz for CJK).
fpdf2 writes a classic xref table which pyHanko's incremental writer handles.

The font is looked up in ``LANCANG_REPORT_FONT`` (a .ttf/.otf/.ttc path),
then in the usual Debian locations of Noto Sans CJK / WenQuanYi; without one
:class:`ReportFontError` says which package to install.  The subset of the
glyphs used is embedded, so the PDF renders anywhere.

The QR code (segno) is drawn as vector rectangles, so it stays sharp at any
zoom and scans reliably from print.  Its URL is also printed under it.

Each version is its own document: its status (初步 / 终审 / 补充) is printed at the
top, every signer is listed with name, professional title, institution and Beijing
signing time, and the QR opens that exact version's verification page. A final
report is rendered anew at co-signing (not the preliminary with a second signature,
which still said "待审核 Pending review" and pointed at the preliminary's QR); the
reader's signed preliminary travels inside it as an embedded file, so both PAdES
signatures can still be verified from the final alone (consult.reports.verify_upload).
The PAdES signatures themselves are invisible (pyHanko's stock stamp is Latin-only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

import segno
from fpdf import FPDF
from fpdf.enums import XPos, YPos
from fpdf.fonts import FontFace

from consult.obstetrics import BiometryTable
from storage import fonts, localtime
from storage.settings import get_settings

__all__ = [
    "ReportContent",
    "Signer",
    "Status",
    "beijing_time",
    "ReportFontError",
    "build_report_pdf",
    "find_cjk_font",
]

DEFAULT_FOOTER = (
    "本报告已电子签名，扫描二维码或访问验证页核对真伪；仅供临床参考。"
    " This report is digitally signed; scan the QR code to verify it."
    " For clinical reference only."
)




@dataclass(frozen=True)
class Signer:
    """One signer as the report prints them; ``signed_at`` None means not signed yet."""

    role: str  # e.g. "报告医师 Reader"
    name: str
    title: str = ""  # 主任医师, 副主任医师, 主治医师…
    institution: str = ""
    signed_at: datetime | None = None
    pending: str = "待签名 Not signed yet"


@dataclass(frozen=True)
class Status:
    """What this version is, printed as a band under the title."""

    text: str  # e.g. "终审报告 Final report"
    note: str = ""  # e.g. "经上级医师审核签发 Reviewed and signed by a senior"
    colour: tuple[int, int, int] = (11, 110, 138)


def beijing_time(value: datetime) -> str:
    """2026年12月3日 16:15 in Beijing time (naive datetimes are taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    local = value.astimezone(localtime.zone())
    return f"{local.year}年{local.month}月{local.day}日 {local:%H:%M}"


@dataclass
class ReportContent:
    """Everything printed on a report.  Free text may be Chinese or English.

    Dates may be ``date``/``datetime`` objects or preformatted strings.
    ``read_at``/``reviewed_at`` may be None (e.g. the review is pending when
    the reader signs); the authoritative signing times are in the signatures.
    ``patient_sex`` codes M/F/O (DICOM) are shown as 男/女/其他.
    """

    institution: str
    report_id: str
    patient_name: str
    patient_sex: str
    patient_age: str
    patient_id: str
    modality: str
    body_part: str
    exam_date: date | datetime | str
    accession_number: str
    clinical_question: str
    findings: str
    impression: str
    recommendation: str
    reader_name: str
    read_at: datetime | str | None
    reviewer_name: str
    reviewed_at: datetime | str | None
    verify_url: str
    department: str = ""
    institution_address: str = ""
    requesting_institution: str = ""
    reported_at: datetime | None = None  # printed in the header: when this version was signed
    visit_number: str = ""  # 门诊/住院号: the images' Admission ID, printed when present
    # Structured measurements as (label, value with unit), printed as a table (obstetric
    # biometry: BPD, HC, AC, FL, EFW, GA...), and the maternal risk colour (妇幼五色分级).
    measurements: list[tuple[str, str]] = field(default_factory=list)
    risk_colour: str = ""
    # An obstetric report's biometry (consult/obstetrics.py): printed as its own table of
    # measurement, value, GA by it and expected range, in place of the measurement boxes.
    biometry: BiometryTable | None = None
    title: str = "影像诊断报告  Diagnostic Imaging Report"
    footer: str = DEFAULT_FOOTER
    status: Status | None = None
    # Every study the report covers: (modality, body part, date, accession, description).
    # When given, the examination section lists them, one row each, instead of the single
    # modality/body_part/exam_date/accession above (a consult may cover several studies).
    studies: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    signers: list[Signer] = field(default_factory=list)  # when given, replaces reader/reviewer
    # The studies' key images (the current Key Object Selection), each as the reader finds it
    # again: "序列 Series 2 · 图像 Image 17".
    key_images: list[str] = field(default_factory=list)
    attachments: list[tuple[str, bytes, str]] = field(default_factory=list)  # (name, bytes, description)


class ReportFontError(RuntimeError):
    """No CJK font could be found to render the report."""



_SEX = {"M": "男 Male", "F": "女 Female", "O": "其他 Other"}

# Layout, millimetres.
_MARGIN = 16.0
_PAGE_W = 210.0
_PAGE_H = 297.0
_CONTENT_W = _PAGE_W - 2 * _MARGIN
_QR_SIZE = 30.0
_SIG_BLOCK_H = 44.0


def find_cjk_font() -> tuple[str, str | None, int]:
    """Return (regular path, bold path or None, collection index)."""
    path, index = fonts.cjk_font(get_settings().report_font, setting="LANCANG_REPORT_FONT", error=ReportFontError)
    bold = path.replace("-Regular.", "-Bold.")
    return path, (bold if bold != path and Path(bold).is_file() else None), index


def _fmt_when(value: date | datetime | str | None, *, pending: str) -> str:
    if value is None or value == "":
        return pending
    if isinstance(value, datetime):  # in the deployment's zone, as every time on the report
        return f"{beijing_time(value)}（{localtime.label_zh()}）"
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


class _ReportPdf(FPDF):
    def __init__(self, report: ReportContent, font: tuple[str, str | None, int]):
        super().__init__(orientation="P", unit="mm", format="A4")
        self.report = report
        regular, bold, index = font
        self.add_font("cjk", "", regular, collection_font_number=index)
        if bold:
            self.add_font("cjk", "B", bold, collection_font_number=index)
        else:  # no bold face: fall back to the regular one
            self.add_font("cjk", "B", regular, collection_font_number=index)
        self.set_margins(_MARGIN, _MARGIN, _MARGIN)
        self.set_auto_page_break(True, margin=22)
        self.alias_nb_pages()

    def footer(self) -> None:
        self.set_y(-18)
        self.set_draw_color(160, 160, 160)
        self.line(_MARGIN, self.get_y(), _PAGE_W - _MARGIN, self.get_y())
        self.ln(1.2)
        self.set_font("cjk", "", 7)
        self.set_text_color(90, 90, 90)
        self.multi_cell(
            _CONTENT_W - 22, 3.4, self.report.footer,
            new_x=XPos.LMARGIN, new_y=YPos.NEXT,
        )
        self.set_xy(_PAGE_W - _MARGIN - 22, -16.8)
        self.cell(22, 3.4, f"第 {self.page_no()}/{{nb}} 页", align="R")
        self.set_text_color(0, 0, 0)


def build_report_pdf(report: ReportContent) -> bytes:
    """Render ``report`` to an A4 PDF and return its bytes."""
    pdf = _ReportPdf(report, find_cjk_font())
    pdf.set_title(f"{report.title} {report.report_id}")
    pdf.set_author(report.institution)
    pdf.set_subject(f"{report.modality} {report.body_part} {report.accession_number}")
    pdf.set_creator("Lancang 澜沧")
    pdf.set_lang("zh-CN")
    pdf.add_page()

    _header(pdf, report)
    _status_band(pdf, report.status)
    _info_table(pdf, "患者信息  Patient", [
        ("姓名 Name", report.patient_name),
        ("性别 Sex", _SEX.get(report.patient_sex.strip().upper(), report.patient_sex)),
        ("年龄 Age", report.patient_age),
        ("患者编号 Patient ID", report.patient_id),
        *([("门诊/住院号 Visit No.", report.visit_number)] if report.visit_number else []),
    ])
    if report.studies:
        _studies_table(pdf, report.studies)
    else:
        _info_table(pdf, "检查信息  Examination", [
            ("检查类型 Modality", report.modality),
            ("检查部位 Body part", report.body_part),
            ("检查日期 Exam date", _fmt_when(report.exam_date, pending="—")),
            ("检查号 Accession No.", report.accession_number),
        ])
    _section(pdf, "临床问题  Clinical question", report.clinical_question)
    if report.biometry is not None:
        _biometry(pdf, report.biometry, report.risk_colour)
    elif report.measurements or report.risk_colour:
        _measurements(pdf, report.measurements, report.risk_colour)
    if report.key_images:
        _key_images(pdf, report.key_images)
    _section(pdf, "影像所见  Findings", report.findings)
    _section(pdf, "诊断意见  Impression", report.impression)
    _section(pdf, "建议  Recommendation", report.recommendation)
    _signature_block(pdf, report)
    for name, data, description in report.attachments:
        pdf.embed_file(bytes=data, basename=name, desc=description)
    return bytes(pdf.output())


def _status_band(pdf: _ReportPdf, status: Status | None) -> None:
    if status is None:
        return
    pdf.set_fill_color(*status.colour)
    pdf.set_text_color(255, 255, 255)
    pdf.set_font("cjk", "B", 12)
    pdf.cell(_CONTENT_W, 8, "  " + status.text, fill=True, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_text_color(0, 0, 0)
    if status.note:
        pdf.set_font("cjk", "", 8.5)
        pdf.cell(_CONTENT_W, 5, status.note, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(2)


def _header(pdf: _ReportPdf, report: ReportContent) -> None:
    pdf.set_font("cjk", "B", 16)
    pdf.cell(_CONTENT_W, 8, report.institution, align="C",
             new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    under = "  ".join(part for part in (report.department, report.institution_address) if part)
    if under:
        pdf.set_font("cjk", "", 9.5)
        pdf.cell(_CONTENT_W, 5, under, align="C",
                 new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(1)
    pdf.set_font("cjk", "B", 13)
    pdf.cell(_CONTENT_W, 7, report.title, align="C",
             new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("cjk", "", 8.5)
    left = f"报告编号 Report No.: {report.report_id}"
    right = (f"申请机构 Requested by: {report.requesting_institution}"
             if report.requesting_institution else "")
    pdf.cell(_CONTENT_W / 2, 5, left)
    pdf.cell(_CONTENT_W / 2, 5, right, align="R",
             new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    if report.reported_at is not None:
        pdf.cell(_CONTENT_W, 5, f"报告时间 Report time: {_fmt_when(report.reported_at, pending='—')}",
                 align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_line_width(0.5)
    pdf.line(_MARGIN, pdf.get_y() + 0.5, _PAGE_W - _MARGIN, pdf.get_y() + 0.5)
    pdf.set_line_width(0.2)
    pdf.ln(3)


def _section_title(pdf: _ReportPdf, title: str) -> None:
    if pdf.will_page_break(16):
        pdf.add_page()
    pdf.set_font("cjk", "B", 10.5)
    pdf.set_fill_color(235, 240, 246)
    pdf.cell(_CONTENT_W, 6.5, " " + title, fill=True,
             new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(1)


def _info_table(pdf: _ReportPdf, title: str, rows: list[tuple[str, str]]) -> None:
    """Two label/value pairs per line."""
    _section_title(pdf, title)
    label_w, value_w = 32.0, _CONTENT_W / 2 - 32.0
    for i in range(0, len(rows), 2):
        for label, value in rows[i:i + 2]:
            pdf.set_font("cjk", "", 8.5)
            pdf.set_text_color(80, 80, 80)
            pdf.cell(label_w, 6, label)
            pdf.set_text_color(0, 0, 0)
            pdf.set_font("cjk", "", 10.5)
            pdf.cell(value_w, 6, str(value or "—"))
        pdf.ln(6)
    pdf.ln(2)


def _studies_table(pdf: _ReportPdf, studies: list[tuple[str, str, str, str, str]]) -> None:
    """The studies the report covers, each with its own modality, body part, date, accession."""
    _section_title(pdf, f"检查信息  Examination（{len(studies)} 项检查 studies）" if len(studies) > 1
                   else "检查信息  Examination")
    widths = (26.0, 34.0, 32.0, 36.0, _CONTENT_W - 128.0)
    pdf.set_font("cjk", "", 8.5)
    pdf.set_text_color(80, 80, 80)
    for width, label in zip(widths, ("类型 Modality", "部位 Body part", "日期 Date", "检查号 Accession",
                                     "描述 Description")):
        pdf.cell(width, 5.5, label)
    pdf.ln(5.5)
    pdf.set_text_color(0, 0, 0)
    pdf.set_font("cjk", "", 10)
    for row in studies:
        for width, value in zip(widths, row):
            pdf.cell(width, 6, str(value or "—")[:40])
        pdf.ln(6)
    pdf.ln(2)


# 妇幼 five-colour maternal risk grading, as printed: name and the colour itself.
RISK_PRINT = {"green": ("绿色 低风险 Green", (46, 125, 50)), "yellow": ("黄色 一般风险 Yellow", (249, 168, 37)),
              "orange": ("橙色 较高风险 Orange", (239, 108, 0)), "red": ("红色 高风险 Red", (198, 40, 40)),
              "purple": ("紫色 传染病 Purple", (106, 27, 154))}


def _risk(pdf: _ReportPdf, risk_colour: str) -> None:
    """The maternal risk colour with its swatch (nothing when none was given)."""
    if risk_colour in RISK_PRINT:
        label, rgb = RISK_PRINT[risk_colour]
        pdf.set_font("cjk", "", 8.5)
        pdf.set_text_color(80, 80, 80)
        pdf.cell(pdf.get_string_width("孕产妇风险分级 Maternal risk") + 3, 6, "孕产妇风险分级 Maternal risk")
        pdf.set_fill_color(*rgb)
        pdf.cell(5, 5, "", fill=True)
        pdf.set_text_color(0, 0, 0)
        pdf.set_font("cjk", "B", 10.5)
        pdf.cell(0, 6, " " + label, new_x=XPos.LMARGIN, new_y=YPos.NEXT)


BIOMETRY_HEADINGS = ("测量 Measurement", "数值 Value", "对应孕周 GA by it", "预期范围 Expected for GA")
FLAGGED = FontFace(emphasis="B", color=(179, 38, 30))  # outside its expected range
WARNING_COLOUR = (138, 83, 0)


def _biometry(pdf: _ReportPdf, biometry: BiometryTable, risk_colour: str) -> None:
    """The obstetric biometry: a table of measurement, value, the GA it gives and the range
    expected at the pregnancy's GA (flagged rows in bold red), then the dating notes (composite
    GA, LMP, EDD, EFW model, presentation and placenta) and the warnings."""
    _section_title(pdf, "测量 Measurements · 产科超声生物测量 Obstetric biometry")
    _risk(pdf, risk_colour)
    pdf.set_font("cjk", "", 9)
    pdf.set_fill_color(255, 255, 255)  # the swatch's colour must not fill the table's cells
    with pdf.table(cell_fill_mode="NONE", col_widths=(36, 36, 28, _CONTENT_W - 100), width=_CONTENT_W,
                   text_align="LEFT", line_height=5, borders_layout="HORIZONTAL_LINES", padding=(1, 1.5),
                   headings_style=FontFace(color=(80, 80, 80), fill_color=(245, 247, 250))) as table:
        table.row(BIOMETRY_HEADINGS)
        for index, row in enumerate(biometry.rows):
            table.row(row, style=FLAGGED if index in biometry.flagged else None)
    pdf.ln(1.5)
    pdf.set_font("cjk", "", 8.5)
    for note in biometry.notes:
        pdf.set_x(_MARGIN + 2)
        pdf.multi_cell(_CONTENT_W - 4, 4.6, note, align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_text_color(*WARNING_COLOUR)
    for warning in biometry.warnings:
        pdf.set_x(_MARGIN + 2)
        pdf.multi_cell(_CONTENT_W - 4, 4.6, "注意 Note: " + warning, align="L", new_x=XPos.LMARGIN,
                       new_y=YPos.NEXT)
    pdf.set_text_color(0, 0, 0)
    pdf.ln(2)


def _measurements(pdf: _ReportPdf, rows: list[tuple[str, str]], risk_colour: str) -> None:
    """The template's measurements as a table, four label/value pairs a line, and the
    maternal risk colour with its swatch."""
    _section_title(pdf, "测量 Measurements")
    _risk(pdf, risk_colour)
    width = _CONTENT_W / 4
    pdf.set_draw_color(200, 205, 212)
    for start in range(0, len(rows), 4):
        for label, value in rows[start:start + 4]:
            pdf.set_font("cjk", "", 8)
            pdf.set_text_color(80, 80, 80)
            x, y = pdf.get_x(), pdf.get_y()
            pdf.cell(width, 4.5, label, border="LTR")
            pdf.set_xy(x, y + 4.5)
            pdf.set_text_color(0, 0, 0)
            pdf.set_font("cjk", "B", 10.5)
            pdf.cell(width, 6, value, border="LBR")
            pdf.set_xy(x + width, y)
        pdf.ln(11)
    pdf.set_draw_color(0, 0, 0)
    pdf.ln(2)


def _key_images(pdf: _ReportPdf, lines: list[str]) -> None:
    """The key images, three to a line, numbered in the reader's order."""
    _section_title(pdf, f"关键图像  Key images（{len(lines)} 幅）")
    width = _CONTENT_W / 3
    pdf.set_font("cjk", "", 9)
    for start in range(0, len(lines), 3):
        pdf.set_x(_MARGIN + 2)
        for number, line in enumerate(lines[start:start + 3], start=start + 1):
            pdf.cell(width - 1, 5.5, f"{number}. {line}"[:60])
        pdf.ln(5.5)
    pdf.ln(2)


def _section(pdf: _ReportPdf, title: str, text: str) -> None:
    _section_title(pdf, title)
    pdf.set_font("cjk", "", 10.5)
    body = (text or "").strip() or "无 None"
    pdf.set_x(_MARGIN + 2)
    # Left-aligned: justified CJK text with a few Latin words opens wide gaps in the line.
    pdf.multi_cell(_CONTENT_W - 4, 5.8, body, align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(3)


# 远程医疗服务管理规范（试行）(2018): the invited side advises; the requesting institution
# decides the treatment and answers for it. Printed on every version, above the signatures.
RESPONSIBILITY = ("本报告为远程会诊意见，诊疗决策及其责任由申请会诊的医疗机构承担。"
                  " This is a remote consultation opinion: treatment decisions, and the responsibility"
                  " for them, stay with the requesting institution.")


_RESPONSIBILITY_H = 9.5  # two lines at 8.5 pt, kept on the signatures' page


def _responsibility(pdf: _ReportPdf, top: float) -> None:
    pdf.set_font("cjk", "", 8.5)
    pdf.set_text_color(70, 70, 70)
    pdf.set_xy(_MARGIN, top - _RESPONSIBILITY_H)
    pdf.multi_cell(_CONTENT_W, 4.2, RESPONSIBILITY, align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_text_color(0, 0, 0)


def _signature_block(pdf: _ReportPdf, report: ReportContent) -> None:
    """Reader/reviewer names and times, two empty signature boxes, the QR."""
    if pdf.will_page_break(_SIG_BLOCK_H + 4 + _RESPONSIBILITY_H):
        pdf.add_page()
    top = max(pdf.get_y() + 2 + _RESPONSIBILITY_H, _PAGE_H - 22 - _SIG_BLOCK_H)
    _responsibility(pdf, top)
    pdf.set_draw_color(0, 0, 0)
    pdf.line(_MARGIN, top, _PAGE_W - _MARGIN, top)

    col_w = (_CONTENT_W - _QR_SIZE - 6) / 2
    if report.signers:
        _signer_columns(pdf, report.signers, top, col_w)
        _qr_block(pdf, report.verify_url, top)
        return
    people = [
        ("报告医师 Reader", report.reader_name,
         _fmt_when(report.read_at, pending="—"), "报告医师签名 Reader's signature"),
        ("审核医师 Reviewer", report.reviewer_name,
         _fmt_when(report.reviewed_at, pending="待审核 Pending review"),
         "审核医师签名 Reviewer's signature"),
    ]
    for i, (label, name, when, box_label) in enumerate(people):
        x = _MARGIN + i * col_w
        pdf.set_xy(x, top + 2)
        pdf.set_font("cjk", "", 8.5)
        pdf.set_text_color(80, 80, 80)
        pdf.cell(col_w - 4, 4.5, label, new_x=XPos.LEFT, new_y=YPos.NEXT)
        pdf.set_text_color(0, 0, 0)
        pdf.set_font("cjk", "B", 11)
        pdf.cell(col_w - 4, 6, name or "—", new_x=XPos.LEFT, new_y=YPos.NEXT)
        pdf.set_font("cjk", "", 8.5)
        pdf.cell(col_w - 4, 4.5, f"时间 Time: {when}", new_x=XPos.LEFT, new_y=YPos.NEXT)
        # empty placeholder box for a (future) visible signature appearance
        box_y = pdf.get_y() + 1.5
        box_w, box_h = col_w - 6, 17.0
        pdf.set_draw_color(170, 170, 170)
        pdf.set_dash_pattern(dash=1, gap=1)
        pdf.rect(x, box_y, box_w, box_h)
        pdf.set_dash_pattern()
        pdf.set_draw_color(0, 0, 0)
        pdf.set_xy(x + 1, box_y + 1)
        pdf.set_font("cjk", "", 6.5)
        pdf.set_text_color(150, 150, 150)
        pdf.cell(box_w - 2, 3, box_label)
        pdf.set_text_color(0, 0, 0)

    _qr_block(pdf, report.verify_url, top)


def _signer_columns(pdf: _ReportPdf, signers: list[Signer], top: float, col_w: float) -> None:
    """Each signer: role, name and title, institution, Beijing signing time and a
    "digitally signed" mark (or what is still pending)."""
    for i, signer in enumerate(signers[:2]):
        x = _MARGIN + i * col_w
        pdf.set_xy(x, top + 2)
        pdf.set_font("cjk", "", 8.5)
        pdf.set_text_color(80, 80, 80)
        pdf.cell(col_w - 4, 4.5, signer.role, new_x=XPos.LEFT, new_y=YPos.NEXT)
        pdf.set_text_color(0, 0, 0)
        pdf.set_font("cjk", "B", 11)
        pdf.cell(col_w - 4, 6, f"{signer.name}  {signer.title}".strip(), new_x=XPos.LEFT, new_y=YPos.NEXT)
        pdf.set_font("cjk", "", 8.5)
        pdf.cell(col_w - 4, 4.5, signer.institution or "—", new_x=XPos.LEFT, new_y=YPos.NEXT)
        when = beijing_time(signer.signed_at) + f"（{localtime.label_zh()}）" if signer.signed_at else signer.pending
        pdf.cell(col_w - 4, 4.5, f"时间 Time: {when}", new_x=XPos.LEFT, new_y=YPos.NEXT)
        pdf.set_font("cjk", "B", 8.5)
        if signer.signed_at:
            pdf.set_text_color(46, 125, 50)
            pdf.cell(col_w - 4, 5, "已电子签名 Digitally signed", new_x=XPos.LEFT, new_y=YPos.NEXT)
        else:
            pdf.set_text_color(190, 100, 0)
            pdf.cell(col_w - 4, 5, "未签名 Not signed", new_x=XPos.LEFT, new_y=YPos.NEXT)
        pdf.set_text_color(0, 0, 0)


def _qr_block(pdf: _ReportPdf, url: str, top: float) -> None:
    qr_x = _PAGE_W - _MARGIN - _QR_SIZE
    _draw_qr(pdf, url, qr_x, top + 2, _QR_SIZE)
    pdf.set_xy(qr_x - 7, top + 2 + _QR_SIZE + 0.5)
    pdf.set_font("cjk", "", 6.5)
    pdf.cell(_QR_SIZE + 14, 3, "扫码验证 Scan to verify", align="C",
             new_x=XPos.LEFT, new_y=YPos.NEXT)
    pdf.set_font("helvetica", "", 5.5)
    pdf.set_x(_MARGIN)
    pdf.cell(_CONTENT_W, 3, url, align="R")


def _draw_qr(pdf: FPDF, url: str, x: float, y: float, size: float) -> None:
    """Draw the QR code as filled rectangles (one per horizontal run)."""
    qr = segno.make(url, error="m", micro=False)
    matrix = [list(row) for row in qr.matrix]
    n = len(matrix)
    quiet = 2  # modules of white border inside `size` (plus the page margin)
    module = size / (n + 2 * quiet)
    pdf.set_fill_color(255, 255, 255)
    pdf.rect(x, y, size, size, style="F")
    pdf.set_fill_color(0, 0, 0)
    for r, row in enumerate(matrix):
        c = 0
        while c < n:
            if row[c]:
                start = c
                while c < n and row[c]:
                    c += 1
                pdf.rect(x + (quiet + start) * module, y + (quiet + r) * module,
                         (c - start) * module, module, style="F")
            else:
                c += 1
    pdf.set_fill_color(255, 255, 255)
