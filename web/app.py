"""The FastAPI application factory."""

from __future__ import annotations

import gc
import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from storage.runtime import bootstrap
from storage.settings import Settings, get_settings
from consult import notify
from consult import pages as consult_pages
from consult import room_routes
from consult import routes as consult_routes
from film import pages as film_pages
from film import routes as film_routes
from imaging import dicomweb
from imaging.dataset import display_name
from imaging import pages as imaging_pages
from imaging import routes as imaging_routes
from edge import pages as edge_pages
from edge import routes as edge_routes
from edge import transfer_pages as edge_transfer_pages
from maternal import pages as maternal_pages
from maternal import routes as maternal_routes
from storage import identity, localtime
from web import csrf, errors, pages, routes
from workspace import admin as workspace_admin
from workspace import pages as workspace_pages

HERE = Path(__file__).parent


def display_date(value: str) -> str:
    """DICOM DA (20261101) as 2026-11-01."""
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if value and len(value) == 8 and value.isdigit() else (value or "")
log = logging.getLogger("lancang.web")


def install_csrf(app: FastAPI, settings: Settings) -> None:
    """The CSRF check and security headers (web/csrf.py), and the token for templates:
    `csrf_token(request)` for the meta tag, `csrf_field(request)` for forms that post."""
    def token(request) -> str:
        session = request.cookies.get(csrf.SESSION_COOKIE)
        return csrf.token_for(settings.effective_secret_key, session) if session else ""

    def field(request) -> Markup:
        return Markup('<input type="hidden" name="{}" value="{}">').format(csrf.FIELD, token(request))

    app.state.templates.env.globals.update(csrf_token=token, csrf_field=field)
    app.add_middleware(csrf.CsrfMiddleware, secret_key=lambda: settings.effective_secret_key,
                       public_url=settings.effective_public_url, exempt_prefixes=("/docs", "/redoc"))
    origins = [o.strip().rstrip("/") for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        # Outermost: answers preflights. Bearer tokens only: no Allow-Credentials, and
        # storage/deps.credentials ignores the cookie of a cross-origin request.
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_credentials=False,
                           allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
                           allow_headers=["Authorization", "Accept", "Content-Type"],
                           expose_headers=["Content-Type", "Content-Length", "Content-Location", "Warning"],
                           max_age=600)


VENDOR = "/static/vendor"


def install_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc from assets in web/static/vendor/, not a CDN: the
    networks Lancang runs on often have no internet, and the pages were blank there."""

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} — API",
                                   oauth2_redirect_url="/docs/oauth2-redirect",
                                   swagger_js_url=f"{VENDOR}/swagger-ui/swagger-ui-bundle.js",
                                   swagger_css_url=f"{VENDOR}/swagger-ui/swagger-ui.css",
                                   swagger_favicon_url=f"{VENDOR}/swagger-ui/favicon-32x32.png")

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=app.openapi_url, title=f"{app.title} — API",
                              redoc_js_url=f"{VENDOR}/redoc/redoc.standalone.js",
                              redoc_favicon_url=f"{VENDOR}/swagger-ui/favicon-32x32.png", with_google_fonts=False)


def _unread(app: FastAPI, user) -> int:
    """The bell's count in every page header (its own short read: pages render after their work)."""
    if getattr(user, "id", None) is None:  # a bearer-token principal on a staff page: no inbox
        return 0
    with app.state.runtime.db.scope(readonly=True) as session:
        return notify.unread_count(session, user.id)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.runtime = bootstrap(settings, component="web")
        identity.prepare_sign_in()
        # Everything built so far lives as long as the process: keep it out of the collector's
        # full passes (~85 ms each with 200,000 tracked objects, measured in bench/dicomweb.py).
        gc.collect()
        gc.freeze()
        log.info("web.start.ok url=%s", settings.effective_public_url)
        if settings.public_url_is_loopback:
            log.warning("web.start.public_url_loopback url=%s: cloud-film and report QR codes point at this "
                        "machine and no phone can open them; set LANCANG_PUBLIC_URL to the address patients "
                        "reach / 二维码指向本机地址，患者手机无法打开：请设置 LANCANG_PUBLIC_URL",
                        settings.effective_public_url)
        yield
        dicomweb.close(app)  # announce pending series, stop the ingest thread pool

    app = FastAPI(title="Lancang 澜沧影像云", version="0.1.0", lifespan=lifespan,
                  description="Regional imaging cloud and teleconsultation platform.",
                  docs_url=None, redoc_url=None,  # served below from local assets
                  # No OpenTelemetry here: FastAPI would otherwise ask the global tracer, meter
                  # and logger providers whether to instrument, on every request.
                  telemetry={"tracing": False, "metrics": False, "logs": False})
    app.state.templates = Jinja2Templates(directory=HERE / "templates")
    app.state.login_limiter = pages.login_limiter()
    app.state.film_limits = film_pages.Limits()
    app.state.templates.env.filters.update(pn=display_name, da=display_date,
                                           bj=lambda value: localtime.display(value, name=settings.timezone))
    app.state.templates.env.globals.update(tz_label=localtime.label(settings.timezone), tz_zone=settings.timezone,
                                           unread_notifications=lambda user: _unread(app, user),
                                           admin_sections=workspace_admin.SECTIONS)  # edge/'s admin page too
    dicomweb.install_read_lane(app)  # first: the security headers and CORS wrap it too
    install_csrf(app, settings)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    install_docs(app)
    errors.install(app)
    # DICOMweb first: routes are matched in order, and its clients make the most requests.
    app.include_router(dicomweb.router)
    app.include_router(routes.router)
    app.include_router(pages.router)
    app.include_router(imaging_routes.router)
    app.include_router(imaging_pages.router)
    app.include_router(film_routes.router)
    app.include_router(film_pages.router)
    app.include_router(consult_routes.router)
    app.include_router(consult_pages.router)
    app.include_router(room_routes.router)
    app.include_router(maternal_routes.router)
    app.include_router(maternal_pages.router)
    app.include_router(edge_pages.router)
    app.include_router(edge_routes.router)
    app.include_router(edge_transfer_pages.router)
    app.include_router(workspace_pages.router)
    app.include_router(workspace_admin.router)
    return app
