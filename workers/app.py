"""The worker's Celery app: the broker's app (storage/broker.py) with the task modules."""

from __future__ import annotations

from celery import Celery

from storage.broker import make_celery
from storage.settings import Settings

TASK_MODULES = ("workers.tasks",)


def make_worker_app(settings: Settings) -> Celery:
    return make_celery(settings, include=TASK_MODULES)
