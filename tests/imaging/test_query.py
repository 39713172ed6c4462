"""Sequence matching on stored DICOM JSON (imaging.query.sequence_matches), PS3.4 C.2.2.2.6."""

from __future__ import annotations

from imaging.query import sequence_matches

REQUEST = {  # RequestAttributesSequence as ingest stores it (DICOM JSON)
    "vr": "SQ",
    "Value": [
        {"00400009": {"vr": "SH", "Value": ["SPS-1"]},
         "00321060": {"vr": "LO", "Value": ["胸部CT平扫"]},
         "00400244": {"vr": "DA", "Value": ["20261101"]},
         "00401001": {"vr": "SH", "Value": ["RP-7"]}},
        {"00400009": {"vr": "SH", "Value": ["SPS-2"]},
         "00321032": {"vr": "PN", "Value": [{"Alphabetic": "Wang^Li", "Ideographic": "王^力"}]}},
    ],
}


def test_an_item_matches_when_one_stored_item_matches_every_key():
    assert sequence_matches(REQUEST, {"00400009": ("SH", "SPS-1"), "00401001": ("SH", "RP-7")})
    assert not sequence_matches(REQUEST, {"00400009": ("SH", "SPS-1"), "00321032": ("PN", "WANG^LI")})
    assert sequence_matches(REQUEST, {"00400009": ("SH", "SPS-?")})


def test_person_names_match_any_group_case_insensitively():
    assert sequence_matches(REQUEST, {"00321032": ("PN", "wang*")})
    assert sequence_matches(REQUEST, {"00321032": ("PN", "王^力")})
    assert not sequence_matches(REQUEST, {"00321032": ("PN", "张*")})


def test_dates_match_ranges_and_text_is_exact_unicode():
    assert sequence_matches(REQUEST, {"00400244": ("DA", "20261001-20261130")})
    assert sequence_matches(REQUEST, {"00400244": ("DA", "-20261101")})
    assert not sequence_matches(REQUEST, {"00400244": ("DA", "20261102-")})
    assert sequence_matches(REQUEST, {"00321060": ("LO", "胸部*")})
    assert not sequence_matches(REQUEST, {"00321060": ("LO", "[胸]部*")})  # brackets are not wildcards


def test_nothing_stored_matches_nothing_and_an_empty_item_matches_everything():
    assert not sequence_matches(None, {"00400009": ("SH", "SPS-1")})
    assert not sequence_matches({"vr": "SQ"}, {"00400009": ("SH", "SPS-1")})
    assert sequence_matches(None, {})
