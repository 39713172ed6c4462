"""Announce committed series to the workers once they stop receiving.

Thumbnails are per series, so one task after a short quiet period beats one per instance
(a 200-slice CT would otherwise queue 200 tasks). Only committed instances are noted.
If this process dies before announcing, the worker's periodic sweep finds series whose
last_received_at is newer than their derivatives.
"""

from __future__ import annotations

import logging
import threading
import time

from storage import jobs

log = logging.getLogger("lancang.imaging")
QUIET_S = 0.75
TASK = "imaging.derive_series"


class SeriesAnnouncer:
    def __init__(self, db=None, *, quiet_s: float = QUIET_S, send=jobs.send_now):
        self.quiet_s = quiet_s
        self._send = send
        self._pending: dict[int, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="series-announcer", daemon=True)
        self._thread.start()

    def note(self, result) -> None:
        """Called after each committed instance."""
        with self._lock:
            self._pending[result.series_pk] = time.monotonic()

    def _due(self) -> list[int]:
        now = time.monotonic()
        with self._lock:
            due = [pk for pk, seen in self._pending.items() if now - seen >= self.quiet_s]
            for pk in due:
                del self._pending[pk]
        return due

    def _loop(self) -> None:
        while not self._stop.wait(min(0.25, self.quiet_s / 2)):
            self.flush(self._due())

    def flush(self, series_pks: list[int]) -> None:
        for pk in series_pks:
            self._send(TASK, (pk,), "derive", {})
            log.info("imaging.series_announce.ok series_pk=%s", pk)

    def stop(self) -> None:
        """Announce whatever is pending, then stop."""
        self._stop.set()
        self._thread.join(timeout=2)
        with self._lock:
            pending, self._pending = list(self._pending), {}
        self.flush(pending)
