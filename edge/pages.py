"""The township edge's registration desk (登记台):

    GET  /desk                    the form and the day's worklist (?day=YYYY-MM-DD, local date)
    POST /desk                    register; a refused form comes back with each message beside its field
    POST /desk/{entry_id}/cancel  take a registration off the modalities' worklist
    POST /desk/import             register a CSV list at once (edge/worklist_import.py); a refused
                                  list comes back with every row's problems beside the file control
    GET  /desk/import-template.csv  the list's header row and an example row, for Excel

Forms post and redirect (no script). The list read is audited (worklist.list), every change too
(edge/worklist.py), refused ones as denied."""

from __future__ import annotations

from datetime import date, timedelta

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from edge import worklist, worklist_import
from edge.worklist import FormErrors, Registration
from edge.worklist_import import ListRefused, ListTooLarge
from imaging.persons import mask
from maternal.criteria import COLOUR_LABELS, COLOURS
from storage import audit, identity, localtime
from storage.access import Principal
from storage.deps import DbSession, OptionalUser, RuntimeDep, WriteSession, client_address, sign_in_redirect
from storage.errors import NotFound, NotPermitted
from storage.runtime import Runtime

router = APIRouter(include_in_schema=False)


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text) if text else worklist.localtime_today()
    except ValueError:
        return worklist.localtime_today()


def _context(session: Session, runtime: Runtime, principal: Principal, day: date) -> dict:
    rows = worklist.day_list(session=session, principal=principal, day=day)
    today = worklist.localtime_today()
    return dict(rows=rows, day=day, today=today, previous=day - timedelta(days=1), following=day + timedelta(days=1),
                exams=worklist.EXAMS, modality_labels=worklist.MODALITY_LABELS, sex_labels=worklist.SEX_LABELS,
                colours=COLOURS, colour_labels=COLOUR_LABELS, may_register=worklist.may_register(principal),
                stations=worklist.stations(session=session, institution_id=principal.institution_id)
                if principal.institution_id is not None else [],
                mwl_ae=runtime.settings.edge_mwl_ae, mwl_port=runtime.settings.edge_mwl_port,
                mask=mask, age_on=worklist.age_on, at=lambda value: localtime.display(value, "%H:%M"))


def _page(request: Request, session: Session, runtime: Runtime, user, day: date, *, status: int = 200,
          form: Registration | None = None, errors: dict | None = None, notice: str = "",
          import_problems: list[str] | None = None) -> HTMLResponse:
    principal = identity.principal_for(user)
    context = _context(session, runtime, principal, day)
    audit.record_read(runtime.db, principal=principal, action="worklist.list", object_type="worklist",
                      object_id=day.isoformat(), source=client_address(request),
                      detail={"entries": [row.entry.accession_number for row in context["rows"]][:200]})
    return request.app.state.templates.TemplateResponse(
        request, "edge/desk.html", dict(context, user=user, form=form or Registration(), errors=errors or {},
                                        notice=notice, import_problems=import_problems or [],
                                        problems_shown=worklist_import.MAX_PROBLEMS_SHOWN), status_code=status)


@router.get("/desk", response_class=HTMLResponse)
def desk(request: Request, session: DbSession, runtime: RuntimeDep, user: OptionalUser, day: str = "",
         registered: str = "", cancelled: str = "", imported: str = ""):
    if user is None:
        return sign_in_redirect(request)
    # Only numbers are echoed back: a crafted link cannot put words on the desk.
    registered, cancelled, imported = (v if v.isdigit() and len(v) <= 16 else ""
                                       for v in (registered, cancelled, imported))
    notice = (f"已登记，检查号 {registered}：设备的工作列表中已可见 / registered as {registered}: "
              "the modality sees it on its worklist") if registered else ""
    notice = notice or (f"已取消 {cancelled} / cancelled" if cancelled else "")
    notice = notice or (f"已导入 {imported} 人 Imported {imported}：设备的工作列表中已可见 / the modalities see "
                        "them on their worklist" if imported else "")
    return _page(request, session, runtime, user, _day(day), notice=notice)


def _denied(runtime: Runtime, request: Request, session: Session, principal: Principal, action: str,
            object_id: str, exc) -> None:
    """A refused change is audited as denied, after the request's transaction is rolled back
    (on SQLite it holds the write lock the record needs)."""
    session.rollback()
    audit.record(runtime.db, principal=principal, action=action, object_type="worklist", object_id=object_id,
                 source=client_address(request), outcome="denied", detail={"reason": exc.detail[:300]})


def _modality_of(code: str) -> str:
    return next((m for m, exams in worklist.EXAMS.items() if any(e[0] == code for e in exams)), "")


@router.post("/desk", response_class=HTMLResponse)
def register(request: Request, session: WriteSession, runtime: RuntimeDep, user: OptionalUser,
             family_name: str = Form(""), given_name: str = Form(""), pinyin: str = Form(""), sex: str = Form(""),
             birth_date: str = Form(""), resident_id: str = Form(""), phone: str = Form(""),
             patient_id: str = Form(""), procedure_code: str = Form(""), station_ae: str = Form(""),
             scheduled_date: str = Form(""), scheduled_time: str = Form(""), risk_colour: str = Form(""),
             urgent: str = Form("")):
    if user is None:
        return sign_in_redirect(request)
    principal = identity.principal_for(user)
    form = Registration(family_name=family_name, given_name=given_name, pinyin=pinyin, sex=sex, birth_date=birth_date,
                        resident_id=resident_id, phone=phone, patient_id=patient_id,
                        modality=_modality_of(procedure_code.strip().upper()), procedure_code=procedure_code,
                        station_ae=station_ae, scheduled_date=scheduled_date, scheduled_time=scheduled_time,
                        risk_colour=risk_colour, urgent=bool(urgent))
    try:
        entry = worklist.register(session=session, principal=principal, registration=form,
                                  source=client_address(request))
    except NotPermitted as exc:
        _denied(runtime, request, session, principal, "worklist.register", "", exc)
        raise
    except FormErrors as exc:
        session.rollback()
        if "modality" in exc.errors:  # one select picks both: show it once, at the exam
            exc.errors.setdefault("procedure_code", exc.errors.pop("modality"))
        # A read session for the page again: on SQLite a write session would hold the lock the
        # read audit record needs.
        with runtime.db.scope(readonly=True) as read:
            return _page(request, read, runtime, user, _day(scheduled_date), status=exc.status, form=form,
                         errors=exc.errors)
    day = entry.scheduled_at.astimezone(localtime.zone()).date()
    return RedirectResponse(f"/desk?day={day.isoformat()}&registered={entry.accession_number}", status_code=303)


@router.post("/desk/{entry_id}/cancel", response_class=HTMLResponse)
def cancel(entry_id: int, request: Request, session: WriteSession, runtime: RuntimeDep, user: OptionalUser):
    if user is None:
        return sign_in_redirect(request)
    principal = identity.principal_for(user)
    try:
        entry = worklist.cancel(session=session, principal=principal, entry_id=entry_id,
                                source=client_address(request))
    except (NotPermitted, NotFound) as exc:
        _denied(runtime, request, session, principal, "worklist.cancel", str(entry_id), exc)
        raise
    day = entry.scheduled_at.astimezone(localtime.zone()).date()
    return RedirectResponse(f"/desk?day={day.isoformat()}&cancelled={entry.accession_number}", status_code=303)


def _upload(file: UploadFile | None) -> tuple[bytes, str]:
    """(the file's bytes, its name); one over the limit is refused before it is read."""
    if file is None:
        return b"", ""
    if file.size is not None and file.size > worklist_import.MAX_BYTES:
        raise ListTooLarge(file.size)
    return file.file.read(worklist_import.MAX_BYTES + 1), file.filename or ""


@router.post("/desk/import", response_class=HTMLResponse)
def import_list(request: Request, session: WriteSession, runtime: RuntimeDep, user: OptionalUser,
                file: UploadFile | None = File(None)):
    if user is None:
        return sign_in_redirect(request)
    principal = identity.principal_for(user)
    try:
        data, filename = _upload(file)
        imported = worklist_import.import_list(session=session, principal=principal, data=data, filename=filename,
                                               source=client_address(request))
    except NotPermitted as exc:
        _denied(runtime, request, session, principal, "worklist.import", "", exc)
        raise
    except (ListRefused, ListTooLarge) as exc:
        session.rollback()  # nothing of the list stays: the rows entered before the refusal go too
        with runtime.db.scope(readonly=True) as read:
            return _page(request, read, runtime, user, worklist.localtime_today(), status=exc.status,
                         import_problems=exc.problems)
    # A refused list's page opens at the file control (the form's action ends #desk-import); an
    # imported one at the top (HTML's "#top"), or the browser would carry #desk-import over.
    return RedirectResponse(f"/desk?day={imported.first_day}&imported={imported.count}#top", status_code=303)


@router.get("/desk/import-template.csv")
def import_template(request: Request, user: OptionalUser):
    if user is None:
        return sign_in_redirect(request)
    return Response(worklist_import.template_csv(), media_type="text/csv; charset=utf-8",
                    headers={"content-disposition": "attachment; filename=\"worklist-import.csv\"; "
                                                    "filename*=UTF-8''%E7%99%BB%E8%AE%B0%E5%AF%BC%E5%85%A5.csv"})
