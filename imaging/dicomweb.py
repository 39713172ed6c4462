"""DICOMweb Studies Service (PS3.18 10.3-10.6) at /dicom-web, and WADO-URI for older viewers.

Resources:
  STOW-RS  POST /studies[/{study}]                         multipart/related; type="application/dicom"
  QIDO-RS  GET  /studies, /series, /instances,
                /studies/{s}/series, /studies/{s}/instances, /studies/{s}/series/{se}/instances
  WADO-RS  GET  /studies/{s}[/series/{se}[/instances/{i}]]  Part 10 objects, multipart
                .../metadata                                DICOM JSON from the index only
                .../rendered, .../thumbnail                 image/jpeg, image/png
                .../instances/{i}/frames/{list}[/rendered]  pixel data per frame (1-based)
                .../instances/{i}/bulkdata/{tag}            the BulkDataURIs of the metadata
  WADO-URI GET  /wado?requestType=WADO&studyUID=&seriesUID=&objectUID=&contentType=

Rules that hold everywhere:
  * The caller is a user (bearer token or browser session); what they may see is
    `storage.access.scope_for`, applied in the SQL of every lookup. A study that is not
    visible answers exactly like one that does not exist (404); searches just do not match it.
  * Every read and every denial is audited (`audit.record_read`), with the object ids and counts.
  * Searches and metadata are answered from the index: stored DICOM JSON text is concatenated,
    never re-parsed per instance for metadata, and objects are never opened for them.
  * Media types are negotiated by `imaging.negotiation` (PS3.18 8.7): 406 only when nothing
    acceptable can be produced. Objects are served as stored or transcoded to Explicit VR
    Little Endian (decompressed with pydicom); other transcodings are not offered.
  * Empty search results answer 200 with [] (PS3.18 allows 204; a JSON array is simpler
    for every client and cannot be mistaken for an error).
  * Bad input answers 400 (bad UIDs, frame 0, bad window/viewport/quality), never 500.
"""

# No `from __future__ import annotations`: FastAPI must resolve the router-local
# Annotated dependency (CurrentPrincipal, for STOW-RS) at definition time.
import inspect
import io
import json
import logging
import mmap
import re
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from pydicom import dcmread
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels import get_decoder, pack_bits, unpack_bits
from pydicom.uid import UID
from sqlalchemy import LargeBinary, bindparam, cast, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from imaging import multipart, negotiation, pixels, query, transcode
from imaging.dataset import MAX_UID_CHARS, INSTANCE_PREFIX, InvalidInstance, native_frame_bits, storable_uid
from imaging.limits import Limits, check_instance
from imaging.models import Instance, Series, Study
from imaging.negotiation import EXPLICIT_VR_LITTLE_ENDIAN as EVRLE
from imaging.negotiation import Offer
from imaging.service import Ingestor, parse_part10
from storage import access, audit
from storage.access import Principal, Scope
from storage.errors import (
    BadRequest,
    DomainError,
    NotAcceptable,
    NotFound,
    NotPermitted,
    PayloadTooLarge,
    Unavailable,
    UnsupportedMediaType,
)

log = logging.getLogger("lancang.dicomweb")

PREFIX = "/dicom-web"
MAX_RESULTS = 1000  # QIDO answers at most this many matches per request (then a Warning)
THUMBNAIL_SIZE = 128
_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_DECIMAL = re.compile(r"[0-9]{1,9}")
# Syntaxes whose pixel data is stored native little endian: frames are slices of it.
_NATIVE_LITTLE = (negotiation.EXPLICIT_VR_LITTLE_ENDIAN, negotiation.IMPLICIT_VR_LITTLE_ENDIAN,
                  negotiation.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)
_PIXEL_TAGS = ("7FE00010", "7FE00008", "7FE00009")  # Pixel Data, Float, Double Float
_RENDERED = ("image/jpeg", "image/png")
_JSON_OFFERS = (Offer("application/dicom+json"), Offer("application/json"))

# Attributes of a study/series search result, tags as DICOM JSON keys.
RETRIEVE_URL = "00081190"
AVAILABLE_TRANSFER_SYNTAX = "00083002"
# STOW-RS response attributes (PS3.18 10.5.3, Table 10.5.3-1) and failure reasons (PS3.4).
REFERENCED_SOP_SEQUENCE, FAILED_SOP_SEQUENCE = "00081199", "00081198"
REFERENCED_SOP_CLASS, REFERENCED_SOP_INSTANCE, FAILURE_REASON = "00081150", "00081155", "00081197"
OUT_OF_RESOURCES, MISMATCH, CANNOT_UNDERSTAND = 0xA700, 0xA900, 0xC000
PROCESSING_FAILURE, DUPLICATE_SOP_INSTANCE, NOT_AUTHORIZED = 0x0110, 0x0111, 0x0124
WARNING_REASON, COERCED = "00081196", 0xB000  # PS3.4: "Coercion of Data Elements"
CHANGES_HEADER = "Lancang-Changes"  # a corrected re-send's [{sop, changes: {field: [old, new]}}]
NOT_CONFORMING = 0xB007  # PS3.4: "Data Set does not match SOP Class" (a UID that does not conform)



# -- request helpers --------------------------------------------------------------------


def check_uid(value: str, what: str) -> str:
    """A UID from a URL or parameter, else 400: what a stored UID may be (digits and dots
    as the standard wants, or a sloppy device's UID kept as sent; imaging.dataset)."""
    if not value or len(value) > MAX_UID_CHARS or not storable_uid(value):
        raise BadRequest(f"{what} {value[:80]!r} is not a valid DICOM UID")
    return value


def decimal(text: str | None) -> int | None:
    """A plain ASCII decimal (at most 9 digits) as an int, else None."""
    text = (text or "").strip()
    return int(text) if _DECIMAL.fullmatch(text) else None


def parse_frame_numbers(text: str) -> list[int]:
    """A PS3.18 frame list ("1", "1,3,5"): 1-based positive integers, else 400."""
    numbers = []
    for piece in text.split(","):
        number = decimal(piece)
        if number is None or number < 1:
            raise BadRequest(f"frame list {text[:80]!r}: frame numbers are integers from 1")
        numbers.append(number)
    if len(numbers) > 10000:
        raise BadRequest("too many frames in one request")
    return numbers


def base_url(request: Request) -> str:
    """The absolute URL of the service, as clients must use it: the configured public URL,
    whose default (http://LANCANG_BIND_HOST:LANCANG_HTTP_PORT) includes the port. Never the
    request's Host header: dicomweb-client sends "Host: 127.0.0.1" without the port, and
    every BulkDataURI then pointed at port 80."""
    return request.app.state.runtime.settings.effective_public_url + PREFIX


def study_url(base: str, study: str) -> str:
    return f"{base}/studies/{study}"


def series_url(base: str, study: str, series: str) -> str:
    return f"{base}/studies/{study}/series/{series}"


def instance_url(base: str, study: str, series: str, sop: str) -> str:
    return f"{base}/studies/{study}/series/{series}/instances/{sop}"


def _source(request: Request) -> str:
    return request.client.host if request.client else ""


def choose(request: Request, offers: Iterable[Offer], accept: str | None = None) -> Offer:
    """The representation to answer with: `accept` query parameter, else the Accept header."""
    offers = list(offers)
    value = accept if accept is not None else (request.query_params.get("accept")
                                               or request.headers.get("accept"))
    try:
        chosen = negotiation.negotiate(value, offers)
    except negotiation.BadAccept as exc:
        raise BadRequest(str(exc)) from None
    if chosen is None:
        raise NotAcceptable(f"none of the acceptable media types can be produced; "
                            f"available: {negotiation.describe(offers)}")
    return chosen


def _audit(request: Request, principal: Principal, action: str, *, object_type: str, object_id: str,
           outcome: str = "ok", detail: dict | None = None, change: bool = False) -> None:
    """Audit a read (or, with change=True, a store: synced before the answer like the data).

    Inside `in_one_hop` a read's record is written when the read transaction has ended,
    still before the answer leaves (see there)."""
    fields = {"principal": principal, "action": action, "object_type": object_type,
              "object_id": object_id[:4000], "source": _source(request), "outcome": outcome,
              "detail": detail or {}}
    if change:
        audit.record(request.app.state.runtime.db, **fields)
        return
    pending = getattr(request.state, "pending_read_audits", None)
    if pending is not None:
        pending.append(fields)
    else:
        audit.record_read(request.app.state.runtime.db, **fields)


def _not_found(request: Request, principal: Principal, action: str, object_type: str, object_id: str):
    """Audit the denial and raise the same 404 an absent object gets: existence is patient data."""
    _audit(request, principal, action, object_type=object_type, object_id=object_id, outcome="denied")
    return NotFound(f"{object_type} not found / 未找到")


# -- index lookups (one query each, authorization in the SQL) ----------------------------


@dataclass(frozen=True)
class Target:
    """A study, series or instance named by a WADO-RS URL."""

    study: str
    series: str | None = None
    sop: str | None = None

    @property
    def level(self) -> str:
        return "instance" if self.sop else "series" if self.series else "study"

    @property
    def uid(self) -> str:
        return self.sop or self.series or self.study


def target(study: str, series: str | None = None, sop: str | None = None) -> Target:
    """Validate the UIDs of a WADO-RS URL (400 for malformed ones)."""
    return Target(check_uid(study, "StudyInstanceUID"),
                  check_uid(series, "SeriesInstanceUID") if series is not None else None,
                  check_uid(sop, "SOPInstanceUID") if sop is not None else None)


def _instances_statement(columns, level: str, scope_shape: tuple):
    """Instances under a study/series/instance (bound parameters study, series, sop) that a
    scope of `scope_shape` sees (Scope.bound_values), in series/instance order."""
    statement = (select(*columns).select_from(Instance).join(Series, Instance.series_pk == Series.id)
                 .join(Study, Series.study_pk == Study.id)
                 .where(Study.study_instance_uid == bindparam("study")))
    if level in ("series", "instance"):
        statement = statement.where(Series.series_instance_uid == bindparam("series"))
    if level == "instance":
        statement = statement.where(Instance.sop_instance_uid == bindparam("sop"))
    condition = access.bound_study_filter(scope_shape, Study.institution_id, Study.study_instance_uid)
    if condition is not True:
        statement = statement.where(condition)
    return statement.order_by(Series.series_number.asc().nullslast(), Series.id,
                              Instance.instance_number.asc().nullslast(), Instance.id)


def _utf8(dialect: str, column):
    """A text column as the UTF-8 bytes the database holds (SQLite) or converts to (PostgreSQL),
    so a large answer is neither decoded nor re-encoded in Python; other databases: the text."""
    if dialect == "sqlite":
        return cast(column, LargeBinary)
    if dialect == "postgresql":
        return func.convert_to(column, "UTF8")
    return column


def _columns(kind: str, dialect: str) -> tuple:
    if kind == "index":
        return (Study.study_instance_uid.label("study"), Series.series_instance_uid.label("series"),
                Instance.sop_instance_uid.label("sop"), Instance.sop_class_uid.label("sop_class"),
                Instance.transfer_syntax_uid.label("syntax"), Instance.object_key.label("key"),
                Instance.number_of_frames.label("frames"), Instance.rows.label("rows"))
    return (Study.study_instance_uid, Series.series_instance_uid, Instance.sop_instance_uid,
            _utf8(dialect, Instance.dicom_json))


@lru_cache(maxsize=128)
def _cached_statement(kind: str, dialect: str, level: str, scope_shape: tuple):
    # Built once per shape: building costs ~6x running it on a warm SQLite (0.35 vs 0.06 ms).
    return _instances_statement(_columns(kind, dialect), level, scope_shape)


def _run_instances(session: Session, kind: str, scope: Scope, where: Target) -> list:
    # Columns only: Core on the session's connection (the ORM execute layers cost more than the SQL).
    connection = session.connection()
    statement = _cached_statement(kind, connection.dialect.name, where.level, scope.shape)
    values = {"study": where.study, "series": where.series, "sop": where.sop, **scope.bound_values()}
    return connection.execute(statement, values).all()


def find_instances(session: Session, scope: Scope, where: Target) -> list:
    """Visible instances under the target, in series/instance order (no metadata loaded)."""
    return _run_instances(session, "index", scope, where)


def metadata_rows(session: Session, scope: Scope, where: Target) -> list:
    """(study, series, sop, dicom_json) of visible instances under the target, one query;
    dicom_json as UTF-8 bytes where the database can hand them over (see _utf8)."""
    return _run_instances(session, "metadata", scope, where)


def metadata_body(rows: Iterable, base: str) -> bytes:
    """A DICOM JSON array made by concatenating stored JSON text (str or UTF-8 bytes);
    BulkDataURIs made absolute."""
    prefix = INSTANCE_PREFIX.encode("utf-8")
    pieces = []
    for study, series, sop, text in rows:
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text or b"")
        pieces.append((data or b"{}").replace(prefix, instance_url(base, study, series, sop).encode("utf-8")))
    return b"[" + b",".join(pieces) + b"]"


def representative(rows: list) -> Any:
    """The instance that stands for a study or series: the middle one of its first series
    that has images (reports and other non-image objects only when nothing else exists)."""
    images = [r for r in rows if r.rows is not None] or rows
    first_series = [r for r in images if r.series == images[0].series]
    return first_series[len(first_series) // 2]


# -- objects, transcoding, frames -------------------------------------------------------


def load_dataset(store, key: str) -> Dataset:
    """Read a stored Part 10 object (only the resources that need pixels or bulk data do)."""
    return dcmread(io.BytesIO(store.get(key)))


def can_decode(syntax: str) -> bool:
    """Whether pydicom has a working decoder for a compressed transfer syntax."""
    try:
        return get_decoder(UID(syntax)).is_available
    except (NotImplementedError, ValueError):
        return False


def can_transcode_to_explicit_little(syntax: str) -> bool:
    """Native syntaxes (big endian too) and decodable compressed ones can become Explicit VR LE."""
    if syntax in _NATIVE_LITTLE or syntax == transcode.EXPLICIT_BE:
        return True
    return UID(syntax).is_compressed and can_decode(syntax)


def to_explicit_little(data: bytes) -> bytes:
    """The object re-encoded as Explicit VR Little Endian, pixel data decompressed or
    byte-swapped, same UIDs (imaging/transcode.py, shared with C-GET and C-MOVE)."""
    ds = transcode.convert(dcmread(io.BytesIO(data)), EVRLE)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return out.getvalue()


def dicom_offers(syntaxes: set[str], *, single_part: bool) -> list[Offer]:
    """What a study/series/instance retrieval can produce: Explicit VR LE (the default, by
    transcoding when needed) and the stored syntax(es); an instance also as one part."""
    offers = []
    if all(can_transcode_to_explicit_little(s) for s in syntaxes):
        offers.append(Offer("application/dicom", True, EVRLE, native=syntaxes == {EVRLE}))
    if len(syntaxes) == 1 and syntaxes != {EVRLE}:
        offers.append(Offer("application/dicom", True, next(iter(syntaxes))))
    elif len(syntaxes) > 1:
        offers.append(Offer("application/dicom", True, negotiation.ANY_SYNTAX))
    if single_part:
        offers += [Offer(o.media_type, False, o.transfer_syntax, o.native) for o in offers
                   if o.transfer_syntax != negotiation.ANY_SYNTAX]
    return offers


def frame_offers(syntax: str) -> list[Offer]:
    """What frames of an instance stored in `syntax` can be sent as (PS3.18 8.7.3.5): the
    default uncompressed octet-stream, and compressed frames as stored (image/... or
    octet-stream with their transfer-syntax)."""
    if syntax in _NATIVE_LITTLE:
        return [Offer("application/octet-stream", True, EVRLE)]
    offers = []
    if not UID(syntax).is_compressed or can_decode(syntax):
        offers.append(Offer("application/octet-stream", True, EVRLE, native=False))
    if UID(syntax).is_compressed:
        if syntax in negotiation.SYNTAX_MEDIA_TYPES:
            offers.append(Offer(negotiation.SYNTAX_MEDIA_TYPES[syntax], True, syntax))
        offers.append(Offer("application/octet-stream", True, syntax))
    return offers


def _native_frame(ds: Dataset, index: int) -> bytes | None:
    """One frame cut from native little endian Pixel Data, as stored (YBR_FULL_422 still
    subsampled, 1-bit still packed); None when cutting does not apply."""
    if ds.file_meta.TransferSyntaxUID not in _NATIVE_LITTLE or "PixelData" not in ds:
        return None
    bits = native_frame_bits(ds)
    if not bits:
        return None
    data = ds.PixelData
    start, end = index * bits, (index + 1) * bits
    if len(data) * 8 < end:
        raise NotFound(f"frame {index + 1} is beyond the stored pixel data")
    if start % 8 or end % 8:
        return _bits_repacked(data, start, end)
    return data[start // 8:end // 8]


def _bits_repacked(data: bytes, start: int, end: int) -> bytes:
    """Bits [start, end) of 1-bit pixel data, packed again from the first bit of a byte, the
    last byte's unused bits zero: the frames of 1-bit data follow one another without padding,
    so a frame starts inside a byte when its predecessors' pixel count is no multiple of 8."""
    first = start // 8
    bits = unpack_bits(data[first:(end + 7) // 8])[start - 8 * first:end - 8 * first]
    return pack_bits(bits, pad=False)


def _decoded_frame(ds: Dataset, index: int) -> bytes:
    try:
        array, _ = get_decoder(ds.file_meta.TransferSyntaxUID).as_array(ds, index=index)
    except Exception as exc:  # decoders raise many kinds of errors on bad data
        raise NotAcceptable(f"frame {index + 1} cannot be decoded: {exc}"[:300]) from None
    if int(ds.get("BitsAllocated") or 0) == 1:
        # decoders give one byte per pixel; a frame of 1-bit data is sent packed, as the
        # standard stores it (PS3.5 8.1.1), eight times smaller
        return pack_bits(array, pad=False)
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def frame_bytes(ds: Dataset, index: int, *, decode: bool) -> bytes:
    """One frame (0-based): compressed as stored, native as stored, or decoded to
    uncompressed little endian pixels (colour as RGB, pixel-interleaved)."""
    syntax = ds.file_meta.TransferSyntaxUID
    if syntax.is_compressed and not decode:
        extended = None
        if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
            extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
        try:
            return get_frame(ds.PixelData, index, number_of_frames=pixels.number_of_frames(ds),
                             extended_offsets=extended)
        except (ValueError, IndexError, KeyError) as exc:  # broken offset tables or fragments
            raise NotAcceptable(f"frame {index + 1} cannot be extracted: {exc}"[:300]) from None
    native = _native_frame(ds, index)
    return native if native is not None else _decoded_frame(ds, index)


def frames_response(row, ds: Dataset, numbers: list[int], offer: Offer) -> Response:
    """The frames (1-based) as a multipart body, each part with its transfer syntax."""
    decode = offer.transfer_syntax == EVRLE and row.syntax not in _NATIVE_LITTLE
    actual = EVRLE if decode or row.syntax in _NATIVE_LITTLE else row.syntax
    content_type = f"{offer.media_type}; transfer-syntax={actual}"
    pieces = [(content_type, frame_bytes(ds, n - 1, decode=decode)) for n in numbers]
    boundary = multipart.new_boundary()
    return Response(multipart.encode(pieces, boundary), media_type=offer.content_type(boundary))

def frame_numbers_or_404(row, numbers: list[int]) -> None:
    """404 for an instance without pixel data or a frame beyond its Number of Frames."""
    if row.rows is None:
        raise NotFound("this instance has no pixel data, hence no frames")
    beyond = [n for n in numbers if n > (row.frames or 1)]
    if beyond:
        raise NotFound(f"frame {beyond[0]} does not exist: the instance has {row.frames or 1} frame(s)")


def find_element(ds: Dataset, tag: int):
    """The element with this tag: top level first, then inside sequences (depth first); the
    stored BulkDataURIs name elements by tag only."""
    if tag in ds:
        return ds.get_item(tag)
    for element in ds:
        if element.VR == "SQ" and element.value:
            for item in element.value:
                found = find_element(item, tag)
                if found is not None:
                    return found
    return None


def element_bytes(element) -> bytes:
    """The value of a bulk data element as stored (binary VRs) or as UTF-8 text."""
    value = element.value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if value is None:
        return b""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value).encode("utf-8")
    return str(value).encode("utf-8")


# -- rendering --------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderOptions:
    """The PS3.18 8.3.5 rendering parameters, validated before any object is read."""

    window: tuple | None = None
    viewport: tuple | None = None
    quality: int = 90


def render_options(params) -> RenderOptions:
    """window=c,w[,fn], viewport=vw,vh[,sx,sy,sw,sh], quality=1..100; anything else 400."""
    try:
        window = pixels.parse_window(params["window"]) if params.get("window") else None
        viewport = pixels.parse_viewport(params["viewport"]) if params.get("viewport") else None
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    quality = 90
    if params.get("quality"):
        quality = decimal(params["quality"])
        if quality is None or not 1 <= quality <= 100:
            raise BadRequest(f"quality {params['quality'][:20]!r}: an integer from 1 to 100")
    return RenderOptions(window, viewport, quality)


def _pixel_errors(call: Callable[[], bytes]) -> bytes:
    """Map the pixel module's errors: bad arguments 400, no such frame 404, no image 406."""
    try:
        return call()
    except pixels.PixelDataError as exc:
        raise NotAcceptable(f"cannot render: {exc}"[:300]) from None
    except IndexError as exc:
        raise NotFound(str(exc)) from None
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def rendered_image(ds: Dataset, frame: int, media_type: str, options: RenderOptions) -> bytes:
    """One frame (0-based) rendered as JPEG/PNG with window, viewport and quality."""
    return _pixel_errors(lambda: pixels.render(ds, frame, media_type=media_type, window=options.window,
                                               viewport=options.viewport, quality=options.quality))


def thumbnail_image(ds: Dataset, media_type: str, viewport: tuple | None) -> bytes:
    """The representative frame fitted (never enlarged) to the viewport, default 128x128."""
    if media_type == "image/jpeg" and (viewport is None or viewport[0] == viewport[1]):
        size = viewport[0] if viewport else THUMBNAIL_SIZE
        return _pixel_errors(lambda: pixels.thumbnail(ds, size))

    def make() -> bytes:
        width, height = viewport[:2] if viewport else (THUMBNAIL_SIZE, THUMBNAIL_SIZE)
        image = pixels.render_frame(ds, pixels.representative_frame(ds))
        return pixels.encode(pixels.fit(image, width, height), media_type, pixels.THUMBNAIL_QUALITY)

    return _pixel_errors(make)


def rendered_offers(*, several: bool) -> list[Offer]:
    """JPEG (default) or PNG; several frames come as a multipart of images."""
    return [Offer(media_type, several) for media_type in _RENDERED]


# -- QIDO-RS ----------------------------------------------------------------------------

_RESERVED = {"limit", "offset", "includefield", "fuzzymatching", "accept", "charset"}
_RETURN_LEVELS = {  # (level, how much of the hierarchy the URL fixes) -> levels returned
    ("STUDY", 0): ("STUDY",),
    ("SERIES", 0): ("STUDY", "SERIES"), ("SERIES", 1): ("SERIES",),
    ("IMAGE", 0): ("STUDY", "SERIES", "IMAGE"), ("IMAGE", 1): ("SERIES", "IMAGE"), ("IMAGE", 2): ("IMAGE",),
}
_RANK = {level: rank for rank, level in enumerate(query.LEVELS)}


@dataclass
class Search:
    """A parsed QIDO-RS request."""

    level: str
    fixed: int  # 0: all, 1: within a study, 2: within a series
    match: dict[str, str] = field(default_factory=dict)  # indexed keyword -> DICOM matching value
    include: list[str] = field(default_factory=list)  # extra return attributes, as tags
    include_all: bool = False
    limit: int | None = None
    offset: int = 0
    warnings: list[str] = field(default_factory=list)


def attribute_tag(name: str) -> str:
    """An attribute named by keyword or 8-hex tag, as the tag; 400 when unknown."""
    if _TAG.fullmatch(name):
        return name.upper()
    tag = tag_for_keyword(name)
    if tag is None:
        raise BadRequest(f"{name[:80]!r} is neither a DICOM attribute keyword nor a tag")
    return f"{tag:08X}"


def _keyword(tag: str) -> str:
    return keyword_for_tag(int(tag, 16)) or ""


def _vr(tag: str) -> str:
    try:
        return dictionary_VR(int(tag, 16))
    except KeyError:
        return "UN"


def _number(text: str | None, name: str, *, minimum: int) -> int | None:
    if text is None or text == "":
        return None
    number = decimal(text)
    if number is None or number < minimum:
        raise BadRequest(f"{name}={text[:20]!r}: an integer from {minimum}")
    return number


def _add_match(search: Search, name: str, value: str) -> None:
    path = name.split(".")
    if len(path) > 1:  # sequence matching (PS3.18 8.3.4.1 nested attributes) is not supported
        attribute_tag(path[0])
        search.warnings.append(f"matching on {name} is not supported and was ignored")
        return
    keyword = _keyword(attribute_tag(name))
    attr = query.ATTRIBUTES.get(keyword)
    if attr is None or attr.column is None or _RANK[attr.level] > _RANK[search.level]:
        search.warnings.append(f"matching on {name} is not supported at this level and was ignored")
        return
    if attr.vr in ("UI", "CS"):  # UID and code lists may be comma separated in QIDO
        value = value.replace(",", "\\")
    previous = search.match.get(keyword)
    search.match[keyword] = value if previous is None else f"{previous}\\{value}"


def _add_includes(search: Search, value: str) -> None:
    for name in (v.strip() for v in value.split(",")):
        if not name:
            continue
        if name.lower() == "all":
            search.include_all = True
        else:
            search.include.append(attribute_tag(name.split(".")[0]))


def parse_search(params, level: str, fixed: int) -> Search:
    """The matching keys, includefield, limit/offset of a QIDO-RS query string."""
    search = Search(level, fixed)
    for name, value in params.multi_items():
        lower = name.lower()
        if lower == "includefield":
            _add_includes(search, value)
        elif lower == "fuzzymatching":
            if value.strip().lower() == "true":
                search.warnings.append("fuzzy matching is not supported; literal matching was performed")
        elif lower not in _RESERVED:
            _add_match(search, name, value)
    search.limit = _number(params.get("limit"), "limit", minimum=1)
    search.offset = _number(params.get("offset"), "offset", minimum=0) or 0
    return search


def return_keywords(search: Search) -> list[str]:
    """Indexed attributes to return: the defaults of each level shown, or all with includefield=all."""
    levels = _RETURN_LEVELS[(search.level, search.fixed)]
    if search.include_all:
        shown = {"PATIENT", *levels}
        keywords = [k for k, a in query.ATTRIBUTES.items() if a.level in shown and a.kind != "count"]
    else:
        keywords = [k for level in levels for k in query.DEFAULT_RETURN[level]]
    extra = [_keyword(tag) for tag in search.include]
    indexed = [k for k in extra if k in query.ATTRIBUTES and _RANK[query.ATTRIBUTES[k].level] <= _RANK[search.level]]
    return list(dict.fromkeys(keywords + indexed))


def json_element(vr: str, value: Any) -> dict:
    """A DICOM JSON attribute (PS3.18 F.2.2) from an indexed value."""
    if value is None or value == "":
        return {"vr": vr}
    if vr == "PN":
        groups = str(value).split("=")
        names = {name: group for name, group in zip(("Alphabetic", "Ideographic", "Phonetic"), groups) if group}
        return {"vr": vr, "Value": [names]} if names else {"vr": vr}
    if vr in ("IS", "US", "UL", "SS", "SL"):
        return {"vr": vr, "Value": [int(value)]}
    if vr == "CS" and "\\" in str(value):
        return {"vr": vr, "Value": str(value).split("\\")}
    return {"vr": vr, "Value": [value]}


# Each QIDO result's identity, selected next to its attributes (imaging.query.run_columns):
# the UIDs for RetrieveURL/BulkDataURIs, the stored syntax, the keys of stored JSON lookups.
_ID_COLUMNS = {"_study": Study.study_instance_uid, "_series": Series.series_instance_uid,
               "_sop": Instance.sop_instance_uid, "_syntax": Instance.transfer_syntax_uid,
               "_study_pk": Study.id, "_series_pk": Series.id}
_IDS_AT_LEVEL = {"STUDY": ("_study", "_study_pk"), "SERIES": ("_study", "_series", "_series_pk"),
                 "IMAGE": ("_study", "_series", "_sop", "_syntax")}


def _id_columns(search: Search) -> dict:
    """The identity columns a search's results need; instances' stored JSON only when asked for."""
    extra = {label: _ID_COLUMNS[label] for label in _IDS_AT_LEVEL[search.level]}
    if search.level == "IMAGE" and (search.include or search.include_all):
        extra["_json"] = Instance.dicom_json
    return extra


def _instance_json(row: dict, base: str) -> dict:
    """An instance result's own stored DICOM JSON, BulkDataURIs made absolute."""
    url = instance_url(base, row["_study"], row["_series"], row["_sop"])
    try:
        return json.loads((row["_json"] or "{}").replace(INSTANCE_PREFIX, url))
    except ValueError:
        return {}


def _first_instance_json(session: Session, level: str, owner_pks: list[int]) -> dict[int, str]:
    """Study or series pk -> DICOM JSON text of its first stored instance (two queries)."""
    if level == "STUDY":
        owner = Series.study_pk
        first = (select(owner.label("pk"), func.min(Instance.id).label("instance_pk")).select_from(Instance)
                 .join(Series, Instance.series_pk == Series.id).where(owner.in_(owner_pks)).group_by(owner))
    else:
        first = (select(Instance.series_pk.label("pk"), func.min(Instance.id).label("instance_pk"))
                 .where(Instance.series_pk.in_(owner_pks)).group_by(Instance.series_pk))
    owners = {r.instance_pk: r.pk for r in session.execute(first)}
    texts = session.execute(select(Instance.id, Instance.dicom_json).where(Instance.id.in_(list(owners))))
    return {owners[instance_pk]: text for instance_pk, text in texts}


def _requested(text: str | None, tags: list[str]) -> dict:
    """The requested attributes of a representative instance, never its bulk data (whose
    URIs point into that one instance)."""
    stored = json.loads(text) if text else {}
    picked = {tag: stored[tag] for tag in tags if tag in stored}
    return {tag: value for tag, value in picked.items() if INSTANCE_PREFIX not in json.dumps(value)}


def stored_attributes(session: Session, search: Search, rows: list[dict], base: str) -> list[dict | None]:
    """Per result, the attributes that come from stored DICOM JSON rather than the index:
    an instance's own (includefield), or a study's/series' from its first instance."""
    if search.level == "IMAGE":
        wanted = search.include or search.include_all
        return [_instance_json(row, base) if wanted else None for row in rows]
    if not search.include or not rows:
        return [None] * len(rows)
    pk = "_study_pk" if search.level == "STUDY" else "_series_pk"
    texts = _first_instance_json(session, search.level, [row[pk] for row in rows])
    return [_requested(texts.get(row[pk]), search.include) for row in rows]


def _retrieve_url(base: str, row: dict, level: str) -> str:
    if level == "IMAGE":
        return instance_url(base, row["_study"], row["_series"], row["_sop"])
    if level == "SERIES":
        return series_url(base, row["_study"], row["_series"])
    return study_url(base, row["_study"])


def _elements(keywords: list[str]) -> list[tuple[str, str, str]]:
    """(keyword, tag, VR) of indexed return attributes, looked up once per search."""
    return [(keyword, f"{tag_for_keyword(keyword):08X}", query.ATTRIBUTES[keyword].vr) for keyword in keywords]


def search_result(row: dict, search: Search, elements: list[tuple[str, str, str]], base: str,
                  stored: dict | None) -> dict:
    """One QIDO-RS result: indexed attributes, requested stored ones, RetrieveURL."""
    out: dict[str, dict] = {}
    if search.include_all and search.level == "IMAGE" and stored:
        out.update(stored)
    for keyword, tag, vr in elements:
        if keyword in row:
            out[tag] = json_element(vr, row[keyword])
    for tag in search.include:
        if tag not in out:
            found = (stored or {}).get(tag)
            out[tag] = found if found is not None else {"vr": _vr(tag)}
    if search.level == "IMAGE":
        out[AVAILABLE_TRANSFER_SYNTAX] = {"vr": "UI", "Value": [row["_syntax"]]}
    out[RETRIEVE_URL] = {"vr": "UR", "Value": [_retrieve_url(base, row, search.level)]}
    return dict(sorted(out.items()))


def run_search(session: Session, scope: Scope, search: Search, base: str) -> tuple[list[dict], bool]:
    """(results, truncated): one index query through imaging.query (only the columns the
    answer needs), then the result datasets; truncated when the server's maximum, not the
    client's limit, cut the answer short."""
    keywords = return_keywords(search)
    keys = {keyword: "" for keyword in keywords} | search.match
    wanted = min(search.limit or MAX_RESULTS, MAX_RESULTS)
    rows = query.run_columns(session, scope, query.Query(search.level, keys, limit=wanted + 1, offset=search.offset),
                             _id_columns(search))
    truncated = len(rows) > wanted and (search.limit is None or search.limit > MAX_RESULTS)
    rows = rows[:wanted]
    stored = stored_attributes(session, search, rows, base)
    elements = _elements(keywords)
    return [search_result(row, search, elements, base, extra) for row, extra in zip(rows, stored)], truncated


def _warning_header(base: str, warnings: list[str]) -> dict[str, str]:
    if not warnings:
        return {}
    quoted = (w.replace("\\", "\\\\").replace('"', '\\"') for w in dict.fromkeys(warnings))
    text = ", ".join(f'299 {base}: "{w}"' for w in quoted)
    # Header values are Latin-1: a parameter name a client wrote in Chinese must not break it.
    return {"Warning": text.encode("ascii", "replace").decode()}


# -- STOW-RS ----------------------------------------------------------------------------

_INGESTOR_LOCK = threading.Lock()


def ingestor_for(app) -> Ingestor:
    """The app's one Ingestor (it owns a thread pool), made on first use from the runtime;
    committed series are announced for thumbnails exactly as after C-STORE."""
    found = getattr(app.state, "dicomweb_ingestor", None)
    if found is not None:
        return found
    with _INGESTOR_LOCK:
        found = getattr(app.state, "dicomweb_ingestor", None)
        if found is None:
            from imaging.announce import SeriesAnnouncer

            runtime = app.state.runtime
            announcer = SeriesAnnouncer(runtime.db)
            found = Ingestor(runtime.db, runtime.store, on_committed=announcer.note,
                             limits=Limits.of(runtime.settings))
            app.state.dicomweb_announcer = announcer
            app.state.dicomweb_ingestor = found
    return found


def close(app) -> None:
    """Stop the STOW ingestor and announcer if they were started (call on app shutdown)."""
    announcer = getattr(app.state, "dicomweb_announcer", None)
    ingestor = getattr(app.state, "dicomweb_ingestor", None)
    if announcer is not None:
        announcer.stop()
    if ingestor is not None:
        ingestor.close()
    app.state.dicomweb_ingestor = app.state.dicomweb_announcer = None


def stow_warning_header(outcome: "StowOutcome") -> dict | None:
    """Tell the uploader in a Warning header too (RFC 9111 299; ASCII, JSON-escaped)."""
    said = []
    if outcome.replacements:
        summary = json.dumps(outcome.replacements[:5], separators=(",", ":"))[:900].replace('"', "'")
        said.append(f"replaced {len(outcome.replacements)} instance(s): {summary}")
    if outcome.warnings:
        summary = json.dumps(outcome.warnings[:5], separators=(",", ":"))[:900].replace('"', "'")
        said.append(f"stored {len(outcome.warnings)} instance(s) with UIDs that do not conform: {summary}")
    if not said:
        return None
    text = "; ".join(said).encode("ascii", "backslashreplace").decode()
    headers = {"Warning": f'299 lancang "{text}"'}
    if outcome.replacements:  # what changed, as JSON the upload page shows (ASCII, \u-escaped)
        headers[CHANGES_HEADER] = json.dumps(outcome.replacements[:20], separators=(",", ":"), default=str)[:6000]
    return headers


@dataclass
class StowOutcome:
    """What one STOW-RS request did, for the response and the audit record."""

    referenced: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {"stored": 0, "already": 0, "replaced": 0})
    studies: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    replacements: list[dict] = field(default_factory=list)  # corrected re-sends and what changed
    warnings: list[dict] = field(default_factory=list)  # stored, but not as the standard wants it

    def fail(self, sop_class: str, sop_uid: str, reason: int, why: str) -> None:
        item = {}
        if sop_class:
            item[REFERENCED_SOP_CLASS] = {"vr": "UI", "Value": [sop_class]}
        if sop_uid:
            item[REFERENCED_SOP_INSTANCE] = {"vr": "UI", "Value": [sop_uid]}
        item[FAILURE_REASON] = {"vr": "US", "Value": [reason]}
        self.failed.append(item)
        if len(self.failures) < 20:
            self.failures.append(f"{reason:04X} {sop_uid or '?'} {why}"[:300])

    @property
    def status(self) -> int:
        """PS3.18 10.5.3: 200 all stored, 202 stored with warnings or some failed, 409 none stored."""
        if not self.failed:
            return 202 if any(WARNING_REASON in item for item in self.referenced) else 200
        return 202 if self.referenced else 409


def check_stow_content_type(content_type: str) -> str:
    """The boundary of a STOW-RS body; 415 unless multipart/related; type="application/dicom"."""
    try:
        media_type, params = multipart.boundary_of(content_type or "")
    except multipart.MalformedMultipart:
        media_type, params = negotiation.parse_media_type(content_type or "")
        if media_type == negotiation.MULTIPART:
            raise BadRequest("multipart/related without a boundary parameter") from None
        raise UnsupportedMediaType(f'expected multipart/related; type="application/dicom", '
                                   f'got {content_type[:100]!r}') from None
    part_type = negotiation.parse_media_type(params.get("type", ""))[0]
    if media_type != negotiation.MULTIPART or part_type not in ("", "application/dicom"):
        raise UnsupportedMediaType('only multipart/related; type="application/dicom" is accepted '
                                   "(DICOM JSON / XML metadata with bulk data is not supported)")
    return params["boundary"]


class Refused(Exception):
    """One STOW-RS part that is not stored, with its PS3.4 failure reason."""

    def __init__(self, reason: int, why: str):
        super().__init__(why)
        self.reason, self.why = reason, why


class StowContext:
    """Stores the parts of one STOW-RS request for one caller, one part at a time."""

    def __init__(self, ingestor: Ingestor, db, principal: Principal, base: str, study: str | None):
        self.ingestor, self.db, self.principal, self.base, self.study = ingestor, db, principal, base, study
        self.outcome = StowOutcome()
        self._seen: set[str] = set()
        self._owners: dict[str, int | None] = {}

    def store_all(self, parts: Iterable[multipart.Part]) -> StowOutcome:
        for part in parts:
            self.store(part)
        return self.outcome

    def store(self, part: multipart.Part) -> None:
        """Store one part durably, or record why not."""
        sop_class = sop_uid = ""
        try:
            self._bounded(part)
            ds = self._readable(part)
            sop_class, sop_uid = str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", ""))
            self._check(ds, sop_uid)
            result = self._ingest(part.content, ds, sop_uid)
        except Refused as refused:
            self.outcome.fail(sop_class, sop_uid, refused.reason, refused.why)
            return
        self._referenced(result)

    def _bounded(self, part: multipart.Part) -> None:
        limits = self.ingestor.limits
        try:
            check_instance(part.content, max_instance=limits.max_instance, max_inflated=limits.max_inflated)
        except InvalidInstance as exc:
            raise Refused(_stow_reason(exc.status), exc.reason) from None

    @staticmethod
    def _readable(part: multipart.Part) -> Dataset:
        """The part as a dataset: application/dicom (or untyped) Part 10 bytes, else 0xC000."""
        part_type = negotiation.parse_media_type(part.content_type)[0] if part.content_type else ""
        if part_type not in ("", "application/dicom"):
            raise Refused(CANNOT_UNDERSTAND, f"part of type {part_type}")
        if part.content[128:132] != b"DICM":
            raise Refused(CANNOT_UNDERSTAND, "not a DICOM Part 10 file")
        try:
            return parse_part10(part.content)
        except InvalidInstance as exc:
            raise Refused(CANNOT_UNDERSTAND, exc.reason) from None

    def _check(self, ds: Dataset, sop_uid: str) -> None:
        """Refuse a study other than the URL's (0xA900), a SOP Instance UID sent twice in
        this request (0x0111) and a study that another institution owns (0x0124)."""
        study = str(ds.get("StudyInstanceUID", ""))
        if self.study and study != self.study:
            raise Refused(MISMATCH, f"StudyInstanceUID {study} does not match the URL's {self.study}")
        if sop_uid and sop_uid in self._seen:
            raise Refused(DUPLICATE_SOP_INSTANCE, "the same SOP Instance UID twice in one request")
        self._seen.add(sop_uid)
        owner = self._owner(study)
        if owner is not None and owner != self.principal.institution_id:
            raise Refused(NOT_AUTHORIZED, "the study belongs to another institution")

    def _owner(self, study: str) -> int | None:
        """The institution that owns an existing study (None for a new one), cached per request."""
        if study and study not in self._owners:
            with self.db.scope(readonly=True) as session:
                self._owners[study] = session.scalar(
                    select(Study.institution_id).where(Study.study_instance_uid == study))
        return self._owners.get(study)

    def _ingest(self, data: bytes, ds: Dataset, sop_uid: str):
        """Ingestor.ingest with its errors as failure reasons: backend down 0xA700, bad data
        0xC000 or 0xA900, anything unforeseen 0x0110."""
        try:
            return self.ingestor.ingest(data, ds=ds, institution_id=self.principal.institution_id,
                                        source=f"stow:{self.principal.name}")
        except InvalidInstance as exc:
            raise Refused(_stow_reason(exc.status), exc.reason) from None
        except (Unavailable, SQLAlchemyError, OSError) as exc:
            log.error("dicomweb.store.unavailable sop=%s error=%s", sop_uid, exc)
            raise Refused(OUT_OF_RESOURCES, type(exc).__name__) from None
        except DomainError as exc:
            raise Refused(MISMATCH, exc.detail) from None
        except Exception as exc:  # one bad instance must not lose the others' answers
            log.exception("dicomweb.store.error sop=%s", sop_uid)
            raise Refused(PROCESSING_FAILURE, type(exc).__name__) from None

    def _referenced(self, result) -> None:
        self.outcome.counts[result.outcome] += 1
        self.outcome.studies.add(result.study_instance_uid)
        url = instance_url(self.base, result.study_instance_uid, result.series_instance_uid,
                           result.sop_instance_uid)
        item = {
            REFERENCED_SOP_CLASS: {"vr": "UI", "Value": [result.sop_class_uid]},
            REFERENCED_SOP_INSTANCE: {"vr": "UI", "Value": [result.sop_instance_uid]},
            RETRIEVE_URL: {"vr": "UR", "Value": [url]},
        }
        if result.outcome == "replaced":
            # A corrected re-send replaced the stored version; its values now feed the index.
            item[WARNING_REASON] = {"vr": "US", "Value": [COERCED]}
            self.outcome.replacements.append({"sop": result.sop_instance_uid, "changes": result.changes})
        if result.warnings:  # WarningReason holds one value: the UID's, which the sender must fix
            item[WARNING_REASON] = {"vr": "US", "Value": [NOT_CONFORMING]}
            self.outcome.warnings.append({"sop": result.sop_instance_uid, "warnings": list(result.warnings)})
        self.outcome.referenced.append(dict(sorted(item.items())))


class SpooledBody:
    """A request body held in memory while small, else in a temporary file read through
    mmap (file-backed pages, not the process's heap)."""

    IN_MEMORY = 8 * 1024 * 1024

    def __init__(self, directory: Path):
        self.directory = directory
        self.buffer = bytearray()
        self.file = None
        self.view = b""
        self._map = None

    def write(self, chunk: bytes) -> None:
        if self.file is None and len(self.buffer) + len(chunk) > self.IN_MEMORY:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.file = tempfile.TemporaryFile(dir=self.directory)
            self.file.write(self.buffer)
            self.buffer = bytearray()
        if self.file is None:
            self.buffer += chunk
        else:
            self.file.write(chunk)

    def finish(self) -> "SpooledBody":
        if self.file is None:
            self.view = bytes(self.buffer)
        elif self.file.tell():
            self.file.flush()
            self._map = mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_READ)
            self.view = self._map
        return self

    def __enter__(self) -> "SpooledBody":
        return self

    def __exit__(self, *exc) -> None:
        self.view = b""
        if self._map is not None:
            self._map.close()
        if self.file is not None:
            self.file.close()


async def spool_body(request: Request, limit: int, directory: Path) -> SpooledBody:
    """The body, refused with 413 past `limit` bytes (declared or received)."""
    declared = request.headers.get("content-length", "")
    too_large = PayloadTooLarge(f"the upload is larger than {limit // (1 << 20)} MiB (LANCANG_MAX_UPLOAD_BYTES); "
                                "send fewer instances per request / 上传内容过大，请分批上传")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body, received = SpooledBody(directory), 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise too_large
            body.write(chunk)
    except BaseException:
        body.__exit__(None, None, None)
        raise
    return body.finish()


def _stow_reason(status: int) -> int:
    """The STOW failure reason for an ingest refusal's C-STORE status."""
    if status == NOT_AUTHORIZED:
        return NOT_AUTHORIZED
    if status & 0xFF00 == OUT_OF_RESOURCES & 0xFF00:
        return OUT_OF_RESOURCES
    return CANNOT_UNDERSTAND if status & 0xF000 == 0xC000 else MISMATCH


def stow_response(outcome: StowOutcome, base: str, study: str | None) -> dict:
    """The Store Instances response dataset (PS3.18 Table 10.5.3-1)."""
    body: dict[str, dict] = {}
    studies = {study} if study else outcome.studies
    if len(studies) == 1 and outcome.referenced:
        body[RETRIEVE_URL] = {"vr": "UR", "Value": [study_url(base, next(iter(studies)))]}
    if outcome.failed:
        body[FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": outcome.failed}
    if outcome.referenced:
        body[REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": outcome.referenced}
    return dict(sorted(body.items()))


def _json_response(payload: Any, offer: Offer, status: int = 200, headers: dict | None = None) -> Response:
    content = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Response(content, status_code=status, media_type=offer.media_type, headers=headers)


# -- the router -------------------------------------------------------------------------


def in_one_hop(authenticate: Callable[[Request, Session], Principal]):
    """Make `work(..., request, session, principal)` an endpoint that runs in one thread-pool hop.

    The read resources are many small requests. As FastAPI dependencies, the read session
    and the principal would cost a hop each (plus the endpoint's own) and anyio's exit-stack
    machinery around them, more than a study search's SQL. Here one worker thread opens the
    read unit of work, authenticates (`authenticate`, the web layer's token check), runs the
    work, ends the transaction and writes the read audits the work asked for (`_audit`).
    The endpoint's signature is `work`'s without `session` and `principal`, so FastAPI still
    validates and documents the path parameters.

    The audits wait for the read transaction's end because, on SQLite, a write committed
    while the same request still reads keeps the WAL from ever rewinding under steady
    load (each checkpoint finds a reader in it); they are committed before the answer
    leaves, whether the work succeeded or was refused.
    """

    def decorate(work: Callable[..., Response]):
        signature = inspect.signature(work)
        kept = [p for name, p in signature.parameters.items() if name not in ("session", "principal")]

        def unit_of_work(kwargs: dict) -> Response:
            request = kwargs["request"]
            db = request.app.state.runtime.db
            request.state.pending_read_audits = pending = []
            try:
                with db.scope(readonly=True) as session:
                    return work(session=session, principal=authenticate(request, session), **kwargs)
            finally:
                request.state.pending_read_audits = None
                for fields in pending:
                    audit.record_read(db, **fields)

        async def endpoint(**kwargs):
            return await run_in_threadpool(unit_of_work, kwargs)

        endpoint.__signature__ = signature.replace(parameters=kept)
        endpoint.__name__, endpoint.__qualname__, endpoint.__doc__ = work.__name__, work.__qualname__, work.__doc__
        return endpoint

    return decorate


def build_dicomweb_router(current_principal, authenticate) -> APIRouter:
    """The DICOMweb router, given the web layer's principal dependency (STOW-RS) and its token
    check (`authenticate(request, session)`, for the read resources run by `in_one_hop`).

    STOW-RS takes no request-long session: the Ingestor commits each instance in its own
    transaction, and holding a request-long write transaction would block it on SQLite.
    """
    router = APIRouter(prefix=PREFIX, tags=["dicomweb"])
    CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
    one_hop = in_one_hop(authenticate)  # read routes: session and principal supplied by one_hop

    def runtime(request: Request):
        return request.app.state.runtime

    def instances_or_404(request, session, principal, where: Target, action: str) -> list:
        rows = find_instances(session, access.scope_for(session, principal), where)
        if not rows:
            raise _not_found(request, principal, action, where.level, where.uid)
        return rows

    # ---- STOW-RS ----

    async def stow(request: Request, principal: Principal, study: str | None) -> Response:
        if study is not None:
            check_uid(study, "StudyInstanceUID")
        boundary = check_stow_content_type(request.headers.get("content-type", ""))
        offer = choose(request, _JSON_OFFERS)
        access.require_uploader(principal)
        settings = runtime(request).settings
        with await spool_body(request, settings.max_upload_bytes, settings.data_dir / "tmp") as body:
            try:
                parts = multipart.iter_parts(body.view, boundary)
            except multipart.MalformedMultipart as exc:
                raise BadRequest(str(exc)) from None
            base = base_url(request)
            context = StowContext(ingestor_for(request.app), runtime(request).db, principal, base, study)
            try:
                outcome = await run_in_threadpool(context.store_all, parts)
            except multipart.MalformedMultipart as exc:
                raise BadRequest(str(exc)) from None
        if not (outcome.referenced or outcome.failed):
            raise BadRequest("the multipart body has no parts")
        _audit(request, principal, "dicomweb.store", object_type="study",
               object_id=",".join(sorted(outcome.studies)) or (study or ""),
               outcome="ok" if not outcome.failed else "failed",
               detail={**outcome.counts, "failed": len(outcome.failed), "failures": outcome.failures,
                       "replacements": outcome.replacements[:50], "warnings": outcome.warnings[:50]},
               change=True)
        log.info("dicomweb.store.done user=%s stored=%s failed=%s", principal.name,
                 len(outcome.referenced), len(outcome.failed))
        headers = stow_warning_header(outcome)
        return _json_response(stow_response(outcome, base, study), offer, outcome.status, headers=headers)

    @router.post("/studies")
    async def store_instances(request: Request, principal: CurrentPrincipal) -> Response:
        """STOW-RS Store Instances: each part a Part 10 object, stored durably like C-STORE."""
        return await stow(request, principal, None)

    @router.post("/studies/{study}")
    async def store_study_instances(study: str, request: Request, principal: CurrentPrincipal) -> Response:
        """STOW-RS into one study: instances of another study fail with 0xA900."""
        return await stow(request, principal, study)

    # ---- QIDO-RS ----

    def qido(request: Request, session: Session, principal: Principal, level: str,
             study: str | None = None, series: str | None = None) -> Response:
        offer = choose(request, _JSON_OFFERS)
        search = parse_search(request.query_params, level, fixed=2 if series else 1 if study else 0)
        if study:
            search.match["StudyInstanceUID"] = check_uid(study, "StudyInstanceUID")
        if series:
            search.match["SeriesInstanceUID"] = check_uid(series, "SeriesInstanceUID")
        base = base_url(request)
        results, truncated = run_search(session, access.scope_for(session, principal), search, base)
        if truncated:
            search.warnings.append("there are more results than the server returns at once; "
                                   "request the rest with offset")
        _audit(request, principal, "dicomweb.search", object_type=level.lower(),
               object_id=json.dumps(search.match, ensure_ascii=False), detail={"matches": len(results)})
        return _json_response(results, offer, headers=_warning_header(base, search.warnings))

    @router.get("/studies")
    @one_hop
    def search_studies(request: Request, session: Session, principal: Principal) -> Response:
        """QIDO-RS Search for Studies."""
        return qido(request, session, principal, "STUDY")

    @router.get("/series")
    @one_hop
    def search_all_series(request: Request, session: Session, principal: Principal) -> Response:
        """QIDO-RS Search for Series in all studies (study attributes included)."""
        return qido(request, session, principal, "SERIES")

    @router.get("/instances")
    @one_hop
    def search_all_instances(request: Request, session: Session, principal: Principal) -> Response:
        """QIDO-RS Search for Instances in all studies."""
        return qido(request, session, principal, "IMAGE")

    @router.get("/studies/{study}/series")
    @one_hop
    def search_series(study: str, request: Request, session: Session, principal: Principal) -> Response:
        """QIDO-RS Search for Series of one study."""
        return qido(request, session, principal, "SERIES", study)

    @router.get("/studies/{study}/instances")
    @one_hop
    def search_study_instances(study: str, request: Request, session: Session,
                               principal: Principal) -> Response:
        """QIDO-RS Search for Instances of one study."""
        return qido(request, session, principal, "IMAGE", study)

    @router.get("/studies/{study}/series/{series}/instances")
    @one_hop
    def search_instances(study: str, series: str, request: Request, session: Session,
                         principal: Principal) -> Response:
        """QIDO-RS Search for Instances of one series."""
        return qido(request, session, principal, "IMAGE", study, series)

    # ---- WADO-RS: instances ----

    def retrieve(request: Request, session: Session, principal: Principal, where: Target) -> Response:
        rows = instances_or_404(request, session, principal, where, "dicomweb.retrieve")
        offer = choose(request, dicom_offers({r.syntax for r in rows}, single_part=where.sop is not None))
        _audit(request, principal, "dicomweb.retrieve", object_type=where.level, object_id=where.uid,
               detail={"instances": len(rows), "transfer_syntax": offer.transfer_syntax})
        store = runtime(request).store
        # Everything that can fail is decided before the status line (PS3.18 8.7): a
        # transcoding error mid-stream used to cut a 200 answer short.
        parts = prepared_parts(store, rows, offer, any_syntax_ok=_accepts_any_syntax(request),
                               spool_dir=runtime(request).settings.data_dir / "tmp")
        if not offer.multipart:
            content_type, chunks = parts[0]
            return StreamingResponse(chunks, media_type=content_type)
        boundary = multipart.new_boundary()
        return StreamingResponse(multipart.stream(parts, boundary), media_type=offer.content_type(boundary))

    @router.get("/studies/{study}")
    @one_hop
    def retrieve_study(study: str, request: Request, session: Session, principal: Principal):
        """WADO-RS Retrieve Study: every instance, multipart/related; type="application/dicom"."""
        return retrieve(request, session, principal, target(study))

    @router.get("/studies/{study}/series/{series}")
    @one_hop
    def retrieve_series(study: str, series: str, request: Request, session: Session,
                        principal: Principal):
        """WADO-RS Retrieve Series."""
        return retrieve(request, session, principal, target(study, series))

    @router.get("/studies/{study}/series/{series}/instances/{sop}")
    @one_hop
    def retrieve_instance(study: str, series: str, sop: str, request: Request, session: Session,
                          principal: Principal):
        """WADO-RS Retrieve Instance."""
        return retrieve(request, session, principal, target(study, series, sop))

    # ---- WADO-RS: metadata ----

    def metadata(request: Request, session: Session, principal: Principal, where: Target) -> Response:
        offer = choose(request, _JSON_OFFERS)
        rows = metadata_rows(session, access.scope_for(session, principal), where)
        if not rows:
            raise _not_found(request, principal, "dicomweb.metadata", where.level, where.uid)
        _audit(request, principal, "dicomweb.metadata", object_type=where.level, object_id=where.uid,
               detail={"instances": len(rows)})
        return Response(metadata_body(rows, base_url(request)), media_type=offer.media_type)

    @router.get("/studies/{study}/metadata")
    @one_hop
    def study_metadata(study: str, request: Request, session: Session, principal: Principal):
        """WADO-RS Retrieve Study Metadata (DICOM JSON of every instance, from the index)."""
        return metadata(request, session, principal, target(study))

    @router.get("/studies/{study}/series/{series}/metadata")
    @one_hop
    def series_metadata(study: str, series: str, request: Request, session: Session,
                        principal: Principal):
        """WADO-RS Retrieve Series Metadata."""
        return metadata(request, session, principal, target(study, series))

    @router.get("/studies/{study}/series/{series}/instances/{sop}/metadata")
    @one_hop
    def instance_metadata(study: str, series: str, sop: str, request: Request, session: Session,
                          principal: Principal):
        """WADO-RS Retrieve Instance Metadata (a JSON array of one dataset)."""
        return metadata(request, session, principal, target(study, series, sop))

    # ---- WADO-RS: frames and bulk data ----

    @router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frames}")
    @one_hop
    def retrieve_frames(study: str, series: str, sop: str, frames: str, request: Request,
                        session: Session, principal: Principal):
        """WADO-RS Retrieve Frames (1-based list): uncompressed octet-stream by default, or the
        compressed frames as stored when the client accepts their media type."""
        where, numbers = target(study, series, sop), parse_frame_numbers(frames)
        row = instances_or_404(request, session, principal, where, "dicomweb.frames")[0]
        frame_numbers_or_404(row, numbers)
        offer = choose(request, frame_offers(row.syntax))
        _audit(request, principal, "dicomweb.frames", object_type="instance", object_id=sop,
               detail={"frames": numbers[:50], "transfer_syntax": offer.transfer_syntax})
        ds = load_dataset(runtime(request).store, row.key)
        return frames_response(row, ds, numbers, offer)

    @router.get("/studies/{study}/series/{series}/instances/{sop}/bulkdata/{tag}")
    @one_hop
    def retrieve_bulkdata(study: str, series: str, sop: str, tag: str, request: Request,
                          session: Session, principal: Principal):
        """WADO-RS Retrieve Bulk Data named by the metadata's BulkDataURI (an 8-hex tag); pixel
        data comes as its frames, one part each."""
        where = target(study, series, sop)
        if not _TAG.fullmatch(tag):
            raise BadRequest(f"bulk data {tag[:40]!r}: expected an 8-hex-digit tag")
        row = instances_or_404(request, session, principal, where, "dicomweb.bulkdata")[0]
        pixel = tag.upper() in _PIXEL_TAGS
        offers = frame_offers(row.syntax) if pixel else [Offer("application/octet-stream", True),
                                                         Offer("application/octet-stream", False)]
        offer = choose(request, offers)
        ds = load_dataset(runtime(request).store, row.key)
        element = find_element(ds, int(tag, 16))
        if element is None:
            raise NotFound(f"the instance has no bulk data element {tag}")
        _audit(request, principal, "dicomweb.bulkdata", object_type="instance", object_id=sop,
               detail={"tag": tag.upper()})
        if pixel:
            return frames_response(row, ds, list(range(1, pixels.number_of_frames(ds) + 1)), offer)
        value = element_bytes(element)
        if not offer.multipart:
            return Response(value, media_type=offer.media_type)
        boundary = multipart.new_boundary()
        return Response(multipart.encode([(offer.media_type, value)], boundary),
                        media_type=offer.content_type(boundary))

    # ---- WADO-RS: rendered and thumbnails ----

    def render_one(request: Request, session: Session, principal: Principal, where: Target,
                   frame: int | None) -> Response:
        """Render the target's representative instance; frame None: its representative frame."""
        options = render_options(request.query_params)
        offer = choose(request, rendered_offers(several=False))
        rows = instances_or_404(request, session, principal, where, "dicomweb.rendered")
        row = representative(rows)
        _audit(request, principal, "dicomweb.rendered", object_type=where.level, object_id=where.uid,
               detail={"instance": row.sop, "media_type": offer.media_type})
        ds = load_dataset(runtime(request).store, row.key)
        index = pixels.representative_frame(ds) if frame is None else frame
        return Response(rendered_image(ds, index, offer.media_type, options), media_type=offer.media_type)

    @router.get("/studies/{study}/rendered")
    @one_hop
    def study_rendered(study: str, request: Request, session: Session, principal: Principal):
        """WADO-RS Retrieve Rendered Study: one image of its representative instance."""
        return render_one(request, session, principal, target(study), None)

    @router.get("/studies/{study}/series/{series}/rendered")
    @one_hop
    def series_rendered(study: str, series: str, request: Request, session: Session,
                        principal: Principal):
        """WADO-RS Retrieve Rendered Series: one image of its middle instance."""
        return render_one(request, session, principal, target(study, series), None)

    @router.get("/studies/{study}/series/{series}/instances/{sop}/rendered")
    @one_hop
    def instance_rendered(study: str, series: str, sop: str, request: Request, session: Session,
                          principal: Principal):
        """WADO-RS Retrieve Rendered Instance: its first frame."""
        return render_one(request, session, principal, target(study, series, sop), 0)

    @router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frames}/rendered")
    @one_hop
    def frames_rendered(study: str, series: str, sop: str, frames: str, request: Request,
                        session: Session, principal: Principal):
        """WADO-RS Retrieve Rendered Frames: one image, or a multipart of images for several."""
        where, numbers = target(study, series, sop), parse_frame_numbers(frames)
        options = render_options(request.query_params)
        offer = choose(request, rendered_offers(several=len(numbers) > 1))
        row = instances_or_404(request, session, principal, where, "dicomweb.rendered")[0]
        frame_numbers_or_404(row, numbers)
        _audit(request, principal, "dicomweb.rendered", object_type="instance", object_id=sop,
               detail={"frames": numbers[:50], "media_type": offer.media_type})
        ds = load_dataset(runtime(request).store, row.key)
        images = [(offer.media_type, rendered_image(ds, n - 1, offer.media_type, options)) for n in numbers]
        if not offer.multipart:
            return Response(images[0][1], media_type=offer.media_type)
        boundary = multipart.new_boundary()
        return Response(multipart.encode(images, boundary), media_type=offer.content_type(boundary))

    def thumbnail(request: Request, session: Session, principal: Principal, where: Target) -> Response:
        viewport = render_options(request.query_params).viewport
        offer = choose(request, rendered_offers(several=False))
        row = representative(instances_or_404(request, session, principal, where, "dicomweb.thumbnail"))
        _audit(request, principal, "dicomweb.thumbnail", object_type=where.level, object_id=where.uid,
               detail={"instance": row.sop})
        ds = load_dataset(runtime(request).store, row.key)
        return Response(thumbnail_image(ds, offer.media_type, viewport), media_type=offer.media_type)

    @router.get("/studies/{study}/thumbnail")
    @one_hop
    def study_thumbnail(study: str, request: Request, session: Session, principal: Principal):
        """WADO-RS Retrieve Study Thumbnail (viewport=vw,vh; default 128x128)."""
        return thumbnail(request, session, principal, target(study))

    @router.get("/studies/{study}/series/{series}/thumbnail")
    @one_hop
    def series_thumbnail(study: str, series: str, request: Request, session: Session,
                         principal: Principal):
        """WADO-RS Retrieve Series Thumbnail."""
        return thumbnail(request, session, principal, target(study, series))

    @router.get("/studies/{study}/series/{series}/instances/{sop}/thumbnail")
    @one_hop
    def instance_thumbnail(study: str, series: str, sop: str, request: Request, session: Session,
                           principal: Principal):
        """WADO-RS Retrieve Instance Thumbnail (its representative frame)."""
        return thumbnail(request, session, principal, target(study, series, sop))

    # ---- WADO-URI ----

    @router.get("/wado")
    @one_hop
    def wado_uri(request: Request, session: Session, principal: Principal) -> Response:
        """WADO-URI (PS3.18 9): one object as application/dicom, or one frame as image/jpeg|png."""
        params = request.query_params
        if params.get("requestType", "") != "WADO":
            raise BadRequest("requestType must be WADO")
        where = target(*(params.get(name, "") for name in ("studyUID", "seriesUID", "objectUID")))
        row = instances_or_404(request, session, principal, where, "dicomweb.wado_uri")[0]
        offer = choose(request, wado_uri_offers(row), accept=params.get("contentType") or "*/*")
        if offer.media_type == "application/dicom":
            syntax = wado_uri_syntax(row, params.get("transferSyntax"))
            _audit(request, principal, "dicomweb.wado_uri", object_type="instance", object_id=where.sop,
                   detail={"content_type": offer.media_type, "transfer_syntax": syntax})
            as_sent = Offer("application/dicom", False, syntax)
            return StreamingResponse(_object_chunks(runtime(request).store, row, as_sent),
                                     media_type=as_sent.content_type())
        options = wado_uri_render_options(params)
        frame = _number(params.get("frameNumber"), "frameNumber", minimum=1) or 1
        frame_numbers_or_404(row, [frame])
        _audit(request, principal, "dicomweb.wado_uri", object_type="instance", object_id=where.sop,
               detail={"content_type": offer.media_type, "frame": frame})
        ds = load_dataset(runtime(request).store, row.key)
        return Response(rendered_image(ds, frame - 1, offer.media_type, options), media_type=offer.media_type)

    return router


def _answer_syntax(offer: Offer, stored: str) -> str:
    """The transfer syntax an object goes out in: as stored, or the offer's (transcoded)."""
    return stored if offer.transfer_syntax in (None, negotiation.ANY_SYNTAX, stored) else offer.transfer_syntax


def _accepts_any_syntax(request: Request) -> bool:
    return re.search(r"transfer-syntax\s*=\s*\"?\*", request.headers.get("accept", "")) is not None


def prepared_parts(store, rows, offer: Offer, *, any_syntax_ok: bool,
                   spool_dir: Path) -> list[tuple[str, Iterable[bytes]]]:
    """(content type, chunks) per instance, every transcoding already done (spooled to a
    temporary file, not memory). An instance that cannot be transcoded goes as stored when
    the client accepts any transfer syntax; otherwise the whole answer is 406, naming it."""
    parts = []
    try:
        for row in rows:
            syntax = _answer_syntax(offer, row.syntax)
            if syntax == row.syntax:
                parts.append((f"application/dicom; transfer-syntax={syntax}", store.stream(row.key)))
                continue
            try:
                spooled = _spooled(to_explicit_little(store.get(row.key)), spool_dir)
            except Exception as exc:  # any decoder failure: decided here, not mid-stream
                if not any_syntax_ok:
                    raise NotAcceptable(
                        f"instance {row.sop} is stored as {row.syntax} and cannot be decoded to {syntax} "
                        f"({type(exc).__name__}); ask with transfer-syntax=* to receive it as stored"[:400]) from None
                log.warning("dicomweb.retrieve.as_stored sop=%s syntax=%s error=%s", row.sop, row.syntax, exc)
                parts.append((f"application/dicom; transfer-syntax={row.syntax}", store.stream(row.key)))
                continue
            parts.append((f"application/dicom; transfer-syntax={syntax}", _spool_chunks(spooled)))
    except BaseException:
        for _, chunks in parts:
            getattr(chunks, "close", lambda: None)()
        raise
    return parts


def _spooled(data: bytes, directory: Path):
    directory.mkdir(parents=True, exist_ok=True)
    spool = tempfile.SpooledTemporaryFile(max_size=16 * 1024 * 1024, dir=directory)
    spool.write(data)
    spool.seek(0)
    return spool


def _spool_chunks(spool) -> Iterator[bytes]:
    try:
        while chunk := spool.read(1024 * 1024):
            yield chunk
    finally:
        spool.close()


def _object_chunks(store, row, offer: Offer) -> Iterable[bytes]:
    """A stored object's bytes, streamed from the store, or transcoded to Explicit VR LE
    before the answer starts (406 when it cannot be)."""
    if _answer_syntax(offer, row.syntax) == row.syntax:
        return store.stream(row.key)
    try:
        return [to_explicit_little(store.get(row.key))]
    except Exception as exc:
        raise NotAcceptable(f"the object is stored as {row.syntax} and cannot be decoded "
                            f"({type(exc).__name__}); ask for its stored transfer syntax") from None


def wado_uri_offers(row) -> list[Offer]:
    """WADO-URI representations (PS3.18 9.1.2.1.5): JPEG (the default for images), PNG, or
    the object itself (the default for everything else); transferSyntax is a separate parameter."""
    images = [Offer(media_type) for media_type in _RENDERED] if row.rows is not None else []
    return images + [Offer("application/dicom")]


def wado_uri_syntax(row, requested: str | None) -> str:
    """The WADO-URI transferSyntax: Explicit VR LE by default (transcoding when needed) or
    the stored syntax; anything else 406."""
    wanted = (requested or EVRLE).strip()
    if wanted == row.syntax or (wanted == EVRLE and can_transcode_to_explicit_little(row.syntax)):
        return wanted
    raise NotAcceptable(f"the object is stored as {row.syntax} and cannot be sent as {wanted[:70]}")


def wado_uri_render_options(params) -> RenderOptions:
    """WADO-URI rows/columns/windowCenter/windowWidth/imageQuality as rendering options."""
    rows = _number(params.get("rows"), "rows", minimum=1)
    columns = _number(params.get("columns"), "columns", minimum=1)
    translated = {}
    if rows or columns:
        translated["viewport"] = f"{columns or pixels.MAX_VIEWPORT},{rows or pixels.MAX_VIEWPORT}"
    center, width = params.get("windowCenter"), params.get("windowWidth")
    if center or width:
        if not (center and width):
            raise BadRequest("windowCenter and windowWidth go together")
        translated["window"] = f"{center},{width}"
    if params.get("imageQuality"):
        translated["quality"] = params["imageQuality"]
    return render_options(translated)
