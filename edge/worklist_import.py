"""A list of patients registered at once at the desk (批量导入), from a CSV file: the day's
antenatal visits exported from the 妇幼 system, or a spreadsheet typed elsewhere.

The file is UTF-8 (with or without BOM) or GB18030 (what Excel on Chinese Windows saves as
"CSV"), with a header row; COLUMNS says which headers are read, in Chinese or English. Each
row becomes the desk's form (`worklist.Registration`, cells as typed after the spreadsheet's
own spellings are turned into the form's: 女 -> F, 1990/1/1 -> 1990-01-01, 产科超声 -> US01)
and goes through the desk's own checks (`worklist.enter`). All or nothing: one bad row and
nothing is registered; every problem of every row is reported as
"第 N 行 row N · 字段 field: message", N as the spreadsheet numbers its rows (the header is 1).
The import is audited once (worklist.import, with the accession numbers). Never commits.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from edge import worklist
from edge.worklist import EXAMS, FormErrors, Registration
from edge.worklist_models import WorklistEntry
from imaging import persons
from maternal.criteria import COLOUR_LABELS
from storage import audit, localtime
from storage.audit import CLI_ACTOR
from storage.access import Principal
from storage.db import Database
from storage.errors import Invalid, PayloadTooLarge
from storage.models import Institution
from storage.service import get_institution

MAX_BYTES = 1024 * 1024
MAX_ROWS = 500
# A hundred lines of problems is more than anyone reads; the count says the rest.
MAX_PROBLEMS_SHOWN = 100
EXAMPLE_ID_BODY = "53082819900101002"  # Lancang county, born 1990-01-01, female (the example row's)


@dataclass(frozen=True)
class Column:
    key: str  # a Registration field, or name / exam, which are read into fields first
    zh: str  # the header the template writes
    en: str  # the English header
    aliases: tuple[str, ...] = ()  # other headers read as this column
    example: str = ""  # the template's example row ("" keeps the column out of the template)


# The columns read, in the template's order. Headers match case-insensitively, spaces and
# hyphens as underscores, and "姓名 Name" or "姓名(name)" by its first word. Other columns are
# ignored and named back. 姓名 is split after the surname (复姓 kept whole); a person without a
# family name (many Lahu and Dai names) goes in 名 with 姓 empty. Sex and birth date may stay
# empty when 身份证号 gives them; an empty 预约日期 is today, an empty 预约时间 now.
COLUMNS = (
    Column("name", "姓名", "name", ("full_name", "患者姓名"), "张秀英"),
    Column("family_name", "姓", "family_name", ("surname",)),
    Column("given_name", "名", "given_name"),
    Column("sex", "性别", "sex", ("gender",), "女"),
    Column("birth_date", "出生日期", "birth_date", ("birthday", "dob"), "1990-01-01"),
    Column("resident_id", "身份证号", "resident_id", ("身份证", "身份证号码", "id_number"),
           EXAMPLE_ID_BODY + persons.check_character(EXAMPLE_ID_BODY)),
    Column("phone", "电话", "phone", ("手机", "手机号", "联系电话", "mobile"), "13800001234"),
    Column("exam", "检查", "exam", ("检查项目", "procedure", "procedure_code"), "产科超声"),
    Column("station_ae", "设备", "station", ("station_ae",), "-"),
    Column("scheduled_date", "预约日期", "scheduled_date", ("date",), "today"),
    Column("scheduled_time", "预约时间", "scheduled_time", ("scheduled", "time"), "09:00"),
    Column("urgent", "加急", "urgent", (), "否"),
    Column("risk_colour", "妊娠风险", "risk_colour", ("风险", "风险颜色", "risk", "risk_color"), "黄"),
    Column("pinyin", "拼音", "pinyin", (), "-"),
    Column("patient_id", "患者ID", "patient_id", (), "-"),
)
BY_KEY = {column.key: column for column in COLUMNS}
# Where the desk's message for a field is shown: the column that carried it.
FIELD_COLUMN = {"modality": "exam", "procedure_code": "exam", "station_ae": "station_ae"}
COMPOUND_SURNAMES = ("欧阳", "司马", "上官", "诸葛", "东方", "皇甫", "尉迟", "万俟", "单于", "公孙", "慕容",
                     "令狐", "夏侯", "长孙", "宇文", "司徒", "端木", "独孤", "南宫", "西门", "澹台", "轩辕")
SEXES = {"女": "F", "男": "M", "其他": "O", "未知": "O", "female": "F", "male": "M", "other": "O"}
YES, NO = {"是", "1", "y", "yes", "true", "加急", "急", "√"}, {"", "否", "0", "n", "no", "false", "-"}
_DATE = re.compile(r"^(\d{4})\s*[-/.年]\s*(\d{1,2})\s*[-/.月]\s*(\d{1,2})\s*日?$")
_TIME = re.compile(r"^(\d{1,2})[:：](\d{2})(?:[:：]\d{2})?$")


class ListRefused(Invalid):
    """The list refused as a whole (422); `problems` are the lines people read, one each."""

    def __init__(self, problems: list[str]):
        super().__init__("未导入任何登记 / nothing was imported: " + "; ".join(problems[:10]))
        self.problems = problems


class ListTooLarge(PayloadTooLarge):
    """A file over MAX_BYTES (413), refused before it is read."""

    def __init__(self, size: int):
        line = (f"文件过大（{size / 1024 / 1024:.1f} MiB），上限 1 MiB，请分成几个文件 / the file is "
                f"{size / 1024 / 1024:.1f} MiB, over the 1 MiB limit: split it into several files")
        super().__init__(line)
        self.problems = [line]


@dataclass
class Row:
    number: int  # as the spreadsheet numbers it: the header is row 1
    registration: Registration
    problems: dict[str, str] = field(default_factory=dict)  # column key -> message (reading the cells)


@dataclass
class Sheet:
    rows: list[Row]
    columns: set[str]  # the column keys present
    ignored: list[str]  # headers not read


@dataclass(frozen=True)
class Imported:
    count: int
    accessions: list[str]
    first_day: str  # the earliest scheduled local day (YYYY-MM-DD): the desk shows that list
    ignored: list[str]


# -- reading the file ---------------------------------------------------------------------------


def decode(data: bytes) -> str:
    """The file's text: UTF-8 (a BOM dropped) first, then GB18030, which Excel on Chinese
    Windows writes; a workbook or a UTF-16 text export is refused with what to do instead."""
    if len(data) > MAX_BYTES:
        raise ListTooLarge(len(data))
    if data.startswith((b"PK\x03\x04", b"\xd0\xcf\x11\xe0", b"\xff\xfe", b"\xfe\xff")):
        raise ListRefused(["这不是 CSV 文件：请在 Excel 中“另存为” CSV / this is not a CSV file: in Excel, "
                           "use Save As and choose CSV"])
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            _refuse_damaged_utf8(data)
            continue
        if not text.strip():
            raise ListRefused(["文件是空的 / the file is empty"])
        return text
    raise ListRefused(["无法识别文件编码，请另存为“CSV UTF-8” / the file is neither UTF-8 nor GB18030: "
                       "save it as CSV UTF-8"])


def _refuse_damaged_utf8(data: bytes) -> None:
    """A UTF-8 file with a few bad bytes is refused at its line: read as GB18030 it would
    decode without error into wrong names. (GB18030 Chinese read as UTF-8 is nearly all bad.)"""
    text = data.decode("utf-8", errors="replace")
    bad = text.count("\ufffd")
    if 0 < bad and sum(1 for ch in text if ord(ch) > 0x7F) - bad >= 10 * bad:
        line = text[:text.index("\ufffd")].count("\n") + 1
        raise ListRefused([f"第 {line} 行 row {line}: 文件是 UTF-8 但有损坏的字符，请重新导出 / the file is UTF-8 with "
                           "damaged characters: export it again"])


def _normal(header: str) -> str:
    return re.sub(r"[\s\-]+", "_", header.strip().strip("\ufeff").lower())


HEADERS = {_normal(name): column.key for column in COLUMNS for name in (column.zh, column.en, *column.aliases)}


def _column_of(header: str) -> str | None:
    """The column key a header names: whole, or by its first word ("姓名 Name", "姓名(name)")."""
    whole = _normal(header)
    return HEADERS.get(whole) or HEADERS.get(re.split(r"[_(（]", whole, maxsplit=1)[0])


def _header(cells: list[str]) -> tuple[list[str | None], list[str]]:
    """(the column key of each cell or None, the headers ignored); refuses a column named twice
    or a required one missing."""
    keys = [_column_of(cell) for cell in cells]
    seen: dict[str, str] = {}
    for cell, key in zip(cells, keys):
        if key and key in seen:
            raise ListRefused([f"列“{seen[key]}”和“{cell}”是同一项，请删去一列 / the columns {seen[key]!r} and "
                               f"{cell!r} are the same field: remove one"])
        if key:
            seen[key] = cell
    missing = []
    if not {"name", "given_name"} & seen.keys():
        missing.append("缺少必需的列：姓名，或 姓 与 名 / missing the required column 姓名 (name), "
                       "or 姓 and 名 (family_name, given_name)")
    if "exam" not in seen:
        missing.append("缺少必需的列：检查 / missing the required column 检查 (exam): an exam code such as "
                       "DX01 or a name such as 胸部正位")
    if missing:
        raise ListRefused(missing)
    return keys, [cell.strip() for cell, key in zip(cells, keys) if key is None and cell.strip()]


def _records(text: str) -> list[tuple[int, list[str]]]:
    """(row number, cells) of every non-blank record, the header first."""
    try:
        return [(number, cells) for number, cells in enumerate(csv.reader(io.StringIO(text, newline="")), start=1)
                if any(cell.strip() for cell in cells)]
    except csv.Error as exc:
        raise ListRefused([f"文件无法按 CSV 读取 / the file cannot be read as CSV: {exc}"]) from None


def read_sheet(data: bytes) -> Sheet:
    """The rows of a CSV list as desk forms; the file refused whole when it cannot be read,
    is empty, has too many rows or lacks a required column."""
    records = _records(decode(data))
    if not records:
        raise ListRefused(["文件是空的 / the file is empty"])
    keys, ignored = _header(records[0][1])
    body = records[1:]
    if not body:
        raise ListRefused(["表头下没有数据行 / there are no rows under the header"])
    if len(body) > MAX_ROWS:
        raise ListRefused([f"超过 {MAX_ROWS} 行（本文件 {len(body)} 行），请分成几个文件 / more than {MAX_ROWS} rows "
                           f"(this file has {len(body)}): split it into several files"])
    rows = [_row(number, keys, cells) for number, cells in body]
    return Sheet(rows=rows, columns={key for key in keys if key}, ignored=ignored)


# -- a row's cells as the desk's form ------------------------------------------------------------


def split_name(full: str) -> tuple[str, str]:
    """'张秀英' -> ('张', '秀英'), '欧阳娜娜' -> ('欧阳', '娜娜'); a transliterated name with a
    middle dot, a single character or Latin letters without a space stay whole as the given name."""
    full = " ".join(full.split())
    if full.isascii():
        family, _, given = full.partition(" ")
        return (family, given) if given else ("", family)
    if "·" in full or "•" in full or len(full) < 2:
        return "", full
    cut = 2 if full[:2] in COMPOUND_SURNAMES else 1
    return full[:cut], full[cut:]


def _iso_date(text: str) -> str:
    """'1990/1/1', '1990.1.1', '1990年1月1日' -> '1990-01-01' (Excel writes the first); other
    text as typed, for the desk's check to refuse."""
    found = _DATE.match(text.strip())
    return f"{found[1]}-{int(found[2]):02d}-{int(found[3]):02d}" if found else text.strip()


def _iso_time(text: str) -> str:
    found = _TIME.match(text.strip())
    return f"{int(found[1]):02d}:{found[2]}" if found else text.strip()


EXAM_CODES = {spelling.lower(): (modality, code) for modality, exams in EXAMS.items() for code, zh, en in exams
              for spelling in (code, zh, en, f"{zh} {en}")}
COLOUR_WORDS = {spelling.lower(): colour for colour, (zh, en) in COLOUR_LABELS.items()
                for spelling in (colour, zh, zh.split()[0], zh[0], en.split()[0], f"{zh} {en}")}


def _exam(cell: str, problems: dict[str, str]) -> tuple[str, str]:
    found = EXAM_CODES.get(" ".join(cell.split()).lower())
    if found is None:
        problems["exam"] = (f"未知的检查“{cell}”：请用代码（如 DX01）或名称（如 胸部正位） / unknown exam {cell!r}: "
                            "use a code (DX01) or a name (胸部正位)" if cell else
                            "请填写检查 / the exam is required")
        return "", cell
    return found


def _urgent(cell: str, problems: dict[str, str]) -> bool:
    value = cell.strip().lower()
    if value not in YES | NO:
        problems["urgent"] = "加急请填“是”或“否” / urgent: write 是 (yes) or 否 (no)"
    return value in YES


def _when(cells: dict[str, str]) -> tuple[str, str]:
    """(date, time): a time cell may carry the date too ("2026-12-05 09:30", as Excel writes a
    date and time), used when the date column is empty."""
    day, at = cells.get("scheduled_date", ""), cells.get("scheduled_time", "")
    if " " in at.strip():
        typed_day, at = at.strip().split(None, 1)
        day = day or typed_day
    return _iso_date(day), _iso_time(at)


def _row(number: int, keys: list[str | None], cells: list[str]) -> Row:
    problems: dict[str, str] = {}
    if len(cells) > len(keys) and any(cell.strip() for cell in cells[len(keys):]):
        problems["row"] = "这一行比表头多出几格（单元格中的逗号？） / more cells than the header (a comma in a cell?)"
    typed = {key: cell.strip() for key, cell in zip(keys, cells) if key}
    family, given = typed.get("family_name", ""), typed.get("given_name", "")
    if not given and typed.get("name"):
        family, given = split_name(typed["name"])
    modality, code = _exam(typed.get("exam", ""), problems)
    day, at = _when(typed)
    sex = typed.get("sex", "")
    registration = Registration(
        family_name=family, given_name=given, pinyin=typed.get("pinyin", ""), sex=SEXES.get(sex.lower(), sex),
        birth_date=_iso_date(typed.get("birth_date", "")), resident_id=typed.get("resident_id", ""),
        phone=typed.get("phone", ""), patient_id=typed.get("patient_id", ""), modality=modality,
        procedure_code=code, station_ae=typed.get("station_ae", ""), scheduled_date=day, scheduled_time=at,
        risk_colour=COLOUR_WORDS.get(typed.get("risk_colour", "").lower(), typed.get("risk_colour", "")),
        urgent=_urgent(typed.get("urgent", ""), problems))
    return Row(number=number, registration=registration, problems=problems)


# -- registering the rows --------------------------------------------------------------------


def _label(key: str, sheet: Sheet) -> str:
    """The column a message belongs to, as "中文 english"."""
    if key in ("family_name", "given_name") and "name" in sheet.columns and key not in sheet.columns:
        key = "name"
    column = BY_KEY.get(FIELD_COLUMN.get(key, key))
    return f"{column.zh} {column.en}" if column else "整行 whole row"


def problem_line(number: int, label: str, message: str) -> str:
    return f"第 {number} 行 row {number} · {label}: {message}"


def _register_all(session: Session, institution: Institution, principal: Principal, sheet: Sheet, *,
                  digest: str, filename: str, source: str) -> Imported:
    entries: list[WorklistEntry] = []
    problems: list[str] = []
    for row in sheet.rows:
        found: dict[str, str] = {}
        try:
            entries.append(worklist.enter(session=session, institution=institution, registration=row.registration,
                                          registered_by=principal.name))
        except FormErrors as exc:
            found = {_label(key, sheet): message for key, message in exc.errors.items()}
        # What reading the cell found says more than the desk's check of what it became.
        found.update({_label(key, sheet): message for key, message in row.problems.items()})
        problems += [problem_line(row.number, label, message) for label, message in found.items()]
    if problems:
        raise ListRefused(problems)  # the caller's unit of work rolls back the rows entered
    accessions = [entry.accession_number for entry in entries]
    audit.append(session, principal=principal, action="worklist.import", object_type="worklist",
                 object_id=f"sha256:{digest}", source=source,
                 detail={"count": len(entries), "file": filename[:120], "entries": accessions,
                         "resident_ids": sum(1 for entry in entries if entry.resident_id)})
    days = sorted(localtime.display(entry.scheduled_at, "%Y-%m-%d") for entry in entries)
    return Imported(count=len(entries), accessions=accessions, first_day=days[0], ignored=sheet.ignored)


def import_list(*, session: Session, principal: Principal, data: bytes, filename: str = "",
                source: str = "") -> Imported:
    """Registers every row of a CSV list on the principal's worklist, or none (ListRefused);
    who may is who may register at the desk (audited once: worklist.import)."""
    institution = worklist.desk_institution(session, principal)
    sheet = read_sheet(data)
    return _register_all(session, institution, principal, sheet, digest=hashlib.sha256(data).hexdigest(),
                         filename=filename, source=source)


def cli_import(db: Database, *, institution_code: str, data: bytes, filename: str) -> Imported:
    """`lancang edge import-worklist` at the edge: the institution's list in its own unit of
    work, registered by the command line (audited as system:cli for that institution)."""
    sheet = read_sheet(data)
    with db.scope() as session:
        institution = get_institution(session=session, code=institution_code)
        principal = Principal(kind="system", name=CLI_ACTOR, institution_id=institution.id,
                              institution_code=institution.code)
        return _register_all(session, institution, principal, sheet, digest=hashlib.sha256(data).hexdigest(),
                             filename=filename, source="cli")


def template_csv() -> bytes:
    """The template to fill in: the header row and one example row, UTF-8 with a BOM so that
    Excel opens it with the Chinese right."""
    out = io.StringIO(newline="")
    columns = [column for column in COLUMNS if column.example]
    today = worklist.localtime_today().isoformat()
    examples = {"-": "", "today": today}
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([column.zh for column in columns])
    writer.writerow([examples.get(column.example, column.example) for column in columns])
    return "\ufeff".encode() + out.getvalue().encode("utf-8")
