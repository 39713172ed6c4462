"""The region's side of the edge transfer: edge credentials, manifests, verified uploads and
the completion check. Keyword-only service functions; none commits (the caller's scope does).

An edge is bound to one institution. It announces a study with a manifest (every SOP
Instance UID with the SHA-256 and size of the version it holds), uploads each instance
resumably (edge/uploads.py keeps the partial bytes), and asks for completion: the region
answers complete only when every instance of the manifest was verified against its SHA-256
and is indexed in this study with those very bytes. The edge marks a study sent only then.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from edge.models import EdgeNode, EdgeStudy, EdgeUpload
from imaging.models import Instance, Series, Study
from storage import audit
from storage.audit import CLI_ACTOR
from storage.access import Principal
from storage.db import Database
from storage.errors import Conflict, Invalid, NotAuthenticated, NotFound, NotPermitted, PayloadTooLarge
from storage.models import Institution
from storage.service import get_institution
from storage.types import revoke, utcnow

CREDENTIAL_PREFIX = "lce_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_MANIFEST = 20_000  # instances in one study's manifest


def hash_credential(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


# -- credentials ------------------------------------------------------------------------------


def issue_credential(*, session: Session, institution_code: str, name: str, issued_by: str) -> tuple[str, EdgeNode]:
    """A new edge of an institution, or a new credential for an existing edge of the same
    institution (the old one stops working at once). Returns (secret, edge): the secret is
    shown once; only its SHA-256 is kept."""
    if not _NAME.match(name or ""):
        raise Invalid("边缘节点名称须为1-64位字母、数字或 . _ - / an edge name is 1-64 letters, digits, '.', '_' or '-'")
    institution = get_institution(session=session, code=institution_code)
    secret = CREDENTIAL_PREFIX + secrets.token_urlsafe(32)
    edge = session.scalar(select(EdgeNode).where(EdgeNode.name == name))
    if edge is not None and edge.institution_id != institution.id:
        raise Conflict(f"边缘节点 {name} 属于其他机构 / edge {name!r} belongs to another institution")
    if edge is None:
        edge = EdgeNode(name=name, institution_id=institution.id, credential_hash=hash_credential(secret),
                        issued_by=issued_by[:64])
        session.add(edge)
    else:
        edge.credential_hash, edge.issued_by, edge.revoked_at = hash_credential(secret), issued_by[:64], None
    session.flush()
    return secret, edge


def revoke_credential(*, session: Session, name: str) -> EdgeNode:
    """The edge's credential stops working at once; what it uploaded stays."""
    edge = session.scalar(select(EdgeNode).where(EdgeNode.name == name))
    if edge is None:
        raise NotFound(f"未找到边缘节点 / unknown edge {name!r}")
    return revoke(edge)


def cli_issue(db: Database, *, institution_code: str, name: str) -> str:
    """`lancang edge credential` at the region: issue in its own unit of work, audited as the
    admin console's action, and return the secret to print once."""
    with db.scope() as session:
        secret, edge = issue_credential(session=session, institution_code=institution_code, name=name,
                                        issued_by=CLI_ACTOR)
        audit.append(session, principal=None, actor=CLI_ACTOR, action="admin.edge.issue", object_type="edge",
                     object_id=edge.name, detail={"institution": institution_code})
    return secret


def cli_revoke(db: Database, *, name: str) -> None:
    """`lancang edge revoke` at the region, audited as the admin console's action."""
    with db.scope() as session:
        edge = revoke_credential(session=session, name=name)
        audit.append(session, principal=None, actor=CLI_ACTOR, action="admin.edge.revoke", object_type="edge",
                     object_id=edge.name)


def list_edges(*, session: Session, institution_ids: set[int] | frozenset[int] | None = None) -> list[EdgeNode]:
    """Edges by institution and name (those of the given institutions only, when given)."""
    query = select(EdgeNode).join(Institution).order_by(Institution.code, EdgeNode.name)
    if institution_ids is not None:
        query = query.where(EdgeNode.institution_id.in_(sorted(institution_ids)))
    return list(session.scalars(query))


def authenticate(*, session: Session, secret: str) -> EdgeNode:
    """The edge behind a credential, or NotAuthenticated: unknown, revoked, or its institution
    disabled (each said so, for the edge's status page)."""
    edge = session.scalar(select(EdgeNode).where(EdgeNode.credential_hash == hash_credential(secret)))
    if edge is None:
        raise NotAuthenticated("边缘节点凭据无效 / unknown edge credential")
    if edge.revoked_at is not None:
        raise NotAuthenticated("边缘节点凭据已撤销 / this edge credential has been revoked")
    if not edge.institution.active:
        raise NotAuthenticated("该机构已停用 / the edge's institution is disabled")
    return edge


def principal_of(edge: EdgeNode) -> Principal:
    """The edge as the audit trail names it: a sending machine of its institution."""
    return Principal(kind="ae", name=f"edge:{edge.name}", institution_id=edge.institution_id,
                     institution_code=edge.institution.code)


def note_report(*, session: Session, edge: EdgeNode, address: str, report: dict) -> None:
    """What the edge said about itself at its last contact (the admin console shows it)."""
    edge.last_seen_at, edge.last_address = utcnow(), address[:64]
    edge.version = str(report.get("version", edge.version))[:32]
    edge.backlog_studies = _count(report.get("backlog_studies"))
    edge.backlog_bytes = _count(report.get("backlog_bytes"))
    edge.reported_error = str(report.get("error", ""))[:32]
    oldest = report.get("oldest_queued_at")
    try:
        edge.oldest_queued_at = datetime.fromisoformat(oldest) if oldest else None
    except (TypeError, ValueError):
        edge.oldest_queued_at = None
    if edge.oldest_queued_at is not None and edge.oldest_queued_at.tzinfo is None:
        edge.oldest_queued_at = None  # a naive time is nobody's time


def _count(value) -> int:
    return max(0, min(int(value), 2 ** 62)) if isinstance(value, int) else 0


# -- manifests ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestItem:
    sop: str
    sha256: str
    size: int


def parse_manifest(items: list, *, max_instance: int) -> list[ManifestItem]:
    """The manifest's items, each checked (Invalid or PayloadTooLarge says which and why)."""
    if not isinstance(items, list) or not items or len(items) > MAX_MANIFEST:
        raise Invalid(f"a manifest lists 1 to {MAX_MANIFEST} instances")
    parsed, seen = [], set()
    for item in items:
        sop, sha, size = (item.get("sop"), item.get("sha256"), item.get("size")) if isinstance(item, dict) else (
            None, None, None)
        if not isinstance(sop, str) or not 0 < len(sop) <= 128 or sop in seen:
            raise Invalid(f"manifest item {str(sop)[:80]!r}: a SOP Instance UID, once")
        if not isinstance(sha, str) or not _SHA256.match(sha):
            raise Invalid(f"manifest item {sop}: sha256 must be 64 lower-case hex digits")
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise Invalid(f"manifest item {sop}: size must be a positive integer")
        if size > max_instance:
            raise PayloadTooLarge(f"实例 {sop} 过大 / instance {sop} has {size} bytes, more than "
                                  f"LANCANG_MAX_INSTANCE_BYTES={max_instance}")
        seen.add(sop)
        parsed.append(ManifestItem(sop, sha, size))
    return parsed


def check_ownership(*, session: Session, edge: EdgeNode, study_uid: str) -> None:
    """A study indexed here under another institution is refused (403), as C-STORE refuses
    it; one another institution's edge is sending is a conflict (409)."""
    owner = session.scalar(select(Study.institution_id).where(Study.study_instance_uid == study_uid))
    if owner is not None and owner != edge.institution_id:
        raise NotPermitted("该检查属于其他机构 / the study belongs to another institution")
    other = session.scalar(select(EdgeStudy.id).where(EdgeStudy.study_instance_uid == study_uid,
                                                      EdgeStudy.institution_id != edge.institution_id).limit(1))
    if other is not None:
        raise Conflict("另一机构的边缘节点正在发送该检查 / another institution's edge is sending this study")


def set_manifest(*, session: Session, edge: EdgeNode, study_uid: str,
                 items: list[ManifestItem]) -> tuple[EdgeStudy, list[EdgeUpload], list[tuple[int, str]]]:
    """The study's manifest becomes exactly these items. An instance already indexed here with
    the same bytes counts as done at once (nothing to resend). Returns (study, its uploads,
    (upload id, sha256) of versions dropped, whose partial bytes the caller deletes)."""
    check_ownership(session=session, edge=edge, study_uid=study_uid)
    study = session.scalar(select(EdgeStudy).where(EdgeStudy.edge_id == edge.id,
                                                   EdgeStudy.study_instance_uid == study_uid))
    if study is None:
        study = EdgeStudy(edge_id=edge.id, institution_id=edge.institution_id, study_instance_uid=study_uid)
        session.add(study)
        session.flush()
    existing = {u.sop_instance_uid: u for u in session.scalars(select(EdgeUpload).where(
        EdgeUpload.edge_study_id == study.id))}
    wanted = {item.sop: item for item in items}
    dropped = [u for sop, u in existing.items() if sop not in wanted]
    if dropped:
        session.execute(delete(EdgeUpload).where(EdgeUpload.id.in_([u.id for u in dropped])))
    stale = [(u.id, u.sha256) for u in dropped]
    held = indexed_versions(session=session, study_uid=study_uid, sops=list(wanted))
    uploads = []
    for item in items:
        upload = existing.get(item.sop)
        if upload is not None and (upload.sha256, upload.size) != (item.sha256, item.size):
            stale.append((upload.id, upload.sha256))  # another version: its partial bytes go
            upload.sha256, upload.size, upload.done, upload.verified_at = item.sha256, item.size, False, None
        if upload is None:
            upload = EdgeUpload(edge_study_id=study.id, sop_instance_uid=item.sop, sha256=item.sha256, size=item.size)
            session.add(upload)
        if not upload.done and held.get(item.sop) == item.sha256:
            upload.done, upload.verified_at = True, utcnow()
        uploads.append(upload)
    study.instances, study.size, study.updated_at = len(items), sum(i.size for i in items), utcnow()
    if not all(u.done for u in uploads):
        study.completed_at = None
    session.flush()
    return study, uploads, stale


def indexed_versions(*, session: Session, study_uid: str, sops: list[str]) -> dict[str, str]:
    """{SOP Instance UID: SHA-256} of the current versions indexed in this study."""
    found: dict[str, str] = {}
    for start in range(0, len(sops), 500):
        rows = session.execute(
            select(Instance.sop_instance_uid, Instance.sha256).join(Series, Series.id == Instance.series_pk)
            .join(Study, Study.id == Series.study_pk)
            .where(Study.study_instance_uid == study_uid, Instance.sop_instance_uid.in_(sops[start:start + 500])))
        found.update({sop: sha for sop, sha in rows})
    return found


def upload_of(*, session: Session, edge: EdgeNode, study_uid: str, sop: str) -> EdgeUpload:
    """The manifest item an upload is for; NotFound before the study's manifest lists it."""
    upload = session.scalar(
        select(EdgeUpload).join(EdgeStudy, EdgeStudy.id == EdgeUpload.edge_study_id)
        .where(EdgeStudy.edge_id == edge.id, EdgeStudy.study_instance_uid == study_uid,
               EdgeUpload.sop_instance_uid == sop))
    if upload is None:
        raise NotFound("清单中没有该实例，请先提交清单 / no such instance in the study's manifest: send the manifest first")
    return upload


def mark_verified(*, session: Session, upload_id: int) -> EdgeUpload:
    upload = session.get(EdgeUpload, upload_id)
    upload.done, upload.verified_at = True, utcnow()
    return upload


# -- completion -----------------------------------------------------------------------------------


def completion(*, session: Session, edge: EdgeNode, study_uid: str) -> dict:
    """Complete only when every instance of the manifest is verified and indexed in this study
    with the manifest's bytes; else the instances still missing (the edge sends them again)."""
    study = session.scalar(select(EdgeStudy).where(EdgeStudy.edge_id == edge.id,
                                                   EdgeStudy.study_instance_uid == study_uid))
    if study is None:
        raise NotFound("未收到该检查的清单 / no manifest for this study")
    uploads = list(session.scalars(select(EdgeUpload).where(EdgeUpload.edge_study_id == study.id)))
    held = indexed_versions(session=session, study_uid=study_uid, sops=[u.sop_instance_uid for u in uploads])
    missing = []
    for upload in uploads:
        if not upload.done or held.get(upload.sop_instance_uid) != upload.sha256:
            missing.append(upload.sop_instance_uid)
            upload.done, upload.verified_at = False, None  # indexed bytes changed since: send again
    complete = bool(uploads) and not missing
    if complete and study.completed_at is None:
        study.completed_at = utcnow()
    if not complete:
        study.completed_at = None
    return {"complete": complete, "instances": len(uploads), "verified": len(uploads) - len(missing),
            "missing": missing[:1000], "completed_at": study.completed_at.isoformat() if study.completed_at else None}


def transfer_state(*, session: Session, study_uid: str) -> dict | None:
    """How an edge's transfer of this study stands here (for a study page), or None when no
    edge sent it: {"edge", "instances", "verified", "complete"}."""
    study = session.scalar(select(EdgeStudy).where(EdgeStudy.study_instance_uid == study_uid)
                           .order_by(EdgeStudy.updated_at.desc()).limit(1))
    if study is None:
        return None
    done = session.scalar(select(func.count()).select_from(EdgeUpload).where(
        EdgeUpload.edge_study_id == study.id, EdgeUpload.done.is_(True)))
    return {"edge": study.edge.name, "instances": study.instances, "verified": done,
            "complete": study.completed_at is not None}
