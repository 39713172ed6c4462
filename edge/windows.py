"""How fast the edge may use the line, and when.

LANCANG_EDGE_RATE_LIMIT_KBPS caps it always (0: no cap). LANCANG_EDGE_WINDOWS adds caps by
local time, e.g. "08:00-18:00=512,18:00-08:00=0": 512 kbit/s during the working day (the
township's own internet and video consults share the line), no cap at night. A window's
value is kbit/s, 0 for no cap, or "off" to send nothing (e.g. "08:00-12:00=off" for a
line that is needed for something else all morning). The lower of the two caps holds.

`Throttle` is one token bucket shared by every upload stream; it follows the cap as windows
open and close, and measures what actually went out (for the status page's ETA).
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime

_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*=\s*(\d+|off)\s*$", re.IGNORECASE)
PAUSED = 0.0  # a cap of 0 bytes/s: nothing is sent


@dataclass(frozen=True)
class Window:
    start: int  # minutes after midnight, local time
    end: int    # exclusive; at or before start: the window runs past midnight
    kbps: int | None  # 0: no cap; None: off (send nothing)

    def holds(self, minute: int) -> bool:
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end


def parse_windows(text: str) -> list[Window]:
    """The windows of LANCANG_EDGE_WINDOWS; ValueError saying which part is wrong."""
    windows = []
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        found = _WINDOW.match(part)
        if not found:
            raise ValueError(f"LANCANG_EDGE_WINDOWS: {part!r} is not HH:MM-HH:MM=kbit/s (or =off)")
        h1, m1, h2, m2, value = found.groups()
        if int(h1) > 23 or int(h2) > 24 or int(m1) > 59 or int(m2) > 59 or (int(h2) == 24 and int(m2)):
            raise ValueError(f"LANCANG_EDGE_WINDOWS: {part!r} has a time that does not exist")
        kbps = None if value.lower() == "off" else int(value)
        windows.append(Window(int(h1) * 60 + int(m1), int(h2) * 60 + int(m2), kbps))
    return windows


def cap_at(windows: list[Window], base_kbps: int, local: datetime) -> float | None:
    """Bytes per second allowed at this local time: None for no cap, PAUSED for none at all.
    The first window that holds the time counts."""
    minute = local.hour * 60 + local.minute
    window = next((w for w in windows if w.holds(minute)), None)
    if window is not None and window.kbps is None:
        return PAUSED
    caps = [kbps for kbps in (base_kbps, window.kbps if window else 0) if kbps and kbps > 0]
    return min(caps) * 1000 / 8 if caps else None


def paused_until(windows: list[Window], local: datetime) -> str:
    """"HH:MM" when the "off" window holding this time ends ("" when not paused)."""
    minute = local.hour * 60 + local.minute
    window = next((w for w in windows if w.holds(minute)), None)
    if window is None or window.kbps is not None:
        return ""
    return f"{window.end // 60 % 24:02d}:{window.end % 60:02d}"


class Throttle:
    """A token bucket (bytes) shared by the upload streams, whose rate is asked of `cap`
    (a function of the time) at most once a second; it also measures what went out."""

    BURST_S = 0.25  # at most this much of a second's allowance at once
    MEASURE_S = 30.0

    def __init__(self, cap):
        self.cap = cap
        self._lock = threading.Lock()
        self._tokens, self._stamp = 0.0, time.monotonic()
        self._rate, self._asked = None, 0.0
        self._sent: deque[tuple[float, int]] = deque()
        self.total = 0

    def rate(self) -> float | None:
        now = time.monotonic()
        if now - self._asked >= 1.0:
            self._rate, self._asked = self.cap(), now
        return self._rate

    def take(self, n: int, stop: threading.Event) -> bool:
        """Wait until n bytes may go (False when stop is set first)."""
        while not stop.is_set():
            with self._lock:
                rate, now = self.rate(), time.monotonic()
                if rate is None:
                    return True
                if rate > 0:
                    burst = max(rate * self.BURST_S, n)
                    self._tokens = min(burst, self._tokens + (now - self._stamp) * rate)
                self._stamp = now
                if rate > 0 and self._tokens >= n:
                    self._tokens -= n
                    return True
                wait = (n - self._tokens) / rate if rate > 0 else 1.0
            stop.wait(min(wait, 1.0))
        return False

    def sent(self, n: int) -> None:
        """n wire bytes went out (for the measured rate)."""
        now = time.monotonic()
        with self._lock:
            self.total += n
            self._sent.append((now, n))
            while self._sent and now - self._sent[0][0] > self.MEASURE_S:
                self._sent.popleft()

    def measured(self) -> float:
        """Wire bytes per second over the last MEASURE_S (0 when nothing went out)."""
        now = time.monotonic()
        with self._lock:
            while self._sent and now - self._sent[0][0] > self.MEASURE_S:
                self._sent.popleft()
            if not self._sent:
                return 0.0
            span = max(now - self._sent[0][0], 1.0)
            return sum(n for _, n in self._sent) / span
