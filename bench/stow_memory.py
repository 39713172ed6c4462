"""Peak memory of the web process while it takes one large STOW-RS upload (13.5).

    .venv/bin/python -m bench.stow_memory [--mib 200]

Starts `lancang web` on an embedded data dir, sends one multipart body of about --mib MiB
(2 MiB CT instances, streamed with chunked encoding), and samples the process's anonymous
memory (RssAnon, every 10 ms) during the upload: the heap, which a body read into memory
grows by at least its size (the anchor). VmHWM (peak RSS) is printed too; it also counts
file-backed pages of the spooled body mapped while parsing, which the kernel can drop."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from pydicom.uid import generate_uid

from bench.runinfo import lancang_revision, load1, uptime
from imaging.dicomweb import multipart
from tests.dicomdata import ct_instance

MiB = 1024 * 1024


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_anon_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=200)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stow-mem-"))
    port = 18000 + os.getpid() % 1000
    env = {**os.environ, "LANCANG_DATA_DIR": str(work / "var"), "LANCANG_HTTP_PORT": str(port)}
    cli = [sys.executable, "-m", "lancang.cli"]
    for command in (["institution", "add", "T01", "--name", "镇卫生院", "--level", "township"],
                    ["user", "add", "tech", "--role", "radiographer", "--institution", "T01", "--password", "pw-123456"]):
        subprocess.run(cli + command, env=env, check=True, capture_output=True)
    token = subprocess.run(cli + ["token", "issue", "tech"], env=env, check=True, capture_output=True,
                           text=True).stdout.strip().splitlines()[-1]
    web = subprocess.Popen(cli + ["web"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        while True:
            try:
                httpx.get(f"{base}/healthz", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        study, instance_mib = generate_uid(), 2
        count = max(1, args.mib // instance_mib)
        parts = [ct_instance(study_uid=study, instance_number=n, size=1024, seed=n) for n in range(count)]
        body_mib = sum(len(p) for p in parts) / MiB
        before = peak_rss_mib(web.pid)
        anon_before, anon_peak, sampling = rss_anon_mib(web.pid), [0.0], [True]

        def sample():
            while sampling[0]:
                anon_peak[0] = max(anon_peak[0], rss_anon_mib(web.pid))
                time.sleep(0.01)
        import threading

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

        def chunks():
            yield from multipart.stream((("application/dicom", [p]) for p in parts), "BENCH")
        started = time.monotonic()
        answer = httpx.post(f"{base}/dicom-web/studies", content=chunks(), timeout=600, headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": 'multipart/related; type="application/dicom"; boundary=BENCH'})
        seconds = time.monotonic() - started
        after = peak_rss_mib(web.pid)
        sampling[0] = False
        sampler.join()
        print(json.dumps({
            "benchmark": "stow_memory", "status": answer.status_code, "instances": count,
            "body_mib": round(body_mib, 1), "peak_rss_before_mib": round(before, 1),
            "peak_rss_after_mib": round(after, 1), "peak_rss_growth_mib": round(after - before, 1),
            "anon_before_mib": round(anon_before, 1), "anon_peak_mib": round(anon_peak[0], 1),
            "anon_growth_mib": round(anon_peak[0] - anon_before, 1),
            "anon_growth_per_body": round((anon_peak[0] - anon_before) / body_mib, 3), "seconds": round(seconds, 1),
            "uptime": uptime(), "load1": load1(), "lancang": lancang_revision()}, ensure_ascii=False, indent=1))
    finally:
        web.terminate()
        web.wait(timeout=30)


if __name__ == "__main__":
    main()
