"""Times for people: the deployment's zone (LANCANG_TIMEZONE, Asia/Shanghai by default).

Stored and exchanged times are UTC (APIs answer ISO 8601 with the offset); pages, PDFs,
notifications and lockout messages show the local time, named (北京时间 for Asia/Shanghai).
"""

from __future__ import annotations

from datetime import datetime, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo

from storage.settings import get_settings

DEFAULT_ZONE = "Asia/Shanghai"


@lru_cache(maxsize=8)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def zone(name: str | None = None) -> ZoneInfo:
    """The named zone, or this process's configured one."""
    return _zone(name or get_settings().timezone)


def label(name: str | None = None) -> str:
    """How pages name the zone: 北京时间 Beijing time for Asia/Shanghai, else its name."""
    name = name or get_settings().timezone
    return "北京时间 Beijing time" if name == DEFAULT_ZONE else name


def label_zh(name: str | None = None) -> str:
    """The zone inside Chinese sentences: 北京时间 for Asia/Shanghai, else its name."""
    name = name or get_settings().timezone
    return "北京时间" if name == DEFAULT_ZONE else name


def display(value, fmt: str = "%Y-%m-%d %H:%M", name: str | None = None) -> str:
    """A UTC datetime (or ISO text; naive means UTC) in local time; "—" for nothing."""
    if not value:
        return "—"
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(zone(name)).strftime(fmt)
