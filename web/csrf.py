"""Cross-site request forgery defence for cookie-authenticated requests, and the security
headers every answer carries.

SameSite=Lax alone let a page on the same site but another port (another origin, same
site) create and revoke shares, acknowledge consults and open the room WebSocket as the
signed-in user. So every unsafe request that a browser could send with our session cookie
must (1) come from our own origin (Origin, else Referer) and (2) carry the session's CSRF
token: the `X-CSRF-Token` header (web/static/csrf.js adds it to fetch and XMLHttpRequest)
or a `csrf_token` form field. The token is an HMAC of the session token under the
platform secret, so it needs no storage and dies with the session. Requests with an
Authorization header (API tokens) are not cookie-authenticated and pass unchanged; so do
WebSocket upgrades that carry no Origin (aiortc and other non-browser clients).

Pure ASGI, not BaseHTTPMiddleware: the DICOMweb read path makes the most requests and
must not pay for a second task per request.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from urllib.parse import parse_qs, urlsplit

from starlette.datastructures import Headers

from storage.deps import SESSION_COOKIE

HEADER = "x-csrf-token"
FIELD = "csrf_token"
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
# Anyone may verify a report PDF, signed in or not; the answer changes nothing.
EXEMPT_PATHS = {"/verify"}
MAX_FORM_BYTES = 256 * 1024
MULTIPART_HEAD_BYTES = 8 * 1024
_MULTIPART_TOKEN = re.compile(rb'content-disposition:[^\r\n]*name="' + FIELD.encode() + rb'"[^\r\n]*\r\n'
                              rb'(?:[^\r\n]+\r\n)*\r\n([^\r\n]*)\r\n', re.IGNORECASE)


def token_for(secret_key: str, session_token: str) -> str:
    return hmac.new(secret_key.encode(), b"lancang/csrf/" + session_token.encode(), hashlib.sha256).hexdigest()[:40]


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower() if parts.scheme and parts.netloc else ""


def security_headers(public_url: str) -> list[tuple[bytes, bytes]]:
    """Headers for every answer. Scripts only from our origin (pages load /static/*.js;
    no inline script); the room needs blob: media, WebSocket connections and the viewer in
    a same-origin frame; no other site may frame a page (clickjacking)."""
    # 'wasm-unsafe-eval' lets the viewer compile its vendored WebAssembly JPEG-LS decoder
    # (static/vendor/charls); JavaScript eval and new Function stay refused.
    csp = ("default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self' 'unsafe-inline'; "
           "img-src 'self' data: blob:; media-src 'self' blob:; connect-src 'self' ws: wss:; "
           "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'self'")
    headers = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"SAMEORIGIN"),
               (b"referrer-policy", b"same-origin"), (b"content-security-policy", csp.encode())]
    if public_url.startswith("https://"):
        headers.append((b"strict-transport-security", b"max-age=31536000"))
    return headers


class CsrfMiddleware:
    def __init__(self, app, *, secret_key, public_url: str, exempt_prefixes: tuple[str, ...] = ("/docs",)):
        self.app = app
        self.secret_key = secret_key  # a callable: the key may be generated at first use
        self.public_origin = origin_of(public_url)
        self.headers = security_headers(public_url)
        self.exempt_prefixes = exempt_prefixes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket":
            if not self._same_origin_or_absent(scope, Headers(scope=scope)):
                await send({"type": "websocket.close", "code": 4403, "reason": "cross-origin"})
                return
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = self._with_headers(send, scope["path"])
        if scope["method"] in UNSAFE and scope["path"] not in EXEMPT_PATHS:
            headers = Headers(scope=scope)
            if "authorization" not in headers:
                refusal, receive = await self._refusal(scope, receive, headers)
                if refusal:
                    await _forbidden(send, refusal)
                    return
        await self.app(scope, receive, send)

    def _with_headers(self, send, path: str):
        extra = self.headers if not path.startswith(self.exempt_prefixes) else self.headers[:3]

        async def sending(message):
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (name, value) for name, value in extra if name not in present]
            await send(message)
        return sending

    def _allowed_origins(self, scope, headers: Headers) -> set[str]:
        own = f"{scope.get('scheme', 'http')}://{headers.get('host', '')}".lower()
        return {origin for origin in (self.public_origin, own) if origin}

    def _same_origin_or_absent(self, scope, headers: Headers) -> bool:
        origin = headers.get("origin")
        if origin is None or scope["type"] == "websocket" and "cookie" not in headers:
            return True
        ws_scheme = {"ws": "http", "wss": "https"}
        own = f"{ws_scheme.get(scope.get('scheme'), scope.get('scheme', 'http'))}://{headers.get('host', '')}"
        return origin.lower() in {self.public_origin, own.lower()}

    async def _refusal(self, scope, receive, headers: Headers):
        """Why this unsafe request is refused (or ""), and the receive to pass on."""
        origin = headers.get("origin") or origin_of(headers.get("referer", ""))
        # "null": pages that keep their URL out of Referer (the patient's film page) post
        # with an opaque origin. Nothing to compare then; the token below still decides.
        if origin and origin != "null" and origin.lower() not in self._allowed_origins(scope, headers):
            return f"拒绝跨站请求 / cross-origin request from {origin} refused", receive
        session = _cookie(headers, SESSION_COOKIE)
        if not session:
            return "", receive
        expected = token_for(self.secret_key(), session)
        given = headers.get(HEADER, "")
        if not given and headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            body, receive = await _buffered(receive)
            given = (parse_qs(body.decode("latin-1")).get(FIELD) or [""])[0]
        elif not given and headers.get("content-type", "").startswith("multipart/form-data"):
            # A form with a file (the desk's list import) posts without script: its hidden
            # field comes first, so the body's first few KiB carry it; the rest streams on.
            head, receive = await _head(receive, MULTIPART_HEAD_BYTES)
            found = _MULTIPART_TOKEN.search(head)
            given = found[1].decode("latin-1") if found else ""
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return "页面已过期，请刷新后重试 / missing or wrong CSRF token: reload the page and try again", receive
        return "", receive


def _cookie(headers: Headers, name: str) -> str:
    for part in headers.get("cookie", "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return ""


async def _buffered(receive):
    """Read a small form body and hand back a receive that replays it."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            break
        chunks.append(chunk)
        more = message.get("more_body", False)
    body = b"".join(chunks)
    return body, _replaying(receive, body, more=False)


async def _head(receive, size: int):
    """Read the body's first `size` bytes or more (whole messages) and hand back a receive that
    replays them, then goes on with the rest."""
    chunks, more = [], True
    while more and sum(map(len, chunks)) < size:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    head = b"".join(chunks)
    return head, _replaying(receive, head, more=more)


def _replaying(receive, body: bytes, *, more: bool):
    """A receive that hands back the body read so far, then the rest of the request."""
    replayed = False

    async def replay():
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()
    return replay


async def _forbidden(send, detail: str) -> None:
    payload = json.dumps({"error": "csrf", "detail": detail}, ensure_ascii=False).encode()
    await send({"type": "http.response.start", "status": 403,
                "headers": [(b"content-type", b"application/json; charset=utf-8"),
                            (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
