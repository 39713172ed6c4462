"""A study's DICOM files as one streamed zip, for the patient's download (film/pages.py) and
staff's (workspace/pages.py): series folders in viewing order, never the whole zip in memory."""

from __future__ import annotations

import io
import time
import zipfile
from typing import Iterator

from imaging import compat_zipfile
from imaging.models import Instance, Series


class _Pipe(io.RawIOBase):
    """A write-only, non-seekable sink: zipfile then writes data descriptors and never seeks."""

    def __init__(self):
        self._chunks: list[bytes] = []
        self._written = 0
        self.buffered = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._chunks.append(bytes(data))
        self._written += len(data)
        self.buffered += len(data)
        return len(data)

    def tell(self) -> int:
        return self._written

    def drain(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        self.buffered = 0
        return data


README_TXT = (
    "本压缩包内是您的检查影像原始文件（DICOM 格式），可用医院或电脑上的 DICOM 阅片软件打开，"
    "也可交给其他医院的医生。请妥善保管，勿随意转发。\r\n"
    "These are the original images of your examination in DICOM format. Any DICOM viewer opens them; "
    "you may give them to another hospital. Keep them private.\r\n"
)


ZIP_FLUSH = 256 * 1024


def zip_stream(store, entries: list[tuple[str, str, int]], readme: str = README_TXT) -> Iterator[bytes]:
    """Stream a zip of (name, object key, size) without holding a file in memory.

    Deflate level 1: DICOM often halves, for little CPU, and the patient is on mobile data.
    """
    pipe = _Pipe()
    today = time.localtime()[:6]
    with zipfile.ZipFile(pipe, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("README.txt", readme.encode("utf-8"))
        for name, key, size in entries:
            info = zipfile.ZipInfo(name, date_time=today)
            info.compress_type = zipfile.ZIP_DEFLATED
            compat_zipfile.set_compress_level(info, 1)  # what ZipFile.open(name) would set (default 6)
            with archive.open(info, "w", force_zip64=size > 2**31 - 2**24) as member:
                for chunk in store.stream(key):
                    member.write(chunk)
                    if pipe.buffered >= ZIP_FLUSH:
                        yield pipe.drain()
    yield pipe.drain()


def entries(rows: list[tuple[Series, Instance]]) -> list[tuple[str, str, int]]:
    """(name in the zip, object key, size) of each instance: S001_CT_12/IM0001.dcm…"""
    found, numbers = [], {}
    for series, instance in rows:
        folder = f"S{(series.series_number if series.series_number is not None else 0):03d}_" \
                 f"{''.join(c for c in series.modality if c.isalnum()) or 'OT'}_{series.id}"
        numbers[folder] = numbers.get(folder, 0) + 1
        found.append((f"{folder}/IM{numbers[folder]:04d}.dcm", instance.object_key, instance.size))
    return found
