"""The pregnancy risk colours (孕产妇妊娠风险评估与管理工作规范, 国卫办妇幼发〔2017〕35号) and
the criteria a grading chooses from, as data, grouped as the 规范's 妊娠风险评估分级 table
groups them (1 基本情况, 2 妊娠合并症, 3 妊娠并发症; red: 1 合并症, 2 并发症).

A grading's colour is the highest colour among its criteria, green < yellow < orange < red;
purple (infectious disease) is kept beside it rather than ranked with it, so a pregnancy can be
"orange+purple" (the 规范's note: 除紫色外，如同时存在不同颜色分类，按照较高风险的分级标识).

The criteria are data, in criteria.csv beside this module (code, colour, Chinese, English, and
"yes" where the note must say what an "other …" is), one row per criterion in the table's order;
a code's first number is the group above. It opens in a spreadsheet for the check below.

CLINICAL CHECK NEEDED: the rows of criteria.csv were written from the 规范's table as far as it is
known here, with long sub-items merged and labels shortened. The clinical lead must check every
row against the published document (and any provincial edition in force) before go-live; codes
follow the table's numbering so that the check can go line by line.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from storage.errors import Invalid

LEVELS = ("green", "yellow", "orange", "red")  # ranked, lowest first; purple stands apart
COLOURS = (*LEVELS, "purple")
COLOUR_LABELS = {
    "green": ("绿色 低风险", "Green · low risk"),
    "yellow": ("黄色 一般风险", "Yellow · general risk"),
    "orange": ("橙色 较高风险", "Orange · higher risk"),
    "red": ("红色 高风险", "Red · high risk"),
    "purple": ("紫色 传染性疾病", "Purple · infectious disease"),
}


@dataclass(frozen=True)
class Criterion:
    code: str
    colour: str
    zh: str
    en: str
    needs_note: bool = False  # "other …": the note must say what


TABLE = Path(__file__).with_name("criteria.csv")


def _criterion(row: dict[str, str]) -> Criterion:
    """A row of the table; a colour or needs_note it does not know is refused, not read as no risk."""
    if row["colour"] not in COLOURS or row["needs_note"] not in ("", "yes"):
        raise ValueError(f"{TABLE.name}, {row['code']}: colour {row['colour']!r}, needs_note {row['needs_note']!r}")
    return Criterion(row["code"], row["colour"], row["zh"], row["en"], needs_note=row["needs_note"] == "yes")


def _load() -> dict[str, Criterion]:
    """utf-8-sig: a spreadsheet that saves the table back writes a BOM first."""
    with TABLE.open(encoding="utf-8-sig", newline="") as rows:
        found = [_criterion(row) for row in csv.DictReader(rows)]
    by_code = {c.code: c for c in found}
    if len(by_code) != len(found):
        raise ValueError(f"{TABLE.name}: a code stands twice (the second would replace the first)")
    return by_code


CRITERIA: dict[str, Criterion] = _load()


def by_colour() -> dict[str, list[Criterion]]:
    """The criteria grouped by colour, in the table's order (for the grading form)."""
    groups: dict[str, list[Criterion]] = {colour: [] for colour in COLOURS}
    for criterion in CRITERIA.values():
        groups[criterion.colour].append(criterion)
    return groups


@dataclass(frozen=True)
class Grade:
    """A risk colour: the highest of green/yellow/orange/red, plus purple beside it."""

    level: str = "green"
    infectious: bool = False

    @property
    def colour(self) -> str:
        """"orange", "purple" (infectious, nothing else above green) or "orange+purple"."""
        if not self.infectious:
            return self.level
        return "purple" if self.level == "green" else f"{self.level}+purple"

    @property
    def colours(self) -> tuple[str, ...]:
        """Each colour to show as its own badge."""
        return tuple(self.colour.split("+"))

    @property
    def headline(self) -> str:
        """One colour where only one fits (a consult's risk_colour): red, purple, orange, yellow, green."""
        if self.level == "red":
            return "red"
        return "purple" if self.infectious else self.level

    @property
    def label(self) -> str:
        """Chinese first: "橙色 较高风险 + 紫色 传染性疾病"."""
        return " + ".join(COLOUR_LABELS[c][0] for c in self.colours)

    @property
    def label_en(self) -> str:
        return " + ".join(COLOUR_LABELS[c][1] for c in self.colours)

    @classmethod
    def parse(cls, colour: str) -> "Grade":
        parts = (colour or "").split("+")
        levels = [p for p in parts if p in LEVELS]
        if any(p not in COLOURS for p in parts) or len(levels) > 1 or len(parts) > 2:
            raise Invalid(f"风险色无效 / not a risk colour: {colour!r}")
        return cls(levels[0] if levels else "green", "purple" in parts)


def grade_of(codes: list[str] | tuple[str, ...]) -> Grade:
    """The colour chosen criteria give: the highest non-purple colour, plus purple if any is purple.
    G0 (no risk found) stands alone; nothing chosen is refused rather than taken for green."""
    chosen = list(dict.fromkeys(c.strip() for c in codes if c and c.strip()))
    if not chosen:
        raise Invalid("请至少选择一项评估结果（无风险请选择 G0） / choose at least one criterion (G0 when none applies)")
    unknown = [c for c in chosen if c not in CRITERIA]
    if unknown:
        raise Invalid(f"未知的评估条目 / unknown criteria: {', '.join(unknown)}")
    if "G0" in chosen and len(chosen) > 1:
        raise Invalid("选择了风险条目时不能同时选择“基本情况良好” / G0 cannot be chosen with a risk criterion")
    colours = {CRITERIA[c].colour for c in chosen}
    level = max((c for c in colours if c in LEVELS), key=LEVELS.index, default="green")
    return Grade(level, "purple" in colours)
