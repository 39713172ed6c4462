"""`lancang serve`: web, DICOM receiver and worker as supervised child processes.

The parent migrates the database once, then starts each child with the same settings,
restarts a child that dies (with back-off), and on Ctrl-C/SIGTERM stops them all.

`lancang edge run` is the same supervisor at a township edge: web, DICOM receiver, a worker of
one process (a modest PC), the modality worklist (`lancang edge mwl`) and, when a region is
configured and the forwarder is installed, the forwarder (`lancang edge forward`).
"""

from __future__ import annotations

import importlib.util
import logging
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from storage.runtime import bootstrap
from storage.settings import Settings

log = logging.getLogger("lancang.serve")
CHILDREN = ("web", "dicom", "worker")
STOP_GRACE_S = 10


@dataclass
class Child:
    name: str
    argv: tuple[str, ...] = ()  # the `lancang` command line; empty means the child's name
    process: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = 0.0
    next_start: float = field(default=0.0)

    def start(self) -> None:
        command = [sys.executable, "-m", "lancang.cli", *(self.argv or (self.name,))]
        self.process = subprocess.Popen(command)
        self.started_at = time.monotonic()
        log.info("serve.child.started name=%s pid=%s", self.name, self.process.pid)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _stop_all(children: list[Child]) -> None:
    for child in children:
        if child.alive():
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for child in children:
        if child.process is None:
            continue
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("serve.child.kill name=%s pid=%s", child.name, child.process.pid)
            child.process.kill()
            child.process.wait()


def _supervise(children: list[Child], stopping: list[bool]) -> None:
    while not stopping:
        now = time.monotonic()
        for child in children:
            if child.alive() or now < child.next_start:
                continue
            if child.process is not None:
                code = child.process.returncode
                # A child that ran a while gets restarted at once; one that keeps dying backs off.
                quick = now - child.started_at < 30
                child.restarts = child.restarts + 1 if quick else 0
                delay = min(30, 2 ** child.restarts) if quick else 0
                log.error("serve.child.exited name=%s code=%s restart_in=%ss", child.name, code, delay)
                child.process = None
                child.next_start = now + delay
                continue
            child.start()
        time.sleep(0.5)


def forwarder_available() -> bool:
    """Whether the forwarder (edge/forward.py, shipped on its own) is installed. Found, not
    imported: the supervisor stays small, and `lancang edge forward` says itself what is
    wrong with a forwarder that cannot load (then it is restarted with back-off)."""
    return importlib.util.find_spec("edge.forward") is not None


def edge_children(settings: Settings) -> list[Child]:
    children = [Child("web"), Child("dicom"), Child("worker", ("worker", "--concurrency", "1")),
                Child("mwl", ("edge", "mwl"))]
    if not settings.edge_region_url:
        log.warning("serve.child.skipped name=forward reason=no LANCANG_EDGE_REGION_URL: studies stay on this edge")
    elif not forwarder_available():
        log.warning("serve.child.skipped name=forward reason=edge.forward.run_forever is not installed")
    else:
        children.append(Child("forward", ("edge", "forward")))
    return children


def serve(settings: Settings, *, edge: bool = False) -> int:
    runtime = bootstrap(settings, component="edge" if edge else "serve")  # migrate once, before children race
    runtime.db.dispose()
    log.info("serve.start http=http://%s:%s dicom=%s@%s:%s data=%s", settings.bind_host, settings.http_port,
             settings.dicom_ae_title, settings.bind_host, settings.dicom_port,
             "embedded " + str(settings.data_dir.resolve()) if settings.embedded else "servers")
    if edge:
        log.info("serve.edge worklist=%s@%s:%s region=%s", settings.edge_mwl_ae, settings.bind_host,
                 settings.edge_mwl_port, settings.edge_region_url or "-")
    children = edge_children(settings) if edge else [Child(name) for name in CHILDREN]
    stopping: list[bool] = []

    def on_signal(signum, _frame):
        stopping.append(True)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        _supervise(children, stopping)
    finally:
        log.info("serve.stop")
        _stop_all(children)
    return 0
