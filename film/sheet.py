"""The printable film sheet (云胶片打印页): one A4 page for the patient to take home.

Institution header, the exam, a grid of key images, the QR code of the cloud-film link and
where to find the PIN. The PIN itself is never printed: the sheet may be left lying about,
the PIN travels separately (the collection slip, or the radiographer writes it in the box).

fpdf2 embeds a subset of a CJK OpenType font (Debian fonts-noto-cjk, CFF outlines in a .ttc
are fine for it); the QR code (segno) is drawn as vector rectangles so it scans from any
printer. Made by the worker (task ``imaging.make_film_sheet``) and kept in the object store
at ``derived/{study}/film/share-{id}.pdf``.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field

import segno
from fpdf import FPDF
from sqlalchemy import select

from film import service as shares
from film.models import Share
from imaging import derive, keyimages, pixels
from imaging.models import Instance, Patient, Series, Study
from imaging.summary import SEX_LABELS, age_at
from storage import fonts, keys, localtime
from storage.db import Database
from storage.objects import ObjectStore, StoreUnavailable
from storage.settings import get_settings
from storage.types import utcnow

log = logging.getLogger("lancang.film")

KEY_IMAGES = 12              # a 3 x 4 grid
GRID_COLUMNS = 3
KEY_IMAGE_PIXELS = 640       # ~200 dpi across a 64 mm cell: sharp in print, small in the PDF
SINGLE_IMAGE_PIXELS = 1600   # one DR or ultrasound image across the page (~200 dpi over 186 mm)
# A chest CT is read in two windows; its sheet prints each picked slice in both.
CHEST_CT_WINDOWS = (("肺窗 Lung", (-600.0, 1500.0)), ("纵隔窗 Mediastinum", (40.0, 350.0)))
KEY_IMAGE_QUALITY = 88


class FilmFontError(RuntimeError):
    """No CJK font is installed for the film sheet."""


def find_font() -> tuple[str, int]:
    """(path, face index) of a font with Simplified Chinese glyphs."""
    settings = get_settings()
    return fonts.cjk_font(settings.film_font, settings.report_font, setting="LANCANG_FILM_FONT",
                          error=FilmFontError)


@dataclass
class KeyImage:
    jpeg: bytes
    caption: str


@dataclass
class FilmSheetContent:
    institution: str
    patient_name: str
    exam: str
    date: str
    accession: str
    url: str
    expires: str
    images: list[KeyImage] = field(default_factory=list)
    sex: str = ""
    age: str = ""
    patient_id: str = ""
    impression: str = ""  # the final report's, once there is one
    columns: int = 0  # 0: by the number of images (grid_columns); a chest CT keeps window pairs on a row


def _draw_qr(pdf: FPDF, data: str, x: float, y: float, size: float) -> None:
    """The QR code as filled rectangles (one per run of dark modules in a row)."""
    qr = segno.make(data, error="m")
    matrix = [list(row) for row in qr.matrix]
    border = 2  # quiet zone, in modules (white paper around it does the rest)
    n = len(matrix) + 2 * border
    module = size / n
    pdf.set_fill_color(255, 255, 255)
    pdf.rect(x, y, size, size, style="F")
    pdf.set_fill_color(0, 0, 0)
    for r, row in enumerate(matrix):
        c = 0
        while c < len(row):
            if row[c]:
                start = c
                while c < len(row) and row[c]:
                    c += 1
                pdf.rect(x + (start + border) * module, y + (r + border) * module,
                         (c - start) * module, module, style="F")
            else:
                c += 1


FOOTER_HEIGHT_MM = 58  # QR code and instructions at the foot of the page


def build_film_sheet(content: FilmSheetContent) -> bytes:
    """The A4 PDF for one share."""
    font, face = find_font()
    pdf = FPDF(orientation="P", unit="mm", format="A4")
    pdf.set_auto_page_break(False)
    pdf.set_margins(12, 10, 12)
    pdf.add_font("cjk", "", font, collection_font_number=face)
    pdf.add_page()
    pdf.set_title(f"云胶片 {content.exam}")
    pdf.set_creator("Lancang 澜沧影像云")

    width = pdf.w - 24
    _title(pdf, content, width)
    _facts(pdf, content, width)
    _key_images(pdf, content, width)
    _footer(pdf, content)
    return bytes(pdf.output())


def _title(pdf: FPDF, content: FilmSheetContent, width: float) -> None:
    pdf.set_font("cjk", size=17)
    pdf.cell(width, 9, content.institution, align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("cjk", size=10)
    pdf.set_text_color(80, 90, 100)
    pdf.cell(width, 6, "云胶片 · 数字影像 Cloud film · digital images", align="C", new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0, 0, 0)
    pdf.set_draw_color(11, 110, 138)
    pdf.set_line_width(0.6)
    pdf.line(12, pdf.get_y() + 1, pdf.w - 12, pdf.get_y() + 1)
    pdf.ln(3)


def _facts(pdf: FPDF, content: FilmSheetContent, width: float) -> None:
    pdf.set_font("cjk", size=10)
    who = " ".join(part for part in (content.sex, content.age) if part) or "—"
    facts = [("姓名 Name", content.patient_name or "—"), ("性别/年龄 Sex/Age", who),
             ("患者编号 Patient ID", content.patient_id or "—"), ("检查号 Accession", content.accession or "—"),
             ("检查 Exam", content.exam), ("日期 Date", content.date)]
    column = width / 2
    for i, (label, value) in enumerate(facts):
        pdf.set_text_color(90, 100, 110)
        pdf.cell(34, 6, label)
        pdf.set_text_color(0, 0, 0)
        pdf.cell(column - 34, 6, value[:40], new_x="LMARGIN" if i % 2 else "RIGHT",
                 new_y="NEXT" if i % 2 else "TOP")
    if content.impression:
        pdf.set_text_color(90, 100, 110)
        pdf.cell(34, 6, "诊断意见 Impression")
        pdf.set_text_color(0, 0, 0)
        pdf.multi_cell(width - 34, 6, content.impression[:300], align="L", new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)


def _key_images(pdf: FPDF, content: FilmSheetContent, width: float) -> None:
    """Key images: black cells like a film, captions under each."""
    top = pdf.get_y()
    columns = content.columns or grid_columns(len(content.images))
    rows = max(1, -(-max(1, len(content.images)) // columns))
    gap = 3
    cell_w = (width - gap * (columns - 1)) / columns
    caption_h = 4.5
    cell_h = min(cell_w, (pdf.h - 10 - FOOTER_HEIGHT_MM - top - rows * (caption_h + gap)) / rows)
    pdf.set_font("cjk", size=7.5)
    for index, image in enumerate(content.images):
        r, c = divmod(index, columns)
        x = 12 + c * (cell_w + gap)
        y = top + r * (cell_h + caption_h + gap)
        pdf.set_fill_color(0, 0, 0)
        pdf.rect(x, y, cell_w, cell_h, style="F")
        pdf.image(io.BytesIO(image.jpeg), x=x, y=y, w=cell_w, h=cell_h, keep_aspect_ratio=True)
        pdf.set_xy(x, y + cell_h + 0.5)
        pdf.set_text_color(60, 70, 80)
        pdf.cell(cell_w, caption_h - 0.5, image.caption[:48], align="C")
    if not content.images:
        pdf.set_xy(12, top + 20)
        pdf.set_font("cjk", size=11)
        pdf.cell(width, 8, "图像处理中，请扫码查看 Images are being processed: scan to view", align="C")


def _footer(pdf: FPDF, content: FilmSheetContent) -> None:
    """The QR code, how to open it, where the PIN is."""
    y = pdf.h - 10 - FOOTER_HEIGHT_MM + 4
    pdf.set_draw_color(200, 205, 210)
    pdf.set_line_width(0.3)
    pdf.line(12, y - 2, pdf.w - 12, y - 2)
    qr_size = 46
    _draw_qr(pdf, content.url, 12, y, qr_size)
    text_x = 12 + qr_size + 6
    text_w = pdf.w - 12 - text_x
    pdf.set_text_color(0, 0, 0)
    pdf.set_xy(text_x, y + 1)
    pdf.set_font("cjk", size=13)
    pdf.cell(text_w, 7, "手机扫码查看影像和报告", new_x="LEFT", new_y="NEXT")
    pdf.set_font("cjk", size=9)
    pdf.set_text_color(80, 90, 100)
    pdf.cell(text_w, 5, "Scan with your phone to see your images and report", new_x="LEFT", new_y="NEXT")
    pdf.set_xy(text_x, pdf.get_y() + 2)
    pdf.set_text_color(0, 0, 0)
    pdf.set_font("cjk", size=11)
    pdf.cell(text_w, 7, "提取码 PIN：__ __ __ __ __ __", new_x="LEFT", new_y="NEXT")
    pdf.set_font("cjk", size=8.5)
    pdf.set_text_color(60, 70, 80)
    pdf.multi_cell(text_w, 4.2,
                   "6位提取码印在取片凭条上，或由检查科室另行告知；请勿与他人分享。输错5次链接将被锁定。\n"
                   "The 6-digit PIN is on your collection slip from the imaging department. "
                   "Do not share it; five wrong PINs lock the link.", new_x="LEFT", new_y="NEXT")
    pdf.set_font("cjk", size=8)
    pdf.cell(text_w, 4.5, f"有效期至 Valid until {content.expires}", new_x="LEFT", new_y="NEXT")
    pdf.set_font("helvetica", size=6.5)
    pdf.multi_cell(text_w, 3.2, content.url)


# --------------------------------------------------------------------------- the worker's job


def grid_columns(count: int) -> int:
    """One image fills the page (a DR or ultrasound study), up to four go two a row."""
    return 1 if count <= 1 else 2 if count <= 4 else GRID_COLUMNS


def is_chest_ct(study: Study, series: list[Series]) -> bool:
    text = " ".join([study.description or ""] + [f"{s.body_part} {s.description}" for s in series]).upper()
    return "CT" in (study.modalities or "").upper().split("\\") and any(
        word in text for word in ("CHEST", "LUNG", "THORAX", "胸", "肺"))


def film_key(study_uid: str, share_id: int) -> str:
    return keys.film_sheet(study_uid, share_id)


def _key_first(grouped: list[tuple[Series, list[Instance]]], flagged: list[str],
               count: int) -> list[tuple[Series, Instance, int, bool]]:
    """Flagged key images first (in the document's order), then the spread picks of the rest."""
    where = {instance.sop_instance_uid: (s, instance, position)
             for s, items in grouped for position, instance in enumerate(items)}
    keyed = [(*where[uid], True) for uid in flagged if uid in where][:count]
    taken = {pick[1].sop_instance_uid for pick in keyed}
    rest = [(s, [i for i in items if i.sop_instance_uid not in taken]) for s, items in grouped]
    return keyed + [(*pick, False) for pick in _pick_key_images(rest, count - len(keyed))]


def _pick_key_images(series: list[tuple[Series, list[Instance]]], count: int) -> list[tuple[Series, Instance, int]]:
    """Up to `count` (series, instance, position) picks: every series gets its middle image,
    the rest are spread evenly through the larger series."""
    series = [(s, items) for s, items in series if items][:count]
    if not series or count <= 0:
        return []
    share_each = max(1, count // len(series))
    picks: list[tuple[Series, Instance, int]] = []
    for s, items in series:
        n = min(share_each, len(items))
        if n == len(items):
            positions = list(range(n))
        elif n == 1:
            positions = [len(items) // 2]
        else:  # evenly spaced, away from the very first and last slice
            positions = sorted({min(len(items) - 1, (k + 1) * len(items) // (n + 1)) for k in range(n)})
        picks.extend((s, items[p], p) for p in positions)
    return picks[:count]


def _patient_facts(session, study: Study) -> dict:
    """Sex, age at the exam and ID from the index; the impression once the report is final."""
    person = session.get(Patient, study.patient_pk)
    report = shares.report_for_study(session, study.study_instance_uid)
    return {"sex": SEX_LABELS.get(person.sex.upper(), person.sex), "age": age_at(person.birth_date, study.study_date),
            "patient_id": person.patient_id, "impression": report.impression if report else ""}


def _key_image_renders(store: ObjectStore, share_id: int, instance: Instance, size: int, windows, caption: str):
    """The instance's representative frame in each window (its own VOI for None); an
    instance that cannot be decoded leaves a gap, not a failed sheet."""
    try:
        ds = derive.load_dataset(store, instance.object_key)
        frame = derive.representative_frame(ds)
        out = []
        for name, window in windows:
            picture = pixels.fit(pixels.render_frame(ds, frame, window), size, size)
            out.append(KeyImage(pixels.encode(picture, "image/jpeg", KEY_IMAGE_QUALITY),
                                f"{name} · {caption}" if name else caption))
        return out
    except StoreUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure
        log.warning("imaging.film_sheet.image_failed share_id=%s sop=%s reason=%s",
                    share_id, instance.sop_instance_uid, exc)
        return []


def make_film_sheet(db: Database, store: ObjectStore, share_id: int, *, secret_key: str,
                    public_url: str) -> str | None:
    """Render and store the film sheet of one share; idempotent (same key, same content).

    Returns the object key, or None when the share is gone (missing, revoked, expired).
    Key images are rendered from the DICOM at print resolution; instances that cannot be
    decoded are skipped.
    """
    with db.scope(readonly=True) as session:
        share = session.get(Share, share_id)
        if share is None or shares.share_state(share) in ("revoked", "expired"):
            log.info("imaging.film_sheet.skipped share_id=%s", share_id)
            return None
        key = film_key(share.study_instance_uid, share.id)
        if share.film_state == "ready" and share.film_key == key and store.exists(key):
            return key
        study = session.get(Study, share.study_pk)
        summary = shares.film_study(session, share)
        series_rows = session.scalars(select(Series).where(Series.study_pk == study.id)
                                      .order_by(Series.series_number.asc().nullslast(), Series.id)).all()
        flagged = list(dict.fromkeys(key.sop_uid for key in keyimages.key_images(session, study.id)))
        grouped = []
        for s in series_rows:
            items = session.scalars(select(Instance).where(Instance.series_pk == s.id,
                                                           Instance.rows.is_not(None))).all()
            grouped.append((s, sorted(items, key=shares.viewing_order)))
        url = shares.share_url(public_url, shares.link_token(secret_key, share.token_nonce))
        expires = localtime.display(share.expires_at)[:10]
        accession = study.accession_number
        chest_ct = is_chest_ct(study, list(series_rows))
        patient = _patient_facts(session, study)
    windows = CHEST_CT_WINDOWS if chest_ct else ((None, None),)
    picks = _key_first(grouped, flagged, KEY_IMAGES // len(windows))
    size = SINGLE_IMAGE_PIXELS if len(picks) * len(windows) == 1 else KEY_IMAGE_PIXELS
    images = []
    for series, instance, position, key_image in picks:
        label = series.description or shares.MODALITY_ZH.get(series.modality, series.modality)
        number = f"第 {instance.instance_number or position + 1} 幅"
        caption = number if chest_ct else f"{label} · {number}"
        images += _key_image_renders(store, share_id, instance, size, windows,
                                     f"关键图像 Key · {caption}" if key_image else caption)
    pdf = build_film_sheet(FilmSheetContent(
        institution=summary.institution, patient_name=summary.patient_name, exam=summary.exam,
        date=summary.date, accession=accession, url=url, expires=expires, images=images,
        columns=(4 if len(images) > 4 else 2) if chest_ct else 0, **patient))
    store.put(key, pdf, content_type="application/pdf")
    with db.scope() as session:
        share = session.get(Share, share_id)
        if share is not None:
            share.film_key = key
            share.film_state = "ready"
    log.info("imaging.film_sheet.ok share_id=%s images=%s bytes=%s at=%s", share_id, len(images), len(pdf),
             utcnow().isoformat(timespec="seconds"))
    return key

