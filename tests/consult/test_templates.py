"""Report template fields (16.11): 孕24+1周 is a gestational age; a bad value is kept as typed
with its message while autosaving, and refused when signing."""

import pytest

from consult import templates
from storage.errors import Invalid


@pytest.mark.parametrize("typed, stored", [("24+1", "24+1"), ("24 + 6", "24+6"), ("24", "24"), ("37.5", "37.5"),
                                           ("09+0", "9+0")])
def test_gestational_age_as_obstetricians_write_it(typed, stored):
    cleaned = templates.clean_content("obstetric_us", {"fields": {"ga_weeks": typed}})
    assert cleaned["fields"]["ga_weeks"] == stored
    assert ("孕周 GA", f"孕{stored}周") in templates.measurement_rows("obstetric_us", cleaned["fields"])


@pytest.mark.parametrize("typed", ["24+7", "50", "24周1天", "+1", "3"])
def test_impossible_gestational_ages_are_refused_when_signing(typed):
    with pytest.raises(Invalid, match="24\\+1"):
        templates.clean_content("obstetric_us", {"fields": {"ga_weeks": typed}})


def test_autosave_keeps_a_bad_value_as_typed_and_saves_the_rest():
    content = {"findings": "宫内单活胎", "fields": {"bpd_mm": "6o", "hc_mm": "230", "ga_weeks": "24+1"}}
    cleaned = templates.clean_content("obstetric_us", content, strict=False)
    assert cleaned["findings"] == "宫内单活胎"
    assert cleaned["fields"] == {"hc_mm": 230.0, "ga_weeks": "24+1"}
    assert cleaned["typed"] == {"bpd_mm": "6o"} and "数字" in cleaned["errors"]["bpd_mm"]
    # the next autosave brings the corrected value; signing the stored draft as it is refuses
    with pytest.raises(Invalid, match="BPD"):
        templates.clean_content("obstetric_us", cleaned)
    fixed = templates.clean_content("obstetric_us", {**cleaned, "fields": {**cleaned["fields"], "bpd_mm": "60"}},
                                    strict=False)
    assert "typed" not in fixed and fixed["fields"]["bpd_mm"] == 60.0
