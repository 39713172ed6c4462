"""PS3.18 8.7 media type negotiation and multipart/related encoding, as pure functions."""

from __future__ import annotations

import pytest

from imaging.dicomweb import multipart
from imaging.dicomweb.negotiation import (
    BadAccept,
    MediaRange,
    Offer,
    describe,
    negotiate,
    parse_accept,
    parse_media_type,
)

EVRLE = "1.2.840.10008.1.2.1"
J2K = "1.2.840.10008.1.2.4.91"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"

# A J2K instance: Explicit VR LE by transcoding (the default), or as stored.
RETRIEVE = [Offer("application/dicom", True, EVRLE, native=False), Offer("application/dicom", True, J2K)]
# Frames of a JPEG Baseline instance: decoded octet-stream (default), image/jpeg or octet-stream as stored.
FRAMES = [Offer("application/octet-stream", True, EVRLE, native=False),
          Offer("image/jpeg", True, JPEG_BASELINE), Offer("application/octet-stream", True, JPEG_BASELINE)]
RENDERED = [Offer("image/jpeg"), Offer("image/png")]
JSON = [Offer("application/dicom+json"), Offer("application/json")]


# -- parsing ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", "   "])
def test_missing_accept_means_anything(value):
    assert parse_accept(value) == [MediaRange("*/*")]


def test_parse_multipart_with_quoted_type_syntax_and_q():
    ranges = parse_accept('multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1; q=0.5')
    assert ranges == [MediaRange("multipart/related", "application/dicom", EVRLE, 0.5)]


def test_parse_unquoted_type_and_case_and_spaces():
    ranges = parse_accept("Multipart/Related ;Type=Application/Octet-Stream ; Transfer-Syntax=*")
    assert ranges == [MediaRange("multipart/related", "application/octet-stream", "*", 1.0)]


def test_transfer_syntax_inside_the_quoted_type_is_understood():
    ranges = parse_accept(f'multipart/related; type="image/jpeg; transfer-syntax={JPEG_BASELINE}"')
    assert ranges == [MediaRange("multipart/related", "image/jpeg", JPEG_BASELINE, 1.0)]


def test_commas_inside_quotes_do_not_split_elements():
    ranges = parse_accept('multipart/related; type="application/dicom"; x="a,b", image/png;q=0.1')
    assert [r.media_type for r in ranges] == ["multipart/related", "image/png"]


def test_aliases_and_bad_elements():
    ranges = parse_accept("image/x-jls, garbage, image/png;q=2, image/gif;q=abc, image/jpg;q=0.3")
    assert [(r.media_type, r.q) for r in ranges] == [("image/jls", 1.0), ("image/jpeg", 0.3)]


@pytest.mark.parametrize("value", ["garbage", "text", "image/png;q=7", ";;;"])
def test_nothing_parsable_is_an_error(value):
    with pytest.raises(BadAccept):
        parse_accept(value)


def test_parse_media_type_unquotes_parameters():
    assert parse_media_type('multipart/related; type="application/dicom"; boundary="a b"') == (
        "multipart/related", {"type": "application/dicom", "boundary": "a b"})


# -- selection --------------------------------------------------------------------------


@pytest.mark.parametrize("accept", [None, "*/*", 'multipart/related; type="application/dicom"',
                                    "multipart/related; type=application/dicom",
                                    'multipart/related; type="*/*"'])
def test_default_for_retrieval_is_explicit_vr_little_endian(accept):
    assert negotiate(accept, RETRIEVE) == RETRIEVE[0]


def test_transfer_syntax_star_prefers_what_is_stored():
    assert negotiate('multipart/related; type="application/dicom"; transfer-syntax=*', RETRIEVE) == RETRIEVE[1]


def test_an_exact_transfer_syntax_is_honoured_or_refused():
    assert negotiate(f'multipart/related; type="application/dicom"; transfer-syntax={J2K}', RETRIEVE) == RETRIEVE[1]
    assert negotiate(f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}',
                     RETRIEVE) is None


def test_q_factors_choose():
    low_uncompressed = (f'multipart/related; type="application/dicom"; transfer-syntax={EVRLE}; q=0.4, '
                        f'multipart/related; type="application/dicom"; transfer-syntax={J2K}; q=0.9')
    high_uncompressed = low_uncompressed.replace("q=0.4", "q=1").replace("q=0.9", "q=0.2")
    assert negotiate(low_uncompressed, RETRIEVE) == RETRIEVE[1]
    assert negotiate(high_uncompressed, RETRIEVE) == RETRIEVE[0]


def test_q_zero_on_a_specific_range_excludes_despite_a_wildcard():
    accept = f'*/*, multipart/related; type="application/dicom"; transfer-syntax={EVRLE}; q=0'
    assert negotiate(accept, RETRIEVE) == RETRIEVE[1]
    assert negotiate("*/*;q=0", RETRIEVE) is None


def test_more_specific_range_wins_a_tie():
    accept = (f'multipart/related; type="application/dicom", '
              f'multipart/related; type="application/dicom"; transfer-syntax={J2K}')
    assert negotiate(accept, RETRIEVE) == RETRIEVE[1]


def test_single_part_range_does_not_match_multipart_offers():
    assert negotiate("application/dicom", RETRIEVE) is None
    single = RETRIEVE + [Offer("application/dicom", False, EVRLE, native=False)]
    assert negotiate("application/dicom", single) == single[2]


def test_mixed_syntaxes_as_stored_only_with_star():
    offers = [Offer("application/dicom", True, EVRLE, native=False), Offer("application/dicom", True, "*")]
    assert negotiate('multipart/related; type="application/dicom"; transfer-syntax=*', offers) == offers[1]
    assert negotiate(f'multipart/related; type="application/dicom"; transfer-syntax={J2K}', offers) is None
    assert negotiate(None, offers) == offers[0]


def test_frames_default_is_uncompressed_octet_stream():
    assert negotiate(None, FRAMES) == FRAMES[0]
    assert negotiate('multipart/related; type="application/octet-stream"', FRAMES) == FRAMES[0]
    assert negotiate('multipart/related; type="*/*"', FRAMES) == FRAMES[0]


def test_frames_octet_stream_with_star_sends_compressed_frames_as_stored():
    assert negotiate("multipart/related; type=application/octet-stream; transfer-syntax=*", FRAMES) == FRAMES[2]


def test_frames_compressed_media_type():
    assert negotiate('multipart/related; type="image/jpeg"', FRAMES) == FRAMES[1]
    assert negotiate(f'multipart/related; type="image/jpeg"; transfer-syntax={JPEG_BASELINE}', FRAMES) == FRAMES[1]
    assert negotiate('multipart/related; type="image/*"', FRAMES) == FRAMES[1]
    assert negotiate('multipart/related; type="image/jp2"', FRAMES) is None
    assert negotiate(f'multipart/related; type="image/jpeg"; transfer-syntax={J2K}', FRAMES) is None


def test_frames_without_a_decoder_cannot_be_octet_stream_uncompressed():
    stored_only = FRAMES[1:]
    assert negotiate('multipart/related; type="application/octet-stream"', stored_only) is None
    assert negotiate(None, stored_only) == stored_only[0]  # */* takes what there is
    assert negotiate('multipart/related; type="*/*"', stored_only) == stored_only[0]


def test_full_wildcard_accepts_any_syntax_but_a_named_type_wants_its_default():
    stored_only = RETRIEVE[1:]
    assert negotiate("*/*", stored_only) == stored_only[0]
    assert negotiate('multipart/related; type="application/dicom"', stored_only) is None


@pytest.mark.parametrize("accept, expected", [
    (None, "image/jpeg"), ("*/*", "image/jpeg"), ("image/*", "image/jpeg"), ("image/png", "image/png"),
    ("image/png;q=0.8, image/jpeg;q=0.3", "image/png"), ("text/html, */*;q=0.1", "image/jpeg"),
    ("image/gif", None), ("image/jpeg;q=0", None),
])
def test_rendered(accept, expected):
    chosen = negotiate(accept, RENDERED)
    assert (chosen.media_type if chosen else None) == expected


@pytest.mark.parametrize("accept, expected", [
    (None, "application/dicom+json"), ("application/dicom+json, application/json", "application/dicom+json"),
    ("application/json", "application/json"), ("application/*", "application/dicom+json"),
    ('multipart/related; type="application/dicom+xml"', None), ("application/dicom+xml", None),
])
def test_json(accept, expected):
    chosen = negotiate(accept, JSON)
    assert (chosen.media_type if chosen else None) == expected


def test_content_types():
    assert RETRIEVE[0].content_type("b") == (
        f'multipart/related; type="application/dicom"; transfer-syntax={EVRLE}; boundary=b')
    as_stored = Offer("application/dicom", True, "*")
    assert as_stored.content_type("b") == 'multipart/related; type="application/dicom"; boundary=b'
    assert Offer("image/png").content_type() == "image/png"
    assert Offer("application/dicom", False, J2K).content_type() == f"application/dicom; transfer-syntax={J2K}"
    assert "image/jpeg" in describe(FRAMES)


# -- multipart --------------------------------------------------------------------------


def test_multipart_round_trip():
    parts = [("application/dicom", b"\r\n--not-the-boundary\r\n"), ("application/dicom", b""), ("text/plain", b"x")]
    body = multipart.encode(parts, "B0UND")
    assert [(p.content_type, p.content) for p in multipart.split(body, "B0UND")] == parts


def test_multipart_preamble_epilogue_padding_and_headerless_part():
    body = b"preamble\r\n--b  \r\nContent-Type: a/b\r\nX-Other: 1\r\n\r\nONE\r\n--b\r\n\r\nTWO\r\n--b--\r\nepilogue"
    parts = multipart.split(body, "b")
    assert [(p.headers, p.content) for p in parts] == [({"content-type": "a/b", "x-other": "1"}, b"ONE"), ({}, b"TWO")]


@pytest.mark.parametrize("body", [b"--b\r\nContent-Type: a/b\r\n\r\nTRUNCATED", b"no boundary here",
                                  b"--b\r\nContent-Type: a/b no blank line\r\n--b--"])
def test_malformed_multipart(body):
    with pytest.raises(multipart.MalformedMultipart):
        multipart.split(body, "b")


def test_boundary_of():
    assert multipart.boundary_of('multipart/related; type="application/dicom"; boundary="x y"')[1]["boundary"] == "x y"
    with pytest.raises(multipart.MalformedMultipart):
        multipart.boundary_of("multipart/related; type=application/dicom")
