"""The one authorization function: what a user, a calling AE or a patient link may see.

Every read path asks `scope_for` (or `require_study`) and filters by the Scope it gets;
nothing reads patient data around it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy import Select, and_, bindparam, or_, select
from sqlalchemy.orm import Session

from storage.errors import NotFound, NotPermitted
from storage.models import AccessGrant, Institution
from storage.types import utcnow


@dataclass(frozen=True)
class Principal:
    """Who is asking: a user, a DICOM application entity, a patient link or the system."""

    kind: str  # user | ae | patient | system
    name: str
    institution_id: int | None = None
    institution_code: str = ""
    role: str | None = None
    user_id: int | None = None
    # A patient link sees exactly one study and nothing else.
    study_uid: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.kind == "user" and self.role == "admin"


SYSTEM = Principal(kind="system", name="system")


@dataclass(frozen=True)
class Scope:
    """Institutions whose studies are visible, plus studies granted to an institution or user."""

    all_institutions: bool = False
    institution_ids: frozenset[int] = field(default_factory=frozenset)
    # Studies granted (not revoked, not expired) to this institution or this user are visible too.
    grantee_institution_id: int | None = None
    grantee_user_id: int | None = None
    only_study_uid: str | None = None

    @property
    def granted(self) -> Select | None:
        """SELECT of the StudyInstanceUIDs granted now, or None when nothing can be granted."""
        if self.grantee_institution_id is None and self.grantee_user_id is None:
            return None
        return _granted_study_uids(self.grantee_institution_id, self.grantee_user_id, utcnow())

    def study_filter(self, institution_col, study_uid_col):
        """A SQL condition on a study's owning institution and UID."""
        if self.only_study_uid is not None:
            return study_uid_col == self.only_study_uid
        if self.all_institutions:
            return True
        conditions = [institution_col.in_(sorted(self.institution_ids))]
        granted = self.granted
        if granted is not None:
            conditions.append(study_uid_col.in_(granted))
        return or_(*conditions)

    # A hot read path builds its statement once per shape and binds the values per request
    # (building a SQLAlchemy statement costs several times more than running it here).

    @property
    def shape(self) -> tuple:
        """What study_filter's condition looks like, without its values."""
        if self.only_study_uid is not None:
            return ("study",)
        if self.all_institutions:
            return ("all",)
        return ("institutions", self.grantee_institution_id is not None, self.grantee_user_id is not None)

    def bound_values(self, *, one_by_one: bool = False) -> dict:
        """The values for bound_study_filter(self.shape, ...); with `one_by_one`, for
        bound_study_filter(..., institutions=len(self.institution_ids))."""
        if self.only_study_uid is not None:
            return {"scope_study": self.only_study_uid}
        if self.all_institutions:
            return {}
        values = {"scope_now": utcnow(), "scope_grantee_institution": self.grantee_institution_id,
                  "scope_grantee_user": self.grantee_user_id}
        if one_by_one:
            values.update((f"scope_institution_{i}", v) for i, v in enumerate(sorted(self.institution_ids)))
        else:
            values["scope_institutions"] = sorted(self.institution_ids)
        return values


def bound_study_filter(shape: tuple, institution_col, study_uid_col, *, institutions: int | None = None):
    """Scope.study_filter for every scope of `shape`, with bound parameters that
    Scope.bound_values() fills; True when the shape sees everything. With `institutions`,
    the institution list is that many plain parameters rather than one expanding one (for
    statements run as storage.db.Prepared; fill with bound_values(one_by_one=True))."""
    if shape == ("study",):
        return study_uid_col == bindparam("scope_study")
    if shape == ("all",):
        return True
    _kind, by_institution, by_user = shape
    ids = (bindparam("scope_institutions", expanding=True) if institutions is None
           else [bindparam(f"scope_institution_{i}") for i in range(institutions)])
    conditions = [institution_col.in_(ids)]
    if by_institution or by_user:
        granted = _granted_study_uids(bindparam("scope_grantee_institution") if by_institution else None,
                                      bindparam("scope_grantee_user") if by_user else None,
                                      bindparam("scope_now"))
        conditions.append(study_uid_col.in_(granted))
    return or_(*conditions)


def subtree_ids(session: Session, root_id: int) -> set[int]:
    """The institution and every institution below it in the referral tree."""
    rows = session.execute(select(Institution.id, Institution.parent_id)).all()
    children: dict[int | None, list[int]] = {}
    for inst_id, parent_id in rows:
        children.setdefault(parent_id, []).append(inst_id)
    found, todo = set(), [root_id]
    while todo:
        current = todo.pop()
        if current in found:
            continue
        found.add(current)
        todo.extend(children.get(current, []))
    return found


def _granted_study_uids(institution_id, user_id, now) -> Select:
    """StudyInstanceUIDs granted to the institution or the user (values or bound parameters;
    None: no grant of that kind), neither revoked nor expired at `now`."""
    grantee = []
    if institution_id is not None:
        grantee.append(AccessGrant.grantee_institution_id == institution_id)
    if user_id is not None:
        grantee.append(AccessGrant.grantee_user_id == user_id)
    return select(AccessGrant.study_instance_uid).where(
        and_(
            or_(*grantee),
            AccessGrant.revoked_at.is_(None),
            or_(AccessGrant.expires_at.is_(None), AccessGrant.expires_at > now),
        )
    )


def scope_for(session: Session, principal: Principal) -> Scope:
    """Decide what the principal may see.

    - system: everything (workers, CLI import on behalf of an institution);
    - patient link: its one study;
    - admin: its institution's subtree; everyone else (users and AEs): its own institution;
    - plus studies granted to the institution (AE or user) or to the user personally.
    """
    if principal.kind == "system":
        return Scope(all_institutions=True)
    if principal.kind == "patient":
        return Scope(only_study_uid=principal.study_uid or "")
    if principal.institution_id is None:
        return Scope()
    if principal.is_admin:
        own = frozenset(subtree_ids(session, principal.institution_id))
    else:
        own = frozenset({principal.institution_id})
    return Scope(institution_ids=own, grantee_institution_id=principal.institution_id,
                 grantee_user_id=principal.user_id)


def can_see_study(session: Session, principal: Principal, *, institution_id: int, study_uid: str) -> bool:
    scope = scope_for(session, principal)
    if scope.only_study_uid is not None:
        return study_uid == scope.only_study_uid
    if scope.all_institutions or institution_id in scope.institution_ids:
        return True
    if scope.granted is None:
        return False
    granted = session.execute(scope.granted.where(AccessGrant.study_instance_uid == study_uid)).first()
    return granted is not None


def require_study(session: Session, principal: Principal, *, institution_id: int, study_uid: str) -> None:
    if not can_see_study(session, principal, institution_id=institution_id, study_uid=study_uid):
        raise NotPermitted("无权查看该检查 / this study is not shared with you")


Row = TypeVar("Row")


def get_visible(session: Session, model: type[Row], row_id: int, visible: Callable[[Row], bool], *,
                missing: str) -> Row:
    """The row when `visible` says the caller may see it; else NotFound (404) with `missing`, the
    same answer as for a row that does not exist: its existence is patient data too."""
    row = session.get(model, row_id)
    if row is None or not visible(row):
        raise NotFound(missing)
    return row
