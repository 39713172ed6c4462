"""The edge's client for the region's /api/edge (edge/routes.py).

Standard library http.client over one kept-alive connection per upload stream: the request
body is written piece by piece through the shared Throttle (edge/windows.py), so the cap
holds within a request and a stop is noticed between pieces; socket timeouts notice a line
that went quiet. HTTPS uses the system's CAs (SSL_CERT_FILE names another bundle).

Every failure becomes one of two exceptions: `LinkDown` (the line or the region's server:
try the line again with back-off) or `Refused` (the region said no to this request: sending
the same again will not help until something changes).
"""

from __future__ import annotations

import gzip
import http.client
import json
import logging
import lzma
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from urllib.parse import quote, urlsplit

from edge.windows import PAUSED, Throttle

CONNECT_TIMEOUT_S = 15.0
# No byte moved for this long (the line stalled, or the region stopped answering): give up
# this connection. What the region received so far stays there.
IO_TIMEOUT_S = 30.0
PIECE = 16 * 1024
SHA_MISMATCH = "sha256_mismatch"
PACK_CHUNKS = 24
PACK_AFTER = 16 * 1024 * 1024
log = logging.getLogger("lancang.edge.client")
# Each chunk compressed on its own (so the region can resume after any chunk): xz when the
# region takes it (a third fewer bytes than gzip on CT), else gzip.
ENCODERS = {"xz": lambda raw: lzma.compress(raw, preset=6), "gzip": lambda raw: gzip.compress(raw, 6, mtime=0)}


class LinkDown(Exception):
    """kind: unreachable (no connection), timeout (the line went quiet), dropped (the
    connection broke), server (the region's server failed), busy (try again shortly)."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


class Refused(Exception):
    """kind: credential (401), forbidden (403), not_found (404), conflict or version (409),
    too_large (413), invalid (400/415/422), sha256_mismatch (the bytes arrived damaged)."""

    def __init__(self, kind: str, status: int, detail: str):
        super().__init__(f"{kind} ({status}): {detail}")
        self.kind, self.status, self.detail = kind, status, detail


class Stopped(Exception):
    """The forwarder is stopping: the request was abandoned between two pieces."""


class Paused(Exception):
    """A time window with "off" began: the request was abandoned between two pieces (the
    region keeps what arrived); the instance waits until the window ends."""


_REFUSALS = {401: "credential", 403: "forbidden", 404: "not_found", 409: "conflict", 413: "too_large"}


def _link_kind(exc: BaseException) -> str:
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, (ConnectionRefusedError, socket.gaierror)):
        return "unreachable"
    return "dropped"


class RegionClient:
    """One connection to the region, used by one thread at a time."""

    def __init__(self, base_url: str, credential: str, *, stop: threading.Event, throttle: Throttle | None = None):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"LANCANG_EDGE_REGION_URL {base_url!r} is not an http(s) URL")
        self.https = parts.scheme == "https"
        self.host, self.port = parts.hostname, parts.port or (443 if self.https else 80)
        self.base = parts.path.rstrip("/") + "/api/edge"
        self.credential, self.stop, self.throttle = credential, stop, throttle
        self.encoding = "gzip"  # until the region's hello names a better one
        self._packing = [0.0, 0.0, 0]  # seconds waited on xz, seconds waited on the line, chunks
        # First chunks packed before their request: the next request's of this instance, and
        # the next instance's (prepare). {(sop, offset, encoding): future}
        self._ahead: dict[tuple, Future] = {}
        self.wire_sent = 0
        # Compresses the next chunk while this one is on the line (lzma and zlib free the GIL).
        self._packer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-pack")
        self.raw_sent = 0  # stored bytes sent, against the throttle's wire bytes: the compression
        self.answers = 0   # answers received: a caller tells a lossy line from a dead one by them
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.https:
                conn = http.client.HTTPSConnection(self.host, self.port, timeout=CONNECT_TIMEOUT_S,
                                                   context=ssl.create_default_context())
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=CONNECT_TIMEOUT_S)
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.sock.settimeout(IO_TIMEOUT_S)
            self._conn = conn
        return self._conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def shutdown(self) -> None:
        self.close()
        self._packer.shutdown(wait=False, cancel_futures=True)

    def abort(self) -> None:
        """From another thread: break a request blocked on the line (at stop)."""
        conn = self._conn
        if conn is not None and conn.sock is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _request(self, method: str, path: str, body=None, headers: dict | None = None) -> tuple[int, dict]:
        """(status, JSON answer) for 2xx and 409; LinkDown or Refused otherwise."""
        headers = {"Authorization": f"Bearer {self.credential}", "Accept": "application/json", **(headers or {})}
        if isinstance(body, (dict, list)):
            body, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        try:
            conn = self._connection()
            conn.request(method, self.base + path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise LinkDown(_link_kind(exc), f"{type(exc).__name__}: {exc}"[:300]) from None
        except BaseException:  # stopped, paused, or the body's source failed: the request is half sent
            self.close()
            raise
        if response.will_close:
            self.close()
        self.answers += 1
        return self._answer(response.status, data)

    @staticmethod
    def _answer(status: int, data: bytes) -> tuple[int, dict]:
        try:
            answer = json.loads(data) if data else {}
        except ValueError:
            answer = {"detail": data[:200].decode("utf-8", "replace")}
        if not isinstance(answer, dict):
            answer = {"detail": str(answer)[:200]}
        if 200 <= status < 300 or status == 409 and answer.get("error") in ("offset", "busy", "version"):
            return status, answer
        detail = str(answer.get("detail", ""))[:500]
        if status >= 500 or status == 429:
            raise LinkDown("server", f"{status} {detail}")
        if answer.get("error") == SHA_MISMATCH:
            raise Refused(SHA_MISMATCH, status, detail)
        raise Refused(_REFUSALS.get(status, "invalid"), status, detail)

    # -- the API -------------------------------------------------------------------------------

    def hello(self, report: dict) -> dict:
        return self._request("POST", "/hello", report)[1]

    @staticmethod
    def encoding_from(answer: dict) -> str:
        """The best body encoding both sides know, from the hello's answer."""
        offered = answer.get("encodings") or ["gzip"]
        return next((name for name in ENCODERS if name in offered), "identity")

    def manifest(self, study: str, items: list[dict]) -> dict[str, tuple[bool, int]]:
        """{sop: (done, offset held)} after announcing the study's instances."""
        _, answer = self._request("PUT", f"/studies/{quote(study, safe='')}/manifest", {"instances": items})
        return {item["sop"]: (bool(item["done"]), int(item["offset"])) for item in answer.get("instances", [])}

    def state(self, study: str, sop: str) -> tuple[bool, int]:
        """(done, offset held) of one instance: asked after a break, when the region may hold
        more than its last answer said."""
        _, answer = self._request("GET", f"/studies/{quote(study, safe='')}/instances/{quote(sop, safe='')}")
        return bool(answer.get("done")), int(answer.get("offset", 0))

    def complete(self, study: str) -> dict:
        return self._request("POST", f"/studies/{quote(study, safe='')}/complete")[1]

    def upload(self, *, study: str, sop: str, sha256: str, size: int, offset: int,
               read: Callable[[int, int], bytes], chunk_bytes: int, request_bytes: int,
               progress: Callable[[int], None]) -> str:
        """Send the instance from `offset` until the region has verified it (returns its
        outcome: stored, already, replaced). `progress(offset)` after every answer."""
        path = f"/studies/{quote(study, safe='')}/instances/{quote(sop, safe='')}"
        corrections = 0
        while True:
            length = min(size - offset, max(request_bytes, chunk_bytes))
            encoding = self.encoding  # one encoding per request (a switch takes the next one)
            headers = {"Content-Encoding": encoding, "Content-Type": "application/octet-stream",
                       "Lancang-SHA256": sha256}
            status, answer = self._request("PUT", f"{path}?offset={offset}",
                                           self._pieces(read, offset, length, chunk_bytes, encoding,
                                                        instance=(sop, size)), headers)
            if status == 409:
                offset, corrections = self._resume(answer, corrections)
                continue
            if answer.get("done"):
                progress(size)
                return str(answer.get("outcome", "already"))
            held = int(answer.get("offset", 0))
            if held <= offset and length:  # the line broke at once; say so rather than loop
                raise LinkDown("dropped", f"the region kept nothing of {length} bytes at {offset}")
            offset = held
            progress(offset)

    @staticmethod
    def _resume(answer: dict, corrections: int) -> tuple[int, int]:
        if answer.get("error") == "busy":
            raise LinkDown("busy", str(answer.get("detail", ""))[:200])
        if answer.get("error") == "version" or corrections >= 3:
            raise Refused("version", 409, str(answer.get("detail", ""))[:200])
        return int(answer["offset"]), corrections + 1

    def _note_packing(self, waited_for_xz: float, sending: float) -> None:
        """xz feeds a township line ten times over, but on a fast line a slow (or busy) PC's xz
        is what the line waits for. Once this stream has sent PACK_AFTER bytes (before that the
        socket buffers, the kernel's and a proxy's, take everything at once and sending seems
        free) and then PACK_CHUNKS chunks, if it waited on xz more than twice as long as on the
        line, it compresses with gzip (five times faster) from then on."""
        if self.wire_sent < PACK_AFTER:
            return
        self._packing[0] += waited_for_xz
        self._packing[1] += sending
        self._packing[2] += 1
        waited, sent, chunks = self._packing
        if self.encoding == "xz" and chunks >= PACK_CHUNKS and waited > 2 * sent:
            self.encoding = "gzip"
            log.info("edge.encoding.gzip waited_for_xz=%.1fs waited_for_line=%.1fs chunks=%s", waited, sent, chunks)

    def prepare(self, *, sop: str, size: int, offset: int, read: Callable[[int, int], bytes],
                chunk_bytes: int) -> None:
        """Pack the first chunk of the instance this connection sends next, while the line
        still carries the current one (a chunk a slow PC packs in a second is a second the
        line would otherwise wait, per instance)."""
        if offset < size:
            while len(self._ahead) >= 4:
                del self._ahead[next(iter(self._ahead))]
            self._ahead[(sop, offset, self.encoding)] = self._packer.submit(
                self._pack, read, offset, min(chunk_bytes, size - offset), self.encoding)

    @staticmethod
    def _pack(read: Callable[[int, int], bytes], offset: int, length: int,
              encoding: str) -> tuple[int, bytes, float]:
        raw = read(offset, length)
        encode = ENCODERS.get(encoding)
        if encode is None:
            return len(raw), raw, 0.0
        started = time.perf_counter()
        packed = encode(raw)
        return len(raw), packed, time.perf_counter() - started

    def _pieces(self, read: Callable[[int, int], bytes], offset: int, length: int, chunk_bytes: int,
                encoding: str, instance: tuple[str, int] = ("", 0)) -> Iterator[bytes]:
        """The body: each chunk of the stored bytes compressed on its own (the next one while
        this one is sent, and the next request's first one while this request ends), written
        in pieces no faster than the throttle allows."""
        end, (sop, size) = offset + length, instance
        pack = lambda at, until: self._packer.submit(  # noqa: E731
            self._pack, read, at, min(chunk_bytes, until - at), encoding)
        pending, sending = self._ahead.pop((sop, offset, encoding), None), 0.0
        for stale in [key for key in self._ahead if key[0] == sop]:  # packed for an offset that did not come
            del self._ahead[stale]
        if pending is None and length:
            pending = pack(offset, end)
        while pending is not None:
            waiting = time.perf_counter()
            raw_length, packed, _ = pending.result()
            if encoding == "xz":
                self._note_packing(time.perf_counter() - waiting, sending)
            offset += raw_length
            pending = pack(offset, end) if offset < end and raw_length else None
            if pending is None and raw_length and offset < size:  # the next request starts here
                self._ahead[(sop, offset, encoding)] = pack(offset, size)
            sending = time.perf_counter()
            for start in range(0, len(packed), PIECE):
                piece = packed[start:start + PIECE]
                if self.throttle is not None and self.throttle.rate() == PAUSED:
                    raise Paused()
                if self.throttle is not None and not self.throttle.take(len(piece), self.stop):
                    raise Stopped()
                if self.stop.is_set():
                    raise Stopped()
                yield piece
                self.wire_sent += len(piece)
                if self.throttle is not None:
                    self.throttle.sent(len(piece))
            self.raw_sent += raw_length
            sending = time.perf_counter() - sending
