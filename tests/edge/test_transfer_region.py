"""The region's edge API (/api/edge): credentials, manifests, resumable verified uploads and
the completion check, on both backends (SQLite + files, PostgreSQL + S3)."""

from __future__ import annotations

import re
import socket
import threading
import time

import pytest
import uvicorn
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from edge import region
from edge.models import EdgeNode
from imaging.models import Instance
from imaging.service import Ingestor
from storage import service as tenancy
from storage.models import AuditRecord
from tests.dicomdata import ct_instance
from tests.edge.transfer_world import PASSWORD, bearer, build_region, gz, region_app, sha
from tests.services import free_port


@pytest.fixture
def world(runtime):
    return build_region(runtime.db)


@pytest.fixture
def client(runtime):
    with TestClient(region_app(runtime.settings)) as client:
        yield client


def _audits(runtime, action: str, outcome: str | None = None) -> list[AuditRecord]:
    with runtime.db.scope(readonly=True) as session:
        query = select(AuditRecord).where(AuditRecord.action == action)
        if outcome:
            query = query.where(AuditRecord.outcome == outcome)
        rows = list(session.scalars(query.order_by(AuditRecord.seq)))
        session.expunge_all()
        return rows


def _manifest(client, secret: str, study: str, blobs: dict[str, bytes], shas: dict[str, str] | None = None):
    items = [{"sop": sop, "sha256": (shas or {}).get(sop, sha(data)), "size": len(data)} for sop, data in blobs.items()]
    return client.put(f"/api/edge/studies/{study}/manifest", json={"instances": items}, headers=bearer(secret))


def _put(client, secret: str, study: str, sop: str, offset: int, body: bytes, encoding: str = "gzip"):
    return client.put(f"/api/edge/studies/{study}/instances/{sop}", params={"offset": offset}, content=body,
                      headers={**bearer(secret), "Content-Encoding": encoding})


def _instance(study: str, number: int = 1, size: int = 128) -> tuple[str, bytes]:
    sop = generate_uid()
    return sop, ct_instance(study_uid=study, sop_uid=sop, instance_number=number, size=size, seed=number)


def _stored(runtime, sop: str) -> bytes:
    with runtime.db.scope(readonly=True) as session:
        key = session.scalar(select(Instance.object_key).where(Instance.sop_instance_uid == sop))
    return runtime.store.get(key)


def test_a_wrong_revoked_or_disabled_credential_is_refused_and_audited(runtime, world, client):
    good = world.credentials["t01-edge"]
    assert client.post("/api/edge/hello", json={}).status_code == 401
    assert client.post("/api/edge/hello", json={}, headers=bearer("lce_" + "x" * 43)).status_code == 401
    assert client.put(f"/api/edge/studies/{generate_uid()}/manifest", json={"instances": []},
                      headers=bearer("lce_wrong")).status_code == 401
    answer = client.post("/api/edge/hello", json={"version": "0.1.0", "backlog_studies": 3, "backlog_bytes": 5_000},
                         headers=bearer(good))
    assert answer.status_code == 200 and answer.json()["edge"] == "t01-edge"
    with runtime.db.scope() as session:
        region.revoke_credential(session=session, name="t02-edge")
    revoked = client.post("/api/edge/hello", json={}, headers=bearer(world.credentials["t02-edge"]))
    assert revoked.status_code == 401 and "revoked" in revoked.json()["detail"]
    with runtime.db.scope() as session:
        tenancy.set_institution_active(session=session, code="T01", active=False)
    assert client.post("/api/edge/hello", json={}, headers=bearer(good)).status_code == 401
    refused = _audits(runtime, "edge.auth.refused", "denied")
    assert len(refused) == 5 and {r.detail["path"] for r in refused} >= {"/api/edge/hello"}
    with runtime.db.scope(readonly=True) as session:  # the hello was noted for the console; only a hash is kept
        edge = session.scalar(select(EdgeNode).where(EdgeNode.name == "t01-edge"))
        assert (edge.version, edge.backlog_studies, edge.backlog_bytes) == ("0.1.0", 3, 5_000)
        assert edge.credential_hash == region.hash_credential(good) and good not in edge.credential_hash


def test_another_institutions_study_is_refused_403_or_409_and_audited(runtime, world, client):
    theirs = generate_uid()  # indexed here already, under T02 (as C-STORE would have)
    ingestor = Ingestor(runtime.db, runtime.store)
    ingestor.ingest(_instance(theirs)[1], institution_id=world.institutions["T02"], source="test")
    ingestor.close()
    sop, data = _instance(theirs, 2)
    answer = _manifest(client, world.credentials["t01-edge"], theirs, {sop: data})
    assert answer.status_code == 403
    in_flight = generate_uid()  # announced by T02's edge, not indexed yet
    sop2, data2 = _instance(in_flight)
    assert _manifest(client, world.credentials["t02-edge"], in_flight, {sop2: data2}).status_code == 200
    assert _manifest(client, world.credentials["t01-edge"], in_flight, {sop2: data2}).status_code == 409
    refusals = _audits(runtime, "edge.study.refused", "denied")
    assert [(r.object_id, r.detail["status"], r.actor) for r in refusals] == [
        (theirs, 403, "edge:t01-edge"), (in_flight, 409, "edge:t01-edge")]


def test_an_upload_resumes_at_the_offset_held_without_resending(runtime, world, client):
    secret, study = world.credentials["t01-edge"], generate_uid()
    sop, data = _instance(study, size=256)
    answer = _manifest(client, secret, study, {sop: data}).json()
    assert answer["instances"] == [{"sop": sop, "done": False, "offset": 0}]
    half = len(data) // 2
    first = _put(client, secret, study, sop, 0, gz(data[:half // 2]) + gz(data[half // 2:half]))  # two members
    assert first.json() == {"done": False, "offset": half}
    again = _put(client, secret, study, sop, 0, gz(data[:half]))  # an edge that lost the answer
    assert again.status_code == 409 and again.json()["error"] == "offset" and again.json()["offset"] == half
    state = client.get(f"/api/edge/studies/{study}/instances/{sop}", headers=bearer(secret)).json()
    assert state == {"done": False, "offset": half, "size": len(data)}
    last = _put(client, secret, study, sop, half, gz(data[half:]))
    assert last.json() == {"done": True, "offset": len(data), "outcome": "stored"}
    assert _stored(runtime, sop) == data  # byte-identical, File Meta included
    stored = _audits(runtime, "edge.instance.store")
    assert [(r.object_id, r.actor, r.institution) for r in stored] == [(sop, "edge:t01-edge", "T01")]
    assert not list((runtime.settings.data_dir / "edge_uploads").rglob("*.part"))  # cleaned up


def test_bytes_that_do_not_match_the_sha256_are_refused_and_discarded(runtime, world, client):
    secret, study = world.credentials["t01-edge"], generate_uid()
    sop, data = _instance(study)
    damaged = data[:-10] + bytes(10)
    _manifest(client, secret, study, {sop: data})
    refused = _put(client, secret, study, sop, 0, gz(damaged))
    assert refused.status_code == 422 and refused.json()["error"] == "sha256_mismatch"
    assert client.get(f"/api/edge/studies/{study}/instances/{sop}", headers=bearer(secret)).json()["offset"] == 0
    with runtime.db.scope(readonly=True) as session:
        assert session.scalar(select(func.count()).select_from(Instance)
                              .where(Instance.sop_instance_uid == sop)) == 0
    assert _audits(runtime, "edge.instance.refused", "denied")[0].detail["reason"].startswith("sha256 mismatch")
    assert _put(client, secret, study, sop, 0, gz(data)).json()["done"] is True


def test_repeats_are_idempotent_and_an_instance_held_already_is_not_sent_again(runtime, world, client):
    secret, study = world.credentials["t01-edge"], generate_uid()
    sent, data = _instance(study, 1)
    held, held_data = _instance(study, 2)  # the region has it already (a C-STORE earlier)
    ingestor = Ingestor(runtime.db, runtime.store)
    ingestor.ingest(held_data, institution_id=world.institutions["T01"], source="test")
    ingestor.close()
    answer = _manifest(client, secret, study, {sent: data, held: held_data}).json()["instances"]
    assert answer == [{"sop": sent, "done": False, "offset": 0}, {"sop": held, "done": True, "offset": len(held_data)}]
    assert _put(client, secret, study, sent, 0, gz(data)).json()["outcome"] == "stored"
    repeat = _put(client, secret, study, sent, 0, gz(data))
    assert repeat.json() == {"done": True, "offset": len(data)}
    again = _manifest(client, secret, study, {sent: data, held: held_data}).json()["instances"]
    assert all(item["done"] for item in again)
    with runtime.db.scope(readonly=True) as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 2
    assert len(_audits(runtime, "edge.instance.store")) == 1


def test_complete_only_when_every_instance_is_verified_and_indexed(runtime, world, client):
    secret, study = world.credentials["t01-edge"], generate_uid()
    blobs = dict(_instance(study, n) for n in (1, 2, 3))
    sops = list(blobs)
    _manifest(client, secret, study, blobs)
    for sop in sops[:2]:
        assert _put(client, secret, study, sop, 0, gz(blobs[sop])).json()["done"]
    half = len(blobs[sops[2]]) // 2
    _put(client, secret, study, sops[2], 0, gz(blobs[sops[2]][:half]))
    early = client.post(f"/api/edge/studies/{study}/complete", headers=bearer(secret)).json()
    assert (early["complete"], early["verified"], early["missing"]) == (False, 2, [sops[2]])
    with runtime.db.scope(readonly=True) as session:
        assert region.transfer_state(session=session, study_uid=study)["complete"] is False
    assert _study_page_says(runtime, study) == ("no", "已校验 2/3 幅，尚未收齐")
    assert _put(client, secret, study, sops[2], half, gz(blobs[sops[2]][half:])).json()["done"]
    done = client.post(f"/api/edge/studies/{study}/complete", headers=bearer(secret)).json()
    assert (done["complete"], done["verified"], done["missing"]) == (True, 3, [])
    assert _study_page_says(runtime, study) == ("yes", "全部 3 幅已校验")
    assert [r.outcome for r in _audits(runtime, "edge.study.complete")] == ["failed", "ok"]
    more = {**blobs, **dict([_instance(study, 4)])}  # a series added later: not complete until it is sent
    _manifest(client, secret, study, more)
    assert client.post(f"/api/edge/studies/{study}/complete", headers=bearer(secret)).json()["complete"] is False


def _study_page_says(runtime, study: str) -> tuple[str, str]:
    """What the region's study page says of the edge's transfer: (data-complete, its words)."""
    with TestClient(region_app(runtime.settings)) as reader:
        reader.post("/login", data={"username": "county-admin", "password": PASSWORD})
        page = reader.get(f"/studies/{study}")
    assert page.status_code == 200, page.text[:300]
    found = re.search(r'id="edge-transfer" data-complete="(\w+)">.*?(已校验 \d+/\d+ 幅，尚未收齐|全部 \d+ 幅已校验)',
                      page.text, re.S)
    assert found, page.text[:3000]
    return found.group(1), found.group(2)


def test_the_data_must_be_the_instance_and_study_the_manifest_named(runtime, world, client):
    secret, study = world.credentials["t01-edge"], generate_uid()
    sop, _ = _instance(study)
    elsewhere = ct_instance(study_uid=generate_uid(), sop_uid=sop)  # right SOP, another study
    _manifest(client, secret, study, {sop: elsewhere})
    refused = _put(client, secret, study, sop, 0, gz(elsewhere))
    assert refused.status_code == 422 and "not what the manifest named" in refused.json()["detail"]
    junk = b"not dicom at all" * 100
    other = generate_uid()
    _manifest(client, secret, study, {other: junk})
    assert _put(client, secret, study, other, 0, junk, encoding="identity").status_code == 422
    with runtime.db.scope(readonly=True) as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 0


@pytest.fixture
def live_region(runtime, world):
    """The region's app in a real server (uvicorn, this process): a connection can break."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(region_app(runtime.settings), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(10)


def test_what_arrived_before_a_broken_connection_is_kept(runtime, world, live_region):
    secret, study = world.credentials["t01-edge"], generate_uid()
    sop, data = _instance(study, size=512)
    base = f"http://127.0.0.1:{live_region}"
    with TestClient(region_app(runtime.settings), base_url=base) as client:  # only for the manifest
        _manifest(client, secret, study, {sop: data})
    body = gz(data)
    with socket.create_connection(("127.0.0.1", live_region)) as raw:
        raw.sendall((f"PUT /api/edge/studies/{study}/instances/{sop}?offset=0 HTTP/1.1\r\nHost: region\r\n"
                     f"Authorization: Bearer {secret}\r\nContent-Encoding: gzip\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n").encode() + body[:len(body) * 2 // 3])
        time.sleep(0.5)
    import httpx

    deadline, held = time.monotonic() + 20, 0
    while time.monotonic() < deadline and not held:  # the region notices the disconnect, syncs, unlocks
        held = httpx.get(f"{base}/api/edge/studies/{study}/instances/{sop}", headers=bearer(secret)).json()["offset"]
        time.sleep(0.2)
    assert len(data) // 3 < held < len(data)
    resumed = httpx.put(f"{base}/api/edge/studies/{study}/instances/{sop}", params={"offset": held},
                        content=gz(data[held:]), headers={**bearer(secret), "Content-Encoding": "gzip"})
    assert resumed.json()["done"] is True
    assert _stored(runtime, sop) == data


def test_the_admin_console_lists_edges_and_issues_credentials_once(runtime, world, client):
    client.post("/api/edge/hello", json={"version": "0.1.0", "backlog_studies": 2, "backlog_bytes": 12_300_000},
                headers=bearer(world.credentials["t01-edge"]))
    assert client.post("/login", data={"username": "county-admin", "password": PASSWORD},
                       follow_redirects=False).status_code == 303
    page = client.get("/admin/edges")
    assert page.status_code == 200
    row = re.search(r'<tr data-edge="t01-edge">(.*?)</tr>', page.text, re.S).group(1)
    assert "在线 Online" in row and "0.1.0" in row and "12.3 MB" in row and "2 个检查" in row
    token = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)"', page.text).group(1)
    issued = client.post("/admin/edges", data={"name": "t01-edge-2", "institution": "T01", "csrf_token": token})
    secret = re.search(r'<code id="secret">(lce_[^<]+)</code>', issued.text).group(1)
    assert client.post("/api/edge/hello", json={}, headers=bearer(secret)).status_code == 200
    outside = client.post("/admin/edges", data={"name": "x", "institution": "OTHER", "csrf_token": token})
    assert outside.status_code == 404 and "lce_" not in outside.text
    assert client.post("/admin/edges/t01-edge-2/revoke", data={"csrf_token": token},
                       follow_redirects=False).status_code == 303
    assert client.post("/api/edge/hello", json={}, headers=bearer(secret)).status_code == 401
    assert [r.object_id for r in _audits(runtime, "admin.edge.issue")][-1] == "t01-edge-2"
    assert _audits(runtime, "admin.edge.revoke")[0].object_id == "t01-edge-2"
    client.post("/logout", data={"csrf_token": token})
    client.post("/login", data={"username": "county-rad", "password": PASSWORD})
    assert client.get("/admin/edges").status_code == 403
