"""Stored objects on the way out: loading, transcoding to Explicit VR Little Endian, frames
and bulk data, and the prepared parts of a multipart answer."""

import io
import logging
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from fastapi import Request
from fastapi.responses import Response
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels import get_decoder, pack_bits, unpack_bits
from pydicom.uid import UID

from imaging import jpegls, pixels, transcode
from imaging.dicomweb import multipart, negotiation
from imaging.dicomweb.common import NATIVE_LITTLE, maybe_gzipped
from imaging.dicomweb.negotiation import EXPLICIT_VR_LITTLE_ENDIAN as EVRLE, Offer
from imaging.dataset import native_frame_bits
from storage.errors import NotAcceptable, NotFound

log = logging.getLogger("lancang.dicomweb")

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
    if syntax in NATIVE_LITTLE or syntax == transcode.EXPLICIT_BE:
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
    if syntax in NATIVE_LITTLE:
        # Grey frames also travel JPEG-LS lossless, encoded per request (imaging/jpegls.py):
        # ~0.3 of a CT's raw bytes against gzip's ~0.42; the viewer asks for it.
        return [Offer("application/octet-stream", True, EVRLE),
                Offer("image/jls", True, jpegls.JPEG_LS_LOSSLESS, native=False)]
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
    if ds.file_meta.TransferSyntaxUID not in NATIVE_LITTLE or "PixelData" not in ds:
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


# A frame never changes under its SOP Instance UID: the viewer's idle prefetch (viewer/idle.js)
# leaves frames in the browser's cache for a few minutes. Private (no shared proxy keeps them),
# and sign-out clears the cache (Clear-Site-Data). Answers differ by Accept and Accept-Encoding.
FRAME_CACHE = "private, max-age=600"
FRAME_VARY = "Accept, Accept-Encoding"


def frames_response(row, ds: Dataset, numbers: list[int], offer: Offer, *, gzip_ok: bool = False) -> Response:
    """The frames (1-based) as a multipart body, each part with its transfer syntax."""
    response = _frames_body(row, ds, numbers, offer, gzip_ok)
    response.headers["Cache-Control"] = FRAME_CACHE
    response.headers["Vary"] = FRAME_VARY
    return response


def _frames_body(row, ds: Dataset, numbers: list[int], offer: Offer, gzip_ok: bool) -> Response:
    if offer.transfer_syntax == jpegls.JPEG_LS_LOSSLESS and row.syntax in NATIVE_LITTLE:
        return _jpeg_ls_frames(ds, numbers, offer)
    decode = offer.transfer_syntax == EVRLE and row.syntax not in NATIVE_LITTLE
    actual = EVRLE if decode or row.syntax in NATIVE_LITTLE else row.syntax
    content_type = f"{offer.media_type}; transfer-syntax={actual}"
    pieces = [(content_type, frame_bytes(ds, n - 1, decode=decode)) for n in numbers]
    boundary = multipart.new_boundary()
    # Frames stored compressed are sent as they are; native ones may be gzipped on the wire.
    return maybe_gzipped(multipart.encode(pieces, boundary), offer.content_type(boundary),
                         gzip_ok=gzip_ok and actual in NATIVE_LITTLE)


def _jpeg_ls_frames(ds: Dataset, numbers: list[int], offer: Offer) -> Response:
    """Native frames encoded JPEG-LS lossless, one part each (406 for colour or float data)."""
    try:
        pieces = [(f"image/jls; transfer-syntax={jpegls.JPEG_LS_LOSSLESS}",
                   jpegls.encode_frame(ds, frame_bytes(ds, n - 1, decode=False))) for n in numbers]
    except jpegls.NotEncodable as exc:
        raise NotAcceptable(f"{exc}; ask for application/octet-stream") from None
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


def _answer_syntax(offer: Offer, stored: str) -> str:
    """The transfer syntax an object goes out in: as stored, or the offer's (transcoded)."""
    return stored if offer.transfer_syntax in (None, negotiation.ANY_SYNTAX, stored) else offer.transfer_syntax


def accepts_any_syntax(request: Request) -> bool:
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


def object_chunks(store, row, offer: Offer) -> Iterable[bytes]:
    """A stored object's bytes, streamed from the store, or transcoded to Explicit VR LE
    before the answer starts (406 when it cannot be)."""
    if _answer_syntax(offer, row.syntax) == row.syntax:
        return store.stream(row.key)
    try:
        return [to_explicit_little(store.get(row.key))]
    except Exception as exc:
        raise NotAcceptable(f"the object is stored as {row.syntax} and cannot be decoded "
                            f"({type(exc).__name__}); ask for its stored transfer syntax") from None
