"""Module-level Celery app for the `celery` command line (`celery -A workers.celery_app ...`).

Built from the environment's settings at import: only the celery CLI imports this module.
"""

from storage.settings import get_settings
from workers.app import make_worker_app

app = make_worker_app(get_settings())
