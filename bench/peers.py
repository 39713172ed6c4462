"""DICOM peers that Lancang did not write, for benchmarks: Orthanc and dcmtk.

Orthanc and dcmtk's SCPs listen on 0.0.0.0, so a benchmark calls
`ensure_private_netns()` first: it re-executes the process inside a fresh
network namespace that holds only loopback, and nothing can leave the machine.

Every peer runs with TCP_NODELAY=1 (dcmtk and Orthanc honour it); without it
each DIMSE message waits ~40 ms for a delayed ACK and the figures are noise.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

NETNS_ENV = "LANCANG_BENCH_NETNS"
DCMTK_DIR = "/usr/bin"          # Debian's dcmtk; the venv's bin holds pynetdicom's
                                # own storescu/echoscu/findscu under the same names
PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")
DICOMWEB_PLUGIN = "libOrthancDicomWeb.so"


def dcmtk_tool(name: str) -> str:
    """Absolute path of a dcmtk program (never pynetdicom's look-alike in a venv)."""
    path = Path(DCMTK_DIR) / name
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; apt-get install dcmtk")
    return str(path)


def nodelay_env() -> dict[str, str]:
    """The current environment plus TCP_NODELAY=1."""
    return {**os.environ, "TCP_NODELAY": "1"}


# --------------------------------------------------------------- network

def in_private_netns() -> bool:
    """True when loopback is the only interface in this network namespace.

    /sys/class/net is no use here: it shows the namespace that mounted sysfs,
    not ours.  if_nameindex() asks the kernel about the current one.
    """
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def ensure_private_netns() -> None:
    """Re-execute this process under `unshare -n` unless already isolated.

    Uses sys.orig_argv, so both `python bench/x.py` and `python -m bench.x`
    come back the same way.  Never returns when it re-executes.
    """
    if in_private_netns():
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        return
    if os.environ.get(NETNS_ENV):
        raise RuntimeError("re-executed under unshare -n but other interfaces remain")
    os.environ[NETNS_ENV] = "1"
    command = [sys.executable, *sys.orig_argv[1:]]
    script = 'ip link set lo up && exec "$@"'
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp("unshare", ["unshare", "-n", "bash", "-c", script, "bash", *command])


def free_port() -> int:
    """A TCP port nobody is listening on right now (on loopback)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    """Poll `url` until it answers 200; fail early if `proc` exits."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout} s")
        time.sleep(0.05)


# --------------------------------------------------------------- Orthanc

def find_orthanc_plugin(name: str = DICOMWEB_PLUGIN) -> Path:
    """Where Debian's orthanc-* packages put a plugin."""
    for folder in PLUGIN_DIRS:
        candidate = Path(folder) / name
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{name} not found in {PLUGIN_DIRS}; apt-get install orthanc-dicomweb")


def orthanc_config(workdir: Path, dicom_port: int, http_port: int, aet: str,
                   dicomweb: bool) -> dict:
    """A self-contained Orthanc configuration keeping all state in `workdir`."""
    storage = str(workdir / "storage")
    config = {
        "Name": f"bench-{aet}",
        "StorageDirectory": storage,
        "IndexDirectory": storage,          # SQLite index lives here too
        "StorageCompression": False,
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,       # HTTP refuses non-loopback clients
        "AuthenticationEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "UnknownSopClassAccepted": True,
        "SaveJobs": False,
        "DefaultEncoding": "Utf8",          # else QIDO-RS answers drop Chinese names
        "Plugins": [],
    }
    if dicomweb:
        config["Plugins"] = [str(find_orthanc_plugin())]
        config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
    return config


@dataclass
class OrthancHandle:
    proc: subprocess.Popen
    workdir: Path
    dicom_port: int
    http_port: int
    aet: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get_json(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.load(response)

    def instance_count(self) -> int:
        return int(self.get_json("/statistics")["CountInstances"])

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM by PID, SIGKILL by PID if it lingers."""
        if self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> "OrthancHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_orthanc(workdir: Path | str, dicom_port: int, http_port: int,
                  aet: str = "ORTHANC", dicomweb: bool = True,
                  timeout: float = 60.0, overrides: dict | None = None) -> OrthancHandle:
    """Start Orthanc on its own config in `workdir`; return once /system answers.

    `overrides` replaces top-level configuration keys.  The log goes to
    workdir/orthanc.log.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "orthanc.json"
    config = orthanc_config(workdir, dicom_port, http_port, aet, dicomweb)
    config.update(overrides or {})
    config_path.write_text(json.dumps(config, indent=2))
    with open(workdir / "orthanc.log", "ab") as log:
        proc = subprocess.Popen(["Orthanc", str(config_path)], env=nodelay_env(),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    handle = OrthancHandle(proc, workdir, dicom_port, http_port, aet)
    try:
        wait_http(handle.url + "/system", timeout, proc)
    except Exception as exc:
        handle.stop()
        raise RuntimeError(f"Orthanc did not start; see {workdir / 'orthanc.log'}") from exc
    except BaseException:
        handle.stop()
        raise
    return handle


# --------------------------------------------------------------- storescu

def dicom_files(files_or_dir: Path | str | Iterable[Path | str]) -> list[Path]:
    """A directory (searched recursively, dot-files skipped), one file, or a list."""
    if isinstance(files_or_dir, (str, Path)):
        root = Path(files_or_dir)
        if root.is_file():
            return [root]
        return sorted(p for p in root.rglob("*")
                      if p.is_file() and not any(part.startswith(".")
                                                 for part in p.relative_to(root).parts))
    return [Path(p) for p in files_or_dir]


def split_chunks(items: list, n: int) -> list[list]:
    """`n` contiguous, near-equal slices of `items` (none empty)."""
    n = max(1, min(n, len(items)))
    base, extra = divmod(len(items), n)
    chunks, start = [], 0
    for i in range(n):
        end = start + base + (1 if i < extra else 0)
        chunks.append(items[start:end])
        start = end
    return chunks


def storescu_command(host: str, port: int, called_aet: str, files: list[Path],
                     calling_aet: str = "BENCH") -> list[str]:
    # -R: propose only the SOP classes the files hold (with every
    # uncompressed syntax, Explicit VR LE first on this host), instead of
    # dcmtk's full list of ~120 storage classes.
    return [dcmtk_tool("storescu"), "-R", "-aet", calling_aet, "-aec", called_aet,
            host, str(port), *map(str, files)]


def storescu(host: str, port: int, called_aet: str,
             files_or_dir: Path | str | Iterable[Path | str],
             associations: int = 1, calling_aet: str = "BENCH",
             timeout: float | None = None) -> tuple[float, int]:
    """Send files over `associations` parallel storescu processes.

    Returns (wall-clock seconds, files sent).  Raises RuntimeError, with the
    tool's own messages, if any storescu exits non-zero or reports an error,
    and subprocess.TimeoutExpired (after killing them) past `timeout` seconds.
    """
    files = dicom_files(files_or_dir)
    if not files:
        raise ValueError(f"no files in {files_or_dir}")
    chunks = split_chunks(files, associations)
    with tempfile.TemporaryDirectory(prefix="storescu-") as logdir:
        logs = [open(Path(logdir) / f"{i}.log", "w+b") for i in range(len(chunks))]
        procs: list[subprocess.Popen] = []
        try:
            started = time.perf_counter()
            for chunk, log in zip(chunks, logs):
                procs.append(subprocess.Popen(
                    storescu_command(host, port, called_aet, chunk, calling_aet),
                    env=nodelay_env(), stdin=subprocess.DEVNULL,
                    stdout=log, stderr=subprocess.STDOUT))
            deadline = None if timeout is None else started + timeout
            codes = [proc.wait(None if deadline is None
                               else max(0.0, deadline - time.perf_counter()))
                     for proc in procs]
            seconds = time.perf_counter() - started
            _check_storescu(codes, logs)
        finally:
            _kill_leftovers(procs)
            for log in logs:
                log.close()
    return seconds, len(files)


def _kill_leftovers(procs: list[subprocess.Popen]) -> None:
    """After an interruption: end the storescu processes we started, by PID."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _check_storescu(codes: list[int], logs: list) -> None:
    failures = []
    for i, (code, log) in enumerate(zip(codes, logs)):
        log.seek(0)
        text = log.read().decode(errors="replace")
        errors = [line for line in text.splitlines() if line.startswith(("E:", "F:"))]
        if code != 0 or errors:
            failures.append(f"storescu #{i} exit {code}:\n{text[-2000:]}")
    if failures:
        raise RuntimeError("\n".join(failures))


@dataclass(frozen=True)
class StoreRate:
    instances: int
    seconds: float
    megabytes: float            # 10^6 bytes, file sizes on disk

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.megabytes / self.seconds

    def __str__(self) -> str:
        return (f"{self.instances} instances, {self.megabytes:.0f} MB in {self.seconds:.2f} s: "
                f"{self.instances_per_s:.0f} instances/s, {self.mb_per_s:.0f} MB/s")


def time_storescu(host: str, port: int, called_aet: str,
                  files_or_dir: Path | str | Iterable[Path | str],
                  associations: int = 1, calling_aet: str = "BENCH",
                  timeout: float | None = None) -> StoreRate:
    """`storescu()` reported as a rate."""
    files = dicom_files(files_or_dir)
    seconds, count = storescu(host, port, called_aet, files, associations, calling_aet,
                              timeout)
    megabytes = sum(f.stat().st_size for f in files) / 1e6
    return StoreRate(count, seconds, megabytes)


def echoscu(host: str, port: int, called_aet: str, calling_aet: str = "BENCH") -> None:
    """One C-ECHO; raises CalledProcessError if the peer does not answer."""
    subprocess.run([dcmtk_tool("echoscu"), "-aet", calling_aet, "-aec", called_aet, host, str(port)],
                   env=nodelay_env(), check=True, stdin=subprocess.DEVNULL,
                   capture_output=True)
