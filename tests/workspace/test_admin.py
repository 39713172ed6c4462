"""The admin console's pages (server side): each change goes through the service the CLI
uses, is audited, stays inside the admin's subtree, and a refusal is shown beside its form
with what was typed kept."""

from __future__ import annotations

import csv
import io
import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from consult import reports
from consult.models import SignerCredential
from storage import identity
from storage import service as tenancy
from storage.models import AuditRecord, DicomNode
from web.app import create_app


@pytest.fixture(params=["embedded"])
def backend(request):
    return request.param


@pytest.fixture
def world(runtime):
    with runtime.db.scope() as session:
        tenancy.add_institution(session=session, code="CITY", name="普洱市人民医院", level="city")
        tenancy.add_institution(session=session, code="COUNTY", name="澜沧县人民医院", level="county", parent_code="CITY")
        tenancy.add_institution(session=session, code="TOWN", name="勐朗镇卫生院", level="township", parent_code="COUNTY")
        tenancy.add_institution(session=session, code="FAR", name="别县医院", level="county", parent_code="CITY")
        for username, role, code in (("admin", "admin", "COUNTY"), ("li", "radiographer", "TOWN"),
                                     ("wang", "specialist", "COUNTY"), ("far", "specialist", "FAR")):
            identity.add_user(session=session, username=username, role=role, institution_code=code,
                              password="password-1", display_name=username.upper())
        reports.init_authority(session=session, name="测试CA", organisation="测试", password="ca-password-123")


def _client(runtime, username):
    client = TestClient(create_app(runtime.settings))
    client.__enter__()
    assert client.post("/login", data={"username": username, "password": "password-1"},
                       follow_redirects=False).status_code == 303
    token = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)"', client.get("/menu").text).group(1)
    client.headers["X-CSRF-Token"] = token
    return client


def _actions(runtime, prefix="admin."):
    with runtime.db.scope(readonly=True) as session:
        return [(r.action, r.object_id, r.actor) for r in
                session.scalars(select(AuditRecord).where(AuditRecord.action.startswith(prefix)).order_by(AuditRecord.id))]


def test_only_admins_open_the_console(runtime, world):
    li = _client(runtime, "li")
    for path in ("/admin", "/admin/users", "/admin/nodes", "/admin/institutions", "/admin/certificates",
                 "/admin/shares", "/admin/audit"):
        assert li.get(path).status_code == 403, path
    admin = _client(runtime, "admin")
    overview = admin.get("/admin")
    assert overview.status_code == 200 and 'id="referral-tree"' in overview.text
    # The county admin's tree: the county and its township, not the city above or the other county.
    assert "勐朗镇卫生院" in overview.text and "别县医院" not in overview.text and "普洱市人民医院" not in overview.text


def test_create_a_user_from_the_page(runtime, world):
    admin = _client(runtime, "admin")
    made = admin.post("/admin/users", data={"username": "zhao", "display_name": "赵医生", "role": "specialist",
                                            "title": "主治医师", "institution": "TOWN", "email": "", "mobile": ""})
    assert made.status_code == 200 and 'id="created"' in made.text
    temporary = re.search(r'id="temporary-password">([^<]+)<', made.text).group(1)
    with runtime.db.scope(readonly=True) as session:
        user = identity.get_user(session=session, username="zhao")
        assert user.must_change_password and user.title == "主治医师" and user.institution.code == "TOWN"
    with TestClient(create_app(runtime.settings)) as fresh:
        login = fresh.post("/login", data={"username": "zhao", "password": temporary}, follow_redirects=False)
    assert login.headers["location"] == "/account/password?first=1"
    # A taken username: 409, said beside the form, what was typed kept.
    again = admin.post("/admin/users", data={"username": "zhao", "display_name": "赵二", "role": "specialist",
                                             "title": "", "institution": "TOWN"})
    assert again.status_code == 409 and 'id="error-add"' in again.text and "用户名已存在" in again.text
    assert 'value="赵二"' in again.text
    # An institution outside the admin's subtree is unknown.
    outside = admin.post("/admin/users", data={"username": "qian", "display_name": "钱", "role": "specialist",
                                               "institution": "FAR"})
    assert outside.status_code == 404 and 'id="error-add"' in outside.text
    assert ("admin.user.add", "zhao", "admin") in _actions(runtime)


def test_edit_disable_and_reset_stay_in_the_subtree(runtime, world):
    admin = _client(runtime, "admin")
    wang = _client(runtime, "wang")
    assert wang.get("/api/me").status_code == 200
    edited = admin.post("/admin/users/wang/edit", data={"role": "coordinator", "title": "副主任医师",
                                                        "display_name": "王医生", "institution": "COUNTY"},
                        follow_redirects=False)
    assert edited.status_code == 303
    assert wang.get("/api/me").status_code == 401  # the role changed: the old session ended
    record = [a for a in _actions(runtime) if a[0] == "admin.user.edit"]
    assert record == [("admin.user.edit", "wang", "admin")]
    assert admin.post("/admin/users/far/disable").status_code == 404  # another county's user
    assert admin.post("/admin/users/admin/disable").status_code == 422  # not oneself
    assert admin.post("/admin/users/li/disable", follow_redirects=False).status_code == 303
    with runtime.db.scope(readonly=True) as session:
        assert not identity.get_user(session=session, username="li").active
    self_demote = admin.post("/admin/users/admin/edit", data={"role": "specialist", "title": "", "display_name": "A",
                                                              "institution": "COUNTY"})
    assert self_demote.status_code == 422 and 'id="error-edit-admin"' in self_demote.text


def test_register_an_ae_with_an_allowed_host(runtime, world):
    admin = _client(runtime, "admin")
    bad = admin.post("/admin/nodes", data={"ae_title": "ML_CT01", "institution": "TOWN", "can": ["store", "query"],
                                           "allow": "10.12.3.400", "host": "", "port": ""})
    assert bad.status_code == 422 and 'id="error-add"' in bad.text and "不是IP地址" in bad.text
    assert 'value="ML_CT01"' in bad.text and 'value="10.12.3.400"' in bad.text
    good = admin.post("/admin/nodes", data={"ae_title": "ML_CT01", "institution": "TOWN", "can": ["store", "query"],
                                            "allow": "10.12.3.40, 10.12.4.0/24", "host": "10.12.3.40", "port": "104"},
                      follow_redirects=False)
    assert good.status_code == 303
    with runtime.db.scope(readonly=True) as session:
        node = tenancy.get_node(session=session, ae_title="ML_CT01")
        assert node.permissions == "store,query" and node.networks == ["10.12.3.40/32", "10.12.4.0/24"]
        assert (node.host, node.port) == ("10.12.3.40", 104)
    page = admin.get("/admin/nodes").text
    assert "ML_CT01" in page
    assert admin.post("/admin/nodes/ML_CT01/access", data={"can": ["store"], "allow": "10.12.3.41"},
                      follow_redirects=False).status_code == 303
    assert admin.post("/admin/nodes/ML_CT01/disable", follow_redirects=False).status_code == 303
    with runtime.db.scope(readonly=True) as session:
        node = session.scalar(select(DicomNode).where(DicomNode.ae_title == "ML_CT01"))
        assert not node.enabled and node.permissions == "store" and node.networks == ["10.12.3.41/32"]
    assert [a[0] for a in _actions(runtime, "admin.ae")] == ["admin.ae.add", "admin.ae.set", "admin.ae.disable"]


def test_institutions_join_under_the_subtree_and_the_tree_is_drawn(runtime, world):
    admin = _client(runtime, "admin")
    refused = admin.post("/admin/institutions", data={"code": "NEW", "name": "新镇", "level": "township",
                                                      "parent": "CITY"})
    assert refused.status_code == 404 and 'id="error-add"' in refused.text
    added = admin.post("/admin/institutions", data={"code": "NEW", "name": "新镇卫生院", "level": "township",
                                                    "parent": "COUNTY"}, follow_redirects=False)
    assert added.status_code == 303
    page = admin.get("/admin/institutions").text
    tree = page[page.index('id="referral-tree"'):page.index("</ul>", page.index('id="referral-tree"'))]
    assert tree.index("澜沧县人民医院") < tree.index("新镇卫生院") and "--depth:1" in tree
    assert admin.post("/admin/institutions/COUNTY/disable").status_code == 422  # one's own


def test_certificates_issue_and_revoke(runtime, world):
    admin = _client(runtime, "admin")
    wrong = admin.post("/admin/certificates", data={"username": "wang", "ca_password": "nope",
                                                    "signing_password": "sign-wang-1"})
    assert wrong.status_code >= 400 and 'id="error-issue"' in wrong.text
    assert admin.post("/admin/certificates", data={"username": "far", "ca_password": "ca-password-123",
                                                   "signing_password": "sign-far-1"}).status_code == 404
    assert admin.post("/admin/certificates", data={"username": "wang", "ca_password": "ca-password-123",
                                                   "signing_password": "sign-wang-1"},
                      follow_redirects=False).status_code == 303
    with runtime.db.scope(readonly=True) as session:
        credential = session.scalar(select(SignerCredential))
    page = admin.get("/admin/certificates").text
    assert "有效 Valid" in page and "WANG" in page
    assert admin.post(f"/admin/certificates/{credential.id}/revoke", follow_redirects=False).status_code == 303
    assert "已吊销 Revoked" in admin.get("/admin/certificates").text
    assert [a[0] for a in _actions(runtime, "admin.ca")] == ["admin.ca.issue", "admin.ca.revoke"]


def test_audit_search_export_and_verify(runtime, world):
    _client(runtime, "li").get("/studies")
    admin = _client(runtime, "admin")
    found = admin.get("/admin/audit", params={"actor": "li", "action": "study."})
    assert found.status_code == 200 and "study.list" in found.text
    assert admin.get("/admin/audit", params={"from": "4 Dec"}).status_code == 400
    exported = admin.get("/admin/audit", params={"actor": "li", "format": "csv"})
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert rows and {r["actor"] for r in rows} == {"li"}
    # Another county's people are not in this admin's trail.
    _client(runtime, "far").get("/studies")
    assert "far" not in [r["actor"] for r in csv.DictReader(io.StringIO(
        admin.get("/admin/audit", params={"format": "csv"}).text))]
    verified = admin.post("/admin/audit/verify")
    assert verified.status_code == 200 and "哈希链完整" in verified.text
    assert {"admin.audit.export", "admin.audit.verify"} <= {a[0] for a in _actions(runtime)}


def test_an_institution_declares_its_patient_ids_are_resident_ids(runtime, world):
    from storage.models import Institution
    admin = _client(runtime, "admin")
    assert admin.post("/admin/institutions/TOWN/details", data={"department": "放射科", "address": "勐朗镇",
                                                               "name_en": "", "resident_ids": "1"},
                      follow_redirects=False).status_code == 303
    with runtime.db.scope(readonly=True) as session:
        town = session.scalar(select(Institution).where(Institution.code == "TOWN"))
        assert town.patient_ids_are_resident_ids and town.department == "放射科"
    assert "checked" in admin.get("/admin/institutions").text.split('action="/admin/institutions/TOWN/details"')[1][:900]


def test_shares_page_lists_and_revokes(runtime, world):
    from pydicom.uid import generate_uid

    from film import service as shares
    from imaging.service import Ingestor
    from storage.access import SYSTEM
    from storage.models import Institution
    from tests.dicomdata import ct_instance

    with runtime.db.scope(readonly=True) as session:
        town = session.scalar(select(Institution.id).where(Institution.code == "TOWN"))
    ingestor = Ingestor(runtime.db, runtime.store)
    study = ingestor.ingest(ct_instance(study_uid=generate_uid()), institution_id=town, source="t").study_instance_uid
    ingestor.close()
    with runtime.db.scope() as session:
        share_id = shares.create_share(session=session, principal=SYSTEM, study_uid=study,
                                       secret_key=runtime.settings.effective_secret_key,
                                       public_url=runtime.settings.effective_public_url).share.id
    admin = _client(runtime, "admin")
    assert f"/admin/shares/{share_id}/revoke" in admin.get("/admin/shares").text
    assert admin.post(f"/admin/shares/{share_id}/revoke", follow_redirects=False).status_code == 303
    assert "已撤销 Revoked" in admin.get("/admin/shares", params={"state": "revoked"}).text
    assert ("film.share.revoke", str(share_id), "admin") in _actions(runtime, "film.")
