"""Running the DICOM receiver (`lancang dicom`): one process, or several behind one socket.

With several, the acceptor accepts connections and passes each file descriptor (SCM_RIGHTS over a Unix
socket pair) to the worker with the fewest open associations; each worker runs the
normal pynetdicom server code on sockets it did not accept itself. SO_REUSEPORT would
be simpler but balances by a hash of the client port, so four associations can land on
one process.
"""

from __future__ import annotations

import logging
import multiprocessing
import selectors
import os
import signal
import socket
import sys
import threading

from pynetdicom import evt

from imaging.announce import SeriesAnnouncer
from imaging.scp import (
    GIL_SWITCH_INTERVAL_S,
    NodelayServer,
    Receiver,
    build_ae,
    event_handlers,
    set_nodelay,
    start_server,
)
from storage.runtime import bootstrap
from storage.settings import Settings

log = logging.getLogger("lancang.dicom")


def _worker(settings: Settings, channel: socket.socket, max_associations: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the acceptor decides when we stop
    # A spawned process starts with no logging configured: set it up like the parent's.
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    import sys

    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)  # as run_receiver
    runtime = bootstrap(settings, component="dicom")
    announcer = SeriesAnnouncer(runtime.db)
    receiver = Receiver(runtime, on_committed=announcer.note)
    ae = build_ae(receiver, settings, max_associations=max_associations)
    send_lock = threading.Lock()

    def closed(_event):
        with send_lock:
            channel.sendall(b"-")

    handlers = event_handlers(receiver) + [(evt.EVT_CONN_CLOSE, closed)]
    # A server that never listens: it only runs associations on sockets handed to it.
    server = ae.make_server(("127.0.0.1", 0), evt_handlers=handlers, server_class=NodelayServer)
    server.socket.close()
    while True:
        try:
            message, fds, _flags, _addr = socket.recv_fds(channel, 256, 1)
        except (ConnectionResetError, OSError):
            break
        if not message:
            break
        client = socket.socket(fileno=fds[0])
        set_nodelay(client)
        host, _, port = message.decode().rpartition(":")
        server.process_request(client, (host, int(port)))
    announcer.stop()
    receiver.ingestor.close()


def run_acceptor(settings: Settings, processes: int) -> None:
    bootstrap(settings, component="dicom").db.dispose()  # migrate before workers start
    context = multiprocessing.get_context("spawn")
    per_worker = max(1, -(-settings.dicom_max_associations // processes))
    workers = []
    for _ in range(processes):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        process = context.Process(target=_worker, args=(settings, theirs, per_worker), daemon=True)
        process.start()
        theirs.close()
        workers.append({"process": process, "channel": ours, "open": 0})

    listener = socket.create_server((settings.bind_host, settings.dicom_port), backlog=64)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, None)
    for worker in workers:
        selector.register(worker["channel"], selectors.EVENT_READ, worker)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    log.info("dicom.start.ok ae=%s address=%s:%s processes=%s", settings.dicom_ae_title,
             settings.bind_host, settings.dicom_port, processes)
    try:
        while not stop.is_set():
            for key, _ in selector.select(timeout=0.5):
                if key.data is None:
                    _hand_over(listener, workers)
                else:
                    closed = key.fileobj.recv(64)
                    key.data["open"] = max(0, key.data["open"] - closed.count(b"-"))
            if any(not w["process"].is_alive() for w in workers):
                log.error("dicom.worker.died; stopping the receiver so the supervisor restarts it")
                break
    finally:
        listener.close()
        for worker in workers:
            worker["channel"].close()
        for worker in workers:
            worker["process"].join(timeout=5)
            if worker["process"].is_alive():
                worker["process"].kill()


def _hand_over(listener: socket.socket, workers: list[dict]) -> None:
    client, (host, port) = listener.accept()[:2]
    target = min(workers, key=lambda w: w["open"])
    try:
        socket.send_fds(target["channel"], [f"{host}:{port}".encode()], [client.fileno()])
        target["open"] += 1
    finally:
        client.close()


def run_receiver(settings: Settings) -> None:
    """`lancang dicom`: serve until SIGTERM/SIGINT."""
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    processes = settings.dicom_processes or min(os.cpu_count() or 1, 4)
    if processes > 1:
        run_acceptor(settings, processes)
        return
    runtime = bootstrap(settings, component="dicom")
    announcer = SeriesAnnouncer(runtime.db)
    receiver = Receiver(runtime, on_committed=announcer.note)
    server = start_server(receiver, settings)
    log.info("dicom.start.ok ae=%s address=%s:%s", settings.dicom_ae_title, *server.server_address)
    _wait_for_signal()
    server.shutdown()
    announcer.stop()
    receiver.ingestor.close()


def _wait_for_signal() -> None:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
