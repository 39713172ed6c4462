"""Bounds on what one upload may cost: bytes received, bytes per instance, and what a
deflated data set may inflate to.

A 324 KB Deflated Explicit VR instance that inflated to 300 MB was stored, then inflated
again by the receiver and the worker (~1 GB each). Here the inflation is measured before
anything parses it, in bounded steps, and refused past the limit; the same check serves
STOW-RS, C-STORE and `lancang import`. Settings: LANCANG_MAX_UPLOAD_BYTES,
LANCANG_MAX_INSTANCE_BYTES, LANCANG_MAX_INFLATED_BYTES.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from imaging.dataset import InvalidInstance

DEFLATED = "1.2.840.10008.1.2.1.99"


@dataclass(frozen=True)
class Limits:
    max_instance: int = 1024 ** 3
    max_inflated: int = 256 * 1024 ** 2

    @classmethod
    def of(cls, settings) -> "Limits":
        return cls(settings.max_instance_bytes, settings.max_inflated_bytes)

OUT_OF_RESOURCES = 0xA700
_STEP = 1 << 20


def check_inflated(deflated, limit: int) -> int:
    """The inflated size of raw-deflate data (PS3.5 A.5), refusing it past `limit` without
    ever holding more than a step of it."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total, pending = 0, memoryview(deflated)
    try:
        while pending:
            total += len(inflater.decompress(pending[:_STEP], _STEP))
            pending = pending[_STEP:]
            while inflater.unconsumed_tail:
                total += len(inflater.decompress(inflater.unconsumed_tail, _STEP))
                _refuse_past(total, limit)
            _refuse_past(total, limit)
    except zlib.error as exc:
        raise InvalidInstance(f"the deflated data set is corrupt: {exc}", 0xC000) from None
    return total


def _refuse_past(total: int, limit: int) -> None:
    if total > limit:
        raise InvalidInstance(f"the deflated data set inflates beyond {limit // (1 << 20)} MiB: refused "
                              "(LANCANG_MAX_INFLATED_BYTES) / 解压后过大", OUT_OF_RESOURCES)


def check_instance(data, *, max_instance: int, max_inflated: int) -> None:
    """Refuse a Part 10 instance larger than max_instance, or a deflated one whose data set
    inflates beyond max_inflated."""
    if len(data) > max_instance:
        raise InvalidInstance(f"the instance is {len(data) // (1 << 20)} MiB, more than the "
                              f"{max_instance // (1 << 20)} MiB allowed (LANCANG_MAX_INSTANCE_BYTES) / 文件过大",
                              OUT_OF_RESOURCES)
    start, syntax = data_set_offset(data)
    if syntax == DEFLATED:
        check_inflated(memoryview(data)[start:], max_inflated)


def data_set_offset(data) -> tuple[int, str]:
    """Where the data set of a Part 10 file starts, and the transfer syntax its File Meta
    names; (0, "") when there is no Part 10 header. File Meta is always explicit VR little
    endian (PS3.10 7.1)."""
    if bytes(data[128:132]) != b"DICM":
        return 0, ""
    position, end, syntax = 132, len(data), ""
    while position + 8 <= end:
        group, element = struct.unpack_from("<HH", data, position)
        if group != 0x0002:
            break
        vr = bytes(data[position + 4:position + 6])
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            length = struct.unpack_from("<I", data, position + 8)[0]
            header = 12
        else:
            length = struct.unpack_from("<H", data, position + 6)[0]
            header = 8
        if element == 0x0010:
            syntax = bytes(data[position + header:position + header + length]).rstrip(b"\x00 ").decode("ascii", "replace")
        position += header + length
    return position, syntax
