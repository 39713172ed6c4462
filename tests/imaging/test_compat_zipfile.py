"""imaging/compat_zipfile.py: the level of a member written through a ZipInfo."""

from __future__ import annotations

import io
import os
import zipfile

import pytest

from imaging import compat_zipfile


def test_the_level_reaches_the_member():
    data = os.urandom(2000) * 200  # repetitive at long range: levels 1 and 9 differ
    sizes = {}
    for level in (1, 9):
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as archive:
            info = zipfile.ZipInfo("a.bin")
            info.compress_type = zipfile.ZIP_DEFLATED
            compat_zipfile.set_compress_level(info, level)
            with archive.open(info, "w") as member:
                member.write(data)
        sizes[level] = zipfile.ZipFile(out).getinfo("a.bin").compress_size
    assert sizes[1] != sizes[9]


def test_a_python_without_either_attribute_fails_loudly(monkeypatch):
    monkeypatch.setattr(compat_zipfile.zipfile, "ZipInfo", type("ZipInfo", (), {"__slots__": ()}))
    with pytest.raises(RuntimeError, match="compress_level"):
        compat_zipfile.check()
