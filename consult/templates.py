"""Report templates by modality and body part; each adds structured fields to the three
free-text sections every report has (findings, impression, recommendation)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from storage.errors import Invalid


@dataclass(frozen=True)
class Field:
    name: str
    label: str
    unit: str = ""
    kind: str = "number"  # number | text | ga (gestational age: 24, 24+1 or 24.5 weeks)


@dataclass(frozen=True)
class Template:
    id: str
    label: str
    modality: str
    body_part: str
    findings_hint: str  # also the normal findings the editor inserts on one click
    fields: tuple[Field, ...] = field(default_factory=tuple)
    normal_impression: str = ""


TEMPLATES = {t.id: t for t in (
    Template("chest_xray", "胸部X线 Chest X-ray", "DX", "CHEST",
             "两肺纹理清晰，未见实变影；心影大小形态正常；双侧膈面光整，肋膈角锐利。",
             normal_impression="心肺膈未见明显异常。"),
    Template("ct_chest", "胸部CT Chest CT", "CT", "CHEST",
             "两肺野清晰，未见实变及结节影；气管支气管通畅；纵隔内未见肿大淋巴结；双侧胸腔未见积液。",
             normal_impression="胸部CT平扫未见明显异常。"),
    Template("ct_head", "头颅CT Head CT", "CT", "HEAD",
             "脑实质内未见异常密度影；脑室系统大小形态正常；中线结构居中。",
             (Field("midline_shift_mm", "中线移位 Midline shift", "mm"),), normal_impression="颅脑CT平扫未见明显异常。"),
    Template("abdominal_us", "腹部超声 Abdominal ultrasound", "US", "ABDOMEN",
             "肝脏大小形态正常，实质回声均匀；胆囊壁光滑；胰、脾、双肾未见明显异常。",
             (Field("liver_span_mm", "肝脏斜径 Liver span", "mm"), Field("spleen_mm", "脾厚 Spleen", "mm")),
             normal_impression="肝、胆、胰、脾、双肾未见明显异常。"),
    Template("obstetric_us", "产科超声 Obstetric ultrasound", "US", "PELVIS",
             "宫内单活胎，胎心搏动可见，胎位头位；胎盘附着于子宫前壁，成熟度I级；羊水量正常。",
             (Field("bpd_mm", "双顶径 BPD", "mm"), Field("hc_mm", "头围 HC", "mm"), Field("ac_mm", "腹围 AC", "mm"),
              Field("fl_mm", "股骨长 FL", "mm"), Field("efw_g", "估计胎儿体重 EFW", "g"),
              Field("ga_weeks", "孕周 GA", "周 weeks", "ga"), Field("afi_cm", "羊水指数 AFI", "cm"),
              Field("fhr_bpm", "胎心率 FHR", "bpm"), Field("placenta", "胎盘位置 Placenta", "", "text")),
             normal_impression="宫内单活胎，超声孕周与孕龄相符。"),
)}


def for_study(modality: str, body_part: str = "", description: str = "") -> str:
    """A sensible default template from the study's modality, body part and description."""
    text = f"{body_part} {description}".upper()
    if modality == "CT":
        return "ct_head" if ("HEAD" in text or "BRAIN" in text or "头" in text or "颅" in text) else "ct_chest"
    if modality == "US":
        return "obstetric_us" if any(k in text for k in ("OB", "PELVIS", "产", "孕", "胎")) else "abdominal_us"
    return "chest_xray"


GA_PATTERN = re.compile(r"^\s*(\d{1,2})(?:\s*\+\s*([0-6])|\.(\d))?\s*$")  # 24 / 24+1 / 24.5


def _field_value(item: Field, value) -> float | str:
    """A field's value as stored, or Invalid with a message for the person typing it."""
    if item.kind == "text":
        return str(value)[:200]
    if item.kind == "ga":
        match = GA_PATTERN.match(str(value))
        if not match or not 4 <= int(match.group(1)) <= 44:
            raise Invalid(f"孕周请写成 24+1（周+天）/ {item.label}: write weeks+days, e.g. 24+1")
        weeks, days, tenth = match.groups()
        return f"{int(weeks)}+{days}" if days else f"{int(weeks)}.{tenth}" if tenth else str(int(weeks))
    try:
        number = float(str(value).strip())
    except (TypeError, ValueError):
        raise Invalid(f"请填写数字 / {item.label} must be a number") from None
    if not 0 <= number < 100000:
        raise Invalid(f"数值超出范围 / {item.label} is out of range")
    return number


def clean_content(template_id: str, content: dict, *, strict: bool = True) -> dict:
    """The report content the template allows: three texts and the template's fields.

    strict (signing): a bad field value raises Invalid. Not strict (autosave): bad values are
    kept as typed under "typed" with a message under "errors", so nothing typed is lost and
    the rest of the draft saves; the editor shows each message beside its field."""
    template = TEMPLATES.get(template_id)
    if template is None:
        raise Invalid(f"未知的报告模板 / unknown template {template_id!r}")
    out = {key: str(content.get(key, "") or "")[:20000] for key in ("findings", "impression", "recommendation")}
    fields, typed, errors = {}, {}, {}
    given = {**(content.get("typed") or {}), **(content.get("fields") or {})}
    for item in template.fields:
        value = given.get(item.name)
        if value in (None, ""):
            continue
        try:
            fields[item.name] = _field_value(item, value)
        except Invalid as exc:
            if strict:
                raise
            typed[item.name], errors[item.name] = str(value)[:200], exc.detail
    out["fields"] = fields
    if typed:
        out["typed"], out["errors"] = typed, errors
    return out


def measurement_rows(template_id: str, fields: dict) -> list[tuple[str, str]]:
    """The template's measurements that have values, as (label, value with unit) for print."""
    rows = []
    for item in TEMPLATES[template_id].fields:
        if item.name in fields:
            value = fields[item.name]
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            if item.kind == "ga":
                shown = f"孕{shown}周"
            elif item.unit:
                shown = f"{shown} {item.unit}"
            rows.append((item.label, shown))
    return rows
