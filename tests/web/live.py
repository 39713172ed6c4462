"""The real app on a loopback port in a thread (uvicorn), for tests that drive it over HTTP
or from Chromium."""

from __future__ import annotations

import contextlib
import threading
import time


@contextlib.contextmanager
def serving(settings, *, log_level: str = "warning"):
    """Serve create_app(settings) on 127.0.0.1:settings.http_port; yields the base URL."""
    import uvicorn

    from web.app import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=settings.http_port,
                                           log_level=log_level))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the app did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{settings.http_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
