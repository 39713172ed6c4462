"""A pynetdicom Storage SCU for tests that need per-instance statuses or odd payloads."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from pynetdicom import AE, evt
from pynetdicom.presentation import StoragePresentationContexts


def _nodelay(event):
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def send_files(port: int, paths: list[Path], *, calling: str = "MOD1", called: str = "LANCANG") -> list[int]:
    """C-STORE each file as stored on disk (pynetdicom sends the file's dataset bytes unchanged);
    returns the status per file (-1 when no response came back)."""
    ae = AE(ae_title=calling)
    for context in StoragePresentationContexts[:120]:
        ae.add_requested_context(context.abstract_syntax, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    assoc = ae.associate("127.0.0.1", port, ae_title=called, evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)])
    assert assoc.is_established, "association refused"
    statuses = []
    try:
        for path in paths:
            status = assoc.send_c_store(Path(path))
            statuses.append(int(status.Status) if status is not None and "Status" in status else -1)
    finally:
        assoc.release()
    return statuses


def dataset_bytes(part10: bytes) -> bytes:
    """The data set of a Part 10 file without preamble and file meta (group 0002)."""
    meta_length = int.from_bytes(part10[140:144], "little")  # (0002,0000) UL value
    return part10[144 + meta_length:]


def send_raw(port: int, sop_class: str, sop_uid: str, payload: bytes, *, calling: str = "MOD1") -> int:
    """C-STORE arbitrary data set bytes (which no well-behaved SCU would send) and return
    the status; this goes below send_c_store, which refuses to send what it cannot parse."""
    from io import BytesIO

    from pynetdicom.dimse_primitives import C_STORE

    ae = AE(ae_title=calling)
    ae.add_requested_context(sop_class, ["1.2.840.10008.1.2.1"])
    assoc = ae.associate("127.0.0.1", port, ae_title="LANCANG", evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)])
    assert assoc.is_established
    try:
        request = C_STORE()
        request.MessageID = 1
        request.AffectedSOPClassUID = sop_class
        request.AffectedSOPInstanceUID = sop_uid
        request.Priority = 2
        request.DataSet = BytesIO(payload)
        context = assoc._get_valid_context(sop_class, "", "scu")
        # Pause the association's reactor as send_c_store does, so the response comes to us.
        assoc._reactor_checkpoint.clear()
        while not assoc._is_paused:
            time.sleep(0.0001)
        assoc.dimse.send_msg(request, context.context_id)
        _cx, response = assoc.dimse.get_msg(block=True)
        assoc._reactor_checkpoint.set()
        return int(response.Status) if response is not None else -1
    finally:
        assoc.release()
