"""The township edge's store-and-forward on a faulty line, against the floor and plain STOW-RS.

    python bench/edge_forward.py [--ct 200] [--us-frames 120] [--rate-bits 2000000] [--rtt-ms 150]
                                 [--drop-mb 20] [--outage-s 60] [--workdir DIR] [--no-stow]

A 200-slice CT (bench/ctgen.py, 512x512) and a 120-frame ultrasound cine (640x480) go from a
modality (dcmtk storescu) to the edge's DICOM receiver, and from there through a faulty line
(bench/linkproxy.py: 2 Mbit/s, 150 ms round trip, a connection cut every ~20 MB on average,
a 60 s stall and a 60 s refusal) to the region. The forwarder is SIGKILLed once, between the
outages, and started again a second later. The ultrasound is registered urgent at the desk.

Printed: the wall time from the forwarder's start until the region confirmed both studies;
the floor, the compressed bytes the edge sends (measured in this run on the very bytes it
stored) over the link rate, with and without the outages' time (no sender can use a line that
is down); and plain STOW-RS of the same files, one instance per request, retried with the
same back-off, through the same line with the same faults, into a second region.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import ctgen, runinfo  # noqa: E402
from bench.edge_scenario import (  # noqa: E402
    Sites, edge_sent, region_bytes, region_progress, us_cine, verify, wire_bytes)
from bench.linkproxy import FaultProxy  # noqa: E402

CHUNK = 1024 * 1024
MODES = ("stall", "refuse")  # the first outage stalls the line, the second refuses connections
STOW_CAP_S = 60 * 60
BACKOFF_S = (1, 2, 4, 8, 10)


def data(workdir: Path, ct: int, frames: int) -> tuple[list[Path], str]:
    files = ctgen.generate(workdir / "ct", count=ct)
    us = workdir / "us" / f"US-{frames}.dcm"
    if not us.exists():
        us_cine(us, frames=frames, seed=3)
    from pydicom import dcmread

    return [us, *files], str(dcmread(us, stop_before_pixels=True).StudyInstanceUID)


def line_for(args, upstream_port: int) -> FaultProxy:
    return FaultProxy(upstream_port, rate_bits=args.rate_bits, rtt_ms=args.rtt_ms,
                      drop_every=int(args.drop_mb * 1e6), seed=20)


def _schedule(line: FaultProxy, args) -> None:
    for at, mode in zip(args.outage_at, MODES):
        line.outage_in(at, seconds=args.outage_s, mode=mode)


def run_edge(args, root: Path, files: list[Path], urgent: str) -> dict:
    from edge.client import ENCODERS

    with Sites(root, chunk_bytes=CHUNK) as sites:
        sites.start_region()
        with line_for(args, sites.region_port) as line:
            sites.start_edge(f"http://127.0.0.1:{line.port}", urgent=(urgent,))
            modality_s = sites.storescu(files)
            region, edge = sites.runtime(sites.region), sites.runtime(sites.edge)
            started = time.monotonic()
            sites.start_forwarder()
            _schedule(line, args)
            killed, confirmed = None, {}
            while len(confirmed) < 2:
                elapsed = time.monotonic() - started
                if killed is None and elapsed >= args.kill_at:
                    sites.kill_forwarder()
                    killed = {"instances_verified": region_progress(region.db)[0], "bytes_held": region_bytes(region)}
                    time.sleep(1)
                    sites.start_forwarder()
                for study, state in edge_sent(edge.db).items():
                    if state == "sent" and study not in confirmed:
                        confirmed[study] = round(time.monotonic() - started, 1)
                time.sleep(0.5)
            wall = time.monotonic() - started
            verdict = verify(region, edge, files)
            stored = [edge.store.get(key) for key in _keys(edge)]
            result = {"wall_s": round(wall, 1), "modality_to_edge_s": round(modality_s, 1),
                      "confirmed_after_s": {("US (urgent)" if k == urgent else "CT"): v for k, v in confirmed.items()},
                      "at_sigkill": killed, "drops": line.drops,
                      "outages": [(round(s), m) for _, s, m in line.outages],
                      "carried_to_region_bytes": line.upstream_bytes, "stored_bytes": sum(map(len, stored)),
                      "xz_bytes": sum(wire_bytes(b, CHUNK, ENCODERS["xz"]) for b in stored),
                      "gzip_bytes": sum(wire_bytes(b, CHUNK, ENCODERS["gzip"]) for b in stored),
                      "verdict": verdict.__dict__}
    return result


def _keys(rt) -> list[str]:
    from sqlalchemy import select

    from imaging.models import Instance

    with rt.db.scope(readonly=True) as session:
        return list(session.scalars(select(Instance.object_key)))


def _multipart(data: bytes, boundary: str) -> bytes:
    return (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data
            + f"\r\n--{boundary}--\r\n".encode())


def _stow_one(client: httpx.Client, url: str, token: str, data: bytes) -> int:
    """Attempts until the region stored it (retrying for ever with the edge's back-off)."""
    boundary, attempt = "lancang-bench", 0
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/dicom+json",
               "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}
    while True:
        attempt += 1
        try:
            answer = client.post(url, content=_multipart(data, boundary), headers=headers)
            if answer.status_code in (200, 202):
                return attempt
        except httpx.HTTPError:
            pass
        time.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S)) - 1])


def run_stow(args, root: Path, files: list[Path]) -> dict:
    """Plain STOW-RS of the same files through the same faulty line into a fresh region."""
    from storage import identity

    with Sites(root) as sites:
        sites.start_region()
        db = sites.runtime(sites.region).db
        with db.scope() as session:
            user = identity.add_user(session=session, username="t01-rad", role="radiographer",
                                     institution_code="T01", password="bench-password-1")
            token, _ = identity.issue_token(session=session, user=user)
        with line_for(args, sites.region_port) as line:
            url = f"http://127.0.0.1:{line.port}/dicom-web/studies"
            timeout = httpx.Timeout(connect=15, read=30, write=30, pool=15)
            started, attempts, finished = time.monotonic(), 0, 0
            _schedule(line, args)
            with httpx.Client(timeout=timeout) as client:
                for path in files:
                    if time.monotonic() - started > STOW_CAP_S:
                        break
                    attempts += _stow_one(client, url, token, path.read_bytes())
                    finished += 1
            return {"wall_s": round(time.monotonic() - started, 1), "instances": finished, "of": len(files),
                    "requests": attempts, "drops": line.drops, "carried_to_region_bytes": line.upstream_bytes}


def report(args, edge: dict, stow: dict | None) -> dict:
    rate = args.rate_bits / 8
    outage_s = args.outage_s * len(args.outage_at)
    floor = edge["xz_bytes"] / rate
    figures = {"floor_s": round(floor, 1), "floor_plus_outages_s": round(floor + outage_s, 1),
               "wall_over_floor": round(edge["wall_s"] / floor, 2),
               "wall_over_floor_plus_outages": round(edge["wall_s"] / (floor + outage_s), 2),
               "carried_over_compressed": round(edge["carried_to_region_bytes"] / edge["xz_bytes"], 3),
               "gzip_floor_s": round(edge["gzip_bytes"] / rate, 1),
               "uncompressed_floor_s": round(edge["stored_bytes"] / rate, 1)}
    if stow:
        figures["stow_over_edge"] = round(stow["wall_s"] / edge["wall_s"], 2)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct", type=int, default=200)
    parser.add_argument("--us-frames", type=int, default=120)
    parser.add_argument("--rate-bits", type=float, default=2_000_000)
    parser.add_argument("--rtt-ms", type=float, default=150)
    parser.add_argument("--drop-mb", type=float, default=20)
    parser.add_argument("--outage-s", type=float, default=60)
    parser.add_argument("--outage-at", type=lambda text: [float(t) for t in text.split(",")], default=[45, 200],
                        help="seconds after the forwarder starts: a stall, then a refusal")
    parser.add_argument("--kill-at", type=float, default=120, help="SIGKILL the forwarder this long after its start")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/lancang-bench-edge"))
    parser.add_argument("--no-stow", action="store_true")
    args = parser.parse_args(argv)
    files, urgent = data(args.workdir, args.ct, args.us_frames)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    print(f"edge_forward: {len(files)} files, {sum(f.stat().st_size for f in files) / 1e6:.1f} MB; "
          f"{args.rate_bits / 1e6:g} Mbit/s, {args.rtt_ms:g} ms, a cut every ~{args.drop_mb:g} MB, "
          f"outages {list(zip(args.outage_at, MODES))} of {args.outage_s:g} s, SIGKILL at {args.kill_at:g} s; "
          f"uptime {runinfo.uptime()}",
          flush=True)
    edge = run_edge(args, args.workdir / f"edge-{stamp}", files, urgent)
    print(json.dumps({"edge": edge}, indent=1, ensure_ascii=False), flush=True)
    stow = None if args.no_stow else run_stow(args, args.workdir / f"stow-{stamp}", files)
    if stow:
        print(json.dumps({"stow": stow}, indent=1), flush=True)
    figures = report(args, edge, stow)
    print(json.dumps({"figures": figures, **runinfo.lancang_revision(), "load1": runinfo.load1()}, indent=1))
    verdict = edge["verdict"]
    ok = not verdict["problems"] and verdict["identical_to_edge"] == verdict["expected"] == verdict["at_region"]
    print(f"edge: {edge['wall_s']} s = {figures['wall_over_floor']}x the floor ({figures['floor_s']} s), "
          f"{figures['wall_over_floor_plus_outages']}x floor + outages; "
          + (f"plain STOW-RS: {stow['wall_s']} s ({stow['instances']}/{stow['of']} instances); " if stow else "")
          + ("every instance identical" if ok else "VERIFICATION FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
