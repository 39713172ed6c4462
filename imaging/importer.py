"""`lancang import`: folders (recursive), single files and zip archives through the same
durable ingest as C-STORE, with a progress bar, a summary and safe re-runs.

Re-running an import is harmless: identical instances come back as "already present".
Files that are not DICOM, DICOMDIR indexes and instances that fail validation are listed
with their reasons; a store or database outage is reported as "failed, retry".
"""

from __future__ import annotations

import io
import zipfile
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from sqlalchemy.exc import SQLAlchemyError

from imaging.dataset import InvalidInstance
from imaging.service import Ingestor, IngestResult
from storage.errors import Unavailable

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
MAX_IN_FLIGHT = 8


@dataclass
class Candidate:
    """One thing to import: a file on disk or a member of a zip archive."""

    label: str
    read: Callable[[], bytes]
    size: int = 0  # bytes it will read (a zip member's uncompressed size): checked first


@dataclass
class ImportSummary:
    outcomes: Counter = field(default_factory=Counter)  # stored / already / replaced / rejected / failed
    reasons: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    series_pks: set[int] = field(default_factory=set)
    studies: set[str] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return not (self.outcomes["rejected"] or self.outcomes["failed"])

    def lines(self) -> list[str]:
        out = [f"stored {self.outcomes['stored']}, already present {self.outcomes['already']}, "
               f"replaced {self.outcomes['replaced']}, rejected {self.outcomes['rejected']}, "
               f"failed {self.outcomes['failed']} ({len(self.studies)} studies)"]
        for reason, labels in sorted(self.reasons.items(), key=lambda item: -len(item[1])):
            shown = ", ".join(labels[:3]) + (f" and {len(labels) - 3} more" if len(labels) > 3 else "")
            out.append(f"  {len(labels)} x {reason}: {shown}")
        return out


def candidates(paths: list[Path]) -> Iterator[Candidate]:
    """Every file under the given paths; zip archives are opened and their members listed."""
    for path in paths:
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                yield from _from_file(child)
        elif path.is_file():
            yield from _from_file(path)
        else:
            yield Candidate(str(path), _missing(path))


def _missing(path: Path) -> Callable[[], bytes]:
    def read() -> bytes:
        raise FileNotFoundError(f"{path} does not exist")
    return read


def _from_file(path: Path) -> Iterator[Candidate]:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info.file_size for info in archive.infolist() if not info.is_dir()}
        for name in sorted(members):
            # zipfile never returns more than the member's recorded size (it fails the CRC
            # instead), so the size checked before reading bounds a zip bomb too.
            yield Candidate(f"{path}!{name}", _zip_member(path, name), members[name])
    else:
        yield Candidate(str(path), path.read_bytes, path.stat().st_size)


def _zip_member(path: Path, name: str) -> Callable[[], bytes]:
    def read() -> bytes:
        with zipfile.ZipFile(path) as archive:
            return archive.read(name)
    return read


def as_part10(data: bytes) -> bytes:
    """The bytes as a Part 10 file. A bare data set (old CDs) gets its file meta written;
    its elements are re-encoded by pydicom, losslessly."""
    if data[128:132] == b"DICM":
        return data
    try:
        ds = dcmread(io.BytesIO(data), force=True)
        if "SOPInstanceUID" not in ds or "SOPClassUID" not in ds:
            raise ValueError
    except Exception:
        raise InvalidInstance("not a DICOM file", 0xC000) from None
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2" if ds.is_implicit_VR else "1.2.840.10008.1.2.1"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _import_one(ingestor: Ingestor, candidate: Candidate, institution_id: int) -> tuple[str, str, IngestResult | None]:
    try:
        if candidate.size > ingestor.limits.max_instance:
            raise InvalidInstance(f"{candidate.size // (1 << 20)} MiB is more than the "
                                  f"{ingestor.limits.max_instance // (1 << 20)} MiB allowed per instance "
                                  "(LANCANG_MAX_INSTANCE_BYTES)", 0xA700)
        data = as_part10(candidate.read())
        if data[128:132] == b"DICM" and MEDIA_STORAGE_DIRECTORY.encode() in data[132:600]:
            return "rejected", "DICOMDIR index (not an image; its images are imported on their own)", None
        result = ingestor.ingest(data, institution_id=institution_id, source=f"import:{candidate.label}"[:64])
        return result.outcome, "", result
    except InvalidInstance as exc:
        return "rejected", exc.reason, None
    except (Unavailable, SQLAlchemyError) as exc:
        return "failed", f"store or database unavailable, retry ({getattr(exc, 'detail', type(exc).__name__)})", None
    except OSError as exc:
        return "rejected", f"cannot read: {exc.strerror or exc}", None


def run_import(ingestor: Ingestor, paths: list[Path], *, institution_id: int, progress=None) -> ImportSummary:
    """Import everything under paths; `progress` (a tqdm-like object) is advanced per item."""
    items = list(candidates(paths))
    if progress is not None:
        progress.reset(total=len(items))
    summary = ImportSummary()
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="import") as pool:
        for start in range(0, len(items), MAX_IN_FLIGHT * 4):
            batch = items[start:start + MAX_IN_FLIGHT * 4]
            for candidate, (outcome, reason, result) in zip(
                    batch, pool.map(lambda c: _import_one(ingestor, c, institution_id), batch)):
                summary.outcomes[outcome] += 1
                if reason:
                    summary.reasons[reason].append(candidate.label)
                if result is not None:
                    summary.series_pks.add(result.series_pk)
                    summary.studies.add(result.study_instance_uid)
                if progress is not None:
                    progress.update(1)
    return summary
