"""Who may share a study with its patient (storage/access.py says who may see it at all)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from imaging.models import Study
from storage import access
from storage.access import Principal
from storage.errors import NotFound, NotPermitted

SHARER_ROLES = ("radiographer", "admin")


def require_sharer(session: Session, principal: Principal, study_uid: str) -> Study:
    """The study, if this principal may share it with its patient.

    The performing institution's radiographers (and admins over it) may; a study they
    cannot see is "not found" (its existence is itself patient data); the CLI is the system.
    """
    study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
    if study is None or not access.can_see_study(session, principal, institution_id=study.institution_id,
                                                 study_uid=study_uid):
        raise NotFound("未找到该检查 / study not found")
    if principal.kind == "system":
        return study
    if principal.kind != "user" or principal.role not in SHARER_ROLES:
        raise NotPermitted("仅技师可创建云胶片 / only radiographers share studies with patients")
    if not principal.is_admin and principal.institution_id != study.institution_id:
        raise NotPermitted("仅检查医院可创建云胶片 / only the performing institution shares a study")
    return study
