"""The one place Lancang sets a private attribute of the standard library's zipfile.

A member written with `ZipFile.open(ZipInfo, "w")` is compressed at the ZipInfo's level,
which has no public setter before Python 3.13 (`ZipInfo.compress_level`); the private
`_compresslevel` defaults to 6, where the cloud-film download wants level 1 (DICOM often
halves at level 1, for far less CPU, and the patient is on mobile data). Checked at import.
"""

from __future__ import annotations

import zipfile

_PUBLIC = "compress_level"  # Python 3.13+
_PRIVATE = "_compresslevel"  # Python 3.7-3.12


def check() -> None:
    slots = getattr(zipfile.ZipInfo, "__slots__", ())
    if _PUBLIC not in slots and _PRIVATE not in slots:
        raise RuntimeError("zipfile.ZipInfo has neither compress_level nor _compresslevel: "
                           "check imaging/compat_zipfile.py against this Python")


check()


def set_compress_level(info: zipfile.ZipInfo, level: int) -> None:
    setattr(info, _PUBLIC if _PUBLIC in zipfile.ZipInfo.__slots__ else _PRIVATE, level)
