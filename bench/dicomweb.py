"""DICOMweb latency: Lancang against Orthanc + its DICOMweb plugin, and QIDO at 1,000,000 instances.

    python bench/dicomweb.py [--parts compare,scale] [--repeat N] [--calls 30] [--warmup 3]
                             [--endpoints a,b] [--variants noaudit,no-lane,core-sql,no-native,
                             no-header-cache] [--before SOURCE_TREE] [--audit-variant]
                             [--scale-instances 1000000] [--json OUT.json]

compare  The same 800 CT slices (bench/ctgen.py, 4 studies x 200 slices, one series each)
         go to Orthanc from Debian with its DICOMweb plugin (dcmtk storescu, TCP_NODELAY=1,
         4 associations) and to Lancang on embedded defaults (`lancang import`: SQLite WAL
         synchronous=FULL, filesystem object store), served by a real `lancang web`
         (uvicorn) with a user's bearer token.  For each endpoint and target: 3 warm-up
         calls, then 30 timed calls over one keep-alive httpx connection; p50 and p95.
         Targets alternate per endpoint and the order flips every round.
           qido_instances   GET /studies/{st}/series/{se}/instances  (200 results)
           series_metadata  GET /studies/{st}/series/{se}/metadata   (200 datasets)
           retrieve         GET .../instances/{sop}   multipart/related; type="application/dicom"
           rendered         GET .../instances/{sop}/frames/1/rendered  image/jpeg
           study_search     GET /studies?PatientID=...  (1 result)
         Calls cycle over the 4 series, 30 different instances and the 4 patients; both
         targets get the same sequence.
scale    PostgreSQL 15 (tests.services.PostgresServer; fsync, synchronous_commit and
         full_page_writes ON while measuring), migrated by `lancang db upgrade`, filled
         by PostgreSQL itself (INSERT ... SELECT generate_series; see synthesise()) with
         50,000 patients, 100,000 studies, 225,000 series and 1,000,000 instances, then
         ANALYZE; `lancang web` on that database answers QIDO study searches by
         PatientID, PatientName wildcard and StudyDate range (limit=101, as OHIF's study
         list asks), 30+ varied values each, and common surnames without a limit (the
         server's maximum page of 1000 studies).

For the rendered frame, a floor target runs too: bench/bare_render.py, FastAPI + uvicorn +
Lancang's pixel pipeline (read the file, pydicom, imaging.pixels.render) with no token,
database lookup, access check or audit, timed in the same rounds on the same instances.

Also printed: the audit record's own cost (in-process on the same database: record_read, as
every read request writes one, and the synced record that changes use), Lancang's
per-request floor (a 400 after token authentication), and with --variants more `lancang web`
processes on the same data, timed in the same rounds, each with one part of the read path
changed back or off (VARIANTS: audit writes no-ops, no read lane, hot SQL through SQLAlchemy
Core, pixels through pydicom only, no header cache; diagnostics, not settings Lancang has);
with --before, one imported from another source tree (e.g. `git archive HEAD | tar -x -C D`),
for a before/after of the same run.

Everything runs inside a private network namespace (only loopback; Orthanc listens on
0.0.0.0), re-executing itself under `unshare -n`.  Every process started here is
stopped by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if not __package__:                      # run as a script: make `bench`, `tests` importable
    sys.path.insert(0, str(REPO))

from bench import ctgen, peers  # noqa: E402
from bench.runinfo import first_line, lancang_revision, load1, uptime  # noqa: E402
from bench.runinfo import percentile as pct  # noqa: E402

ORTHANC_AET, CALLING_AET = "ORTHANC", "BENCH"
INSTITUTION = "LC-C01"
USERNAME, PASSWORD = "bench-reader", "bench-password-1"
DICOM_JSON = "application/dicom+json"
DICOM_MULTIPART = 'multipart/related; type="application/dicom"'


class BenchError(RuntimeError):
    pass


# --------------------------------------------------------------- small helpers

def python_exe() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def stop_proc(proc: subprocess.Popen | None, timeout: float = 20.0) -> None:
    """SIGTERM by PID, SIGKILL by PID if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


# --------------------------------------------------------------- Lancang processes

# `lancang web` with one part of the read path changed back or off, on the same data in the
# same rounds: what each part is worth, measured beside the real server (diagnostics only:
# Lancang has no such settings). Each is Python run before `lancang web` starts.
VARIANTS = {
    # audit writes no-ops: how much of each figure the audit record is
    "noaudit": ("audit writes no-ops",
                "import storage.audit as audit\n"
                "audit.record = audit.record_read = lambda db, **fields: None\n"
                "audit.record_reads = lambda db, records: None\n"),
    # GET reads through FastAPI's routing and run_in_threadpool, not imaging/dicomweb/lane.py
    "no-lane": ("no read lane (FastAPI routing)",
                "import imaging.dicomweb as dicomweb\n"
                "dicomweb.install_read_lane = lambda app: None\n"),
    # token lookup, index lookup and read audit through SQLAlchemy Core, not storage.db.Prepared
    "core-sql": ("hot SQL via SQLAlchemy Core",
                 "import storage.db as db\n"
                 "def core(self, conn, params):\n"
                 "    result = conn.execute(self.statement, params)\n"
                 "    return [tuple(row) for row in result] if result.returns_rows else []\n"
                 "db.Prepared.execute = core\n"
                 "relaxed = db.Database.relaxed_scope\n"
                 "db.Database.relaxed_scope = lambda self, driver=False: relaxed(self)\n"),
    # every rendered frame through pydicom (parse, Datasets, pydicom's LUT functions)
    "no-native": ("pixels through pydicom only",
                  "import imaging.pixels as pixels\n"
                  "pixels.native_gray = lambda ds: None\n"),
    # the native path, but the header parsed again for every frame (a cold header every time)
    "no-header-cache": ("native path, no header cache",
                        "import imaging.dicomweb.render as render\n"
                        "render._remember_header = lambda key, header: None\n"),
}
WEB_MAIN = "import sys\nfrom lancang.cli import main\nsys.exit(main(['web']))\n"


class LancangSite:
    """A Lancang data dir (embedded, or on a PostgreSQL URL), its CLI and `lancang web`."""

    def __init__(self, workdir: Path, database_url: str | None = None):
        self.workdir = workdir
        self.python = python_exe()
        workdir.mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LANCANG_")}
        self.env.update(LANCANG_DATA_DIR=str(workdir / "var"), LANCANG_BIND_HOST="127.0.0.1",
                        LANCANG_LOG_LEVEL="WARNING")
        if database_url:
            self.env.update(LANCANG_DATABASE_URL=database_url, LANCANG_SECRET_KEY=secrets.token_hex(32),
                            LANCANG_AUDIT_KEY=secrets.token_hex(32))
        self.webs: list[subprocess.Popen] = []
        self.token = ""

    def cli(self, *args: str, timeout: float = 900) -> str:
        started = time.perf_counter()
        done = subprocess.run([self.python, "-m", "lancang.cli", *args], env=self.env, cwd=self.workdir,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise BenchError(f"lancang {' '.join(args)} failed ({done.returncode}):\n"
                             f"{done.stdout}{done.stderr}"[-3000:])
        self.last_cli_s = time.perf_counter() - started
        return done.stdout

    def add_reader(self, role: str = "specialist") -> str:
        """A user at INSTITUTION and a bearer token (`lancang token issue` prints it last)."""
        self.cli("user", "add", USERNAME, "--role", role, "--institution", INSTITUTION,
                 "--password", PASSWORD, "--display-name", "基准读片")
        self.token = self.cli("token", "issue", USERNAME, "--label", "bench").strip().splitlines()[-1]
        return self.token

    def start_web(self, *, variant: str | None = None, source: Path | None = None) -> str:
        """`lancang web` (uvicorn) on a free port with LANCANG_PUBLIC_URL; returns its URL.
        `variant`: one of VARIANTS applied first; `source`: another source tree of Lancang
        (e.g. `git archive` of an older commit) imported instead of this one."""
        port = peers.free_port()
        url = f"http://127.0.0.1:{port}"
        env = dict(self.env, LANCANG_HTTP_PORT=str(port), LANCANG_PUBLIC_URL=url)
        command = [self.python, "-m", "lancang.cli", "web"]
        if variant or source:
            prelude = f"import sys\nsys.path.insert(0, {str(source)!r})\n" if source else ""
            command = [self.python, "-c", prelude + (VARIANTS[variant][1] if variant else "") + WEB_MAIN]
        log_path = self.workdir / f"web-{port}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(command, env=env, cwd=self.workdir, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT)
        self.webs.append(proc)
        try:
            peers.wait_http(f"{url}/healthz", timeout=120, proc=proc)
        except Exception as exc:
            raise BenchError(f"lancang web did not start:\n{_tail(log_path)}") from exc
        return url

    def stop(self) -> None:
        for proc in self.webs:
            stop_proc(proc)

    def runtime_env(self):
        """Settings for in-process probes (audit timing) on this site's database."""
        from storage.settings import Settings

        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(self.env)
        try:
            return Settings(_env_file=None)
        finally:
            os.environ.clear()
            os.environ.update(saved)


# --------------------------------------------------------------- requests

@dataclass(frozen=True)
class SeriesInfo:
    study: str
    series: str
    patient_id: str
    sops: tuple[str, ...]            # in instance-number order


ENDPOINTS = {  # name -> (label, goal as a ratio Lancang / Orthanc)
    "qido_instances": ("QIDO instances of a 200-instance series", 0.25),
    "series_metadata": ("series metadata (200 instances)", 0.25),
    "retrieve": ("instance retrieve (multipart, as stored)", 1.0),
    "rendered": ("rendered frame (image/jpeg)", 1.0),
    "study_search": ("study search by PatientID", 1.0),
}
# Orthanc's p50 range quoted in the issue (ms), for a second ratio next to the same-run one.
ISSUE_ORTHANC_MS = {"qido_instances": (78, 85), "series_metadata": (41, 64), "retrieve": (36, 38),
                    "rendered": (3.4, 5.5), "study_search": (1.5, 2.5)}
LABELS = {"orthanc": "Orthanc+DICOMweb", "lancang": "Lancang embedded", "lancang-before": "Lancang, --before tree",
          "bare-render": "FastAPI+pixels only (floor)",
          **{f"lancang-{name}": f"Lancang, {name}" for name in VARIANTS}}
BARE_ENDPOINTS = {"bare-render": "rendered"}  # a floor target times only its endpoint


def call_for(endpoint: str, layout: list[SeriesInfo], k: int) -> tuple[str, dict, str, SeriesInfo, str]:
    """(path, params, Accept, series, sop) of call k: cycles over series, instances, patients."""
    info = layout[k % len(layout)]
    sop = info.sops[(k * 37 + 11) % len(info.sops)]
    base = f"/dicom-web/studies/{info.study}/series/{info.series}"
    if endpoint == "qido_instances":
        return f"{base}/instances", {}, DICOM_JSON, info, sop
    if endpoint == "series_metadata":
        return f"{base}/metadata", {}, DICOM_JSON, info, sop
    if endpoint == "retrieve":
        return f"{base}/instances/{sop}", {}, DICOM_MULTIPART, info, sop
    if endpoint == "rendered":
        return f"{base}/instances/{sop}/frames/1/rendered", {}, "image/jpeg", info, sop
    if endpoint == "study_search":
        return "/dicom-web/studies", {"PatientID": info.patient_id}, DICOM_JSON, info, sop
    raise ValueError(endpoint)


def check_response(endpoint: str, response, info: SeriesInfo, sop: str) -> None:
    """Both targets must answer correctly, or the timing means nothing."""
    if response.status_code != 200:
        raise BenchError(f"{endpoint}: HTTP {response.status_code} {response.text[:300]}")
    body = response.content
    if endpoint in ("qido_instances", "series_metadata"):
        items = json.loads(body)
        if len(items) != len(info.sops):
            raise BenchError(f"{endpoint}: {len(items)} results, expected {len(info.sops)}")
        uids = {item["00080018"]["Value"][0] for item in items}
        if uids != set(info.sops):
            raise BenchError(f"{endpoint}: wrong SOP Instance UIDs")
    elif endpoint == "retrieve":
        if len(body) < 500_000 or sop.encode() not in body[:4096]:
            raise BenchError(f"retrieve: {len(body)} bytes, SOP UID not in the first part")
    elif endpoint == "rendered":
        if not body.startswith(b"\xff\xd8"):
            raise BenchError(f"rendered: not a JPEG ({response.headers.get('content-type')})")
    elif endpoint == "study_search":
        items = json.loads(body)
        if len(items) != 1 or items[0]["0020000D"]["Value"][0] != info.study:
            raise BenchError(f"study_search: {len(items)} results for {info.patient_id}")


@dataclass
class Sample:
    round: int
    target: str
    endpoint: str
    p50_ms: float
    p95_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    bytes: int
    load1: float
    times_ms: list[float] = field(default_factory=list)


def time_endpoint(client, endpoint: str, layout: list[SeriesInfo], warmup: int, calls: int,
                  round_: int, target: str) -> Sample:
    times, size = [], 0
    for k in range(warmup + calls):
        path, params, accept, info, sop = call_for(endpoint, layout, k)
        if target == "bare-render":  # bench/bare_render.py: the same instances, by SOP UID alone
            path = f"/render/{sop}"
        started = time.perf_counter()
        response = client.get(path, params=params, headers={"Accept": accept})
        elapsed = (time.perf_counter() - started) * 1000
        check_response(endpoint, response, info, sop)
        if k >= warmup:
            times.append(elapsed)
            size = len(response.content)
    return Sample(round_, target, endpoint, round(pct(times, 50), 2), round(pct(times, 95), 2),
                  round(statistics.fmean(times), 2), round(min(times), 2), round(max(times), 2),
                  size, load1(), [round(t, 2) for t in times])


# --------------------------------------------------------------- compare

def layout_of(data: Path, plan: list[ctgen.Study]) -> list[SeriesInfo]:
    from pydicom import dcmread

    layout = []
    for study in plan:
        files = sorted((data / study.dirname).glob("CT*.dcm"))
        sops = tuple(str(dcmread(f, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
                     for f in files)
        layout.append(SeriesInfo(study.study_uid, study.series_uid, study.patient_id, sops))
    return layout


def audit_probe(settings, calls: int = 30) -> dict:
    """What one audit record costs on this database: `audit.record_read` as the web process
    writes one per read request (committed, flushed to disk within 0.1 s), and `audit.record`
    as changes and security events are written (synced at commit).  Appends real records."""
    from storage import audit
    from storage.access import Principal
    from storage.db import Database

    principal = Principal(kind="user", name=USERNAME, institution_code=INSTITUTION, role="specialist")
    out = {}
    for label, write in (("record_read (reads)", audit.record_read), ("record (synced)", audit.record)):
        db = Database(settings.effective_database_url)
        times = []
        for k in range(calls + 3):
            started = time.perf_counter()
            write(db, principal=principal, action="bench.audit_probe", object_type="series",
                  object_id=f"probe-{k}", source="127.0.0.1", detail={"instances": 200})
            if k >= 3:
                times.append((time.perf_counter() - started) * 1000)
        out[label] = {"p50_ms": round(pct(times, 50), 2), "p95_ms": round(pct(times, 95), 2)}
        db.dispose()
    return out


def run_compare(args, stack: contextlib.ExitStack) -> dict:
    import httpx

    files = ctgen.generate(args.data, args.count, args.studies, args.seed)
    plan = ctgen.plan_studies(args.count, args.studies, args.seed)
    if max(s.slices for s in plan) < 200:
        raise BenchError("need a layout where one series has 200 instances (e.g. --studies 4)")
    layout = layout_of(args.data, plan)
    megabytes = sum(f.stat().st_size for f in files) / 1e6
    print(f"data: {len(files)} CT slices, {megabytes:.0f} MB in {args.data}: "
          f"{len(plan)} studies x {plan[0].slices} instances, one series each", flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="bench-dicomweb-"))
    stack.callback(shutil.rmtree, workdir, True)

    # Orthanc + DICOMweb plugin, filled by storescu.
    orthanc = stack.enter_context(peers.start_orthanc(workdir / "orthanc", peers.free_port(), peers.free_port(),
                                                      aet=ORTHANC_AET, dicomweb=True))
    rate = peers.time_storescu("127.0.0.1", orthanc.dicom_port, ORTHANC_AET, files, 4, CALLING_AET)
    if orthanc.instance_count() != len(files):
        raise BenchError(f"Orthanc holds {orthanc.instance_count()} instances, sent {len(files)}")
    print(f"Orthanc pid {orthanc.pid}: storescu -R over 4 associations, TCP_NODELAY=1: {rate}", flush=True)

    # Lancang embedded, filled by `lancang import`.
    site = LancangSite(workdir / "lancang")
    stack.callback(site.stop)
    site.cli("institution", "add", INSTITUTION, "--name", "澜沧县第一人民医院", "--level", "county")
    site.cli("import", *(str(args.data / s.dirname) for s in plan), "--institution", INSTITUTION, "--quiet")
    print(f"Lancang: `lancang import` of {len(files)} files in {site.last_cli_s:.1f} s "
          f"(SQLite WAL synchronous=FULL, fsynced object files)", flush=True)
    site.add_reader()
    urls = {"lancang": site.start_web()}
    if args.before:
        urls["lancang-before"] = site.start_web(source=args.before)
    for variant in args.variants:
        urls[f"lancang-{variant}"] = site.start_web(variant=variant)
    pids = ", ".join(f"{t} pid {p.pid}" for t, p in zip(urls, site.webs))
    print(f"lancang web (uvicorn, LANCANG_LOG_LEVEL=WARNING): {pids}", flush=True)
    if "rendered" in args.endpoints:
        urls["bare-render"] = start_bare_render(args.data, workdir, stack)

    clients = {"orthanc": httpx.Client(base_url=orthanc.url, timeout=120)}
    for target, url in urls.items():
        headers = {} if target in BARE_ENDPOINTS else {"Authorization": f"Bearer {site.token}"}
        clients[target] = httpx.Client(base_url=url, timeout=120, headers=headers)
    for client in clients.values():
        stack.callback(client.close)
    targets = list(clients)
    endpoints = list(args.endpoints)

    print(f"\nstart: {uptime()}")
    print(f"{'round':>5} {'endpoint':<16} {'target':<27} {'p50 ms':>8} {'p95 ms':>8} {'bytes':>9} {'load1':>6}",
          flush=True)
    samples: list[Sample] = []
    for round_ in range(args.repeat):
        for endpoint in endpoints:
            order = targets if round_ % 2 == 0 else list(reversed(targets))
            for target in order:
                if BARE_ENDPOINTS.get(target, endpoint) != endpoint:
                    continue
                sample = time_endpoint(clients[target], endpoint, layout, args.warmup, args.calls, round_, target)
                samples.append(sample)
                print(f"{round_:>5} {endpoint:<16} {LABELS[target]:<27} {sample.p50_ms:>8.1f} "
                      f"{sample.p95_ms:>8.1f} {sample.bytes:>9} {sample.load1:>6.2f}", flush=True)
    print(f"end:   {uptime()}")

    floor = time_floor(clients["lancang"], args.warmup, args.calls)
    bare = time_floor(clients["bare-render"], args.warmup, args.calls, path="/empty",
                      status=200) if "bare-render" in clients else None
    probe = audit_probe(site.runtime_env())
    rows = summarize_compare(samples, targets, endpoints)
    print_compare(rows, probe, args)
    print(f"Lancang per-request floor (bearer token checked, FastAPI/uvicorn, then a 400 for a bad UID; "
          f"no query, no audit): p50 {floor['p50_ms']:.2f} ms, p95 {floor['p95_ms']:.2f} ms")
    if bare:
        print(f"FastAPI/uvicorn alone (bench/bare_render.py /empty, a 1-byte answer from a def route): "
              f"p50 {bare['p50_ms']:.2f} ms, p95 {bare['p95_ms']:.2f} ms")
    return {"orthanc_store": str(rate), "samples": [asdict(s) for s in samples], "summary": rows,
            "audit_probe_ms": probe, "floor_ms": floor, "bare_empty_ms": bare}


def start_bare_render(data: Path, workdir: Path, stack: contextlib.ExitStack) -> str:
    """bench/bare_render.py under uvicorn (one process, like `lancang web`); returns its URL."""
    port = peers.free_port()
    env = dict(os.environ, BARE_RENDER_DATA=str(data), PYTHONPATH=str(REPO))
    log_path = workdir / "bare-render.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([python_exe(), "-m", "uvicorn", "bench.bare_render:app", "--host", "127.0.0.1",
                                 "--port", str(port), "--log-level", "warning", "--no-access-log"],
                                env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    stack.callback(stop_proc, proc)
    url = f"http://127.0.0.1:{port}"
    try:
        peers.wait_http(f"{url}/empty", timeout=120, proc=proc)
    except Exception as exc:
        raise BenchError(f"bench/bare_render.py did not start:\n{_tail(log_path)}") from exc
    print(f"bench/bare_render.py (uvicorn, the pixel pipeline without token, database or audit): pid {proc.pid}",
          flush=True)
    return url


# A StudyInstanceUID longer than any stored one may be (imaging.dataset.MAX_UID_CHARS): 400
# before any query. ("x" is a UID a sloppy device may send, kept as sent since 14.4: a 404
# after a query and an audit record.)
FLOOR_PATH = "/dicom-web/studies/" + "1" * 129 + "/metadata"


def time_floor(client, warmup: int, calls: int, path: str = FLOOR_PATH, status: int = 400) -> dict:
    """What every authenticated Lancang request costs before it does anything: token lookup,
    routing, error rendering (GET .../studies/<129 digits>/metadata answers 400); with
    another path and status, the same timing of any cheap request."""
    times = []
    for k in range(warmup + calls):
        started = time.perf_counter()
        response = client.get(path, headers={"Accept": DICOM_JSON})
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != status:
            raise BenchError(f"floor {path}: expected {status}, got {response.status_code}")
        if k >= warmup:
            times.append(elapsed)
    return {"p50_ms": round(pct(times, 50), 2), "p95_ms": round(pct(times, 95), 2)}


def summarize_compare(samples: list[Sample], targets: list[str], endpoints: list[str]) -> list[dict]:
    rows = []
    for endpoint in endpoints:
        by_target = {t: [s for s in samples if s.endpoint == endpoint and s.target == t] for t in targets}
        base = {s.round: s for s in by_target["orthanc"]}
        for target in targets:
            group = by_target[target]
            if not group:  # a floor target that does not time this endpoint
                continue
            ratios = [s.p50_ms / base[s.round].p50_ms for s in group if s.round in base]
            rows.append({
                "endpoint": endpoint, "target": target, "rounds": len(group),
                "p50_ms": round(statistics.median(s.p50_ms for s in group), 2),
                "p95_ms": round(statistics.median(s.p95_ms for s in group), 2),
                "p50_each": [s.p50_ms for s in group],
                "ratio": None if target == "orthanc" else round(statistics.median(ratios), 3),
                "bytes": group[-1].bytes,
            })
    return rows


def print_compare(rows: list[dict], probe: dict, args) -> None:
    print(f"\nDICOMweb on the same {args.count} CT instances; p50/p95 of {args.calls} calls after "
          f"{args.warmup} warm-ups, median over {args.repeat} round(s); ratio = Lancang p50 / Orthanc p50 "
          f"of the same round (median)")
    print(f"{'endpoint':<42} {'Orthanc p50/p95':>16} {'Lancang p50/p95':>16} {'ratio':>7} {'goal':>6}  verdict  "
          f"(vs the issue's Orthanc p50)")
    by = {(r["endpoint"], r["target"]): r for r in rows}
    for endpoint, (label, goal) in ENDPOINTS.items():
        if (endpoint, "orthanc") not in by:
            continue
        o, lc = by[(endpoint, "orthanc")], by[(endpoint, "lancang")]
        verdict = "met" if lc["ratio"] <= goal else "NOT met"
        low, high = ISSUE_ORTHANC_MS[endpoint]
        print(f"{label:<42} {o['p50_ms']:>7.1f} /{o['p95_ms']:>7.1f} {lc['p50_ms']:>7.1f} /{lc['p95_ms']:>7.1f} "
              f"{lc['ratio']:>6.2f}x {goal:>5.2f}x  {verdict:<7}  ({lc['p50_ms'] / high:.2f}-{lc['p50_ms'] / low:.2f}x "
              f"of {low:g}-{high:g} ms)")
        others = [("lancang-before", "before: the --before tree")]
        others += [(f"lancang-{name}", label) for name, (label, _) in VARIANTS.items()]
        for target, label in others:
            diag = by.get((endpoint, target))
            if diag:
                print(f"{'  (' + label + ')':<42} {'':>16} {diag['p50_ms']:>7.1f} /"
                      f"{diag['p95_ms']:>7.1f} {diag['ratio']:>6.2f}x")
        bare = by.get((endpoint, "bare-render"))
        if bare:
            print(f"{'  (floor: FastAPI + pixels, no auth/DB/audit)':<42} {'':>16} {bare['p50_ms']:>7.1f} /"
                  f"{bare['p95_ms']:>7.1f} {bare['ratio']:>6.2f}x")
    print("one audit record alone (in-process, same SQLite file, 30 calls): "
          + "; ".join(f"{k}: p50 {v['p50_ms']:.2f} ms, p95 {v['p95_ms']:.2f} ms" for k, v in probe.items()))


# --------------------------------------------------------------- scale (PostgreSQL)

def postgres_class():
    from tests.services import PostgresServer

    class BenchPostgres(PostgresServer):
        """tests.services.PostgresServer; durable=True drops its fsync/synchronous_commit/
        full_page_writes=off options (the bulk load runs without them, the measurement with)."""

        OFF = " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        durable = False

        def _as_postgres(self, cmd):
            if self.durable:
                cmd = [part.replace(self.OFF, "") for part in cmd]
            return super()._as_postgres(cmd)

    return BenchPostgres


# Han surnames with rough relative frequencies (per mille of the population) and pinyin.
SURNAMES = [("王", "Wang", 71), ("李", "Li", 70), ("张", "Zhang", 67), ("刘", "Liu", 54), ("陈", "Chen", 45),
            ("杨", "Yang", 31), ("黄", "Huang", 24), ("赵", "Zhao", 23), ("吴", "Wu", 20), ("周", "Zhou", 19),
            ("徐", "Xu", 15), ("孙", "Sun", 15), ("马", "Ma", 14), ("朱", "Zhu", 13), ("胡", "Hu", 12),
            ("郭", "Guo", 11), ("何", "He", 11), ("高", "Gao", 10), ("林", "Lin", 10), ("罗", "Luo", 9),
            ("郑", "Zheng", 9), ("梁", "Liang", 9), ("谢", "Xie", 7), ("宋", "Song", 6), ("唐", "Tang", 6),
            ("许", "Xu", 6), ("韩", "Han", 5), ("冯", "Feng", 5), ("邓", "Deng", 5), ("曹", "Cao", 5),
            ("石", "Shi", 4), ("扎", "Zha", 4), ("娜", "Na", 4)]          # the last two: Lahu names
GIVEN = [("秀", "Xiu"), ("英", "Ying"), ("伟", "Wei"), ("芳", "Fang"), ("娜", "Na"), ("敏", "Min"),
         ("静", "Jing"), ("丽", "Li"), ("强", "Qiang"), ("磊", "Lei"), ("军", "Jun"), ("洋", "Yang"),
         ("勇", "Yong"), ("艳", "Yan"), ("杰", "Jie"), ("娟", "Juan"), ("涛", "Tao"), ("明", "Ming"),
         ("超", "Chao"), ("霞", "Xia"), ("平", "Ping"), ("刚", "Gang"), ("桂", "Gui"), ("兰", "Lan"),
         ("华", "Hua"), ("玉", "Yu"), ("梅", "Mei"), ("建", "Jian"), ("国", "Guo"), ("文", "Wen"),
         ("红", "Hong"), ("海", "Hai"), ("云", "Yun"), ("春", "Chun"), ("林", "Lin"), ("琴", "Qin"),
         ("辉", "Hui"), ("斌", "Bin"), ("鹏", "Peng"), ("亮", "Liang")]
TOWNSHIPS = ["勐朗镇", "上允镇", "糯扎渡镇", "谦六彝族乡", "东回镇", "拉巴乡", "竹塘乡", "富邦乡", "酒井哈尼族乡"]
UID_ROOT = "1.2.826.0.1.3680043.8.498.77"   # pydicom's root + a bench arc
# Study kinds by id % 20: 14 DX, 4 CT, 1 MR, 1 US.  Per kind, its series:
# (series_number, modality, description, body part, instances, sop class, transfer syntax,
#  rows, columns, bytes per instance)
CT_IMAGE, DX_IMAGE, MR_IMAGE, US_IMAGE = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.1.1",
                                          "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.6.1")
EVRLE, J2K_LOSSLESS, JPEG_BASELINE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.50"
LAYOUT = {
    "DX": ("DX", "胸部正侧位", [(1, "DX", "胸部正位 PA", "CHEST", 1, DX_IMAGE, J2K_LOSSLESS, 2836, 2336, 6_100_000),
                              (2, "DX", "胸部侧位 LAT", "CHEST", 1, DX_IMAGE, J2K_LOSSLESS, 2836, 2336, 6_300_000)]),
    "CT": ("CT", "胸部CT平扫", [(1, "CT", "Topogram", "CHEST", 2, CT_IMAGE, EVRLE, 512, 512, 525_000),
                              (2, "CT", "Thorax 5.0 B31f", "CHEST", 30, CT_IMAGE, EVRLE, 512, 512, 525_000),
                              (3, "CT", "Thorax MPR cor", "CHEST", 8, CT_IMAGE, EVRLE, 512, 512, 525_000)]),
    "MR": ("MR", "腰椎MRI平扫", [(1, "MR", "T2 SAG", "LSPINE", 2, MR_IMAGE, EVRLE, 512, 512, 530_000),
                               (2, "MR", "T1 SAG", "LSPINE", 2, MR_IMAGE, EVRLE, 512, 512, 530_000),
                               (3, "MR", "T2 TRA", "LSPINE", 1, MR_IMAGE, EVRLE, 384, 384, 300_000),
                               (4, "MR", "STIR SAG", "LSPINE", 1, MR_IMAGE, EVRLE, 384, 384, 300_000)]),
    "US": ("US", "腹部彩超", [(1, "US", "Abdomen", "ABDOMEN", 6, US_IMAGE, JPEG_BASELINE, 600, 800, 90_000)]),
}
KIND_OF_MOD20 = ["DX"] * 14 + ["CT"] * 4 + ["MR", "US"]


def _sql_text_array(values: list[str]) -> str:
    return "ARRAY[" + ",".join("'" + v.replace("'", "''") + "'" for v in values) + "]::text[]"


def synthesise(conn, *, instances: int, institutions: dict[str, int]) -> dict:
    """Fill patients/studies/series/instances/access_grants with PostgreSQL's own
    INSERT ... SELECT generate_series (setseed makes it repeatable).  Sizes scale with
    `instances` (1,000,000 -> 50,000 patients, 100,000 studies, 225,000 series):

    - institutions: the county hospital (the reader's) holds 40 % of patients; 9 townships
      6.7 % each; a patient's studies belong to its institution;
    - patients: PatientID <code>-<7 digits>; names from 33 surnames weighted by their
      frequency in China (王 7.1 %, 李 7.0 %, ...) + 1-2 given-name characters out of 40,
      stored as Lancang stores a PN ("Wang^Xiuying=王^秀英", groups upper-cased), with the
      pinyin keys the study list searches ("wangxiuying", "wxy");
      birth dates 1935-2017, sex 50/50;
    - studies: ids in arrival order, StudyDate rising linearly from 2019-01-01 to
      2025-12-31 (~39 a day), StudyTime 07:30-18:00; odd ids give every patient a study,
      even ids go to patient 1 + floor(N * r^1.5) (a few patients with many studies);
      kind by id % 20: 70 % DX (2 series x 1), 20 % CT (3 series: 2 + 30 + 8),
      5 % MR (4 series: 2 + 2 + 1 + 1), 5 % US (1 series x 6): exactly 10 instances a study
      on average;
    - instances: UIDs under pydicom's root, object keys as the ingestor writes them, sizes,
      Rows/Columns and transfer syntaxes per modality, dicom_json a ~1 KB DICOM JSON object
      with the patient/study/series/instance/image-pixel attributes and a PixelData
      BulkDataURI (json_build_object);
    - access_grants: every 50th township study granted to the county hospital (consults),
      one in ten of them revoked.
    Explicit ids, then the sequences are set past them.
    """
    n_studies = instances // 10
    n_patients = max(1, n_studies // 2)
    county = institutions[INSTITUTION]
    towns = [institutions[code] for code in sorted(institutions) if code != INSTITUTION]
    names = {code: name for code, name in zip(sorted(c for c in institutions if c != INSTITUTION), TOWNSHIPS)}
    weighted = [(h, p) for h, p, w in SURNAMES for _ in range(w)]
    sur_h, sur_p = _sql_text_array([h for h, _ in weighted]), _sql_text_array([p for _, p in weighted])
    giv_h, giv_p = _sql_text_array([h for h, _ in GIVEN]), _sql_text_array([p for _, p in GIVEN])
    inst_ids = "ARRAY[" + ",".join(map(str, towns)) + "]::int[]"
    town_names = _sql_text_array([f"澜沧县{names[c]}卫生院" for c in sorted(names)])
    town_codes = _sql_text_array(sorted(names))
    kinds = _sql_text_array(KIND_OF_MOD20)
    layout_rows = ",".join(
        f"('{kind}',{number},'{mod}','{desc}','{body}',{count},'{cls}','{ts}',{rows},{cols},{size})"
        for kind, (_, _, series) in LAYOUT.items()
        for number, mod, desc, body, count, cls, ts, rows, cols, size in series)
    study_kinds = ",".join(f"('{kind}','{m}','{d}',{len(s)},{sum(x[4] for x in s)})"
                           for kind, (m, d, s) in LAYOUT.items())
    timings = {}

    def step(name: str, sql: str) -> None:
        started = time.perf_counter()
        result = conn.execute(sql)
        timings[name] = round(time.perf_counter() - started, 1)
        print(f"  {name}: {result.rowcount if result.rowcount >= 0 else ''} rows in {timings[name]} s", flush=True)

    conn.execute("SELECT setseed(0.42)")
    step("patients", f"""
        INSERT INTO patients (id, institution_id, issuer, patient_id, name, name_alphabetic,
                              name_ideographic, name_phonetic, birth_date, sex, created_at,
                              name_pinyin, name_initials)
        SELECT p, inst, '', code || '-' || lpad(p::text, 7, '0'),
               sp || '^' || gp || '=' || sh || '^' || gh, upper(sp || '^' || gp), sh || '^' || gh, '',
               to_char(date '1935-01-01' + bd, 'YYYYMMDD'), sex, now(),
               lower(sp || gp), lower(left(sp, 1) || initials)
        FROM (SELECT p, inst, code,
                     ({sur_h})[si] AS sh, ({sur_p})[si] AS sp,
                     ({giv_h})[g1] || coalesce(({giv_h})[g2], '') AS gh,
                     ({giv_p})[g1] || lower(coalesce(({giv_p})[g2], '')) AS gp,
                     left(({giv_p})[g1], 1) || coalesce(left(({giv_p})[g2], 1), '') AS initials, bd, sex
              FROM (SELECT p,
                           CASE WHEN p % 5 < 2 THEN {county} ELSE ({inst_ids})[1 + p % 9] END AS inst,
                           CASE WHEN p % 5 < 2 THEN '{INSTITUTION}' ELSE ({town_codes})[1 + p % 9] END AS code,
                           1 + floor(random() * {len(weighted)})::int AS si,
                           1 + floor(random() * {len(GIVEN)})::int AS g1,
                           CASE WHEN random() < 0.7 THEN 1 + floor(random() * {len(GIVEN)})::int END AS g2,
                           floor(random() * 30000)::int AS bd,
                           CASE WHEN random() < 0.5 THEN 'M' ELSE 'F' END AS sex
                    FROM generate_series(1, {n_patients}) AS p) r) n""")
    step("studies", f"""
        INSERT INTO studies (id, study_instance_uid, patient_pk, institution_id, study_date, study_time,
                             accession_number, study_id, description, referring_physician, institution_name,
                             modalities, num_series, num_instances, created_at, updated_at)
        SELECT s.s, '{UID_ROOT}.1.' || s.s, pt.id, pt.institution_id, to_char(s.day, 'YYYYMMDD'),
               to_char(timestamp '2000-01-01 07:30' + s.secs * interval '1 second', 'HH24MISS'),
               'A' || to_char(s.day, 'YYMMDD') || lpad(s.s::text, 6, '0'), (s.s % 100000)::text,
               k.description, '',
               CASE WHEN pt.institution_id = {county} THEN '澜沧县第一人民医院'
                    ELSE ({town_names})[array_position({inst_ids}, pt.institution_id)] END,
               k.modality, k.series, k.instances,
               s.day + time '07:30' + s.secs * interval '1 second' - interval '8 hours',
               s.day + time '07:30' + s.secs * interval '1 second' - interval '8 hours'
        FROM (SELECT s, date '2019-01-01' + ((s - 1) * 2557 / {n_studies})::int AS day,
                     floor(random() * 37800)::int AS secs, ({kinds})[1 + s % 20] AS kind,
                     CASE WHEN s % 2 = 1 THEN 1 + ((s / 2) * 7919) % {n_patients}
                          ELSE 1 + floor({n_patients} * power(random(), 1.5))::int END AS patient
              FROM generate_series(1, {n_studies}) AS s) s
        JOIN patients pt ON pt.id = s.patient
        JOIN (VALUES {study_kinds}) AS k(kind, modality, description, series, instances) ON k.kind = s.kind""")
    step("series", f"""
        INSERT INTO series (id, series_instance_uid, study_pk, modality, series_number, description, body_part,
                            num_instances, last_received_at, created_at, thumbnail_key, derive_state,
                            derived_through, derived_at, derive_attempts, derive_error)
        SELECT id, '{UID_ROOT}.2.' || id, study_pk, modality, number, description, body, count, at, at, NULL,
               'done', at, at + interval '20 seconds', 0, ''
        FROM (SELECT row_number() OVER (ORDER BY st.id, l.number) AS id, st.id AS study_pk, l.modality, l.number,
                     l.description, l.body, l.count, st.created_at AS at
              FROM studies st
              JOIN (VALUES {layout_rows}) AS l(kind, number, modality, description, body, count, cls, ts, rows,
                                               cols, size)
                ON l.kind = st.modalities) se""")
    step("instances", f"""
        INSERT INTO instances (id, sop_instance_uid, series_pk, sop_class_uid, instance_number, transfer_syntax_uid,
                               object_key, size, sha256, rows, columns, number_of_frames, dicom_json, received_from,
                               created_at, updated_at, preview_key, preview_sha256, preview_error)
        SELECT i.id, i.sop, i.series_pk, i.cls, i.n, i.ts,
               'dicom/' || i.study_uid || '/' || i.series_uid || '/' || i.sop || '.' || left(i.sha, 16) || '.dcm',
               i.size, i.sha, i.rows, i.cols, 1,
               json_build_object(
                 '00080005', json_build_object('vr', 'CS', 'Value', json_build_array('ISO_IR 192')),
                 '00080008', json_build_object('vr', 'CS', 'Value', json_build_array('ORIGINAL', 'PRIMARY', 'AXIAL')),
                 '00080016', json_build_object('vr', 'UI', 'Value', json_build_array(i.cls)),
                 '00080018', json_build_object('vr', 'UI', 'Value', json_build_array(i.sop)),
                 '00080020', json_build_object('vr', 'DA', 'Value', json_build_array(i.study_date)),
                 '00080030', json_build_object('vr', 'TM', 'Value', json_build_array(i.study_time)),
                 '00080050', json_build_object('vr', 'SH', 'Value', json_build_array(i.accession)),
                 '00080060', json_build_object('vr', 'CS', 'Value', json_build_array(i.modality)),
                 '00080070', json_build_object('vr', 'LO', 'Value', json_build_array('Lancang Synthetic')),
                 '00080080', json_build_object('vr', 'LO', 'Value', json_build_array(i.institution_name)),
                 '00081030', json_build_object('vr', 'LO', 'Value', json_build_array(i.study_description)),
                 '0008103E', json_build_object('vr', 'LO', 'Value', json_build_array(i.series_description)),
                 '00100010', json_build_object('vr', 'PN', 'Value', json_build_array(json_build_object(
                     'Alphabetic', split_part(i.patient_name, '=', 1),
                     'Ideographic', split_part(i.patient_name, '=', 2)))),
                 '00100020', json_build_object('vr', 'LO', 'Value', json_build_array(i.patient_id)),
                 '00100030', json_build_object('vr', 'DA', 'Value', json_build_array(i.birth_date)),
                 '00100040', json_build_object('vr', 'CS', 'Value', json_build_array(i.sex)),
                 '0020000D', json_build_object('vr', 'UI', 'Value', json_build_array(i.study_uid)),
                 '0020000E', json_build_object('vr', 'UI', 'Value', json_build_array(i.series_uid)),
                 '00200011', json_build_object('vr', 'IS', 'Value', json_build_array(i.series_number)),
                 '00200013', json_build_object('vr', 'IS', 'Value', json_build_array(i.n)),
                 '00280010', json_build_object('vr', 'US', 'Value', json_build_array(i.rows)),
                 '00280011', json_build_object('vr', 'US', 'Value', json_build_array(i.cols)),
                 '00280100', json_build_object('vr', 'US', 'Value', json_build_array(16)),
                 '7FE00010', json_build_object('vr', 'OW', 'BulkDataURI', '@@INSTANCE@@/bulkdata/7FE00010')
               )::text,
               'MODALITY-' || i.modality, i.created_at, i.created_at, NULL, '', ''
        FROM (SELECT row_number() OVER (ORDER BY se.id, g.n) AS id,
                     '{UID_ROOT}.3.' || se.id || '.' || g.n AS sop, se.id AS series_pk, g.n,
                     l.cls, l.ts, l.rows, l.cols, l.size, md5(se.id || '/' || g.n) || md5(g.n || '/' || se.id) AS sha,
                     st.study_instance_uid AS study_uid, se.series_instance_uid AS series_uid,
                     st.study_date, st.study_time, st.accession_number AS accession, se.modality,
                     st.institution_name, st.description AS study_description, se.description AS series_description,
                     se.series_number, pt.name AS patient_name, pt.patient_id, pt.birth_date, pt.sex,
                     st.created_at
              FROM series se
              JOIN studies st ON st.id = se.study_pk
              JOIN patients pt ON pt.id = st.patient_pk
              JOIN (VALUES {layout_rows})
                   AS l(kind, number, modality, description, body, count, cls, ts, rows, cols, size)
                ON l.kind = se.modality AND l.number = se.series_number
              CROSS JOIN LATERAL generate_series(1, se.num_instances) AS g(n)) i""")
    step("access grants", f"""
        INSERT INTO access_grants (study_instance_uid, grantee_institution_id, grantee_user_id, source, granted_by,
                                   created_at, expires_at, revoked_at)
        SELECT study_instance_uid, {county}, NULL, 'consult', 'bench', created_at, NULL,
               CASE WHEN id % 500 = 0 THEN created_at + interval '30 days' END
        FROM studies WHERE institution_id <> {county} AND id % 50 = 0""")
    for table in ("patients", "studies", "series", "instances", "access_grants"):
        conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
    started = time.perf_counter()
    conn.execute("ANALYZE")
    timings["analyze"] = round(time.perf_counter() - started, 1)
    counts = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
              for t in ("patients", "studies", "series", "instances", "access_grants")}
    sizes = {t: conn.execute(f"SELECT pg_size_pretty(pg_total_relation_size('{t}'))").fetchone()[0]
             for t in ("patients", "studies", "series", "instances")}
    json_avg = conn.execute("SELECT avg(octet_length(dicom_json))::int FROM instances").fetchone()[0]
    revision = conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    indexes = [r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'patients' "
                                          "ORDER BY indexname")]
    return {"counts": counts, "sizes": sizes, "dicom_json_avg_bytes": json_avg, "seconds": timings,
            "schema": f"revision {revision}; patients indexes: {', '.join(indexes)}"}


SCALE_QUERIES = {  # name -> label; limit=101 is what OHIF's study list asks for
    "patient_id": "PatientID exact",
    "patient_name": "PatientName wildcard, limit=101",
    "study_date": "StudyDate range, limit=101",
    "surname_all": "PatientName=<surname>*, no limit",
}


def scale_values(conn, county: int, n: int) -> dict[str, list[dict]]:
    """n query strings per kind, varied, drawn from the data (repeatable)."""
    conn.execute("SELECT setseed(0.17)")
    ids = [r[0] for r in conn.execute(
        f"SELECT patient_id FROM patients WHERE institution_id = {county} ORDER BY random() LIMIT {n}")]
    names = []
    surnames = [h for h, _, _ in SURNAMES[:10]]
    pinyin = [p.upper() for _, p, _ in SURNAMES[:10]]
    givens = [h for h, _ in GIVEN]
    for k in range(n):
        if k % 3 == 0:
            names.append(f"{surnames[k % 10]}*")                                   # 王*
        elif k % 3 == 1:
            names.append(f"{surnames[(k * 7) % 10]}^{givens[(k * 11) % len(givens)]}*")   # 张^秀*
        else:
            names.append(f"{pinyin[(k * 3) % 10]}^{GIVEN[(k * 13) % len(GIVEN)][1][0]}*")  # ZHANG^X*
    dates = []
    start = dt.date(2019, 3, 1)
    for k in range(n):
        first = start + dt.timedelta(days=(k * 83) % 2400)
        span = (0, 6, 30)[k % 3]                                                       # a day, a week, a month
        dates.append(f"{first:%Y%m%d}-{first + dt.timedelta(days=span):%Y%m%d}")
    return {"patient_id": [{"PatientID": v} for v in ids],
            "patient_name": [{"PatientName": v, "limit": "101"} for v in names],
            "study_date": [{"StudyDate": v, "limit": "101"} for v in dates],
            # the 10 commonest surnames: thousands of matches, answered up to the server's
            # maximum of 1000 (dicomweb.MAX_RESULTS) with a Warning
            "surname_all": [{"PatientName": f"{surnames[k % 10]}*"} for k in range(n)]}


def run_scale(args, stack: contextlib.ExitStack) -> dict:
    import httpx
    import psycopg

    workdir = Path(tempfile.mkdtemp(prefix="bench-dicomweb-pg-"))
    stack.callback(shutil.rmtree, workdir, True)
    pg = postgres_class()(dbname="lancang_scale")
    stack.callback(pg.close)
    pg.start()
    url, dsn = pg.url, pg.dsn
    site = LancangSite(workdir / "lancang", database_url=url)
    stack.callback(site.stop)
    print(f"\nPostgreSQL pid {pg.pid}; `lancang db upgrade` ...", flush=True)
    site.cli("db", "upgrade")
    site.cli("institution", "add", INSTITUTION, "--name", "澜沧县第一人民医院", "--level", "county")
    for number, town in enumerate(TOWNSHIPS, start=1):
        site.cli("institution", "add", f"LC-T{number:02d}", "--name", f"澜沧县{town}卫生院",
                 "--level", "township", "--parent", INSTITUTION)
    site.add_reader()
    with psycopg.connect(dsn, autocommit=True) as conn:
        institutions = dict(conn.execute("SELECT code, id FROM institutions").fetchall())
        print(f"synthesising {args.scale_instances:,} instances with INSERT ... SELECT generate_series "
              f"(fsync off during the load):", flush=True)
        made = synthesise(conn, instances=args.scale_instances, institutions=institutions)
        values = scale_values(conn, institutions[INSTITUTION], args.scale_calls)
    print(f"  rows: {made['counts']}; sizes: {made['sizes']}; dicom_json {made['dicom_json_avg_bytes']} bytes "
          f"on average", flush=True)
    print(f"  made by PostgreSQL itself: INSERT ... SELECT over generate_series with setseed(0.42) (see "
          f"synthesise()), then ANALYZE; schema {made['schema']}", flush=True)
    # Restart with durability on: each request's audit record is a real WAL flush.
    pg.stop()
    pg.durable = True
    pg.start()
    with psycopg.connect(dsn) as conn:
        settings = {k: conn.execute(f"SHOW {k}").fetchone()[0]
                    for k in ("fsync", "synchronous_commit", "full_page_writes", "shared_buffers", "server_version")}
    print(f"PostgreSQL restarted pid {pg.pid}: {settings}", flush=True)
    web = site.start_web()
    print(f"lancang web pid {site.webs[-1].pid} on {web}", flush=True)
    client = stack.enter_context(httpx.Client(base_url=web, timeout=120,
                                              headers={"Authorization": f"Bearer {site.token}",
                                                       "Accept": DICOM_JSON}))
    print(f"start: {uptime()}")
    results = []
    for round_ in range(args.repeat):
        for kind, label in SCALE_QUERIES.items():
            params_list = values[kind]
            for params in params_list[:args.warmup]:
                client.get("/dicom-web/studies", params=params).raise_for_status()
            times, matches = [], []
            for params in params_list:
                started = time.perf_counter()
                response = client.get("/dicom-web/studies", params=params)
                times.append((time.perf_counter() - started) * 1000)
                response.raise_for_status()
                matches.append(len(response.json()))
            row = {"round": round_, "query": kind, "calls": len(times), "p50_ms": round(pct(times, 50), 2),
                   "p95_ms": round(pct(times, 95), 2), "max_ms": round(max(times), 2),
                   "results_median": statistics.median(matches), "results_min": min(matches),
                   "results_max": max(matches), "load1": load1(), "times_ms": [round(t, 2) for t in times]}
            results.append(row)
            print(f"  round {round_} {label:<34} p50 {row['p50_ms']:>6.1f} ms  p95 {row['p95_ms']:>6.1f} ms  "
                  f"max {row['max_ms']:>6.1f}  results {row['results_min']}-{row['results_max']} "
                  f"(median {row['results_median']})  load1 {row['load1']:.2f}", flush=True)
    print(f"end:   {uptime()}")
    probe = audit_probe(site.runtime_env())
    print(f"\nQIDO study search, {made['counts']['instances']:,} instances indexed in PostgreSQL "
          f"{settings['server_version']} (fsync/synchronous_commit on); {args.scale_calls} varied values each, "
          f"median over {args.repeat} round(s); goal p95 <= 50 ms")
    print(f"{'query':<36} {'p50 ms':>8} {'p95 ms':>8}  verdict")
    summary = []
    for kind, label in SCALE_QUERIES.items():
        group = [r for r in results if r["query"] == kind]
        p50 = statistics.median(r["p50_ms"] for r in group)
        p95 = statistics.median(r["p95_ms"] for r in group)
        summary.append({"query": kind, "p50_ms": p50, "p95_ms": p95, "met": p95 <= 50})
        print(f"{label:<36} {p50:>8.1f} {p95:>8.1f}  {'met' if p95 <= 50 else 'NOT met'}")
    print("one audit record alone (in-process, same database, 30 calls): "
          + "; ".join(f"{k}: p50 {v['p50_ms']:.2f} ms, p95 {v['p95_ms']:.2f} ms" for k, v in probe.items()))
    return {"synthesis": made, "postgres": settings, "rounds": results, "summary": summary,
            "audit_probe_ms": probe, "values": values}


# --------------------------------------------------------------- main

def versions() -> dict:
    plugin = next((p.name for p in Path("/usr/lib/orthanc").glob("libOrthancDicomWeb.so.*")), "?")
    return {"orthanc": first_line(["Orthanc", "--version"]), "dicomweb_plugin": plugin, **lancang_revision()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="compare,scale", help="comma-separated: compare, scale")
    parser.add_argument("--count", type=int, default=800)
    parser.add_argument("--studies", type=int, default=4, help="one series of count/studies instances each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, help="CT folder, generated if missing (default /tmp/ct<COUNT>s<STUDIES>)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians over them")
    parser.add_argument("--calls", type=int, default=30, help="timed calls per endpoint and target")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--endpoints", default=",".join(ENDPOINTS))
    parser.add_argument("--audit-variant", action="store_true", help="the same as --variants noaudit")
    parser.add_argument("--variants", default="",
                        help=f"comma-separated, also time `lancang web` with: {', '.join(VARIANTS)} (diagnostics)")
    parser.add_argument("--before", type=Path,
                        help="also time `lancang web` imported from this source tree (e.g. `git archive HEAD`)")
    parser.add_argument("--scale-instances", type=int, default=1_000_000)
    parser.add_argument("--scale-calls", type=int, default=30, help="varied values per query kind")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    args.endpoints = [e.strip() for e in args.endpoints.split(",") if e.strip()]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.audit_variant and "noaudit" not in args.variants:
        args.variants.insert(0, "noaudit")
    unknown = ((set(args.parts) - {"compare", "scale"}) | (set(args.endpoints) - set(ENDPOINTS))
               | (set(args.variants) - set(VARIANTS)))
    if unknown:
        parser.error(f"unknown {sorted(unknown)}")
    args.data = args.data or Path(f"/tmp/ct{args.count}s{args.studies}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    peers.ensure_private_netns()
    for signum in (signal.SIGTERM, signal.SIGHUP):       # unwind like Ctrl-C: every finally runs
        signal.signal(signum, signal.default_int_handler)
    info = {"command": " ".join(sys.orig_argv), "started": dt.datetime.now().isoformat(timespec="seconds"),
            "cpus": os.cpu_count(), "uptime_start": uptime(), "versions": versions()}
    v = info["versions"]
    print(f"{v['orthanc']} + {v['dicomweb_plugin']}; Lancang {v['lancang_commit']}"
          + (f" + uncommitted changes in {', '.join(v['lancang_modified_files'])}"
             if v["lancang_modified_files"] else ""))
    print(f"start: {info['uptime_start']}", flush=True)
    if "compare" in args.parts:
        with contextlib.ExitStack() as part:
            info["compare"] = run_compare(args, part)
    if "scale" in args.parts:
        with contextlib.ExitStack() as part:
            info["scale"] = run_scale(args, part)
    info["uptime_end"] = uptime()
    print(f"end:   {info['uptime_end']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(info, indent=2, ensure_ascii=False))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
