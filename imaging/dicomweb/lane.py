"""The read lane: GET requests for the one-hop read resources, routed without FastAPI.

For a study search FastAPI's part of a request (matching the path against the app's routes,
solving the endpoint's parameters, its exception and exit-stack middleware) cost ~0.27 ms
in-process, more than the search's own SQL (bench/dicomweb.py). The read resources declare
no dependencies and take only their path parameters and the request (`common.in_one_hop`),
so this pure ASGI middleware matches GET paths against the same routes' templates, in the
routers' order, and runs the same unit of work in a thread of its own pool (anyio's
run_in_threadpool, with its capacity limiter and cancel scopes, was most of what was left on
the event loop per request; the pool has anyio's default size). The routes stay on
the FastAPI routers (OpenAPI, HEAD, anything the lane does not match falls through to them),
and errors are answered by the app's own exception handlers, as FastAPI would answer them.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from concurrent.futures import ThreadPoolExecutor

from starlette.requests import Request
from starlette.routing import compile_path

from imaging.dicomweb.common import PREFIX


def read_routes(routers) -> list[tuple]:
    """(compiled path, convertors, unit of work) of each one-hop GET route, in order."""
    table = []
    for router in routers:
        for route in router.routes:
            unit = getattr(getattr(route, "endpoint", None), "unit_of_work", None)
            if unit is None or "GET" not in (getattr(route, "methods", None) or ()):
                continue
            regex, _format, convertors = compile_path(PREFIX + route.path)
            taken = set(inspect.signature(route.endpoint).parameters) - {"request"}
            if taken != set(convertors):  # a parameter the lane cannot supply: FastAPI's route
                continue
            table.append((regex, convertors, unit))
    return table


THREADS = 40  # anyio's default thread limit, which the same work had through FastAPI
_pool = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="dicomweb-read")


class ReadLane:
    """Pure ASGI middleware: a GET for a one-hop read route runs its unit of work directly."""

    def __init__(self, app, routers):
        self.app = app
        self.table = read_routes(routers)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "GET" or not scope["path"].startswith(PREFIX + "/"):
            await self.app(scope, receive, send)
            return
        for regex, convertors, unit in self.table:
            match = regex.match(scope["path"])
            if match is not None:
                break
        else:
            await self.app(scope, receive, send)
            return
        params = {name: convertors[name].convert(value) for name, value in match.groupdict().items()}
        scope["path_params"] = params
        request = Request(scope, receive)
        context = contextvars.copy_context()  # as run_in_threadpool does
        try:
            response = await asyncio.get_running_loop().run_in_executor(
                _pool, context.run, unit, dict(params, request=request))
        except Exception as exc:
            handler = _handler_for(scope["app"], exc)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)


def _handler_for(app, exc: Exception):
    """The app's exception handler for `exc` (nearest class first), as Starlette looks it up."""
    handlers = getattr(app, "exception_handlers", {})
    for cls in type(exc).__mro__:
        if cls in handlers:
            return handlers[cls]
    return None
