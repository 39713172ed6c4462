"""DICOM pixel data -> display images (numpy uint8, PNG, JPEG).

Used by the DICOMweb "rendered" resources (PS3.18 8.3.5: ``window``, ``viewport``,
``quality``), by the workers that make series/instance thumbnails and by the
patient's phone page.

Pipeline (PS3.4 N.2, as far as it applies to a rendered frame):

* decoding is pydicom's (``pydicom.pixels`` decoders, one frame at a time), so
  every transfer syntax with an installed plugin works (pylibjpeg, gdcm, pyjpegls),
  plus ``imaging.decoders`` for JPEG Extended scans with a non-sequential header;
* grayscale: Modality LUT (rescale slope/intercept or Modality LUT Sequence), then
  VOI: explicit ``window`` argument > header VOI LUT Sequence / Window Center &
  Width (first value) > automatic window (0.5-99.5 percentile of the frame,
  Pixel Padding Value excluded); MONOCHROME1 is inverted so white means dense;
* colour: RGB, YBR_FULL, YBR_FULL_422 (pydicom converts YCbCr to RGB and reports
  the colour space it actually returned, which is what we trust rather than the
  header, since JPEG codestreams may disagree with it), YBR_RCT/YBR_ICT (JPEG
  2000 decoders return RGB), PALETTE COLOR, either Planar Configuration;
* resizing is SimpleITK (block averaging + Gaussian anti-aliasing + linear
  resampling), encoding is Pillow.

Frame numbers are 0-based everywhere in this module (DICOMweb URLs are 1-based:
subtract one in the web layer).  Errors: :class:`PixelDataError` for missing or
undecodable pixel data, ``ValueError`` for bad caller arguments, ``IndexError``
for a frame number out of range.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np
import SimpleITK as sitk
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    apply_windowing,
    as_pixel_options,
    convert_color_space,
    get_decoder,
)
from pydicom.pixels.utils import get_nr_frames

from imaging import decoders

__all__ = [
    "PixelDataError",
    "encode",
    "fit",
    "number_of_frames",
    "parse_viewport",
    "parse_window",
    "NativeGray",
    "native_gray",
    "render",
    "render_frame",
    "render_native",
    "render_native_frame",
    "representative_frame",
    "thumbnail",
]

Window = Union[tuple[float, float], tuple[float, float, str]]
Viewport = Union[
    tuple[int, int],
    tuple[int, int, "int | None", "int | None", "int | None", "int | None"],
]

MEDIA_TYPES = ("image/jpeg", "image/png")
MAX_VIEWPORT = 8192  # largest vw/vh accepted (guards memory on hostile requests)
AUTO_PERCENTILES = (0.5, 99.5)
PNG_COMPRESS_LEVEL = 3  # zlib: ~2x faster than Pillow's default 6, up to ~20% larger
THUMBNAIL_QUALITY = 85

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_MONO = ("MONOCHROME1", "MONOCHROME2")
_WINDOW_FUNCTIONS = {
    "LINEAR": "LINEAR",
    "LINEAR_EXACT": "LINEAR_EXACT",
    "LINEAR-EXACT": "LINEAR_EXACT",
    "SIGMOID": "SIGMOID",
}
# Stored-value ranges up to this size are rendered through a lookup table built
# by pydicom's LUT functions (fast: one table lookup per pixel); wider ranges and
# float pixel data go through the per-pixel path.
_MAX_LUT_ENTRIES = 1 << 16
# Image-pixel / LUT attributes copied into the per-frame view of the dataset.
_FRAME_KEYWORDS = (
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
    "PixelPaddingValue",
    "PixelPaddingRangeLimit",
)


# Here, at import, because pydicom's decoders are process-wide and adding a plugin is not
# thread-safe; every reader of pixels (rendering, frames, transcoding) imports this module.
decoders.register()


class PixelDataError(ValueError):
    """The dataset has no pixel data, or it cannot be decoded or rendered."""


# --------------------------------------------------------------------------- #
# Frames
# --------------------------------------------------------------------------- #
def _has_pixels(ds: Dataset) -> bool:
    return any(k in ds for k in _PIXEL_KEYWORDS)


def number_of_frames(ds: Dataset) -> int:
    """Number of frames in the pixel data; 0 if there is no pixel data.

    DICOM: (0028,0008) Number of Frames; absent, empty or 0 means a single frame.
    """
    if not _has_pixels(ds):
        return 0
    try:
        return max(1, int(get_nr_frames(ds, warn=False)))
    except (TypeError, ValueError):  # unparsable IS value
        return 1


def representative_frame(ds: Dataset) -> int:
    """0-based index of the frame that best represents the instance.

    DICOM: (0028,6010) Representative Frame Number (1-based) when present and
    valid, otherwise the middle frame (``n // 2``); 0 for single-frame images.
    """
    n = number_of_frames(ds)
    if n <= 1:
        return 0
    try:
        rep = int(ds.get("RepresentativeFrameNumber") or 0)
    except (TypeError, ValueError):
        rep = 0
    if 1 <= rep <= n:
        return rep - 1
    return n // 2


def _check_frame(ds: Dataset, frame: int) -> int:
    if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)):
        raise TypeError(f"frame must be an int (0-based), not {type(frame).__name__}")
    n = number_of_frames(ds)
    if not 0 <= frame < n:
        raise IndexError(
            f"frame {int(frame)} is out of range: the instance has {n} frame(s), "
            "numbered from 0"
        )
    return int(frame)


def _decode_frame(ds: Dataset, frame: int) -> tuple[np.ndarray, str]:
    """Decode one frame with pydicom; return (array, its photometric interpretation).

    Only that frame is decoded (native data is sliced, encapsulated data has only
    its fragments decompressed).  The photometric interpretation returned is the
    one pydicom reports for the *decoded* array: YBR_FULL/YBR_FULL_422 come back as
    RGB, and JPEG/JPEG 2000 codestreams that contradict the header are honoured.
    """
    if not isinstance(ds, Dataset):
        raise TypeError(f"expected a pydicom Dataset, not {type(ds).__name__}")
    if not _has_pixels(ds):
        raise PixelDataError(
            "the dataset has no pixel data (no Pixel Data, Float Pixel Data or "
            "Double Float Pixel Data element)"
        )
    frame = _check_frame(ds, frame)
    file_meta = getattr(ds, "file_meta", None)
    tsyntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if not tsyntax:
        raise PixelDataError(
            "cannot decode pixel data: the dataset has no (0002,0010) Transfer "
            "Syntax UID in its file meta information"
        )
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise PixelDataError(
            f"no pixel data decoder exists for transfer syntax "
            f"{getattr(tsyntax, 'name', tsyntax)} ({tsyntax})"
        ) from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no plugin available"
        raise PixelDataError(
            f"no decoding plugin installed for {tsyntax.name} ({tsyntax}): {missing}"
        )
    try:
        arr, props = decoder.as_array(
            ds, index=frame, validate=True, raw=False, **as_pixel_options(ds)
        )
    except Exception as exc:  # decoders raise all sorts: wrap them all
        raise PixelDataError(
            f"cannot decode frame {frame} ({tsyntax.name}): {exc}"
        ) from exc
    if not arr.dtype.isnative:  # big endian native data comes back as '>u2' etc.
        arr = arr.astype(arr.dtype.newbyteorder("="))
    pi = str(props.get("photometric_interpretation") or ds.get("PhotometricInterpretation", ""))
    return arr, pi.strip().upper()


def _copy_element(src: Dataset, dst: Dataset, keyword: str) -> None:
    """Put a *new* element in `dst` with `src`'s value.

    Sharing the DataElement object would let assignments made on `dst` (ours, or
    pydicom's LUT functions normalising values) write through to the caller's
    dataset.
    """
    elem = src[keyword]
    dst.add_new(elem.tag, elem.VR, elem.value)


def _frame_dataset(ds: Dataset, frame: int) -> Dataset:
    """A small dataset holding the pixel/LUT attributes in force for `frame`.

    Merges the top level with Enhanced multi-frame functional groups (shared,
    then per-frame: Pixel Value Transformation and Frame VOI LUT), so pydicom's
    LUT functions see the right rescale and window.  Also keeps pydicom's LUT
    functions from mutating the caller's dataset.
    """
    out = Dataset()
    for kw in _FRAME_KEYWORDS:
        if kw in ds:
            _copy_element(ds, out, kw)
    for groups_kw, idx in (
        ("SharedFunctionalGroupsSequence", 0),
        ("PerFrameFunctionalGroupsSequence", frame),
    ):
        groups = ds.get(groups_kw)
        if not groups or idx >= len(groups):
            continue
        item = groups[idx]
        for seq_kw in ("PixelValueTransformationSequence", "FrameVOILUTSequence"):
            seq = item.get(seq_kw)
            if seq:
                for elem in seq[0]:
                    if elem.keyword in _FRAME_KEYWORDS:
                        _copy_element(seq[0], out, elem.keyword)
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is not None:
        out.file_meta = file_meta  # endianness of OW LUT data
    try:
        out.set_original_encoding(*ds.original_encoding)
    except (AttributeError, TypeError, ValueError):
        pass
    return out


# --------------------------------------------------------------------------- #
# Grayscale
# --------------------------------------------------------------------------- #
def _windowed(values: np.ndarray, vds: Dataset) -> np.ndarray:
    """apply_windowing `values` and scale its output range to 0..255 (float)."""
    # pydicom maps the window onto an output range it derives from the header;
    # feed it -inf/+inf as well so it tells us that range itself.
    ext = np.empty(values.size + 2, dtype=np.float64)
    ext[:-2] = values.ravel()
    ext[-2:] = (-np.inf, np.inf)
    out = apply_windowing(ext, vds)
    y0, y1 = out[-2], out[-1]
    out = out[:-2]
    return _to_grey_range(out, y0, y1, values.size)


def _to_grey_range(out: np.ndarray, y0: float, y1: float, size: int) -> np.ndarray:
    """Windowed values scaled so the window's bottom (y0) is 0 and its top (y1) is 255; all zero
    when the window maps everything to one value."""
    if not (math.isfinite(y0) and math.isfinite(y1)) or y0 == y1:
        return np.zeros(size, dtype=np.float64)
    out -= y0
    out *= 255.0 / (y1 - y0)
    return out


def _window_dataset(fds: Dataset, center: float, width: float, function: str) -> Dataset:
    vds = Dataset()
    for kw in ("PhotometricInterpretation", "BitsStored", "PixelRepresentation",
               "RescaleSlope", "RescaleIntercept", "ModalityLUTSequence"):
        if kw in fds:
            _copy_element(fds, vds, kw)
    vds.PhotometricInterpretation = "MONOCHROME2"
    # only used by pydicom for its output range, which _windowed normalises away;
    # Float Pixel Data has neither element
    if "BitsStored" not in vds:
        vds.BitsStored = 16
    if "PixelRepresentation" not in vds:
        vds.PixelRepresentation = 0
    vds.WindowCenter = center
    vds.WindowWidth = width
    vds.VOILUTFunction = function
    return vds


def _header_voi(values: np.ndarray, fds: Dataset) -> "np.ndarray | None":
    """The header's VOI (LUT Sequence preferred, then window) as 0..255, or None."""
    seq = fds.get("VOILUTSequence")
    if seq and seq[0].get("LUTDescriptor") and seq[0].get("LUTData") is not None:
        bits = int(seq[0].LUTDescriptor[2])
        ints = values if values.dtype.kind in "iu" else np.rint(values).astype(np.int64)
        out = apply_voi(ints, fds).astype(np.float64)
        out *= 255.0 / ((1 << bits) - 1)
        return out
    if fds.get("WindowCenter") is not None and fds.get("WindowWidth") is not None:
        vds = _window_dataset(fds, 0, 1, "LINEAR")
        for kw in ("WindowCenter", "WindowWidth", "VOILUTFunction"):
            if kw in fds:
                _copy_element(fds, vds, kw)
            elif kw in vds:
                del vds[kw]
        return _windowed(values, vds)
    return None


def _auto_window(values: np.ndarray, counts: "np.ndarray | None") -> tuple[float, float]:
    """(low, high) modality values at the AUTO_PERCENTILES of the histogram."""
    lo_p, hi_p = AUTO_PERCENTILES
    if counts is None:
        if values.size == 0:
            return 0.0, 1.0
        lo, hi = np.percentile(values, (lo_p, hi_p))
        if hi <= lo:
            lo, hi = values.min(), values.max()
        return float(lo), float(hi)
    nz = counts > 0
    if not nz.any():
        return 0.0, 1.0
    v, c = values[nz], counts[nz]
    if v.size > 1 and np.any(v[1:] < v[:-1]):  # non-monotonic Modality LUT
        order = np.argsort(v, kind="stable")
        v, c = v[order], c[order]
    cdf = np.cumsum(c)
    total = cdf[-1]
    lo = v[min(np.searchsorted(cdf, total * lo_p / 100.0, side="right"), v.size - 1)]
    hi = v[min(np.searchsorted(cdf, total * hi_p / 100.0, side="left"), v.size - 1)]
    if hi <= lo:
        lo, hi = v[0], v[-1]
    return float(lo), float(hi)


def _voi_to_uint8(
    values: np.ndarray,
    fds: Dataset,
    window: "tuple[float, float, str] | None",
    auto: "Callable[[], tuple[float, float]]",
) -> np.ndarray:
    """Map modality `values` to uint8 display values (the VOI stage).

    `auto` computes the automatic (low, high) window; it is only called when
    neither an explicit window nor a usable header VOI exists.
    """
    out = None
    if window is not None:
        out = _windowed(values, _window_dataset(fds, *window))
    else:
        try:
            out = _header_voi(values, fds)
        except (ValueError, NotImplementedError, IndexError, TypeError, AttributeError):
            out = None  # invalid header VOI (e.g. width 0): fall back to automatic
        if out is None:
            lo, hi = auto()
            if hi <= lo:
                hi = lo + 1.0
            vds = _window_dataset(fds, (lo + hi) / 2.0, hi - lo, "LINEAR_EXACT")
            out = _windowed(values, vds)
    np.clip(out, 0.0, 255.0, out=out)
    out += 0.5
    return out.astype(np.uint8)


def _padding_range(fds: Dataset) -> "tuple[float, float] | None":
    pad = fds.get("PixelPaddingValue")
    if pad is None or isinstance(pad, (bytes, list)):
        return None
    limit = fds.get("PixelPaddingRangeLimit")
    if limit is None or isinstance(limit, (bytes, list)):
        limit = pad
    return float(min(pad, limit)), float(max(pad, limit))


def _offsets(arr: np.ndarray, mn: int) -> np.ndarray:
    """`arr - mn` as a small unsigned index array, without widening 8/16-bit data."""
    if arr.dtype.itemsize in (1, 2):
        udt = np.dtype(f"u{arr.dtype.itemsize}")
        u = arr.view(udt) if arr.dtype != udt else arr
        # modular arithmetic: exact because 0 <= arr - mn < 2**bits
        return u - udt.type(mn & ((1 << (8 * arr.dtype.itemsize)) - 1))
    return (arr.astype(np.int64) - mn).astype(np.uint32)


def _render_gray(
    arr: np.ndarray, fds: Dataset, window: "tuple[float, float, str] | None", invert: bool
) -> np.ndarray:
    padding = _padding_range(fds)
    if arr.dtype.kind in "iu" and arr.size:
        mn, mx = int(arr.min()), int(arr.max())
        n = mx - mn + 1
        if n <= _MAX_LUT_ENTRIES:
            # One LUT entry per stored value present in the frame: pydicom's
            # Modality LUT and VOI functions run on <= 65536 values, then every
            # pixel is a single table lookup.
            stored = np.arange(mn, mx + 1, dtype=np.int64)
            idx = _offsets(arr, mn)
            values = np.asarray(apply_modality_lut(stored, fds))

            def auto() -> tuple[float, float]:
                counts = np.bincount(idx.ravel(), minlength=n)
                if padding is not None:
                    pad = (stored >= padding[0]) & (stored <= padding[1])
                    if counts[~pad].any():
                        counts[pad] = 0
                return _auto_window(values, counts)

            lut = _voi_to_uint8(values, fds, window, auto)
            if invert:
                np.subtract(255, lut, out=lut)
            return np.take(lut, idx)
    # Float pixel data or a very wide integer range: per-pixel evaluation.
    shape = arr.shape
    values = np.asarray(apply_modality_lut(arr, fds), dtype=np.float64).ravel()
    if not np.all(np.isfinite(values)):
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)

    def auto_px() -> tuple[float, float]:
        sel = values
        if padding is not None:
            raw = arr.ravel()
            keep = (raw < padding[0]) | (raw > padding[1])
            if keep.any():
                sel = values[keep]
        return _auto_window(sel, None)

    out = _voi_to_uint8(values, fds, window, auto_px).reshape(shape)
    if invert:
        np.subtract(255, out, out=out)
    return out


# --------------------------------------------------------------------------- #
# Colour
# --------------------------------------------------------------------------- #
def _to_uint8(arr: np.ndarray, bits: int) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind == "f":
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        return ((arr - lo) * scale + 0.5).astype(np.uint8)
    if arr.dtype.kind == "i":
        arr = np.clip(arr, 0, None)
    shift = max(0, bits - 8)
    return (arr >> shift).astype(np.uint8) if shift else np.clip(arr, 0, 255).astype(np.uint8)


def _render_palette(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    rgb = apply_color_lut(arr, ds)[..., :3]  # drop alpha if present
    if rgb.dtype == np.uint8:
        return np.ascontiguousarray(rgb)
    # 16-bit entries; a few writers put 8-bit values in 16-bit entries
    return (rgb >> 8).astype(np.uint8) if int(rgb.max()) > 255 else rgb.astype(np.uint8)


def _render_color(arr: np.ndarray, pi: str, ds: Dataset) -> np.ndarray:
    if pi in ("YBR_FULL", "YBR_FULL_422"):
        # pydicom normally converts these already; only here if it did not
        arr = convert_color_space(_to_uint8(arr, int(ds.get("BitsStored") or 8)), pi, "RGB")
    elif pi not in ("RGB", "YBR_RCT", "YBR_ICT"):
        raise PixelDataError(f"unsupported colour photometric interpretation {pi!r}")
    if arr.shape[-1] != 3:
        raise PixelDataError(f"expected 3 samples per pixel, got {arr.shape[-1]}")
    return _to_uint8(arr, int(ds.get("BitsStored") or arr.dtype.itemsize * 8))


# --------------------------------------------------------------------------- #
# Public: render a frame
# --------------------------------------------------------------------------- #
def _coerce_window(window) -> "tuple[float, float, str] | None":
    if window is None:
        return None
    if isinstance(window, str):
        return parse_window(window)
    if not isinstance(window, Sequence) or len(window) not in (2, 3):
        raise ValueError("window must be (center, width) or (center, width, function)")
    center, width = window[0], window[1]
    func = window[2] if len(window) == 3 else "LINEAR"
    return _check_window(center, width, func)


def _check_window(center, width, func) -> tuple[float, float, str]:
    try:
        c, w = float(center), float(width)
    except (TypeError, ValueError):
        raise ValueError(f"window center and width must be numbers, got {center!r}, {width!r}") from None
    if not (math.isfinite(c) and math.isfinite(w)):
        raise ValueError("window center and width must be finite numbers")
    f = _WINDOW_FUNCTIONS.get(str(func).strip().upper())
    if f is None:
        raise ValueError(
            f"unknown window function {func!r}: use linear, linear-exact or sigmoid"
        )
    if f == "LINEAR" and w < 1:
        raise ValueError(f"window width must be >= 1 for linear (got {w:g}); use linear-exact for narrower windows")
    if w <= 0:
        raise ValueError(f"window width must be > 0 (got {w:g})")
    return c, w, f


def render_frame(ds: Dataset, frame: int = 0, window: "Window | str | None" = None) -> np.ndarray:
    """Render one frame (0-based) to a display-ready uint8 array, HxW or HxWx3.

    DICOM: grayscale gets the Modality LUT, then VOI (`window` as
    ``(center, width[, function])`` or ``"c,w[,fn]"`` > header VOI LUT Sequence /
    Window Center & Width, first value > 0.5-99.5 percentile auto-window ignoring
    Pixel Padding Value), MONOCHROME1 inverted; colour comes back as RGB
    (YBR_*/PALETTE COLOR converted, >8-bit samples scaled); `window` is ignored
    for colour.  Raises PixelDataError, ValueError (bad window) or IndexError.
    """
    win = _coerce_window(window)
    arr, pi = _decode_frame(ds, frame)
    try:
        if pi in _MONO and arr.ndim == 2:
            return _render_gray(arr, _frame_dataset(ds, int(frame)), win, pi == "MONOCHROME1")
        if pi == "PALETTE COLOR" and arr.ndim == 2:
            return _render_palette(arr, ds)
        if arr.ndim == 3:
            return _render_color(arr, pi, ds)
        raise PixelDataError(
            f"unsupported photometric interpretation {pi!r} for an array of shape {arr.shape}"
        )
    except PixelDataError:
        raise
    except Exception as exc:  # bad LUTs, inconsistent headers, ...
        raise PixelDataError(f"cannot render frame {frame} ({pi}): {exc}") from exc


# --------------------------------------------------------------------------- #
# Native grayscale without pydicom: the common CT/MR/CR/DX frame
# --------------------------------------------------------------------------- #
# Parsing an object and building the per-frame datasets cost more than decoding and
# windowing a 512x512 CT slice (bench/dicomweb.py: ~0.35 ms parse, ~0.4 ms of Dataset
# handling in the windowing, against ~0.2 ms of table lookups). For uncompressed
# little-endian grayscale whose rendering needs nothing but Rescale and a window,
# `native_gray` reads what rendering needs once; `render_native_frame` then works on the
# frame's bytes, with the same arithmetic as pydicom's apply_modality_lut/apply_windowing
# (PS3.3 C.11.1, C.11.2.1.2), so the pixels are the same as render_frame's.
_NATIVE_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")  # Explicit, Implicit VR Little Endian
_NOT_NATIVE_SIMPLE = ("ModalityLUTSequence", "VOILUTSequence", "SharedFunctionalGroupsSequence",
                      "PerFrameFunctionalGroupsSequence", "FloatPixelData", "DoubleFloatPixelData")
_UNDEFINED_LENGTH = 0xFFFFFFFF


@dataclass(frozen=True)
class NativeGray:
    """What rendering a frame of native grayscale pixel data needs from its object's header.

    Read once per stored object and kept (imaging/dicomweb/render.py): an object's key
    carries its content hash, so what is read here never changes."""

    offset: int                  # of the Pixel Data value in the Part 10 object
    rows: int
    columns: int
    frames: int
    representative: int          # representative_frame(ds)
    bits_allocated: int          # 8 or 16
    bits_stored: int
    signed: bool
    invert: bool                 # MONOCHROME1
    rescale: "tuple[float, float] | None"          # (slope, intercept)
    voi: "tuple[float, float, str] | None"         # the header's first window, when usable
    padding: "tuple[float, float] | None"

    @property
    def frame_length(self) -> int:
        return self.rows * self.columns * (self.bits_allocated // 8)

    def frame_span(self, frame: int) -> tuple[int, int]:
        """(offset, length) of frame `frame` (0-based) in the object; IndexError out of range."""
        if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)):
            raise TypeError(f"frame must be an int (0-based), not {type(frame).__name__}")
        if not 0 <= frame < self.frames:
            raise IndexError(f"frame {int(frame)} is out of range: the instance has {self.frames} frame(s), "
                             "numbered from 0")
        return self.offset + int(frame) * self.frame_length, self.frame_length


def native_gray(ds: Dataset) -> "NativeGray | None":
    """The header of a freshly parsed object (Pixel Data not yet touched) when it is native
    little-endian MONOCHROME1/2 of 8 or 16 bits whose rendering needs only Rescale
    Slope/Intercept and Window Center/Width; None for everything else (render_frame)."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax not in _NATIVE_SYNTAXES or any(k in ds for k in _NOT_NATIVE_SIMPLE) or "PixelData" not in ds:
        return None
    raw = ds.get_item("PixelData")
    offset, length = getattr(raw, "value_tell", None), getattr(raw, "length", None)
    try:
        header = _native_header(ds, offset, length)
    except (TypeError, ValueError, AttributeError, IndexError, KeyError):
        return None  # odd values: render_frame decides what they mean
    if header is None or length < header.frames * header.frame_length:
        return None
    return header


def _native_header(ds: Dataset, offset, length) -> "NativeGray | None":
    if offset is None or length is None or length == _UNDEFINED_LENGTH:
        return None
    pi = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    allocated, stored = int(ds.BitsAllocated), int(ds.BitsStored)
    if pi not in _MONO or int(ds.get("SamplesPerPixel") or 1) != 1 or allocated not in (8, 16):
        return None
    if not 1 <= stored <= allocated or int(ds.get("PixelRepresentation") or 0) not in (0, 1):
        return None
    slope, intercept = ds.get("RescaleSlope", None), ds.get("RescaleIntercept", None)
    if ("RescaleSlope" in ds) != ("RescaleIntercept" in ds) or ("RescaleSlope" in ds and None in (slope, intercept)):
        return None
    rows, columns = int(ds.Rows), int(ds.Columns)
    if rows < 1 or columns < 1:
        return None
    return NativeGray(offset=int(offset), rows=rows, columns=columns, frames=number_of_frames(ds),
                      representative=representative_frame(ds), bits_allocated=allocated, bits_stored=stored,
                      signed=int(ds.get("PixelRepresentation") or 0) == 1, invert=pi == "MONOCHROME1",
                      rescale=None if slope is None else (float(slope), float(intercept)),
                      voi=_native_voi(ds), padding=_padding_range(ds))


def _first(value):
    return value[0] if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else value


def _native_voi(ds: Dataset) -> "tuple[float, float, str] | None":
    """The header window as apply_windowing would use it (first values), or None when
    there is none or pydicom would refuse it (then the automatic window applies)."""
    if ds.get("WindowCenter") is None or ds.get("WindowWidth") is None:
        return None
    center, width = float(_first(ds.WindowCenter)), float(_first(ds.WindowWidth))
    function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID") or not (math.isfinite(center) and math.isfinite(width)):
        return None
    if width < 1 if function == "LINEAR" else width <= 0:
        return None
    return center, width, function


def _native_array(frame_bytes, header: NativeGray) -> np.ndarray:
    """One frame as stored values, unused high bits cleared or sign-extended as pydicom does."""
    kind = "i" if header.signed else "u"
    arr = np.frombuffer(frame_bytes, dtype=f"<{kind}{header.bits_allocated // 8}", count=header.rows * header.columns)
    arr = arr.reshape(header.rows, header.columns)
    shift = header.bits_allocated - header.bits_stored
    if shift:
        arr = arr.copy()
        np.left_shift(arr, shift, out=arr)
        np.right_shift(arr, shift, out=arr)
    return arr


def _output_range(header: NativeGray) -> tuple[float, float]:
    """apply_windowing's output range: the stored range, through Rescale when present."""
    if header.signed:
        y_min, y_max = -(2 ** (header.bits_stored - 1)), 2 ** (header.bits_stored - 1) - 1
    else:
        y_min, y_max = 0, 2 ** header.bits_stored - 1
    if header.rescale is not None:
        slope, intercept = header.rescale
        y_min, y_max = y_min * slope + intercept, y_max * slope + intercept
    return y_min, y_max


def _window_values(values: np.ndarray, center: float, width: float, function: str,
                   y_range: tuple[float, float]) -> np.ndarray:
    """`_windowed` without a Dataset: apply_windowing's arithmetic on `values` and on
    -inf/+inf (which give the output range), then scaled to 0..255 as _windowed does."""
    y_min, y_max = y_range
    arr = np.empty(values.size + 2, dtype=np.float64)
    arr[:-2] = values.ravel()
    arr[-2:] = (-np.inf, np.inf)
    span = y_max - y_min
    if function == "SIGMOID":
        with np.errstate(over="ignore"):  # exp(+large) is inf, and the value 0 as it should be
            arr = span / (1 + np.exp(-4 * (arr - center) / width)) + y_min
    else:
        if function == "LINEAR":
            center, width = center - 0.5, width - 1
        below = arr <= (center - width / 2)
        above = arr > (center + width / 2)
        between = np.logical_and(~below, ~above)
        arr[below] = y_min
        arr[above] = y_max
        if between.any():
            arr[between] = ((arr[between] - center) / width + 0.5) * span + y_min
    y0, y1 = arr[-2], arr[-1]
    out = arr[:-2]
    return _to_grey_range(out, y0, y1, values.size)


def render_native_frame(frame_bytes, header: NativeGray, window: "Window | str | None" = None) -> np.ndarray:
    """render_frame for one frame of an object `native_gray` accepted, from its stored
    bytes: Rescale, then `window` > the header's window > the automatic window (Pixel
    Padding excluded), MONOCHROME1 inverted; uint8 HxW."""
    win = _coerce_window(window)
    arr = _native_array(frame_bytes, header)
    mn, mx = int(arr.min()), int(arr.max())
    stored = np.arange(mn, mx + 1, dtype=np.int64)
    idx = _offsets(arr, mn)
    values = stored
    if header.rescale is not None:
        values = stored.astype(np.float64) * header.rescale[0]
        values += header.rescale[1]
    center, width, function = win or header.voi or _native_auto(values, idx, stored, header)
    lut = _window_values(values, center, width, function, _output_range(header))
    np.clip(lut, 0.0, 255.0, out=lut)
    lut += 0.5
    lut = lut.astype(np.uint8)
    if header.invert:
        np.subtract(255, lut, out=lut)
    return np.take(lut, idx)


def _native_auto(values: np.ndarray, idx: np.ndarray, stored: np.ndarray,
                 header: NativeGray) -> tuple[float, float, str]:
    """The automatic window of _render_gray: percentiles of the frame's histogram."""
    counts = np.bincount(idx.ravel(), minlength=stored.size)
    if header.padding is not None:
        pad = (stored >= header.padding[0]) & (stored <= header.padding[1])
        if counts[~pad].any():
            counts[pad] = 0
    lo, hi = _auto_window(values, counts)
    if hi <= lo:
        hi = lo + 1.0
    return (lo + hi) / 2.0, hi - lo, "LINEAR_EXACT"


# --------------------------------------------------------------------------- #
# Resizing
# --------------------------------------------------------------------------- #
def _resize_plane(plane: np.ndarray, width: int, height: int) -> np.ndarray:
    h, w = plane.shape
    img = sitk.GetImageFromArray(np.ascontiguousarray(plane, dtype=np.float32))
    sx, sy = w / width, h / height  # output pixel size, in input pixels
    # Down-sampling: average whole blocks first (BinShrink keeps physical space),
    # then Gaussian for what is left of the factor (sigma = (r - 1) / 2).
    kx, ky = max(1, int(sx + 1e-9)), max(1, int(sy + 1e-9))
    if kx > 1 or ky > 1:
        img = sitk.BinShrink(img, [kx, ky])
    sigma = [max(0.0, (sx / kx - 1.0) / 2.0), max(0.0, (sy / ky - 1.0) / 2.0)]
    if max(sigma) > 0.15:
        img = sitk.DiscreteGaussian(img, [s_ * s_ for s_ in sigma], 32, 0.01, False)
    f = sitk.ResampleImageFilter()
    f.SetSize([int(width), int(height)])
    f.SetOutputSpacing((sx, sy))
    # input pixel i is centred at i; output pixel j covers input [j*sx, (j+1)*sx)
    f.SetOutputOrigin(((sx - 1.0) / 2.0, (sy - 1.0) / 2.0))
    f.SetInterpolator(sitk.sitkLinear)
    f.SetUseNearestNeighborExtrapolator(True)  # image edges when up-sampling
    resampled = f.Execute(img)
    # the view borrows `resampled`'s buffer: keep the image alive while reading it
    out = sitk.GetArrayViewFromImage(resampled)
    result = (np.clip(out, 0.0, 255.0) + 0.5).astype(np.uint8)
    del out, resampled
    return result


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    if image.ndim == 2:
        return _resize_plane(image, width, height)
    # SimpleITK's Gaussian filters take scalar images only: one plane per channel
    return np.stack(
        [_resize_plane(image[..., c], width, height) for c in range(image.shape[2])],
        axis=-1,
    )


def _check_size(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def fit(image: np.ndarray, max_width: int, max_height: int, *, upscale: bool = False) -> np.ndarray:
    """Resize `image` to fit max_width x max_height, keeping its aspect ratio.

    Smooth (SimpleITK: BinShrink block averaging for whole factors, Gaussian for
    the rest, then linear interpolation); never
    enlarges unless ``upscale=True``; returns `image` itself when no resize is
    needed.  DICOM: assumes square pixels (Pixel Spacing/Aspect Ratio ignored).
    """
    max_width = _check_size("max_width", max_width)
    max_height = _check_size("max_height", max_height)
    if image.ndim not in (2, 3) or image.size == 0:
        raise ValueError(f"expected a non-empty HxW or HxWxC image, got shape {image.shape}")
    h, w = image.shape[:2]
    scale = min(max_width / w, max_height / h)
    if not upscale:
        scale = min(scale, 1.0)
    nw = min(max_width, max(1, round(w * scale)))
    nh = min(max_height, max(1, round(h * scale)))
    return _resize(image, nw, nh)


# --------------------------------------------------------------------------- #
# Encoding
# --------------------------------------------------------------------------- #
def _check_media_type(media_type: str) -> str:
    mt = str(media_type).split(";", 1)[0].strip().lower()
    if mt == "image/jpg":
        mt = "image/jpeg"
    if mt not in MEDIA_TYPES:
        raise ValueError(
            f"unsupported media type {media_type!r}: use one of {', '.join(MEDIA_TYPES)}"
        )
    return mt


def _check_quality(quality) -> int:
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= quality <= 100:
        raise ValueError(f"quality must be an integer from 1 to 100, got {quality!r}")
    return int(quality)


def encode(image: np.ndarray, media_type: str = "image/png", quality: int = 90) -> bytes:
    """Encode a uint8 HxW or HxWx3 image as PNG or JPEG bytes (Pillow).

    `quality` (1..100) applies to JPEG only; at >= 90 chroma is not subsampled
    (4:4:4) so burned-in text in colour images stays legible.
    """
    mt = _check_media_type(media_type)
    quality = _check_quality(quality)
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)) or image.size == 0:
        raise ValueError(f"image must be HxW or HxWx3, got shape {image.shape}")
    pil = Image.fromarray(np.ascontiguousarray(image))
    buf = io.BytesIO()
    if mt == "image/png":
        pil.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        pil.save(buf, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
    return buf.getvalue()


# --------------------------------------------------------------------------- #
# Rendered resources
# --------------------------------------------------------------------------- #
def parse_window(text: str) -> tuple[float, float, str]:
    """Parse a PS3.18 ``window=center,width[,function]`` value.

    Returns ``(center, width, function)`` with function one of LINEAR (default),
    LINEAR_EXACT, SIGMOID (query values: linear, linear-exact, sigmoid); raises
    ValueError with a message fit for a 400 response.
    """
    if not isinstance(text, str):
        raise ValueError("window must be a string 'center,width[,function]'")
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(
            f"invalid window {text!r}: expected 'center,width[,function]', e.g. '40,400,linear'"
        )
    try:
        c, w = float(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError(f"invalid window {text!r}: center and width must be numbers") from None
    return _check_window(c, w, parts[2] if len(parts) == 3 else "LINEAR")


def parse_viewport(text: str) -> Viewport:
    """Parse a PS3.18 ``viewport=vw,vh[,sx,sy,sw,sh]`` value (8.3.5.1.3).

    Returns ``(vw, vh)`` or ``(vw, vh, sx, sy, sw, sh)`` where empty optional
    fields are None; negative sw/sh mean a flipped source region.  Raises
    ValueError with a message fit for a 400 response.
    """
    if not isinstance(text, str):
        raise ValueError("viewport must be a string 'vw,vh[,sx,sy,sw,sh]'")
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 6):
        raise ValueError(
            f"invalid viewport {text!r}: expected 'vw,vh' or 'vw,vh,sx,sy,sw,sh'"
        )
    values: list = []
    for i, p in enumerate(parts):
        if p == "" and i >= 2:
            values.append(None)
            continue
        try:
            values.append(int(p))
        except ValueError:
            raise ValueError(f"invalid viewport {text!r}: {p!r} is not an integer") from None
    return _check_viewport(tuple(values))


def _check_viewport(viewport) -> Viewport:
    if isinstance(viewport, str):
        return parse_viewport(viewport)
    if not isinstance(viewport, Sequence) or len(viewport) not in (2, 6):
        raise ValueError("viewport must be (vw, vh) or (vw, vh, sx, sy, sw, sh)")
    vw, vh = viewport[0], viewport[1]
    for name, v in (("vw", vw), ("vh", vh)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v <= MAX_VIEWPORT:
            raise ValueError(f"viewport {name} must be an integer from 1 to {MAX_VIEWPORT}, got {v!r}")
    if len(viewport) == 2:
        return int(vw), int(vh)
    rest = []
    for name, v in zip(("sx", "sy", "sw", "sh"), viewport[2:], strict=True):
        if v is None:
            rest.append(None)
            continue
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"viewport {name} must be an integer, got {v!r}")
        if name in ("sx", "sy") and v < 0:
            raise ValueError(f"viewport {name} must be >= 0, got {v}")
        if name in ("sw", "sh") and v == 0:
            raise ValueError(f"viewport {name} must not be 0")
        rest.append(int(v))
    return (int(vw), int(vh), *rest)


def _apply_viewport(image: np.ndarray, viewport: Viewport) -> np.ndarray:
    vw, vh = viewport[0], viewport[1]
    if len(viewport) == 6:
        h, w = image.shape[:2]
        sx, sy, sw, sh = (viewport[2] or 0), (viewport[3] or 0), viewport[4], viewport[5]
        region = []
        for start, size, extent, axis in ((sx, sw, w, "x"), (sy, sh, h, "y")):
            if size is None:
                size = extent - start
            lo, hi = (start + size, start) if size < 0 else (start, start + size)
            lo, hi = max(0, lo), min(extent, hi)
            if hi <= lo:
                raise ValueError(
                    f"viewport source region is outside the {w}x{h} image along {axis}"
                )
            region.append((lo, hi, size < 0))
        (x0, x1, fx), (y0, y1, fy) = region
        image = image[y0:y1, x0:x1]
        if fx:
            image = image[:, ::-1]
        if fy:
            image = image[::-1]
    return fit(image, vw, vh, upscale=True)


def _render_args(media_type, quality=90, window=None, viewport=None):
    """Validate rendering arguments before any pixel is decoded (ValueError)."""
    return (_check_media_type(media_type), _check_quality(quality), _coerce_window(window),
            _check_viewport(viewport) if viewport is not None else None)


def _finish(image: np.ndarray, frame: int, media_type: str, viewport, quality: int) -> bytes:
    try:
        if viewport is not None:
            image = _apply_viewport(image, viewport)
        return encode(image, media_type, quality)
    except ValueError:
        raise
    except Exception as exc:
        raise PixelDataError(f"cannot render frame {frame}: {exc}") from exc


def render(
    ds: Dataset,
    frame: int = 0,
    *,
    media_type: str,
    window: "Window | str | None" = None,
    viewport: "Viewport | str | None" = None,
    quality: int = 90,
) -> bytes:
    """Render one frame (0-based) as PNG/JPEG bytes for a PS3.18 rendered resource.

    DICOM: `window` as in render_frame (string form from the query is accepted);
    `viewport` ``(vw, vh)`` or ``(vw, vh, sx, sy, sw, sh)`` or its query string:
    the source region (negative sw/sh flip) is cut out, then scaled to fit the
    vw x vh viewport keeping the aspect ratio (may enlarge); `quality` 1..100
    for JPEG.  Arguments are validated before decoding (ValueError).
    """
    mt, quality, win, vp = _render_args(media_type, quality, window, viewport)
    return _finish(render_frame(ds, frame, win), frame, mt, vp, quality)


def render_native(frame_bytes, header: "NativeGray", frame: int = 0, **options) -> bytes:
    """`render` of frame `frame` of an object whose header `native_gray` accepted, from that
    frame's stored bytes alone (`header.frame_span(frame)` says where they are): no pydicom
    at all. `options` are render's keywords (media_type, window, viewport, quality). The same
    bytes as `render` of the parsed object (tests/imaging/test_pixels_native.py)."""
    mt, quality, win, vp = _render_args(**options)
    return _finish(render_native_frame(frame_bytes, header, win), frame, mt, vp, quality)


def thumbnail(ds: Dataset, size: int = 128, frame: "int | None" = None) -> bytes:
    """JPEG thumbnail fitting size x size (never enlarged), for workers and lists.

    DICOM: `frame` None means representative_frame(ds) (Representative Frame
    Number or the middle frame); header/automatic window as in render_frame.
    """
    size = _check_size("size", size)
    if frame is None:
        frame = representative_frame(ds)
    image = render_frame(ds, frame)
    try:
        return encode(fit(image, size, size), "image/jpeg", THUMBNAIL_QUALITY)
    except Exception as exc:
        raise PixelDataError(f"cannot make thumbnail: {exc}") from exc
