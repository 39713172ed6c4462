"""Real servers for tests: PostgreSQL, Redis and an S3 store (SeaweedFS).

Each class starts one server on 127.0.0.1 on free ports, waits until it really
answers, and stops only the process it started, by PID (a shutdown signal,
then SIGKILL).
Everything a server writes lives in one temporary directory.

Life cycle, the same for all three:
    start()  start the server (the first call also creates its directory);
             a no-op while it runs
    stop()   stop the process; directory and ports are kept, so start() again
             brings it back with the same data on the same port (fault tests)
    close()  stop() and delete the directory; use it once at the end
They are also context managers: ``with RedisServer() as redis: ...``.

Only the standard library and psycopg are imported, so this module stays
usable from scripts and benchmarks too.
"""

from __future__ import annotations

import glob
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Callable

START_TIMEOUT = 60.0  # seconds; generous because CI machines have 2 cores
STOP_TIMEOUT = 20.0  # before SIGTERM becomes SIGKILL


class ServiceError(RuntimeError):
    """A test server could not be started or stopped."""


class BinaryNotFound(ServiceError):
    """The server's program is not installed (fixtures skip or fail on this)."""


# --------------------------------------------------------------------------- helpers


def find_binary(name: str, extra_dirs: list[str] | tuple[str, ...] = ()) -> str:
    """Absolute path of `name`, looked up on PATH, then next to this Python
    (the venv's bin holds `weed` even when the venv is not activated), then in
    `extra_dirs`."""
    found = shutil.which(name)
    if found:
        return found
    dirs = [str(Path(sys.executable).parent), *extra_dirs]
    for directory in dirs:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise BinaryNotFound(f"{name!r} not found on PATH or in {dirs}")


def postgres_bin_dirs() -> list[str]:
    """Debian keeps initdb/pg_ctl in /usr/lib/postgresql/<major>/bin, off PATH;
    newest major version first."""
    dirs = glob.glob("/usr/lib/postgresql/*/bin")

    def major(path: str) -> int:
        version = Path(path).parent.name
        return int(version) if version.isdigit() else 0

    return sorted(dirs, key=major, reverse=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port_pair(offset: int = 10000) -> tuple[int, int]:
    """Ports p and p + offset, both free.

    SeaweedFS derives gRPC ports as "HTTP port + 10000" in places that ignore
    the explicit flags (the admin's plugin worker does), so each HTTP port is
    chosen together with its +10000 partner. Both stay below the kernel's
    ephemeral range (32768+), so outgoing connections cannot grab them between
    this check and the server's bind.
    """
    for _ in range(200):
        port = random.randint(10000, 22000)
        if _port_is_free(port) and _port_is_free(port + offset):
            return port, port + offset
    raise ServiceError("no free port pair found in 10000-32000")


def log_tail(path: Path | str, lines: int = 40) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def pid_alive(pid: int) -> bool:
    """True while `pid` runs. A zombie counts as dead: a daemon re-parented to a
    container's PID 1 may never be reaped, and would otherwise look alive."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def stop_pid(
    pid: int,
    first_signal: int = signal.SIGTERM,
    timeout: float = STOP_TIMEOUT,
    proc: subprocess.Popen | None = None,
) -> None:
    """Send `first_signal` to this one PID, wait, then SIGKILL it.
    `proc` (when the server is our child) is reaped so no zombie is left."""

    def gone(wait: float) -> bool:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                return True
            if proc is None and not pid_alive(pid):
                return True
            time.sleep(0.05)
        return False

    if proc is not None and proc.poll() is not None:
        return  # already exited (and reaped): its PID may belong to someone else
    for sig, wait in ((first_signal, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        if gone(wait):
            break
    else:
        raise ServiceError(f"process {pid} survived SIGKILL")
    if proc is not None:
        proc.wait(timeout=10)


def wait_until(
    check: Callable[[], bool],
    what: str,
    log_path: Path,
    proc: subprocess.Popen | None = None,
    timeout: float = START_TIMEOUT,
) -> float:
    """Poll `check` until it returns True; returns the seconds it took.
    Fails fast if `proc` exits, and always shows the server's log tail."""
    started = time.monotonic()
    last_error: Exception | None = None
    while time.monotonic() - started < timeout:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(
                f"{what} exited with code {proc.returncode} while starting.\n"
                f"--- tail of {log_path} ---\n{log_tail(log_path)}"
            )
        try:
            if check():
                return time.monotonic() - started
        except Exception as exc:  # not up yet; remember why for the message
            last_error = exc
        time.sleep(0.05)
    raise ServiceError(
        f"{what} did not answer within {timeout:.0f}s (last error: {last_error!r}).\n"
        f"--- tail of {log_path} ---\n{log_tail(log_path)}"
    )


def _run(cmd: list[str], what: str, log_path: Path, **kwargs) -> None:
    """Run a short setup command; on failure raise with its output and the log."""
    result = subprocess.run(
        cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, **kwargs
    )
    if result.returncode != 0:
        raise ServiceError(
            f"{what} failed with code {result.returncode}: {' '.join(cmd)}\n"
            f"{result.stdout}{result.stderr}\n"
            f"--- tail of {log_path} ---\n{log_tail(log_path)}"
        )


class _Server:
    """Shared context-manager plumbing; subclasses set self.tmp_dir."""

    tmp_dir: Path | None = None

    def start(self):  # pragma: no cover - overridden
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:
        """Stop the server and delete everything it wrote."""
        try:
            self.stop()
        finally:
            if self.tmp_dir is not None:
                shutil.rmtree(self.tmp_dir, ignore_errors=True)
                self.tmp_dir = None

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# --------------------------------------------------------------------------- PostgreSQL


class PostgresServer(_Server):
    """A throw-away PostgreSQL cluster.

    Attributes after start(): host, port, user, dbname, socket_dir, pid,
    url (SQLAlchemy, psycopg 3 driver), dsn (plain libpq URI for psycopg),
    startup_seconds. create_database() makes more empty databases.
    """

    user = "postgres"
    host = "127.0.0.1"

    def __init__(self, dbname: str = "lancang_test") -> None:
        self.dbname = dbname
        self.port: int | None = None
        self.pid: int | None = None
        self.startup_seconds: float | None = None
        self._template_ready = False  # create_migrated_database's template exists
        bin_dirs = postgres_bin_dirs()
        self.initdb = find_binary("initdb", bin_dirs)
        self.pg_ctl = find_binary("pg_ctl", bin_dirs)

    # paths inside the temporary directory
    @property
    def data_dir(self) -> Path:
        return self.tmp_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.tmp_dir / "sock"

    @property
    def log_path(self) -> Path:
        return self.tmp_dir / "postgres.log"

    def url_for(self, dbname: str) -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{dbname}"

    def dsn_for(self, dbname: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    @property
    def url(self) -> str:
        return self.url_for(self.dbname)

    @property
    def dsn(self) -> str:
        return self.dsn_for(self.dbname)

    def _as_postgres(self, cmd: list[str]) -> list[str]:
        # initdb refuses to run as root, and tests run as root on CI.
        if os.geteuid() == 0:
            return ["runuser", "-u", self.user, "--", *cmd]
        return cmd

    def start(self) -> "PostgresServer":
        if self.pid is not None and pid_alive(self.pid):
            return self  # already running: start() is idempotent
        started = time.monotonic()
        first_start = self.tmp_dir is None
        if first_start:
            self._init_cluster()
        # -w: pg_ctl itself waits until the server accepts connections.
        options = (
            f"-c listen_addresses={self.host} -p {self.port} -k {self.socket_dir}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        try:
            _run(
                self._as_postgres(
                    [self.pg_ctl, "-D", str(self.data_dir), "-l", str(self.log_path),
                     "-w", "-t", str(int(START_TIMEOUT)), "-o", options, "start"]
                ),
                "pg_ctl start", self.log_path, cwd=self.tmp_dir,
            )
        finally:
            # Even when pg_ctl gave up waiting, a postmaster may be running:
            # remember its PID (first line of postmaster.pid) so close() stops it.
            pid_file = self.data_dir / "postmaster.pid"
            if pid_file.exists():
                self.pid = int(pid_file.read_text().split()[0])
        wait_until(self._answers, "PostgreSQL", self.log_path)
        if first_start:
            self.create_database(self.dbname)
        self.startup_seconds = time.monotonic() - started
        return self

    def _init_cluster(self) -> None:
        self.tmp_dir = Path(tempfile.mkdtemp(prefix="lancang-pg-"))
        self.socket_dir.mkdir()
        self.log_path.touch()
        if os.geteuid() == 0:
            # The server runs as `postgres`, so it must own its directory.
            for path in (self.tmp_dir, self.socket_dir, self.log_path):
                shutil.chown(path, user=self.user, group=self.user)
        self.port = free_port()
        # UTF8 + C locale: independent of the machine's LANG, and CJK text works.
        _run(
            self._as_postgres(
                [self.initdb, "-D", str(self.data_dir), "-A", "trust", "--no-sync",
                 "-U", self.user, "-E", "UTF8", "--locale=C"]
            ),
            "initdb", self.log_path, cwd=self.tmp_dir,
        )

    def _answers(self) -> bool:
        import psycopg

        with psycopg.connect(self.dsn_for("postgres"), connect_timeout=2) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)

    def create_database(self, name: str | None = None, *, template: str | None = None) -> str:
        """Create a database (random name if none), empty or as a copy of `template`, and
        return its SQLAlchemy URL."""
        import psycopg
        from psycopg import sql

        name = name or f"test_{os.urandom(4).hex()}"
        for each in (name, template or "x"):
            if not re.fullmatch(r"[a-z_][a-z0-9_]*", each):
                raise ValueError(f"unsafe database name {each!r}")
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        # CREATE DATABASE cannot run inside a transaction, hence autocommit.
        with psycopg.connect(self.dsn_for("postgres"), autocommit=True) as conn:
            conn.execute(statement)
        return self.url_for(name)

    def create_migrated_database(self) -> str:
        """A database at the newest migration: a copy of one migrated once per server (the
        migrations take 0.3 s a database, the copy 0.06 s; tests/storage/test_db.py still
        migrates empty databases)."""
        template = "lancang_migrated_template"
        if not self._template_ready:
            from storage.db import Database

            database = Database(self.create_database(template))
            try:
                database.upgrade()
            finally:
                database.dispose()  # CREATE DATABASE … TEMPLATE wants nobody connected to it
            self._template_ready = True
        return self.create_database(template=template)

    def stop(self) -> None:
        if self.pid is None:
            return
        # SIGINT is PostgreSQL's "fast" shutdown: it disconnects clients.
        # SIGTERM ("smart") would wait for every pooled test connection to close.
        stop_pid(self.pid, first_signal=signal.SIGINT)
        self.pid = None


# --------------------------------------------------------------------------- Redis


class RedisServer(_Server):
    """A throw-away Redis without persistence.

    Attributes after start(): host, port, url ("redis://127.0.0.1:PORT/0"),
    pid, startup_seconds.
    """

    host = "127.0.0.1"

    def __init__(self) -> None:
        self.binary = find_binary("redis-server")
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.startup_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def log_path(self) -> Path:
        return self.tmp_dir / "redis.log"

    def start(self) -> "RedisServer":
        if self.proc is not None and self.proc.poll() is None:
            return self  # already running: start() is idempotent
        if self.tmp_dir is None:
            self.tmp_dir = Path(tempfile.mkdtemp(prefix="lancang-redis-"))
            self.port = free_port()
        # Not --daemonize: then the PID we hold is the server itself.
        # --logfile "" logs to stdout, so config errors and the log share a file.
        cmd = [
            self.binary, "--bind", self.host, "--port", str(self.port),
            "--save", "", "--appendonly", "no", "--daemonize", "no",
            "--dir", str(self.tmp_dir), "--logfile", "",
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, cwd=self.tmp_dir,
            )
        self.startup_seconds = wait_until(self._answers, "Redis", self.log_path, self.proc)
        return self

    def _answers(self) -> bool:
        # A raw PING keeps this module free of the redis package.
        with socket.create_connection((self.host, self.port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_pid(self.proc.pid, proc=self.proc)
        self.proc = None


# --------------------------------------------------------------------------- S3


class S3Server(_Server):
    """A real S3 implementation (SeaweedFS `weed mini`) that checks signatures.

    Attributes after start(): endpoint ("127.0.0.1:PORT", no scheme, as the
    minio SDK wants it), url ("http://127.0.0.1:PORT"), access_key, secret_key,
    region, pid, startup_seconds.

    stop() keeps the data directory and ports, so a fault test can stop the
    store and start() it again with the same objects on the same endpoint.
    """

    host = "127.0.0.1"
    region = "us-east-1"

    def __init__(
        self,
        access_key: str = "lancang-test-key",
        secret_key: str = "lancang-test-secret-0123456789",
    ) -> None:
        self.binary = find_binary("weed")
        self.access_key = access_key
        self.secret_key = secret_key
        self.ports: dict[str, int] = {}
        self.proc: subprocess.Popen | None = None
        self.startup_seconds: float | None = None

    @property
    def port(self) -> int:
        return self.ports["s3"]

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def log_path(self) -> Path:
        return self.tmp_dir / "weed.out"

    def _prepare(self) -> None:
        """First start only: directory, credentials file and ports."""
        self.tmp_dir = Path(tempfile.mkdtemp(prefix="lancang-s3-"))
        for sub in ("data", "logs", "tmp", "config"):
            (self.tmp_dir / sub).mkdir()
        identity = {
            "name": "lancang-test-admin",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        (self.tmp_dir / "s3.json").write_text(json.dumps({"identities": [identity]}))
        # Every component gets its own HTTP port and gRPC = HTTP + 10000.
        for name in ("master", "volume", "filer", "s3", "admin"):
            self.ports[name], self.ports[f"{name}.grpc"] = free_port_pair()

    def _command(self) -> list[str]:
        tmp = self.tmp_dir
        flags = {
            "dir": tmp / "data",
            "ip": self.host,
            "ip.bind": self.host,
            "s3.config": tmp / "s3.json",
            "admin.dataDir": tmp / "data" / "admin",
            # By default these unix sockets land in /tmp, named after the port.
            "filer.localSocket": tmp / "tmp" / "filer.sock",
            "s3.localSocket": tmp / "tmp" / "s3.sock",
            # Off: phoning home, web UIs and extra servers nobody tests here.
            "master.telemetry": "false",
            "admin.ui": "false",
            "webdav": "false",
            "s3.port.iceberg": 0,
            "s3.port.lance": 0,
            # Each bucket is a collection with volumes of its own; left to itself weed allows
            # free disk / 1 GiB of them (74 here), and a full suite makes more buckets than
            # that: every PUT then fails with 500. Volumes are sparse files (no preallocation).
            "volume.max": 3000,
        }
        for name in ("master", "volume", "filer", "s3", "admin"):
            flags[f"{name}.port"] = self.ports[name]
            flags[f"{name}.port.grpc"] = self.ports[f"{name}.grpc"]
        # -logdir and -config_dir are global options: they go before "mini".
        cmd = [self.binary, f"-logdir={tmp / 'logs'}", f"-config_dir={tmp / 'config'}", "mini"]
        return cmd + [f"-{key}={value}" for key, value in flags.items()]

    def start(self) -> "S3Server":
        if self.proc is not None and self.proc.poll() is None:
            return self  # already running, so `finally: s3.start()` is safe
        if self.tmp_dir is None:
            self._prepare()
        env = dict(os.environ, TMPDIR=str(self.tmp_dir / "tmp"))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self._command(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, cwd=self.tmp_dir, env=env,
            )
        self.startup_seconds = wait_until(self._answers, "SeaweedFS S3", self.log_path, self.proc)
        return self

    def _answers(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as response:
            return response.status == 200

    def stop(self, graceful: bool = True) -> None:
        """Stop weed. graceful=False is SIGKILL at once: a crash, for fault
        tests, and the fast way out when the data is thrown away anyway."""
        if self.proc is None:
            return
        # SIGTERM lets weed flush volumes and the filer store (~2 s).
        first_signal = signal.SIGTERM if graceful else signal.SIGKILL
        stop_pid(self.proc.pid, first_signal=first_signal, proc=self.proc)
        self.proc = None
        self._remove_stray_sockets()

    def close(self) -> None:
        # The data is deleted next, so a graceful shutdown would only cost time.
        self.stop(graceful=False)
        super().close()

    def _remove_stray_sockets(self) -> None:
        """weed names its gRPC unix sockets /tmp/seaweedfs-<part>-grpc-<port>.sock
        with no flag to move them; they are left behind after a SIGKILL. Remove
        only the ones carrying our ports, once our process is gone."""
        for port in self.ports.values():
            for path in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                try:
                    os.unlink(path)
                except OSError:
                    pass
