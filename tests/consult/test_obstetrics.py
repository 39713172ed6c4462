"""Issue 19: the obstetric biometry as structured data (consult/obstetrics.py, the obstetric
template's fields in consult/templates.py).

* the formulas give the published equations' values (Hadlock 1984 GA, Hadlock 1985 EFW, Hadlock
  1991 weight standard: 35 g at 10 weeks and 3,619 g at 40 weeks, its abstract's figures), and
  the EDD is LMP + 280 days, or the exam date + (280 days - composite GA);
* physically impossible values are refused, the message naming the field (autosave keeps them
  as typed with the message beside the field);
* values outside the range expected for the GA are warnings, shown, never refused."""

from __future__ import annotations

import math
from datetime import date

import pytest

from consult import obstetrics, templates
from storage.errors import Invalid

# A 24+1 week fetus growing on the median: the fields as the template stores them.
NORMAL = {"ga_weeks": "24+1", "lmp": "2026-05-16", "bpd_mm": 60.0, "hc_mm": 222.0, "ac_mm": 196.0, "fl_mm": 44.0,
          "afi_cm": 12.0, "fhr_bpm": 146.0, "cervix_mm": 38.0, "presentation": "cephalic", "placenta": "anterior",
          "placenta_grade": "I", "gravida": 2.0, "para": 1.0}
EXAM = "20261101"


def hand(coefficients: tuple[float, ...], x: float) -> float:
    """A polynomial in x, written out as the paper prints it (constant first)."""
    return sum(c * x ** power for power, c in enumerate(coefficients))


@pytest.mark.parametrize("key, mm, coefficients", [
    ("bpd", 50, (9.54, 1.482, 0.1676)), ("bpd", 95, (9.54, 1.482, 0.1676)),
    ("hc", 200, (8.96, 0.540, 0, 0.0003)), ("hc", 330, (8.96, 0.540, 0, 0.0003)),
    ("ac", 200, (8.14, 0.753, 0.0036)), ("ac", 330, (8.14, 0.753, 0.0036)),
    ("fl", 40, (10.35, 2.460, 0.170)), ("fl", 75, (10.35, 2.460, 0.170))])
def test_each_measurement_dates_the_pregnancy_by_hadlock_1984(key, mm, coefficients):
    assert obstetrics.ga_weeks(key, mm) == pytest.approx(hand(coefficients, mm / 10), abs=1e-9)
    # the inverse the expected ranges use gives the measurement back
    assert obstetrics.measurement_for(key, obstetrics.ga_weeks(key, mm)) == pytest.approx(mm, abs=0.1)


def test_published_points_of_the_regressions():
    """Menstrual ages the regressions give at familiar sizes (weeks, one decimal)."""
    assert round(obstetrics.ga_weeks("bpd", 50), 1) == 21.1
    assert round(obstetrics.ga_weeks("hc", 200), 1) == 22.2
    assert round(obstetrics.ga_weeks("fl", 50), 1) == 26.9
    assert round(obstetrics.ga_weeks("bpd", 90), 1) == 36.5


def test_composite_ga_uses_the_fullest_hadlock_model():
    weeks, used = obstetrics.composite_weeks({"bpd": 47, "hc": 175, "ac": 150, "fl": 33})
    assert used == ("bpd", "hc", "ac", "fl")
    assert weeks == pytest.approx(10.85 + 0.060 * 17.5 * 3.3 + 0.6700 * 4.7 + 0.1680 * 15.0)
    weeks, used = obstetrics.composite_weeks({"hc": 175, "ac": 150, "fl": 33})
    assert used == ("hc", "ac", "fl")
    assert weeks == pytest.approx(10.33 + 0.031 * 17.5 * 3.3 + 0.361 * 17.5 + 0.0298 * 15.0 * 3.3)
    assert obstetrics.composite_weeks({"bpd": 47, "hc": 175})[1] == ("hc",)  # no BPD+HC model: HC alone
    assert obstetrics.composite_weeks({}) is None
    # every model agrees within a week on a fetus growing on the median at 20 weeks
    measured = {"bpd": 47, "hc": 175, "ac": 150, "fl": 33}
    for parameters, model in obstetrics.COMBINED:
        assert abs(model({k: measured[k] / 10 for k in parameters}) - 20) < 1, parameters


def test_efw_by_hadlock_1985_four_parameters_with_a_15_percent_range():
    grams, model = obstetrics.efw_grams({"bpd": 90, "hc": 320, "ac": 320, "fl": 70})
    log10 = 1.3596 - 0.00386 * 32 * 7 + 0.0064 * 32 + 0.00061 * 9 * 32 + 0.0424 * 32 + 0.174 * 7
    assert (round(grams), model) == (round(10 ** log10), "hadlock1985_bpd_hc_ac_fl") == (2820, model)
    grams, model = obstetrics.efw_grams({"ac": 320, "fl": 70})
    assert model == "hadlock1985_ac_fl"
    assert grams == pytest.approx(10 ** (1.304 + 0.05281 * 32 + 0.1938 * 7 - 0.004 * 32 * 7))
    assert obstetrics.efw_grams({"bpd": 90, "hc": 320}) is None  # every Hadlock 1985 model needs AC and FL
    weight = obstetrics.assess({"bpd_mm": 90.0, "hc_mm": 320.0, "ac_mm": 320.0, "fl_mm": 70.0}).weight
    assert (weight.low, weight.high) == pytest.approx((weight.grams * 0.85, weight.grams * 1.15))


def test_hadlock_1991_weight_standard_and_percentiles():
    assert round(obstetrics.expected_weight(10)) == 35 and round(obstetrics.expected_weight(40)) == 3619
    assert obstetrics.weight_percentile(obstetrics.expected_weight(30), 30) == pytest.approx(50)
    low = obstetrics.expected_weight(30) * (1 - 1.2816 * 0.127)
    assert obstetrics.weight_percentile(low, 30) == pytest.approx(10, abs=0.05)


def test_dates_edd_from_lmp_or_from_the_composite_ga():
    found = obstetrics.assess(NORMAL, EXAM)
    dating = found.dating
    assert (dating.lmp, dating.lmp_days, dating.stated_days) == (date(2026, 5, 16), 169, 169)
    assert dating.composite_parameters == ("bpd", "hc", "ac", "fl") and abs(dating.composite_days - 169) <= 2
    assert (dating.edd, dating.edd_basis) == (date(2027, 2, 20), "lmp")  # LMP + 280 days
    assert dating.edd_by_ultrasound == date.fromordinal(date(2026, 11, 1).toordinal() + 280 - dating.composite_days)
    without = obstetrics.assess({k: v for k, v in NORMAL.items() if k not in ("lmp", "ga_weeks")}, EXAM).dating
    assert without.reference_basis == "composite" and without.edd_basis == "ultrasound"
    assert without.edd == date.fromordinal(date(2026, 11, 1).toordinal() + 280 - without.composite_days)
    assert obstetrics.parse_ga_days("24+1") == 169 and obstetrics.parse_ga_days("24.5") == 172
    assert obstetrics.weeks_days(169) == "24+1"


def test_a_normal_record_has_no_warning_and_prints_every_value():
    found = obstetrics.assess(NORMAL, EXAM)
    assert found.warnings == () and not any(b.flag for b in found.biometry)
    assert 10 < found.weight.percentile < 90
    table = templates.biometry_table("obstetric_us", NORMAL, EXAM)
    labels = [row[0] for row in table.rows]
    assert labels == ["双顶径 BPD", "头围 HC", "腹围 AC", "股骨长 FL", "估计胎儿体重 EFW", "羊水指数 AFI", "胎心率 FHR",
                      "宫颈长度 Cervix"]
    assert table.rows[0][2] == f"孕{obstetrics.weeks_days(found.biometry[0].ga_days)}周"
    assert table.flagged == frozenset() and table.warnings == ()
    notes = "\n".join(table.notes)
    for shown in ("预产期 EDD 2027-02-20", "末次月经 LMP 2026-05-16", "头位 Cephalic", "前壁 Anterior", "I级 Grade I",
                  "G2P1", "Hadlock 1985 (BPD, HC, AC, FL)"):
        assert shown in notes, shown
    assert templates.biometry_table("ct_head", NORMAL) is None


# -- refused: physically impossible ------------------------------------------------------------------


@pytest.mark.parametrize("fields, named, says", [
    ({"bpd_mm": "150"}, "BPD", "5–120"),
    ({"fl_mm": "0.5"}, "FL", "2–90"),
    ({"fhr_bpm": "400"}, "FHR", "0–300"),
    ({"efw_g": "9000"}, "EFW", "20–7000"),
    ({"cervix_mm": "-3"}, "Cervical length", "0–80"),
    ({"bpd_mm": "60", "hc_mm": "150"}, "HC", "π"),
    ({"gravida": "2", "para": "2"}, "para", "gravida"),
    ({"gravida": "1.5"}, "Gravida", "whole number"),
    ({"lmp": "2999-01-01"}, "LMP", "after today"),
    ({"lmp": "2026-02-30"}, "LMP", "2026-05-16"),
    ({"presentation": "不清"}, "Presentation", "Cephalic, Breech"),
    ({"placenta_grade": "IV级?"}, "Placenta grade", "Grade III"),
])
def test_impossible_values_are_refused_naming_the_field(fields, named, says):
    with pytest.raises(Invalid) as refused:
        templates.clean_content("obstetric_us", {"fields": fields})
    assert named in refused.value.detail and says in refused.value.detail, refused.value.detail


def test_autosave_keeps_an_impossible_combination_as_typed_beside_its_field():
    cleaned = templates.clean_content("obstetric_us", {"fields": {"bpd_mm": "60", "hc_mm": "150"}}, strict=False)
    assert cleaned["fields"] == {"bpd_mm": 60.0}
    assert cleaned["typed"] == {"hc_mm": "150"} and "π" in cleaned["errors"]["hc_mm"]


def test_choices_and_dates_as_readers_type_them():
    cleaned = templates.clean_content("obstetric_us", {"fields": {
        "presentation": "臀位 Breech", "placenta": "胎盘附着于子宫前壁", "placenta_grade": "Ⅱ级", "lmp": "2026年5月16日"}})
    for typed, grade in (("Grade III", "III"), ("3", "III"), ("I级", "I"), ("0", "0"), ("ii", "II")):
        assert templates.clean_content("obstetric_us", {"fields": {"placenta_grade": typed}})["fields"] == {
            "placenta_grade": grade}
    assert cleaned["fields"] == {"lmp": "2026-05-16", "presentation": "breech", "placenta": "anterior",
                                 "placenta_grade": "II"}
    assert templates.clean_content("obstetric_us", {"fields": {"placenta": "前置"}})["fields"]["placenta"] == "previa"
    for typed, presentation in (("LOA", "cephalic"), ("枕左前", "cephalic"), ("RSA", "breech"), ("LScA", "transverse"),
                                ("骶右前", "breech")):
        assert templates.clean_content("obstetric_us", {"fields": {"presentation": typed}})["fields"] == {
            "presentation": presentation}, typed
    rows = dict(templates.measurement_rows("obstetric_us", cleaned["fields"]))
    assert rows["胎位 Presentation"] == "臀位 Breech" and rows["末次月经 LMP"] == "2026-05-16"


# -- warned: outside the range for the GA ------------------------------------------------------------


def _warnings(**changes) -> dict[str, str]:
    found = obstetrics.assess({**NORMAL, **changes}, EXAM)
    return {w.field: w.message for w in found.warnings}


def test_a_measurement_beyond_its_2sd_for_the_ga_is_flagged_not_refused():
    fields = {**NORMAL, "fl_mm": 33.0}  # FL of about 20 weeks in a 24+1 week pregnancy
    assert templates.clean_content("obstetric_us", {"fields": fields})["fields"]["fl_mm"] == 33.0
    found = obstetrics.assess(fields, EXAM)
    fl = next(b for b in found.biometry if b.key == "fl")
    assert fl.flag == "small" and fl.expected_mm[0] > 33.0
    assert fl.ga_days < found.dating.reference_days - fl.two_sd_days
    message = {w.field: w.message for w in found.warnings}["fl_mm"]
    assert "股骨长 FL 33 mm 偏小" in message and "±2 SD" in message and "stated GA" in message
    table = obstetrics.table(found)
    assert 3 in table.flagged and "偏小" in table.rows[3][3]
    large = obstetrics.assess({**NORMAL, "ac_mm": 260.0}, EXAM)
    assert next(b for b in large.biometry if b.key == "ac").flag == "large"


def test_without_a_stated_ga_or_lmp_each_measurement_is_read_against_the_composite():
    fields = {k: v for k, v in NORMAL.items() if k not in ("lmp", "ga_weeks")}
    found = obstetrics.assess({**fields, "ac_mm": 260.0}, EXAM)
    assert found.dating.reference_basis == "composite"
    assert "composite ultrasound GA" in {w.field: w.message for w in found.warnings}["ac_mm"]


@pytest.mark.parametrize("changes, field, says", [
    ({"fhr_bpm": 176.0}, "fhr_bpm", "outside 110-160"),
    ({"fhr_bpm": 98.0}, "fhr_bpm", "outside 110-160"),
    ({"afi_cm": 4.0}, "afi_cm", "oligohydramnios"),
    ({"afi_cm": 27.0}, "afi_cm", "polyhydramnios"),
    ({"ga_weeks": "20+0", "lmp": "2026-06-14", "cervix_mm": 20.0}, "cervix_mm", "before 24 weeks"),
    ({"efw_g": 500.0}, "efw_g", "differs from Hadlock's"),
    ({"ga_weeks": "26+0"}, "ga_weeks", "differ by more than a week"),
    ({"placenta": "previa"}, "placenta", "previa"),
    ({"ga_weeks": "30+0", "placenta_grade": "III"}, "placenta_grade", "early maturation"),
    ({"ga_weeks": "37+0", "presentation": "breech"}, "presentation", "not cephalic"),
])
def test_values_outside_the_expected_range_are_warnings(changes, field, says):
    assert says in _warnings(**changes).get(field, ""), _warnings(**changes)


def test_a_short_cervix_after_24_weeks_and_a_normal_fhr_are_not_warned():
    assert "cervix_mm" not in _warnings(cervix_mm=20.0)  # 24+1 weeks: the 25 mm rule is for before 24
    assert "fhr_bpm" not in _warnings(fhr_bpm=110.0) and "afi_cm" not in _warnings(afi_cm=5.0)


def test_a_small_fetus_for_its_dates_is_below_the_10th_percentile():
    found = obstetrics.assess({**NORMAL, "ga_weeks": "28+0", "lmp": "2026-04-19"}, EXAM)
    assert found.weight.percentile < 10
    assert "small for gestational age" in {w.field: w.message for w in found.warnings}["efw_g"]


# -- growth ----------------------------------------------------------------------------------------


def test_exams_are_grouped_by_pregnancy_and_charted():
    points = [obstetrics.growth_point("a", NORMAL, "20261101"),
              obstetrics.growth_point("b", {**NORMAL, "ga_weeks": "32+6", "lmp": "", "bpd_mm": 83.0, "hc_mm": 300.0,
                                            "ac_mm": 285.0, "fl_mm": 63.0}, "20270102"),
              obstetrics.growth_point("c", {"bpd_mm": 47.0, "hc_mm": 175.0, "ac_mm": 150.0, "fl_mm": 33.0}, "20290301")]
    numbered = obstetrics.by_pregnancy(list(reversed(points)))
    assert [(p.study_uid, p.pregnancy) for p in numbered] == [("a", 1), ("b", 1), ("c", 2)]
    svg = obstetrics.growth_svg(numbered)
    assert svg.startswith("<svg") and svg.count("<circle") == 3 and "妊娠 2 Pregnancy 2" in svg
    assert obstetrics.growth_svg([obstetrics.growth_point("d", {"ga_weeks": "20"}, "20261101")]) == ""
    assert math.isclose(numbered[0].efw_g, obstetrics.assess(NORMAL, EXAM).weight.grams)
