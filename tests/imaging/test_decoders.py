"""Tests for imaging.decoders: the scan-header repair for JPEG Extended and its pydicom plugin.

pydicom ships the same 12-bit image twice: JPEG-lossy.dcm, whose scan header says Se=0,
and JPGExtended.dcm, the fixed copy; the two codestreams differ in that one byte.
"""

from __future__ import annotations

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import get_frame
from pydicom.pixels import get_decoder
from pydicom.uid import JPEGExtended12Bit

from imaging import decoders


def codestream(name: str) -> bytes:
    return get_frame(dcmread(get_testdata_file(name)).PixelData, 0, number_of_frames=1)


def test_non_sequential_scan_header_is_repaired_to_the_fixed_twin():
    assert decoders.sequential_scans_repaired(codestream("JPEG-lossy.dcm")) == codestream("JPGExtended.dcm")


def test_conforming_and_non_sequential_codestreams_are_left_alone():
    assert decoders.sequential_scans_repaired(codestream("JPGExtended.dcm")) is None
    # progressive (SOF2): Ss/Se select the coefficients of each scan, nothing to repair
    progressive = bytearray(codestream("JPEG-lossy.dcm"))
    sof = progressive.index(b"\xff\xc1")
    progressive[sof + 1] = 0xC2
    assert decoders.sequential_scans_repaired(bytes(progressive)) is None
    assert decoders.sequential_scans_repaired(b"") is None


def test_plugin_is_registered_after_pydicoms_own_and_refuses_what_it_cannot_repair():
    import imaging.pixels  # noqa: F401  (registers the plugin)

    decoder = get_decoder(JPEGExtended12Bit)
    assert decoders.PLUGIN in decoder.available_plugins
    decoders.register()  # a second call adds nothing
    with pytest.raises(ValueError, match="nothing for this plugin"):
        decoders.decode_frame(codestream("JPGExtended.dcm"), None)
