"""Running a worker process (`lancang worker`, also started by `lancang serve`)."""

from __future__ import annotations

from storage.settings import Settings
from storage.broker import QUEUES
from workers.app import make_worker_app


def run_worker(settings: Settings, *, concurrency: int = 2, queues: str = ",".join(QUEUES)) -> None:
    app = make_worker_app(settings)
    pool = "solo" if concurrency <= 1 else "prefork"
    argv = ["worker", f"--pool={pool}", f"--queues={queues}", f"--loglevel={settings.log_level}",
            "--without-mingle", "--without-gossip", "--hostname=lancang@%h"]
    if pool == "prefork":
        argv.append(f"--concurrency={concurrency}")
    app.worker_main(argv)
