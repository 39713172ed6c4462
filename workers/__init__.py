"""The Celery app and thin tasks that call domain services."""
