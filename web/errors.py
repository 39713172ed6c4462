"""One place that turns errors into answers: JSON for APIs, a plain page for people."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from storage.errors import DomainError

log = logging.getLogger("lancang.web")

# What a nurse reads on an error page: what happened and what to do, in Chinese first.
FRIENDLY = {
    400: ("请求有误", "The request could not be understood.", "请返回上一页重试。"),
    401: ("请先登录", "Please sign in.", "登录后即可继续。"),
    403: ("无权访问", "You do not have access to this.", "如需访问，请联系本院管理员或会诊协调员。"),
    404: ("未找到", "We could not find this page or record.", "请检查链接是否完整，或返回首页。"),
    410: ("链接已失效", "This link has expired or was withdrawn.", "请联系检查医院重新获取链接。"),
    422: ("填写内容有误", "Some of what was entered is not valid.", "请检查后重新提交。"),
    423: ("已锁定", "Locked after too many attempts.", "请联系检查医院解锁。"),
    429: ("操作太频繁", "Too many attempts.", "请稍候一分钟再试。"),
    503: ("服务暂时不可用", "The service is temporarily unavailable.", "请稍后再试；如持续出现，请联系信息科。"),
}


def wants_html(request: Request) -> bool:
    path = request.url.path
    if path.startswith(("/api", "/dicom-web", "/healthz", "/objects")):
        return False
    return "text/html" in request.headers.get("accept", "")


def render_error(request: Request, status: int, code: str, detail: str) -> Response:
    if wants_html(request):
        if status == 401:
            from urllib.parse import quote

            from fastapi.responses import RedirectResponse

            return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
        templates = request.app.state.templates
        title_zh, title_en, advice = FRIENDLY.get(status, FRIENDLY[400] if status < 500 else FRIENDLY[503])
        return templates.TemplateResponse(
            request, "error.html",
            {"status": status, "title_zh": title_zh, "title_en": title_en, "advice": advice, "detail": detail},
            status_code=status,
        )
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


def install(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _domain(request: Request, exc: DomainError):
        return render_error(request, exc.status, exc.code, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return render_error(request, 422, "invalid", "; ".join(parts) or "invalid input")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed", 401: "not_authenticated", 406: "not_acceptable"}
        response = render_error(request, exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    @app.exception_handler(OverflowError)
    async def _overflow(request: Request, exc: OverflowError):
        return render_error(request, 400, "out_of_range", "数值超出范围 / a number is out of range")

    @app.exception_handler(DBAPIError)
    async def _database(request: Request, exc: DBAPIError):
        # A value the database cannot hold (an id above 2^63 on PostgreSQL, "integer out of
        # range") is the caller's mistake; anything else is ours.
        if isinstance(exc.orig, OverflowError) or "out of range" in str(exc.orig):
            return render_error(request, 400, "out_of_range", "数值超出范围 / a number is out of range")
        log.exception("web.request.db_error path=%s", request.url.path)
        return render_error(request, 503 if isinstance(exc, OperationalError) else 500, "database_error",
                            "数据库暂时无法响应 / the database could not answer; please try again")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("web.request.error path=%s", request.url.path)
        return render_error(request, 500, "internal_error", "an unexpected error was logged; please try again")
