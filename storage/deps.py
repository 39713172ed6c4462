"""The FastAPI dependency aliases every domain's routes use, defined once: the unit of work
(`DbSession`, `WriteSession`), the caller (`CurrentUser`, `CurrentPrincipal`), the runtime.

They live in the foundation so a domain's `routes.py` declares module-level routes with
them, instead of receiving them as arguments from the app factory."""

from __future__ import annotations

from typing import Annotated, AsyncIterator, Iterator
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.responses import RedirectResponse
from sqlalchemy.orm import Session

from storage.runtime import Runtime
from storage.access import Principal
from storage.errors import NotAuthenticated
from storage.models import User
from storage import identity

SESSION_COOKIE = "lancang_session"  # the browser session; web/csrf.py ties its CSRF token to it


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


async def db_session(request: Request) -> AsyncIterator[Session]:
    """A read unit of work. On SQLite it takes no write lock, so audit records (written in
    their own short transactions) never wait on the request itself.

    Opened and ended on the event loop, not in the thread pool: creating a session does no
    I/O (the connection is taken at the first query, in the endpoint's thread), and ending a
    read-only transaction is a lock release on SQLite and one COMMIT round trip on
    PostgreSQL, cheaper than the two thread hops a sync dependency costs."""
    with get_runtime(request).db.scope(readonly=True) as session:
        yield session


def write_session(request: Request) -> Iterator[Session]:
    """A write unit of work: committed before the response is sent, rolled back on error.
    Audit inside it with audit.append (atomic with the change)."""
    with get_runtime(request).db.scope() as session:
        yield session


DbSession = Annotated[Session, Depends(db_session, scope="function")]
WriteSession = Annotated[Session, Depends(write_session, scope="function")]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def credentials(request: Request) -> tuple[str, str] | None:
    """("api", token) from an Authorization header, ("session", token) from the cookie, or None."""
    header = request.headers.get("authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise NotAuthenticated("use 'Authorization: Bearer <token>'")
        return "api", token.strip()
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie and _cross_origin(request):
        return None  # a cookie never authenticates another origin's request (bearer tokens only)
    return ("session", cookie) if cookie else None


def _cross_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return False
    own = f"{request.url.scheme}://{request.headers.get('host', '')}".lower()
    public = getattr(get_runtime(request).settings, "effective_public_url", "").lower()
    return origin.lower() not in (own, public)


def optional_user(request: Request, session: DbSession) -> User | None:
    found = credentials(request)
    if found is None:
        return None
    kind, token = found
    return identity.user_for_token(session=session, secret=token, kind=kind)


# Pure functions of resolved values are async: FastAPI runs them on the event loop instead of
# handing each to the thread pool (a hop that costs more than the function).
async def require_user(user: Annotated[User | None, Depends(optional_user)]) -> User:
    if user is None:
        raise NotAuthenticated("请先登录 / login required")
    return user


CurrentUser = Annotated[User, Depends(require_user)]
OptionalUser = Annotated[User | None, Depends(optional_user)]


def current_principal(request: Request, session: DbSession) -> Principal:
    """The caller as a Principal, from the token alone (no ORM user: the DICOMweb and study
    APIs need only this, and they are the hot path)."""
    return principal_of(request, session)


def principal_of(request: Request, session: Session) -> Principal:
    """current_principal as a plain function, for code that already holds a session."""
    found = credentials(request)
    if found is None:
        raise NotAuthenticated("请先登录 / login required")
    kind, token = found
    return identity.principal_for_token(session=session, secret=token, kind=kind)


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def sign_in_redirect(request: Request) -> RedirectResponse:
    """To the sign-in page, which comes back to this page (its query kept) once signed in."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='/')}", status_code=303)


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


def room_user(connection, session: Session) -> User | None:
    """The user of a room WebSocket (or page): the session cookie, else a single-use `ticket`
    query parameter (POST /api/rooms/{id}/ticket; aiortc clients and tools cannot set
    cookies). API tokens are not accepted in URLs. None when neither is valid."""
    cookie = connection.cookies.get(SESSION_COOKIE)
    if cookie:
        try:
            return identity.user_for_token(session=session, secret=cookie, kind="session")
        except NotAuthenticated:
            return None
    ticket = connection.query_params.get("ticket")
    if not ticket:
        return None
    try:
        user = identity.user_for_token(session=session, secret=ticket, kind="ticket")
    except NotAuthenticated:
        return None
    with connection.app.state.runtime.db.scope() as spending:  # used once: gone before the join
        identity.revoke_token(session=spending, secret=ticket)
    return user
