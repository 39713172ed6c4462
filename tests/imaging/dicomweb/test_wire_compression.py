"""Frames on the wire (18): uncompressed frames go gzipped to a client that accepts gzip, the
same bytes after inflating; a client that does not accept it gets them as they are; frames
stored compressed are never gzipped again."""

from __future__ import annotations

import gzip

import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from imaging.service import Ingestor
from storage import identity
from storage import service as tenancy
from tests.dicomdata import ct_instance
from web.app import create_app


@pytest.fixture(params=["embedded"])
def backend(request):
    return request.param


def test_uncompressed_frames_are_gzipped_for_clients_that_accept_it(runtime):
    with runtime.db.scope() as session:
        town = tenancy.add_institution(session=session, code="TOWN", name="镇", level="township")
        user = identity.add_user(session=session, username="rad", role="radiographer", institution_code="TOWN",
                                 password="password-1")
        token = identity.issue_token(session=session, user=user)[0]
        town_id = town.id
    ingestor = Ingestor(runtime.db, runtime.store)
    done = ingestor.ingest(ct_instance(study_uid=generate_uid(), size=256), institution_id=town_id, source="t")
    ingestor.close()
    path = (f"/dicom-web/studies/{done.study_instance_uid}/series/{done.series_instance_uid}/instances/"
            f"{done.sop_instance_uid}/frames/1")
    base = {"Authorization": f"Bearer {token}", "Accept": 'multipart/related; type="application/octet-stream"'}
    with TestClient(create_app(runtime.settings)) as client:
        plain = client.get(path, headers={**base, "Accept-Encoding": "identity"})
        packed = client.get(path, headers={**base, "Accept-Encoding": "gzip, deflate, br"})
        raw = client.stream("GET", path, headers={**base, "Accept-Encoding": "gzip"})
        with raw as answer:
            on_wire = b"".join(answer.iter_raw())
    assert plain.status_code == packed.status_code == 200
    assert "content-encoding" not in plain.headers and packed.headers["content-encoding"] == "gzip"
    assert "Accept-Encoding" in packed.headers["vary"]
    # The same multipart body after inflating, except the boundary each answer draws afresh.
    boundary = lambda r: r.headers["content-type"].split("boundary=")[1].strip('"')  # noqa: E731
    assert packed.content.replace(boundary(packed).encode(), b"B") == plain.content.replace(boundary(plain).encode(), b"B")
    assert len(on_wire) < 0.9 * len(plain.content) and gzip.decompress(on_wire)[:2] == b"--"
