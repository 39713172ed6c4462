"""Maternal pages: a woman's pregnancies and the register form, the pregnancy page (current
colour, GA today, grading history, the grading form, referrals), the referral form, a referral's
page (the record, the transport control for the side that may move it, 下转 follow-up) and an
institution's referral list.

    GET  /patients/{pk}/pregnancies          her pregnancies; POST registers one
    GET  /pregnancies/{id}                   the pregnancy page; POST …/gradings, …/close
    GET  /pregnancies/{id}/referrals/new     the referral form; POST /pregnancies/{id}/referrals
    GET  /referrals                          the institution's referrals (上转/下转人次 above)
    GET  /referrals/{id}                     a referral; POST …/transport

Forms post and redirect (no script); a refusal shows beside the form that caused it. Every
read is audited, every change too, refused ones as denied."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from imaging import summary
from imaging.dataset import display_name
from imaging.models import Patient, Study
from maternal import policy, referrals, service
from maternal.criteria import COLOUR_LABELS, CRITERIA, Grade, by_colour
from storage import access, audit, identity
from storage.access import Principal
from storage.deps import DbSession, OptionalUser, RuntimeDep, WriteSession, client_address, sign_in_redirect
from storage.errors import Conflict, Invalid, NotFound, NotPermitted
from storage.runtime import Runtime
from storage.types import utcnow

router = APIRouter(include_in_schema=False)

COUNT_DAYS = 30


def _render(request: Request, template: str, status: int = 200, **context) -> HTMLResponse:
    context.update(colour_labels=COLOUR_LABELS, criteria=CRITERIA, status_labels=service.STATUS_LABELS,
                   transport_labels=referrals.TRANSPORT_LABELS, direction_labels=referrals.DIRECTION_LABELS)
    return request.app.state.templates.TemplateResponse(request, template, context, status_code=status)


def _audited_page(request: Request, runtime: Runtime, user, template: str, read: tuple[str, str, str],
                  context_of: Callable[[Principal], dict], detail_of: Callable[[dict], dict] = lambda context: {}):
    """A page of patient data for a signed-in user. `read` (action, object type, object id) is
    audited, as denied when the page's data is refused (the 404 goes on to the error page);
    `detail_of` picks from the page's context what the audit record names."""
    if user is None:
        return sign_in_redirect(request)
    principal = identity.principal_for(user)
    action, object_type, object_id = read
    with service.read_audited(runtime.db, principal=principal, action=action, object_type=object_type,
                              object_id=object_id, source=client_address(request)) as detail:
        context = context_of(principal)
        detail.update(detail_of(context))
    return _render(request, template, user=user, **context)


def _attempt(runtime: Runtime, request: Request, session: Session, principal: Principal, action: str,
             object_type: str, object_id: str, work: Callable):
    """(result, None), or (None, refusal) for a refusal the form shows (422, 409, 403; the 403
    audited as denied); a 404 goes on to the error page, audited as denied too."""
    try:
        with service.refusals_audited(runtime.db, session, principal=principal, action=action,
                                      object_type=object_type, object_id=object_id, source=client_address(request)):
            return work(), None
    except (Invalid, Conflict, NotPermitted) as exc:
        session.rollback()
        return None, exc


def _date(text: str, what: str) -> date | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise Invalid(f"{what}日期格式应为 年-月-日 / {what}: use YYYY-MM-DD") from None


# -- a woman's pregnancies ----------------------------------------------------------------


def _patient_context(session: Session, principal: Principal, patient_pk: int) -> dict:
    found = service.visible_of_patient(session, principal=principal, patient_pk=patient_pk)
    may_register = policy.may_register(session, principal, patient_pk)
    if not found and not policy.sees_a_study(session, principal, [patient_pk]):
        raise NotFound("未找到该患者 / patient not found")
    today = service.today()
    rows = [(p, service.current_grade(session, pregnancy_id=p.id), service.ga_of(p, today)) for p in found]
    return dict(patient_pk=patient_pk, patient=session.get(Patient, patient_pk), rows=rows,
                may_register=may_register, ongoing=any(p.status == "ongoing" for p in found), today=today)


@router.get("/patients/{patient_pk}/pregnancies", response_class=HTMLResponse)
def patient_pregnancies(patient_pk: int, request: Request, session: DbSession, runtime: RuntimeDep,
                        user: OptionalUser):
    return _audited_page(request, runtime, user, "maternal/patient.html",
                         ("pregnancy.list", "patient", str(patient_pk)),
                         lambda principal: _patient_context(session, principal, patient_pk),
                         lambda context: {"pregnancies": [p.id for p, _, _ in context["rows"]]})


@router.post("/patients/{patient_pk}/pregnancies", response_class=HTMLResponse)
def register_pregnancy(patient_pk: int, request: Request, session: WriteSession, runtime: RuntimeDep,
                       user: OptionalUser, lmp: str = Form(""), edd: str = Form(""), gravida: int = Form(1),
                       para: int = Form(0)):
    if user is None:
        return sign_in_redirect(request)
    principal = identity.principal_for(user)
    made, refusal = _attempt(runtime, request, session, principal, "pregnancy.create", "patient", str(patient_pk),
                             lambda: service.register(session=session, principal=principal, patient_pk=patient_pk,
                                                      lmp=_date(lmp, "末次月经 LMP"), edd=_date(edd, "预产期 EDD"),
                                                      gravida=gravida, para=para, source=client_address(request)))
    if refusal is None:
        return RedirectResponse(f"/pregnancies/{made.id}", status_code=303)
    return _render(request, "maternal/patient.html", status=refusal.status, user=user, error=refusal.detail,
                   form={"lmp": lmp, "edd": edd, "gravida": gravida, "para": para},
                   **_patient_context(session, principal, patient_pk))


# -- the pregnancy page ------------------------------------------------------------------


def _pregnancy_context(session: Session, principal: Principal, pregnancy_id: int) -> dict:
    pregnancy = service.get(session=session, principal=principal, pregnancy_id=pregnancy_id)
    today = service.today()
    history = service.gradings(session, pregnancy_id=pregnancy.id)
    involved = policy.involvement(session, pregnancy)
    patient = service.patient_of(session, principal, pregnancy)
    return dict(
        pregnancy=pregnancy, patient=patient, name=display_name(patient.name) if patient else "",
        current=service.grade_of_row(history[0]) if history else None, history=history,
        grade_of=service.grade_of_row, ga=service.ga_of(pregnancy, today), GA=service.GestationalAge,
        postpartum=service.postpartum_days(pregnancy, today), open=service.grading_open(pregnancy, today),
        closes_on=pregnancy.ended_on + timedelta(days=service.POSTPARTUM_DAYS) if pregnancy.ended_on else None,
        groups=by_colour(), chosen=set(history[0].criteria) if history else set(),
        referrals=referrals.of_pregnancy(session, pregnancy_id=pregnancy.id),
        can_grade=policy.PREGNANCY_RULES.allows("grade", principal, involved),
        can_refer=policy.PREGNANCY_RULES.allows("refer", principal, involved), today=today)


@router.get("/pregnancies/{pregnancy_id}", response_class=HTMLResponse)
def pregnancy_page(pregnancy_id: int, request: Request, session: DbSession, runtime: RuntimeDep,
                   user: OptionalUser):
    return _audited_page(request, runtime, user, "maternal/pregnancy.html",
                         ("pregnancy.view", "pregnancy", str(pregnancy_id)),
                         lambda principal: _pregnancy_context(session, principal, pregnancy_id))


def _pregnancy_change(request: Request, session: Session, runtime: Runtime, user, pregnancy_id: int, action: str,
                      work: Callable, form: dict) -> HTMLResponse:
    principal = identity.principal_for(user)
    _, refusal = _attempt(runtime, request, session, principal, action, "pregnancy", str(pregnancy_id), work)
    if refusal is None:
        return RedirectResponse(f"/pregnancies/{pregnancy_id}", status_code=303)
    return _render(request, "maternal/pregnancy.html", status=refusal.status, user=user, error=refusal.detail,
                   error_at=action, form=form, **_pregnancy_context(session, principal, pregnancy_id))


@router.post("/pregnancies/{pregnancy_id}/gradings", response_class=HTMLResponse)
def grade(pregnancy_id: int, request: Request, session: WriteSession, runtime: RuntimeDep, user: OptionalUser,
          criteria: list[str] = Form([]), note: str = Form("")):
    if user is None:
        return sign_in_redirect(request)

    def work():
        return service.grade(session=session, principal=identity.principal_for(user), pregnancy_id=pregnancy_id,
                             criteria=criteria, note=note, source=client_address(request))
    return _pregnancy_change(request, session, runtime, user, pregnancy_id, "pregnancy.grade", work,
                             {"criteria": set(criteria), "note": note})


@router.post("/pregnancies/{pregnancy_id}/close", response_class=HTMLResponse)
def close(pregnancy_id: int, request: Request, session: WriteSession, runtime: RuntimeDep, user: OptionalUser,
          status: str = Form(""), ended_on: str = Form("")):
    if user is None:
        return sign_in_redirect(request)

    def work():
        day = _date(ended_on, "结案 Closing")
        if day is None:
            raise Invalid("请填写分娩或终止日期 / give the date of delivery or end")
        return service.close(session=session, principal=identity.principal_for(user), pregnancy_id=pregnancy_id,
                             status=status, ended_on=day, source=client_address(request))
    return _pregnancy_change(request, session, runtime, user, pregnancy_id, "pregnancy.close", work,
                             {"status": status, "ended_on": ended_on})


# -- referrals ---------------------------------------------------------------------------


def _referral_form_context(session: Session, principal: Principal, pregnancy_id: int, form: dict) -> dict:
    context = _pregnancy_context(session, principal, pregnancy_id)
    pregnancy = context["pregnancy"]
    scope = access.scope_for(session, principal)
    uids = session.scalars(select(Study.study_instance_uid).where(
        Study.patient_pk.in_(policy.record_pks(session, pregnancy)),
        scope.study_filter(Study.institution_id, Study.study_instance_uid))
        .order_by(Study.study_date.desc(), Study.id.desc()).limit(100)).all()
    found = summary.summarize(session, list(uids))
    return dict(targets=referrals.targets(session, principal), studies=[found[u] for u in uids if u in found],
                form=form, **context)


@router.get("/pregnancies/{pregnancy_id}/referrals/new", response_class=HTMLResponse)
def referral_form(pregnancy_id: int, request: Request, session: DbSession, runtime: RuntimeDep,
                  user: OptionalUser):
    return _audited_page(request, runtime, user, "maternal/referral_new.html",
                         ("referral.form", "pregnancy", str(pregnancy_id)),
                         lambda principal: _referral_form_context(session, principal, pregnancy_id, form={}),
                         lambda context: {"studies": [s.uid for s in context["studies"]]})


@router.post("/pregnancies/{pregnancy_id}/referrals", response_class=HTMLResponse)
def refer(pregnancy_id: int, request: Request, session: WriteSession, runtime: RuntimeDep, user: OptionalUser,
          to: str = Form(""), key_findings: str = Form(""), studies: list[str] = Form([]),
          consult_id: str = Form(""), follow_up_instructions: str = Form(""), follow_up_on: str = Form("")):
    if user is None:
        return sign_in_redirect(request)
    principal = identity.principal_for(user)

    def work():
        consult = consult_id.strip().lstrip("#")
        if consult and not consult.isdigit():
            raise Invalid("会诊编号应为数字 / the consult number is a number")
        return referrals.create(session=session, principal=principal, pregnancy_id=pregnancy_id, to_code=to,
                                key_findings=key_findings, study_uids=studies,
                                consult_id=int(consult) if consult else None,
                                follow_up_instructions=follow_up_instructions,
                                follow_up_on=_date(follow_up_on, "随访 Follow-up"), source=client_address(request))
    made, refusal = _attempt(runtime, request, session, principal, "referral.create", "pregnancy", str(pregnancy_id),
                             work)
    if refusal is None:
        return RedirectResponse(f"/referrals/{made.id}", status_code=303)
    form = {"to": to, "key_findings": key_findings, "studies": set(studies), "consult_id": consult_id,
            "follow_up_instructions": follow_up_instructions, "follow_up_on": follow_up_on}
    return _render(request, "maternal/referral_new.html", status=refusal.status, user=user, error=refusal.detail,
                   **_referral_form_context(session, principal, pregnancy_id, form))


@router.get("/referrals", response_class=HTMLResponse)
def referral_list(request: Request, session: DbSession, runtime: RuntimeDep, user: OptionalUser, side: str = "",
                  direction: str = ""):
    """The referrals sent and received by the user's institution (an admin's subtree)."""
    if user is None:
        return sign_in_redirect(request)
    principal = identity.principal_for(user)
    side = side if side in ("in", "out") else ""
    found = referrals.listing(session, principal=principal, side=side, direction=direction)
    counts = referrals.referral_counts(session, institution_ids=referrals.institutions_of(session, principal),
                                       since=utcnow() - timedelta(days=COUNT_DAYS))
    audit.record_read(runtime.db, principal=principal, action="referral.list", object_type="referral",
                      object_id=",".join(str(r.id) for r in found)[:4000], source=client_address(request),
                      outcome="ok", detail={"count": len(found)})
    return _render(request, "maternal/referrals.html", user=user, items=found, counts=counts, days=COUNT_DAYS,
                   side=side, direction=direction if direction in referrals.DIRECTION_LABELS else "",
                   name_of=display_name, mine=referrals.institutions_of(session, principal))


def _referral_context(session: Session, principal: Principal, referral_id: int) -> dict:
    referral = referrals.get(session=session, principal=principal, referral_id=referral_id)
    return dict(referral=referral, record=referral.record, events=referrals.events(session, referral_id=referral.id),
                moves=referrals.next_statuses(principal, referral),
                name=display_name(referral.record["patient"]["name"]),
                history=[(row, _grade(row["colour"])) for row in referral.record["colours"]],
                current=_grade(referral.record["colour"]),
                can_open_pregnancy=policy.can_view(session, principal, referral.pregnancy),
                can_open_study={s["uid"]: _sees(session, principal, s["uid"]) for s in referral.record["studies"]})


def _grade(colour: str) -> Grade | None:
    return Grade.parse(colour) if colour else None


def _sees(session: Session, principal: Principal, uid: str) -> bool:
    study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
    return study is not None and access.can_see_study(session, principal, institution_id=study.institution_id,
                                                      study_uid=uid)


@router.get("/referrals/{referral_id}", response_class=HTMLResponse)
def referral_page(referral_id: int, request: Request, session: DbSession, runtime: RuntimeDep, user: OptionalUser):
    return _audited_page(request, runtime, user, "maternal/referral.html",
                         ("referral.view", "referral", str(referral_id)),
                         lambda principal: _referral_context(session, principal, referral_id))


@router.post("/referrals/{referral_id}/transport", response_class=HTMLResponse)
def transport(referral_id: int, request: Request, session: WriteSession, runtime: RuntimeDep, user: OptionalUser,
              status: str = Form(""), reason: str = Form("")):
    if user is None:
        return sign_in_redirect(request)
    principal = identity.principal_for(user)
    _, refusal = _attempt(runtime, request, session, principal, "referral.transport", "referral", str(referral_id),
                          lambda: referrals.move(session=session, principal=principal, referral_id=referral_id,
                                                 to_status=status, reason=reason, source=client_address(request)))
    if refusal is None:
        return RedirectResponse(f"/referrals/{referral_id}", status_code=303)
    return _render(request, "maternal/referral.html", status=refusal.status, user=user, error=refusal.detail,
                   **_referral_context(session, principal, referral_id))
