"""A bare pynetdicom Storage SCP: the floor under Lancang's C-STORE figures.

    python bench/bare_scp.py --port P --mode ack|files [--dir D] [--aet LANCANG]

It uses what `lancang dicom` uses on the network side (imaging.scp's server class with
TCP_NODELAY, its PDU size, DUL loop delay, switch interval and transfer syntaxes) and
does, per instance, only

  ack     decode the data set and build the Part 10 bytes (as Lancang's handler does),
          then answer Success: no storage at all;
  files   the same, then write the bytes to DIR/<SOP Instance UID>.dcm through a temporary
          file, fsync it, rename it and fsync the folder (Lancang's object-store write),
          then answer Success: durable, but no index and no DICOM JSON.

bench/dicom_store.py runs both beside Orthanc and Lancang, so every run shows how much of
Lancang's time is pynetdicom's and how much is durability and indexing. It answers C-ECHO
and C-STORE only (no C-FIND: nothing is indexed). One process; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if not __package__:
    sys.path.insert(0, str(REPO))

from pynetdicom import AE, evt
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import Verification

from imaging.scp import (
    GIL_SWITCH_INTERVAL_S,
    MAX_PDU_SIZE,
    NodelayServer,
    preferred_transfer_syntaxes,
    tune_association,
)


def write_durably(folder: Path, name: str, data: bytes) -> None:
    """Temporary file, fsync, rename, fsync the folder: what storage.objects does per object."""
    final = folder / name
    temporary = folder / f".tmp-{threading.get_ident()}-{name}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, final)
    folder_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(folder_fd)
    finally:
        os.close(folder_fd)


def store_handler(mode: str, folder: Path | None):
    def on_c_store(event):
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            data = event.encoded_dataset(include_meta=True)
        except Exception:  # noqa: BLE001 - any decoding failure is the peer's bad data
            return 0xC210
        if mode == "files":
            try:
                write_durably(folder, f"{ds.SOPInstanceUID}.dcm", data)
            except OSError:
                return 0xA700
        return 0x0000

    return on_c_store


def build_ae(aet: str) -> AE:
    ae = AE(ae_title=aet)
    ae.maximum_pdu_size = MAX_PDU_SIZE
    ae.maximum_associations = 16
    ae.add_supported_context(Verification)
    syntaxes = preferred_transfer_syntaxes()
    for context in StoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, syntaxes)
    return ae


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=("ack", "files"), required=True)
    parser.add_argument("--dir", type=Path, help="where --mode files writes (created)")
    parser.add_argument("--aet", default="LANCANG")
    args = parser.parse_args(argv)
    if args.mode == "files":
        if args.dir is None:
            parser.error("--mode files needs --dir")
        args.dir.mkdir(parents=True, exist_ok=True)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    handlers = [(evt.EVT_C_STORE, store_handler(args.mode, args.dir)), (evt.EVT_CONN_OPEN, tune_association)]
    server = build_ae(args.aet).make_server(("127.0.0.1", args.port), evt_handlers=handlers,
                                            server_class=NodelayServer)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    print(f"bare_scp mode={args.mode} listening on 127.0.0.1:{args.port}", flush=True)
    stop.wait()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
