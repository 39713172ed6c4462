"""The obstetric ultrasound biometry record (产科超声生物测量): gestational age from each
measurement and combined, the estimated fetal weight with its range, the EDD, and what is
outside the range expected for the gestational age. Pure: no database, no DICOM (the SR is
imaging/ob_sr.py, which takes the plain values this module works out).

Sources of the formulas (all measurements in cm, ages in menstrual weeks):

* GA from one measurement and from several: Hadlock FP, Deter RL, Harrist RB, Park SK.
  Estimating fetal age: computer-assisted analysis of multiple fetal growth parameters.
  Radiology 1984;152:497-501 (361 fetuses, 14-42 weeks): its single- and multi-parameter
  regression models, and the variability (±2 SD) of each by six-week interval.
* EFW: Hadlock FP, Harrist RB, Sharman RS, Deter RL, Park SK. Estimation of fetal weight with
  the use of head, body, and femur measurements - a prospective study. Am J Obstet Gynecol
  1985;151:333-337: log10(EFW g) models; the four-parameter model (BPD, HC, AC, FL) first.
* EFW expected for the GA: Hadlock FP, Harrist RB, Martinez-Poyer J. In utero analysis of
  fetal growth: a sonographic weight standard. Radiology 1991;181:129-133:
  ln(weight g) = 0.578 + 0.332 GA - 0.00354 GA^2, uniform variance 12.7 % (1 SD).
* EDD: Naegele's rule, LMP + 280 days; from ultrasound, exam date + (280 days - GA).

CLINICAL CHECK NEEDED: the ±2 SD table (TWO_SD) and the warning thresholds were written from
the sources as far as they are known here; the clinical lead checks them against the papers
before go-live, as for maternal/criteria.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, timedelta
from html import escape

from imaging.ob_sr import Observations

TERM_DAYS = 280  # Naegele: 40 weeks from the first day of the LMP
BIOMETRY = ("bpd", "hc", "ac", "fl")
FIELD_OF = {"bpd": "bpd_mm", "hc": "hc_mm", "ac": "ac_mm", "fl": "fl_mm"}
LABELS = {"bpd": "双顶径 BPD", "hc": "头围 HC", "ac": "腹围 AC", "fl": "股骨长 FL"}

# Hadlock 1984: menstrual age (weeks) from one measurement (cm).
SINGLE = {
    "bpd": lambda c: 9.54 + 1.482 * c + 0.1676 * c ** 2,
    "hc": lambda c: 8.96 + 0.540 * c + 0.0003 * c ** 3,
    "ac": lambda c: 8.14 + 0.753 * c + 0.0036 * c ** 2,
    "fl": lambda c: 10.35 + 2.460 * c + 0.170 * c ** 2,
}
# Hadlock 1984: the multi-parameter models, most parameters first (the composite GA
# uses the first whose parameters were all measured). BPD with HC alone has no model there:
# HC alone is used then (the paper's strongest single predictor).
COMBINED = (
    (("bpd", "hc", "ac", "fl"), lambda m: 10.85 + 0.060 * m["hc"] * m["fl"] + 0.6700 * m["bpd"] + 0.1680 * m["ac"]),
    (("hc", "ac", "fl"), lambda m: 10.33 + 0.031 * m["hc"] * m["fl"] + 0.361 * m["hc"] + 0.0298 * m["ac"] * m["fl"]),
    (("bpd", "ac", "fl"), lambda m: 10.61 + 0.175 * m["bpd"] * m["fl"] + 0.297 * m["ac"] + 0.710 * m["fl"]),
    (("bpd", "hc", "ac"), lambda m: 10.58 + 0.005 * m["hc"] ** 2 + 0.3635 * m["ac"] + 0.02864 * m["bpd"] * m["ac"]),
    (("bpd", "hc", "fl"), lambda m: 11.38 + 0.070 * m["hc"] * m["fl"] + 0.98 * m["bpd"]),
    (("hc", "fl"), lambda m: 11.19 + 0.070 * m["hc"] * m["fl"] + 0.263 * m["hc"]),
    (("ac", "fl"), lambda m: 10.47 + 0.442 * m["ac"] + 0.314 * m["fl"] ** 2 - 0.0121 * m["fl"] ** 3),
    (("bpd", "fl"), lambda m: 10.50 + 0.197 * m["bpd"] * m["fl"] + 0.950 * m["fl"] + 0.730 * m["bpd"]),
    (("hc", "ac"), lambda m: 10.31 + 0.012 * m["hc"] ** 2 + 0.385 * m["ac"]),
    (("bpd", "ac"), lambda m: 9.57 + 0.524 * m["ac"] + 0.122 * m["bpd"] ** 2),
    (("hc",), lambda m: SINGLE["hc"](m["hc"])), (("fl",), lambda m: SINGLE["fl"](m["fl"])),
    (("bpd",), lambda m: SINGLE["bpd"](m["bpd"])), (("ac",), lambda m: SINGLE["ac"](m["ac"])),
)
# ±2 SD (weeks) of the age predicted, by menstrual-age interval 12-18, 18-24, 24-30, 30-36,
# 36-42 weeks (Hadlock 1984); "composite" is the four-parameter model's.
TWO_SD = {"bpd": (1.2, 1.7, 2.2, 3.1, 3.2), "hc": (1.2, 1.5, 2.1, 3.0, 2.7), "ac": (1.7, 2.1, 2.2, 3.0, 2.5),
          "fl": (1.4, 1.8, 2.1, 3.0, 3.1), "composite": (1.1, 1.4, 1.8, 2.1, 2.5)}
# Hadlock 1985 log10(EFW g) models, most parameters first: (parameters, key, formula). The key
# names the model for print and for the SR's equation code (imaging/ob_sr.py EFW_EQUATIONS).
EFW_MODELS = (
    (("bpd", "hc", "ac", "fl"), "hadlock1985_bpd_hc_ac_fl",
     lambda m: 1.3596 - 0.00386 * m["ac"] * m["fl"] + 0.0064 * m["hc"] + 0.00061 * m["bpd"] * m["ac"]
     + 0.0424 * m["ac"] + 0.174 * m["fl"]),
    (("hc", "ac", "fl"), "hadlock1985_hc_ac_fl",
     lambda m: 1.326 - 0.00326 * m["ac"] * m["fl"] + 0.0107 * m["hc"] + 0.0438 * m["ac"] + 0.158 * m["fl"]),
    (("bpd", "ac", "fl"), "hadlock1985_bpd_ac_fl",
     lambda m: 1.335 - 0.0034 * m["ac"] * m["fl"] + 0.0316 * m["bpd"] + 0.0457 * m["ac"] + 0.1623 * m["fl"]),
    (("ac", "fl"), "hadlock1985_ac_fl",
     lambda m: 1.304 + 0.05281 * m["ac"] + 0.1938 * m["fl"] - 0.004 * m["ac"] * m["fl"]),
)
EFW_MODEL_LABELS = {"hadlock1985_bpd_hc_ac_fl": "Hadlock 1985 (BPD, HC, AC, FL)",
                    "hadlock1985_hc_ac_fl": "Hadlock 1985 (HC, AC, FL)",
                    "hadlock1985_bpd_ac_fl": "Hadlock 1985 (BPD, AC, FL)", "hadlock1985_ac_fl": "Hadlock 1985 (AC, FL)"}
# Which model: the four-parameter one when BPD, HC, AC and FL were all measured. Its ±2 SD is
# about 14.6 % of the estimate (Hadlock 1985; the figure ultrasound systems print), hence ±15 %;
# the smaller models' SD is a little wider and the same ±15 % is printed for them.
EFW_RANGE = 0.15
WEIGHT_SD = 0.127  # Hadlock 1991: 1 SD of weight for GA, as a fraction of the mean
FHR_RANGE = (110, 160)  # bpm, normal baseline
AFI_RANGE = (5.0, 25.0)  # cm: below oligohydramnios, above polyhydramnios
SHORT_CERVIX_MM, SHORT_CERVIX_BEFORE_DAYS = 25.0, 24 * 7

PRESENTATIONS = {"cephalic": "头位 Cephalic", "breech": "臀位 Breech", "transverse": "横位 Transverse",
                 "oblique": "斜位 Oblique"}
PLACENTA_POSITIONS = {"anterior": "前壁 Anterior", "posterior": "后壁 Posterior", "fundal": "宫底 Fundal",
                      "lateral": "侧壁 Lateral", "low_lying": "低置 Low-lying", "previa": "前置 Previa"}
PLACENTA_GRADES = {"0": "0级 Grade 0", "I": "I级 Grade I", "II": "II级 Grade II", "III": "III级 Grade III"}


def ga_weeks(key: str, mm: float) -> float:
    """Menstrual age (weeks) from one measurement in mm (Hadlock 1984)."""
    return SINGLE[key](mm / 10.0)


def composite_weeks(measured_mm: dict[str, float]) -> tuple[float, tuple[str, ...]] | None:
    """(menstrual age in weeks, the parameters its model used) from whichever of BPD, HC, AC, FL
    were measured (Hadlock 1984's multi-parameter models), or None when none was."""
    cm = {key: value / 10.0 for key, value in measured_mm.items() if key in BIOMETRY and value}
    for parameters, model in COMBINED:
        if all(p in cm for p in parameters):
            return model(cm), parameters
    return None


def efw_grams(measured_mm: dict[str, float]) -> tuple[float, str] | None:
    """(EFW in g, model key) by the fullest Hadlock 1985 model the measurements allow; AC and FL
    at least (every Hadlock 1985 model has both), else None."""
    cm = {key: value / 10.0 for key, value in measured_mm.items() if key in BIOMETRY and value}
    for parameters, key, model in EFW_MODELS:
        if all(p in cm for p in parameters):
            return 10 ** model(cm), key
    return None


def expected_weight(weeks: float) -> float:
    """The 50th percentile fetal weight (g) at this menstrual age (Hadlock 1991)."""
    return math.exp(0.578 + 0.332 * weeks - 0.00354 * weeks ** 2)


def weight_percentile(grams: float, weeks: float) -> float:
    """The EFW's percentile for the GA, under Hadlock 1991's normal model (SD 12.7 % of the mean)."""
    z = (grams / expected_weight(weeks) - 1.0) / WEIGHT_SD
    return 50.0 * (1.0 + math.erf(z / math.sqrt(2.0)))


def two_sd_weeks(key: str, weeks: float) -> float:
    """±2 SD (weeks) of an age predicted from `key` around this menstrual age (its 6-week interval)."""
    index = min(4, max(0, int((weeks - 12) // 6)))
    return TWO_SD[key][index]


def measurement_for(key: str, weeks: float) -> float:
    """The measurement (mm) that the regression dates at `weeks`: the inverse of ga_weeks, by
    bisection (each regression rises with the measurement)."""
    low, high = 0.01, 60.0  # cm; every regression's value at 60 cm is far past term
    for _ in range(60):
        middle = (low + high) / 2
        if SINGLE[key](middle) < weeks:
            low = middle
        else:
            high = middle
    return round((low + high) / 2 * 10.0, 1)


# -- values as typed ---------------------------------------------------------------------------


def parse_ga_days(text) -> int | None:
    """Days of gestation from a stored GA ("24+1" weeks+days, "24.5" weeks, "24"), or None."""
    value = str(text or "").strip()
    try:
        if "+" in value:
            weeks, days = value.split("+", 1)
            return int(weeks) * 7 + int(days)
        return int(round(float(value) * 7)) if value else None
    except ValueError:  # not as the template stores it (an old draft): no GA rather than an error
        return None


def exam_day(value) -> date | None:
    """A DICOM date (20261101), an ISO date or a date, as a date; None when there is none."""
    if isinstance(value, date):
        return value
    text = str(value or "").strip().replace("-", "")
    if len(text) == 8 and text.isdigit():
        try:
            return date(int(text[:4]), int(text[4:6]), int(text[6:]))
        except ValueError:
            return None
    return None


def weeks_days(days: float | None) -> str:
    """26+3 for 185 days; — for none."""
    if days is None:
        return "—"
    whole = int(round(days))
    return f"{whole // 7}+{whole % 7}"


def check(fields: dict) -> list[tuple[str, str]]:
    """The physically impossible combinations of these (individually valid) values, as
    (field name, message) for the person typing them. A circumference is at least π times the
    ellipse's short axis, which the BPD measures (outer to inner edge, less still); 10 % is left
    for calipers. Para counts pregnancies carried before this one, so it is below gravida."""
    problems = []
    bpd, hc = fields.get("bpd_mm"), fields.get("hc_mm")
    if bpd and hc and hc < 0.9 * math.pi * bpd:
        least = 0.9 * math.pi * bpd
        problems.append(("hc_mm", f"头围 HC {hc:g} mm 不可能短于 π×双顶径的九成（{least:.0f} mm）/ HC {hc:g} mm "
                                  f"cannot be shorter than 0.9 × π × BPD ({least:.0f} mm)"))
    gravida, para = fields.get("gravida"), fields.get("para")
    if gravida is not None and para is not None and para >= gravida:
        problems.append(("para", f"产次 {para:g} 须小于孕次 {gravida:g}（孕次含本次妊娠）/ para {para:g} "
                                 f"must be below gravida {gravida:g}, which counts this pregnancy"))
    return problems


# -- the record as the report states it ---------------------------------------------------------


BASES = {"stated": ("临床", "stated"), "lmp": ("末次月经", "LMP"), "composite": ("综合超声", "composite ultrasound")}


@dataclass(frozen=True)
class Dating:
    """The pregnancy's dates: GA by LMP, as stated, by ultrasound; which one the rest is read
    against (the reference: stated, else LMP, else composite) and the EDD."""

    lmp: date | None = None
    lmp_days: int | None = None
    stated_days: int | None = None
    composite_days: int | None = None
    composite_two_sd_days: int | None = None
    composite_parameters: tuple[str, ...] = ()
    reference_days: int | None = None
    reference_basis: str = ""
    edd: date | None = None
    edd_basis: str = ""  # lmp | ultrasound
    edd_by_lmp: date | None = None
    edd_by_ultrasound: date | None = None


@dataclass(frozen=True)
class Biometric:
    """One of BPD, HC, AC, FL: the value, the GA it gives, and the range expected at the
    reference GA (the measurements the regression dates within its ±2 SD of it)."""

    key: str
    label: str
    mm: float
    ga_days: int
    two_sd_days: int | None = None
    expected_mm: tuple[float, float] | None = None
    flag: str = ""  # "" | small | large


@dataclass(frozen=True)
class Weight:
    """The EFW (Hadlock 1985 when AC and FL were measured, else as typed), its ±15 % range,
    and where it stands for the GA (Hadlock 1991)."""

    grams: float | None = None
    model: str = ""  # a key of EFW_MODEL_LABELS, "" when typed
    low: float | None = None
    high: float | None = None
    typed: float | None = None
    percentile: float | None = None
    expected: tuple[float, float] | None = None  # P10-P90 at the reference GA


@dataclass(frozen=True)
class Finding:
    """A value outside what is expected: shown, never refused."""

    field: str
    message: str


@dataclass(frozen=True)
class Assessment:
    exam_date: date | None
    dating: Dating
    biometry: tuple[Biometric, ...]
    weight: Weight
    observed: Observations = Observations()
    warnings: tuple[Finding, ...] = ()


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _count(fields: dict, name: str) -> int | None:
    value = _number(fields.get(name))
    return int(value) if value is not None else None


def _dating(fields: dict, exam: date | None, measured: dict[str, float]) -> Dating:
    lmp = exam_day(fields.get("lmp"))
    lmp_days = (exam - lmp).days if exam and lmp else None
    stated = parse_ga_days(fields.get("ga_weeks"))
    found = composite_weeks(measured)
    composite = int(round(found[0] * 7)) if found else None
    reference, basis = next(((d, b) for d, b in ((stated, "stated"), (lmp_days, "lmp"), (composite, "composite"))
                             if d is not None), (None, ""))
    by_lmp = lmp + timedelta(days=TERM_DAYS) if lmp else None
    by_us = exam + timedelta(days=TERM_DAYS - composite) if exam and composite is not None else None
    key = "composite" if found and len(found[1]) > 1 else (found[1][0] if found else "")
    two_sd = int(round(two_sd_weeks(key, found[0]) * 7)) if found else None
    return Dating(lmp=lmp, lmp_days=lmp_days, stated_days=stated, composite_days=composite,
                  composite_two_sd_days=two_sd, composite_parameters=found[1] if found else (),
                  reference_days=reference, reference_basis=basis, edd=by_lmp or by_us,
                  edd_basis="lmp" if by_lmp else "ultrasound" if by_us else "", edd_by_lmp=by_lmp,
                  edd_by_ultrasound=by_us)


def _biometric(key: str, mm: float, reference_days: int | None) -> Biometric:
    days = int(round(ga_weeks(key, mm) * 7))
    if reference_days is None:
        return Biometric(key, LABELS[key], mm, days)
    weeks = reference_days / 7
    two_sd = two_sd_weeks(key, weeks)
    expected = (measurement_for(key, weeks - two_sd), measurement_for(key, weeks + two_sd))
    flag = "small" if days < reference_days - two_sd * 7 else "large" if days > reference_days + two_sd * 7 else ""
    return Biometric(key, LABELS[key], mm, days, int(round(two_sd * 7)), expected, flag)


def _weight(fields: dict, measured: dict[str, float], dating: Dating) -> Weight:
    typed = _number(fields.get("efw_g"))
    found = efw_grams(measured)
    grams, model = found if found else (typed, "")
    if grams is None:
        return Weight()
    percentile = expected = None
    if dating.reference_basis in ("stated", "lmp") and 10 * 7 <= dating.reference_days <= 42 * 7:
        weeks = dating.reference_days / 7
        percentile = weight_percentile(grams, weeks)
        mean, spread = expected_weight(weeks), 1.2816 * WEIGHT_SD  # z of the 10th/90th percentile
        expected = (mean * (1 - spread), mean * (1 + spread))
    return Weight(grams, model, grams * (1 - EFW_RANGE), grams * (1 + EFW_RANGE), typed, percentile, expected)


def assess(fields: dict, exam_date=None) -> Assessment:
    """The record of a report's (cleaned) fields at an exam date: dates, GA by each measurement
    and combined, EFW with its range, and what lies outside the range expected for the GA."""
    exam = exam_day(exam_date)
    measured = {key: float(fields[FIELD_OF[key]]) for key in BIOMETRY
                if (_number(fields.get(FIELD_OF[key])) or 0) > 0}
    dating = _dating(fields, exam, measured)
    biometry = tuple(_biometric(key, mm, dating.reference_days) for key, mm in measured.items())
    found = Assessment(exam_date=exam, dating=dating, biometry=biometry, weight=_weight(fields, measured, dating),
                       observed=Observations(
                           afi_cm=_number(fields.get("afi_cm")), fhr_bpm=_number(fields.get("fhr_bpm")),
                           cervix_mm=_number(fields.get("cervix_mm")), presentation=str(fields.get("presentation") or ""),
                           placenta=str(fields.get("placenta") or ""),
                           placenta_grade=str(fields.get("placenta_grade") or ""), gravida=_count(fields, "gravida"),
                           para=_count(fields, "para")))
    return Assessment(**{**found.__dict__, "warnings": tuple(_warnings(found))})


def _warnings(found: Assessment) -> list[Finding]:
    dating, reference = found.dating, found.dating.reference_days
    warnings = [_dating_warning(b, dating) for b in found.biometry if b.flag]
    if dating.stated_days is not None and dating.lmp_days is not None and abs(dating.stated_days - dating.lmp_days) > 7:
        warnings.append(Finding("ga_weeks", f"临床孕周 {weeks_days(dating.stated_days)} 与末次月经孕周 "
                                            f"{weeks_days(dating.lmp_days)} 相差超过 1 周 / the stated GA and the GA "
                                            "by LMP differ by more than a week"))
    if dating.lmp_days is not None and not 0 <= dating.lmp_days <= 44 * 7:
        warnings.append(Finding("lmp", "末次月经与检查日期不符（孕周不在 0–44 周），请核对 / the LMP gives a "
                                       "GA outside 0-44 weeks at the exam date: check it"))
    warnings += _weight_warnings(found.weight)
    warnings += _range_warnings(found, reference)
    return warnings


def _dating_warning(b: Biometric, dating: Dating) -> Finding:
    zh, en = BASES[dating.reference_basis]
    gap = abs(b.ga_days - dating.reference_days)
    size = ("偏小", "small") if b.flag == "small" else ("偏大", "large")
    ga, reference = weeks_days(b.ga_days), weeks_days(dating.reference_days)
    return Finding(FIELD_OF[b.key], f"{b.label} {b.mm:g} mm {size[0]}：相当于孕 {ga} 周，与{zh}孕周 {reference} "
                                    f"相差 {gap} 天，超出 ±2SD（{b.two_sd_days} 天）/ {b.label.split()[-1]} {size[1]} "
                                    f"for dates: {ga} weeks, {gap} days from the {en} GA, beyond ±2 SD "
                                    f"({b.two_sd_days} days)")


def _weight_warnings(weight: Weight) -> list[Finding]:
    found = []
    if weight.percentile is not None and weight.percentile < 10:
        found.append(Finding("efw_g", f"估计胎儿体重低于第 10 百分位（P{weight.percentile:.0f}），小于孕龄？/ EFW "
                                      f"below the 10th percentile for the GA (P{weight.percentile:.0f}): small for "
                                      "gestational age?"))
    if weight.percentile is not None and weight.percentile > 90:
        found.append(Finding("efw_g", f"估计胎儿体重高于第 90 百分位（P{weight.percentile:.0f}），大于孕龄？/ EFW "
                                      f"above the 90th percentile for the GA (P{weight.percentile:.0f}): large for "
                                      "gestational age?"))
    if weight.typed and weight.model and abs(weight.typed - weight.grams) > EFW_RANGE * weight.grams:
        found.append(Finding("efw_g", f"填写的体重 {weight.typed:g} g 与 Hadlock 计算值 {weight.grams:.0f} g 相差超过 15% / "
                                      f"the EFW typed ({weight.typed:g} g) differs from Hadlock's "
                                      f"({weight.grams:.0f} g) by more than 15 %"))
    return found


def _range_warnings(found: Assessment, reference: int | None) -> list[Finding]:
    seen = found.observed
    warnings, low, high = [], *FHR_RANGE
    if seen.fhr_bpm is not None and not low <= seen.fhr_bpm <= high:
        warnings.append(Finding("fhr_bpm", f"胎心率 {seen.fhr_bpm:g} 次/分，超出 {low}–{high} / FHR "
                                           f"{seen.fhr_bpm:g} bpm is outside {low}-{high}"))
    if seen.afi_cm is not None and seen.afi_cm < AFI_RANGE[0]:
        warnings.append(Finding("afi_cm", f"羊水指数 {seen.afi_cm:g} cm 低于 5 cm，羊水过少？/ AFI below 5 cm: "
                                          "oligohydramnios?"))
    if seen.afi_cm is not None and seen.afi_cm > AFI_RANGE[1]:
        warnings.append(Finding("afi_cm", f"羊水指数 {seen.afi_cm:g} cm 高于 25 cm，羊水过多？/ AFI above 25 cm: "
                                          "polyhydramnios?"))
    if (seen.cervix_mm is not None and seen.cervix_mm < SHORT_CERVIX_MM
            and (reference is None or reference < SHORT_CERVIX_BEFORE_DAYS)):
        warnings.append(Finding("cervix_mm", f"宫颈长度 {seen.cervix_mm:g} mm 短于 25 mm（孕 24 周前）/ cervical "
                                             "length below 25 mm before 24 weeks"))
    warnings += _placenta_warnings(found, reference)
    return warnings


def _placenta_warnings(found: Assessment, reference: int | None) -> list[Finding]:
    seen = found.observed
    warnings = []
    if seen.placenta in ("previa", "low_lying"):
        warnings.append(Finding("placenta", f"胎盘{PLACENTA_POSITIONS[seen.placenta].split()[0]}，请随访 / "
                                            "a low-lying or previa placenta: follow it up"))
    if seen.placenta_grade == "III" and reference is not None and reference < 36 * 7:
        warnings.append(Finding("placenta_grade", "孕 36 周前胎盘 III 级，成熟过早？/ grade III placenta before "
                                                  "36 weeks: early maturation?"))
    if seen.presentation and seen.presentation != "cephalic" and reference is not None and reference >= 36 * 7:
        warnings.append(Finding("presentation", f"孕 36 周后{PRESENTATIONS.get(seen.presentation, '').split()[0]}"
                                                "（非头位）/ not cephalic at 36 weeks or later"))
    return warnings


# -- print ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BiometryTable:
    """The record as the report prints it and the editor shows it: rows of (measurement, value,
    GA by it, expected range or flag), the dating and findings notes, the warnings."""

    rows: tuple[tuple[str, str, str, str], ...] = ()
    flagged: frozenset[int] = frozenset()  # indexes of rows outside their expected range
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


FLAGS = {"small": "偏小 ↓ small", "large": "偏大 ↑ large", "": "正常 normal"}


def _value_rows(found: Assessment) -> list[tuple[tuple[str, str, str, str], bool]]:
    rows = [((b.label, f"{b.mm:g} mm", f"孕{weeks_days(b.ga_days)}周",
              f"{b.expected_mm[0]:.0f}–{b.expected_mm[1]:.0f} mm {FLAGS[b.flag]}" if b.expected_mm else "—"),
             bool(b.flag)) for b in found.biometry]
    weight = found.weight
    if weight.grams is not None:
        rows.append((_weight_row(weight), weight.percentile is not None and not 10 <= weight.percentile <= 90))
    for label, value, unit, normal, outside in _other_values(found):
        if value is not None:
            rows.append(((label, f"{value:g} {unit}", "—", f"{normal} {'超出 outside' if outside else '正常 normal'}"),
                         outside))
    return rows


def _weight_row(weight: Weight) -> tuple[str, str, str, str]:
    """The EFW as the reader typed it (the system's) when typed, else Hadlock's with its ±15 %;
    Hadlock's beside a typed one, and the percentile for the GA with the P10-P90 weights."""
    spread = f"（{weight.low:.0f}–{weight.high:.0f}）" if weight.model else ""
    typed = weight.typed if weight.typed and weight.model else None
    value = f"{typed:g} g" if typed else f"{weight.grams:.0f} g{spread}"
    where = [f"Hadlock {weight.grams:.0f} g{spread}"] if typed else []
    if weight.percentile is not None:
        where.append(f"P{weight.percentile:.0f} · P10–P90 {weight.expected[0]:.0f}–{weight.expected[1]:.0f} g")
    return "估计胎儿体重 EFW", value, "—", " · ".join(where) or "—"


def _other_values(found: Assessment):
    seen = found.observed
    reference = found.dating.reference_days
    short = seen.cervix_mm is not None and seen.cervix_mm < SHORT_CERVIX_MM and (
        reference is None or reference < SHORT_CERVIX_BEFORE_DAYS)
    return (("羊水指数 AFI", seen.afi_cm, "cm", "5–25 cm",
             seen.afi_cm is not None and not AFI_RANGE[0] <= seen.afi_cm <= AFI_RANGE[1]),
            ("胎心率 FHR", seen.fhr_bpm, "次/分 bpm", "110–160",
             seen.fhr_bpm is not None and not FHR_RANGE[0] <= seen.fhr_bpm <= FHR_RANGE[1]),
            ("宫颈长度 Cervix", seen.cervix_mm, "mm", "≥25 mm（24周前 before 24 wk）", short))


def _notes(found: Assessment) -> list[str]:
    dating, notes = found.dating, []
    if dating.composite_days is not None:
        used = "+".join(p.upper() for p in dating.composite_parameters)
        notes.append(f"综合孕周 Composite GA 孕{weeks_days(dating.composite_days)}周 ±{dating.composite_two_sd_days}天 "
                     f"(Hadlock 1984, {used})")
    if dating.lmp:
        notes.append(f"末次月经 LMP {dating.lmp.isoformat()} · 按末次月经孕周 GA by LMP "
                     f"孕{weeks_days(dating.lmp_days)}周")
    if dating.stated_days is not None:
        notes.append(f"临床孕周 Stated GA 孕{weeks_days(dating.stated_days)}周")
    if dating.edd:
        basis = "按末次月经 by LMP" if dating.edd_basis == "lmp" else "按超声孕周 by ultrasound GA"
        notes.append(f"预产期 EDD {dating.edd.isoformat()}（{basis}）")
    if found.weight.model:
        notes.append(f"EFW: {EFW_MODEL_LABELS[found.weight.model]}, ±15 %")
    seen = found.observed
    described = [f"胎位 Presentation {PRESENTATIONS.get(seen.presentation, seen.presentation)}"
                 if seen.presentation else "",
                 f"胎盘 Placenta {PLACENTA_POSITIONS.get(seen.placenta, seen.placenta)}" if seen.placenta else "",
                 PLACENTA_GRADES.get(seen.placenta_grade, "") if seen.placenta_grade else "",
                 f"孕产次 G{seen.gravida}P{seen.para if seen.para is not None else '—'}"
                 if seen.gravida is not None else ""]
    if any(described):
        notes.append(" · ".join(part for part in described if part))
    return notes


def table(found: Assessment) -> BiometryTable:
    """What the report prints and the editor shows of an assessment."""
    rows = _value_rows(found)
    return BiometryTable(rows=tuple(row for row, _ in rows),
                         flagged=frozenset(i for i, (_, outside) in enumerate(rows) if outside),
                         notes=tuple(_notes(found)), warnings=tuple(w.message for w in found.warnings))


# -- growth across exams ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GrowthPoint:
    """One exam's biometry on the person's timeline (its final obstetric report)."""

    study_uid: str
    exam_date: date | None
    ga_days: int | None
    basis: str  # which GA: stated | lmp | composite
    bpd_mm: float | None = None
    hc_mm: float | None = None
    ac_mm: float | None = None
    fl_mm: float | None = None
    efw_g: float | None = None
    edd: date | None = None
    pregnancy: int = 1  # 1 for the person's first pregnancy on record, and so on


def growth_point(study_uid: str, fields: dict, exam_date) -> GrowthPoint:
    found = assess(fields, exam_date)
    mm = {b.key: b.mm for b in found.biometry}
    return GrowthPoint(study_uid, found.exam_date, found.dating.reference_days, found.dating.reference_basis,
                       mm.get("bpd"), mm.get("hc"), mm.get("ac"), mm.get("fl"), found.weight.grams, found.dating.edd)


def by_pregnancy(points: list[GrowthPoint]) -> list[GrowthPoint]:
    """The points in exam order, numbered by pregnancy: exams whose dates and GA put the LMP
    within 4 weeks of each other are one pregnancy (GA by ultrasound is that exact, ±2 SD)."""
    numbered, starts = [], []
    for point in sorted(points, key=lambda p: (p.exam_date or date.min, p.study_uid)):
        start = point.exam_date - timedelta(days=point.ga_days) if point.exam_date and point.ga_days else None
        match = next((i for i, s in enumerate(starts) if start and s and abs((start - s).days) <= 28), None)
        if match is None:
            starts.append(start)
            match = len(starts) - 1
        numbered.append(GrowthPoint(**{**point.__dict__, "pregnancy": match + 1}))
    return numbered


COLOURS = ("#0b6e8a", "#c2185b", "#2e7d32", "#ef6c00")
# Below min_width the labels would shrink past reading on a phone: the page scrolls the chart
# sideways instead (as the dashboard's charts).
CHART = {"width": 640, "height": 380, "min_width": 480, "left": 64, "right": 620, "top": 44, "bottom": 320,
         "weeks": (12, 42)}


def _x(weeks: float) -> float:
    low, high = CHART["weeks"]
    return CHART["left"] + (weeks - low) / (high - low) * (CHART["right"] - CHART["left"])


def _y(grams: float, top: float) -> float:
    return CHART["bottom"] - grams / top * (CHART["bottom"] - CHART["top"])


def _reference(top: float) -> str:
    """Hadlock 1991's 10th-90th percentile band and its median, 12 to 40 weeks."""
    weeks = [12 + w / 2 for w in range(57)]
    spread = 1.2816 * WEIGHT_SD
    upper = [f"{_x(w):.1f},{_y(expected_weight(w) * (1 + spread), top):.1f}" for w in weeks]
    lower = [f"{_x(w):.1f},{_y(expected_weight(w) * (1 - spread), top):.1f}" for w in reversed(weeks)]
    median = [f"{_x(w):.1f},{_y(expected_weight(w), top):.1f}" for w in weeks]
    return (f'<polygon points="{" ".join(upper + lower)}" fill="#e3edf3" stroke="none"/>'
            f'<polyline points="{" ".join(median)}" fill="none" stroke="#7a8a96" stroke-dasharray="4 3"/>')


def _axes(top: float) -> str:
    parts = []
    for weeks in range(CHART["weeks"][0], CHART["weeks"][1] + 1, 4):
        x = _x(weeks)
        parts.append(f'<line x1="{x:.1f}" y1="{CHART["top"]}" x2="{x:.1f}" y2="{CHART["bottom"]}" stroke="#eef1f4"/>'
                     f'<text x="{x:.1f}" y="{CHART["bottom"] + 17}" font-size="13" text-anchor="middle">{weeks}</text>')
    for grams in range(0, int(top) + 1, 1000):
        y = _y(grams, top)
        parts.append(f'<line x1="{CHART["left"]}" y1="{y:.1f}" x2="{CHART["right"]}" y2="{y:.1f}" stroke="#eef1f4"/>'
                     f'<text x="{CHART["left"] - 6}" y="{y + 4:.1f}" font-size="13" text-anchor="end">{grams}</text>')
    parts.append(f'<text x="{(CHART["left"] + CHART["right"]) / 2:.0f}" y="{CHART["bottom"] + 36}" font-size="13" '
                 'text-anchor="middle">孕周 GA（周 weeks）</text>'
                 f'<text transform="translate(16 {(CHART["top"] + CHART["bottom"]) / 2:.0f}) rotate(-90)" '
                 'font-size="13" text-anchor="middle">估计胎儿体重 EFW (g)</text>')
    return "".join(parts)


def growth_svg(points: list[GrowthPoint]) -> str:
    """EFW against GA for each pregnancy over Hadlock 1991's band, as an inline SVG (no chart
    library to vendor, as consult/dashboard.py); "" when no exam has both."""
    plotted = [p for p in points if p.ga_days and p.efw_g and 12 * 7 <= p.ga_days <= 42 * 7]
    if not plotted:
        return ""
    top = max(5000.0, math.ceil(max(p.efw_g for p in plotted) / 1000) * 1000)
    body, legend = [_reference(top), _axes(top)], []
    for number in sorted({p.pregnancy for p in plotted}):
        mine = [p for p in plotted if p.pregnancy == number]
        colour = COLOURS[(number - 1) % len(COLOURS)]
        line = " ".join(f"{_x(p.ga_days / 7):.1f},{_y(p.efw_g, top):.1f}" for p in mine)
        body.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"/>')
        body += [f'<circle cx="{_x(p.ga_days / 7):.1f}" cy="{_y(p.efw_g, top):.1f}" r="4" fill="{colour}">'
                 f'<title>{p.exam_date or ""} 孕{weeks_days(p.ga_days)}周 {p.efw_g:.0f} g</title></circle>' for p in mine]
        edd = next((p.edd for p in reversed(mine) if p.edd), None)
        legend.append((colour, f"妊娠 {number} Pregnancy {number}" + (f" · 预产期 EDD {edd.isoformat()}" if edd else "")))
    for i, (colour, text) in enumerate(legend):  # stacked top left, where the curves never reach
        y = CHART["top"] + 6 + i * 18
        body.append(f'<rect x="{CHART["left"] + 8}" y="{y}" width="12" height="12" fill="{colour}"/>'
                    f'<text x="{CHART["left"] + 26}" y="{y + 10}" font-size="13">{escape(text)}</text>')
    body.append(f'<text x="{CHART["right"]}" y="32" font-size="12" text-anchor="end" fill="#5a6772">'
                '灰带 band: Hadlock 1991 P10–P90</text>')
    return (f'<svg role="img" aria-label="胎儿生长曲线 Fetal growth (EFW by GA)" viewBox="0 0 {CHART["width"]} '
            f'{CHART["height"]}" width="100%" style="max-width:{CHART["width"]}px;min-width:{CHART["min_width"]}px" '
            'xmlns="http://www.w3.org/2000/svg" '
            f'font-family="sans-serif" class="growth-chart">{"".join(body)}</svg>')
