"""Who may *do* what with a pregnancy and its referrals, and who may see them (built on
storage/access.py, which alone says who sees which studies).

- grade, close, register, refer: radiographers, specialists and coordinators of the managing
  institution or of an institution the pregnancy was referred to (register: of the institution
  that will manage it, who must see one of the patient's studies);
- dispatch (in transit): the referring institution's staff; arrive: the receiving
  institution's staff; cancel: either side's staff;
- see: whoever may see one of the patient's studies, the managing institution, an institution
  the pregnancy was referred to, and admins over any of those; a referral also its two sides.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from imaging import persons
from imaging.models import Patient, Study
from maternal.models import Pregnancy, Referral
from storage import access
from storage.access import Principal
from storage.rules import Rules

STAFF_ROLES = ("radiographer", "specialist", "coordinator")


@dataclass(frozen=True)
class Involvement:
    """The institutions that take part in a pregnancy's care."""

    managing_id: int
    referred_to: frozenset[int]

    @property
    def institutions(self) -> frozenset[int]:
        return self.referred_to | {self.managing_id}


def involvement(session: Session, pregnancy: Pregnancy) -> Involvement:
    """The managing institution and those referred to (cancelled referrals do not count)."""
    targets = session.scalars(select(Referral.to_institution_id).where(
        Referral.pregnancy_id == pregnancy.id, Referral.transport_status != "cancelled"))
    return Involvement(pregnancy.institution_id, frozenset(targets))


def is_staff(principal: Principal) -> bool:
    return principal.kind == "user" and principal.role in STAFF_ROLES


def caring_staff(principal: Principal, involved: Involvement) -> bool:
    return is_staff(principal) and principal.institution_id in involved.institutions


PREGNANCY_RULES = Rules({
    "grade": (caring_staff, "仅管理机构或转入机构的技师、医师、协调员可评估风险 / only staff of the managing "
              "or a referred-to institution grade"),
    "close": (caring_staff, "仅管理机构或转入机构的医务人员可结案 / only staff of the managing or a "
              "referred-to institution close a pregnancy"),
    "refer": (caring_staff, "仅管理机构或转入机构的医务人员可转诊 / only staff of the managing or a "
              "referred-to institution refer"),
})


def require(action: str, principal: Principal, involved: Involvement) -> None:
    """Raise NotPermitted (403) with the action's message unless its rule holds."""
    PREGNANCY_RULES.require(action, principal, involved)


def is_sender(principal: Principal, referral: Referral) -> bool:
    return is_staff(principal) and principal.institution_id == referral.from_institution_id


def is_receiver(principal: Principal, referral: Referral) -> bool:
    return is_staff(principal) and principal.institution_id == referral.to_institution_id


REFERRAL_RULES = Rules({
    "in_transit": (is_sender, "仅转出机构可标记“转运中” / only the referring institution marks the patient in transit"),
    "arrived": (is_receiver, "仅接收机构可确认到达 / only the receiving institution marks arrival"),
    "cancelled": (lambda p, r: is_sender(p, r) or is_receiver(p, r),
                  "仅转出或接收机构可取消转诊 / only the referring or receiving institution cancels"),
})


def require_referral(action: str, principal: Principal, referral: Referral) -> None:
    """Raise NotPermitted (403) with the move's message unless its rule holds."""
    REFERRAL_RULES.require(action, principal, referral)


def may_register(session: Session, principal: Principal, patient_pk: int) -> bool:
    """Staff who see one of the patient's studies register her pregnancy (their institution manages it)."""
    return is_staff(principal) and sees_a_study(session, principal, [patient_pk])


def record_pks(session: Session, pregnancy: Pregnancy) -> list[int]:
    """The patient records the pregnancy belongs to: the person's records, or its record and
    those linked with it since."""
    if pregnancy.person_id is None:
        return [record.id for record in persons.records_of(session, pregnancy.patient_pk)]
    return list(session.scalars(select(Patient.id).where(Patient.person_id == pregnancy.person_id)))


def sees_a_study(session: Session, principal: Principal, patient_pks: list[int]) -> bool:
    if not patient_pks:
        return False
    scope = access.scope_for(session, principal)
    found = session.scalar(select(Study.id).where(Study.patient_pk.in_(patient_pks),
                                                  scope.study_filter(Study.institution_id, Study.study_instance_uid))
                           .limit(1))
    return found is not None


def _admin_over(session: Session, principal: Principal, institutions: frozenset[int]) -> bool:
    if not principal.is_admin or principal.institution_id is None:
        return False
    return bool(access.subtree_ids(session, principal.institution_id) & institutions)


def can_view(session: Session, principal: Principal, pregnancy: Pregnancy) -> bool:
    if principal.kind == "system":
        return True
    if principal.kind != "user" or principal.institution_id is None:
        return False
    involved = involvement(session, pregnancy)
    if principal.institution_id in involved.institutions:
        return True
    return _admin_over(session, principal, involved.institutions) or \
        sees_a_study(session, principal, record_pks(session, pregnancy))


def can_view_referral(session: Session, principal: Principal, referral: Referral) -> bool:
    sides = frozenset({referral.from_institution_id, referral.to_institution_id})
    if principal.kind == "user" and principal.institution_id in sides:
        return True
    return _admin_over(session, principal, sides) or can_view(session, principal, referral.pregnancy)
