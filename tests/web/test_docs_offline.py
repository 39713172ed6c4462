"""16.19: /docs and /redoc work without internet. They loaded Swagger UI and ReDoc from a
CDN (cdn.jsdelivr.net) and were blank on a network without one. In real Chromium with
every request off the server refused, both pages show the API's operations."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import embedded_settings
from tests.services import free_port
from tests.web.live import serving
from tests.browser import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    settings = embedded_settings(tmp_path_factory.mktemp("docs") / "var", http_port=free_port())
    with serving(settings) as url:
        yield url


@pytest.mark.parametrize("path, shown", [("/docs", ".opblock-summary-path"), ("/redoc", "[data-section-id]")])
def test_api_docs_render_with_no_internet(base, path, shown):
    from playwright.sync_api import sync_playwright

    outside: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1366, "height": 768})

        def offline(route):
            if route.request.url.startswith(base):
                return route.continue_()
            if route.request.resource_type != "image":  # ReDoc's "powered by" logo may stay away
                outside.append(route.request.url)
            return route.abort()

        page.route(re.compile(".*"), offline)
        page.goto(base + path)
        page.wait_for_selector(shown, timeout=30000)
        assert page.locator(shown).count() > 20
        page.screenshot(path=f"/tmp/lancang-docs{path.replace('/', '-')}.png")
        browser.close()
    assert outside == []
