"""Tests for imaging.pixels: DICOM pixel data -> display images.

Samples come from pydicom's own test files (in the pydicom wheel) and, where
marked, from the optional ``pydicom-data`` package (skipped when absent; never
downloaded).  Correctness is checked with pixel statistics and with
independently computed expectations, not just "something came out".
"""

from __future__ import annotations

import copy
import io
import shutil
import subprocess
import warnings

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEGExtended12Bit, MPEG2MPML

from imaging import pixels as P
from imaging.pixels import PixelDataError
from tests.dicomdata import undecodable_jpeg

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def sample(name: str) -> Dataset:
    """Read a pydicom test file; skip if it is only in (absent) pydicom-data."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} needs the pydicom-data package")
    return pydicom.dcmread(path)


def synthetic(arr: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None) -> Dataset:
    """A minimal dataset holding `arr` (8/16-bit) as native pixel data."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.set_pixel_data(arr, photometric, bits_stored or arr.dtype.itemsize * 8)
    return ds


def hu(ds: Dataset, frame: int | None = None) -> np.ndarray:
    """Modality values computed by hand (slope/intercept) for comparisons."""
    a = ds.pixel_array if frame is None else ds.pixel_array[frame]
    return a.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))


def decode_image(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def mad(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# --------------------------------------------------------------------------- #
# frames
# --------------------------------------------------------------------------- #
def test_number_of_frames():
    assert P.number_of_frames(sample("CT_small.dcm")) == 1
    assert P.number_of_frames(sample("SC_rgb_rle_2frame.dcm")) == 2
    assert P.number_of_frames(sample("rtdose.dcm")) == 15
    assert P.number_of_frames(Dataset()) == 0


def test_representative_frame():
    ds = sample("rtdose.dcm")  # 15 frames
    assert P.representative_frame(ds) == 7
    ds.RepresentativeFrameNumber = 3  # 1-based in DICOM
    assert P.representative_frame(ds) == 2
    ds.RepresentativeFrameNumber = 99  # invalid: falls back to the middle
    assert P.representative_frame(ds) == 7
    assert P.representative_frame(sample("CT_small.dcm")) == 0


def test_frame_selection_matches_pydicom_frames():
    ds = sample("rtdose.dcm")
    full = ds.pixel_array
    for k in (0, 6, 14):
        out = P.render_frame(ds, k, window=(float(full.mean()), float(np.ptp(full)) + 1))
        # same ordering of pixels as the stored frame k, and frames differ
        order = np.argsort(full[k].ravel(), kind="stable")
        assert np.all(np.diff(out.ravel()[order].astype(int)) >= 0)
    assert not np.array_equal(P.render_frame(ds, 0), P.render_frame(ds, 14))


def test_multiframe_colour_second_frame():
    ds = sample("SC_rgb_rle_2frame.dcm")
    frames = ds.pixel_array
    assert np.array_equal(P.render_frame(ds, 1), frames[1])
    assert np.array_equal(P.render_frame(ds, 0), frames[0])
    assert not np.array_equal(frames[0], frames[1])


@pytest.mark.parametrize("frame", [-1, 2, 100])
def test_frame_out_of_range(frame):
    with pytest.raises(IndexError, match="out of range"):
        P.render_frame(sample("SC_rgb_rle_2frame.dcm"), frame)


# --------------------------------------------------------------------------- #
# grayscale: modality LUT, VOI, MONOCHROME1
# --------------------------------------------------------------------------- #
def test_ct_small_basic_render():
    out = P.render_frame(sample("CT_small.dcm"))
    assert out.dtype == np.uint8 and out.shape == (128, 128)
    assert out.std() > 30


def test_explicit_window_applies_modality_lut():
    ds = sample("CT_small.dcm")
    assert float(ds.RescaleIntercept) == -1024
    values = hu(ds)
    c, w = 40.0, 400.0
    out = P.render_frame(ds, window=(c, w))
    # PS3.3 C.11.2.1.2 LINEAR: <= c-0.5-(w-1)/2 -> min, > c-0.5+(w-1)/2 -> max
    assert np.all(out[values <= c - 0.5 - (w - 1) / 2] == 0)
    assert np.all(out[values > c - 0.5 + (w - 1) / 2] == 255)
    inside = (values > c - 0.5 - (w - 1) / 2) & (values <= c - 0.5 + (w - 1) / 2)
    expected = ((values[inside] - (c - 0.5)) / (w - 1) + 0.5) * 255
    assert np.abs(out[inside] - expected).max() <= 1.0
    # monotonic in HU over the whole image
    order = np.argsort(values.ravel(), kind="stable")
    assert np.all(np.diff(out.ravel()[order].astype(int)) >= 0)


def test_window_string_and_functions():
    ds = sample("CT_small.dcm")
    assert np.array_equal(P.render_frame(ds, window="40,400,linear"), P.render_frame(ds, window=(40, 400)))
    sig = P.render_frame(ds, window="40,400,sigmoid")
    exact = P.render_frame(ds, window=(40, 400, "LINEAR_EXACT"))
    assert not np.array_equal(sig, exact)
    # sigmoid never fully saturates inside a wide range; both are monotonic in HU
    order = np.argsort(hu(ds).ravel(), kind="stable")
    for img in (sig, exact):
        assert np.all(np.diff(img.ravel()[order].astype(int)) >= 0)


def test_narrower_window_saturates_more():
    ds = sample("CT_small.dcm")
    wide = P.render_frame(ds, window=(40, 2000))
    narrow = P.render_frame(ds, window=(40, 80))
    sat = lambda a: int(np.count_nonzero((a == 0) | (a == 255)))  # noqa: E731
    assert sat(narrow) > sat(wide) + 1000
    assert narrow.std() > wide.std()


def test_header_window_used_and_overridden():
    ds = sample("CT_small.dcm")
    assert "WindowCenter" not in ds
    auto = P.render_frame(ds)
    ds.WindowCenter = 40
    ds.WindowWidth = 80
    header = P.render_frame(ds)
    assert np.array_equal(header, P.render_frame(ds, window=(40, 80)))
    assert not np.array_equal(header, auto)
    # explicit argument beats the header
    assert np.array_equal(P.render_frame(ds, window=(1000, 3000)), P.render_frame(sample("CT_small.dcm"), window=(1000, 3000)))
    # first of several header values
    ds.WindowCenter = [40, 300]
    ds.WindowWidth = [80, 1500]
    assert np.array_equal(P.render_frame(ds), header)


def test_invalid_header_window_falls_back_to_auto():
    ds = sample("CT_small.dcm")
    auto = P.render_frame(ds)
    ds.WindowCenter = 40
    ds.WindowWidth = 0  # invalid for LINEAR
    assert np.array_equal(P.render_frame(ds), auto)


def test_auto_window_is_robust_percentile():
    out = P.render_frame(sample("CT_small.dcm"))
    low, high = np.mean(out == 0), np.mean(out == 255)
    # 0.5th / 99.5th percentile clipping: a small but non-zero tail at each end
    assert 0.001 <= low <= 0.03
    assert 0.001 <= high <= 0.03


def test_auto_window_ignores_padding_value():
    ds = sample("CT_small.dcm")
    arr = ds.pixel_array.copy()
    arr[:, :16] = -2000  # padding band on the left
    padded = synthetic(arr)
    padded.RescaleSlope, padded.RescaleIntercept = 1, -1024
    without_tag = P.render_frame(padded)
    padded.PixelPaddingValue = -2000
    with_tag = P.render_frame(padded)
    # ignoring padding keeps the interior contrast of the unpadded image
    reference = P.render_frame(sample("CT_small.dcm"))
    assert mad(with_tag[:, 16:], reference[:, 16:]) < 3
    assert with_tag[:, 16:].std() > without_tag[:, 16:].std() + 10
    assert np.all(with_tag[:, :16] == 0)


def test_monochrome1_is_inverted():
    ds = sample("CT_small.dcm")
    m2 = P.render_frame(ds, window=(40, 400))
    m2_auto = P.render_frame(ds)
    ds.PhotometricInterpretation = "MONOCHROME1"
    m1 = P.render_frame(ds, window=(40, 400))
    assert np.array_equal(m1, 255 - m2)
    assert np.array_equal(P.render_frame(ds), 255 - m2_auto)
    assert abs(m1.mean() - (255 - m2.mean())) < 0.5


def test_real_monochrome1_cr():
    # dicomdirtests/77654033/CR1/6154: a 16x16 CR, MONOCHROME1, 12 of 16 bits
    ds = sample("6154")
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    m1 = P.render_frame(ds)
    ds2 = copy.deepcopy(ds)
    ds2.PhotometricInterpretation = "MONOCHROME2"
    assert np.array_equal(m1, 255 - P.render_frame(ds2))
    # MONOCHROME1: the lowest stored values display white
    raw = ds.pixel_array
    assert m1[raw == raw.min()].min() >= m1[raw == raw.max()].max()


def test_large_monochrome1_cr_from_pydicom_data():
    ds = sample("RG3_UNCR.dcm")  # 1760x1760 MONOCHROME1 with header window
    out = P.render_frame(ds)
    raw = ds.pixel_array
    hi_mask, lo_mask = raw >= np.percentile(raw, 90), raw <= np.percentile(raw, 10)
    assert out[lo_mask].mean() > out[hi_mask].mean() + 100  # low values bright


def test_signed_and_unsigned_storage_render_identically():
    base = sample("CT_small.dcm")
    signed = base.pixel_array.astype(np.int16)
    s = synthetic(signed)
    s.RescaleSlope, s.RescaleIntercept = 1, -1024
    offset = int(-signed.min())
    u = synthetic((signed.astype(np.int32) + offset).astype(np.uint16))
    u.RescaleSlope, u.RescaleIntercept = 1, -1024 - offset
    assert s.PixelRepresentation == 1 and u.PixelRepresentation == 0
    for window in (None, (40, 400), (300, 1500, "linear-exact")):
        assert np.array_equal(P.render_frame(s, window=window), P.render_frame(u, window=window))


def test_bits_stored_below_bits_allocated_masks_unused_bits():
    rng = np.random.default_rng(1)
    values = rng.integers(0, 4096, (64, 64), dtype=np.uint16)
    clean = synthetic(values, bits_stored=12)
    dirty = synthetic(values, bits_stored=12)
    dirty.PixelData = (values | np.uint16(0xF000)).tobytes()  # garbage above bit 11
    assert np.array_equal(P.render_frame(clean), P.render_frame(dirty))
    assert np.array_equal(P.render_frame(clean, window=(2048, 4096)), P.render_frame(dirty, window=(2048, 4096)))


def test_signed_12_bit_in_16():
    rng = np.random.default_rng(2)
    values = rng.integers(-2048, 2048, (32, 32), dtype=np.int16)
    ds = synthetic(values, bits_stored=12)
    out = P.render_frame(ds, window=(0, 4096, "linear-exact"))
    expected = np.clip((values.astype(float) + 2048) / 4096 * 255, 0, 255)
    assert np.abs(out - expected).max() <= 1.0


def test_8_bit_grayscale():
    ramp = np.tile(np.arange(256, dtype=np.uint8), (8, 1))
    out = P.render_frame(synthetic(ramp), window=(128, 256, "linear-exact"))
    assert np.abs(out.astype(int) - ramp[None].astype(int)).max() <= 1
    assert P.render_frame(sample("JPEGLSNearLossless_08.dcm")).std() > 10


def test_one_bit_image():
    ds = sample("liver_1frame.dcm")  # Bits Allocated 1
    out = P.render_frame(ds)
    assert set(np.unique(out)) == {0, 255}
    assert np.array_equal(out == 255, ds.pixel_array == 1)


def test_enhanced_functional_groups_rescale_and_window():
    base = sample("CT_small.dcm")
    ds = synthetic(base.pixel_array.astype(np.int16))
    shared = Dataset()
    pvt = Dataset()
    pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = 1, -1024, "HU"
    shared.PixelValueTransformationSequence = [pvt]
    ds.SharedFunctionalGroupsSequence = [shared]
    frame = Dataset()
    voi = Dataset()
    voi.WindowCenter, voi.WindowWidth = 40, 400
    frame.FrameVOILUTSequence = [voi]
    ds.PerFrameFunctionalGroupsSequence = [frame]
    assert np.array_equal(P.render_frame(ds), P.render_frame(base, window=(40, 400)))


def test_enhanced_ct_from_pydicom_data():
    ds = sample("eCT_Supplemental.dcm")
    out = P.render_frame(ds, 1)
    assert out.shape == (512, 512) and out.std() > 20


def test_voi_lut_sequence():
    ramp = np.tile(np.arange(256, dtype=np.uint8), (4, 1))
    ds = synthetic(ramp)
    item = Dataset()
    item.add_new(0x00283002, "US", [256, 0, 8])  # LUT Descriptor
    item.add_new(0x00283006, "US", list(range(255, -1, -1)))  # inverting LUT Data
    ds.VOILUTSequence = [item]
    ds.WindowCenter, ds.WindowWidth = 10, 20  # LUT sequence is preferred
    out = P.render_frame(ds)
    assert np.array_equal(out, 255 - ramp)


def test_voi_lut_from_pydicom_data():
    ds = sample("vlut_04.dcm")
    out = P.render_frame(ds)
    raw = ds.pixel_array
    lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=float)
    expected = lut[np.clip(raw.astype(int) - ds.VOILUTSequence[0].LUTDescriptor[1], 0, len(lut) - 1)] * 255 / 65535
    assert np.abs(out - expected).max() <= 1.0


def test_modality_lut_sequence_from_pydicom_data():
    ds = sample("mlut_18.dcm")
    out = P.render_frame(ds)
    assert out.std() > 30


def test_wide_range_32_bit_and_float_pixel_data():
    # 32-bit integers spanning more than a 16-bit LUT: per-pixel path
    values = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 300)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 64, 64, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 32
    ds.HighBit, ds.PixelRepresentation = 31, 0
    ds.PixelData = values.tobytes()
    out = P.render_frame(ds)
    assert np.all(np.diff(out.ravel().astype(int)) >= 0) and out.min() == 0 and out.max() == 255

    f = Dataset()
    f.file_meta = ds.file_meta
    f.Rows, f.Columns, f.SamplesPerPixel = 16, 32, 1
    f.PhotometricInterpretation = "MONOCHROME2"
    f.BitsAllocated = 32
    f.FloatPixelData = np.linspace(-3.5, 7.25, 16 * 32, dtype=np.float32).tobytes()
    out = P.render_frame(f)
    assert out.shape == (16, 32) and np.all(np.diff(out.ravel().astype(int)) >= 0)
    out = P.render_frame(f, window=(0, 2, "linear-exact"))
    assert out[0, 0] == 0 and out[-1, -1] == 255


# --------------------------------------------------------------------------- #
# compressed vs uncompressed (grayscale)
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_expb.dcm",
        "MR_small_implicit.dcm",
    ],
)
def test_lossless_mr_variants_identical(name):
    ref = P.render_frame(sample("MR_small.dcm"))
    assert np.array_equal(P.render_frame(sample(name)), ref)


@pytest.mark.parametrize("name", ["emri_small_RLE.dcm", "emri_small_jpeg_2k_lossless.dcm", "emri_small_jpeg_ls_lossless.dcm", "emri_small_big_endian.dcm"])
def test_lossless_multiframe_variants_identical(name):
    ref = sample("emri_small.dcm")
    other = sample(name)
    for k in (0, 5, 9):
        assert np.array_equal(P.render_frame(other, k), P.render_frame(ref, k))


def test_jpeg2000_lossy_close_to_original():
    ref = P.render_frame(sample("693_UNCI.dcm"), window=(40, 400))
    assert mad(P.render_frame(sample("693_J2KI.dcm"), window=(40, 400)), ref) < 2


def test_jpeg_extended_12_bit_and_jpeg_ls_16_bit():
    out = P.render_frame(sample("JPGExtended.dcm"))
    assert out.shape == (1024, 256) and out.std() > 20
    assert P.render_frame(sample("JPEGLSNearLossless_16.dcm")).std() > 10


def _dcmdjpeg(ds: Dataset, tmp_path) -> np.ndarray:
    """The pixels as dcmtk decodes them (IJG libjpeg, independent of pydicom's plugins)."""
    if not shutil.which("dcmdjpeg"):
        pytest.skip("dcmtk's dcmdjpeg is not installed")
    source, target = tmp_path / "in.dcm", tmp_path / "out.dcm"
    ds.save_as(source)
    subprocess.run(["dcmdjpeg", str(source), str(target)], check=True, capture_output=True)
    return pydicom.dcmread(target).pixel_array


def test_jpeg_extended_12_bit_with_a_non_sequential_scan_header(tmp_path):
    """14.9: JPEG-lossy.dcm (12-bit, its scan header says Se=0) could not be decoded by any
    plugin; it now decodes exactly as its fixed twin and within 1 of IJG libjpeg (the IDCTs
    round differently)."""
    lossy, fixed = sample("JPEG-lossy.dcm"), sample("JPGExtended.dcm")
    assert lossy.file_meta.TransferSyntaxUID == JPEGExtended12Bit and lossy.BitsStored == 12
    decoded = lossy.pixel_array
    assert decoded.dtype == np.uint16 and np.array_equal(decoded, fixed.pixel_array)
    assert np.abs(decoded.astype(int) - _dcmdjpeg(lossy, tmp_path)).max() <= 1
    assert np.array_equal(P.render_frame(lossy), P.render_frame(fixed))
    assert decode_image(P.thumbnail(lossy)).shape == (128, 32)


# --------------------------------------------------------------------------- #
# colour
# --------------------------------------------------------------------------- #
SC_RGB_BANDS = [  # (row, expected RGB) of pydicom's SC_rgb test pattern
    (5, (255, 0, 0)),
    (25, (0, 255, 0)),
    (45, (0, 0, 255)),
    (65, (0, 0, 0)),
    (95, (255, 255, 255)),
]


# SC_rgb.dcm itself is only in pydicom-data; its RLE twin (lossless) is in the wheel
RGB_REFERENCE = "SC_rgb_rle.dcm"


def test_rgb_reference_colours():
    out = P.render_frame(sample(RGB_REFERENCE))
    assert out.shape == (100, 100, 3) and out.dtype == np.uint8
    for row, rgb in SC_RGB_BANDS:
        assert tuple(int(v) for v in out[row, 50]) == rgb


@pytest.mark.parametrize(
    "name, tolerance",
    [
        ("SC_rgb.dcm", 0),  # native (pydicom-data)
        ("SC_rgb_gdcm_KY.dcm", 0),  # JPEG 2000
        ("SC_rgb_jpeg_gdcm.dcm", 0),  # JPEG lossless
        ("ExplVR_BigEnd.dcm", None),  # big endian, planar configuration 1 (own image)
        ("SC_rgb_rle_16bit.dcm", 0),
        ("SC_rgb_rle_32bit.dcm", 0),
        ("SC_ybr_full_uncompressed.dcm", 1.0),
        ("SC_ybr_full_422_uncompressed.dcm", 1.0),
        ("SC_rgb_jpeg_dcmtk.dcm", 2.0),  # JPEG baseline, YBR_FULL
        ("SC_rgb_dcmtk_+eb+cy+np.dcm", 4.0),  # JPEG baseline, YBR_FULL_422 subsampled
        ("SC_rgb_dcmtk_+eb+cy+s2.dcm", 2.0),
        ("SC_rgb_dcmtk_+eb+cr.dcm", 1.0),  # JPEG baseline, RGB
        ("SC_rgb_jls_lossy_line.dcm", 2.0),  # JPEG-LS near-lossless
    ],
)
def test_colour_variants_match_rgb_twin(name, tolerance):
    ds = sample(name)
    out = P.render_frame(ds)
    assert out.ndim == 3 and out.shape[2] == 3 and out.dtype == np.uint8
    if tolerance is None:
        assert out.std() > 10
        return
    ref = P.render_frame(sample(RGB_REFERENCE))
    assert mad(out, ref) <= tolerance
    for row, rgb in SC_RGB_BANDS:  # colours, not just brightness, are right
        assert np.abs(out[row, 50].astype(int) - rgb).max() <= 12, (row, out[row, 50], rgb)


def test_planar_configuration_1_matches_0():
    interleaved = sample(RGB_REFERENCE).pixel_array
    ds = synthetic(interleaved, "RGB")
    assert ds.PlanarConfiguration == 0
    planar = copy.deepcopy(ds)
    planar.PlanarConfiguration = 1
    planar.PixelData = np.ascontiguousarray(interleaved.transpose(2, 0, 1)).tobytes()
    assert np.array_equal(P.render_frame(planar), interleaved)
    assert np.array_equal(P.render_frame(ds), interleaved)


def test_colour_planar_pair_from_pydicom_data():
    assert np.array_equal(P.render_frame(sample("color-pl.dcm")), P.render_frame(sample("color-px.dcm")))


def test_ultrasound_j2k_rct_matches_uncompressed():
    ref = P.render_frame(sample("US1_UNCR.dcm"))
    assert ref.shape == (480, 640, 3)
    assert np.array_equal(P.render_frame(sample("US1_J2KR.dcm")), ref)
    assert mad(P.render_frame(sample("US1_J2KI.dcm")), P.render_frame(sample("US1_UNCI.dcm"))) < 2


def test_ybr_rct_j2k_in_wheel_is_colour():
    out = P.render_frame(sample("GDCMJ2K_TextGBR.dcm"))
    assert out.shape == (400, 400, 3)
    assert np.mean((out[..., 0] != out[..., 1]) | (out[..., 1] != out[..., 2])) > 0.05


def test_window_ignored_for_colour():
    ds = sample(RGB_REFERENCE)
    assert np.array_equal(P.render_frame(ds, window=(10, 20)), P.render_frame(ds))


def test_ybr_multiframe_jpeg_baseline():
    ds = sample("examples_ybr_color.dcm")  # 30 frames YBR_FULL_422 JPEG baseline
    assert P.number_of_frames(ds) == 30
    out = P.render_frame(ds, 29)
    assert out.shape == (240, 320, 3) and out.std() > 5


def test_palette_color_synthetic():
    idx = np.tile(np.arange(256, dtype=np.uint8), (4, 1))
    ds = synthetic(idx, "PALETTE COLOR")
    for colour in ("Red", "Green", "Blue"):
        tag = tag_for_keyword(f"{colour}PaletteColorLookupTableDescriptor")
        ds.add_new(tag, "US", [256, 0, 8])  # 256 entries, first maps 0, 8 bits
    red = np.arange(256, dtype=np.uint8)
    ds.RedPaletteColorLookupTableData = red.tobytes()
    ds.GreenPaletteColorLookupTableData = (255 - red).tobytes()
    ds.BluePaletteColorLookupTableData = np.full(256, 7, np.uint8).tobytes()
    out = P.render_frame(ds)
    assert out.shape == (4, 256, 3)
    assert np.array_equal(out[0, :, 0], red)
    assert np.array_equal(out[0, :, 1], 255 - red)
    assert np.all(out[..., 2] == 7)


def test_palette_color_16_bit_entries_in_wheel():
    ds = sample("examples_palette.dcm")  # 16-bit LUT entries
    out = P.render_frame(ds)
    assert out.shape == (350, 800, 3) and out.dtype == np.uint8
    colourful = np.mean((out[..., 0] != out[..., 1]) | (out[..., 1] != out[..., 2]))
    assert colourful > 0.05 and out.max() > 200


def test_palette_color_rle_matches_uncompressed():
    ref = P.render_frame(sample("OBXXXX1A.dcm"))
    assert np.array_equal(P.render_frame(sample("OBXXXX1A_rle.dcm")), ref)
    assert ref.std() > 10


# --------------------------------------------------------------------------- #
# errors
# --------------------------------------------------------------------------- #
def test_truncated_pixel_data_raises():
    with pytest.raises(PixelDataError, match="cannot decode"):
        P.render_frame(sample("MR_truncated.dcm"))


def test_no_pixel_data_raises():
    with pytest.raises(PixelDataError, match="no pixel data"):
        P.render_frame(sample("rtplan.dcm"))
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    with pytest.raises(PixelDataError, match="no pixel data"):
        P.render(ds, media_type="image/png")
    with pytest.raises(PixelDataError):
        P.thumbnail(ds)


def test_broken_codestream_raises():
    with pytest.raises(PixelDataError):
        P.render_frame(undecodable_jpeg())


def test_bad_header_value_raises():
    with pytest.raises(PixelDataError):
        P.render_frame(sample("badVR.dcm"))


def test_unsupported_transfer_syntax_raises():
    ds = sample("CT_small.dcm")
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    with pytest.raises(PixelDataError, match="decoder"):
        P.render_frame(ds)


def test_missing_transfer_syntax_raises():
    ds = sample("CT_small.dcm")
    del ds.file_meta.TransferSyntaxUID
    with pytest.raises(PixelDataError, match="Transfer Syntax"):
        P.render_frame(ds)


def test_pixel_data_error_is_value_error():
    assert issubclass(PixelDataError, ValueError)


def test_render_does_not_modify_dataset():
    for name in ("CT_small.dcm", "6154", "SC_rgb_jpeg_dcmtk.dcm"):
        ds = sample(name)
        ds.WindowCenter, ds.WindowWidth = "40.5", "400"
        before = copy.deepcopy(ds)
        P.render(ds, media_type="image/png", window="10,20")
        P.render_frame(ds)
        P.thumbnail(ds)
        assert ds == before
        assert ds.PhotometricInterpretation == before.PhotometricInterpretation
        assert ds.WindowCenter == before.WindowCenter


# --------------------------------------------------------------------------- #
# parsing
# --------------------------------------------------------------------------- #
def test_parse_window():
    assert P.parse_window("40,400,linear") == (40.0, 400.0, "LINEAR")
    assert P.parse_window("40,400") == (40.0, 400.0, "LINEAR")
    assert P.parse_window(" -600 , 1500 , SIGMOID ") == (-600.0, 1500.0, "SIGMOID")
    assert P.parse_window("0.5,0.25,linear-exact") == (0.5, 0.25, "LINEAR_EXACT")


@pytest.mark.parametrize(
    "text, message",
    [
        ("40", "center,width"),
        ("40,400,linear,x", "center,width"),
        ("a,400", "numbers"),
        ("40,,linear", "center,width"),
        ("40,400,cubic", "unknown window function"),
        ("40,0.5,linear", ">= 1"),
        ("40,0,sigmoid", "> 0"),
        ("40,-3,linear-exact", "> 0"),
        ("nan,400", "finite"),
    ],
)
def test_parse_window_errors(text, message):
    with pytest.raises(ValueError, match=message):
        P.parse_window(text)


def test_parse_viewport():
    assert P.parse_viewport("512,512") == (512, 512)
    assert P.parse_viewport("256, 128, 10, 20, 100, -50") == (256, 128, 10, 20, 100, -50)
    assert P.parse_viewport("256,256,,,64,64") == (256, 256, None, None, 64, 64)


@pytest.mark.parametrize(
    "text, message",
    [
        ("512", "vw,vh"),
        ("512,512,1", "vw,vh"),
        ("0,512", "from 1"),
        ("512,-1", "from 1"),
        ("99999,512", "from 1"),
        ("512,x", "not an integer"),
        ("512,512,-1,0,10,10", ">= 0"),
        ("512,512,0,0,0,10", "must not be 0"),
        ("1.5,512", "not an integer"),
    ],
)
def test_parse_viewport_errors(text, message):
    with pytest.raises(ValueError, match=message):
        P.parse_viewport(text)


# --------------------------------------------------------------------------- #
# fit / encode
# --------------------------------------------------------------------------- #
def test_fit_preserves_aspect_and_never_upscales():
    img = np.zeros((480, 640, 3), np.uint8)
    assert P.fit(img, 128, 128).shape == (96, 128, 3)
    assert P.fit(img, 1000, 1000) is img
    assert P.fit(img, 1280, 1280, upscale=True).shape == (960, 1280, 3)
    assert P.fit(np.zeros((100, 10), np.uint8), 64, 64).shape == (64, 6)


def test_fit_keeps_constant_and_mean():
    flat = np.full((300, 200), 77, np.uint8)
    assert np.all(P.fit(flat, 37, 53) == 77)
    assert np.all(P.fit(flat, 700, 700, upscale=True) == 77)
    ramp = np.tile(np.linspace(0, 255, 512).astype(np.uint8), (512, 1))
    small = P.fit(ramp, 100, 100)
    assert small.shape == (100, 100)
    assert abs(small.mean() - ramp.mean()) < 1.5
    assert np.all(np.diff(small[50].astype(int)) >= 0)  # still a ramp, left to right


def test_fit_antialiases():
    checker = ((np.indices((400, 400)).sum(axis=0) % 2) * 255).astype(np.uint8)
    small = P.fit(checker, 160, 160)  # 2.5x: would alias badly without smoothing
    assert abs(small.mean() - 127.5) < 3
    assert small.std() < 12


def test_fit_rejects_bad_sizes():
    with pytest.raises(ValueError):
        P.fit(np.zeros((4, 4), np.uint8), 0, 4)
    with pytest.raises(ValueError):
        P.fit(np.zeros((4, 4), np.uint8), 4, 2.5)


def test_encode_png_roundtrip_and_jpeg_quality():
    img = P.render_frame(sample("US1_UNCR.dcm") if get_testdata_file("US1_UNCR.dcm", download=False) else sample(RGB_REFERENCE))
    png = P.encode(img, "image/png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.array_equal(decode_image(png), img)
    hi = P.encode(img, "image/jpeg", 95)
    lo = P.encode(img, "image/jpeg", 10)
    assert hi[:3] == b"\xff\xd8\xff" and len(lo) < len(hi)
    assert mad(decode_image(hi), img) < 2
    gray = P.render_frame(sample("CT_small.dcm"))
    assert decode_image(P.encode(gray, "image/jpeg")).shape == (128, 128)
    assert np.array_equal(decode_image(P.encode(gray, "IMAGE/PNG")), gray)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"media_type": "image/gif"}, "unsupported media type"),
        ({"media_type": "image/jpeg", "quality": 0}, "quality"),
        ({"media_type": "image/jpeg", "quality": 101}, "quality"),
        ({"media_type": "image/jpeg", "quality": 50.5}, "quality"),
    ],
)
def test_encode_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        P.encode(np.zeros((4, 4), np.uint8), **kwargs)


def test_encode_rejects_non_uint8():
    with pytest.raises(ValueError, match="uint8"):
        P.encode(np.zeros((4, 4), np.uint16))


# --------------------------------------------------------------------------- #
# render / thumbnail
# --------------------------------------------------------------------------- #
def test_render_png_is_lossless_render_frame():
    ds = sample("CT_small.dcm")
    data = P.render(ds, media_type="image/png", window="40,400,linear")
    assert np.array_equal(decode_image(data), P.render_frame(ds, window=(40, 400)))


def test_render_jpeg_quality_and_viewport():
    ds = sample("CT_small.dcm")
    a = P.render(ds, media_type="image/jpeg", quality=95)
    b = P.render(ds, media_type="image/jpeg", quality=20)
    assert len(b) < len(a)
    assert decode_image(P.render(ds, media_type="image/jpeg", viewport="64,64")).shape == (64, 64)
    # the viewport may enlarge (scaled to fit, aspect kept)
    assert decode_image(P.render(ds, media_type="image/png", viewport=(256, 200))).shape == (200, 200)


def test_render_viewport_non_square():
    ds = sample("examples_rgb_color.dcm")  # 320 wide, 240 high
    assert decode_image(P.render(ds, media_type="image/png", viewport=(128, 64))).shape == (64, 85, 3)
    assert decode_image(P.render(ds, media_type="image/png", viewport=(100, 300))).shape == (75, 100, 3)
    ds2 = sample("GDCMJ2K_TextGBR.dcm")  # 400x400
    assert decode_image(P.render(ds2, media_type="image/png", viewport=(100, 300))).shape == (100, 100, 3)


def test_render_viewport_source_region_and_flip():
    ds = sample("CT_small.dcm")
    full = P.render_frame(ds, window=(40, 400))
    crop = decode_image(P.render(ds, media_type="image/png", window=(40, 400), viewport=(64, 32, 0, 0, 64, 32)))
    assert np.array_equal(crop, full[:32, :64])
    flipped = decode_image(P.render(ds, media_type="image/png", window=(40, 400), viewport=(128, 128, 128, 0, -128, 128)))
    assert np.array_equal(flipped, full[:, ::-1])
    vflip = decode_image(P.render(ds, media_type="image/png", window=(40, 400), viewport="128,128,,128,,-128"))
    assert np.array_equal(vflip, full[::-1])
    # default region extends to the bottom-right corner
    tail = decode_image(P.render(ds, media_type="image/png", window=(40, 400), viewport="64,64,64,64,,"))
    assert np.array_equal(tail, full[64:, 64:])
    with pytest.raises(ValueError, match="outside"):
        P.render(ds, media_type="image/png", viewport=(64, 64, 500, 0, 10, 10))


def test_render_validates_arguments_before_decoding():
    ds = sample("MR_truncated.dcm")  # would raise PixelDataError if decoded
    for kwargs in ({"media_type": "text/plain"}, {"media_type": "image/png", "quality": 0},
                   {"media_type": "image/png", "window": "1"}, {"media_type": "image/png", "viewport": "0,0"}):
        with pytest.raises(ValueError) as info:
            P.render(ds, **kwargs)
        assert not isinstance(info.value, PixelDataError)


def test_thumbnail_sizes_and_content():
    thumb = decode_image(P.thumbnail(sample("CT_small.dcm")))
    assert thumb.shape == (128, 128) and thumb.std() > 20
    rgb = decode_image(P.thumbnail(sample("examples_rgb_color.dcm"), size=64))  # 320x240
    assert rgb.shape == (48, 64, 3) and rgb.std() > 5
    assert decode_image(P.thumbnail(sample("GDCMJ2K_TextGBR.dcm"), size=100)).shape == (100, 100, 3)
    tiny = decode_image(P.thumbnail(sample("SC_rgb_small_odd.dcm")))
    assert tiny.shape == (3, 3, 3)  # never enlarged


def test_thumbnail_of_non_square_ultrasound():
    thumb = decode_image(P.thumbnail(sample("US1_UNCR.dcm")))
    assert thumb.shape == (96, 128, 3)


def test_thumbnail_uses_middle_frame():
    ds = sample("rtdose.dcm")  # 15 frames
    assert P.thumbnail(ds) == P.thumbnail(ds, frame=7)
    assert P.thumbnail(ds) != P.thumbnail(ds, frame=0)
