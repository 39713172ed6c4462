"""A slow link in user space: a TCP proxy that adds one-way delay and shares one rate limit
between every connection through it (TESTING.md: deterministic, needs nothing from the kernel).

DevTools throttling reaches only the page's own requests; a viewer that fetches from a web
worker (OHIF's image loader) escapes it. Everything between the browser and a server passes
this proxy, so two viewers compared on it get the same link.

    with LinkProxy(upstream_port, rate_bits=8_000_000, rtt_ms=40) as link:
        url = f"http://127.0.0.1:{link.port}"
"""

from __future__ import annotations

import asyncio
import threading
import time

CHUNK = 16 * 1024


class _Bucket:
    """A token bucket in bytes, shared by every connection in one direction."""

    def __init__(self, rate_bytes: float, burst: int = 32 * 1024):
        self.rate, self.burst = rate_bytes, burst
        self.tokens, self.stamp = float(burst), time.monotonic()
        self.lock = asyncio.Lock()

    async def take(self, n: int) -> None:
        async with self.lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= n:
                    self.tokens -= n
                    return
                await asyncio.sleep((n - self.tokens) / self.rate)


class LinkProxy:
    """Listens on 127.0.0.1:<port> in its own thread and event loop."""

    def __init__(self, upstream_port: int, *, rate_bits: float, rtt_ms: float):
        self.upstream_port = upstream_port
        self.rate_bytes = rate_bits / 8
        self.delay = rtt_ms / 2000  # one way, seconds
        self.port = 0
        self.received = 0  # bytes sent towards the browser
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "LinkProxy":
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _close(self) -> None:
        """Stop listening and end every connection's tasks (no task left pending at exit)."""
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self.down, self.up = _Bucket(self.rate_bytes), _Bucket(self.rate_bytes)
        server = self._loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self._server = server
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _client(self, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(self._pipe(reader, up_writer, self.up, False),
                                 self._pipe(up_reader, writer, self.down, True), return_exceptions=True)
        except asyncio.CancelledError:
            pass  # the proxy is closing with this connection open: nothing to report

    async def _pipe(self, reader, writer, bucket: _Bucket, towards_browser: bool) -> None:
        """Forward chunks, each no earlier than `delay` after it arrived, within the rate."""
        # Bounded: a full queue stops reading upstream, so the server feels the link (TCP
        # backpressure) as it would on a real one.
        queue: asyncio.Queue = asyncio.Queue(maxsize=4)

        async def send() -> None:
            while True:
                arrived, data = await queue.get()
                if data is None:
                    break
                wait = arrived + self.delay - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await bucket.take(len(data))
                writer.write(data)
                await writer.drain()
                if towards_browser:
                    self.received += len(data)
            writer.close()

        sender = asyncio.ensure_future(send())
        try:
            while data := await reader.read(CHUNK):
                await queue.put((time.monotonic(), data))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        await queue.put((time.monotonic(), None))
        await asyncio.gather(sender, return_exceptions=True)
