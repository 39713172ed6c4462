"""The DICOM server pieces the receiver (imaging/scp.py) and the edge's worklist SCP
(edge/mwl.py) share: an AE whose accepted calling titles are the live node registry, and
pynetdicom's threaded server with TCP_NODELAY.

Kept apart from imaging/scp.py on purpose: importing that loads the whole ingest path, and the
worklist process only answers C-FIND (measured: 188 MB RSS with it, 97 MB without it and
without the desk's pinyin dictionary)."""

from __future__ import annotations

import socket
from typing import Protocol

from pynetdicom import AE
from pynetdicom.transport import ThreadedAssociationServer

from imaging import compat_pynetdicom


class TitleRegistry(Protocol):
    def registered_titles(self, address: str | None) -> list[str]:
        """Calling AE titles an association from `address` may use (None: address unknown)."""


def set_nodelay(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:  # not a TCP socket (tests may use others)
        pass


class NodelayServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with TCP_NODELAY on accepted sockets: each pending
    response would otherwise wait ~40 ms for a delayed ACK."""

    def get_request(self):
        client, address = super().get_request()
        set_nodelay(client)
        return client, address


class RegistryAE(AE):
    """An AE whose accepted calling AE titles are the live registry, not a fixed list."""

    def __init__(self, registry: TitleRegistry, ae_title: str):
        super().__init__(ae_title=ae_title)
        self._registry = registry

    @property
    def require_calling_aet(self) -> list[str]:
        # pynetdicom reads this in the association's own thread (an Association is a
        # Thread) while negotiating: the requestor's address is known there. Anywhere else
        # the address is unknown and only AEs bound to no network qualify.
        association = compat_pynetdicom.negotiating_association()
        address = association.requestor.address if association is not None else None
        return self._registry.registered_titles(address)

    @require_calling_aet.setter
    def require_calling_aet(self, value) -> None:  # the registry decides; ignore assignments
        pass
