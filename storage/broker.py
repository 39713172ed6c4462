"""The broker and its queues: Redis in production and tests, a filesystem broker embedded.

Every process that sends work (web, DICOM, CLI) and the worker itself build their Celery app
here, so the queue topology is spelled once. Sending needs no task code: tasks are sent by
name (`storage/jobs.py`); only the worker's app (`storage/broker.py`) imports `workers.tasks`.
"""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from storage.settings import Settings

QUEUES = ("derive", "render", "notify", "maintenance")
# One direct exchange; each queue bound by its own name. Left to Celery's defaults every
# queue was bound to exchange "derive" with key "derive", so a task published by
# exchange and key reached all four queues and ran four times.
EXCHANGE = Exchange("lancang", type="direct")


def make_celery(settings: Settings, *, include: tuple[str, ...] = ()) -> Celery:
    app = Celery("lancang", broker=settings.effective_broker_url, include=list(include))
    app.conf.update(
        task_queues=[Queue(name, EXCHANGE, routing_key=name) for name in QUEUES],
        task_default_queue="derive",
        task_default_exchange=EXCHANGE.name,
        task_default_exchange_type=EXCHANGE.type,
        task_default_routing_key="derive",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        result_backend=None,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
        timezone="Asia/Shanghai",
        enable_utc=True,
    )
    if settings.effective_broker_url.startswith("filesystem"):
        folder = settings.broker_dir / "queue"
        folder.mkdir(parents=True, exist_ok=True)
        # kombu's filesystem transport, its files written atomically (storage/compat_kombu.py).
        app.conf.broker_transport = "storage.compat_kombu:Transport"
        app.conf.broker_transport_options = {
            "data_folder_in": str(folder),
            "data_folder_out": str(folder),
            # Exchange tables too live in the data dir (kombu's default is ./control, which
            # wrote into whatever directory the process started in).
            "control_folder": str(settings.broker_dir / "control"),
            "store_processed": False,
            # The file transport polls; the default second would be most of a thumbnail's latency.
            "polling_interval": 0.1,
        }
        # The file transport has no broadcast exchange; remote control is not needed embedded.
        app.conf.worker_enable_remote_control = False
    app.conf.lancang_settings = settings
    return app


def check_broker(app: Celery) -> None:
    """Raise if the broker cannot be reached within a couple of seconds."""
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, timeout=2)
        if app.conf.broker_url.startswith("filesystem"):
            folder = app.conf.broker_transport_options["data_folder_out"]
            probe = f"{folder}/.health"
            with open(probe, "w") as handle:
                handle.write("ok")


def dispatcher_for(app: Celery):
    def dispatch(name: str, args: tuple, queue: str, options: dict) -> None:
        app.send_task(name, args=list(args), queue=queue, **options)

    return dispatch
