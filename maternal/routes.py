"""The maternal JSON API under /api: pregnancies, risk gradings, referrals and their transport
status, and the 上转/下转 counts. Every read of patient data is audited, every change too, and
refused changes as denied."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Query, Request, status
from sqlalchemy.orm import Session

from maternal import referrals, service
from maternal.criteria import CRITERIA
from maternal.models import Pregnancy, Referral, RiskGrading
from maternal.schemas import (Closing, Counts, CriterionOut, GradingCreate, GradingOut, PregnancyCreate,
                              PregnancyOut, ReferralCreate, ReferralOut, Transport)
from storage import audit
from storage.access import Principal
from storage.deps import CurrentPrincipal, DbSession, WriteSession, client_address
from storage.types import utcnow

router = APIRouter(prefix="/api", tags=["maternal"])


def grading_out(grading: RiskGrading) -> GradingOut:
    found = service.grade_of_row(grading)
    ga = service.GestationalAge(grading.ga_days) if grading.ga_days is not None else None
    return GradingOut(id=grading.id, colour=found.colour, label=f"{found.label} / {found.label_en}",
                      criteria=list(grading.criteria), note=grading.note, ga=str(ga) if ga else "",
                      graded_by=grading.graded_by.display_name or grading.graded_by.username,
                      institution=grading.institution.code, graded_at=grading.graded_at)


def referral_out(referral: Referral) -> ReferralOut:
    return ReferralOut(id=referral.id, pregnancy_id=referral.pregnancy_id, direction=referral.direction,
                       from_institution=referral.from_institution.code, to_institution=referral.to_institution.code,
                       consult_id=referral.consult_id, transport_status=referral.transport_status,
                       cancel_reason=referral.cancel_reason, follow_up_instructions=referral.follow_up_instructions,
                       follow_up_on=referral.follow_up_on, created_at=referral.created_at, record=referral.record)


def pregnancy_out(session: Session, pregnancy: Pregnancy, *, full: bool = True) -> PregnancyOut:
    today = service.today()
    current = service.current_grade(session, pregnancy_id=pregnancy.id)
    ga = service.ga_of(pregnancy, today)
    return PregnancyOut(
        id=pregnancy.id, person_id=pregnancy.person_id, patient_pk=pregnancy.patient_pk, lmp=pregnancy.lmp,
        edd=pregnancy.edd, gravida=pregnancy.gravida, para=pregnancy.para, status=pregnancy.status,
        ended_on=pregnancy.ended_on, institution=pregnancy.institution.code,
        colour=current.colour if current else None, ga_today=str(ga) if ga else "",
        grading_open=service.grading_open(pregnancy, today),
        gradings=[grading_out(g) for g in service.gradings(session, pregnancy_id=pregnancy.id)] if full else [],
        referrals=[referral_out(r) for r in referrals.of_pregnancy(session, pregnancy_id=pregnancy.id)] if full else [])


def _read(request: Request, principal: Principal, action: str, object_type: str, object_id: str, **detail) -> None:
    audit.record_read(request.app.state.runtime.db, principal=principal, action=action, object_type=object_type,
                      object_id=object_id, source=client_address(request), outcome="ok", detail=detail)


def _reading(request: Request, principal: Principal, action: str, object_type: str, object_id: str):
    """service.read_audited for this request: one object read, audited as denied when refused."""
    return service.read_audited(request.app.state.runtime.db, principal=principal, action=action,
                                object_type=object_type, object_id=object_id, source=client_address(request))


def _changing(request: Request, session: Session, principal: Principal, action: str, object_type: str,
              object_id: str):
    """service.refusals_audited for this request: a refused change audited as denied."""
    return service.refusals_audited(request.app.state.runtime.db, session, principal=principal, action=action,
                                    object_type=object_type, object_id=object_id, source=client_address(request))


@router.get("/maternal/criteria", response_model=list[CriterionOut])
async def criteria() -> list[CriterionOut]:
    """The grading criteria (2017 规范), by colour; no patient data."""
    return [CriterionOut(code=c.code, colour=c.colour, zh=c.zh, en=c.en, needs_note=c.needs_note)
            for c in CRITERIA.values()]


@router.get("/patients/{patient_pk}/pregnancies", response_model=list[PregnancyOut])
def patient_pregnancies(patient_pk: int, request: Request, session: DbSession, principal: CurrentPrincipal):
    """The patient's pregnancies the caller may see, newest first (without history)."""
    found = service.visible_of_patient(session, principal=principal, patient_pk=patient_pk)
    _read(request, principal, "pregnancy.list", "patient", str(patient_pk), pregnancies=[p.id for p in found])
    return [pregnancy_out(session, p, full=False) for p in found]


@router.post("/patients/{patient_pk}/pregnancies", response_model=PregnancyOut, status_code=status.HTTP_201_CREATED)
def register(patient_pk: int, body: PregnancyCreate, request: Request, session: WriteSession,
             principal: CurrentPrincipal):
    """Open a pregnancy record (建档) managed by the caller's institution."""
    with _changing(request, session, principal, "pregnancy.create", "patient", str(patient_pk)):
        pregnancy = service.register(session=session, principal=principal, patient_pk=patient_pk, lmp=body.lmp,
                                     edd=body.edd, gravida=body.gravida, para=body.para,
                                     source=client_address(request))
    return pregnancy_out(session, pregnancy)


@router.get("/pregnancies/{pregnancy_id}", response_model=PregnancyOut)
def pregnancy(pregnancy_id: int, request: Request, session: DbSession, principal: CurrentPrincipal):
    """A pregnancy with its current colour, GA today, every grading and its referrals."""
    with _reading(request, principal, "pregnancy.view", "pregnancy", str(pregnancy_id)):
        found = service.get(session=session, principal=principal, pregnancy_id=pregnancy_id)
    return pregnancy_out(session, found)


@router.post("/pregnancies/{pregnancy_id}/gradings", response_model=GradingOut, status_code=status.HTTP_201_CREATED)
def grade(pregnancy_id: int, body: GradingCreate, request: Request, session: WriteSession,
          principal: CurrentPrincipal):
    """Grade the pregnancy from the criteria; the colour is what they give (purple combines)."""
    with _changing(request, session, principal, "pregnancy.grade", "pregnancy", str(pregnancy_id)):
        grading = service.grade(session=session, principal=principal, pregnancy_id=pregnancy_id,
                                criteria=body.criteria, note=body.note, source=client_address(request))
    return grading_out(grading)


@router.post("/pregnancies/{pregnancy_id}/close", response_model=PregnancyOut)
def close(pregnancy_id: int, body: Closing, request: Request, session: WriteSession, principal: CurrentPrincipal):
    """Delivered or ended on a date (grading stays open 42 days after)."""
    with _changing(request, session, principal, "pregnancy.close", "pregnancy", str(pregnancy_id)):
        found = service.close(session=session, principal=principal, pregnancy_id=pregnancy_id, status=body.status,
                              ended_on=body.ended_on, source=client_address(request))
    return pregnancy_out(session, found)


@router.post("/pregnancies/{pregnancy_id}/referrals", response_model=ReferralOut, status_code=status.HTTP_201_CREATED)
def refer(pregnancy_id: int, body: ReferralCreate, request: Request, session: WriteSession,
          principal: CurrentPrincipal):
    """上转 or 下转 (by the tree) with the record as it stands now; the receiver is granted the studies."""
    with _changing(request, session, principal, "referral.create", "pregnancy", str(pregnancy_id)):
        referral = referrals.create(session=session, principal=principal, pregnancy_id=pregnancy_id, to_code=body.to,
                                    key_findings=body.key_findings, study_uids=body.study_uids,
                                    consult_id=body.consult_id, follow_up_instructions=body.follow_up_instructions,
                                    follow_up_on=body.follow_up_on, source=client_address(request))
    return referral_out(referral)


@router.get("/referrals/counts", response_model=Counts)
def counts(session: DbSession, principal: CurrentPrincipal, days: int = Query(30, ge=1, le=3660)) -> Counts:
    """上转/下转人次 of the caller's institutions (an admin's subtree) over the last `days` days; counts only."""
    found = referrals.referral_counts(session, institution_ids=referrals.institutions_of(session, principal),
                                      since=utcnow() - timedelta(days=days))
    return Counts(**found)


@router.get("/referrals", response_model=list[ReferralOut])
def referral_list(request: Request, session: DbSession, principal: CurrentPrincipal, side: str = "",
                  direction: str = "") -> list[ReferralOut]:
    """Referrals to ("in") or from ("out") the caller's institutions, newest first."""
    found = referrals.listing(session, principal=principal, side=side, direction=direction)
    _read(request, principal, "referral.list", "referral", ",".join(str(r.id) for r in found)[:4000],
          count=len(found))
    return [referral_out(r) for r in found]


@router.get("/referrals/{referral_id}", response_model=ReferralOut)
def referral(referral_id: int, request: Request, session: DbSession, principal: CurrentPrincipal):
    with _reading(request, principal, "referral.view", "referral", str(referral_id)):
        found = referrals.get(session=session, principal=principal, referral_id=referral_id)
    return referral_out(found)


@router.post("/referrals/{referral_id}/transport", response_model=ReferralOut)
def transport(referral_id: int, body: Transport, request: Request, session: WriteSession,
              principal: CurrentPrincipal):
    """Move the transport status: in_transit (referring side), arrived (receiving side), cancelled
    (either side, with a reason)."""
    with _changing(request, session, principal, "referral.transport", "referral", str(referral_id)):
        found = referrals.move(session=session, principal=principal, referral_id=referral_id, to_status=body.status,
                               reason=body.reason, source=client_address(request))
    return referral_out(found)
