"""JPEG-LS lossless (ITU-T T.87, transfer syntax 1.2.840.10008.1.2.4.80) for grey frames on the
wire: what the viewer asks for over a slow line.

Measured on bench/ctgen.py's CT phantom (512x512, 16-bit signed): JPEG-LS carries 0.305 of the
raw bytes against 0.425 for gzip level 1 (0.410 at level 9); CharLS encodes a slice in ~11 ms
here and the browser's WebAssembly CharLS decodes it in ~6 ms. Encoding happens per request:
200 slices cost ~2 s of server CPU against ~30 s on an 8 Mbit/s line.

Values are the stored bit patterns within Bits Stored (two's complement for signed data, as
DICOM's JPEG-LS pixel data carries them); the reader sign-extends, as for native frames. A
16-bit allocated frame is coded with at least 9 bits per sample, so the decoded samples are
two bytes wide like the native frame the reader expects.
"""

from __future__ import annotations

import numpy as np
from jpeg_ls import CharLS
from pydicom.dataset import Dataset

JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"


class NotEncodable(ValueError):
    """The frame is not a grey 8- or 16-bit integer frame."""


def encodable(ds: Dataset) -> bool:
    return (int(ds.get("SamplesPerPixel", 1)) == 1 and int(ds.get("BitsAllocated", 0)) in (8, 16)
            and 1 < int(ds.get("BitsStored", ds.get("BitsAllocated", 0))) <= 16
            and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds)


def encode_frame(ds: Dataset, native: bytes) -> bytes:
    """One native little-endian frame of `ds` as a JPEG-LS lossless codestream."""
    if not encodable(ds):
        raise NotEncodable("JPEG-LS is offered for grey 8- and 16-bit frames only")
    allocated = int(ds.BitsAllocated)
    stored = int(ds.get("BitsStored", allocated))
    samples = np.frombuffer(native, dtype=np.uint16 if allocated == 16 else np.uint8)
    if stored < allocated:
        samples = samples & ((1 << stored) - 1)  # overlay bits or sign extension above Bits Stored
    bits = max(stored, 9) if allocated == 16 else stored
    return bytes(CharLS.encode_buffer(samples.tobytes(), int(ds.Rows), int(ds.Columns), 1, bits))
