"""Synthetic CT series for Lancang benchmarks.

    python bench/ctgen.py OUTDIR --count 800 [--studies K] [--seed N]

Writes COUNT slices of 512x512 signed 16-bit CT (CT Image Storage, Explicit VR
Little Endian, rescale -1024/1) showing a body-like phantom: fat and muscle,
a broken rib ring, spine, heart, aorta, lungs that grow and shrink along the
series, and noise.  About 525 KB per file, so 800 slices make ~420 MB.

Slices are spread evenly over K studies (one patient each, one series per
study), stored as OUTDIR/studyNN/CTnnnnn.dcm.  The output depends only on
(count, studies, seed).  A marker file, OUTDIR/.ctgen.json, records what was
written; a later run with the same parameters does nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

MARKER = ".ctgen.json"
FORMAT_VERSION = 1

SIZE = 512
PIXEL_SPACING_MM = 0.7
SLICE_THICKNESS_MM = 0.625
INTERCEPT = -1024
PADDING = -2000          # stored value outside the reconstruction circle
LUNG_LEVELS = 24         # precomputed anatomy variants along z
NOISE_FIELDS = 4
NOISE_SIGMA_HU = 12

INSTITUTION = "澜沧县第一人民医院"
STUDY_DESCRIPTION = "胸腹部CT平扫"
# (name, sex, birth date); the first patient is always 张秀英.
PATIENTS = [
    ("张秀英", "F", "19580314"),
    ("王伟", "M", "19710802"),
    ("李娜", "F", "19850119"),
    ("刘洋", "M", "19640927"),
    ("陈静", "F", "19920605"),
    ("杨磊", "M", "19790411"),
    ("赵敏", "F", "19661223"),
    ("黄勇", "M", "19530730"),
]


# --------------------------------------------------------------- phantom

_Y, _X = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)


def _ellipse(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return ((_X - cx) / rx) ** 2 + ((_Y - cy) / ry) ** 2 <= 1.0


def _rib_ring() -> np.ndarray:
    ring = _ellipse(256, 262, 178, 120) & ~_ellipse(256, 262, 168, 110)
    angle = np.arctan2(_Y - 262, _X - 256)
    return ring & (np.sin(angle * 14) > 0.1)


def _body_hu() -> np.ndarray:
    """Everything that does not change along z, in Hounsfield units."""
    hu = np.full((SIZE, SIZE), -1000, np.int16)
    hu[_ellipse(256, 262, 200, 140)] = -100                    # fat
    hu[_ellipse(256, 262, 188, 128)] = 40                      # muscle
    hu[_rib_ring()] = 750                                      # ribs
    hu[_ellipse(256, 350, 26, 24)] = 900                       # vertebral cortex
    hu[_ellipse(256, 350, 21, 19)] = 280                       # marrow
    hu[_ellipse(256, 388, 9, 9)] = 20                          # spinal canal
    hu[_ellipse(256, 405, 6, 14)] = 700                        # spinous process
    hu[_ellipse(228, 322, 13, 13)] = 160                       # aorta
    hu[_ellipse(262, 238, 58, 50)] = 45                        # heart
    hu[_ellipse(262, 160, 10, 6)] = 1200                       # sternum
    return hu


def _lung_mask(scale: float) -> np.ndarray:
    if scale <= 0:
        return np.zeros((SIZE, SIZE), bool)
    left = _ellipse(178, 255, 62 * scale, 88 * scale)
    right = _ellipse(336, 255, 66 * scale, 88 * scale)
    heart = _ellipse(262, 238, 58, 50)
    return (left | right) & ~heart


def _anatomy_levels(rng: np.random.Generator) -> list[np.ndarray]:
    """Stored-value images with lungs of increasing size, level 0 = none."""
    body = _body_hu()
    liver = _ellipse(330, 280, 95, 80)
    vessels = np.zeros((SIZE, SIZE), bool)
    for cx, cy, r in zip(rng.uniform(120, 400, 60), rng.uniform(180, 330, 60),
                         rng.uniform(1.5, 4, 60)):
        vessels |= _ellipse(cx, cy, r, r)
    outside_fov = ~_ellipse(255.5, 255.5, 256, 256)
    levels = []
    for level in range(LUNG_LEVELS):
        scale = level / (LUNG_LEVELS - 1)
        hu = body.copy()
        if scale < 0.5:
            hu[liver & (hu == 40)] = 60
        lungs = _lung_mask(scale)
        hu[lungs] = -850
        hu[lungs & vessels] = 30
        stored = hu - INTERCEPT
        stored[outside_fov] = PADDING
        levels.append(stored.astype(np.int16))
    return levels


class Phantom:
    """Anatomy and noise computed once; slices are cheap combinations."""

    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        self.levels = _anatomy_levels(rng)
        noise = rng.normal(0, NOISE_SIGMA_HU, (NOISE_FIELDS, SIZE, SIZE))
        self.noise = noise.astype(np.int16)
        self.outside_fov = self.levels[0] == PADDING
        self.rng = rng

    def slice(self, fraction: float) -> np.ndarray:
        """Pixels at `fraction` (0 = top, 1 = bottom) of the scanned range."""
        level = round(_lung_scale(fraction) * (LUNG_LEVELS - 1))
        field = self.noise[self.rng.integers(NOISE_FIELDS)]
        shift = tuple(int(s) for s in self.rng.integers(0, SIZE, 2))
        pixels = self.levels[level] + np.roll(field, shift, axis=(0, 1))
        pixels[self.outside_fov] = PADDING
        return pixels


def _lung_scale(fraction: float) -> float:
    """Lungs fill the upper 60 % of the range, largest in the middle of it."""
    if fraction >= 0.6:
        return 0.0
    return float(np.sin(np.pi * (fraction / 0.6)) ** 0.5)


# --------------------------------------------------------------- studies

@dataclass(frozen=True)
class Study:
    index: int
    slices: int
    patient_name: str
    patient_sex: str
    birth_date: str
    patient_id: str
    accession: str
    study_uid: str
    series_uid: str
    frame_uid: str
    when: dt.datetime

    @property
    def dirname(self) -> str:
        return f"study{self.index + 1:02d}"


def _uid(seed: int, *parts: object) -> str:
    return generate_uid(entropy_srcs=["lancang-ctgen", str(seed), *map(str, parts)])


def plan_studies(count: int, studies: int, seed: int) -> list[Study]:
    base, extra = divmod(count, studies)
    start = dt.datetime(2024, 3, 1, 8, 0, 0) + dt.timedelta(days=seed % 365)
    plan = []
    for k in range(studies):
        name, sex, birth = PATIENTS[k % len(PATIENTS)]
        plan.append(Study(
            index=k,
            slices=base + (1 if k < extra else 0),
            patient_name=name,
            patient_sex=sex,
            birth_date=birth,
            patient_id=f"LC{seed % 1000:03d}{k + 1:05d}",
            accession=f"A{seed % 1000:03d}{k + 1:07d}",
            study_uid=_uid(seed, "study", k),
            series_uid=_uid(seed, "series", k),
            frame_uid=_uid(seed, "frame", k),
            when=start + dt.timedelta(days=k // 8, minutes=17 * k),
        ))
    return plan


# --------------------------------------------------------------- DICOM

def _file_meta(sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "LANCANG_CTGEN"
    return meta


def _set_patient_study(ds: Dataset, study: Study) -> None:
    date, clock = study.when.strftime("%Y%m%d"), study.when.strftime("%H%M%S")
    ds.SpecificCharacterSet = "GB18030"
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = study.birth_date
    ds.PatientSex = study.patient_sex
    ds.StudyInstanceUID = study.study_uid
    ds.StudyID = f"{study.index + 1}"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = clock
    ds.AccessionNumber = study.accession
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = STUDY_DESCRIPTION
    ds.InstitutionName = INSTITUTION
    ds.Manufacturer = "Lancang Synthetic"
    ds.ManufacturerModelName = "ctgen"


def _set_series_geometry(ds: Dataset, study: Study, number: int) -> None:
    z = -SLICE_THICKNESS_MM * (number - 1)
    half = SIZE * PIXEL_SPACING_MM / 2
    ds.Modality = "CT"
    ds.SeriesInstanceUID = study.series_uid
    ds.SeriesNumber = 2
    ds.SeriesDescription = "Chest-Abdomen 0.625mm"
    ds.FrameOfReferenceUID = study.frame_uid
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [-half, -half, round(z, 4)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = round(z, 4)
    ds.SliceThickness = SLICE_THICKNESS_MM
    ds.PixelSpacing = [PIXEL_SPACING_MM, PIXEL_SPACING_MM]
    ds.KVP = 120


def _set_image(ds: Dataset, pixels: np.ndarray) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.add_new(0x00280120, "SS", PADDING)          # PixelPaddingValue
    ds.RescaleIntercept = INTERCEPT
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = [40, -600]
    ds.WindowWidth = [400, 1500]
    ds.WindowCenterWidthExplanation = ["SOFT TISSUE", "LUNG"]
    ds.PixelData = pixels.astype("<i2", copy=False).tobytes()


def slice_dataset(study: Study, number: int, pixels: np.ndarray, seed: int) -> Dataset:
    """One CT slice (1-based `number` within the study's series)."""
    sop_uid = _uid(seed, "instance", study.index, number)
    ds = Dataset()
    ds.file_meta = _file_meta(sop_uid)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    _set_patient_study(ds, study)
    _set_series_geometry(ds, study, number)
    _set_image(ds, pixels)
    return ds


# --------------------------------------------------------------- files

def _params(count: int, studies: int, seed: int) -> dict:
    return {"version": FORMAT_VERSION, "count": count, "studies": studies, "seed": seed}


def list_files(outdir: Path | str) -> list[Path]:
    """The generated slices, in study and instance order."""
    return sorted(Path(outdir).glob("study*/CT*.dcm"))


def is_generated(outdir: Path | str, count: int, studies: int = 1, seed: int = 0) -> bool:
    marker = Path(outdir) / MARKER
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return recorded == _params(count, studies, seed) and len(list_files(outdir)) == count


def generate(outdir: Path | str, count: int = 800, studies: int = 1, seed: int = 0) -> list[Path]:
    """Write the series unless OUTDIR already holds it; return the files."""
    outdir = Path(outdir)
    if is_generated(outdir, count, studies, seed):
        return list_files(outdir)
    if not 1 <= studies <= count:
        raise ValueError("need 1 <= studies <= count")
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / MARKER).unlink(missing_ok=True)
    for stale in list_files(outdir):
        stale.unlink()
    phantom = Phantom(seed)
    for study in plan_studies(count, studies, seed):
        _write_study(outdir / study.dirname, study, phantom, seed)
    (outdir / MARKER).write_text(json.dumps(_params(count, studies, seed)))
    return list_files(outdir)


def _write_study(folder: Path, study: Study, phantom: Phantom, seed: int) -> None:
    folder.mkdir(exist_ok=True)
    for number in range(1, study.slices + 1):
        fraction = (number - 1) / max(study.slices - 1, 1)
        ds = slice_dataset(study, number, phantom.slice(fraction), seed)
        ds.save_as(folder / f"CT{number:05d}.dcm", enforce_file_format=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--count", type=int, default=800)
    parser.add_argument("--studies", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if is_generated(args.outdir, args.count, args.studies, args.seed):
        print(f"{args.outdir}: already holds {args.count} slices, skipped")
        return 0
    started = time.perf_counter()
    files = generate(args.outdir, args.count, args.studies, args.seed)
    took = time.perf_counter() - started
    size = sum(f.stat().st_size for f in files) / 1e6
    print(f"{args.outdir}: wrote {len(files)} slices, {size:.0f} MB in {took:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
