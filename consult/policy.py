"""Who may *do* what to a consult (storage/access.py says who may *see* which studies).

Each action names its rule and the refusal people read; services call `require(action,
consult, user)` before they change anything."""

from __future__ import annotations

from sqlalchemy.orm import Session

from consult.models import ConsultRequest
from storage import access
from storage.models import User
from storage.rules import Rules

COORDINATING_ROLES = ("coordinator", "admin")


def is_target_coordinator(consult: ConsultRequest, user: User) -> bool:
    return user.institution_id == consult.target_institution_id and user.role in COORDINATING_ROLES


def is_requester(consult: ConsultRequest, user: User) -> bool:
    return user.institution_id == consult.requesting_institution_id


def is_reader(consult: ConsultRequest, user: User) -> bool:
    return user.id == consult.reader_id


def is_reviewer(consult: ConsultRequest, user: User) -> bool:
    return user.id == consult.reviewer_id


def is_signer(consult: ConsultRequest, user: User) -> bool:
    return user.id in (consult.reader_id, consult.reviewer_id)


def is_target_specialist(consult: ConsultRequest, user: User) -> bool:
    return user.institution_id == consult.target_institution_id and user.role == "specialist"


def is_requester_staff(consult: ConsultRequest, user: User) -> bool:
    return is_requester(consult, user) and user.role in ("radiographer", "specialist", "coordinator", "admin")


RULES = Rules({
    "accept": (is_target_coordinator, "only the target institution's coordinator accepts"),
    "decline": (is_target_coordinator, "only the target institution's coordinator declines"),
    "cancel": (lambda c, u: is_requester(c, u) or is_target_coordinator(c, u),
               "only the requesting institution or the target's coordinator cancels"),
    "assign": (is_target_coordinator, "only the target institution's coordinator assigns"),
    "book": (is_target_coordinator, "only the target institution's coordinator books"),
    "start": (is_reader, "only the assigned reader starts the read"),
    "draft": (is_reader, "only the assigned reader writes the report"),
    "sign": (is_reader, "only the assigned reader signs the preliminary report"),
    "review": (is_reviewer, "only the assigned reviewer reviews"),
    "cosign": (is_reviewer, "only the assigned reviewer signs the final report"),
    "addendum": (is_signer, "only the report's signers add addenda"),
    "acknowledge": (is_requester, "only the requesting institution acknowledges"),
    "flag_critical": (is_signer, "only the consult's reader or reviewer flags a critical result"),
    "claim": (lambda c, u: c.emergency and (is_target_specialist(c, u) or is_target_coordinator(c, u)),
              "only a specialist or coordinator of the target takes an emergency consult"),
    "consent": (is_requester_staff, "only the requesting institution records the patient's consent"),
})


def require(action: str, consult: ConsultRequest, user: User) -> None:
    """Raise NotPermitted (403) with the action's message unless its rule holds."""
    RULES.require(action, consult, user)


def can_view(session: Session, consult: ConsultRequest, user: User) -> bool:
    """Requesting or target institution, the assigned signers, admins over either."""
    if user.institution_id in (consult.requesting_institution_id, consult.target_institution_id):
        return True
    if user.id in (consult.reader_id, consult.reviewer_id):
        return True
    if user.role != "admin":
        return False
    subtree = access.subtree_ids(session, user.institution_id)
    return consult.requesting_institution_id in subtree or consult.target_institution_id in subtree
