"""Pages for people: sign in and out, and the home page of each role."""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from storage import audit
from storage.errors import Invalid, Locked, NotAuthenticated, NotPermitted
from storage.models import User
from storage import identity
from storage.deps import SESSION_COOKIE, OptionalUser, RuntimeDep, WriteSession, client_address, sign_in_redirect
from storage.ratelimit import RateLimiter

router = APIRouter(include_in_schema=False)


def login_limiter() -> RateLimiter:
    """Per app (web/app.py keeps one in app.state), like the cloud-film limiters."""
    return RateLimiter(limit=10, per_seconds=60)


def _render(request: Request, template: str, status: int = 200, **context) -> HTMLResponse:
    return request.app.state.templates.TemplateResponse(request, template, context, status_code=status)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = "/"):
    return _render(request, "login.html", next=_safe_next(next), error=None)


def _safe_next(target: str) -> str:
    # Only same-site paths: never redirect a signed-in user to another host. Browsers read a
    # backslash as a slash and drop tabs and newlines in a Location, so "/\\evil" and
    # "/\t/evil" are "//evil" to them: judge the path as they will read it.
    seen = "".join(ch for ch in target if ch >= " " and ch != "\x7f").replace("\\", "/")
    parts = urlsplit(seen)
    same_site = seen.startswith("/") and not seen.startswith("//") and not parts.scheme and not parts.netloc
    return target if same_site else "/"


@router.post("/login", response_class=HTMLResponse)
def login(request: Request, session: WriteSession, runtime: RuntimeDep,
          username: str = Form(""), password: str = Form(""), next: str = Form("/")):
    source = client_address(request)
    request.app.state.login_limiter.hit(source)
    try:
        user = identity.authenticate(session=session, username=username.strip(), password=password)
    except Locked as exc:
        session.rollback()
        audit.record(runtime.db, principal=None, actor=username[:64], action="auth.login", outcome="locked",
                     source=source)
        return _render(request, "login.html", status=423, next=_safe_next(next), error=exc.detail,
                       username=username)
    except NotAuthenticated as exc:
        session.rollback()  # release the write lock before the audit's own transaction
        with runtime.db.scope() as counting:
            locked_until = identity.note_failed_login(session=counting, username=username.strip())
            audit.append(counting, principal=None, actor=username[:64] or "anonymous", action="auth.login",
                         outcome="denied", source=source,
                         detail={"locked_until": locked_until.isoformat()} if locked_until else None)
        return _render(request, "login.html", status=401, next=_safe_next(next), error=exc.detail,
                       username=username)
    settings = runtime.settings
    secret, _ = identity.issue_token(session=session, user=user, kind="session",
                                    days=settings.session_max_age_s / 86400, label="browser")
    audit.append(session, principal=identity.principal_for(user), action="auth.login", source=source)
    # A password someone else chose (printed by the installer, reset by an admin): choose one first.
    target = "/account/password?first=1" if user.must_change_password else _safe_next(next)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(SESSION_COOKIE, secret, max_age=settings.session_max_age_s, httponly=True,
                        samesite="lax", secure=settings.effective_public_url.startswith("https"))
    return response


@router.post("/logout")
def logout(request: Request, session: WriteSession):
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        try:
            identity.revoke_token(session=session, secret=cookie)
        except Exception:  # an unknown cookie is already as good as logged out
            pass
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    # Frames and metadata are privately cacheable for a few minutes (the viewer's background
    # prefetch relies on it); on a shared township PC the next person must not find them.
    response.headers["Clear-Site-Data"] = '"cache"'
    return response


@router.get("/account/password", response_class=HTMLResponse)
def password_form(request: Request, user: OptionalUser, first: bool = False):
    if user is None:
        return sign_in_redirect(request)
    return _render(request, "password.html", user=user, errors={}, done=False, first=first)


@router.post("/account/password", response_class=HTMLResponse)
def change_password(request: Request, session: WriteSession, runtime: RuntimeDep, user: OptionalUser,
                    current: str = Form(""), new: str = Form(""), again: str = Form("")):
    """The signed-in user changes their own password; other sessions end, this one stays.
    Each error is shown next to the field that caused it."""
    if user is None:
        return sign_in_redirect(request)
    me = session.get(User, user.id)
    principal = identity.principal_for(me)  # before any rollback: reading `me` afterwards would open a write
    errors = {}
    if new != again:
        errors["again"] = "两次输入的新密码不一致 / the two new passwords differ"
    else:
        cookie = request.cookies.get(SESSION_COOKIE)
        try:
            ended = identity.change_own_password(session=session, user=me, current=current, new_password=new,
                                                keep_token_hash=identity.hash_token(cookie) if cookie else None)
        except NotPermitted as exc:
            errors["current"] = exc.detail
        except Invalid as exc:
            errors["new"] = exc.detail
    if errors:
        session.rollback()
        if "current" in errors:  # a wrong current password is a security event, like a failed login
            audit.record(runtime.db, principal=principal, action="auth.password.change",
                         outcome="denied", source=client_address(request), detail={"reason": "wrong current password"})
        return _render(request, "password.html", status=400, user=user, errors=errors, done=False)
    audit.append(session, principal=principal, action="auth.password.change",
                 source=client_address(request), detail={"sessions_ended": ended})
    return _render(request, "password.html", user=user, errors={}, done=True)


@router.get("/menu", response_class=HTMLResponse)
def home(request: Request, user: OptionalUser):
    """Everything the role can open (the landing page "/" is the role's daily list)."""
    if user is None:
        return sign_in_redirect(request)
    return _render(request, "home.html", user=user, menu=_menu(user.role))


def _menu(role: str) -> list[dict]:
    """What each role starts from."""
    items = {
        "radiographer": [("/studies?today=1", "今日检查 Today's studies"), ("/studies", "全部检查 All studies"),
                         ("/upload", "上传影像 Upload images"), ("/consults/new", "新建会诊申请 Request a consult"),
                         ("/consults", "申请与回传报告 My requests"), ("/desk", "登记与工作列表 Registration desk (edge)"),
                         ("/critical", "危急值 Critical results"), ("/referrals", "转诊 Referrals")],
        "specialist": [("/consults", "我的阅片任务 My worklist"), ("/studies", "可查看的检查 Studies I may see"), ("/calendar", "会诊日程 Calendar"),
                       ("/availability", "我的出诊时间 My availability"), ("/critical", "危急值 Critical results")],
        "coordinator": [("/consults", "会诊调度 Coordinator board"), ("/studies", "检查 Studies"), ("/dashboard", "统计 Dashboard"),
                        ("/calendar", "日程 Calendar"), ("/critical", "危急值 Critical results"), ("/referrals", "转诊 Referrals")],
        "admin": [("/studies", "检查 Studies"), ("/consults", "会诊 Consults"), ("/dashboard", "统计 Dashboard"),
                  ("/admin", "管理控制台 Admin console")],
    }[role]
    return [{"href": href, "label": label} for href, label in items + [("/verify", "报告验证 Verify a report"),
                                                                        ("/account/password", "修改密码 Change password")]]
