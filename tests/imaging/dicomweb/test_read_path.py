"""The DICOMweb read path after the per-request work was cut down (README, DICOMweb benchmark):
the read lane (imaging/dicomweb/lane.py), the prepared token and index lookups
(storage.db.Prepared), the read audit on the driver's connection, and the rendered frame's
header cache (imaging/dicomweb/render.py). What must not change: a revoked token or a
disabled user is refused at the next request, even when another process made the change;
another institution's study is still a 404 (and a denial is audited); grants open and close
studies at once; every read is audited before its answer; errors and security headers are
as FastAPI's routes answer them."""

from __future__ import annotations

import io
from datetime import timedelta

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from imaging import pixels
from imaging.dicomweb import render
from imaging.models import Instance
from imaging.service import Ingestor
from storage import identity
from storage import service as tenancy
from storage.db import Database
from storage.models import AccessGrant, AuditRecord
from storage.types import utcnow
from tests.dicomdata import ct_instance
from web.app import create_app


@pytest.fixture
def world(runtime):
    """TOWN and OTHER townships, one CT study each; a specialist at each with a token."""
    tokens = {}
    with runtime.db.scope() as session:
        ids = {code: tenancy.add_institution(session=session, code=code, name=f"{code} 卫生院", level="township").id
               for code in ("TOWN", "OTHER")}
        for code in ids:
            user = identity.add_user(session=session, username=f"{code.lower()}-reader", role="specialist",
                                     institution_code=code, password="password-1")
            tokens[code] = identity.issue_token(session=session, user=user)[0]
    ingestor = Ingestor(runtime.db, runtime.store)
    uids = {}
    for code, inst_id in ids.items():
        study, series, sop = generate_uid(), generate_uid(), generate_uid()
        ingestor.ingest(ct_instance(study_uid=study, series_uid=series, sop_uid=sop, patient_id=f"{code}-P1"),
                        institution_id=inst_id, source="test")
        uids[code] = (study, series, sop)
    ingestor.close()
    return tokens, uids


@pytest.fixture
def client(runtime):
    with TestClient(create_app(runtime.settings)) as client:
        yield client


def _frame(uids) -> str:
    study, series, sop = uids
    return f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/frames/1/rendered"


def _get(client, token, path, **params):
    return client.get(path, params=params, headers={"Authorization": f"Bearer {token}", "Accept": "image/jpeg"}
                      if path.endswith("rendered") else {"Authorization": f"Bearer {token}"})


def _audits(runtime, action: str) -> int:
    with runtime.db.scope(readonly=True) as session:
        return session.scalar(select(func.count()).select_from(AuditRecord).where(AuditRecord.action == action))


def _elsewhere(runtime) -> Database:
    """The same database opened a second time: what another web worker or the CLI holds."""
    return Database(runtime.settings.effective_database_url)


def test_a_revoked_token_is_refused_at_the_next_request_even_from_another_process(client, world, runtime):
    tokens, uids = world
    token = tokens["TOWN"]
    assert _get(client, token, _frame(uids["TOWN"])).status_code == 200
    assert _get(client, token, "/dicom-web/studies", PatientID="TOWN-P1").status_code == 200
    other = _elsewhere(runtime)
    try:
        with other.scope() as session:
            identity.revoke_token(session=session, secret=token)
    finally:
        other.dispose()
    for path, params in ((_frame(uids["TOWN"]), {}), ("/dicom-web/studies", {"PatientID": "TOWN-P1"})):
        refused = _get(client, token, path, **params)
        assert refused.status_code == 401 and "revoked" in refused.json()["detail"]


def test_a_disabled_user_is_refused_at_the_next_request(client, world, runtime):
    tokens, uids = world
    assert _get(client, tokens["TOWN"], _frame(uids["TOWN"])).status_code == 200
    other = _elsewhere(runtime)
    try:
        with other.scope() as session:
            identity.set_user_active(session=session, username="town-reader", active=False)
    finally:
        other.dispose()
    refused = _get(client, tokens["TOWN"], _frame(uids["TOWN"]))
    assert refused.status_code == 401 and "disabled" in refused.json()["detail"]
    with runtime.db.scope() as session:
        identity.set_user_active(session=session, username="town-reader", active=True)
    assert _get(client, tokens["TOWN"], _frame(uids["TOWN"])).status_code == 200


def test_another_institutions_study_is_still_not_found_and_the_denial_audited(client, world, runtime):
    tokens, uids = world
    study, series, sop = uids["OTHER"]
    base = f"/dicom-web/studies/{study}"
    for path in (_frame(uids["OTHER"]), f"{base}/series/{series}/instances/{sop}/rendered",
                 f"{base}/series/{series}/thumbnail", f"{base}/metadata", base):
        assert _get(client, tokens["TOWN"], path).status_code == 404, path
    assert _get(client, tokens["TOWN"], "/dicom-web/studies", PatientID="OTHER-P1").json() == []
    with runtime.db.scope(readonly=True) as session:
        denied = session.scalars(select(AuditRecord.action).where(AuditRecord.outcome == "denied",
                                                                  AuditRecord.actor == "town-reader")).all()
    assert "dicomweb.rendered" in denied and "dicomweb.metadata" in denied


def test_grants_open_and_close_a_study_at_once(client, world, runtime):
    tokens, uids = world
    study = uids["OTHER"][0]
    with runtime.db.scope() as session:
        grant = AccessGrant(study_instance_uid=study, grantee_user_id=identity.get_user(
            session=session, username="town-reader").id, source="consult:1",
                            expires_at=utcnow() + timedelta(hours=1))
        session.add(grant)
        session.flush()
        grant_id = grant.id
    assert _get(client, tokens["TOWN"], _frame(uids["OTHER"])).status_code == 200
    with runtime.db.scope() as session:
        session.get(AccessGrant, grant_id).expires_at = utcnow() - timedelta(seconds=1)
    assert _get(client, tokens["TOWN"], _frame(uids["OTHER"])).status_code == 404


def test_every_read_is_audited_once(client, world, runtime):
    tokens, uids = world
    before = _audits(runtime, "dicomweb.rendered"), _audits(runtime, "dicomweb.search")
    for _ in range(3):
        assert _get(client, tokens["TOWN"], _frame(uids["TOWN"])).status_code == 200
        assert _get(client, tokens["TOWN"], "/dicom-web/studies", PatientID="TOWN-P1").status_code == 200
    assert (_audits(runtime, "dicomweb.rendered"), _audits(runtime, "dicomweb.search")) == (before[0] + 3,
                                                                                           before[1] + 3)
    with runtime.db.scope(readonly=True) as session:
        from storage import audit
        assert audit.verify(session).ok


def test_the_read_lane_answers_errors_and_headers_as_the_routes_do(client, world):
    tokens, uids = world
    anonymous = client.get(_frame(uids["TOWN"]))
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "not_authenticated"
    bad = _get(client, tokens["TOWN"], "/dicom-web/studies/" + "1" * 200 + "/metadata")
    assert bad.status_code == 400 and bad.json()["error"] == "bad_request"
    frame_zero = _get(client, tokens["TOWN"], _frame(uids["TOWN"]).replace("/frames/1/", "/frames/0/"))
    assert frame_zero.status_code == 400
    ok = _get(client, tokens["TOWN"], _frame(uids["TOWN"]))
    assert ok.headers["x-content-type-options"] == "nosniff" and "content-security-policy" in ok.headers
    assert client.head(_frame(uids["TOWN"]), headers={"Authorization": f"Bearer {tokens['TOWN']}"}).status_code \
        in (200, 405)  # HEAD is FastAPI's, as before


def test_a_rendered_frame_is_the_same_from_the_header_cache(client, world, runtime, monkeypatch):
    tokens, uids = world
    sop = uids["TOWN"][2]
    with runtime.db.scope(readonly=True) as session:
        key = session.scalar(select(Instance.object_key).where(Instance.sop_instance_uid == sop))
    render._native_headers.pop(key, None)
    first = _get(client, tokens["TOWN"], _frame(uids["TOWN"]), window="40,400")
    assert first.status_code == 200 and key in render._native_headers

    def no_parsing(*args, **kwargs):
        raise AssertionError("a cached native header needs no parse")

    monkeypatch.setattr(render, "dcmread", no_parsing)
    again = _get(client, tokens["TOWN"], _frame(uids["TOWN"]), window="40,400")
    assert again.status_code == 200 and again.content == first.content
    ds = pydicom.dcmread(io.BytesIO(runtime.store.get(key)))
    assert again.content == pixels.render(ds, 0, media_type="image/jpeg", window="40,400")
    thumb = _get(client, tokens["TOWN"], _frame(uids["TOWN"]).replace("/frames/1/rendered", "/thumbnail"))
    assert thumb.status_code == 200
    assert np.asarray(pixels.render_frame(ds, 0)).shape == (ds.Rows, ds.Columns)


def test_a_default_thumbnail_is_the_workers_preview(client, world, runtime):
    """The worker's preview of a single-frame instance is what this resource renders for a
    JPEG thumbnail without a viewport: served as stored; rendered when it is missing."""
    from imaging import derive
    from imaging.models import Series

    tokens, uids = world
    study, series, sop = uids["TOWN"]
    with runtime.db.scope(readonly=True) as session:
        series_pk = session.scalar(select(Series.id).where(Series.series_instance_uid == series))
        key = session.scalar(select(Instance.object_key).where(Instance.sop_instance_uid == sop))
    assert derive.derive_series(runtime.db, runtime.store, series_pk).status == "done"
    with runtime.db.scope(readonly=True) as session:
        preview = session.scalar(select(Instance.preview_key).where(Instance.sop_instance_uid == sop))
    path = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}/thumbnail"
    served = _get(client, tokens["TOWN"], path)
    ds = pydicom.dcmread(io.BytesIO(runtime.store.get(key)))
    assert served.status_code == 200 and served.content == runtime.store.get(preview)
    assert served.content == pixels.thumbnail(ds, render.THUMBNAIL_SIZE)
    runtime.store.delete(preview)
    rendered = _get(client, tokens["TOWN"], path)
    assert rendered.status_code == 200 and rendered.content == served.content
    assert _get(client, tokens["OTHER"], path).status_code == 404
