"""The one place Lancang reaches into pynetdicom beyond its public API, each private detail
checked when this module is imported (a pynetdicom upgrade that moves one fails loudly at
start, not silently at the first association). pyproject.toml bounds the version.

Received C-STORE data sets go to disk as they arrive. By default pynetdicom gathers each
data set in memory (a BytesIO) and only then calls our handler, so a peer sending one
huge uncompressed instance held all of it in the receiver's memory before any size check
could run. With pynetdicom's documented `_config.STORE_RECV_CHUNKED_DATASET` the data set
is written to a temporary file fragment by fragment; the handler checks the file's size
and inflation before reading anything, so memory per association stays bounded.

Private details pinned here:
- `pynetdicom.dimse_messages.NamedTemporaryFile` is pointed at our spool directory (inside
  the data directory, not /tmp, which may be memory-backed and is shared); a data set whose
  association breaks mid-transfer is never unlinked by pynetdicom, so `sweep` removes spool
  files nobody has written to for a while;
- `DULServiceProvider._run_loop_delay`: the DUL thread sleeps this long whenever its queues
  are empty (1 ms by default, several times per C-STORE);
- `AE._servers`: the servers `AE.shutdown()` stops; a server we start ourselves (with our
  own server class) is added so shutdown stops it too;
- an `Association` is the thread that negotiates it (`threading.current_thread()` during
  negotiation is the association: imaging/scp.py reads the requestor's address there).
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import time
from pathlib import Path

import inspect
import threading

from pynetdicom import AE, Association, _config, dimse_messages, dul

from imaging.dataset import MAX_UID_CHARS

log = logging.getLogger("lancang.dicom")

SPOOL_SUFFIX = ".dcm"


def check() -> None:
    """Raise RuntimeError naming every private detail this pynetdicom no longer has."""
    missing = []
    if getattr(dimse_messages.NamedTemporaryFile, "func", dimse_messages.NamedTemporaryFile) \
            is not tempfile.NamedTemporaryFile:
        missing.append("dimse_messages.NamedTemporaryFile")
    if not hasattr(_config, "STORE_RECV_CHUNKED_DATASET") or "UI" not in getattr(_config, "VALIDATORS", {}):
        missing.append("_config.STORE_RECV_CHUNKED_DATASET / _config.VALIDATORS['UI']")
    if "self._run_loop_delay" not in inspect.getsource(dul.DULServiceProvider):
        missing.append("DULServiceProvider._run_loop_delay")
    if "self._servers" not in inspect.getsource(AE.__init__):
        missing.append("AE._servers")
    if not issubclass(Association, threading.Thread):
        missing.append("Association as a Thread")
    if missing:
        raise RuntimeError(f"pynetdicom changed ({', '.join(missing)}): check imaging/compat_pynetdicom.py "
                           "against this pynetdicom version")


check()


def set_dul_loop_delay(assoc, seconds: float) -> None:
    assoc.dul._run_loop_delay = seconds


def register_server(ae, server) -> None:
    """Let `ae.shutdown()` stop a server made with `ae.make_server` and run by us."""
    ae._servers.append(server)


def negotiating_association():
    """The association being negotiated, when called during its negotiation, else None."""
    current = threading.current_thread()
    return current if isinstance(current, Association) else None


def spool_received_datasets(directory: Path) -> Path:
    """Make pynetdicom write received C-STORE data sets under `directory`. Idempotent."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
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
