"""13.6: every read of patient data is audited, with no exception.

Walks every GET and WebSocket route of the app. Each must be listed here, either as
carrying patient data (then one call, made as a user who may see it, must add an audit
record) or as carrying none (with the reason). A new route that is in neither list fails
the first test: whoever adds it decides, in this file, whether it reads patient data."""

from __future__ import annotations

import io
import re

import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from imaging import derive, shares
from imaging.models import Instance
from imaging.service import Ingestor
from storage import service as tenancy
from storage.access import SYSTEM
from storage.models import AuditRecord
from tests.dicomdata import ct_instance
from web import service as identity
from web.app import create_app

# Routes that return no patient data, and why.
NO_PATIENT_DATA = {
    "/openapi.json": "the API description", "/docs": "Swagger UI", "/docs/oauth2-redirect": "Swagger UI",
    "/redoc": "ReDoc", "/static": "static files", "/healthz": "health of the platform",
    "/login": "the sign-in form", "/": "the role's menu", "/upload": "the upload form (no study data)",
    "/api/me": "the caller's own account", "/api/report-templates": "report templates",
    "/api/specialists/free": "colleagues' free slots (no patient)", "/api/me/notifications": "the caller's notices "
    "(links to consults, which audit their own reads)", "/api/me/calendar.ics": "the caller's bookings (no "
    "clinical text)", "/api/dashboard": "counts only", "/consults/new": "the request form",
    "/dashboard": "counts only", "/calendar": "the caller's bookings", "/verify": "the verification form",
    "/f/{token}": "the PIN form (nothing of the study before the PIN)",
    "/api/rooms/{consult_id}/ice": "ICE server credentials",
}

# Routes that read patient data: audited. Those with a {placeholder} this test can fill are
# called below; the consult and room routes are called in tests/consult (test_flow asserts
# consult.read, test_rooms room.join, test_reportpdf the report downloads).
AUDITED = {
    "/dicom-web/studies", "/dicom-web/series", "/dicom-web/instances",
    "/dicom-web/studies/{study}/series", "/dicom-web/studies/{study}/instances",
    "/dicom-web/studies/{study}/series/{series}/instances", "/dicom-web/studies/{study}",
    "/dicom-web/studies/{study}/series/{series}", "/dicom-web/studies/{study}/series/{series}/instances/{sop}",
    "/dicom-web/studies/{study}/metadata", "/dicom-web/studies/{study}/series/{series}/metadata",
    "/dicom-web/studies/{study}/series/{series}/instances/{sop}/metadata",
    "/dicom-web/studies/{study}/series/{series}/instances/{sop}/frames/{frames}",
    "/dicom-web/studies/{study}/series/{series}/instances/{sop}/bulkdata/{tag}",
    "/dicom-web/studies/{study}/rendered", "/dicom-web/studies/{study}/series/{series}/rendered",
    "/dicom-web/studies/{study}/series/{series}/instances/{sop}/rendered",
    "/dicom-web/studies/{study}/series/{series}/instances/{sop}/frames/{frames}/rendered",
    "/dicom-web/studies/{study}/thumbnail", "/dicom-web/studies/{study}/series/{series}/thumbnail",
    "/dicom-web/studies/{study}/series/{series}/instances/{sop}/thumbnail", "/dicom-web/wado",
    "/objects/{key:path}", "/studies/{study_uid}/view", "/api/studies", "/api/studies/{study_uid}",
    "/api/studies/{study_uid}/shares", "/api/shares/{share_id}/film.pdf", "/api/studies/{study_uid}/film.pdf",
    "/studies/{study_uid}/film", "/f/{token}/view", "/f/{token}/img/{instance_id}/{frame}.jpg",
    "/f/{token}/th/{series_uid}.jpg", "/f/{token}/pv/{instance_id}.jpg", "/f/{token}/report.pdf",
    "/f/{token}/download",
    "/api/consults", "/api/consults/{consult_id}", "/api/consults/{consult_id}/report/versions/{number}.pdf",
    "/consults", "/consults/{consult_id}", "/verify/{public_id}", "/ws/rooms/{consult_id}",
    "/consults/{consult_id}/room", "/consults/{consult_id}/room/viewer", "/api/rooms/{consult_id}/chat",
    "/api/rooms/{consult_id}/recordings", "/api/rooms/{consult_id}/recordings/{recording_id}",
}
CALLED_ELSEWHERE = {p for p in AUDITED if "consult" in p or "rooms" in p or p in (
    "/consults", "/verify/{public_id}", "/f/{token}/report.pdf")}  # the last needs a signed report


def get_routes(app) -> set[str]:
    found = set()

    def walk(routes, prefix=""):
        for route in routes:
            if type(route).__name__ == "_IncludedRouter":
                walk(route.original_router.routes, prefix + (getattr(route.include_context, "prefix", "") or ""))
            elif hasattr(route, "routes") and not hasattr(route, "path"):
                walk(route.routes, prefix)
            else:
                methods = getattr(route, "methods", None)
                if methods is None or "GET" in methods:
                    found.add(prefix + route.path)
    walk(app.routes)
    return found


def test_every_route_is_classified(runtime):
    routes = get_routes(create_app(runtime.settings))
    assert len(routes) > 60
    assert routes - AUDITED - set(NO_PATIENT_DATA) == set(), "classify these routes in this file"
    assert AUDITED & set(NO_PATIENT_DATA) == set()
    assert (AUDITED | set(NO_PATIENT_DATA)) - routes == set(), "stale entries"


@pytest.fixture
def world(runtime):
    with runtime.db.scope() as session:
        tenancy.add_institution(session=session, code="TOWN", name="镇卫生院", level="township")
        user = identity.add_user(session=session, username="rad", role="radiographer", institution_code="TOWN",
                                 password="password-1")
        token = identity.issue_token(session=session, user=user)[0]
        town = user.institution_id
    ingestor = Ingestor(runtime.db, runtime.store)
    study, series = generate_uid(), generate_uid()
    result = ingestor.ingest(ct_instance(study_uid=study, series_uid=series, size=64), institution_id=town,
                             source="test")
    ingestor.close()
    derive.derive_series(runtime.db, runtime.store, result.series_pk)
    with runtime.db.scope() as session:
        created = shares.create_share(session=session, principal=SYSTEM, study_uid=study,
                                      secret_key=runtime.settings.effective_secret_key,
                                      public_url=runtime.settings.effective_public_url)
        link = created.as_json()
        instance_id = session.scalar(select(Instance.id))
    values = {"study": study, "series": series, "sop": result.sop_instance_uid, "frames": "1", "tag": "7FE00010",
              "study_uid": study, "series_uid": series, "instance_id": str(instance_id), "frame": "0",
              "share_id": str(link["id"]), "token": link["url"].rsplit("/f/", 1)[1],
              "key:path": result.object_key}
    return token, values, link


def _records(runtime) -> int:
    with runtime.db.scope(readonly=True) as session:
        return session.scalar(select(func.count()).select_from(AuditRecord))


@pytest.mark.parametrize("backend", ["embedded"])
def test_each_patient_data_route_writes_an_audit_record(runtime, world, backend):
    token, values, link = world
    bearer = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(runtime.settings)) as client:
        unlocked = client.post(f"/f/{values['token']}/unlock", data={"pin": link["pin"]}, follow_redirects=False)
        assert unlocked.status_code == 303
        missing = []
        for template in sorted(AUDITED - CALLED_ELSEWHERE):
            path = re.sub(r"\{([^}]+)\}", lambda m: values[m.group(1)], template)
            if template == "/objects/{key:path}":
                signed = runtime.store.url(values["key:path"], __import__("datetime").timedelta(minutes=5))
                path = "/" + signed.split("://", 1)[1].split("/", 1)[1]
            if template == "/dicom-web/wado":
                path += (f"?requestType=WADO&studyUID={values['study']}&seriesUID={values['series']}"
                         f"&objectUID={values['sop']}&contentType=application/dicom")
            before = _records(runtime)
            headers = {} if template.startswith(("/f/", "/objects/")) else bearer
            answer = client.get(path, headers={**headers, "Accept": "*/*"})
            assert answer.status_code < 400, (template, answer.status_code, answer.text[:200])
            if answer.status_code == 202:  # the film sheet is still being made: nothing served yet
                continue
            if _records(runtime) == before:
                missing.append(template)
        assert missing == [], f"patient data read without an audit record: {missing}"
