"""pynetdicom event handlers: thin, they return or yield DICOM statuses.

The work is done by imaging.scp.Receiver, bound to each handler as its argument.
"""

from __future__ import annotations


def on_c_echo(event, receiver):
    """C-ECHO: 0x0000 Success."""
    return 0x0000


def on_c_store(event, receiver):
    """C-STORE: 0x0000 only once the instance is durable and indexed; 0xA700 when the object
    store or database is down; 0xA900 data set does not match / missing UIDs; 0xC210 unparseable."""
    return receiver.store(event)


def on_c_find(event, receiver):
    """C-FIND: yields (0xFF00, identifier) per match, then (0x0000, None); 0xFE00 on cancel."""
    yield from receiver.find(event)


def on_c_get(event, receiver):
    """C-GET: yields the sub-operation count, then (0xFF00, dataset) per instance."""
    yield from receiver.get(event)


def on_c_move(event, receiver):
    """C-MOVE: yields the destination (host, port, options), the count, then datasets."""
    yield from receiver.move(event)


def on_rejected(event, receiver):
    receiver.association_rejected(event)


def on_closed(event, receiver):
    receiver.association_closed(event)
