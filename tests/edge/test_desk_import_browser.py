"""The desk's list import (/desk, 批量导入) in real Chromium, as the registrar uses it:

* on a township PC (1366x768) she downloads the template, then uploads a list exported from the
  妇幼 system in GB18030 with one mistyped 身份证号: nothing is registered and the page lists that
  row's problem beside the file control;
* she corrects the file and uploads it again: "已导入 2 人 Imported 2" and both rows on the day's list;
* on a phone (390x844) the same: the form posted without script (the CSP allows no inline
  script), nothing wider than the screen.

Screens go to $LANCANG_SCREENS when set."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.consult.test_consult_browser import browser  # noqa: F401 (the module's Chromium fixture)
from tests.edge.test_desk_browser import MISTYPED, RESIDENT, _fits, _page, live  # noqa: F401 (the live desk)
from tests.web.test_upload_browser import CHROMIUM, login, screens_dir

HEADER = "姓名,性别,出生日期,身份证号,电话,检查,设备,预约时间,妊娠风险"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")


def _list(resident_id: str, *, second: str = "欧阳娜娜") -> dict:
    rows = [HEADER, f"张秀英,女,1990/1/1,{resident_id},13800001234,产科超声,US01,9:30,红",
            f"{second},女,2001-05-06,,,胸部正位,DR01,10:00,"]
    return {"name": "妇幼导出.csv", "mimeType": "text/csv", "buffer": "\r\n".join(rows).encode("gb18030")}


def _in_view(page, selector: str, height: int) -> bool:
    box = page.locator(selector).bounding_box()
    return box is not None and 0 <= box["y"] and box["y"] + box["height"] <= height


def _upload(page, file: dict) -> None:
    page.set_input_files("#import-form input[name=file]", files=[file])
    page.click("#import-form button[type=submit]")
    page.wait_for_load_state()


def test_a_list_is_imported_at_the_desk_on_a_pc_and_on_a_phone(live, browser, tmp_path):
    from web.pages import login_limiter

    live.app.state.login_limiter = login_limiter()
    screens, errors = screens_dir(tmp_path), []

    # 1. The PC: the template is there to download; a list with a mistyped ID number is refused whole.
    desk = _page(browser, errors)
    login(desk, live.url, "desk", "/desk")
    with desk.expect_download() as downloading:
        desk.click("#import-template")
    assert downloading.value.suggested_filename.endswith(".csv")
    assert Path(downloading.value.path()).read_bytes().startswith(b"\xef\xbb\xbf")
    _upload(desk, _list(MISTYPED))
    problems = desk.locator("#import-errors")
    problems.wait_for()
    text = problems.inner_text()
    assert "未导入任何人" in text and "第 2 行 row 2 · 身份证号 resident_id:" in text and "校验位不符" in text
    assert desk.locator("#import-errors li").count() == 1
    assert desk.locator("#import-form input[name=file]").get_attribute("aria-describedby") == "import-errors"
    assert desk.locator("#worklist").count() == 0  # nothing registered
    assert _fits(desk)
    assert _in_view(desk, "#import-errors", 768)  # the page opens at the file control (#desk-import)
    desk.screenshot(path=str(screens / "desk-import-error-1366.png"))

    # 2. Corrected: both imported, the notice and the day's list.
    _upload(desk, _list(RESIDENT))
    desk.wait_for_selector("#desk-notice")
    assert "已导入 2 人 Imported 2" in desk.locator("#desk-notice").inner_text()
    rows = desk.locator("#worklist tbody tr")
    assert rows.count() == 2
    listed = desk.locator("#worklist").inner_text()
    assert "张秀英" in listed and "欧阳娜娜" in listed and "产科超声 Obstetric ultrasound" in listed
    assert desk.locator("#import-errors").count() == 0 and _fits(desk)
    assert _in_view(desk, "#desk-notice", 768) and desk.evaluate("window.scrollY") == 0
    desk.screenshot(path=str(screens / "desk-import-1366.png"))

    # 3. The phone: a bad list, then a good one.
    phone = _page(browser, errors, 390, 844)
    login(phone, live.url, "desk", "/desk")
    _upload(phone, _list(MISTYPED, second="李四"))
    phone.locator("#import-errors").wait_for()
    assert _fits(phone)
    assert _in_view(phone, "#import-errors", 844)
    phone.screenshot(path=str(screens / "desk-import-error-390.png"))
    _upload(phone, _list(RESIDENT, second="李四"))
    phone.wait_for_selector("#desk-notice")
    assert "已导入 2 人" in phone.locator("#desk-notice").inner_text()
    assert phone.locator("#worklist tbody tr").count() == 4 and _fits(phone)
    phone.screenshot(path=str(screens / "desk-import-390.png"))
    phone.screenshot(path=str(screens / "desk-import-390-full.png"), full_page=True)
    assert errors == []
