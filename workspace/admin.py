"""The admin console: what `lancang institution|ae|user|ca|share|audit` do, as pages.

Pages and the CLI call the same service functions and write the same audit actions
(admin.institution.add, admin.ae.add, admin.user.add, ...). An admin manages the subtree of
the referral tree below their institution; anything outside it is "not found". A refused
change is shown beside the form that caused it, with what was typed kept.

    GET  /admin                    overview and the referral tree, drawn
    GET  /admin/institutions       POST add | {code}/details | {code}/enable|disable
    GET  /admin/users              POST add | {username}/edit | {username}/enable|disable | {username}/password
    GET  /admin/nodes              POST add | {aet}/access | {aet}/enable|disable
    GET  /admin/certificates       POST issue | {id}/revoke
    GET  /admin/shares             POST {id}/revoke | {id}/unlock
    GET  /admin/audit              search; ?format=csv|json exports; POST verify
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from consult import reports
from consult.models import SignerCredential
from film import service as shares
from film.models import Share
from imaging.models import Patient, Study
from storage import access, audit, identity, localtime
from storage import service as tenancy
from storage.access import Principal
from storage.deps import CurrentUser, DbSession, RuntimeDep, WriteSession, client_address
from storage.errors import DomainError, Invalid, NotFound, NotPermitted
from storage.models import LEVELS, ROLES, AuditRecord, DicomNode, Institution, User

router = APIRouter(prefix="/admin", include_in_schema=False)

SECTIONS = (("/admin", "概览 Overview"), ("/admin/institutions", "机构 Institutions"), ("/admin/users", "用户 Users"),
            ("/admin/nodes", "DICOM 节点 AEs"), ("/admin/certificates", "证书 Certificates"),
            ("/admin/shares", "云胶片 Shares"), ("/admin/edges", "边缘节点 Edges"),
            ("/admin/audit", "审计 Audit"))
LEVEL_LABELS = {"township": "乡镇卫生院 Township", "county": "县级 County", "city": "市级 City",
                "partner": "对口医院 Partner"}
ROLE_LABELS = {"radiographer": "技师 Radiographer", "specialist": "专家 Specialist",
               "coordinator": "协调员 Coordinator", "admin": "管理员 Admin"}
DONE = {"institution": "机构已保存 Institution saved", "user": "用户已保存 User saved",
        "node": "DICOM 节点已保存 AE saved", "certificate": "证书已处理 Certificate done",
        "share": "云胶片已处理 Share done", "state": "状态已更改 State changed"}
AUDIT_PAGE = 100


@dataclass(frozen=True)
class Realm:
    """The admin and what they look after: their institution's subtree."""

    user: User
    principal: Principal
    ids: frozenset[int]

    def institution(self, session: Session, code: str) -> Institution:
        found = session.scalar(select(Institution).where(Institution.code == code))
        if found is None or found.id not in self.ids:
            raise NotFound("未找到该机构 / unknown institution")
        return found

    def person(self, session: Session, username: str) -> User:
        found = session.scalar(select(User).where(User.username == username))
        if found is None or found.institution_id not in self.ids:
            raise NotFound("未找到该用户 / unknown user")
        return found

    def node(self, session: Session, ae_title: str) -> DicomNode:
        found = session.scalar(select(DicomNode).where(DicomNode.ae_title == ae_title))
        if found is None or found.institution_id not in self.ids:
            raise NotFound("未找到该节点 / unknown AE")
        return found


def realm_of(session: Session, user: User) -> Realm:
    if user.role != "admin":
        raise NotPermitted("仅管理员可用 / for admins only")
    return Realm(user, identity.principal_for(user), frozenset(access.subtree_ids(session, user.institution_id)))


def _audit(session: Session, request: Request, realm: Realm, action: str, object_type: str, object_id: str,
           **detail) -> None:
    audit.append(session, principal=realm.principal, action=action, object_type=object_type, object_id=object_id,
                 source=client_address(request), detail={**detail, "from": "page"})


def _render(request: Request, template: str, realm: Realm, status: int = 200, **context) -> HTMLResponse:
    context.update(user=realm.user, sections=SECTIONS, level_labels=LEVEL_LABELS, role_labels=ROLE_LABELS,
                   done=DONE.get(request.query_params.get("done", "")), errors=context.get("errors") or {},
                   values=context.get("values") or {})
    return request.app.state.templates.TemplateResponse(request, template, context, status_code=status)


def _back(path: str, what: str) -> RedirectResponse:
    return RedirectResponse(f"{path}?done={what}", status_code=303)


def _refused(request: Request, session: Session, realm: Realm, page, form: str, exc: DomainError,
             values: dict) -> HTMLResponse:
    """Re-show the page with the refusal beside the form that caused it (nothing was changed)."""
    session.rollback()
    return page(request, session, realm, status=exc.status, errors={form: exc.detail}, values=values)


# -- overview and institutions -------------------------------------------------------------


def tree(session: Session, realm: Realm) -> list[tuple[int, Institution]]:
    """The subtree as (depth, institution) in drawing order."""
    rows = [i for i in session.scalars(select(Institution).order_by(Institution.code)) if i.id in realm.ids]
    children: dict[int | None, list[Institution]] = {}
    for inst in rows:
        children.setdefault(inst.parent_id if inst.parent_id in realm.ids else None, []).append(inst)
    drawn: list[tuple[int, Institution]] = []

    def walk(parent_id, depth):
        for inst in children.get(parent_id, []):
            drawn.append((depth, inst))
            walk(inst.id, depth + 1)
    walk(None, 0)
    return drawn


@router.get("", response_class=HTMLResponse)
def overview(request: Request, session: DbSession, user: CurrentUser):
    realm = realm_of(session, user)
    counts = {
        "users": len([u for u in identity.list_users(session=session) if u.institution_id in realm.ids]),
        "nodes": len([n for n in tenancy.list_nodes(session=session) if n.institution_id in realm.ids]),
    }
    return _render(request, "admin/overview.html", realm, tree=tree(session, realm), counts=counts)


def institutions_page(request: Request, session: Session, realm: Realm, status: int = 200, **context):
    return _render(request, "admin/institutions.html", realm, status, tree=tree(session, realm), levels=LEVELS,
                   **context)


@router.get("/institutions", response_class=HTMLResponse)
def institutions(request: Request, session: DbSession, user: CurrentUser):
    return institutions_page(request, session, realm_of(session, user))


@router.post("/institutions", response_class=HTMLResponse)
def add_institution(request: Request, session: WriteSession, user: CurrentUser, code: str = Form(""),
                    name: str = Form(""), name_en: str = Form(""), level: str = Form(""), parent: str = Form("")):
    realm = realm_of(session, user)
    values = {"code": code, "name": name, "name_en": name_en, "level": level, "parent": parent}
    try:
        realm.institution(session, parent)  # new members join under an institution the admin looks after
        inst = tenancy.add_institution(session=session, code=code.strip(), name=name, level=level, name_en=name_en,
                                       parent_code=parent)
    except DomainError as exc:
        return _refused(request, session, realm, institutions_page, "add", exc, values)
    _audit(session, request, realm, "admin.institution.add", "institution", inst.code, level=inst.level)
    return _back("/admin/institutions", "institution")


@router.post("/institutions/{code}/details", response_class=HTMLResponse)
def institution_details(code: str, request: Request, session: WriteSession, user: CurrentUser,
                        department: str = Form(""), address: str = Form(""), name_en: str = Form(""),
                        resident_ids: str = Form("")):
    realm = realm_of(session, user)
    realm.institution(session, code)
    try:
        tenancy.set_institution_details(session=session, code=code, department=department, address=address,
                                        name_en=name_en, patient_ids_are_resident_ids=resident_ids == "1")
    except DomainError as exc:
        return _refused(request, session, realm, institutions_page, f"details-{code}", exc, {})
    _audit(session, request, realm, "admin.institution.set", "institution", code)
    return _back("/admin/institutions", "institution")


@router.post("/institutions/{code}/{verb}", response_class=HTMLResponse)
def institution_switch(code: str, verb: str, request: Request, session: WriteSession, user: CurrentUser):
    realm = realm_of(session, user)
    inst = realm.institution(session, code)
    if inst.id == user.institution_id:
        raise Invalid("不能停用自己所在的机构 / you cannot disable your own institution")
    tenancy.set_institution_active(session=session, code=code, active=_on(verb))
    _audit(session, request, realm, f"admin.institution.{verb}", "institution", code)
    return _back("/admin/institutions", "state")


def _on(verb: str) -> bool:
    if verb not in ("enable", "disable"):
        raise NotFound("未找到 / not found")
    return verb == "enable"


# -- users -----------------------------------------------------------------------------------


def users_page(request: Request, session: Session, realm: Realm, status: int = 200, **context):
    people = [u for u in identity.list_users(session=session) if u.institution_id in realm.ids]
    return _render(request, "admin/users.html", realm, status, people=people, roles=ROLES,
                   institutions=[inst for _, inst in tree(session, realm)], **context)


@router.get("/users", response_class=HTMLResponse)
def users(request: Request, session: DbSession, user: CurrentUser):
    return users_page(request, session, realm_of(session, user))


@router.post("/users", response_class=HTMLResponse)
def add_user(request: Request, session: WriteSession, user: CurrentUser, username: str = Form(""),
             display_name: str = Form(""), role: str = Form(""), title: str = Form(""), institution: str = Form(""),
             email: str = Form(""), mobile: str = Form("")):
    """A new user with a temporary password, shown once, that they replace at first sign-in."""
    realm = realm_of(session, user)
    values = {"username": username, "display_name": display_name, "role": role, "title": title,
              "institution": institution, "email": email, "mobile": mobile}
    temporary = identity.temporary_password()
    try:
        realm.institution(session, institution)
        person = identity.add_user(session=session, username=username.strip(), role=role, institution_code=institution,
                                   password=temporary, display_name=display_name.strip(), title=title,
                                   must_change_password=True)
        identity.set_contact(session=session, user=person, email=email, mobile=mobile)
    except DomainError as exc:
        return _refused(request, session, realm, users_page, "add", exc, values)
    _audit(session, request, realm, "admin.user.add", "user", person.username, role=person.role,
           institution=institution)
    return users_page(request, session, realm, created=(person, temporary))


@router.post("/users/{username}/edit", response_class=HTMLResponse)
def edit_user(username: str, request: Request, session: WriteSession, user: CurrentUser, role: str = Form(""),
              title: str = Form(""), display_name: str = Form(""), institution: str = Form("")):
    realm = realm_of(session, user)
    person = realm.person(session, username)
    try:
        realm.institution(session, institution)
        if person.id == user.id and role != "admin":
            raise Invalid("不能取消自己的管理员角色 / you cannot remove your own admin role")
        changes = identity.update_user(session=session, user=person, role=role, title=title,
                                       display_name=display_name, institution_code=institution)
    except DomainError as exc:
        return _refused(request, session, realm, users_page, f"edit-{username}", exc, {})
    _audit(session, request, realm, "admin.user.edit", "user", username, changes=changes)
    return _back("/admin/users", "user")


@router.post("/users/{username}/password", response_class=HTMLResponse)
def reset_password(username: str, request: Request, session: WriteSession, user: CurrentUser):
    """A forgotten password: a temporary one, shown once, that the user replaces at sign-in."""
    realm = realm_of(session, user)
    person = realm.person(session, username)
    temporary, ended = identity.reset_password(session=session, user=person)
    _audit(session, request, realm, "admin.user.passwd", "user", username, sessions_ended=ended)
    return users_page(request, session, realm, reset=(person, temporary))


@router.post("/users/{username}/{verb}", response_class=HTMLResponse)
def user_switch(username: str, verb: str, request: Request, session: WriteSession, user: CurrentUser):
    realm = realm_of(session, user)
    realm.person(session, username)
    if username == user.username:
        raise Invalid("不能停用自己 / you cannot disable yourself")
    identity.set_user_active(session=session, username=username, active=_on(verb))
    _audit(session, request, realm, f"admin.user.{verb}", "user", username)
    return _back("/admin/users", "state")


# -- DICOM nodes -----------------------------------------------------------------------------


def nodes_page(request: Request, session: Session, realm: Realm, status: int = 200, **context):
    nodes = [n for n in tenancy.list_nodes(session=session) if n.institution_id in realm.ids]
    return _render(request, "admin/nodes.html", realm, status, nodes=nodes, permissions=tenancy.AE_PERMISSIONS,
                   institutions=[inst for _, inst in tree(session, realm)], **context)


@router.get("/nodes", response_class=HTMLResponse)
def nodes(request: Request, session: DbSession, user: CurrentUser):
    return nodes_page(request, session, realm_of(session, user))


def _port(text: str) -> int | None:
    if not text.strip():
        return None
    if not text.strip().isdigit():
        raise Invalid("端口须为数字 / the port must be a number")
    return int(text)


@router.post("/nodes", response_class=HTMLResponse)
def add_node(request: Request, session: WriteSession, user: CurrentUser, ae_title: str = Form(""),
             institution: str = Form(""), can: list[str] = Form([]), allow: str = Form(""),
             host: str = Form(""), port: str = Form("")):
    realm = realm_of(session, user)
    values = {"ae_title": ae_title, "institution": institution, "can": can, "allow": allow, "host": host,
              "port": port}
    try:
        realm.institution(session, institution)
        node = tenancy.add_node(session=session, ae_title=ae_title, institution_code=institution,
                                host=host.strip() or None, port=_port(port), can=can or [""],
                                allow=[a for a in allow.replace(" ", ",").split(",") if a])
    except DomainError as exc:
        return _refused(request, session, realm, nodes_page, "add", exc, values)
    _audit(session, request, realm, "admin.ae.add", "ae", node.ae_title, institution=institution,
           permissions=node.permissions, allowed_networks=node.allowed_networks)
    return _back("/admin/nodes", "node")


@router.post("/nodes/{ae_title}/access", response_class=HTMLResponse)
def node_access(ae_title: str, request: Request, session: WriteSession, user: CurrentUser,
                can: list[str] = Form([]), allow: str = Form("")):
    realm = realm_of(session, user)
    realm.node(session, ae_title)
    networks = [a for a in allow.replace(" ", ",").split(",") if a]
    try:
        node = tenancy.set_node_access(session=session, ae_title=ae_title, can=can or [""], allow=networks,
                                       allow_any=not networks)
    except DomainError as exc:
        return _refused(request, session, realm, nodes_page, f"access-{ae_title}", exc, {})
    _audit(session, request, realm, "admin.ae.set", "ae", ae_title, permissions=node.permissions,
           allowed_networks=node.allowed_networks)
    return _back("/admin/nodes", "node")


@router.post("/nodes/{ae_title}/{verb}", response_class=HTMLResponse)
def node_switch(ae_title: str, verb: str, request: Request, session: WriteSession, user: CurrentUser):
    realm = realm_of(session, user)
    realm.node(session, ae_title)
    tenancy.set_node_enabled(session=session, ae_title=ae_title, enabled=_on(verb))
    _audit(session, request, realm, f"admin.ae.{verb}", "ae", ae_title)
    return _back("/admin/nodes", "state")


# -- signing certificates --------------------------------------------------------------------


def certificates_page(request: Request, session: Session, realm: Realm, status: int = 200, **context):
    rows = session.execute(select(SignerCredential, User).join(User, User.id == SignerCredential.user_id)
                           .where(User.institution_id.in_(realm.ids))
                           .order_by(SignerCredential.id.desc())).all()
    certificates = [(credential, person, reports.certificate_expiry(credential)) for credential, person in rows]
    specialists = [u for u in identity.list_users(session=session)
                   if u.institution_id in realm.ids and u.role == "specialist" and u.active]
    return _render(request, "admin/certificates.html", realm, status, certificates=certificates,
                   specialists=specialists, now=datetime.now(localtime.zone()), **context)


@router.get("/certificates", response_class=HTMLResponse)
def certificates(request: Request, session: DbSession, user: CurrentUser):
    return certificates_page(request, session, realm_of(session, user))


@router.post("/certificates", response_class=HTMLResponse)
def issue_certificate(request: Request, session: WriteSession, user: CurrentUser, username: str = Form(""),
                      ca_password: str = Form(""), signing_password: str = Form("")):
    """A specialist's signing certificate; they sign with `signing_password` (told in person)."""
    realm = realm_of(session, user)
    try:
        person = realm.person(session, username)
        credential = reports.issue_credential(session=session, user=person, ca_password=ca_password,
                                              signing_password=signing_password)
    except DomainError as exc:
        return _refused(request, session, realm, certificates_page, "issue", exc, {"username": username})
    _audit(session, request, realm, "admin.ca.issue", "user", username, credential=credential.id)
    return _back("/admin/certificates", "certificate")


@router.post("/certificates/{credential_id}/revoke", response_class=HTMLResponse)
def revoke_certificate(credential_id: int, request: Request, session: WriteSession, user: CurrentUser):
    realm = realm_of(session, user)
    credential = session.get(SignerCredential, credential_id)
    if credential is None or session.get(User, credential.user_id).institution_id not in realm.ids:
        raise NotFound("未找到该证书 / unknown certificate")
    reports.revoke_credential(session=session, credential_id=credential_id)
    _audit(session, request, realm, "admin.ca.revoke", "certificate", str(credential_id))
    return _back("/admin/certificates", "certificate")


# -- cloud-film shares -----------------------------------------------------------------------


@router.get("/shares", response_class=HTMLResponse)
def share_list(request: Request, session: DbSession, runtime: RuntimeDep, user: CurrentUser, state: str = ""):
    realm = realm_of(session, user)
    rows = session.scalars(select(Share).where(Share.institution_id.in_(realm.ids))
                           .order_by(Share.id.desc()).limit(500)).all()
    listed = [(share, shares.share_state(share)) for share in rows]
    if state:
        listed = [(share, found) for share, found in listed if found == state]
    audit.record_read(runtime.db, principal=realm.principal, action="admin.share.list", object_type="share",
                      object_id=",".join(share.study_instance_uid for share, _ in listed)[:4000],
                      source=client_address(request), detail={"shown": len(listed)})
    return _render(request, "admin/shares.html", realm, shares=listed, state=state)


@router.post("/shares/{share_id}/{verb}", response_class=HTMLResponse)
def share_change(share_id: int, verb: str, request: Request, session: WriteSession, user: CurrentUser):
    """Revoke a link, or lift a PIN lockout; film/service.py checks and audits both."""
    realm = realm_of(session, user)
    change = {"revoke": shares.revoke_share, "unlock": shares.unlock_by_staff}.get(verb)
    if change is None:
        raise NotFound("未找到 / not found")
    change(session=session, principal=realm.principal, share_id=share_id, source=client_address(request))
    return _back("/admin/shares", "share")


# -- audit trail -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditQuery:
    actor: str = ""
    subject: str = ""   # a study UID, patient ID, share or user: matched against the record's object
    action: str = ""
    date_from: str = ""
    date_to: str = ""


def _day(text: str, end: bool = False) -> datetime | None:
    if not text:
        return None
    try:
        day = datetime.fromisoformat(text).date()
    except ValueError:
        raise Invalid("日期须为 YYYY-MM-DD / dates look like 2026-12-04") from None
    moment = datetime.combine(day + timedelta(days=1) if end else day, time(), tzinfo=localtime.zone())
    return moment


def search_audit(session: Session, realm: Realm, wanted: AuditQuery, limit: int | None = AUDIT_PAGE):
    """Records by people of the admin's subtree (and DICOM nodes, patient links and the system
    acting on its studies are found by the study's UID), newest first."""
    codes = list(session.scalars(select(Institution.code).where(Institution.id.in_(realm.ids))))
    statement = select(AuditRecord).where(or_(AuditRecord.institution.in_(codes), AuditRecord.institution == ""))
    if wanted.actor:
        statement = statement.where(AuditRecord.actor.startswith(wanted.actor.strip(), autoescape=True))
    if wanted.subject:
        statement = statement.where(_about(session, realm, wanted.subject.strip()))
    if wanted.action:
        statement = statement.where(AuditRecord.action.startswith(wanted.action.strip(), autoescape=True))
    if (start := _day(wanted.date_from)) is not None:
        statement = statement.where(AuditRecord.at >= start)
    if (end := _day(wanted.date_to, end=True)) is not None:
        statement = statement.where(AuditRecord.at < end)
    statement = statement.order_by(AuditRecord.id.desc())
    return list(session.scalars(statement.limit(limit) if limit else statement))


def _about(session: Session, realm: Realm, subject: str):
    """Records whose object is `subject` (a study UID, share, user...) or, when it is a patient
    ID of the admin's subtree, any of that patient's studies or the patient record itself."""
    condition = AuditRecord.object_id.contains(subject, autoescape=True)
    patients = list(session.scalars(select(Patient.id).where(Patient.patient_id == subject,
                                                             Patient.institution_id.in_(realm.ids))))
    if not patients:
        return condition
    studies = list(session.scalars(select(Study.study_instance_uid).where(Study.patient_pk.in_(patients))))
    return or_(condition, AuditRecord.object_id.in_(studies + [str(pk) for pk in patients]))


@router.get("/audit")
def audit_page(request: Request, session: DbSession, runtime: RuntimeDep, user: CurrentUser, actor: str = "",
               subject: str = "", action: str = "", format: str = ""):
    realm = realm_of(session, user)
    params = request.query_params
    wanted = AuditQuery(actor=actor, subject=subject, action=action, date_from=params.get("from", ""),
                        date_to=params.get("to", ""))
    try:
        rows = search_audit(session, realm, wanted, limit=None if format else AUDIT_PAGE)
        error = None
    except DomainError as exc:
        rows, error = [], exc.detail
    if format in ("csv", "json") and error is None:
        audit.record(runtime.db, principal=realm.principal, action="admin.audit.export", object_type="audit",
                     source=client_address(request), detail={"format": format, "records": len(rows),
                                                             "filter": wanted.__dict__})
        return Response(audit.export(rows, format), media_type="text/csv" if format == "csv" else "application/json",
                        headers={"Content-Disposition": f'attachment; filename="audit.{format}"'})
    audit.record_read(runtime.db, principal=realm.principal, action="admin.audit.search", object_type="audit",
                      source=client_address(request), detail={"filter": wanted.__dict__, "shown": len(rows)})
    checkpoint = audit.read_checkpoint(runtime.store)
    return _render(request, "admin/audit.html", realm, status=400 if error else 200, rows=rows, wanted=wanted,
                   error=error, checkpoint=checkpoint, verified=None)


@router.post("/audit/verify", response_class=HTMLResponse)
def verify_audit(request: Request, session: DbSession, runtime: RuntimeDep, user: CurrentUser):
    """Check the whole hash chain now (what `lancang audit verify` does) and say the result."""
    realm = realm_of(session, user)
    result = audit.verify_and_checkpoint(runtime.db, runtime.store)
    audit.record(runtime.db, principal=realm.principal, action="admin.audit.verify", object_type="audit",
                 source=client_address(request), outcome="ok" if result.ok else "failed",
                 detail={"checked": result.checked})
    return _render(request, "admin/audit.html", realm, rows=search_audit(session, realm, AuditQuery()),
                   wanted=AuditQuery(), error=None, checkpoint=audit.read_checkpoint(runtime.store), verified=result)
