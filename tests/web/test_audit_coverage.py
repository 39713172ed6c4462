"""13.6: every read of patient data is audited, with no exception.

Walks every GET and WebSocket route of the app. Each must be listed here, either as
carrying patient data (then one call, made as a user who may see it, must add an audit
record) or as carrying none (with the reason). A new route that is in neither list fails
the first test: whoever adds it decides, in this file, whether it reads patient data."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from film import service as shares
from imaging import derive
from imaging.models import Instance, Patient
from imaging.service import Ingestor
from storage import service as tenancy
from storage.access import SYSTEM
from storage.models import AuditRecord
from tests.dicomdata import ct_instance
from storage import identity
from web.app import create_app

# Routes that return no patient data, and why.
NO_PATIENT_DATA = {
    "/openapi.json": "the API description", "/docs": "Swagger UI", "/docs/oauth2-redirect": "Swagger UI",
    "/redoc": "ReDoc", "/static": "static files", "/healthz": "health of the platform",
    "/login": "the sign-in form", "/account/password": "the password form", "/": "a redirect to the role's daily list", "/menu": "the role's menu", "/upload": "the upload form (no study data)",
    "/api/me": "the caller's own account", "/api/report-templates": "report templates",
    "/api/specialists/free": "colleagues' free slots (no patient)", "/api/me/notifications/count": "a number",
    "/availability": "the caller's own working hours and leave",
    "/admin/users": "accounts of the admin's institutions (no patient data)",
    "/admin": "the referral tree and counts", "/admin/institutions": "the referral tree",
    "/admin/nodes": "registered AEs", "/admin/certificates": "specialists' signing certificates",
    "/calendar/feeds/{secret}.ics": "the bookings of the URL's user (consult numbers, roles, times; no clinical text)",
    "/notifications": "the caller's notices (as /api/me/notifications)", "/api/me/notifications": "the caller's notices "
    "(links to consults, which audit their own reads)", "/api/me/calendar.ics": "the caller's bookings (no "
    "clinical text)", "/api/dashboard": "counts only", "/consults/new": "the request form",
    "/dashboard": "counts only", "/calendar": "the caller's bookings", "/verify": "the verification form",
    "/f/{token}": "the PIN form (nothing of the study before the PIN)",
    "/api/rooms/{consult_id}/ice": "ICE server credentials",
    "/verify/{public_id}": "a version's kind, its signers' names and a hash (public: no patient data)",
    "/api/maternal/criteria": "the 2017 risk criteria list", "/api/referrals/counts": "counts only",
    "/admin/edges": "each edge's name, institution, last contact and backlog counts (no patient)",
    "/api/edge/studies/{study}/instances/{sop}": "an edge's own upload's offset (bytes held, no data)",
    "/desk/import-template.csv": "the desk's list template: a header row and a made-up example row",
}

# Routes that read patient data: audited. Every one is called below, as a user who may see
# it, and must add an audit record (the room page, its viewer, chat history and the
# recording list did not: found by this walker).
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
    "/api/studies/{study_uid}/measurements", "/api/studies/{study_uid}/key-images",
    "/api/studies/{study_uid}/shares", "/api/shares/{share_id}/film.pdf", "/api/studies/{study_uid}/film.pdf",
    "/studies/{study_uid}/film", "/f/{token}/view", "/f/{token}/img/{instance_id}/{frame}.jpg",
    "/f/{token}/th/{series_uid}.jpg", "/f/{token}/pv/{instance_id}.jpg", "/f/{token}/report.pdf",
    "/f/{token}/download",
    "/api/consults", "/api/consults/{consult_id}", "/api/consults/{consult_id}/report/versions/{number}.pdf",
    "/consults", "/consults/{consult_id}", "/ws/rooms/{consult_id}",
    "/consults/{consult_id}/room", "/consults/{consult_id}/room/viewer", "/api/rooms/{consult_id}/chat",
    "/api/rooms/{consult_id}/recordings", "/api/rooms/{consult_id}/recordings/{recording_id}",
    "/studies", "/studies/{study_uid}", "/studies/{study_uid}/thumbnail.jpg",
    "/studies/{study_uid}/series/{series_uid}/thumbnail.jpg", "/studies/{study_uid}/download",
    "/patients/{patient_pk}", "/admin/shares", "/admin/audit", "/studies/{study_uid}/compare",
    "/viewer/{study_uid}/mpr", "/studies/{study_uid}/layout", "/consults/{consult_id}/read",
    "/consults/{consult_id}/consent/{consent_id}/form", "/critical", "/critical.csv", "/critical/{finding_id}",
    "/api/critical",
    # maternal/: walked in tests/maternal/test_maternal_pages.py::test_every_maternal_get_route_audits_its_read
    "/api/patients/{patient_pk}/pregnancies", "/api/pregnancies/{pregnancy_id}", "/api/referrals",
    "/api/referrals/{referral_id}", "/patients/{patient_pk}/pregnancies", "/pregnancies/{pregnancy_id}",
    "/pregnancies/{pregnancy_id}/referrals/new", "/referrals", "/referrals/{referral_id}",
    "/desk",  # the edge's registration desk (names, ID numbers): walked below as the radiographer
    # the edge's transfer status (study descriptions, patients' names): 404 unless this install is an
    # edge (LANCANG_EDGE_REGION_URL); walked in tests/edge/test_forward.py
    # (test_the_status_page_audits_its_read_and_is_not_found_where_there_is_no_region)
    "/edge/status",
}
EDGE_ROUTES = {"/edge/status"}
MATERNAL_ROUTES = {p for p in AUDITED if "pregnanc" in p or "referral" in p}
CONSULT_ROUTES = {p for p in AUDITED if "consult" in p or "rooms" in p or "critical" in p
                  or p == "/f/{token}/report.pdf"}


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
        admin = identity.add_user(session=session, username="boss", role="admin", institution_code="TOWN",
                                  password="password-1")
        admin_token = identity.issue_token(session=session, user=admin)[0]
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
        patient_pk = session.scalar(select(Patient.id))
    values = {"patient_pk": str(patient_pk), "admin_token": admin_token, "study": study, "series": series, "sop": result.sop_instance_uid, "frames": "1", "tag": "7FE00010",
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
        for template in sorted(AUDITED - CONSULT_ROUTES - MATERNAL_ROUTES - EDGE_ROUTES):
            path = re.sub(r"\{([^}]+)\}", lambda m: values[m.group(1)], template)
            if template == "/objects/{key:path}":
                signed = runtime.store.url(values["key:path"], __import__("datetime").timedelta(minutes=5))
                path = "/" + signed.split("://", 1)[1].split("/", 1)[1]
            if template == "/dicom-web/wado":
                path += (f"?requestType=WADO&studyUID={values['study']}&seriesUID={values['series']}"
                         f"&objectUID={values['sop']}&contentType=application/dicom")
            before = _records(runtime)
            headers = {} if template.startswith(("/f/", "/objects/")) else bearer
            if template.startswith("/admin/"):
                headers = {"Authorization": f"Bearer {values['admin_token']}"}
            answer = client.get(path, headers={**headers, "Accept": "*/*"})
            assert answer.status_code < 400, (template, answer.status_code, answer.text[:200])
            if answer.status_code == 202:  # the film sheet is still being made: nothing served yet
                continue
            if _records(runtime) == before:
                missing.append(template)
        assert missing == [], f"patient data read without an audit record: {missing}"


# -- the consult and room routes ---------------------------------------------------------


@pytest.fixture
def consult_world(runtime):
    """Two consults at TOWN's request to COUNTY: a read with a co-signed final report, and a
    live one booked with wang, with a recording; a cloud-film link for the study."""
    from datetime import timedelta

    from consult import reports, scheduling
    from consult.room_models import Recording
    from storage.types import utcnow
    from tests.consult.test_flow import PEOPLE
    from tests.consult.test_rooms import live_consult

    tokens = {}
    with runtime.db.scope() as session:
        tenancy.add_institution(session=session, code="CITY", name="普洱市人民医院", level="city")
        tenancy.add_institution(session=session, code="COUNTY", name="澜沧县人民医院", level="county", parent_code="CITY")
        town = tenancy.add_institution(session=session, code="TOWN", name="勐朗镇卫生院", level="township",
                                       parent_code="COUNTY")
        town_id = town.id
        for username, (role, code, name) in PEOPLE.items():
            if code in ("CITY", "COUNTY", "TOWN"):
                user = identity.add_user(session=session, username=username, role=role, institution_code=code,
                                         password="password-1", display_name=name)
                tokens[username] = identity.issue_token(session=session, user=user)[0]
        reports.init_authority(session=session, name="测试CA", organisation="测试", password="ca-password-123")
        scheduling.set_weekly(session=session, user=identity.get_user(session=session, username="wang"),
                              windows=[(d, "00:00", "23:59") for d in range(7)])
        for username in ("wang", "chen"):
            reports.issue_credential(session=session, user=identity.get_user(session=session, username=username),
                                     ca_password="ca-password-123", signing_password=f"sign-{username}")
    ingestor = Ingestor(runtime.db, runtime.store)
    study = generate_uid()
    ingestor.ingest(ct_instance(study_uid=study, size=64), institution_id=town_id, source="test")
    ingestor.close()
    with TestClient(create_app(runtime.settings)) as client:
        def call(user, method, path, **kw):
            answer = client.request(method, path, headers={"Authorization": f"Bearer {tokens[user]}"}, **kw)
            assert answer.status_code < 300, (path, answer.text[:300])
            return answer.json()
        read = call("li", "POST", "/api/consults", json={"kind": "read", "target": "COUNTY", "study_uids": [study],
                                                         "clinical_question": "咳嗽"})["id"]
        call("zhou", "POST", f"/api/consults/{read}/accept")
        call("zhou", "POST", f"/api/consults/{read}/assign", json={"reader": "wang", "reviewer": "chen"})
        call("wang", "PUT", f"/api/consults/{read}/report/draft", json={
            "template": "ct_head", "findings": "所见", "impression": "印象", "recommendation": "", "fields": {}})
        call("wang", "POST", f"/api/consults/{read}/report/sign", json={"password": "sign-wang"})
        versions = call("chen", "POST", f"/api/consults/{read}/report/cosign", json={"password": "sign-chen"})["versions"]
        link = call("li", "POST", f"/api/studies/{study}/shares", json={"days": 7})
        finding = call("wang", "POST", "/api/critical", json={"study_uid": study, "consult_id": read,
                                                              "category": "颅内出血", "statement": "左颞叶血肿"})
        consent = call("li", "POST", f"/api/consults/{read}/consent", data={"signer": "patient"},
                       files={"form": ("c.pdf", b"%PDF-1.4 consent", "application/pdf")})
    live = live_consult(runtime, study, 0)
    runtime.store.put(f"recordings/{live}/walk.mp4", b"\0" * 64, content_type="video/mp4")
    with runtime.db.scope() as session:
        recording = Recording(consult_id=live, session="walk", object_key=f"recordings/{live}/walk.mp4", size=64,
                              started_at=utcnow(), ended_at=utcnow(), participants=["wang"],
                              retain_until=utcnow() + timedelta(days=1))
        session.add(recording)
        session.flush()
        recording_id = recording.id
    values = {"consult_id": str(read), "number": str(versions[-1]["number"]), "public_id": versions[-1]["public_id"],
              "token": link["url"].rsplit("/f/", 1)[1], "recording_id": str(recording_id),
              "finding_id": str(finding["id"]), "consent_id": str(consent["id"])}
    rooms_of = {"consult_id": str(live)}
    return tokens, values, rooms_of, link


@pytest.mark.parametrize("backend", ["embedded"])
def test_each_consult_and_room_route_writes_an_audit_record(runtime, consult_world, backend):
    tokens, values, rooms_of, link = consult_world
    missing = []
    with TestClient(create_app(runtime.settings)) as client:
        assert client.post("/login", data={"username": "wang", "password": "password-1"},
                           follow_redirects=False).status_code == 303
        patient = TestClient(client.app)
        assert patient.post(f"/f/{values['token']}/unlock", data={"pin": link["pin"]},
                            follow_redirects=False).status_code == 303
        for template in sorted(CONSULT_ROUTES):
            filled = rooms_of if "room" in template else values
            path = re.sub(r"\{([^}]+)\}", lambda m: filled.get(m.group(1), values.get(m.group(1), "")), template)
            before = _records(runtime)
            if template.startswith("/ws/"):
                with client.websocket_connect(path, headers={"origin": "http://testserver"}) as socket:
                    first = socket.receive_json()
                    assert first.get("type") != "error", first
            else:
                who = patient if template.startswith("/f/") else client
                headers = {} if template.startswith(("/f/", "/verify")) or "/room" in template and \
                    not template.startswith("/api/") else {"Authorization": f"Bearer {tokens['wang']}"}
                answer = who.get(path, headers=headers)
                assert answer.status_code < 400, (template, answer.status_code, answer.text[:200])
            if _records(runtime) == before:
                missing.append(template)
    assert missing == [], f"patient data read without an audit record: {missing}"
