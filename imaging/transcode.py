"""Which transfer syntax a retrieved instance leaves in, and the conversion to get there.

An archive sends each instance as it was stored when the peer accepted that syntax (the
bytes are then the stored ones), and otherwise converts to what the peer accepted:
Explicit VR Little Endian first, Implicit VR Little Endian after (PS3.5 A.1/A.2 are the
syntaxes every DICOM peer supports). Compressed data is decompressed with pydicom's
decoders (the same as WADO-RS); big endian is swapped; deflated data is only re-encoded.
We never convert into a compressed syntax: there is no gain for a peer that accepted an
uncompressed one, and lossy re-compression would change the image.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import pack_bits
from pydicom.uid import UID

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
UNCOMPRESSED_TARGETS = (EXPLICIT_LE, IMPLICIT_LE)
# Bytes per word of the "other" VRs whose raw values change with the byte order.
_WORD = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


class CannotConvert(ValueError):
    """No syntax the peer accepted can carry this instance."""


def choose_syntax(sop_class: str, stored: str, accepted: Iterable[tuple[str, str]]) -> str | None:
    """The syntax to send an instance of `sop_class` stored in `stored`, given the peer's
    accepted (abstract syntax, transfer syntax) pairs: the stored one if accepted, else an
    uncompressed little endian one, else None."""
    offered = {syntax for abstract, syntax in accepted if abstract == sop_class}
    if stored in offered:
        return stored
    for target in UNCOMPRESSED_TARGETS:
        if target in offered:
            return target
    return None


def convert(ds: Dataset, target: str) -> Dataset:
    """`ds` (with file_meta) re-expressed in `target`, an uncompressed little endian syntax.
    Pixel values are unchanged for lossless sources; a lossy source is decoded once, as a
    viewer would (YBR becomes RGB)."""
    stored = str(ds.file_meta.TransferSyntaxUID)
    if stored == target:
        return ds
    if target not in UNCOMPRESSED_TARGETS:
        raise CannotConvert(f"cannot convert {stored} to {target}")
    try:
        if UID(stored).is_compressed and "PixelData" in ds:
            ds.decompress(as_rgb=True, generate_instance_uid=False)
        elif stored == EXPLICIT_BE:
            _to_little_endian(ds)
    except CannotConvert:
        raise
    except Exception as exc:  # a decoder's own error: say which syntax could not be decoded
        raise CannotConvert(f"cannot decode {UID(stored).name}: {exc}") from exc
    ds.file_meta.TransferSyntaxUID = target
    _now_encoded_as(ds, target)
    return ds


def _now_encoded_as(ds: Dataset, target: str) -> None:
    """Make every element a decoded one, then say the data set is in `target`: pydicom (and
    pynetdicom, which sends by a data set's original encoding) would otherwise copy values
    still raw in the stored byte order or VR style unchanged into the new encoding."""
    for _element in ds.iterall():
        pass
    ds.set_original_encoding(target == IMPLICIT_LE, True, ds.original_character_set)


def _to_little_endian(ds: Dataset) -> None:
    """Big endian to little: pixel data through its decoded values (PS3.5 8.1.1 packing,
    planar configuration made interleaved), other OW/OF/OL/OD/OV values swapped per word;
    numbers in US/SS/UL/FL/FD... are decoded values and re-encode by themselves."""
    if "PixelData" in ds:
        pixels = ds.pixel_array
        if ds.BitsAllocated == 1:
            data = pack_bits(pixels)
        else:
            data = pixels.astype(pixels.dtype.newbyteorder("<"), copy=False).tobytes()
        if ds.get("SamplesPerPixel", 1) > 1:
            ds.PlanarConfiguration = 0  # pydicom hands the samples interleaved
        ds.PixelData = data + (b"\0" if len(data) % 2 else b"")
        ds["PixelData"].VR = "OB" if ds.BitsAllocated <= 8 else "OW"
    _swap_other_words(ds)


def _swap_other_words(ds: Dataset) -> None:
    for element in ds.iterall():
        if element.tag == 0x7FE00010 or element.VR not in _WORD or not isinstance(element.value, bytes):
            continue
        width = _WORD[element.VR]
        usable = len(element.value) - len(element.value) % width
        words = np.frombuffer(element.value[:usable], dtype=f">u{width}")
        element.value = words.astype(f"<u{width}").tobytes() + element.value[usable:]
