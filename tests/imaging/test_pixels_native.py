"""imaging.pixels' native grayscale path (native_gray, render_native_frame, render_native)
gives exactly what the pydicom path (render_frame, render) gives, for every header it
accepts, and declines every header it does not handle."""

from __future__ import annotations

import io
import itertools
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from imaging import pixels as P

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")]  # pydicom's SIGMOID


def part10(ds: Dataset, syntax=ExplicitVRLittleEndian) -> bytes:
    """`ds` written as a Part 10 object, as the store holds it."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=True)
    return out.getvalue()


def image(frames=1, bits=16, stored=None, signed=True, rows=24, cols=20, seed=0, **attributes) -> Dataset:
    rng = np.random.default_rng(seed)
    stored = stored or bits
    low, high = (-(2 ** (stored - 1)), 2 ** (stored - 1)) if signed else (0, 2 ** stored)
    arr = rng.integers(low, high, size=(frames, rows, cols)).astype(f"{'i' if signed else 'u'}{bits // 8}")
    if stored < bits:  # garbage in the unused high bits, which decoding must clear or sign-extend
        arr = arr.view(f"u{bits // 8}") | np.array(0xA000 if bits == 16 else 0x80, dtype=f"u{bits // 8}")
        arr = arr.view(f"{'i' if signed else 'u'}{bits // 8}")
    ds = Dataset()
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, 1
    ds.PhotometricInterpretation = attributes.pop("PhotometricInterpretation", "MONOCHROME2")
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, stored, stored - 1, int(signed)
    if frames > 1:
        ds.NumberOfFrames = frames
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = arr.tobytes()
    return ds


def both(data: bytes, frame: int, window=None):
    """(pydicom path, native path) images of one frame of a stored object."""
    ds = pydicom.dcmread(io.BytesIO(data))
    header = P.native_gray(pydicom.dcmread(io.BytesIO(data)))
    assert header is not None, "the native path declined a header it should take"
    offset, length = header.frame_span(frame)
    return P.render_frame(ds, frame, window), P.render_native_frame(data[offset:offset + length], header, window)


HEADERS = [
    {},
    {"RescaleSlope": 1, "RescaleIntercept": -1024},
    {"RescaleSlope": 0.5, "RescaleIntercept": 3.25, "WindowCenter": 40, "WindowWidth": 400},
    {"RescaleSlope": 1, "RescaleIntercept": -1024, "WindowCenter": [40, -600], "WindowWidth": [400, 1500]},
    {"WindowCenter": 100, "WindowWidth": 50, "VOILUTFunction": "LINEAR_EXACT"},
    {"WindowCenter": 100, "WindowWidth": 0.5, "VOILUTFunction": "LINEAR_EXACT"},
    {"WindowCenter": -50, "WindowWidth": 300, "VOILUTFunction": "SIGMOID"},
    {"WindowCenter": 10, "WindowWidth": 0.5},                                   # LINEAR width < 1: automatic
    {"WindowCenter": 10, "WindowWidth": 100, "VOILUTFunction": "BANANA"},       # unknown: automatic
    {"PixelPaddingValue": 3, "RescaleSlope": 1, "RescaleIntercept": -1024},
    {"PhotometricInterpretation": "MONOCHROME1", "WindowCenter": 0, "WindowWidth": 1000},
    {"PhotometricInterpretation": "MONOCHROME1"},
]


@pytest.mark.parametrize("attributes", HEADERS)
@pytest.mark.parametrize("bits,stored,signed", [(16, 16, True), (16, 12, True), (16, 12, False),
                                                (16, 16, False), (8, 8, False), (8, 6, True)])
def test_native_frame_equals_render_frame(attributes, bits, stored, signed):
    ds = image(bits=bits, stored=stored, signed=signed, **dict(attributes))
    if "PixelPaddingValue" in ds:  # a third of the frame is padding
        arr = np.frombuffer(ds.PixelData, dtype=f"u{bits // 8}").copy()
        arr[:arr.size // 3] = 3
        ds.PixelData = arr.tobytes()
    data = part10(ds)
    for window in (None, (30, 250), (30, 250, "LINEAR_EXACT"), (-10, 80, "SIGMOID"), "5,1,linear"):
        slow, fast = both(data, 0, window)
        assert np.array_equal(slow, fast), (attributes, window)


def test_every_frame_of_a_multiframe_object_and_implicit_vr():
    ds = image(frames=5, RescaleSlope=2, RescaleIntercept=-7, WindowCenter=0, WindowWidth=600,
               RepresentativeFrameNumber=4)
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        data = part10(ds, syntax)
        header = P.native_gray(pydicom.dcmread(io.BytesIO(data)))
        assert header.frames == 5 and header.representative == 3
        for frame in range(5):
            slow, fast = both(data, frame)
            assert np.array_equal(slow, fast)
        with pytest.raises(IndexError):
            header.frame_span(5)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "rtdose.dcm",
                                  "emri_small.dcm", "OBXXXX1A.dcm"])
def test_pydicom_samples(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = get_testdata_file(name, download=False)
    data = open(path, "rb").read()
    ds = pydicom.dcmread(io.BytesIO(data))
    header = P.native_gray(pydicom.dcmread(io.BytesIO(data)))
    if header is None:  # palette, RGB or 32-bit: the pydicom path renders those
        assert ds.file_meta.TransferSyntaxUID not in P._NATIVE_SYNTAXES or ds.get("SamplesPerPixel", 1) != 1 \
            or ds.BitsAllocated not in (8, 16) or ds.PhotometricInterpretation not in ("MONOCHROME1", "MONOCHROME2")
        return
    for frame in range(header.frames):
        slow, fast = both(data, frame)
        assert np.array_equal(slow, fast)


@pytest.mark.parametrize("media_type,viewport,quality", list(itertools.product(
    ("image/jpeg", "image/png"), (None, (10, 10), (40, 30, 2, 3, -8, 10)), (90, 40))))
def test_render_native_bytes_equal_render(media_type, viewport, quality):
    data = part10(image(RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400))
    header = P.native_gray(pydicom.dcmread(io.BytesIO(data)))
    offset, length = header.frame_span(0)
    expected = P.render(pydicom.dcmread(io.BytesIO(data)), 0, media_type=media_type, viewport=viewport,
                        quality=quality)
    assert P.render_native(data[offset:offset + length], header, 0, media_type=media_type, viewport=viewport,
                           quality=quality) == expected


def _declined(ds: Dataset, syntax=ExplicitVRLittleEndian) -> bool:
    return P.native_gray(pydicom.dcmread(io.BytesIO(part10(ds, syntax)))) is None


def test_headers_the_native_path_leaves_to_pydicom():
    lut = Dataset()
    lut.LUTDescriptor = [4, 0, 8]
    lut.add_new(0x00283006, "US", [0, 10, 20, 30])  # LUT Data
    assert _declined(image(ModalityLUTSequence=Sequence([lut])))
    assert _declined(image(VOILUTSequence=Sequence([lut])))
    assert _declined(image(SharedFunctionalGroupsSequence=Sequence([Dataset()])))
    assert _declined(image(RescaleSlope=2))                     # an intercept missing: pydicom refuses it
    assert _declined(image(PhotometricInterpretation="RGB"))
    colour = image(bits=8, signed=False)
    colour.SamplesPerPixel, colour.PhotometricInterpretation, colour.PlanarConfiguration = 3, "RGB", 0
    colour.PixelData = colour.PixelData * 3
    assert _declined(colour)
    short = image()
    short.PixelData = short.PixelData[:-40]
    assert _declined(short)
    assert not _declined(image())
