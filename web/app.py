"""The FastAPI application factory."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from lancang.runtime import bootstrap
from lancang.settings import Settings, get_settings
from consult.pages import build_router as consult_pages
from consult.routes import build_router as consult_router
from imaging.dicomweb import build_dicomweb_router
from imaging.dicomweb import close as close_dicomweb
from imaging.film_routes import build_router as film_router
from imaging.routes import build_router as imaging_router
from web import errors, pages, routes
from web.deps import current_principal, db_session, optional_user, require_user, write_session
from web.ratelimit import RateLimiter

HERE = Path(__file__).parent
log = logging.getLogger("lancang.web")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.runtime = bootstrap(settings, component="web")
        log.info("web.start.ok url=%s", settings.effective_public_url)
        yield
        close_dicomweb(app)  # announce pending series, stop the ingest thread pool

    app = FastAPI(title="Lancang 澜沧影像云", version="0.1.0", lifespan=lifespan,
                  description="Regional imaging cloud and teleconsultation platform.")
    app.state.templates = Jinja2Templates(directory=HERE / "templates")
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    errors.install(app)
    app.include_router(routes.router)
    app.include_router(pages.router)
    app.include_router(imaging_router(db_session, current_principal))
    app.include_router(film_router(db_session, write_session, current_principal, rate_limiter=RateLimiter))
    app.include_router(build_dicomweb_router(db_session, write_session, current_principal))
    app.include_router(consult_router(db_session, write_session, require_user))
    app.include_router(consult_pages(db_session, optional_user))
    return app
