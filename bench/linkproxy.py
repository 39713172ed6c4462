"""A slow, faulty link in user space: a TCP proxy that limits the rate (one bucket per
direction, shared by every connection: one line), adds one-way delay, and, when asked, drops a
connection every ~N bytes and has timed outages. Deterministic and needs nothing from the
kernel (this one has no netem; TESTING.md).

DevTools throttling reaches only the page's own requests; a viewer that fetches from a web
worker (OHIF's image loader) escapes it. Everything between the browser and a server passes
this proxy, so two viewers compared on it get the same link (bench/reading.py). The edge's
faulty line (bench/edge_forward.py, tests/edge/test_faulty_line.py) adds the faults:

    with LinkProxy(upstream_port, rate_bits=8_000_000, rtt_ms=40) as link:
        url = f"http://127.0.0.1:{link.port}"
    with FaultProxy(upstream_port, rate_bits=2_000_000, rtt_ms=150, drop_every=20_000_000,
                    seed=1) as line:
        line.outage_in(60, seconds=60, mode="stall")   # from now

- Drops: every forwarded byte (both directions) counts; when the count passes the next
  threshold, the connection carrying that byte is cut at once (both sides aborted, as a
  modem losing its carrier looks to each end). Thresholds are exponentially distributed
  around `drop_every` (seeded: the same run twice drops at the same bytes), or exactly every
  `drop_every` bytes with `jitter=False`.
- Outages: "refuse" closes the listening socket and cuts every connection (new connections
  are refused) for the duration; "stall" forwards nothing, in either direction, on old or new
  connections, and then carries on with what was held (TCP would have retransmitted it), so
  an endpoint notices only through its own timeouts.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time

CHUNK = 16 * 1024


class _Bucket:
    """Tokens in bytes for one direction of the line."""

    def __init__(self, rate_bytes: float | None, burst: int = 32 * 1024):
        self.rate, self.burst = rate_bytes, burst
        self.tokens, self.stamp = float(burst), time.monotonic()
        self.lock = asyncio.Lock()

    async def take(self, n: int) -> None:
        if not self.rate:
            return
        async with self.lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= n:
                    self.tokens -= n
                    return
                await asyncio.sleep((n - self.tokens) / self.rate)


class _Connection:
    def __init__(self, client_writer, upstream_writer):
        self.writers = (client_writer, upstream_writer)
        self.cut = False

    def abort(self) -> None:
        self.cut = True
        for writer in self.writers:
            writer.transport.abort()


class FaultProxy:
    """Listens on 127.0.0.1:<port> in its own thread and event loop."""

    def __init__(self, upstream_port: int, *, rate_bits: float | None = None, rtt_ms: float = 0,
                 drop_every: int | None = None, jitter: bool = True, seed: int = 0, upstream_host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.rate_bytes = rate_bits / 8 if rate_bits else None
        self.delay = rtt_ms / 2000
        self.drop_every, self.jitter = drop_every, jitter
        self.random = random.Random(seed)
        self.port = 0
        self.forwarded = 0          # bytes, both directions
        self.upstream_bytes = 0     # of them, towards the upstream server (the region)
        self.received = 0           # of them, towards the client (the browser)
        self.drops = 0
        self.outages: list[tuple[float, float, str]] = []  # (started, seconds, mode) done or running
        self.connections = 0
        self._next_drop = self._threshold(0)
        self._live: set[_Connection] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="linkproxy")
        self._server = None

    def _threshold(self, after: int) -> float:
        if not self.drop_every:
            return float("inf")
        gap = self.random.expovariate(1 / self.drop_every) if self.jitter else self.drop_every
        return after + max(gap, CHUNK)

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fault proxy did not start")
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self.down, self.up = _Bucket(self.rate_bytes), _Bucket(self.rate_bytes)
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._loop.run_until_complete(self._listen(0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _listen(self, port: int) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", port, reuse_address=True)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self._live):
            connection.abort()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- faults --------------------------------------------------------------------------------

    def outage_in(self, delay_s: float, *, seconds: float, mode: str = "refuse") -> None:
        """An outage starting delay_s from now (any thread)."""
        if mode not in ("refuse", "stall"):
            raise ValueError("mode is refuse or stall")
        self._loop.call_soon_threadsafe(self._loop.call_later, delay_s,
                                        lambda: asyncio.ensure_future(self._outage(seconds, mode)))

    def cut_all(self) -> None:
        """Drop every open connection now (any thread)."""
        self._loop.call_soon_threadsafe(lambda: [c.abort() for c in list(self._live)])

    @property
    def in_outage(self) -> bool:
        now = time.monotonic()
        return any(start <= now < start + seconds for start, seconds, _ in self.outages)

    async def _outage(self, seconds: float, mode: str) -> None:
        self.outages.append((time.monotonic(), seconds, mode))
        if mode == "stall":
            self._flowing.clear()
            await asyncio.sleep(seconds)
            self._flowing.set()
            return
        self._server.close()
        for connection in list(self._live):
            connection.abort()
        await asyncio.sleep(seconds)
        await self._listen(self.port)

    # -- forwarding ------------------------------------------------------------------------------

    async def _client(self, reader, writer) -> None:
        await self._flowing.wait()  # a stalled line does not even complete the upstream connect
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        connection = _Connection(writer, up_writer)
        self._live.add(connection)
        self.connections += 1
        try:
            await asyncio.gather(self._pipe(reader, up_writer, self.up, connection, True),
                                 self._pipe(up_reader, writer, self.down, connection, False),
                                 return_exceptions=True)
        except asyncio.CancelledError:
            pass
        finally:
            self._live.discard(connection)
            for end in connection.writers:
                end.close()

    async def _pipe(self, reader, writer, bucket: _Bucket, connection: _Connection, upstream: bool) -> None:
        """Forward pieces no earlier than `delay` after they arrived, within the rate, while the
        line flows; cut the connection when the byte count passes the next drop threshold."""
        queue: asyncio.Queue = asyncio.Queue(maxsize=4)  # bounded: the sender feels the line

        async def send() -> None:
            while True:
                arrived, data = await queue.get()
                if data is None:
                    break
                if connection.cut:
                    continue  # keep the reader going until it sees the end
                wait = arrived + self.delay - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._flowing.wait()
                await bucket.take(len(data))
                if connection.cut:
                    continue
                self.forwarded += len(data)
                if self.forwarded >= self._next_drop:
                    self._next_drop = self._threshold(self.forwarded)
                    self.drops += 1
                    connection.abort()
                    continue
                if upstream:
                    self.upstream_bytes += len(data)
                else:
                    self.received += len(data)
                writer.write(data)
                try:
                    await writer.drain()
                except ConnectionError:
                    connection.abort()
            if not connection.cut and writer.can_write_eof():
                writer.write_eof()

        sender = asyncio.ensure_future(send())
        try:
            while data := await reader.read(CHUNK):
                await queue.put((time.monotonic(), data))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        await queue.put((time.monotonic(), None))
        await asyncio.gather(sender, return_exceptions=True)


class LinkProxy(FaultProxy):
    """The line without faults: a rate and a delay."""

    def __init__(self, upstream_port: int, *, rate_bits: float, rtt_ms: float):
        super().__init__(upstream_port, rate_bits=rate_bits, rtt_ms=rtt_ms)
