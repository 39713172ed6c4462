"""Report templates by modality and body part; each adds structured fields to the three
free-text sections every report has (findings, impression, recommendation)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime

from consult import obstetrics
from storage import localtime
from storage.errors import Invalid


@dataclass(frozen=True)
class Field:
    name: str
    label: str
    unit: str = ""
    # number | count (whole) | text | ga (gestational age: 24, 24+1 or 24.5 weeks) | date | choice
    kind: str = "number"
    low: float | None = None  # the physically possible range of a number (a value beyond is refused)
    high: float | None = None
    options: dict = field(default_factory=dict)  # choice: {stored key: "中文 English"}
    aliases: tuple = ()  # choice: (word typed, key), checked in order
    contains: bool = True  # choice: an alias found inside the text counts (else the whole text)

    @property
    def english(self) -> str:
        """The English half of the label ("BPD" of "双顶径 BPD")."""
        return self.label.split(" ", 1)[-1]

    def shown(self, value) -> str:
        """A stored value as the editor and the report show it (a choice by its label)."""
        if self.kind == "choice":
            return self.options.get(str(value), str(value))
        return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Template:
    id: str
    label: str
    modality: str
    body_part: str
    findings_hint: str  # also the normal findings the editor inserts on one click
    fields: tuple[Field, ...] = field(default_factory=tuple)
    normal_impression: str = ""

    def biometry(self, fields: dict, exam_date=None) -> obstetrics.BiometryTable | None:
        """The obstetric record worked out from these fields at the exam date (GA by each
        measurement, composite GA, EDD, EFW, warnings); None for other templates or no values."""
        if self.id != OBSTETRIC or not fields:
            return None
        return obstetrics.table(obstetrics.assess(fields, exam_date))


OBSTETRIC = "obstetric_us"
# Words a reader types for the obstetric choices, longest first within a choice so that 前置
# is never read as 前壁's 前 (checked as substrings, case-insensitive).
PRESENTATION_WORDS = (("头位", "cephalic"), ("头", "cephalic"), ("枕", "cephalic"), ("cephalic", "cephalic"),
                      ("vertex", "cephalic"), ("臀位", "breech"), ("臀", "breech"), ("骶", "breech"),
                      ("breech", "breech"), ("横位", "transverse"), ("横", "transverse"), ("肩", "transverse"),
                      ("transverse", "transverse"), ("斜位", "oblique"), ("斜", "oblique"), ("oblique", "oblique"),
                      # fetal positions as sonographers abbreviate them: occiput (O), sacrum (S), scapula (Sc)
                      *((f"{side}{point}{face}", key) for key, point in (("transverse", "sc"), ("cephalic", "o"),
                                                                          ("breech", "s"))
                        for side in ("l", "r") for face in ("a", "p", "t")))
PLACENTA_WORDS = (("前置", "previa"), ("previa", "previa"), ("praevia", "previa"), ("低置", "low_lying"),
                  ("low", "low_lying"), ("宫底", "fundal"), ("fund", "fundal"), ("侧壁", "lateral"),
                  ("lateral", "lateral"), ("前壁", "anterior"), ("anterior", "anterior"), ("后壁", "posterior"),
                  ("posterior", "posterior"))
# A grade is the whole text (IV must not be read as I): with or without 级, in Roman, Chinese
# Roman or Arabic figures.
GRADE_WORDS = tuple((f"{word}{suffix}", key) for key, words in (("0", ("0",)), ("I", ("I", "Ⅰ", "1")),
                                                                 ("II", ("II", "Ⅱ", "2")), ("III", ("III", "Ⅲ", "3")))
                    for word in words for suffix in ("", "级", "度"))


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
    # Obstetric: the biometry is structured data (consult/obstetrics.py works out GA, EDD, EFW and
    # the warnings; imaging/ob_sr.py exports it as TID 5000). Ranges refuse the impossible only.
    Template(OBSTETRIC, "产科超声 Obstetric ultrasound", "US", "PELVIS",
             "宫内单活胎，胎心搏动可见，胎位头位；胎盘附着于子宫前壁，成熟度I级；羊水量正常。",
             (Field("ga_weeks", "孕周 GA", "周 weeks", "ga"), Field("lmp", "末次月经 LMP", "", "date"),
              Field("bpd_mm", "双顶径 BPD", "mm", low=5, high=120), Field("hc_mm", "头围 HC", "mm", low=20, high=450),
              Field("ac_mm", "腹围 AC", "mm", low=20, high=500), Field("fl_mm", "股骨长 FL", "mm", low=2, high=90),
              Field("efw_g", "估计胎儿体重 EFW", "g", low=20, high=7000),
              Field("afi_cm", "羊水指数 AFI", "cm", low=0, high=60), Field("fhr_bpm", "胎心率 FHR", "bpm", low=0, high=300),
              Field("cervix_mm", "宫颈长度 Cervical length", "mm", low=0, high=80),
              Field("presentation", "胎位 Presentation", "", "choice", options=obstetrics.PRESENTATIONS,
                    aliases=PRESENTATION_WORDS),
              Field("placenta", "胎盘位置 Placenta", "", "choice", options=obstetrics.PLACENTA_POSITIONS,
                    aliases=PLACENTA_WORDS),
              Field("placenta_grade", "胎盘成熟度 Placenta grade", "", "choice", options=obstetrics.PLACENTA_GRADES,
                    aliases=GRADE_WORDS, contains=False),
              Field("gravida", "孕次 Gravida", "", "count", low=1, high=20),
              Field("para", "产次 Para", "", "count", low=0, high=19)),
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
        return _ga_value(item, value)
    if item.kind == "date":
        return _date_value(item, value)
    if item.kind == "choice":
        return _choice_value(item, value)
    try:
        number = float(str(value).strip())
    except (TypeError, ValueError):
        raise Invalid(f"请填写数字 / {item.label} must be a number") from None
    if item.low is None and not 0 <= number < 100000:
        raise Invalid(f"数值超出范围 / {item.label} is out of range")
    if item.low is not None and not item.low <= number <= item.high:
        raise Invalid(f"{item.label} {number:g} {item.unit} 不可能：应在 {item.low:g}–{item.high:g} {item.unit} 之间 / "
                      f"{item.english} must be between {item.low:g} and {item.high:g} {item.unit}".replace("  ", " "))
    if item.kind == "count" and number != int(number):
        raise Invalid(f"{item.label} 请填写整数 / {item.english} must be a whole number")
    return number


def _ga_value(item: Field, value) -> str:
    match = GA_PATTERN.match(str(value))
    if not match or not 4 <= int(match.group(1)) <= 44:
        raise Invalid(f"孕周请写成 24+1（周+天）/ {item.label}: write weeks+days, e.g. 24+1")
    weeks, days, tenth = match.groups()
    return f"{int(weeks)}+{days}" if days else f"{int(weeks)}.{tenth}" if tenth else str(int(weeks))


DATE_PATTERN = re.compile(r"^\s*(\d{4})\s*[-/.年]?\s*(\d{1,2})\s*[-/.月]?\s*(\d{1,2})\s*日?\s*$")


def _date_value(item: Field, value) -> str:
    """2026-05-16 from 2026-05-16, 2026/5/16, 20260516 or 2026年5月16日; never after today."""
    match = DATE_PATTERN.match(str(value))
    try:
        day = date(*(int(part) for part in match.groups())) if match else None
    except ValueError:
        day = None
    if day is None:
        raise Invalid(f"{item.label} 日期请写成 2026-05-16 / {item.english}: write the date as 2026-05-16")
    if day > datetime.now(localtime.zone()).date():
        raise Invalid(f"{item.label} 不能晚于今天 / {item.english} cannot be after today")
    return day.isoformat()


def _choice_value(item: Field, value) -> str:
    """The option's key from its key, its label or a word a reader types for it."""
    text = str(value).strip()
    folded = text.casefold()
    for key, label in item.options.items():  # the key, the label or either half of it
        if folded in (key.casefold(), label.casefold(), *(half.casefold() for half in label.split(" ", 1))):
            return key
    for word, key in item.aliases:
        if (word.casefold() in folded) if item.contains else (word.casefold() == folded.replace(" ", "")):
            return key
    choices = "、".join(label.split()[0] for label in item.options.values())
    raise Invalid(f"{item.label} 请选择：{choices} / {item.english}: choose one of "
                  + ", ".join(label.split(" ", 1)[-1] for label in item.options.values()))


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
    if template.id == OBSTETRIC:  # combinations no body can have (HC shorter than π × BPD…)
        for name, message in obstetrics.check(fields):
            if strict:
                raise Invalid(message)
            typed[name], errors[name] = template_field(template, name).shown(fields.pop(name)), message
    out["fields"] = fields
    if typed:
        out["typed"], out["errors"] = typed, errors
    return out


def template_field(template: Template, name: str) -> Field:
    return next(item for item in template.fields if item.name == name)


def biometry_table(template_id: str, fields: dict, exam_date=None) -> obstetrics.BiometryTable | None:
    """The obstetric biometry table the report prints (None for other templates)."""
    template = TEMPLATES.get(template_id)
    return template.biometry(fields, exam_date) if template else None


def measurement_rows(template_id: str, fields: dict) -> list[tuple[str, str]]:
    """The template's measurements that have values, as (label, value with unit) for print."""
    rows = []
    for item in TEMPLATES[template_id].fields:
        if item.name in fields:
            value = fields[item.name]
            shown = item.shown(value)
            if item.kind == "ga":
                shown = f"孕{shown}周"
            elif item.unit:
                shown = f"{shown} {item.unit}"
            rows.append((item.label, shown))
    return rows
