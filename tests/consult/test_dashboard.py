"""16.20/16.21: the dashboard's charts have axes, values, Chinese-first labels and text a
person can read on a township PC and on a phone (real Chromium). Before: no axis, no grid,
raw codes ("routine", "green") as labels, 10-11 px text scaled down to ~6 px on a phone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from consult import dashboard
from consult.pages import COLOUR_LABELS, PRIORITY_LABELS
from tests.browser import CHROMIUM, CHROMIUM_ARGS

VOLUMES = {"2026-W47": {"TOWN": 3, "T02": 1}, "2026-W48": {"TOWN": 5}, "2026-W49": {"T02": 2, "TOWN": 1}}
QUEUE = {"routine": 4, "urgent": 2, "critical": 1}


def _texts(svg: str) -> list[str]:
    return re.findall(r"<text[^>]*>([^<]*)</text>", svg)


def test_the_weekly_chart_has_an_axis_and_each_week_total():
    svg = dashboard.stacked_weeks("每周会诊量 Weekly volume", VOLUMES)
    texts = _texts(svg)
    assert {"0", "2", "4", "6"} <= set(texts)  # count axis
    assert ["4", "W47", "5", "W48", "3", "W49"] == [t for t in texts if t in ("4", "5", "3") or t.startswith("W")][-6:]
    assert "TOWN" in texts and "T02" in texts and "例 cases" in texts


def test_queue_bars_say_chinese_first_with_values():
    svg = dashboard.bar_chart("待办 Open by priority", QUEUE, labels=PRIORITY_LABELS)
    texts = _texts(svg)
    assert "常规 Routine" in texts and "危急 Critical" in texts and "routine" not in texts
    assert {"4", "2", "1"} <= set(texts) and "0" in texts


def test_an_empty_week_chart_says_so():
    assert "暂无数据" in dashboard.stacked_weeks("每周会诊量", {})


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")
@pytest.mark.parametrize("viewport", [(1366, 768), (390, 844)])
def test_chart_text_is_readable_in_chromium(viewport, tmp_path):
    from playwright.sync_api import sync_playwright

    css = (Path(__file__).resolve().parents[2] / "web/static/style.css").read_text()
    html = (f"<!doctype html><meta name=viewport content='width=device-width'><style>{css}</style><main>"
            f"<section class='card chart'>{dashboard.stacked_weeks('每周会诊量 Weekly volume', VOLUMES)}</section>"
            f"<section class='card chart'>{dashboard.bar_chart('待办 Open', QUEUE, labels=PRIORITY_LABELS)}</section>"
            f"<section class='card chart'>{dashboard.bar_chart('风险色 Colour', {'red': 2, 'green': 1}, labels=COLOUR_LABELS)}"
            f"</section></main>")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
        page.set_content(html)
        heights = page.evaluate("() => [...document.querySelectorAll('svg text')]"
                                ".map(t => t.getBoundingClientRect().height).filter(h => h > 0)")
        page.screenshot(path=f"/tmp/lancang-dashboard-{viewport[0]}.png", full_page=True)
        browser.close()
    assert heights and min(heights) >= 11, f"smallest chart text {min(heights):.1f} px at {viewport}"
