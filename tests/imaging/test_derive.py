"""Derived images: series thumbnails and per-instance previews, checked by pixel statistics.

The renderer itself is tested in test_pixels.py; here the outputs of imaging.derive are
decoded from the object store and compared with what they must show: the pydicom sample
files over every compressed transfer syntax installed, and synthetic instances whose
correct rendering is known (rescale + window, MONOCHROME1, palette, RGB, multi-frame,
the middle slice). Plus idempotency, corrupt instances, the crash guard, the sweep, and
the whole path from storescu to thumbnails through real processes.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_color_lut
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from sqlalchemy import select, update

from imaging import derive, pixels
from imaging.models import Instance, Series
from imaging.service import Ingestor
from storage import service as tenancy
from tests.conftest import settings_env
from tests.dicomdata import ct_instance, undecodable_jpeg
from tests.services import free_port

# dcmtk's, never the look-alikes pynetdicom puts in a venv's bin
STORESCU, ECHOSCU = "/usr/bin/storescu", "/usr/bin/echoscu"
SAMPLES = [
    "CT_small.dcm",                          # Explicit VR LE, rescale, MONOCHROME2
    "MR_small_RLE.dcm",                      # RLE Lossless
    "JPEG2000.dcm",                          # JPEG 2000
    "US1_J2KR.dcm",                          # JPEG 2000 lossless, YBR_RCT colour
    "SC_rgb_jpeg_dcmtk.dcm",                 # JPEG baseline, YBR_FULL colour
    "JPGExtended.dcm",                       # JPEG extended (12-bit)
    "JPGLosslessP14SV1_1s_1f_8b.dcm",        # JPEG lossless SV1
    "MR_small_jpeg_ls_lossless.dcm",         # JPEG-LS
    "emri_small_jpeg_2k_lossless.dcm",       # multi-frame, JPEG 2000
    "OBXXXX1A.dcm",                          # PALETTE COLOR
    "ExplVR_BigEnd.dcm",                     # big endian RGB
    "vlut_04.dcm",                           # VOI LUT Sequence
    "mlut_18.dcm",                           # Modality LUT Sequence
]


@pytest.fixture
def institution_id(runtime) -> int:
    with runtime.db.scope() as session:
        return tenancy.add_institution(session=session, code="T01", name="勐朗镇卫生院", level="township").id


@pytest.fixture
def ingestor(runtime):
    ingestor = Ingestor(runtime.db, runtime.store)
    yield ingestor
    ingestor.close()


def _part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=False)
    return buffer.getvalue()


def _with_uids(ds: Dataset, study_uid: str, series_uid: str) -> Dataset:
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _image(store, key: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(store.get(key))))


def _gray(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) if image.ndim == 2 else image.astype(np.float64).mean(axis=2)


def _synthetic(pixel_array: np.ndarray, *, study_uid: str, series_uid: str, number: int = 1,
               photometric: str = "MONOCHROME2", **attributes) -> bytes:
    """A Secondary Capture instance around `pixel_array` (uint16 grey, uint8 RGB or frames)."""
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.PatientName, ds.PatientID, ds.StudyDate = "Test^Derive", "D1", "20261101"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "OT", 1, number
    colour = photometric in ("RGB",)
    frames = pixel_array.shape[0] if pixel_array.ndim == (4 if colour else 3) else 1
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = pixel_array.shape[-3:-1] if colour else pixel_array.shape[-2:]
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = pixel_array.dtype.itemsize * 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    for name, value in attributes.items():
        setattr(ds, name, value)
    ds.PixelData = np.ascontiguousarray(pixel_array).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _derive_one(runtime, ingestor, institution_id, blob: bytes):
    result = ingestor.ingest(blob, institution_id=institution_id, source="test")
    outcome = derive.derive_series(runtime.db, runtime.store, result.series_pk)
    with runtime.db.scope(readonly=True) as session:
        instance = session.scalar(select(Instance).where(Instance.sop_instance_uid == result.sop_instance_uid))
        series = session.get(Series, result.series_pk)
    return outcome, series, instance


# --------------------------------------------------------------------------- sample files


@pytest.mark.parametrize("backend", ["embedded"])
def test_previews_of_the_pydicom_samples_match_the_renderer(runtime, ingestor, institution_id):
    study_uid = generate_uid()
    checked = 0
    for name in SAMPLES:
        path = get_testdata_file(name)
        assert path is not None, name
        source = dcmread(path, force=True)
        blob = _part10(_with_uids(source, study_uid, generate_uid()))
        outcome, series, instance = _derive_one(runtime, ingestor, institution_id, blob)
        assert outcome.status == "done", (name, outcome.failures)
        assert series.derive_state == "done" and series.derived_through == series.last_received_at
        assert instance.preview_key == derive.preview_key(study_uid, series.series_instance_uid,
                                                           instance.sop_instance_uid)
        assert instance.preview_sha256 == instance.sha256 and instance.preview_error == ""

        preview = _image(runtime.store, instance.preview_key)
        thumbnail = _image(runtime.store, series.thumbnail_key)
        ds = dcmread(io.BytesIO(runtime.store.get(instance.object_key)), force=True)
        frame = derive.representative_frame(ds)
        for produced, size in ((preview, derive.PREVIEW_SIZE), (thumbnail, derive.THUMBNAIL_SIZE)):
            expected = pixels.fit(pixels.render_frame(ds, frame), size, size)
            assert produced.shape[:2] == expected.shape[:2], name
            assert max(produced.shape[:2]) == min(size, max(ds.Rows, ds.Columns)), name
            assert (produced.ndim == 3) == (expected.ndim == 3), f"{name}: colour kept as colour"
            # JPEG at quality 85 differs a little from the exact rendering, and no more
            difference = np.abs(_gray(produced) - _gray(expected))
            assert difference.mean() < 4.0, (name, difference.mean())
            assert abs(_gray(produced).mean() - _gray(expected).mean()) < 2.0, name
            if _gray(expected).std() > 5:
                assert np.corrcoef(_gray(produced).ravel(), _gray(expected).ravel())[0, 1] > 0.9, name
        checked += 1
    assert checked == len(SAMPLES)


# --------------------------------------------------------------------------- known renderings


@pytest.mark.parametrize("backend", ["embedded"])
def test_rescale_and_header_window_give_the_expected_grey_levels(runtime, ingestor, institution_id):
    # Left half air (-1000 HU), right half soft tissue at the window centre (40 HU): with
    # window 40/400 and rescale -1024/1, air is black and tissue mid-grey.
    stored = np.full((64, 64), 24, np.uint16)          # -1000 HU
    stored[:, 32:] = 1064                              # 40 HU
    blob = _synthetic(stored, study_uid=generate_uid(), series_uid=generate_uid(), RescaleIntercept=-1024,
                      RescaleSlope=1, WindowCenter=40, WindowWidth=400, BitsStored=12, HighBit=11)
    outcome, series, instance = _derive_one(runtime, ingestor, institution_id, blob)
    preview = _gray(_image(runtime.store, instance.preview_key))
    assert preview.shape == (64, 64)
    assert preview[:, :28].mean() < 3
    assert 120 < preview[:, 36:].mean() < 136


@pytest.mark.parametrize("backend", ["embedded"])
def test_monochrome1_is_inverted(runtime, ingestor, institution_id):
    stored = np.zeros((64, 64), np.uint16)
    stored[:, 32:] = 4000                              # high values are dark in MONOCHROME1
    blob = _synthetic(stored, study_uid=generate_uid(), series_uid=generate_uid(), photometric="MONOCHROME1",
                      BitsStored=12, HighBit=11)
    _, _, instance = _derive_one(runtime, ingestor, institution_id, blob)
    preview = _gray(_image(runtime.store, instance.preview_key))
    assert preview[:, :28].mean() > 240 and preview[:, 36:].mean() < 15


@pytest.mark.parametrize("backend", ["embedded"])
def test_rgb_stays_colour_and_palette_is_applied(runtime, ingestor, institution_id):
    rgb = np.zeros((48, 48, 3), np.uint8)
    rgb[..., 0] = 220                                  # red
    rgb[24:, :, 0], rgb[24:, :, 2] = 0, 220            # bottom half blue
    _, _, instance = _derive_one(runtime, ingestor, institution_id,
                                 _synthetic(rgb, study_uid=generate_uid(), series_uid=generate_uid(),
                                            photometric="RGB"))
    preview = _image(runtime.store, instance.preview_key).astype(int)
    top, bottom = preview[:20].reshape(-1, 3).mean(0), preview[28:].reshape(-1, 3).mean(0)
    assert top[0] > 190 and top[2] < 40
    assert bottom[2] > 190 and bottom[0] < 40

    palette = dcmread(get_testdata_file("OBXXXX1A.dcm"), force=True)
    # pydicom's own palette lookup, averaged per channel, is what the preview must show
    expected = apply_color_lut(palette.pixel_array, palette).reshape(-1, 3).mean(0) / 257
    _, _, instance = _derive_one(runtime, ingestor, institution_id,
                                 _part10(_with_uids(palette, generate_uid(), generate_uid())))
    preview = _image(runtime.store, instance.preview_key).astype(float)
    assert preview.ndim == 3
    assert np.abs(preview.reshape(-1, 3).mean(0) - expected).max() < 2.5
    assert expected[2] - expected[0] > 5 and preview[..., 2].mean() - preview[..., 0].mean() > 4  # not grey


@pytest.mark.parametrize("backend", ["embedded"])
def test_multiframe_uses_the_first_or_the_representative_frame(runtime, ingestor, institution_id):
    frames = np.stack([np.full((32, 32), 1000 * (k + 1), np.uint16) for k in range(5)])
    frames[:, :, :4] = 0  # a dark stripe, so the automatic window has a range
    common = dict(BitsStored=16, HighBit=15, WindowCenter=2500, WindowWidth=5000)
    _, _, first = _derive_one(runtime, ingestor, institution_id,
                              _synthetic(frames, study_uid=generate_uid(), series_uid=generate_uid(), **common))
    _, _, third = _derive_one(runtime, ingestor, institution_id,
                              _synthetic(frames, study_uid=generate_uid(), series_uid=generate_uid(),
                                         RepresentativeFrameNumber=3, **common))
    first_level = _gray(_image(runtime.store, first.preview_key))[:, 8:].mean()
    third_level = _gray(_image(runtime.store, third.preview_key))[:, 8:].mean()
    assert abs(first_level - 1000 / 5000 * 255) < 6      # frame 1: value 1000
    assert abs(third_level - 3000 / 5000 * 255) < 6      # frame 3: value 3000


@pytest.mark.parametrize("backend", ["embedded", "servers"])
def test_series_thumbnail_is_the_middle_slice_and_derivation_is_idempotent(runtime, ingestor, institution_id,
                                                                          monkeypatch):
    study_uid, series_uid = generate_uid(), generate_uid()
    levels = [400, 800, 1200, 1600, 2000]
    for number, level in enumerate(levels, start=1):
        stored = np.full((32, 32), level, np.uint16)
        stored[0, 0] = 0
        result = ingestor.ingest(_synthetic(stored, study_uid=study_uid, series_uid=series_uid, number=number,
                                            WindowCenter=1200, WindowWidth=2400),
                                 institution_id=institution_id, source="test")
    first = derive.derive_series(runtime.db, runtime.store, result.series_pk)
    assert first.status == "done" and first.previews == 5
    thumbnail = _gray(_image(runtime.store, first.thumbnail_key))
    assert abs(np.median(thumbnail) - 1200 / 2400 * 255) < 6   # the 3rd of 5 by Instance Number
    assert first.thumbnail_key == derive.series_thumbnail_key(study_uid, series_uid)

    # A redelivered task finds the series up to date and does nothing.
    calls = []
    real_preview = derive._preview
    monkeypatch.setattr(derive, "_preview", lambda *a: calls.append(a) or real_preview(*a))
    assert derive.derive_series(runtime.db, runtime.store, result.series_pk).status == "already"
    assert calls == []

    # One more instance: only its preview is made; the thumbnail moves to the new middle.
    stored = np.full((32, 32), 2400, np.uint16)
    stored[0, 0] = 0
    ingestor.ingest(_synthetic(stored, study_uid=study_uid, series_uid=series_uid, number=6,
                               WindowCenter=1200, WindowWidth=2400), institution_id=institution_id, source="test")
    again = derive.derive_series(runtime.db, runtime.store, result.series_pk)
    assert again.status == "done" and again.previews == 6
    assert [call[2].instance_number for call in calls] == [6]
    thumbnail = _gray(_image(runtime.store, again.thumbnail_key))
    assert abs(np.median(thumbnail) - 1600 / 2400 * 255) < 6   # the 4th of 6
    assert derive.sweep_underived(runtime.db, settle_s=0) == []


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize("backend", ["embedded"])
def test_a_corrupt_instance_records_a_failure_once(runtime, ingestor, institution_id, monkeypatch):
    study_uid, series_uid = generate_uid(), generate_uid()
    good = ingestor.ingest(ct_instance(study_uid=study_uid, series_uid=series_uid, instance_number=1),
                           institution_id=institution_id, source="test")
    broken = undecodable_jpeg()
    broken.InstanceNumber = 2
    bad = ingestor.ingest(_part10(_with_uids(broken, study_uid, series_uid)), institution_id=institution_id,
                          source="test")
    outcome = derive.derive_series(runtime.db, runtime.store, good.series_pk)
    assert outcome.status == "partial"
    assert set(outcome.failures) == {bad.sop_instance_uid}
    assert outcome.thumbnail_key is not None and outcome.previews == 1
    with runtime.db.scope(readonly=True) as session:
        row = session.scalar(select(Instance).where(Instance.sop_instance_uid == bad.sop_instance_uid))
        series = session.get(Series, good.series_pk)
    assert row.preview_key is None and "decode" in row.preview_error and row.preview_sha256 == row.sha256
    assert series.derive_state == "partial" and "1 of 2" in series.derive_error

    # Later derivations (a new instance) do not try the corrupt one again.
    attempted = []
    real_preview = derive._preview
    monkeypatch.setattr(derive, "_preview", lambda store, claim, item: attempted.append(item.sop_uid)
                        or real_preview(store, claim, item))
    ingestor.ingest(ct_instance(study_uid=study_uid, series_uid=series_uid, instance_number=3),
                    institution_id=institution_id, source="test")
    again = derive.derive_series(runtime.db, runtime.store, good.series_pk)
    assert again.status == "partial" and bad.sop_instance_uid not in attempted


@pytest.mark.parametrize("backend", ["embedded"])
def test_nothing_renderable_fails_and_interrupted_attempts_are_bounded(runtime, ingestor, institution_id):
    broken = undecodable_jpeg()
    result = ingestor.ingest(_part10(_with_uids(broken, generate_uid(), generate_uid())),
                             institution_id=institution_id, source="test")
    outcome = derive.derive_series(runtime.db, runtime.store, result.series_pk)
    assert outcome.status == "failed" and outcome.thumbnail_key is None

    # A task that keeps killing its worker is redelivered; after MAX_ATTEMPTS it is dropped.
    other = ingestor.ingest(ct_instance(), institution_id=institution_id, source="test")
    with runtime.db.scope() as session:
        session.execute(update(Series).where(Series.id == other.series_pk)
                        .values(derive_attempts=derive.MAX_ATTEMPTS, derive_state="running"))
    assert derive.derive_series(runtime.db, runtime.store, other.series_pk).status == "gave_up"
    with runtime.db.scope(readonly=True) as session:
        series = session.get(Series, other.series_pk)
    assert series.derive_state == "failed" and series.derive_attempts == 0
    assert derive.sweep_underived(runtime.db, settle_s=0) == []
    assert derive.derive_series(runtime.db, runtime.store, 987654).status == "missing"


@pytest.mark.parametrize("backend", ["embedded"])
def test_sweep_finds_series_newer_than_their_derivation(runtime, ingestor, institution_id):
    first = ingestor.ingest(ct_instance(), institution_id=institution_id, source="test")
    second = ingestor.ingest(ct_instance(), institution_id=institution_id, source="test")
    assert sorted(derive.sweep_underived(runtime.db, settle_s=0)) == sorted([first.series_pk, second.series_pk])
    assert derive.sweep_underived(runtime.db, settle_s=60) == []  # still settling: the announcer's
    derive.derive_series(runtime.db, runtime.store, first.series_pk)
    assert derive.sweep_underived(runtime.db, settle_s=0) == [second.series_pk]


# --------------------------------------------------------------------------- end to end


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.skipif(not os.path.exists(STORESCU), reason="dcmtk is not installed (scripts/test.sh installs it)")
@pytest.mark.parametrize("backend", ["embedded", "servers"])
def test_storescu_study_gets_thumbnails_without_anyone_asking(runtime, tmp_path):
    """`lancang dicom` + `lancang worker` as real processes; dcmtk's storescu sends a series."""
    settings = runtime.settings.model_copy(update={"dicom_port": free_port(), "bind_host": "127.0.0.1"})
    env = settings_env(settings)
    for args in (("institution", "add", "T01", "--name", "勐朗镇卫生院", "--level", "township"),
                 ("ae", "add", "MODALITY", "--institution", "T01")):
        subprocess.run([sys.executable, "-m", "lancang.cli", *args], env=env, check=True, capture_output=True)
    study_uid, series_uid = generate_uid(), generate_uid()
    folder = tmp_path / "series"
    folder.mkdir()
    for number in range(1, 13):
        (folder / f"{number:03d}.dcm").write_bytes(
            ct_instance(study_uid=study_uid, series_uid=series_uid, instance_number=number, size=64))
    logs = tmp_path / "logs"
    logs.mkdir()
    processes = []
    try:
        for name, extra in (("dicom", []), ("worker", ["--concurrency", "1"])):
            handle = open(logs / f"{name}.log", "wb")
            processes.append(subprocess.Popen([sys.executable, "-m", "lancang.cli", name, *extra], env=env,
                                              stdout=handle, stderr=subprocess.STDOUT))
        _wait(lambda: subprocess.run([ECHOSCU, "-aet", "MODALITY", "-aec", settings.dicom_ae_title, "127.0.0.1",
                                      str(settings.dicom_port)], capture_output=True).returncode == 0,
              60, "the DICOM receiver")
        sent = subprocess.run([STORESCU, "-aet", "MODALITY", "-aec", settings.dicom_ae_title, "127.0.0.1",
                               str(settings.dicom_port), *sorted(str(p) for p in folder.iterdir())],
                              env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, text=True)
        assert sent.returncode == 0, sent.stderr

        def derived():
            with runtime.db.scope(readonly=True) as session:
                series = session.scalar(select(Series).where(Series.series_instance_uid == series_uid))
                return series if series is not None and series.derive_state == "done" else None

        series = _wait(derived, 60, "thumbnails made by the worker")
        assert series.num_instances == 12
        assert _image(runtime.store, series.thumbnail_key).shape == (64, 64)
        with runtime.db.scope(readonly=True) as session:
            keys = session.scalars(select(Instance.preview_key).where(Instance.series_pk == series.id)).all()
        assert len(keys) == 12 and all(keys)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert "imaging.derive_series" in (logs / "worker.log").read_text(errors="replace")


def test_paths_are_under_derived():
    assert derive.preview_key("1.2", "1.2.3", "1.2.3.4") == "derived/1.2/1.2.3/1.2.3.4.preview.jpg"
    assert derive.series_thumbnail_key("1.2", "1.2.3") == "derived/1.2/1.2.3/series.jpg"
