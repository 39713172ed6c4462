"""A running Lancang DICOM receiver (in this process) with registered AEs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pytest

from imaging.scp import Receiver, start_server
from storage import service
from tests.services import free_port


@dataclass
class Node:
    port: int
    runtime: object
    receiver: Receiver
    server: object

    def stop(self):
        self.server.shutdown()
        self.receiver.ingestor.close()


@pytest.fixture
def node(runtime):
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    with runtime.db.scope() as session:
        service.add_institution(session=session, code="T01", name="思茅镇卫生院", level="township")
        service.add_institution(session=session, code="T02", name="另一镇卫生院", level="township")
        service.add_node(session=session, ae_title="MOD1", institution_code="T01")
        service.add_node(session=session, ae_title="FINDER", institution_code="T01",
                         can="store,query,retrieve")
        service.add_node(session=session, ae_title="OUTSIDER", institution_code="T02",
                         can="store,query,retrieve")
    receiver = Receiver(runtime)
    port = free_port()
    server = start_server(receiver, runtime.settings, host="127.0.0.1", port=port)
    node = Node(port, runtime, receiver, server)
    yield node
    node.stop()


def write_files(directory: Path, blobs: list[bytes]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, blob in enumerate(blobs):
        path = directory / f"{i:04d}.dcm"
        path.write_bytes(blob)
        paths.append(path)
    return paths
