"""14.10: the embedded broker (a folder of message files) under a burst of concurrent
announcements. With kombu's own filesystem transport two producer and two consumer
processes lost 131 of 600 messages, each a `JSONDecodeError` (a consumer read a message
file that its producer had created but not yet written; in the worker that error is
"Unrecoverable" and kills it). storage/compat_kombu.py writes every file atomically."""

from __future__ import annotations

import multiprocessing
import os
import time

from kombu import Connection

from tests.conftest import embedded_settings
from storage.broker import make_celery

PER_PRODUCER = 150
PAYLOAD = "x" * 100_000  # a big message takes long enough to write for the race to show


def _options(folder: str) -> dict:
    return {"data_folder_in": folder, "data_folder_out": folder, "control_folder": folder + "/control",
            "store_processed": False}


def _produce(transport: str, folder: str, producer: int) -> None:
    with Connection("filesystem://", transport=transport, transport_options=_options(folder)) as connection:
        channel = connection.channel()
        for n in range(PER_PRODUCER):
            channel._queue_bind("lancang", f"q{producer}", None, f"q{producer}")  # binds race the table too
            channel._put("derive", {"n": producer * 100_000 + n, "pad": PAYLOAD})


def _consume(transport: str, folder: str, stop: str, results) -> None:
    got, errors = [], []
    with Connection("filesystem://", transport=transport, transport_options=_options(folder)) as connection:
        channel = connection.channel()
        while not os.path.exists(stop):
            try:
                got.append(channel._get("derive")["n"])
                channel.get_table("lancang")
            except Exception as exc:  # Empty is the only expected one
                if type(exc).__name__ != "Empty":
                    errors.append(repr(exc)[:120])
    results.put((got, errors))


def test_a_burst_of_concurrent_announcements_loses_nothing(tmp_path):
    app = make_celery(embedded_settings(tmp_path / "var"))
    transport = app.conf.broker_transport or "filesystem"
    folder = str(tmp_path / "queue")
    os.makedirs(folder)
    stop = str(tmp_path / "stop")
    spawn = multiprocessing.get_context("spawn")
    results = spawn.Queue()
    consumers = [spawn.Process(target=_consume, args=(transport, folder, stop, results)) for _ in range(2)]
    producers = [spawn.Process(target=_produce, args=(transport, folder, p)) for p in range(2)]
    for process in consumers + producers:
        process.start()
    for process in producers:
        process.join(timeout=120)
    deadline = time.monotonic() + 30
    while any(name.endswith(".derive.msg") for name in os.listdir(folder)) and time.monotonic() < deadline:
        time.sleep(0.05)
    open(stop, "w").close()
    outcomes = [results.get(timeout=30) for _ in consumers]
    for process in consumers:
        process.join(timeout=10)
    received = [n for got, _ in outcomes for n in got]
    errors = [e for _, e in outcomes for e in e]
    assert errors == []
    assert sorted(received) == sorted(p * 100_000 + n for p in range(2) for n in range(PER_PRODUCER))
    assert [name for name in os.listdir(folder) if name != "control"] == []


def test_a_kombu_without_the_overridden_methods_fails_loudly(monkeypatch):
    import pytest

    from storage import compat_kombu

    compat_kombu.check()
    monkeypatch.delattr(compat_kombu.filesystem.Channel, "_queue_bind")
    with pytest.raises(RuntimeError, match="_queue_bind"):
        compat_kombu.check()
