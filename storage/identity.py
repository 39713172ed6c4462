"""Identity: users, argon2 passwords, bearer tokens and browser sessions."""

from __future__ import annotations

import functools

import hashlib
import re
import secrets
from datetime import datetime, timedelta
from typing import NamedTuple

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from storage import localtime
from storage.db import Prepared
from storage.access import Principal
from storage.errors import Conflict, Invalid, Locked, NotAuthenticated, NotFound, NotPermitted
from storage.models import ROLES, ApiToken, Institution, User
from storage.service import get_institution
from storage.types import revoke, utcnow


_hasher = PasswordHasher()
_USERNAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{1,63}$")
def prepare_sign_in() -> None:
    """Make the dummy hash now (the web app does at start), so that the first sign-in with an
    unknown username takes no longer than one with a known one."""
    _dummy_hash()


@functools.cache
def _dummy_hash() -> str:
    """A fixed hash to verify against when the user does not exist, so that timing does not
    tell an attacker which usernames are real. Made on first use, not at import: hashing
    takes ~0.1 s and every process that imports this module (each CLI command, each worker)
    paid it, most never signing anyone in."""
    return _hasher.hash("lancang-dummy-password")
MIN_PASSWORD = 8


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def add_user(*, session: Session, username: str, role: str, institution_code: str,
             password: str, display_name: str = "", title: str = "", must_change_password: bool = False) -> User:
    """Adds a user; the password is stored as an argon2 hash."""
    if not _USERNAME.match(username):
        raise Invalid("用户名须为2-64位小写字母、数字或 . _ - / username must be 2-64 lower-case letters, "
                      "digits, '.', '_' or '-'")
    if role not in ROLES:
        raise Invalid(f"角色无效 / role must be one of {', '.join(ROLES)}, not {role!r}")
    if len(password) < MIN_PASSWORD:
        raise Invalid(f"密码至少{MIN_PASSWORD}位 / password must have at least {MIN_PASSWORD} characters")
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise Conflict(f"用户名已存在 / user {username!r} already exists")
    institution = get_institution(session=session, code=institution_code)
    user = User(username=username, role=role, institution_id=institution.id,
                display_name=display_name or username, title=title.strip()[:32],
                password_hash=_hasher.hash(password), active=True, must_change_password=must_change_password)
    session.add(user)
    session.flush()
    return user


_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
_MOBILE = re.compile(r"^(\+86)?1[3-9][0-9]{9}$")  # a mainland mobile number, as 企业微信 mentions it


def set_contact(*, session: Session, user: User, email: str | None = None, mobile: str | None = None) -> User:
    """Where notifications reach the user outside the platform; "" clears one."""
    if email is not None:
        email = email.strip()
        if email and (len(email) > 254 or not _EMAIL.match(email)):
            raise Invalid(f"邮箱地址格式不对 / {email[:60]!r} is not an e-mail address")
        user.email = email
    if mobile is not None:
        mobile = mobile.replace(" ", "").replace("-", "")
        if mobile and not _MOBILE.match(mobile):
            raise Invalid(f"手机号格式不对 / {mobile[:20]!r} is not a mainland mobile number")
        user.mobile = mobile
    session.flush()
    return user


def get_user(*, session: Session, username: str) -> User:
    """Gets a user by username or raises NotFound."""
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFound(f"unknown user {username!r}")
    return user


def list_users(*, session: Session) -> list[User]:
    """Lists users by institution then name."""
    return list(session.scalars(select(User).join(Institution).order_by(Institution.code, User.username)))


def update_user(*, session: Session, user: User, role: str | None = None, title: str | None = None,
                display_name: str | None = None, institution_code: str | None = None) -> dict:
    """An admin changes a user's role, title, name or institution. Returns {field: [old, new]}
    for the audit record. A changed role or institution ends the user's sessions: what they may
    see changed under them."""
    changes: dict = {}
    if role is not None and role != user.role:
        if role not in ROLES:
            raise Invalid(f"角色无效 / role must be one of {', '.join(ROLES)}, not {role!r}")
        changes["role"], user.role = [user.role, role], role
    if title is not None and title.strip()[:32] != user.title:
        changes["title"], user.title = [user.title, title.strip()[:32]], title.strip()[:32]
    if display_name is not None and display_name.strip() and display_name.strip()[:200] != user.display_name:
        changes["display_name"], user.display_name = [user.display_name, display_name.strip()[:200]], \
            display_name.strip()[:200]
    if institution_code is not None and institution_code != user.institution.code:
        institution = get_institution(session=session, code=institution_code)
        changes["institution"] = [user.institution.code, institution.code]
        user.institution_id, user.institution = institution.id, institution
    if "role" in changes or "institution" in changes:
        for row in session.scalars(select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))):
            row.revoked_at = utcnow()
    session.flush()
    return changes


def set_user_active(*, session: Session, username: str, active: bool) -> User:
    """Disables a user; their sessions and tokens stop working at once."""
    user = get_user(session=session, username=username)
    user.active = active
    return user


def set_password(*, session: Session, user: User, new_password: str, keep_token_hash: str | None = None) -> int:
    """Sets a new password (argon2) and ends every other session and token of the user, so a
    password someone else knew opens nothing any more. Returns how many were ended."""
    if len(new_password) < MIN_PASSWORD:
        raise Invalid(f"新密码至少 {MIN_PASSWORD} 位 / the new password must have at least {MIN_PASSWORD} characters")
    user.password_hash = _hasher.hash(new_password)
    user.failed_logins, user.locked_until = 0, None
    ended = 0
    for row in session.scalars(select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))):
        if row.token_hash != keep_token_hash:
            row.revoked_at = utcnow()
            ended += 1
    return ended


def temporary_password() -> str:
    """A password someone else chose (a new account, a reset): 12 URL-safe characters."""
    return secrets.token_urlsafe(9)


def reset_password(*, session: Session, user: User, temporary: str | None = None) -> tuple[str, int]:
    """An admin resets a user's password (given, or made here) to a temporary one the user must
    replace at sign-in; every session and token of the user ends. Returns (password, ended)."""
    temporary = temporary or temporary_password()
    ended = set_password(session=session, user=user, new_password=temporary)
    user.must_change_password = True
    return temporary, ended


def change_own_password(*, session: Session, user: User, current: str, new_password: str,
                        keep_token_hash: str | None) -> int:
    """A user changes their own password: the current one must be right (NotPermitted, said
    next to that field, when it is not)."""
    try:
        _hasher.verify(user.password_hash, current)
    except (VerificationError, InvalidHashError):
        raise NotPermitted("当前密码不正确 / the current password is wrong") from None
    if current == new_password:
        raise Invalid("新密码不能与当前密码相同 / the new password must differ from the current one")
    ended = set_password(session=session, user=user, new_password=new_password, keep_token_hash=keep_token_hash)
    user.must_change_password = False
    return ended


LOCKOUT_AFTER = 5          # consecutive failures before the first lockout
LOCKOUT_FIRST_S = 60       # then 1, 2, 4 ... minutes for each further 5 failures
LOCKOUT_MAX_S = 3600


def authenticate(*, session: Session, username: str, password: str) -> User:
    """The active user with this password, or NotAuthenticated (same answer for every failure);
    Locked while the account is locked out after repeated failures."""
    user = session.scalar(select(User).where(User.username == username))
    if user is not None and user.locked_until is not None and user.locked_until > utcnow():
        until = user.locked_until.astimezone(localtime.zone()).strftime("%H:%M")
        raise Locked(f"too many wrong passwords: try again after {until} (Beijing time) or ask an admin / "
                     f"密码错误次数过多，请于{localtime.label_zh()} {until} 后再试，或联系管理员")
    try:
        _hasher.verify(user.password_hash if user else _dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        user = None
    if user is None or not user.active or not user.institution.active:
        raise NotAuthenticated("用户名或密码错误 / wrong username or password")
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    user.failed_logins, user.locked_until = 0, None
    return user


def note_failed_login(*, session: Session, username: str) -> datetime | None:
    """Count a wrong password for an existing account; lock it out with back-off after every
    LOCKOUT_AFTER failures. Returns the lockout's end when one starts (for the audit)."""
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        return None
    user.failed_logins += 1
    if user.failed_logins % LOCKOUT_AFTER:
        return None
    seconds = min(LOCKOUT_FIRST_S * 2 ** (user.failed_logins // LOCKOUT_AFTER - 1), LOCKOUT_MAX_S)
    user.locked_until = utcnow() + timedelta(seconds=seconds)
    return user.locked_until


def issue_token(*, session: Session, user: User, kind: str = "api", days: float = 90,
                label: str = "") -> tuple[str, ApiToken]:
    """Creates a random token (256 bits); only its hash is stored. Returns (secret, row)."""
    secret = ("lct_" if kind == "api" else "lcs_") + secrets.token_urlsafe(32)
    row = ApiToken(user_id=user.id, kind=kind, token_hash=hash_token(secret), label=label,
                   expires_at=utcnow() + timedelta(days=days))
    session.add(row)
    session.flush()
    return secret, row


def list_tokens(*, session: Session, username: str | None = None) -> list[ApiToken]:
    """Lists API tokens (not browser sessions), newest first."""
    query = select(ApiToken).where(ApiToken.kind == "api").order_by(ApiToken.id.desc())
    if username:
        query = query.join(User).where(User.username == username)
    return list(session.scalars(query))


def revoke_token(*, session: Session, token_id: int | None = None, secret: str | None = None) -> ApiToken:
    """Revokes a token by id or by its secret."""
    if secret is not None:
        row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(secret)))
    else:
        row = session.get(ApiToken, token_id)
    if row is None:
        raise NotFound("unknown token")
    return revoke(row)


def user_for_token(*, session: Session, secret: str, kind: str | None = None) -> User:
    """The user behind a valid, unexpired, unrevoked token, or NotAuthenticated."""
    # Token, user and institution in one query; the relationships below then resolve from
    # the session's identity map without further SQL.
    found = session.execute(
        select(ApiToken, User, Institution)
        .join(User, ApiToken.user_id == User.id).join(Institution, User.institution_id == Institution.id)
        .where(ApiToken.token_hash == hash_token(secret))
    ).first()
    if found is None:
        _refuse_invalid(None, kind)
    token, user, institution = found
    _refuse_invalid(_TokenState(token.kind, token.revoked_at, token.expires_at, user.active, institution.active),
                    kind)
    return user


def principal_for_token(*, session: Session, secret: str, kind: str | None = None) -> Principal:
    """The Principal behind a valid token, checked exactly as user_for_token, from one Core
    query: the authenticated request path that needs no ORM user pays only for columns."""
    rows = _PRINCIPAL_BY_TOKEN.execute(session.connection(), {"token_hash": hash_token(secret)})
    _refuse_invalid(_TokenState(*rows[0][:5]) if rows else None, kind)
    user_id, username, role, institution_id, code = rows[0][5:]
    return Principal(kind="user", name=username, institution_id=institution_id,
                     institution_code=code, role=role, user_id=user_id)


class _TokenState(NamedTuple):
    kind: str
    revoked_at: datetime | None
    expires_at: datetime
    user_active: bool
    institution_active: bool


def _refuse_invalid(state: _TokenState | None, kind: str | None) -> None:
    if state is None or (kind and state.kind != kind):
        raise NotAuthenticated("登录凭据无效 / invalid credentials")
    if state.revoked_at is not None:
        raise NotAuthenticated("凭据已撤销 / this token has been revoked")
    if state.expires_at <= utcnow():
        raise NotAuthenticated("凭据已过期，请重新登录 / this token has expired")
    if not state.user_active or not state.institution_active:
        raise NotAuthenticated("账户已停用 / this account is disabled")


_PRINCIPAL_BY_TOKEN = Prepared(
    select(ApiToken.kind, ApiToken.revoked_at, ApiToken.expires_at, User.active,
           Institution.active.label("institution_active"), User.id.label("user_id"), User.username, User.role,
           User.institution_id, Institution.code)
    .join(User, ApiToken.user_id == User.id).join(Institution, User.institution_id == Institution.id)
    .where(ApiToken.token_hash == bindparam("token_hash"))
)  # every authenticated API request runs it: see storage.db.Prepared


def principal_for(user: User) -> Principal:
    return Principal(kind="user", name=user.username, institution_id=user.institution_id,
                     institution_code=user.institution.code, role=user.role, user_id=user.id)
