"""Two Chromium pages (fake cameras) and an aiortc client in one live consult room, run
inside a private network namespace (`unshare -n`, only loopback; see TESTING.md):
python -m tests.consult.room_scenario WORKDIR. Prints a JSON verdict as its last line.

li (township presenter) and wang (city specialist) use the real room page; zhou (the
coordinator) is an aiortc client with a green synthetic camera. Checked: decoded frames in
every direction, the specialist's viewer following the presenter's scrolling and window,
and a recording with everyone's consent stored in the object store.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from pathlib import Path

import uvicorn
from pydicom.uid import generate_uid

from bench.rooms import RoomClient, looks_like
from imaging.service import Ingestor
from storage.runtime import bootstrap
from storage import service as tenancy
from tests.conftest import embedded_settings
from tests.consult.test_rooms import PEOPLE, live_consult, room_app
from tests.dicomdata import ct_instance
from tests.services import free_port
from storage import identity

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--allow-loopback-in-peer-connection", "--use-fake-device-for-media-stream",
                 "--use-fake-ui-for-media-stream", "--autoplay-policy=no-user-gesture-required"]


def loopback_candidates() -> None:
    """aioice leaves 127.0.0.1 out of its host candidates; in this namespace it is all there is."""
    import aioice.ice

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"] if use_ipv4 else []


def world(runtime) -> tuple[dict, dict, int]:
    api, sessions = {}, {}
    with runtime.db.scope() as session:
        tenancy.add_institution(session=session, code="COUNTY", name="澜沧县人民医院", level="county")
        town = tenancy.add_institution(session=session, code="TOWN", name="勐朗镇卫生院", level="township",
                                       parent_code="COUNTY")
        town_id = town.id
        for username, (role, code) in PEOPLE.items():
            user = identity.add_user(session=session, username=username, role=role, institution_code=code,
                                     password="password-1", display_name=username.upper())
            api[username] = identity.issue_token(session=session, user=user)[0]
            sessions[username] = identity.issue_token(session=session, user=user, kind="session", days=1)[0]
        from consult import scheduling

        scheduling.set_weekly(session=session, user=identity.get_user(session=session, username="wang"),
                              windows=[(d, "00:00", "23:59") for d in range(7)])
    ingestor = Ingestor(runtime.db, runtime.store)
    study, series = generate_uid(), generate_uid()
    for i in range(1, 6):
        ingestor.ingest(ct_instance(study_uid=study, series_uid=series, instance_number=i, seed=i, size=64),
                        institution_id=town_id, source="test")
    ingestor.close()
    return api, sessions, live_consult(runtime, study, 0)


async def page_for(browser, base: str, token: str, consult_id: int):
    context = await browser.new_context()
    await context.add_cookies([{"name": "lancang_session", "value": token, "url": base}])
    page = await context.new_page()
    page.on("console", lambda m: m.type == "error" and print("console:", m.text, file=sys.stderr))
    await page.goto(f"{base}/consults/{consult_id}/room")
    return page


async def until(page, expression: str, timeout: float = 40):
    # A function, not a bare expression: Playwright evals bare expressions in the page,
    # which the pages' CSP (script-src 'self') refuses.
    await page.wait_for_function(f"() => ({expression})", timeout=timeout * 1000, polling=100)


async def scenario(base: str, api: dict, sessions: dict, consult_id: int) -> dict:
    from playwright.async_api import async_playwright

    verdict: dict = {}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        t0 = time.monotonic()
        li = await page_for(browser, base, sessions["li"], consult_id)
        wang = await page_for(browser, base, sessions["wang"], consult_id)
        zhou = RoomClient(base, consult_id, api["zhou"], colour="green")
        await zhou.join(timeout=40)
        # Browser -> aiortc: zhou decodes both fake cameras.
        for who in ("li", "wang"):
            got = await zhou.frames_from(who, 10, 60)
            verdict[f"zhou_from_{who}"] = {"frames": got.frames, "size": got.size}
        # aiortc -> browser and browser -> browser: each page decodes the others.
        for page, name, other in ((li, "li", "wang"), (wang, "wang", "li"), (li, "li", "zhou"), (wang, "wang", "zhou")):
            await until(page, f"(window.lancangRoom.frames()['{other}'] || 0) > 10")
            sample = await page.evaluate(f"window.lancangRoom.sample('{other}')")
            verdict[f"{name}_from_{other}"] = {"frames": await page.evaluate(f"window.lancangRoom.frames()['{other}']"),
                                               "size": [sample["width"], sample["height"]], "rgb": sample["rgb"]}
        verdict["first_remote_frame_s"] = round(time.monotonic() - t0, 2)
        verdict["zhou_green_in_li"] = looks_like(verdict["li_from_zhou"]["rgb"], "green", 60)

        # The specialist's viewer follows the presenter's scrolling and window.
        viewer = "document.getElementById('room-frame').contentWindow.lancangViewer"
        for page in (li, wang):
            await until(page, f"{viewer} && {viewer}.state().count === 5")
        await until(li, "window.lancangRoom.lead === 'li'")
        frame = li.frame_locator("#room-frame")
        await frame.locator("canvas").click()
        for _ in range(3):
            await li.keyboard.press("ArrowDown")
        await frame.locator('[data-role="preset"]').select_option("lung")
        presenter = await li.evaluate(f"{viewer}.state()")
        await until(wang, f"{viewer}.state().index === {presenter['index']} && "
                          f"{viewer}.state().windowWidth === {presenter['windowWidth']}")
        follower = await wang.evaluate(f"{viewer}.state()")
        # 16.6: the presenter is told what the specialist sees (loading, then the same slice).
        await until(li, "document.getElementById('room-followers').textContent.includes("
                        f"'✓ Im {presenter['index'] + 1}/5')")
        verdict["presenter_sees"] = await li.evaluate("document.getElementById('room-followers').textContent")
        verdict["view"] = {"presenter": [presenter["index"], presenter["windowCenter"], presenter["windowWidth"]],
                           "follower": [follower["index"], follower["windowCenter"], follower["windowWidth"]],
                           "applied": len(await wang.evaluate("window.lancangRoom.applied"))}

        # Recording with everyone's consent, through the page's own controls.
        for page in (li, wang):
            await page.check("#room-consent")
        await zhou.send({"type": "consent", "given": True})
        await li.click("#room-record")
        await until(li, "document.getElementById('room-recording').textContent.includes('Recording')")
        await asyncio.sleep(3)
        await li.click("#room-record")
        await zhou.wait_for(lambda: any(m.get("type") == "recording" and m["state"] == "off" and m["stored"]
                                        for m in zhou.messages), 60)
        verdict["recordings"] = [m["stored"] for m in zhou.messages if m.get("type") == "recording"][-1]
        await zhou.close()
        await browser.close()
    return verdict


def main(workdir: Path) -> dict:
    loopback_candidates()
    runtime = bootstrap(embedded_settings(workdir), component="test")
    api, sessions, consult_id = world(runtime)
    app = room_app(runtime.settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        verdict = asyncio.run(asyncio.wait_for(scenario(f"http://127.0.0.1:{port}", api, sessions, consult_id), 240))
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    from consult.room_models import Recording

    with runtime.db.scope(readonly=True) as session:
        rows = session.query(Recording).all()
        verdict["stored"] = [{"key": r.object_key, "size": r.size, "participants": r.participants} for r in rows]
        verdict["stored_bytes_ok"] = all(runtime.store.size(r.object_key) == r.size for r in rows)
    return verdict


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
