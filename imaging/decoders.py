"""Pixel data decoders Lancang adds to pydicom's (a pydicom decoding plugin).

JPEG Extended (1.2.840.10008.1.2.4.51) from some encoders carries a scan header that
is not a sequential one: Se, the end of spectral selection, is 0 where it must be 63
(pydicom's own 12-bit JPEG-lossy.dcm is such a file). libjpeg (pylibjpeg) refuses the
codestream, and pydicom's GDCM and Pillow plugins have no 12-bit path, so these frames
could not be rendered or decoded at all. IJG libjpeg (dcmtk's dcmdjpeg) only warns and
decodes the whole 8x8 block: in a sequential DCT scan Ss, Se, Ah and Al each have one
legal value (ITU T.81 B.2.3: 0, 63, 0, 0), so writing those values back changes no
coded data, and libjpeg then decodes the frame as the encoder meant it.

The plugin is registered after pydicom's own, so a conforming codestream never reaches
it; it only answers for codestreams it actually had to repair.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from pydicom.pixels import get_decoder
from pydicom.uid import JPEGExtended12Bit

if TYPE_CHECKING:
    from pydicom.pixels.decoders.base import DecodeRunner

try:
    import libjpeg
except ImportError:  # pylibjpeg-libjpeg is a dependency; without it pydicom's plugins decide
    libjpeg = None

__all__ = ["DECODER_DEPENDENCIES", "decode_frame", "is_available", "register", "sequential_scans_repaired"]

PLUGIN = "lancang-sequential-scan"
# pydicom asks a plugin module for these two when it is added
DECODER_DEPENDENCIES = {JPEGExtended12Bit: ("pylibjpeg-libjpeg>=2.1",)}

_SOS = 0xDA
_EOI = 0xD9
_SEQUENTIAL_SOF = (0xC0, 0xC1)  # baseline and extended sequential DCT, Huffman coded
_NOT_SOF = (0xC4, 0xC8, 0xCC)  # DHT, JPG (reserved), DAC share the 0xC0-0xCF range
_NO_LENGTH = (0x01, 0xD8)  # TEM, SOI: markers without a segment
_SEQUENTIAL_SCAN = b"\x00\x3f\x00"  # Ss=0, Se=63, Ah=Al=0


def is_available(uid: str) -> bool:
    """Whether the plugin can decode `uid` (pydicom's plugin interface)."""
    return libjpeg is not None and uid == JPEGExtended12Bit


def _markers(data: bytes | bytearray) -> Iterator[tuple[int, int]]:
    """(marker, offset of its 0xFF) for each marker segment, entropy-coded data skipped."""
    at = data.find(b"\xff")
    while 0 <= at < len(data) - 1:
        marker = data[at + 1]
        # 0xFF fill bytes, stuffed 0xFF00 and RSTn inside a scan are not segments
        if marker == 0xFF or marker == 0x00 or 0xD0 <= marker <= 0xD7:
            at = data.find(b"\xff", at + 1 if marker == 0xFF else at + 2)
            continue
        yield marker, at
        if marker == _EOI:
            return
        step = 2 if marker in _NO_LENGTH else 2 + int.from_bytes(data[at + 2:at + 4], "big")
        at = data.find(b"\xff", at + step)


def sequential_scans_repaired(codestream: bytes) -> bytes | None:
    """The codestream with every scan header of a sequential DCT frame set to Ss=0, Se=63,
    Ah=Al=0; None when it has no such frame or its scan headers are already right."""
    data = bytearray(codestream)
    sequential = changed = False
    for marker, at in _markers(data):
        if 0xC0 <= marker <= 0xCF and marker not in _NOT_SOF:
            sequential = marker in _SEQUENTIAL_SOF
        elif marker == _SOS and sequential and at + 5 <= len(data):
            start = at + 5 + 2 * data[at + 4]  # after Ls, Ns and Ns component selectors
            if start + 3 <= len(data) and data[start:start + 3] != _SEQUENTIAL_SCAN:
                data[start:start + 3] = _SEQUENTIAL_SCAN
                changed = True
    return bytes(data) if changed else None


def decode_frame(src: bytes, runner: DecodeRunner) -> bytearray:
    """Decode one frame whose sequential scan header needed repair (pydicom's plugin
    interface); raise for any other codestream so pydicom reports its own plugins' errors."""
    repaired = sequential_scans_repaired(src)
    if repaired is None:
        raise ValueError("the scan headers are sequential: nothing for this plugin to repair")
    # version 2: raw samples as a bytearray, colour space left to pydicom, as its own
    # pylibjpeg plugin does
    return libjpeg.decode_pixel_data(repaired, version=2)


def register() -> None:
    """Add the plugin to pydicom's JPEG Extended decoder, after its own plugins (once)."""
    decoder = get_decoder(JPEGExtended12Bit)
    if is_available(JPEGExtended12Bit) and PLUGIN not in decoder.available_plugins:
        decoder.add_plugin(PLUGIN, (__name__, "decode_frame"))
