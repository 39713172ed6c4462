"""Named request dependencies: the unit of work, the current user and principal."""

from __future__ import annotations

from typing import Annotated, Iterator

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from lancang.runtime import Runtime
from storage.access import Principal
from storage.db import commit
from storage.errors import NotAuthenticated
from storage.models import User
from web import service

SESSION_COOKIE = "lancang_session"


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def _unit_of_work(request: Request, readonly: bool) -> Iterator[Session]:
    session = get_runtime(request).db.session(readonly=readonly)
    try:
        yield session
        commit(session)
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def db_session(request: Request) -> Iterator[Session]:
    """A read unit of work. On SQLite it takes no write lock, so audit records (written in
    their own short transactions) never wait on the request itself."""
    yield from _unit_of_work(request, readonly=True)


def write_session(request: Request) -> Iterator[Session]:
    """A write unit of work: committed before the response is sent, rolled back on error.
    Audit inside it with audit.append (atomic with the change)."""
    yield from _unit_of_work(request, readonly=False)


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
    return ("session", cookie) if cookie else None


def optional_user(request: Request, session: DbSession) -> User | None:
    found = credentials(request)
    if found is None:
        return None
    kind, token = found
    return service.user_for_token(session=session, secret=token, kind=kind)


def require_user(user: Annotated[User | None, Depends(optional_user)]) -> User:
    if user is None:
        raise NotAuthenticated("login required / 请先登录")
    return user


CurrentUser = Annotated[User, Depends(require_user)]
OptionalUser = Annotated[User | None, Depends(optional_user)]


def current_principal(user: CurrentUser) -> Principal:
    return service.principal_for(user)


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


def room_user(connection, session: Session) -> User | None:
    """The user of a room WebSocket (or page): the session cookie, else a `token` query parameter
    (an API token: aiortc clients and tools cannot set cookies). None when neither is valid."""
    for kind, secret in (("session", connection.cookies.get(SESSION_COOKIE)),
                         ("api", connection.query_params.get("token"))):
        if secret:
            try:
                return service.user_for_token(session=session, secret=secret, kind=kind)
            except NotAuthenticated:
                return None
    return None
