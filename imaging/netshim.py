"""The one place Lancang reaches into pynetdicom beyond its public API, checked at start.

Received C-STORE data sets go to disk as they arrive. By default pynetdicom gathers each
data set in memory (a BytesIO) and only then calls our handler, so a peer sending one
huge uncompressed instance held all of it in the receiver's memory before any size check
could run. With pynetdicom's documented `_config.STORE_RECV_CHUNKED_DATASET` the data set
is written to a temporary file fragment by fragment; the handler checks the file's size
and inflation before reading anything, so memory per association stays bounded.

Two private details are pinned here, each checked so a pynetdicom upgrade fails loudly at
start instead of silently writing somewhere else:
- `pynetdicom.dimse_messages.NamedTemporaryFile` is pointed at our spool directory (inside
  the data directory, not /tmp, which may be memory-backed and is shared);
- a data set whose association breaks mid-transfer is never unlinked by pynetdicom, so
  `sweep` removes spool files nobody has written to for a while.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import time
from pathlib import Path

from pynetdicom import _config, dimse_messages

from imaging.dataset import MAX_UID_CHARS

log = logging.getLogger("lancang.dicom")

SPOOL_SUFFIX = ".dcm"


def spool_received_datasets(directory: Path) -> Path:
    """Make pynetdicom write received C-STORE data sets under `directory`. Idempotent."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    current = dimse_messages.NamedTemporaryFile
    original = getattr(current, "func", current)
    if original is not tempfile.NamedTemporaryFile:
        raise RuntimeError("pynetdicom.dimse_messages no longer uses tempfile.NamedTemporaryFile: "
                           "check imaging/netshim.py against this pynetdicom version")
    if not hasattr(_config, "STORE_RECV_CHUNKED_DATASET"):
        raise RuntimeError("pynetdicom has no _config.STORE_RECV_CHUNKED_DATASET: check imaging/netshim.py")
    dimse_messages.NamedTemporaryFile = functools.partial(tempfile.NamedTemporaryFile, dir=str(directory))
    _config.STORE_RECV_CHUNKED_DATASET = True
    return directory


def sweep(directory: Path, idle_s: float) -> int:
    """Remove spool files not written to for `idle_s` seconds (left by broken associations).
    A file still being received is written at least every network timeout, so with `idle_s`
    above that nothing in use is touched."""
    cutoff, removed = time.time() - idle_s, 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if not entry.name.endswith(SPOOL_SUFFIX):
            continue
        try:
            if entry.stat().st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:
            continue
    if removed:
        log.warning("dicom.spool.swept files=%d directory=%s", removed, directory)
    return removed


def accept_sloppy_uids() -> None:
    """Let UIDs longer than 64 characters or with other characters through pynetdicom's DIMSE
    checks (its documented `_config.VALIDATORS["UI"]`), as far as Lancang stores them: real
    devices send such UIDs, pynetdicom refused to decode their C-STORE requests (and to send
    them on a retrieve); the instance is stored exactly as sent with a warning status
    (imaging.dataset.uid_warning), or refused with a status when it cannot be kept."""
    _config.VALIDATORS["UI"] = _lenient_uid


def _lenient_uid(value) -> tuple[bool, str]:
    """Only the length: what Lancang will not keep (imaging.dataset.storable_uid) is refused
    by the C-STORE handler with a status, where refusing it here would abort the association."""
    if 0 < len(str(value)) <= MAX_UID_CHARS:
        return True, ""
    return False, f"longer than {MAX_UID_CHARS} characters"
