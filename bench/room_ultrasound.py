"""Live ultrasound through a consult room, over the specialist's link at each rate: the
presenter's room page shares a synthetic 1024x768 30 fps ultrasound (Chromium's fake capture
fed from a y4m file written here), the specialist's page receives it in normal and in
low-bandwidth mode. Prints one JSON line per figure: received size, frame rate, freezes and
bitrate beside the link rate, and the server's CPU for the relayed ultrasound.

    python -m bench.room_ultrasound [--links 0,4,1] [--seconds 15] [--settle 12] [--shots DIR]

Link rate 0 is loopback without a limit. The limit is `tc` (htb, a 200 ms byte queue) on the
loopback of a private network namespace this run makes for itself (it re-executes under
`unshare -n`; TESTING.md: no netem here, tbf/htb work), matched to the specialist's UDP
ports only: the presenter's upload and the signalling pass at full speed, nothing outside
the namespace sees it, and it goes with the namespace when the run ends. The server runs in
a child process so that its CPU is counted apart from the two Chromiums'.

tests/consult/test_room_ultrasound_browser.py runs `check` (no limit) from here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.rooms import _cpu_seconds, _wait_http
from tests.consult.room_scenario import CHROMIUM_ARGS, page_for, until, world
from tests.services import free_port

SOURCE = (1024, 768, 30)  # the capture card's format: VGA-class ultrasound output at 30 fps
QUEUE_S = 0.2  # the limited link's queue, in seconds of its rate (a 4G cell's buffer, roughly)


# ---- the synthetic ultrasound -------------------------------------------------------------

def write_y4m(path: Path, width: int = SOURCE[0], height: int = SOURCE[1], fps: int = SOURCE[2],
              seconds: float = 2.0) -> Path:
    """A B-mode-like loop: a sector of speckle (grain of 2-3 pixels, as a probe's) that slides
    and brightens with depth, a dark cyst with a bright wall and a tissue band that move, and
    depth ticks of 2 pixels. Greyscale 4:2:0; Chromium plays it at `fps`, looping."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    apex_x, apex_y = width / 2, 30.0
    radius, angle = np.hypot(xx - apex_x, yy - apex_y), np.arctan2(xx - apex_x, yy - apex_y)
    sector = (radius > 60) & (radius < height - 40) & (np.abs(angle) < 0.7)
    grain = np.repeat(np.repeat(rng.rayleigh(1.0, ((height + 200) // 2, (width + 200) // 2)), 2, 0), 2, 1)
    speckle = ((grain + np.roll(grain, 1, 0) + np.roll(grain, 1, 1) + np.roll(grain, (1, 1), (0, 1))) / 4
               ).astype(np.float32)
    gain = np.clip(1.2 - radius / (height * 1.2), 0.2, 1.2)
    ticks = np.zeros((height, width), bool)
    for y in range(60, height - 40, 50):
        ticks[y:y + 2, width - 60:width - 40] = True
    frames = max(2, round(seconds * fps))
    chroma = np.full((height // 2) * (width // 2) * 2, 128, np.uint8).tobytes()
    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(frames):
            phase = 2 * np.pi * i / frames
            dx, dy = int(40 + 40 * np.sin(phase)), int(20 + 20 * np.cos(phase))
            image = 70 * speckle[dy:dy + height, dx:dx + width] * gain
            cx, cy = width / 2 + 120 * np.sin(phase), height * 0.55 + 40 * np.cos(phase)
            image[((xx - cx) / 110) ** 2 + ((yy - cy) / 70) ** 2 < 1] *= 0.12
            image[np.abs(np.hypot(xx - cx, yy - cy) - 130) < 6] += 110
            image[np.abs(yy - (height * 0.3 + 25 * np.sin(2 * phase)) - 0.15 * (xx - apex_x)) < 8] += 80
            image[~sector] = 0
            image[ticks] = 230
            out.write(b"FRAME\n" + np.clip(image, 0, 255).astype(np.uint8).tobytes() + chroma)
    return path


# ---- the server, in its own process -------------------------------------------------------

def serve(workdir: str, port: int) -> None:
    """The product app on 127.0.0.1 with aioice offering loopback (the only address here)."""
    import uvicorn

    from storage.runtime import bootstrap
    from tests.conftest import embedded_settings
    from tests.consult.room_scenario import loopback_candidates
    from tests.consult.test_rooms import room_app

    loopback_candidates()
    runtime = bootstrap(embedded_settings(Path(workdir)), component="bench")
    uvicorn.run(room_app(runtime.settings), host="127.0.0.1", port=port, log_level="warning")


def start_server(workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    code = f"from bench.room_ultrasound import serve; serve({str(workdir)!r}, {port})"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LANCANG_")}
    server = subprocess.Popen([sys.executable, "-c", code], env=env)
    return server, f"http://127.0.0.1:{port}"


def make_world(workdir: Path) -> tuple[dict, dict, int]:
    """li presents, wang is the specialist, zhou coordinates (tests/consult/room_scenario.py)."""
    from storage.runtime import bootstrap
    from tests.conftest import embedded_settings

    runtime = bootstrap(embedded_settings(workdir), component="bench")
    try:
        return world(runtime)
    finally:
        runtime.db.dispose()


# ---- the limited link ---------------------------------------------------------------------

class Link:
    """htb on this namespace's loopback: the specialist's UDP port, each way, at `rate` bit/s."""

    def __init__(self):
        self.on = False

    def set(self, rate: int, port: int) -> None:
        self.clear()
        if not rate:
            return
        queue = max(3000, int(rate / 8 * QUEUE_S))
        commands = [["qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "999"]]
        for minor, match in ((10, "dport"), (20, "sport")):  # to the page, from the page
            commands += [
                ["class", "add", "dev", "lo", "parent", "1:", "classid", f"1:{minor}", "htb", "rate", str(rate),
                 "ceil", str(rate), "burst", "15k"],
                ["qdisc", "add", "dev", "lo", "parent", f"1:{minor}", "bfifo", "limit", str(queue)],
                ["filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32",
                 "match", "ip", "protocol", "17", "0xff", "match", "ip", match, str(port), "0xffff",
                 "flowid", f"1:{minor}"]]
        for command in commands:
            subprocess.run(["tc", *command], check=True)
        self.on = True

    def dropped(self) -> int:
        out = subprocess.run(["tc", "-s", "qdisc", "show", "dev", "lo"], capture_output=True, text=True).stdout
        return sum(int(part.split()[0].rstrip(",")) for part in out.split("(dropped")[1:]) if self.on else 0

    def clear(self) -> None:
        if self.on:
            subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], check=False)
            self.on = False


# ---- measuring in the pages ---------------------------------------------------------------

async def share(presenter) -> None:
    """The presenter picks the capture device the browser lists and shares it."""
    await until(presenter, "document.querySelectorAll('#room-us-source option').length > 0")
    await presenter.click("#room-us-share")
    await until(presenter, "document.getElementById('room-us-share').getAttribute('aria-pressed') === 'true'")


async def receiving(page, width: int, height: int, timeout: float = 60) -> None:
    await until(page, f"(r => r && r.width === {width} && r.height === {height})"
                      "(window.lancangRoom.ultrasound().received)", timeout)


async def full_rate(page, fps: float, timeout: float = 90, seconds: int = 3) -> float:
    """Seconds until `seconds` seconds in a row carry `fps` frames a second on average. The
    bitrate climbs first: the presenter's Chromium from ULTRASOUND_START_KBPS by loss, the
    server to the specialist by the specialist's REMB, about 8% a second from what flowed
    before the share; until then the ultrasound keeps its lines and loses frames."""
    t0, recent = time.monotonic(), []
    while len(recent) < seconds or sum(recent[-seconds:]) < fps * seconds:
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"the ultrasound did not reach {fps} fps in {timeout} s")
        await asyncio.sleep(1)
        now = await page.evaluate("window.lancangRoom.ultrasound().received")
        recent.append(now["fps"] if now else 0)
    return round(time.monotonic() - t0, 1)


async def measure(page, presenter, seconds: float) -> dict:
    """Over `seconds`: what the page decoded of the ultrasound (sizes seen, frames a second,
    freezes as Chromium counts them, bitrate) and all it received; what the presenter sent."""
    state = "window.lancangRoom.ultrasound().received"
    first, path0 = await page.evaluate(state), await page.evaluate("window.lancangRoom.mediaPath()")
    sizes, fps_seen, kbps_seen = set(), [], []
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        await asyncio.sleep(1)
        now = await page.evaluate(state)
        sizes.add(f"{now['width']}x{now['height']}")
        fps_seen.append(now["fps"])
        kbps_seen.append(now["kbps"])
    last, path1 = await page.evaluate(state), await page.evaluate("window.lancangRoom.mediaPath()")
    sent = (await presenter.evaluate("window.lancangRoom.ultrasound()"))["sent"] or {}
    span = (last["timestamp"] - first["timestamp"]) / 1000
    return {"size": f"{last['width']}x{last['height']}", "sizes_seen": sorted(sizes),
            "fps": round((last["frames"] - first["frames"]) / span, 1),
            "fps_each_s": [round(v) for v in fps_seen],
            "freezes": last["freezes"] - first["freezes"], "keyframes": last["keyFrames"] - first["keyFrames"],
            "frozen_s": round(last["frozenSeconds"] - first["frozenSeconds"], 2),
            "ultrasound_kbps": round((last["bytes"] - first["bytes"]) * 8 / span / 1000), "kbps_each_s": kbps_seen,
            "all_media_kbps": round((path1["bytesReceived"] - path0["bytesReceived"]) * 8
                                    / ((path1["timestamp"] - path0["timestamp"]) / 1000) / 1000),
            "presenter_sends": f"{sent.get('width')}x{sent.get('height')}@{round(sent.get('fps') or 0)}",
            "presenter_limited_by": sent.get("limitation"), "seconds": round(span, 1),
            "caption": (await page.evaluate("window.lancangRoom.ultrasound()"))["caption"]}


async def screenshots(page, into: Path, tag: str) -> list[str]:
    """The specialist's page at a township PC's 1366x768 and a phone's 390x844."""
    into.mkdir(parents=True, exist_ok=True)
    shots = []
    for width, height in ((1366, 768), (390, 844)):
        await page.set_viewport_size({"width": width, "height": height})
        await asyncio.sleep(1.5)
        shot = into / f"ultrasound-{tag}-{width}x{height}.png"
        await page.screenshot(path=str(shot))
        shots.append(str(shot))
    await page.set_viewport_size({"width": 1366, "height": 768})
    return shots


async def launch(pw, y4m: Path | None):
    args = CHROMIUM_ARGS + ([f"--use-file-for-fake-video-capture={y4m}"] if y4m else [])
    return await pw.chromium.launch(executable_path="/usr/bin/chromium", args=args)


async def set_mode(page, mode: str) -> None:
    await page.select_option("#room-mode", mode)
    await until(page, f"window.lancangRoom.mode === '{mode}'")


# ---- the test's run -----------------------------------------------------------------------

CHECK_S = 6  # each mode's measurement in the test (the benchmark's are --seconds, 15 by default)

async def check_run(base: str, sessions: dict, consult_id: int, y4m: Path, shots: Path, server_pid: int) -> dict:
    """Normal mode: the source's size, its frame rate; low mode: 480 lines, 15 fps, the
    bitrate under 1 Mbps. No link limit (the bench adds those)."""
    from playwright.async_api import async_playwright

    verdict: dict = {}
    async with async_playwright() as pw:
        township, city = await launch(pw, y4m), await launch(pw, None)
        li = await page_for(township, base, sessions["li"], consult_id)
        wang = await page_for(city, base, sessions["wang"], consult_id)
        await until(wang, "(window.lancangRoom.frames()['li'] || 0) > 10", 60)
        for page in (li, wang):  # the ultrasound instead of the camera; two cores carry the rest
            await page.click("#room-cam")
        verdict["devices"] = await li.evaluate(
            "[...document.querySelectorAll('#room-us-source option')].map(o => o.textContent)")
        t0 = time.monotonic()
        await share(li)
        await receiving(wang, SOURCE[0], SOURCE[1])
        verdict["first_frame_s"] = round(time.monotonic() - t0, 1)
        try:
            verdict["full_rate_s"] = round(verdict["first_frame_s"] + await full_rate(wang, 0.9 * SOURCE[2]), 1)
        except TimeoutError:
            verdict["full_rate_s"] = None  # the test says so; the rest is measured all the same
        cpu0, t0 = _cpu_seconds(server_pid), time.monotonic()
        verdict["normal"] = await measure(wang, li, CHECK_S)
        verdict["normal"]["server_cpu_cores"] = round((_cpu_seconds(server_pid) - cpu0) / (time.monotonic() - t0), 2)
        verdict["shots"] = await screenshots(wang, shots, "normal")
        await li.set_viewport_size({"width": 1366, "height": 768})
        await li.screenshot(path=str(shots / "ultrasound-presenter-1366x768.png"))
        await set_mode(wang, "low")
        await receiving(wang, 640, 480, 30)
        await asyncio.sleep(3)
        verdict["low"] = await measure(wang, li, CHECK_S)
        verdict["shots"] += await screenshots(wang, shots, "low")
        await li.click("#room-us-share")  # stop: the stage goes from the specialist's page
        await until(wang, "document.getElementById('room-us-stage').hidden", 30)
        verdict["stopped"] = True
        verdict["load"] = os.getloadavg()
        await township.close()
        await city.close()
    return verdict


def check(workdir: Path) -> dict:
    """Run inside a private network namespace (the test does `unshare -n`)."""
    _api, sessions, consult_id = make_world(workdir)
    y4m = write_y4m(workdir / "ultrasound.y4m")
    server, base = start_server(workdir)
    try:
        asyncio.run(_wait_http(base))
        return asyncio.run(asyncio.wait_for(
            check_run(base, sessions, consult_id, y4m, workdir / "shots", server.pid), 240))
    finally:
        server.terminate()
        server.wait(timeout=30)


# ---- the benchmark ------------------------------------------------------------------------

async def server_cpu(pid: int, seconds: float) -> float:
    cpu0, t0 = _cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    return round((_cpu_seconds(pid) - cpu0) / (time.monotonic() - t0), 3)


def emit(figure: dict) -> None:
    print(json.dumps(figure, ensure_ascii=False), flush=True)


async def bench_run(args, base: str, sessions: dict, consult_id: int, y4m: Path, pid: int) -> None:
    from playwright.async_api import async_playwright

    link = Link()
    async with async_playwright() as pw:
        township, city = await launch(pw, y4m), await launch(pw, None)
        li = await page_for(township, base, sessions["li"], consult_id)
        wang = await page_for(city, base, sessions["wang"], consult_id)
        await until(wang, "(window.lancangRoom.frames()['li'] || 0) > 10", 60)
        await asyncio.sleep(args.settle)
        baseline = await server_cpu(pid, args.seconds)
        emit({"figure": "server_cpu_cameras_only", "cores": baseline,
              "note": "two cameras and two microphones relayed, no ultrasound"})
        t0 = time.monotonic()
        await share(li)
        await receiving(wang, SOURCE[0], SOURCE[1])
        first = time.monotonic() - t0
        try:
            climbed = round(first + await full_rate(wang, 0.9 * SOURCE[2]), 1)
        except TimeoutError:
            climbed = None
        emit({"figure": "ultrasound_start", "first_frame_s": round(first, 1), "seconds_to_27_fps": climbed,
              "note": "share clicked -> first 1024x768 frame decoded; -> 3 s in a row at >= 27 fps on average"})
        port = (await wang.evaluate("window.lancangRoom.mediaPath()"))["local"]
        try:
            for rate in args.links:
                for mode in args.modes:
                    await one_setting(args, link, rate, port, mode, li, wang, pid, baseline)
                    if rate == 0 and args.shots:
                        await screenshots(wang, Path(args.shots), mode)
        finally:
            link.clear()
        await set_mode(wang, "normal")
        await second_receiver(args, city, base, sessions, consult_id, li, pid)
        await township.close()
        await city.close()


async def one_setting(args, link: Link, rate: int, port: int, mode: str, li, wang, pid: int, baseline: float) -> None:
    """One link rate and mode: settle (the bitrate estimate adapts), then measure."""
    link.set(rate, port)
    await set_mode(wang, mode)
    await asyncio.sleep(args.settle)
    dropped0 = link.dropped()
    cpu0, t0 = _cpu_seconds(pid), time.monotonic()
    figures = await measure(wang, li, args.seconds)
    cpu = round((_cpu_seconds(pid) - cpu0) / (time.monotonic() - t0), 3)
    emit({"figure": "ultrasound_received", "link_mbps": rate / 1e6 if rate else "unlimited", "mode": mode,
          "source": f"{SOURCE[0]}x{SOURCE[1]}@{SOURCE[2]}", **figures, "link_drops": link.dropped() - dropped0,
          "server_cpu_cores": cpu, "server_cpu_for_ultrasound": round(cpu - baseline, 3),
          "load1": round(os.getloadavg()[0], 2)})


async def second_receiver(args, browser, base: str, sessions: dict, consult_id: int, li, pid: int) -> None:
    """One more receiver (the coordinator's page) costs the server one more encode of every
    stream it receives (aiortc issue #1155); the ultrasound's decode is shared."""
    before = await server_cpu(pid, args.seconds)
    zhou = await page_for(browser, base, sessions["zhou"], consult_id)
    await receiving(zhou, SOURCE[0], SOURCE[1])
    try:
        await full_rate(zhou, 0.9 * SOURCE[2])
    except Exception:  # report what it gets all the same
        pass
    cpu0, t0 = _cpu_seconds(pid), time.monotonic()
    got = await measure(zhou, li, args.seconds)
    after = round((_cpu_seconds(pid) - cpu0) / (time.monotonic() - t0), 3)
    emit({"figure": "server_cpu_one_more_receiver", "cores_before": before, "cores_after": after,
          "added_cores": round(after - before, 3),
          "streams_added": "the ultrasound, two cameras and two microphones to the coordinator's page",
          "coordinator_received": {k: got[k] for k in ("size", "fps", "ultrasound_kbps", "freezes")},
          "load1": round(os.getloadavg()[0], 2)})
    await zhou.close()


def codec_cpu(y4m: Path, frames: int = 90) -> dict:
    """The server's work per relayed ultrasound, timed on this process's own CPU clock (other
    jobs on the machine do not count): one VP8 decode of what the presenter sends, and per
    receiving page one encode (normal: 1024x768 at 30 fps, 2.5 Mbps; low: scaled to 640x480
    and encoded at 15 fps, 500 kbps), as consult/rooms.py and compat_aiortc do them."""
    import fractions

    import av
    from av import VideoFrame

    from consult.compat_aiortc import BoundedVp8Encoder

    data = y4m.read_bytes()
    size, start = SOURCE[0] * SOURCE[1] * 3 // 2, data.index(b"\n") + 1 + len(b"FRAME\n")
    planes = [np.frombuffer(data, np.uint8, size, start + i * (size + 6)).reshape(SOURCE[1] * 3 // 2, SOURCE[0])
              for i in range(round(2 * SOURCE[2]))]
    source = av.CodecContext.create("libvpx", "w")
    source.width, source.height, source.pix_fmt, source.bit_rate = SOURCE[0], SOURCE[1], "yuv420p", 2_500_000
    decoder = av.CodecContext.create("libvpx", "r")
    normal = BoundedVp8Encoder(lambda estimate: 2_500_000)
    low = BoundedVp8Encoder(lambda estimate: 500_000)
    spent = {"decode": 0.0, "encode_normal": 0.0, "encode_low": 0.0}
    for i in range(frames):
        frame = VideoFrame.from_ndarray(planes[i % len(planes)], format="yuv420p")
        frame.pts, frame.time_base = i * 3000, fractions.Fraction(1, 90000)
        packets = source.encode(frame)
        t = time.process_time()
        decoded = [f for packet in packets for f in decoder.decode(packet)]
        spent["decode"] += time.process_time() - t
        for picture in decoded:
            picture.pts, picture.time_base = frame.pts, frame.time_base
            t = time.process_time()
            normal.encode(picture)
            spent["encode_normal"] += time.process_time() - t
            if i % 2 == 0:  # low mode keeps one frame in two
                t = time.process_time()
                small = picture.reformat(width=640, height=480)
                small.pts, small.time_base = picture.pts, picture.time_base
                low.encode(small)
                spent["encode_low"] += time.process_time() - t
    per = {k: v / frames * 1000 for k, v in spent.items()}
    per["encode_low"] *= 2  # it ran on half the frames
    return {"ms_per_frame": {k: round(v, 2) for k, v in per.items()},
            "cores": {"decode_once_30fps": round(per["decode"] * SOURCE[2] / 1000, 3),
                      "per_normal_receiver_30fps": round(per["encode_normal"] * SOURCE[2] / 1000, 3),
                      "per_low_receiver_15fps": round(per["encode_low"] * 15 / 1000, 3)}}


def bench(args) -> None:
    from bench.peers import ensure_private_netns
    from bench.runinfo import lancang_revision, uptime
    from tests.consult.room_scenario import loopback_candidates

    ensure_private_netns()
    loopback_candidates()
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="lancang-bench-ultrasound-"))
    emit({"figure": "run", "uptime": uptime(), "cores": os.cpu_count(), "revision": lancang_revision()})
    _api, sessions, consult_id = make_world(workdir)
    y4m = write_y4m(workdir / "ultrasound.y4m")
    emit({"figure": "server_cpu_per_stream_isolated", **codec_cpu(y4m), "load1": round(os.getloadavg()[0], 2),
          "note": "process CPU time of the relay's own decode and encodes, in this process"})
    server, base = start_server(workdir)
    try:
        asyncio.run(_wait_http(base))
        asyncio.run(bench_run(args, base, sessions, consult_id, y4m, server.pid))
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--links", default="0,4,1", help="Mbit/s, comma-separated; 0 = no limit")
    parser.add_argument("--seconds", type=float, default=15, help="each measurement")
    parser.add_argument("--settle", type=float, default=20, help="before each measurement (the bitrate climbs "
                                                                    "about 8%% a second)")
    parser.add_argument("--modes", default="normal,low", help="the specialist's modes, in this order")
    parser.add_argument("--shots", default="", help="screenshots of the specialist's page into this folder")
    parser.add_argument("--check", default="", help="the test's run into this work folder; prints its verdict")
    args = parser.parse_args()
    if args.check:
        print(json.dumps(check(Path(args.check))))
        return
    args.links = [int(float(v) * 1_000_000) for v in args.links.split(",")]
    args.modes = args.modes.split(",")
    bench(args)


if __name__ == "__main__":
    main()
