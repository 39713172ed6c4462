"""Frames in JPEG-LS lossless on the wire (issue 18: "send less"): a client that asks for
`multipart/related; type="image/jls"` gets each grey frame as a JPEG-LS codestream that decodes
(CharLS, as the viewer's vendored WebAssembly does) to exactly the stored values within Bits
Stored, for unsigned 12-bit and signed 16-bit CT; fewer bytes than the native frame; the
default answer is still the native octet-stream; a colour frame asked only as JPEG-LS is a
precise 406, never a 500."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from jpeg_ls import CharLS
from pydicom import dcmread
from pydicom.uid import generate_uid

from imaging.dicomweb import multipart
from imaging.service import Ingestor
from storage import identity
from storage import service as tenancy
from tests.dicomdata import ct_instance
from web.app import create_app

JLS = 'multipart/related; type="image/jls"; transfer-syntax=1.2.840.10008.1.2.4.80'
OCTETS = 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'


def _signed_ct(study: str) -> bytes:
    """A 16-bit signed CT whose values cross zero (-2000..2300), smooth as anatomy is."""
    ds = dcmread(io.BytesIO(ct_instance(study_uid=study, size=64)))
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 1
    y, x = np.mgrid[0:64, 0:64]
    ds.PixelData = ((x * 60 + y * 6) - 2000).astype("<i2").tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _rgb(study: str) -> bytes:
    ds = dcmread(io.BytesIO(ct_instance(study_uid=study, size=16)))
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelData = bytes(range(256)) * 3
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("backend", ["embedded"])
def test_grey_frames_travel_jpeg_ls_lossless_and_colour_is_refused_precisely(runtime, backend):
    with runtime.db.scope() as session:
        town = tenancy.add_institution(session=session, code="TOWN", name="勐朗镇卫生院", level="township").id
        user = identity.add_user(session=session, username="li", role="radiographer", institution_code="TOWN",
                                 password="password-1", display_name="李技师")
        token = identity.issue_token(session=session, user=user)[0]
    study = generate_uid()
    objects = {"ct12": ct_instance(study_uid=study, size=64, seed=3), "ct16s": _signed_ct(study), "rgb": _rgb(study)}
    ingestor = Ingestor(runtime.db, runtime.store)
    for data in objects.values():
        ingestor.ingest(data, institution_id=town, source="test")
    ingestor.close()
    with TestClient(create_app(runtime.settings)) as client:
        def frame(name: str, accept: str):
            ds = dcmread(io.BytesIO(objects[name]))
            url = (f"/dicom-web/studies/{study}/series/{ds.SeriesInstanceUID}/instances/"
                   f"{ds.SOPInstanceUID}/frames/1")
            return ds, client.get(url, headers={"Authorization": f"Bearer {token}", "Accept": accept})

        for name, mask in (("ct12", 0x0FFF), ("ct16s", 0xFFFF)):
            ds, answer = frame(name, JLS)
            assert answer.status_code == 200, answer.text
            boundary = answer.headers["content-type"].split("boundary=")[1].strip('"')
            (part,) = multipart.split(answer.content, boundary)
            headers, body = part.headers, part.content
            assert "image/jls" in headers["content-type"] and "1.2.840.10008.1.2.4.80" in headers["content-type"]
            decoded, info = CharLS.decode_buffer(body)
            stored = np.frombuffer(ds.PixelData, "<u2") & mask
            assert bytes(decoded) == stored.tobytes(), name  # lossless, value for value
            assert len(body) < len(ds.PixelData), (name, len(body))
            # Privately cacheable for the viewer's idle prefetch; varies by what was asked.
            assert answer.headers["cache-control"] == "private, max-age=600"
            assert answer.headers["vary"] == "Accept, Accept-Encoding"
            native = frame(name, OCTETS)[1]
            assert native.status_code == 200 and "application/octet-stream" in native.headers["content-type"]

        _, colour = frame("rgb", JLS)
        assert colour.status_code == 406 and "grey" in colour.json()["detail"], colour.text
