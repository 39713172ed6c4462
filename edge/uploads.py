"""The bytes of a partial upload at the region.

One file per instance version under `<data_dir>/edge_uploads/<edge id>/`, appended while a
request's body arrives (gzip members decompressed on the fly) and synced when the request
ends, breaks or goes idle. The file's length is the offset the edge resumes at: whatever
arrived before a disconnect is kept and never asked for again. An exclusive lock on the file
(flock, so it holds across the web app's processes) lets one request write it at a time: a
request that broke on the edge's side may still be draining here when the edge reconnects.
The file is removed once the instance is verified and indexed, or when its version leaves
the manifest; `sweep` removes what an edge abandoned.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import lzma
import os
import time
import zlib
from pathlib import Path

from starlette.requests import ClientDisconnect, Request

from storage.errors import Invalid, UnsupportedMediaType

UPLOAD_DIR = "edge_uploads"
LOCK_WAIT_S = 5.0
# A body that sends nothing for this long is given up (a stalled line): what arrived is kept,
# and the lock freed for the edge's next attempt.
IDLE_S = 30.0
ABANDONED_S = 14 * 24 * 3600


def partial_path(data_dir: Path, edge_id: int, upload_id: int, sha256: str) -> Path:
    return Path(data_dir).resolve() / UPLOAD_DIR / str(edge_id) / f"{upload_id}-{sha256[:16]}.part"


class PartialFile:
    """A partial upload's file, held under an exclusive lock between acquire and release."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def acquire(self, wait_s: float = LOCK_WAIT_S) -> bool:
        """Lock the file (creating it); False when another request still holds it after wait_s."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + wait_s
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.1)
                continue
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False  # removed by the holder we waited for: lock the new file
            if same:
                self.fd = fd
                return True
            os.close(fd)

    @property
    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)

    def sync(self) -> None:
        os.fsync(self.fd)

    def digest(self) -> str:
        sha = hashlib.sha256()
        with open(self.path, "rb") as handle:
            while block := handle.read(1 << 20):
                sha.update(block)
        return sha.hexdigest()

    def read_all(self) -> bytes:
        return self.path.read_bytes()

    def release(self, *, remove: bool = False) -> None:
        """Unlock (removing the file first when its bytes are no longer wanted)."""
        if self.fd is None:
            return
        if remove:
            self.path.unlink(missing_ok=True)
        os.close(self.fd)  # closing the descriptor releases the flock
        self.fd = None


# What an upload body may be encoded with, best first (the hello's answer tells the edge). xz
# (LZMA) makes a CT's bytes 0.32 of their size against gzip's 0.42 (bench/ctgen.py slices, 1 MiB
# chunks), at ~3 MB/s of one core: ten times what a township line carries.
ENCODINGS = ("xz", "gzip", "identity")


def _decompressor(encoding: str):
    return lzma.LZMADecompressor(lzma.FORMAT_XZ) if encoding == "xz" else zlib.decompressobj(31)


class Inflater:
    """A request body as the stored bytes: xz streams or gzip members one after another (each
    chunk the edge sends is compressed on its own), or identity. Refuses more output than
    `budget` without making it."""

    def __init__(self, encoding: str, budget: int):
        self.encoding = (encoding or "identity").strip().lower()
        if self.encoding not in ENCODINGS:
            raise UnsupportedMediaType(f"Content-Encoding {self.encoding!r}: send one of {', '.join(ENCODINGS)}")
        self.budget = budget
        self._d = _decompressor(self.encoding) if self.encoding != "identity" else None

    def feed(self, data: bytes) -> bytes:
        if self._d is None:
            return self._spend(data)
        out = bytearray()
        try:
            while len(out) <= self.budget:
                out += self._d.decompress(data, self.budget + 1 - len(out))
                if self._d.eof:  # the next chunk's stream (or member) follows
                    data, self._d = self._d.unused_data, _decompressor(self.encoding)
                elif self.encoding == "gzip":
                    data = self._d.unconsumed_tail
                elif self._d.needs_input:
                    data = b""
                else:  # lzma holds more output for what it has read (past the budget: ends the loop)
                    data = b""
                    continue
                if not data:
                    break
        except (zlib.error, lzma.LZMAError) as exc:
            raise Invalid(f"the {self.encoding} body is damaged: {exc}") from None
        return self._spend(bytes(out))

    def _spend(self, data: bytes) -> bytes:
        if len(data) > self.budget:
            raise Invalid("the body holds more bytes than the instance's manifest size")
        self.budget -= len(data)
        return data


async def receive_into(request: Request, partial: PartialFile, inflater: Inflater, idle_s: float = IDLE_S) -> str:
    """Append the request's body to the file as it arrives. Returns how it ended: "end",
    "disconnect" (the edge or the line went away) or "idle" (nothing arrived for idle_s).
    What arrived is appended either way; the caller syncs. Invalid when the body is damaged
    or longer than the instance (nothing of the offending piece is written)."""
    stream = request.stream().__aiter__()
    while True:
        try:
            piece = await asyncio.wait_for(stream.__anext__(), idle_s)
        except StopAsyncIteration:
            return "end"
        except asyncio.TimeoutError:
            return "idle"
        except ClientDisconnect:
            return "disconnect"
        if piece:
            partial.append(inflater.feed(piece))


def sweep(data_dir: Path, older_than_s: float = ABANDONED_S) -> int:
    """Remove partial uploads nobody touched for older_than_s (an edge replaced or retired
    before it finished). Returns how many."""
    root = Path(data_dir).resolve() / UPLOAD_DIR
    removed, cutoff = 0, time.time() - older_than_s
    for path in root.glob("*/*.part"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed
