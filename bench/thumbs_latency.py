"""From the last C-STORE acknowledgement of a 200-slice CT to thumbnails ready and a share made.

    python bench/thumbs_latency.py [--repeat 10] [--slices 200] [--targets embedded,pg-s3]
                                   [--json OUT.json]

For each target, `lancang dicom` and `lancang worker` (the commands a deployment runs,
default concurrency) start once on a fresh data dir:

  embedded  SQLite + filesystem object store + the filesystem Celery broker;
  pg-s3     PostgreSQL (fsync and synchronous_commit on) + S3 (SeaweedFS) + Redis.

Each repeat sends a new 200-slice CT (bench/ctgen.py's phantom, 512x512, fresh UIDs) with
dcmtk storescu over one association (TCP_NODELAY=1). The clock starts when storescu exits:
it has received the last C-STORE response (only the release follows). Then, polling the
database every 10 ms:

  thumbnail   the series thumbnail is committed (what lists and the patient page show);
  share       a cloud-film share for the study is created and committed (film.service,
              in this process) right after: "thumbnails ready and the share creatable";
  previews    every per-instance preview is committed (the series is marked derived).

Included in the figure: the receiver's 0.75 s quiet period (a series is announced once it
stops receiving), the broker's delivery (the filesystem broker polls every second), the
worker's rendering. The first repeat of each target is a warm-up (worker imports, first
connections) and is reported separately; p95 is over the other repeats.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if not __package__:                      # run as a script: make `bench`, `tests` importable
    sys.path.insert(0, str(REPO))

from bench import ctgen, peers  # noqa: E402
from bench.runinfo import percentile, uptime  # noqa: E402

AET, CALLING = "LANCANG", "BENCH"
GOAL_S = 2.0
POLL_S = 0.01


@dataclass
class Sample:
    target: str
    repeat: int
    warmup: bool
    send_s: float
    thumbnail_s: float
    share_s: float
    previews_s: float
    load1: float


def fresh_series(source: list[Path], folder: Path) -> tuple[str, str]:
    """Copies of the source slices with new Study/Series/SOP Instance UIDs."""
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True)
    study_uid, series_uid = generate_uid(), generate_uid()
    for path in source:
        ds = dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        (folder / path.name).write_bytes(buffer.getvalue())
    return study_uid, series_uid


class Target:
    def __init__(self, name: str, workdir: Path, stack: contextlib.ExitStack):
        self.name = name
        self.workdir = workdir
        self.stack = stack
        self.port = peers.free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LANCANG_")}
        self.env.update(LANCANG_DATA_DIR=str(workdir / "var"), LANCANG_DICOM_PORT=str(self.port),
                        LANCANG_DICOM_AE_TITLE=AET, LANCANG_DICOM_PROCESSES="1", LANCANG_BIND_HOST="127.0.0.1",
                        LANCANG_LOG_LEVEL="INFO")
        if name == "pg-s3":
            from bench.dicom_store import PostgresDurable
            from tests.services import RedisServer, S3Server

            pg = PostgresDurable()
            stack.callback(pg.server.close)
            shown = pg.start()
            s3 = S3Server()
            stack.callback(s3.close)
            s3.start()
            redis = RedisServer()
            stack.callback(redis.close)
            redis.start()
            print(f"  servers: PostgreSQL {shown['server_version']} (fsync=on, synchronous_commit=on), "
                  f"SeaweedFS at {s3.endpoint}, Redis at {redis.url}", flush=True)
            self.env.update(LANCANG_DATABASE_URL=pg.server.create_database("thumbs"), LANCANG_OBJECT_STORE="s3",
                            LANCANG_S3_ENDPOINT=s3.endpoint, LANCANG_S3_ACCESS_KEY=s3.access_key,
                            LANCANG_S3_SECRET_KEY=s3.secret_key, LANCANG_S3_REGION=s3.region,
                            LANCANG_S3_BUCKET="thumbs", LANCANG_BROKER_URL=redis.url,
                            LANCANG_SECRET_KEY=secrets.token_hex(32))
        self.processes: list[subprocess.Popen] = []

    def cli(self, *args: str) -> None:
        done = subprocess.run([sys.executable, "-m", "lancang.cli", *args], env=self.env, cwd=self.workdir,
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"lancang {' '.join(args)}: {done.stderr[-2000:]}")

    def start(self) -> None:
        self.cli("institution", "add", CALLING, "--name", "基准镇卫生院", "--level", "township")
        self.cli("ae", "add", CALLING, "--institution", CALLING)
        for command in ("dicom", "worker"):
            log = open(self.workdir / f"{command}.log", "ab")
            self.processes.append(subprocess.Popen([sys.executable, "-m", "lancang.cli", command], env=self.env,
                                                   cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 120
        while True:
            try:
                peers.echoscu("127.0.0.1", self.port, AET, CALLING)
                break
            except subprocess.CalledProcessError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the receiver did not answer C-ECHO")
                time.sleep(0.2)
        from storage.runtime import bootstrap
        from storage.settings import Settings

        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(self.env)
        try:
            self.runtime = bootstrap(Settings(_env_file=None), component="bench")
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def stop(self) -> None:
        from bench.dicom_store import process_tree, stop_tree

        for process in self.processes:
            stop_tree(process, set(process_tree(process.pid)))
        self.runtime.db.dispose()

    def measure(self, folder: Path, study_uid: str, series_uid: str) -> tuple[float, float, float, float]:
        from sqlalchemy import select

        from film import service as shares
        from imaging.models import Series
        from storage.access import SYSTEM

        files = sorted(folder.iterdir())
        send_s, count = peers.storescu("127.0.0.1", self.port, AET, files, 1, CALLING, timeout=600)
        acked = time.perf_counter()
        assert count == len(files)
        thumbnail_at = share_at = previews_at = None
        deadline = acked + 120
        db, settings = self.runtime.db, self.runtime.settings
        while previews_at is None:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"series not derived after 120 s (see {self.workdir}/worker.log)")
            with db.scope(readonly=True) as session:
                row = session.execute(select(Series.thumbnail_key, Series.derive_state, Series.num_instances)
                                      .where(Series.series_instance_uid == series_uid)).first()
            now = time.perf_counter()
            if row is not None and row.thumbnail_key and thumbnail_at is None:
                thumbnail_at = now
                with db.scope() as session:
                    shares.create_share(session=session, principal=SYSTEM, study_uid=study_uid,
                                        secret_key=settings.effective_secret_key,
                                        public_url=settings.effective_public_url)
                share_at = time.perf_counter()
            if row is not None and row.derive_state in ("done", "partial") and thumbnail_at is not None:
                if row.num_instances != len(files) or row.derive_state != "done":
                    raise RuntimeError(f"derived {row.num_instances} instances, state {row.derive_state}")
                previews_at = now
            else:
                time.sleep(POLL_S)
        return send_s, thumbnail_at - acked, share_at - acked, previews_at - acked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10, help="measured repeats per target (plus one warm-up)")
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--targets", default="embedded,pg-s3")
    parser.add_argument("--data", type=Path, help="CT source folder (default /tmp/ct<SLICES>, generated)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    source_dir = args.data or Path(f"/tmp/ct{args.slices}")
    if not ctgen.is_generated(source_dir, args.slices):
        print(f"generating {args.slices} CT slices in {source_dir} ...", flush=True)
        ctgen.generate(source_dir, count=args.slices)
    source = ctgen.list_files(source_dir)[:args.slices]
    print(f"thumbs_latency: {len(source)} slices of 512x512 CT per repeat; {uptime()}", flush=True)

    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="lancang-thumbs-") as tmp, contextlib.ExitStack() as stack:
        for name in args.targets.split(","):
            workdir = Path(tmp) / name
            workdir.mkdir()
            target = Target(name, workdir, stack)
            target.start()
            try:
                for repeat in range(args.repeat + 1):
                    folder = workdir / f"send{repeat}"
                    study_uid, series_uid = fresh_series(source, folder)
                    load = round(os.getloadavg()[0], 2)
                    send_s, thumb_s, share_s, previews_s = target.measure(folder, study_uid, series_uid)
                    shutil.rmtree(folder)
                    sample = Sample(name, repeat, repeat == 0, round(send_s, 3), round(thumb_s, 3),
                                    round(share_s, 3), round(previews_s, 3), load)
                    samples.append(sample)
                    print(f"  {name:8s} #{repeat:<2d}{' (warm-up)' if repeat == 0 else '          '} "
                          f"send {send_s:5.2f} s | thumbnail {thumb_s:5.2f} s | share {share_s:5.2f} s | "
                          f"all previews {previews_s:5.2f} s | load {load}", flush=True)
                    time.sleep(1.0)  # let the quiet period of one series not overlap the next
            finally:
                target.stop()

    print(f"\nresults ({uptime()}):")
    summary = {}
    for name in args.targets.split(","):
        measured = [s for s in samples if s.target == name and not s.warmup]
        shares_s = [s.share_s for s in measured]
        previews = [s.previews_s for s in measured]
        summary[name] = {"n": len(measured), "share_median_s": round(statistics.median(shares_s), 3),
                         "share_p95_s": round(percentile(shares_s, 95), 3), "share_max_s": round(max(shares_s), 3),
                         "previews_median_s": round(statistics.median(previews), 3),
                         "previews_p95_s": round(percentile(previews, 95), 3)}
        verdict = "meets" if summary[name]["share_p95_s"] <= GOAL_S else "MISSES"
        print(f"  {name:8s} last ack -> thumbnail + share: median {summary[name]['share_median_s']:.2f} s, "
              f"p95 {summary[name]['share_p95_s']:.2f} s, max {summary[name]['share_max_s']:.2f} s "
              f"({verdict} the {GOAL_S:.0f} s goal); all 200 previews: median "
              f"{summary[name]['previews_median_s']:.2f} s, p95 {summary[name]['previews_p95_s']:.2f} s "
              f"(n={len(measured)})")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "samples": [asdict(s) for s in samples]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
