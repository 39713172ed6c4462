"""C-STORE throughput: Lancang against Orthanc, measured in the same run.

    python bench/dicom_store.py [--count 800] [--repeat N] [--processes P[,P...]]
                                [--associations 1,4] [--targets orthanc,embedded,pg-s3,bare-ack,bare-files]
                                [--json OUT.json]

dcmtk storescu (TCP_NODELAY=1) sends COUNT synthetic CT slices (512x512, 16-bit,
~525 KB each: 800 make ~420 MB, generated once by bench/ctgen.py) over 1 and
over 4 parallel associations to

  orthanc   Orthanc from Debian, fresh work directory, SQLite index, its
            defaults otherwise (SyncStorageArea: fsync after each file);
  embedded  Lancang on embedded defaults: `lancang dicom` with a fresh
            LANCANG_DATA_DIR (SQLite WAL synchronous=FULL, fsynced object files);
  pg-s3     Lancang on PostgreSQL (fsync=on, synchronous_commit=on) + S3
            (SeaweedFS) + Redis, a fresh database and bucket per run;
  bare-ack  the floor: bench/bare_scp.py, a pynetdicom SCP tuned like `lancang dicom`
            that decodes each data set and acknowledges it without storing anything;
  bare-files  the same, writing each instance durably to a file (temporary file, fsync,
            rename, folder fsync, as Lancang's object store does) but indexing nothing.

The bare targets are one process and answer no C-FIND: they show how much of Lancang's
time pynetdicom itself takes, and how much durability alone adds, in the same run.

Every target starts fresh for every run, answers C-ECHO before the clock
starts, and `os.sync()` runs right before it.  The clock covers the storescu
processes only (first association request to last release).  Right after the
last storescu exits, one C-FIND per study at IMAGE level must return every
instance.  Everything runs inside a private network namespace (only loopback),
re-executing itself under `unshare -n`.

The ratio compares each Lancang figure with Orthanc's measured in the same
repeat over the same number of associations.  LANCANG_DICOM_PROCESSES is 1
for one association and 2 for more, unless --processes gives a list to sweep.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
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

LANCANG_AET = "LANCANG"
ORTHANC_AET = "ORTHANC"
CALLING_AET = "BENCH"
TARGETS = ("orthanc", "embedded", "pg-s3", "bare-ack", "bare-files")
LABELS = {
    "orthanc": "Orthanc (SQLite)",
    "embedded": "Lancang embedded",
    "pg-s3": "Lancang PG+S3+Redis",
    "bare-ack": "pynetdicom ack only",
    "bare-files": "pynetdicom + fsync",
}
GOALS = {1: 1.0, 4: 1.2}                 # Lancang embedded / Orthanc, from the issue
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    pass


# --------------------------------------------------------------- processes

def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def process_tree(pid: int) -> list[int]:
    """`pid` and every descendant running now."""
    children, tree, todo = _children_map(), [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (all their threads)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])     # utime, stime
    return total / CLK_TCK


def stop_tree(proc: subprocess.Popen, known: set[int], timeout: float = 20.0) -> None:
    """SIGTERM the root by PID, then SIGKILL by PID whatever of its tree is left.

    `known` holds descendants seen while it ran: a SIGKILLed acceptor leaves
    its spawned workers behind, re-parented, so they are killed by PID too.
    """
    known = set(known)
    if proc.poll() is None:
        known.update(process_tree(proc.pid))
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    known.discard(proc.pid)
    deadline = time.monotonic() + 5
    for pid in sorted(known):
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def wait_idle(root: int, window: float = 1.0, busy: float = 0.1, timeout: float = 120) -> float:
    """Wait until `root`'s process tree uses under `busy` CPU seconds per `window`.

    One C-ECHO answer proves only one receiver process ready: with
    LANCANG_DICOM_PROCESSES > 1 the other spawned workers may still be importing
    and bootstrapping, and would eat CPU inside the timed run.  Returns the wait.
    """
    started = time.monotonic()
    before = cpu_seconds(process_tree(root))
    while time.monotonic() - started < timeout:
        time.sleep(window)
        now = cpu_seconds(process_tree(root))
        if now - before < busy:
            break
        before = now
    return time.monotonic() - started


# --------------------------------------------------------------- C-FIND

def cfind_count(port: int, called_aet: str, study: ctgen.Study) -> int:
    """Instances of one series that an IMAGE-level C-FIND returns (study root)."""
    command = [peers.dcmtk_tool("findscu"), "-v", "-S", "-aet", CALLING_AET, "-aec", called_aet,
               "-k", "QueryRetrieveLevel=IMAGE",
               "-k", f"StudyInstanceUID={study.study_uid}",
               "-k", f"SeriesInstanceUID={study.series_uid}",
               "-k", "SOPInstanceUID",
               "127.0.0.1", str(port)]
    result = subprocess.run(command, env=peers.nodelay_env(), stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=300)
    text = result.stdout + result.stderr
    if result.returncode != 0 or re.search(r"^[EF]:", text, re.M):
        raise BenchError(f"findscu failed ({result.returncode}):\n{text[-2000:]}")
    return len(re.findall(r"Find Response: \d+ \(Pending\)", text))


def check_findable(port: int, called_aet: str, studies: list[ctgen.Study]) -> tuple[int, float]:
    started = time.perf_counter()
    found = sum(cfind_count(port, called_aet, study) for study in studies)
    return found, time.perf_counter() - started


# --------------------------------------------------------------- results

@dataclass
class Run:
    target: str
    associations: int
    processes: int | None
    repeat: int
    load_before: float
    load_after: float | None = None
    instances: int | None = None
    megabytes: float | None = None
    seconds: float | None = None
    instances_per_s: float | None = None
    mb_per_s: float | None = None
    found: int | None = None
    find_seconds: float | None = None
    server_cpu_s: float | None = None
    ratio: float | None = None
    error: str | None = None
    kept_logs: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


# --------------------------------------------------------------- targets

class Orthanc:
    name = "orthanc"

    def run(self, workdir: Path, files: list[Path], associations: int,
            studies: list[ctgen.Study], timeout: float) -> tuple[peers.StoreRate, dict]:
        dicom_port, http_port = peers.free_port(), peers.free_port()
        with peers.start_orthanc(workdir, dicom_port, http_port, aet=ORTHANC_AET, dicomweb=False,
                                 overrides={"DicomAlwaysAllowFind": True}) as orthanc:
            peers.echoscu("127.0.0.1", dicom_port, ORTHANC_AET)
            os.sync()
            cpu0 = cpu_seconds([orthanc.pid])
            rate = peers.time_storescu("127.0.0.1", dicom_port, ORTHANC_AET, files,
                                       associations, CALLING_AET, timeout)
            found, find_s = check_findable(dicom_port, ORTHANC_AET, studies)
            cpu = cpu_seconds([orthanc.pid]) - cpu0
            indexed = orthanc.instance_count()
        return rate, {"found": found, "find_seconds": find_s, "server_cpu_s": cpu,
                      "rest_instance_count": indexed}


class BareScp:
    """bench/bare_scp.py in a process of its own: the pynetdicom floor (no index, no C-FIND)."""

    indexes = False

    def __init__(self, name: str, python: str):
        self.name = name
        self.python = python
        self.mode = name.removeprefix("bare-")

    def run(self, workdir: Path, files: list[Path], associations: int,
            studies: list[ctgen.Study], timeout: float) -> tuple[peers.StoreRate, dict]:
        workdir.mkdir(parents=True, exist_ok=True)
        port = peers.free_port()
        log_path = workdir / "bare_scp.log"
        command = [self.python, str(REPO / "bench" / "bare_scp.py"), "--port", str(port),
                   "--mode", self.mode, "--dir", str(workdir / "objects")]
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        seen: set[int] = {proc.pid}
        try:
            wait_for_echo(proc, port, log_path)
            wait_idle(proc.pid)
            os.sync()
            cpu0 = cpu_seconds([proc.pid])
            rate = peers.time_storescu("127.0.0.1", port, LANCANG_AET, files, associations,
                                       CALLING_AET, timeout)
            cpu = cpu_seconds([proc.pid]) - cpu0
            stored = len(list((workdir / "objects").glob("*.dcm"))) if self.mode == "files" else None
        finally:
            stop_tree(proc, seen)
        if stored is not None and stored != len(files):
            raise BenchError(f"bare_scp wrote {stored} of {len(files)} files")
        return rate, {"found": None, "find_seconds": None, "server_cpu_s": cpu,
                      "log_warnings": _log_problems(log_path)}


class PostgresDurable:
    """tests.services.PostgresServer with fsync, synchronous_commit and full-page writes on."""

    def __init__(self):
        from tests.services import PostgresServer

        class Durable(PostgresServer):
            OFF = " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"

            def _as_postgres(self, cmd):
                return super()._as_postgres([part.replace(self.OFF, "") for part in cmd])

        self.server = Durable(dbname="bench")

    def start(self) -> dict:
        import psycopg

        self.server.start()
        with psycopg.connect(self.server.dsn_for("postgres")) as conn:
            shown = {name: conn.execute(f"SHOW {name}").fetchone()[0]
                     for name in ("fsync", "synchronous_commit", "full_page_writes", "server_version")}
        if any(shown[k] != "on" for k in ("fsync", "synchronous_commit", "full_page_writes")):
            raise BenchError(f"PostgreSQL is not durable: {shown}")
        return shown


class Lancang:
    """`lancang dicom` as a real process; embedded, or on PostgreSQL + S3 + Redis."""

    def __init__(self, name: str, python: str, stack: contextlib.ExitStack):
        self.name = name
        self.python = python
        self.stack = stack
        self.services = None
        self.service_info: dict = {}
        self.runs = 0

    def _servers(self):
        """PostgreSQL, S3 and Redis, started once (inside the namespace) for all pg-s3 runs."""
        if self.services is None:
            from tests.services import RedisServer, S3Server

            pg = PostgresDurable()
            self.stack.callback(pg.server.close)
            self.service_info["postgres"] = pg.start()
            s3 = S3Server()
            self.stack.callback(s3.close)
            s3.start()
            redis = RedisServer()
            self.stack.callback(redis.close)
            redis.start()
            self.services = (pg.server, s3, redis)
            print(f"  servers: PostgreSQL {self.service_info['postgres']['server_version']} "
                  f"pid {pg.server.pid} (fsync=on, synchronous_commit=on), "
                  f"SeaweedFS S3 pid {s3.pid} at {s3.endpoint}, Redis pid {redis.pid}", flush=True)
        return self.services

    def _server_pids(self) -> list[int]:
        if self.name != "pg-s3" or self.services is None:
            return []
        pg, s3, redis = self.services
        return process_tree(pg.pid) + [s3.pid, redis.pid]

    def env(self, rundir: Path, port: int, processes: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LANCANG_")}
        env.update(
            LANCANG_DATA_DIR=str(rundir / "var"),
            LANCANG_DICOM_PORT=str(port),
            LANCANG_DICOM_AE_TITLE=LANCANG_AET,
            LANCANG_DICOM_PROCESSES=str(processes),
            LANCANG_BIND_HOST="127.0.0.1",
        )
        if self.name == "pg-s3":
            pg, s3, redis = self._servers()
            self.runs += 1
            stamp = f"{os.getpid()}{self.runs:03d}"
            env.update(
                LANCANG_DATABASE_URL=pg.create_database(f"bench_{stamp}"),
                LANCANG_OBJECT_STORE="s3",
                LANCANG_S3_ENDPOINT=s3.endpoint,
                LANCANG_S3_ACCESS_KEY=s3.access_key,
                LANCANG_S3_SECRET_KEY=s3.secret_key,
                LANCANG_S3_REGION=s3.region,
                LANCANG_S3_BUCKET=f"bench-{stamp}",
                LANCANG_BROKER_URL=redis.url,
                LANCANG_SECRET_KEY=secrets.token_hex(32),
            )
        return env

    def _cli(self, env: dict, rundir: Path, *args: str) -> None:
        result = subprocess.run([self.python, "-m", "lancang.cli", *args], env=env, cwd=rundir,
                                stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=300)
        if result.returncode != 0:
            raise BenchError(f"lancang {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout}{result.stderr}"[-3000:])

    def run(self, workdir: Path, files: list[Path], associations: int, processes: int,
            studies: list[ctgen.Study], timeout: float) -> tuple[peers.StoreRate, dict]:
        workdir.mkdir(parents=True, exist_ok=True)
        port = peers.free_port()
        env = self.env(workdir, port, processes)
        self._cli(env, workdir, "institution", "add", CALLING_AET, "--name", "基准",
                  "--level", "township")
        self._cli(env, workdir, "ae", "add", CALLING_AET, "--institution", CALLING_AET, "--can", "store,query")
        log_path = workdir / "dicom.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen([self.python, "-m", "lancang.cli", "dicom"], env=env,
                                    cwd=workdir, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT)
        seen: set[int] = set()
        try:
            wait_for_echo(proc, port, log_path)
            settle_s = wait_idle(proc.pid)
            seen.update(process_tree(proc.pid))
            server_pids = self._server_pids()
            os.sync()
            tree = process_tree(proc.pid)
            cpu0 = cpu_seconds(tree + server_pids)
            rate = peers.time_storescu("127.0.0.1", port, LANCANG_AET, files, associations,
                                       CALLING_AET, timeout)
            found, find_s = check_findable(port, LANCANG_AET, studies)
            tree = process_tree(proc.pid)
            seen.update(tree)
            cpu = cpu_seconds(tree + server_pids) - cpu0
            warnings = _log_problems(log_path)
        finally:
            stop_tree(proc, seen)
        return rate, {"found": found, "find_seconds": find_s, "server_cpu_s": cpu,
                      "receiver_processes": len(tree), "settle_s": round(settle_s, 1),
                      "log_warnings": warnings}

def wait_for_echo(proc: subprocess.Popen, port: int, log_path: Path, timeout: float = 120) -> None:
    """Until the receiver `proc` answers C-ECHO on `port` (called as LANCANG); fail if it exits."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise BenchError(f"{proc.args[1:3]} exited with {proc.returncode}:\n{_tail(log_path)}")
        try:
            peers.echoscu("127.0.0.1", port, LANCANG_AET, CALLING_AET)
            return
        except subprocess.CalledProcessError:
            if time.monotonic() > deadline:
                raise BenchError(f"no C-ECHO answer within {timeout} s:\n{_tail(log_path)}")
            time.sleep(0.2)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def _log_problems(path: Path) -> list[str]:
    """WARNING/ERROR lines of the receiver's log (first few)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if re.search(r" (WARNING|ERROR|CRITICAL) ", line)][:10]


# --------------------------------------------------------------- orchestration

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=800, help="CT slices (default 800)")
    parser.add_argument("--studies", type=int, default=1, help="spread over K studies (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path,
                        help="CT series folder, generated if missing (default /tmp/ct<COUNT>)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; medians over them")
    parser.add_argument("--associations", default="1,4", help="comma-separated (default 1,4)")
    parser.add_argument("--processes", default="auto",
                        help="LANCANG_DICOM_PROCESSES, comma-separated to sweep; "
                             "auto = 1 for one association, 2 for more")
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help=f"comma-separated subset of {','.join(TARGETS)}")
    parser.add_argument("--workdir", type=Path,
                        help="keep every target's state here (default: temporary, removed)")
    parser.add_argument("--timeout", type=float, default=900,
                        help="give up on one storescu run after this many seconds")
    parser.add_argument("--json", type=Path, help="write every run and the medians here")
    args = parser.parse_args(argv)
    args.associations = [int(n) for n in args.associations.split(",")]
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; choose from {TARGETS}")
    args.processes = (None if args.processes == "auto"
                      else [int(p) for p in args.processes.split(",")])
    args.data = args.data or Path(f"/tmp/ct{args.count}")
    return args


def processes_for(args, associations: int) -> list[int]:
    if args.processes is not None:
        return args.processes
    return [1 if associations == 1 else 2]


def prepare_data(args) -> tuple[list[Path], list[ctgen.Study]]:
    if not ctgen.is_generated(args.data, args.count, args.studies, args.seed):
        print(f"generating {args.count} CT slices into {args.data} ...", flush=True)
        started = time.perf_counter()
        ctgen.generate(args.data, args.count, args.studies, args.seed)
        print(f"  done in {time.perf_counter() - started:.1f} s", flush=True)
    files = ctgen.list_files(args.data)
    return files, ctgen.plan_studies(args.count, args.studies, args.seed)


def versions(python: str) -> dict:
    return {
        "orthanc": first_line(["Orthanc", "--version"]),
        "dcmtk": first_line([peers.dcmtk_tool("storescu"), "--version"]).strip("$ ")
                 .removeprefix("dcmtk: "),
        **lancang_revision(),
        "python": first_line([python, "--version"]),
        "pynetdicom": first_line([python, "-c", "import pynetdicom; print(pynetdicom.__version__)"]),
    }


def scratch(args, name: str) -> contextlib.AbstractContextManager[Path]:
    if args.workdir is not None:
        path = args.workdir / name
        if path.exists():
            shutil.rmtree(path)
        return contextlib.nullcontext(path)
    return _tempdir(name)


@contextlib.contextmanager
def _tempdir(name: str):
    path = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def measure(target, args, files, studies, associations, processes, repeat) -> Run:
    """One run on a fresh target.  A failure is a result too: recorded, logs kept."""
    name = f"r{repeat}-{target.name}-{associations}a" + (f"-{processes}p" if processes else "")
    run = Run(target=target.name, associations=associations, processes=processes, repeat=repeat,
              load_before=load1())
    with scratch(args, name) as workdir:
        try:
            if isinstance(target, (Orthanc, BareScp)):
                rate, extra = target.run(workdir, files, associations, studies, args.timeout)
            else:
                rate, extra = target.run(workdir, files, associations, processes, studies,
                                         args.timeout)
            run.instances, run.megabytes = rate.instances, round(rate.megabytes, 1)
            run.seconds = round(rate.seconds, 3)
            run.instances_per_s = round(rate.instances_per_s, 1)
            run.mb_per_s = round(rate.mb_per_s, 1)
            run.found = extra.pop("found")
            find_seconds = extra.pop("find_seconds")
            run.find_seconds = None if find_seconds is None else round(find_seconds, 3)
            run.server_cpu_s = round(extra.pop("server_cpu_s"), 1)
            run.extra = extra
            if getattr(target, "indexes", True) and run.found != len(files):
                raise BenchError(f"C-FIND right after the last acknowledgement found "
                                 f"{run.found} of {len(files)} instances")
        except Exception as exc:                      # Ctrl-C still stops the whole benchmark
            run.error = f"{type(exc).__name__}: {exc}"
            run.kept_logs = keep_logs(workdir, name)
        finally:
            run.load_after = load1()
    return run


def keep_logs(workdir: Path, name: str) -> str | None:
    """Copy a failed run's server logs out of its (soon deleted) work directory."""
    logs = [p for p in workdir.glob("*.log") if p.is_file()]
    if not logs:
        return None
    keep = Path(tempfile.gettempdir()) / "dicom_store-failed" / f"{name}-{time.strftime('%H%M%S')}"
    keep.mkdir(parents=True, exist_ok=True)
    for log in logs:
        shutil.copy2(log, keep / log.name)
    return str(keep)


def fmt_procs(run_or_p) -> str:
    p = run_or_p.processes if isinstance(run_or_p, Run) else run_or_p
    return "-" if p is None else str(p)


HEADER = (f"{'target':<22} {'assoc':>5} {'procs':>5} {'inst/s':>8} {'MB/s':>7} "
          f"{'vs Orthanc':>10} {'C-FIND':>12} {'srv CPU s':>9} {'load1':>11}")


def run_line(run: Run) -> str:
    if not run.ok:
        first = run.error.splitlines()[0][:90]
        return (f"{LABELS[run.target]:<22} {run.associations:>5} {fmt_procs(run):>5}   FAILED: {first}"
                + (f" (logs: {run.kept_logs})" if run.kept_logs else ""))
    ratio = "-" if run.ratio is None else f"{run.ratio:.2f}x"
    find = "no C-FIND" if run.found is None else f"{run.found} {run.find_seconds:.1f}s"
    return (f"{LABELS[run.target]:<22} {run.associations:>5} {fmt_procs(run):>5} "
            f"{run.instances_per_s:>8.0f} {run.mb_per_s:>7.0f} {ratio:>10} {find:>12} "
            f"{run.server_cpu_s:>9.1f} {run.load_before:>5.2f}/{run.load_after:<5.2f}")


def summarize(runs: list[Run]) -> list[dict]:
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault((run.target, run.associations, run.processes), []).append(run)
    rows = []
    for (target, assoc, procs), every in groups.items():
        group = [r for r in every if r.ok]
        failed = len(every) - len(group)
        if not group:
            rows.append({"target": target, "associations": assoc, "processes": procs, "runs": 0,
                         "failed": failed, "instances_per_s": None, "mb_per_s": None,
                         "ratio": None, "instances_per_s_all": [], "load1_all": []})
            continue
        ratios = [r.ratio for r in group if r.ratio is not None]
        rows.append({
            "target": target, "associations": assoc, "processes": procs, "runs": len(group),
            "failed": failed,
            "instances_per_s": round(statistics.median(r.instances_per_s for r in group), 1),
            "mb_per_s": round(statistics.median(r.mb_per_s for r in group), 1),
            "ratio": round(statistics.median(ratios), 3) if ratios else None,
            "instances_per_s_all": [r.instances_per_s for r in group],
            "load1_all": [r.load_before for r in group],
        })
    order = {name: i for i, name in enumerate(TARGETS)}
    rows.sort(key=lambda r: (r["associations"], order[r["target"]], r["processes"] or 0))
    return rows


def print_summary(rows: list[dict], count: int, megabytes: float, repeat: int) -> None:
    print()
    print(f"C-STORE of {count} CT slices ({megabytes:.0f} MB), dcmtk storescu, TCP_NODELAY=1; "
          f"median of {repeat} run(s); ratio = target / Orthanc of the same round")
    print(f"{'target':<22} {'assoc':>5} {'procs':>5} {'inst/s':>8} {'MB/s':>7} {'vs Orthanc':>10}   "
          f"inst/s of each run")
    for row in rows:
        if not row["runs"]:
            print(f"{LABELS[row['target']]:<22} {row['associations']:>5} "
                  f"{fmt_procs(row['processes']):>5}   every run FAILED ({row['failed']})")
            continue
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}x"
        each = ", ".join(f"{v:.0f}" for v in row["instances_per_s_all"])
        if row["failed"]:
            each += f"; {row['failed']} FAILED"
        print(f"{LABELS[row['target']]:<22} {row['associations']:>5} {fmt_procs(row['processes']):>5} "
              f"{row['instances_per_s']:>8.0f} {row['mb_per_s']:>7.0f} {ratio:>10}   {each}")
    for assoc, goal in GOALS.items():
        for row in rows:
            if row["target"] == "embedded" and row["associations"] == assoc and row["ratio"]:
                verdict = "met" if row["ratio"] >= goal else "NOT met"
                print(f"goal >= {goal:.1f}x Orthanc over {assoc} association(s), "
                      f"{fmt_procs(row['processes'])} process(es): {row['ratio']:.2f}x, {verdict}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    peers.ensure_private_netns()
    # SIGTERM/SIGHUP unwind like Ctrl-C, so every `finally` stops what it started.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.default_int_handler)
    python = str(REPO / ".venv" / "bin" / "python")
    if not Path(python).exists():
        python = sys.executable
    files, studies = prepare_data(args)
    megabytes = sum(f.stat().st_size for f in files) / 1e6
    info = {
        "command": " ".join(sys.orig_argv),
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "uptime_start": uptime(),
        "data": {"folder": str(args.data), "files": len(files), "megabytes": round(megabytes, 1),
                 "studies": args.studies, "seed": args.seed},
        "versions": versions(python),
    }
    print(f"{len(files)} files, {megabytes:.0f} MB in {args.data}; {info['versions']['orthanc']}, "
          f"dcmtk {info['versions']['dcmtk']}, Lancang {info['versions']['lancang_commit']}"
          + (f" + uncommitted changes in {', '.join(info['versions']['lancang_modified_files'])}"
             if info["versions"]["lancang_modified_files"] else ""))
    print(f"start: {info['uptime_start']}", flush=True)
    runs: list[Run] = []
    with contextlib.ExitStack() as stack:
        targets = {"orthanc": Orthanc(),
                   "embedded": Lancang("embedded", python, stack),
                   "pg-s3": Lancang("pg-s3", python, stack),
                   "bare-ack": BareScp("bare-ack", python),
                   "bare-files": BareScp("bare-files", python)}
        print(HEADER, flush=True)
        for repeat in range(args.repeat):
            for assoc in args.associations:
                baseline = None
                for name in args.targets:
                    single = name == "orthanc" or name.startswith("bare-")
                    for procs in ([None] if single else processes_for(args, assoc)):
                        run = measure(targets[name], args, files, studies, assoc, procs, repeat)
                        if name == "orthanc":
                            baseline = run if run.ok else None
                        elif baseline is not None and run.ok:
                            run.ratio = round(run.instances_per_s / baseline.instances_per_s, 3)
                        runs.append(run)
                        print(run_line(run), flush=True)
        info["services"] = targets["pg-s3"].service_info
    info["uptime_end"] = uptime()
    rows = summarize(runs)
    print_summary(rows, len(files), megabytes, args.repeat)
    print(f"end:   {info['uptime_end']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**info, "runs": [asdict(r) for r in runs],
                                         "summary": rows}, indent=2, ensure_ascii=False))
        print(f"wrote {args.json}")
    failures = [r for r in runs if not r.ok]
    for run in failures:
        print(f"\nFAILED {LABELS[run.target]}, {run.associations} association(s), "
              f"processes {fmt_procs(run)}, round {run.repeat}"
              + (f"; logs kept in {run.kept_logs}" if run.kept_logs else "") + f":\n{run.error[:3000]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
