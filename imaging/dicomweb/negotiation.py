"""Media type negotiation for DICOMweb (PS3.18 8.7), pure functions with no web imports.

How an answer's representation is chosen:

* The client's acceptable media types come from the ``accept`` query parameter when present
  (PS3.18 8.3.3.1), else from the Accept header; no header (or an empty one) means ``*/*``,
  i.e. the resource's default representation.
* Each element is a media range with parameters: ``q`` (0..1, default 1; 0 means "not this"),
  for ``multipart/related`` the ``type`` of its parts (quoted or not; ``*/*`` and ``image/*``
  allowed; a ``transfer-syntax`` written inside the quoted type is understood too) and
  ``transfer-syntax`` (a UID, or ``*`` for "whatever you have").
* The resource lists what it can produce as Offers, its default first. An offer is matched by
  the most specific range that covers it (RFC 9110 12.5.1), and that range's q is the offer's
  quality. The answer is the offer with the highest quality; ties go to the more specific
  match, then, when the client said ``transfer-syntax=*``, to an offer that needs no
  transcoding, then to the resource's own order (default first). Nothing with q > 0 → None
  (the caller answers 406).
* A range without ``transfer-syntax`` asks for the media type's default transfer syntax
  (PS3.18 Table 8.7.3-5): Explicit VR Little Endian for ``application/dicom`` and
  ``application/octet-stream``; a full wildcard (``*/*``, or ``type="*/*"``) accepts any
  syntax, the resource's order still putting its default first. For compressed image types
  (``image/jpeg``, ``image/jp2``...) any transfer syntax of that media type is accepted: we
  never transcode between compressed syntaxes, so refusing a JPEG Baseline frame to a client
  that asked for ``image/jpeg`` would help nobody (a deliberate leniency; an explicit
  ``transfer-syntax`` is honoured exactly).
* ``multipart/related`` ranges match only multipart offers; single-part ranges only
  single-part offers; ``*/*`` matches both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
ANY_SYNTAX = "*"
MULTIPART = "multipart/related"

# PS3.18 Table 8.7.3-5 (and 8.7.3-6 for video): the media type that carries frames or bulk
# data of each compressed transfer syntax.
SYNTAX_MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.4.110": "image/jxl",
    "1.2.840.10008.1.2.4.111": "image/jxl",
    "1.2.840.10008.1.2.4.112": "image/jxl",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.100": "video/mpeg2",
    "1.2.840.10008.1.2.4.101": "video/mpeg2",
    "1.2.840.10008.1.2.4.102": "video/mp4",
    "1.2.840.10008.1.2.4.103": "video/mp4",
    "1.2.840.10008.1.2.4.104": "video/mp4",
    "1.2.840.10008.1.2.4.105": "video/mp4",
    "1.2.840.10008.1.2.4.106": "video/mp4",
    "1.2.840.10008.1.2.4.107": "video/H265",
    "1.2.840.10008.1.2.4.108": "video/H265",
}
# Names some clients still send (pre-registration forms) for the same media types.
ALIASES = {
    "image/x-dicom-rle": "image/dicom-rle",
    "image/x-jls": "image/jls",
    "image/jpg": "image/jpeg",
    "video/h265": "video/H265",
}
# Media types whose default transfer syntax is Explicit VR Little Endian (PS3.18 8.7.3.5).
_UNCOMPRESSED_DEFAULT = ("application/dicom", "application/octet-stream")


class BadAccept(ValueError):
    """The Accept value has no element that parses as a media range."""


@dataclass(frozen=True)
class MediaRange:
    """One element of an Accept value: a media range with its DICOMweb parameters."""

    media_type: str  # "multipart/related", "image/jpeg", "image/*", "*/*"
    part_type: str | None = None  # multipart/related's type parameter
    transfer_syntax: str | None = None  # a UID, "*", or None when absent
    q: float = 1.0


@dataclass(frozen=True)
class Offer:
    """A representation a resource can produce.

    For multipart offers `media_type` is the type of the parts. `transfer_syntax` is None for
    media types that have none (JSON, rendered images), "*" for "each part as stored" when the
    parts differ. `native` says the bytes are served as stored, without transcoding.
    """

    media_type: str
    multipart: bool = False
    transfer_syntax: str | None = None
    native: bool = True

    def content_type(self, boundary: str | None = None) -> str:
        """The Content-Type header of an answer in this representation."""
        syntax = self.transfer_syntax if self.transfer_syntax not in (None, ANY_SYNTAX) else None
        if self.multipart:
            value = f'{MULTIPART}; type="{self.media_type}"'
            if syntax:
                value += f"; transfer-syntax={syntax}"
            return value + (f"; boundary={boundary}" if boundary else "")
        return self.media_type + (f"; transfer-syntax={syntax}" if syntax and _has_syntax(self.media_type) else "")


def _has_syntax(media_type: str) -> bool:
    return media_type in _UNCOMPRESSED_DEFAULT or media_type in SYNTAX_MEDIA_TYPES.values()


# -- parsing ----------------------------------------------------------------------------


def split_outside_quotes(text: str, separator: str) -> list[str]:
    """Split on `separator` except inside double quotes (backslash escapes honoured)."""
    parts, current, quoted, escaped = [], [], False, False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\" and quoted:
            current.append(char)
            escaped = True
        elif char == '"':
            current.append(char)
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return value


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """A media type and its parameters (names lower-cased, values unquoted), as in a
    Content-Type or one Accept element."""
    head, *params = split_outside_quotes(value, ";")
    parameters: dict[str, str] = {}
    for param in params:
        name, sep, raw = param.partition("=")
        if sep and name.strip():
            parameters[name.strip().lower()] = _unquote(raw)
    return head.strip().lower(), parameters


def _canonical(media_type: str) -> str:
    return ALIASES.get(media_type, media_type)


def _valid_type(media_type: str) -> bool:
    kind, slash, sub = media_type.partition("/")
    return bool(slash and kind and sub and " " not in media_type and (kind != "*" or sub == "*"))


def _range(element: str) -> MediaRange | None:
    media_type, params = parse_media_type(element)
    if not _valid_type(media_type):
        return None
    try:
        q = float(params.get("q", "1"))
    except ValueError:
        return None
    if not 0.0 <= q <= 1.0:
        return None
    syntax = params.get("transfer-syntax") or None
    part_type = None
    if "type" in params:
        # type="image/jpeg; transfer-syntax=..." puts the syntax inside the quoted type.
        part_type, inner = parse_media_type(params["type"])
        syntax = syntax or inner.get("transfer-syntax") or None
        if not _valid_type(part_type):
            return None
        part_type = _canonical(part_type)
    return MediaRange(_canonical(media_type), part_type, syntax.strip() if syntax else None, q)


def parse_accept(value: str | None) -> list[MediaRange]:
    """The acceptable media ranges of an Accept value; absent or empty means ``*/*``.
    Unparsable elements are skipped; raises BadAccept when none is left."""
    if value is None or not value.strip():
        return [MediaRange("*/*")]
    elements = [e for e in split_outside_quotes(value, ",") if e.strip()]
    ranges = [r for r in (_range(e) for e in elements) if r is not None]
    if not ranges:
        raise BadAccept(f"no media type in Accept value {value[:200]!r}")
    return ranges


# -- matching ---------------------------------------------------------------------------


def _type_score(pattern: str, media_type: str) -> int | None:
    """How specifically `pattern` names `media_type`: */* 0, image/* 1, exact 2; None: no match."""
    if pattern == "*/*":
        return 0
    kind, _, sub = pattern.partition("/")
    if sub == "*":
        return 1 if media_type.split("/", 1)[0] == kind else None
    return 2 if pattern == media_type else None


def default_syntax_matches(media_type: str, syntax: str) -> bool:
    """Whether `syntax` is what a range naming `media_type` without transfer-syntax asks for."""
    if media_type in _UNCOMPRESSED_DEFAULT:
        return syntax == EXPLICIT_VR_LITTLE_ENDIAN
    return SYNTAX_MEDIA_TYPES.get(syntax) == media_type


def _syntax_score(wanted: str | None, offer: Offer, *, any_type: bool) -> int | None:
    if offer.transfer_syntax is None or wanted == ANY_SYNTAX:
        return 0
    if wanted is None and any_type:  # "*/*" says nothing about syntax: anything goes
        return 0
    if wanted is None:
        return 0 if offer.transfer_syntax != ANY_SYNTAX and default_syntax_matches(
            offer.media_type, offer.transfer_syntax) else None
    return 1 if wanted == offer.transfer_syntax else None


def specificity(media_range: MediaRange, offer: Offer) -> int | None:
    """How specifically the range covers the offer (higher is more specific); None: not at all."""
    any_type = media_range.media_type == "*/*" or (
        media_range.media_type in (MULTIPART, "multipart/*") and (media_range.part_type or "*/*") == "*/*")
    if media_range.media_type == "*/*":
        type_score = 0
    elif media_range.media_type in (MULTIPART, "multipart/*"):
        if not offer.multipart:
            return None
        part_score = _type_score(media_range.part_type or "*/*", offer.media_type)
        if part_score is None:
            return None
        type_score = 2 + part_score
    else:
        if offer.multipart:
            return None
        single_score = _type_score(media_range.media_type, offer.media_type)
        if single_score is None:
            return None
        type_score = 2 + single_score
    syntax_score = _syntax_score(media_range.transfer_syntax, offer, any_type=any_type)
    return None if syntax_score is None else type_score * 2 + syntax_score


def _quality(ranges: Sequence[MediaRange], offer: Offer) -> tuple[float, int, MediaRange] | None:
    best: tuple[int, float, MediaRange] | None = None
    for media_range in ranges:
        score = specificity(media_range, offer)
        if score is not None and (best is None or (score, media_range.q) > best[:2]):
            best = (score, media_range.q, media_range)
    return None if best is None else (best[1], best[0], best[2])


def select(ranges: Sequence[MediaRange], offers: Sequence[Offer]) -> Offer | None:
    """The offer to answer with (see the module docstring), or None when nothing is acceptable."""
    chosen, chosen_key = None, None
    for index, offer in enumerate(offers):
        found = _quality(ranges, offer)
        if found is None or found[0] <= 0:
            continue
        q, score, media_range = found
        prefer_native = media_range.transfer_syntax == ANY_SYNTAX and offer.native
        key = (q, score, prefer_native, -index)
        if chosen_key is None or key > chosen_key:
            chosen, chosen_key = offer, key
    return chosen


def negotiate(accept: str | None, offers: Sequence[Offer]) -> Offer | None:
    """parse_accept + select: the representation for an Accept value, or None (406)."""
    return select(parse_accept(accept), offers)


def describe(offers: Sequence[Offer]) -> str:
    """The offers as Accept-style text, for a 406 answer's detail."""
    return ", ".join(dict.fromkeys(o.content_type() for o in offers))
