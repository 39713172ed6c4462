"""Live consult rooms over HTTP: the signalling WebSocket, the room page, ICE servers,
chat history and recordings (participants and the coordinator only).

A WebSocket's user comes from `storage.deps.room_user`: the `lancang_session` cookie or a
single-use `ticket` (POST /api/rooms/{id}/ticket, below).
"""


import asyncio
import logging
import re
from contextlib import asynccontextmanager
from fastapi import APIRouter, FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from consult import rooms
from consult.models import ConsultRequest
from consult.pages import STATUS_LABELS
from consult.room_models import Recording
from storage import audit, identity
from storage.deps import CurrentUser, DbSession, RuntimeDep, room_user, sign_in_redirect
from storage.errors import Conflict, DomainError, Invalid, NotAuthenticated, NotFound
from storage.models import User
from storage.types import RowId

log = logging.getLogger("lancang.consult.rooms")

CLOSE_CODES = {401: 4401, 403: 4403, 404: 4404, 409: 4409}
RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


def registry_of(app) -> "rooms.RoomRegistry":
    """The process's room registry, made on first use (the runtime exists by then)."""
    registry = getattr(app.state, "rooms", None)
    if registry is None:
        runtime = app.state.runtime
        registry = rooms.RoomRegistry(settings=runtime.settings, db=runtime.db, store=runtime.store)
        app.state.rooms = registry
    return registry


@asynccontextmanager
async def room_lifespan(app: FastAPI):
    yield
    registry = getattr(app.state, "rooms", None)
    if registry is not None:
        await registry.close()  # stores running recordings, closes every peer connection
        log.info("room.shutdown.ok")


router = APIRouter(tags=["rooms"], lifespan=room_lifespan)


def seat_of(runtime, connection, consult_id: int) -> rooms.Seat:
    """Authenticate and authorise in one unit of work; refusals are audited."""
    with runtime.db.scope(readonly=True) as session:
        user = room_user(connection, session)
        if user is None:
            raise NotAuthenticated("请先登录 / login required")
        try:
            return rooms.seat_for(session=session, consult_id=consult_id, user=user)
        except DomainError as exc:
            audit.record(runtime.db, principal=None, actor=user.username, action="room.join",
                         outcome="denied", object_type="consult", object_id=str(consult_id),
                         detail={"reason": exc.detail if hasattr(exc, "detail") else str(exc)})
            raise


def _audit_read(request: Request, user, action: str, consult_id: int) -> None:
    """Room pages, chat and recording lists show a patient's consult: every read is audited."""
    audit.record_read(request.app.state.runtime.db, principal=None, actor=user.username, action=action,
                      object_type="consult", object_id=str(consult_id),
                      source=request.client.host if request.client else "")


@router.websocket("/ws/rooms/{consult_id}")
async def room_socket(websocket: WebSocket, consult_id: int):
    """Signalling: JSON messages (offer/answer, slots, mode, consent, record, chat, view, lead)."""
    runtime = websocket.app.state.runtime
    await websocket.accept()
    try:
        seat = await asyncio.to_thread(seat_of, runtime, websocket, consult_id)
    except DomainError as exc:
        status = getattr(exc, "status", 400)
        await websocket.send_json({"type": "error", "code": "refused", "status": status, "detail": str(exc)})
        await websocket.close(code=CLOSE_CODES.get(status, 4400))
        return
    await asyncio.to_thread(audit.record, runtime.db, principal=None, actor=seat.username,
                            action="room.join", object_type="consult", object_id=str(consult_id),
                            detail={"role": seat.role})
    registry = registry_of(websocket.app)
    try:
        room, participant = await registry.join(seat, websocket.send_json)
    except DomainError as exc:
        await websocket.close(code=4409, reason=str(exc)[:100])
        return
    log.info("room.join.ok consult=%s user=%s role=%s", consult_id, seat.username, seat.role)
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            raw = message.get("text") if message.get("text") is not None else message.get("bytes") or b""
            await room.handle_signal(participant, raw)
    except WebSocketDisconnect:
        pass
    finally:
        await registry.leave(room, participant)


@router.get("/consults/{consult_id}/room", response_class=HTMLResponse, include_in_schema=False)
def room_page(consult_id: int, request: Request, session: DbSession):
    """The room: videos, the shared viewer, chat, low-bandwidth mode, consent and recording."""
    user = room_user(request, session)
    if user is None:
        return sign_in_redirect(request)
    try:
        seat = rooms.seat_for(session=session, consult_id=consult_id, user=user)
    except Conflict:
        return _room_closed(request, session.get(ConsultRequest, consult_id), user)
    consult = session.get(ConsultRequest, consult_id)
    studies = [s.study_instance_uid for s in consult.studies]
    _audit_read(request, user, "room.page", consult_id)
    return request.app.state.templates.TemplateResponse(request, "consult/room.html", {
        "user": user, "seat": seat, "consult": consult, "studies": studies})


@router.get("/consults/{consult_id}/room/viewer", response_class=HTMLResponse, include_in_schema=False)
def room_viewer(consult_id: int, request: Request, session: DbSession, study: str = ""):
    """The diagnostic viewer for the room's iframe: every participant renders from DICOMweb."""
    user = room_user(request, session)
    if user is None:
        return sign_in_redirect(request)
    rooms.seat_for(session=session, consult_id=consult_id, user=user)
    consult = session.get(ConsultRequest, consult_id)
    uids = [s.study_instance_uid for s in consult.studies]
    _audit_read(request, user, "room.viewer", consult_id)
    if study not in uids:
        study = uids[0] if uids else ""
    return request.app.state.templates.TemplateResponse(request, "viewer.html", {
        "user": user, "study_uid": study, "dicomweb_base": "/dicom-web", "embedded": True})


def _room_closed(request: Request, consult: ConsultRequest, user) -> HTMLResponse:
    """A participant at a room that is not open (not booked yet, or the consult has ended):
    a page that says so and leads back to the consult, with the 409 kept for clients."""
    return request.app.state.templates.TemplateResponse(
        request, "consult/room_closed.html", {"user": user, "consult": consult, "status_labels": STATUS_LABELS},
        status_code=409)


@router.get("/api/rooms/{consult_id}/ice")
def ice(consult_id: int, request: Request, session: DbSession, user: CurrentUser):
    """ICE servers for the browser, with TURN REST credentials that expire (coturn use-auth-secret)."""
    user = session.get(User, user.id)
    rooms.require_participant(session=session, consult_id=consult_id, user=user)
    settings = request.app.state.runtime.settings
    return {"iceServers": rooms.ice_servers(settings, user.username),
            "ttl": int(getattr(settings, "room_turn_ttl_s", 3600))}


@router.get("/api/rooms/{consult_id}/chat")
def chat(consult_id: int, request: Request, session: DbSession, user: CurrentUser):
    rooms.require_participant(session=session, consult_id=consult_id, user=session.get(User, user.id))
    history = rooms.chat_history(session=session, consult_id=consult_id)
    _audit_read(request, user, "room.chat.read", consult_id)  # clinical conversation
    return history


@router.get("/api/rooms/{consult_id}/recordings")
def recordings(consult_id: int, request: Request, session: DbSession, user: CurrentUser):
    rooms.require_participant(session=session, consult_id=consult_id, user=session.get(User, user.id))
    _audit_read(request, user, "room.recordings.list", consult_id)
    return [{"id": r.id, "session": r.session, "size": r.size, "sha256": r.sha256,
             "started_at": r.started_at.isoformat(), "ended_at": r.ended_at.isoformat(),
             "participants": r.participants, "retain_until": r.retain_until.isoformat(),
             "content_type": r.content_type, "url": f"/api/rooms/{consult_id}/recordings/{r.id}"}
            for r in rooms.list_recordings(session=session, consult_id=consult_id)]


@router.get("/api/rooms/{consult_id}/recordings/{recording_id}", response_class=Response)
def play(consult_id: int, recording_id: int, request: Request, session: DbSession, user: CurrentUser):
    """The recording's bytes (HTTP Range for seeking in a <video>); every playback is audited."""
    rooms.require_participant(session=session, consult_id=consult_id, user=session.get(User, user.id))
    row = session.get(Recording, recording_id)
    if row is None or row.consult_id != consult_id or row.deleted_at is not None:
        raise NotFound("未找到录像 / no such recording")
    runtime = request.app.state.runtime
    offset, length, status = byte_range(request.headers.get("range"), row.size)
    audit.record_read(runtime.db, principal=None, actor=user.username, action="recording.play",
                 object_type="consult", object_id=str(consult_id), detail={"recording": row.id})
    headers = {"Accept-Ranges": "bytes", "Content-Length": str(length),
               "Content-Disposition": f'inline; filename="consult-{consult_id}-{row.id}.mp4"'}
    if status == 206:
        headers["Content-Range"] = f"bytes {offset}-{offset + length - 1}/{row.size}"
    return StreamingResponse(runtime.store.stream(row.object_key, offset, length), status_code=status,
                             media_type=row.content_type, headers=headers)


def byte_range(header: str | None, size: int) -> tuple[int, int, int]:
    """(offset, length, status) for an optional single `Range: bytes=a-b` header."""
    if not header:
        return 0, size, 200
    match = RANGE.match(header.strip())
    if not match or (not match.group(1) and not match.group(2)):
        raise Invalid("only one byte range is supported")
    if match.group(1):
        start = int(match.group(1))
        end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
    else:  # the last N bytes
        start, end = max(0, size - int(match.group(2))), size - 1
    if start > end or start >= size:
        raise Invalid("range not satisfiable")
    return start, end - start + 1, 206


ROOM_TICKET_S = 60


@router.post("/api/rooms/{consult_id}/ticket")
def room_ticket(consult_id: RowId, user: CurrentUser, runtime: RuntimeDep) -> dict:
    """A single-use ticket (60 s) for the room WebSocket, `?ticket=`: API tokens never go
    into URLs (access logs keep URLs). Browsers use their session cookie instead."""
    refused = None
    with runtime.db.scope() as session:
        me = session.get(User, user.id)
        try:
            rooms.require_participant(session=session, consult_id=consult_id, user=me)
        except DomainError as exc:
            refused = exc
        else:
            secret, _ = identity.issue_token(session=session, user=me, kind="ticket", days=ROOM_TICKET_S / 86400,
                                            label=f"room:{consult_id}")
    if refused is not None:  # audited in its own transaction, after the unit of work ended
        audit.record(runtime.db, principal=None, actor=user.username, action="room.ticket", outcome="denied",
                     object_type="consult", object_id=str(consult_id), detail={"reason": refused.detail})
        raise refused
    return {"ticket": secret, "expires_in": ROOM_TICKET_S}
