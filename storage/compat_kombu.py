"""kombu's filesystem transport, with its message and exchange files written atomically.

The embedded install's broker is a folder of message files (kombu.transport.filesystem).
During the first ingest burst the worker once died with `CRITICAL Unrecoverable error:
JSONDecodeError`. kombu creates a message file with open("wb") and only then writes it,
and a consumer that lists the folder in between renames and parses the empty file; the
exchange table is likewise truncated by open("wb") before its lock is taken, so a
publisher reading the table for routing could parse nothing. Here:

- a message is written under a name no consumer matches, flushed, then renamed to its
  final name (rename is atomic in one folder): a consumer sees whole messages or none;
- a consumer claims a message by renaming it inside the queue folder (kombu moved it to
  the system temp folder, a copy when that is another file system) and skips, rather than
  crashes on, a file it cannot parse, keeping it aside for an operator;
- the exchange table is opened without truncating and rewritten under its lock.

Overriding kombu's private Channel methods is done only here, and checked at import: a
kombu whose filesystem Channel no longer has these methods fails loudly at start.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

log = logging.getLogger("lancang.broker")

_OVERRIDDEN = ("_put", "_get", "_queue_bind", "get_table", "_exchange_file")
_HELPERS = ("exchange_queue_t", "lock", "unlock", "LOCK_SH", "LOCK_EX", "Empty")


def check() -> None:
    missing = [name for name in _OVERRIDDEN if not callable(getattr(filesystem.Channel, name, None))]
    missing += [name for name in _HELPERS if not hasattr(filesystem, name)]
    if missing:
        raise RuntimeError(f"kombu.transport.filesystem changed ({', '.join(missing)}): "
                           "check storage/compat_kombu.py against this kombu version")


check()

WRITING_PREFIX = ".writing-"  # a message being written: partition('.') never names a queue
CLAIMED_PREFIX = ".claimed-"
UNREADABLE_SUFFIX = ".unreadable"


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, WRITING_PREFIX + name)
        try:
            with open(partial, "wb") as handle:
                handle.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            _remove_quietly(partial)
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc

    def _get(self, queue):
        wanted = f"{queue}.msg"
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.partition(".")[2] != wanted:
                continue
            claimed = os.path.join(self.data_folder_in, f"{CLAIMED_PREFIX}{os.getpid()}-{name}")
            try:
                os.rename(os.path.join(self.data_folder_in, name), claimed)
            except OSError:
                continue  # another consumer took it first
            try:
                with open(claimed, "rb") as handle:
                    payload = handle.read()
                message = loads(bytes_to_str(payload))
            except (OSError, ValueError) as exc:
                os.replace(claimed, claimed + UNREADABLE_SUFFIX)
                log.error("broker.message_unreadable file=%s error=%s", name, exc)
                continue
            os.remove(claimed)
            return message
        raise filesystem.Empty()

    def get_table(self, exchange):
        file = self._exchange_file(exchange)
        try:
            with file.open("rb") as handle:
                filesystem.lock(handle, filesystem.LOCK_SH)
                try:
                    return [filesystem.exchange_queue_t(*q) for q in _table(handle.read())]
                finally:
                    filesystem.unlock(handle)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ChannelError(f"Cannot open {file}") from exc

    def _queue_bind(self, exchange, routing_key, pattern, queue):
        file = self._exchange_file(exchange)
        self.control_folder.mkdir(parents=True, exist_ok=True)
        binding = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        try:
            # "a+b" creates without truncating; everything happens under the lock.
            with file.open("a+b", buffering=0) as handle:
                filesystem.lock(handle, filesystem.LOCK_EX)
                try:
                    handle.seek(0)
                    queues = [filesystem.exchange_queue_t(*q) for q in _table(handle.read())]
                    if binding not in queues:
                        queues.insert(0, binding)
                        handle.truncate(0)
                        handle.write(str_to_bytes(dumps(queues)))
                finally:
                    filesystem.unlock(handle)
        except OSError as exc:
            raise ChannelError(f"Cannot open {file}") from exc


def _table(raw: bytes) -> list:
    """An exchange table; an empty file (created by a binder that holds the lock) has none."""
    text = bytes_to_str(raw).strip()
    if not text:
        return []
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ChannelError(f"the exchange table is not JSON: {exc}") from exc


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


class Transport(filesystem.Transport):
    Channel = Channel
