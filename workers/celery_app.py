"""Module-level Celery app for the `celery` command line (`celery -A workers.celery_app ...`).

Built from the environment's settings at import: only the celery CLI imports this module.
"""

from lancang.settings import get_settings
from workers.app import make_celery

app = make_celery(get_settings())
