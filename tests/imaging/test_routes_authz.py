"""Authorization matrix over the study API: each role x own/other institution x endpoint,
plus the admin subtree and explicit grants. Denials are audited."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from imaging.service import Ingestor
from storage import service as tenancy
from storage.models import AccessGrant, AuditRecord
from tests.dicomdata import ct_instance
from storage import identity as service
from web.app import create_app

ROLES = ("radiographer", "specialist", "coordinator", "admin")


@pytest.fixture
def world(runtime):
    """CITY > COUNTY > TOWN, and an unrelated OTHER township, one study each in TOWN and OTHER."""
    tokens = {}
    with runtime.db.scope() as session:
        tenancy.add_institution(session=session, code="CITY", name="普洱市人民医院", level="city")
        tenancy.add_institution(session=session, code="COUNTY", name="澜沧县人民医院", level="county", parent_code="CITY")
        town = tenancy.add_institution(session=session, code="TOWN", name="思茅镇卫生院", level="township",
                                       parent_code="COUNTY")
        other = tenancy.add_institution(session=session, code="OTHER", name="另一镇卫生院", level="township")
        for code in ("CITY", "COUNTY", "TOWN", "OTHER"):
            for role in ROLES:
                user = service.add_user(session=session, username=f"{code.lower()}-{role}", role=role,
                                        institution_code=code, password="password-1")
                tokens[(code, role)] = service.issue_token(session=session, user=user)[0]
        town_id, other_id = town.id, other.id
    ingestor = Ingestor(runtime.db, runtime.store)
    studies = {}
    for code, inst_id in (("TOWN", town_id), ("OTHER", other_id)):
        uid = generate_uid()
        ingestor.ingest(ct_instance(study_uid=uid, patient_id=f"{code}-P1"), institution_id=inst_id, source="test")
        studies[code] = uid
    ingestor.close()
    return tokens, studies


@pytest.fixture
def client(runtime):
    with TestClient(create_app(runtime.settings)) as client:
        yield client


def _visible(client, token) -> set[str]:
    response = client.get("/api/studies", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    return {item["study_instance_uid"] for item in response.json()["items"]}


def _detail(client, token, uid) -> int:
    return client.get(f"/api/studies/{uid}", headers={"Authorization": f"Bearer {token}"}).status_code


@pytest.mark.parametrize("role", ROLES)
def test_own_institution_visible_other_not(client, world, role):
    tokens, studies = world
    token = tokens[("TOWN", role)]
    assert _visible(client, token) == {studies["TOWN"]}
    assert _detail(client, token, studies["TOWN"]) == 200
    assert _detail(client, token, studies["OTHER"]) == 404


@pytest.mark.parametrize("role", ROLES)
def test_upper_levels_see_below_only_as_admin(client, world, role):
    tokens, studies = world
    for code in ("COUNTY", "CITY"):
        token = tokens[(code, role)]
        expected = {studies["TOWN"]} if role == "admin" else set()
        assert _visible(client, token) == expected
        assert _detail(client, token, studies["TOWN"]) == (200 if role == "admin" else 404)
        assert _detail(client, token, studies["OTHER"]) == 404


def test_anonymous_is_refused_on_every_endpoint(client, world):
    _, studies = world
    assert client.get("/api/studies").status_code == 401
    assert client.get(f"/api/studies/{studies['TOWN']}").status_code == 401


def test_grant_opens_one_study_to_one_user(client, world, runtime):
    tokens, studies = world
    reader = tokens[("COUNTY", "specialist")]
    with runtime.db.scope() as session:
        user = service.get_user(session=session, username="county-specialist")
        session.add(AccessGrant(study_instance_uid=studies["TOWN"], grantee_user_id=user.id, source="consult:1"))
    assert _visible(client, reader) == {studies["TOWN"]}
    assert _detail(client, reader, studies["TOWN"]) == 200
    assert _detail(client, tokens[("COUNTY", "coordinator")], studies["TOWN"]) == 404


def test_reads_and_denials_are_audited(client, world, runtime):
    tokens, studies = world
    _detail(client, tokens[("TOWN", "specialist")], studies["TOWN"])
    _detail(client, tokens[("OTHER", "specialist")], studies["TOWN"])
    with runtime.db.scope(readonly=True) as session:
        rows = session.query(AuditRecord).filter_by(action="study.read", object_id=studies["TOWN"]).all()
    assert {(r.actor, r.outcome) for r in rows} == {("town-specialist", "ok"), ("other-specialist", "denied")}


def test_chinese_name_search(client, world):
    tokens, studies = world
    token = tokens[("TOWN", "radiographer")]
    found = client.get("/api/studies", params={"patient_name": "张*"}, headers={"Authorization": f"Bearer {token}"})
    assert [i["patient_name"] for i in found.json()["items"]] == ["张^秀英"]
    none = client.get("/api/studies", params={"patient_name": "王*"}, headers={"Authorization": f"Bearer {token}"})
    assert none.json()["items"] == []


@pytest.mark.parametrize("role", ROLES)
def test_who_may_upload(client, world, role):
    """13 (Low): any role could STOW before; now radiographers and admins, into their own
    institution, on STOW-RS and on the upload page alike."""
    from imaging.dicomweb import multipart

    tokens, _ = world
    body = multipart.encode([("application/dicom", ct_instance(study_uid=generate_uid(), patient_id=f"UP-{role}"))],
                            "XyZ")
    answer = client.post("/dicom-web/studies", content=body, headers={
        "Authorization": f"Bearer {tokens[('TOWN', role)]}",
        "Content-Type": 'multipart/related; type="application/dicom"; boundary=XyZ'})
    allowed = role in ("radiographer", "admin")
    assert answer.status_code == (200 if allowed else 403), answer.text
    page = client.get("/upload", headers={"Authorization": f"Bearer {tokens[('TOWN', role)]}"})
    assert page.status_code == (200 if allowed else 403)


def test_urls_in_answers_come_from_the_public_url_not_the_host_header(runtime, world):
    """14.8: with LANCANG_PUBLIC_URL unset, a Host header without the port made every
    BulkDataURI/RetrieveURL point at port 80 (fails on the previous code)."""
    tokens, studies = world
    settings = runtime.settings.model_copy(update={"public_url": "", "bind_host": "127.0.0.1", "http_port": 8123})
    with TestClient(create_app(settings)) as client:
        answer = client.get(f"/dicom-web/studies/{studies['TOWN']}/metadata", headers={
            "Authorization": f"Bearer {tokens[('TOWN', 'radiographer')]}", "Host": "127.0.0.1"})
    assert answer.status_code == 200
    uris = [v["BulkDataURI"] for item in answer.json() for v in item.values() if "BulkDataURI" in v]
    assert uris and all(u.startswith("http://127.0.0.1:8123/dicom-web/") for u in uris), uris
