"""imaging/dataset.py helpers shown to people."""

from imaging.dataset import display_name


def test_display_name_is_one_rule_for_pages_and_the_patients_film():
    """The page filter (web/app.py) and the film page had two functions that disagreed on an
    empty ideographic group ("Li^Na=^" printed "" on pages); there is one now."""
    assert display_name("张^秀英") == "张秀英"
    assert display_name("Wang^Fang=王^芳") == "王芳"
    assert display_name("Zhang^Xiuying") == "Zhang Xiuying"
    assert display_name("Li^Na=^") == "Li Na"
    assert display_name(None) == "" and display_name("") == ""
