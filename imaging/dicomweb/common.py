"""What every DICOMweb resource shares: constants, request checks, URLs, media type choice,
the read audit, targets, and `one_hop` (one thread-pool hop per read request)."""

import gzip
import inspect
import json
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from imaging.dicomweb import negotiation
from imaging.dicomweb.negotiation import Offer
from imaging.dataset import MAX_UID_CHARS, storable_uid
from storage import audit
from storage.access import Principal
from storage.deps import principal_of
from storage.errors import BadRequest, NotAcceptable, NotFound

log = logging.getLogger("lancang.dicomweb")

PREFIX = "/dicom-web"
MAX_RESULTS = 1000  # QIDO answers at most this many matches per request (then a Warning)
THUMBNAIL_SIZE = 128
TAG = re.compile(r"[0-9A-Fa-f]{8}")
_DECIMAL = re.compile(r"[0-9]{1,9}")
# Syntaxes whose pixel data is stored native little endian: frames are slices of it.
NATIVE_LITTLE = (negotiation.EXPLICIT_VR_LITTLE_ENDIAN, negotiation.IMPLICIT_VR_LITTLE_ENDIAN,
                  negotiation.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)
PIXEL_TAGS = ("7FE00010", "7FE00008", "7FE00009")  # Pixel Data, Float, Double Float
RENDERED = ("image/jpeg", "image/png")
JSON_OFFERS = (Offer("application/dicom+json"), Offer("application/json"))

# Attributes of a study/series search result, tags as DICOM JSON keys.
RETRIEVE_URL = "00081190"
AVAILABLE_TRANSFER_SYNTAX = "00083002"


# -- request helpers --------------------------------------------------------------------


def check_uid(value: str, what: str) -> str:
    """A UID from a URL or parameter, else 400: what a stored UID may be (digits and dots
    as the standard wants, or a sloppy device's UID kept as sent; imaging.dataset)."""
    if not value or len(value) > MAX_UID_CHARS or not storable_uid(value):
        raise BadRequest(f"{what} {value[:80]!r} is not a valid DICOM UID")
    return value


def decimal(text: str | None) -> int | None:
    """A plain ASCII decimal (at most 9 digits) as an int, else None."""
    text = (text or "").strip()
    return int(text) if _DECIMAL.fullmatch(text) else None


def parse_frame_numbers(text: str) -> list[int]:
    """A PS3.18 frame list ("1", "1,3,5"): 1-based positive integers, else 400."""
    numbers = []
    for piece in text.split(","):
        number = decimal(piece)
        if number is None or number < 1:
            raise BadRequest(f"frame list {text[:80]!r}: frame numbers are integers from 1")
        numbers.append(number)
    if len(numbers) > 10000:
        raise BadRequest("too many frames in one request")
    return numbers


def base_url(request: Request) -> str:
    """The absolute URL of the service, as clients must use it: the configured public URL,
    whose default (http://LANCANG_BIND_HOST:LANCANG_HTTP_PORT) includes the port. Never the
    request's Host header: dicomweb-client sends "Host: 127.0.0.1" without the port, and
    every BulkDataURI then pointed at port 80."""
    return request.app.state.runtime.settings.effective_public_url + PREFIX


def study_url(base: str, study: str) -> str:
    return f"{base}/studies/{study}"


def series_url(base: str, study: str, series: str) -> str:
    return f"{base}/studies/{study}/series/{series}"


def instance_url(base: str, study: str, series: str, sop: str) -> str:
    return f"{base}/studies/{study}/series/{series}/instances/{sop}"


def _source(request: Request) -> str:
    return request.client.host if request.client else ""


def choose(request: Request, offers: Iterable[Offer], accept: str | None = None) -> Offer:
    """The representation to answer with: `accept` query parameter, else the Accept header."""
    offers = list(offers)
    value = accept if accept is not None else (request.query_params.get("accept")
                                               or request.headers.get("accept"))
    try:
        chosen = negotiation.negotiate(value, offers)
    except negotiation.BadAccept as exc:
        raise BadRequest(str(exc)) from None
    if chosen is None:
        raise NotAcceptable(f"none of the acceptable media types can be produced; "
                            f"available: {negotiation.describe(offers)}")
    return chosen


def audit_request(request: Request, principal: Principal, action: str, *, object_type: str, object_id: str,
                  outcome: str = "ok", detail: dict | None = None, change: bool = False) -> None:
    """Audit a read (or, with change=True, a store: synced before the answer like the data).

    Inside `in_one_hop` a read's record is written when the read transaction has ended,
    still before the answer leaves (see there)."""
    fields = {"principal": principal, "action": action, "object_type": object_type,
              "object_id": object_id[:4000], "source": _source(request), "outcome": outcome,
              "detail": detail or {}}
    if change:
        audit.record(request.app.state.runtime.db, **fields)
        return
    pending = getattr(request.state, "pending_read_audits", None)
    if pending is not None:
        pending.append(fields)
    else:
        audit.record_read(request.app.state.runtime.db, **fields)


def not_found(request: Request, principal: Principal, action: str, object_type: str, object_id: str):
    """Audit the denial and raise the same 404 an absent object gets: existence is patient data."""
    audit_request(request, principal, action, object_type=object_type, object_id=object_id, outcome="denied")
    return NotFound(f"未找到 / {object_type} not found")


def number_param(text: str | None, name: str, *, minimum: int) -> int | None:
    if text is None or text == "":
        return None
    number = decimal(text)
    if number is None or number < minimum:
        raise BadRequest(f"{name}={text[:20]!r}: an integer from {minimum}")
    return number


# Uncompressed frames and metadata go gzipped (level 1) to a client that accepts it: a 512x512
# CT slice shrinks to ~0.4 of its size for ~6 ms of one core, a series' metadata to ~0.1; every
# browser inflates natively. bench/reading.py measures it on throttled links.
GZIP_LEVEL = 1
GZIP_MIN_BYTES = 8192


def accepts_gzip(request: Request) -> bool:
    return any(part.split(";")[0].strip() == "gzip"
               for part in request.headers.get("accept-encoding", "").lower().split(","))


def maybe_gzipped(body: bytes, media_type: str, *, gzip_ok: bool) -> Response:
    """The body gzipped when the client accepts it and it is worth it, else as it is."""
    if gzip_ok and len(body) >= GZIP_MIN_BYTES:
        return Response(gzip.compress(body, GZIP_LEVEL, mtime=0), media_type=media_type,
                        headers={"Content-Encoding": "gzip", "Vary": "Accept-Encoding"})
    return Response(body, media_type=media_type, headers={"Vary": "Accept-Encoding"})


def json_response(payload: Any, offer: Offer, status: int = 200, headers: dict | None = None) -> Response:
    content = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Response(content, status_code=status, media_type=offer.media_type, headers=headers)


def in_one_hop(authenticate: Callable[[Request, Session], Principal]):
    """Make `work(..., request, session, principal)` an endpoint that runs in one thread-pool hop.

    The read resources are many small requests. As FastAPI dependencies, the read session
    and the principal would cost a hop each (plus the endpoint's own) and anyio's exit-stack
    machinery around them, more than a study search's SQL. Here one worker thread opens the
    read unit of work, authenticates (`authenticate`, the web layer's token check), runs the
    work, ends the transaction and writes the read audits the work asked for (`audit_request`).
    The endpoint's signature is `work`'s without `session` and `principal`, so FastAPI still
    validates and documents the path parameters; GET requests reach `endpoint.unit_of_work`
    through imaging/dicomweb/lane.py without FastAPI's routing.

    The audits wait for the read transaction's end because, on SQLite, a write committed
    while the same request still reads keeps the WAL from ever rewinding under steady
    load (each checkpoint finds a reader in it); they are committed before the answer
    leaves, whether the work succeeded or was refused.
    """

    def decorate(work: Callable[..., Response]):
        signature = inspect.signature(work)
        kept = [p for name, p in signature.parameters.items() if name not in ("session", "principal")]

        def unit_of_work(kwargs: dict) -> Response:
            request = kwargs["request"]
            db = request.app.state.runtime.db
            request.state.pending_read_audits = pending = []
            try:
                with db.scope(readonly=True) as session:
                    return work(session=session, principal=authenticate(request, session), **kwargs)
            finally:
                request.state.pending_read_audits = None
                audit.record_reads(db, pending)

        async def endpoint(**kwargs):
            return await run_in_threadpool(unit_of_work, kwargs)

        endpoint.unit_of_work = unit_of_work  # what imaging.dicomweb.lane runs for GET requests
        endpoint.__signature__ = signature.replace(parameters=kept)
        endpoint.__name__, endpoint.__qualname__, endpoint.__doc__ = work.__name__, work.__qualname__, work.__doc__
        return endpoint

    return decorate



one_hop = in_one_hop(principal_of)  # read routes: session and principal supplied by one_hop

# The three WADO-RS levels a resource is named at, and the path parameters of each.
LEVEL_PATHS = (("/studies/{study}", ("study",)),
               ("/studies/{study}/series/{series}", ("study", "series")),
               ("/studies/{study}/series/{series}/instances/{sop}", ("study", "series", "sop")))


def add_read_route(router, path: str, uids: tuple, name: str, doc: str,
                   call: Callable[..., Response]) -> None:
    """Route GET `path` to `call(request, session, principal, **uids)` in one hop.

    For resources whose route functions would differ only in their path parameters: the
    endpoint's signature is made here from `uids`, so FastAPI validates and documents them;
    `name` keeps the OpenAPI operation id a separate route function of that name would have."""

    def endpoint(request: Request, session: Session, principal: Principal, **path_uids: str) -> Response:
        return call(request, session, principal, **path_uids)

    keyword = inspect.Parameter.KEYWORD_ONLY
    parameters = [inspect.Parameter(uid, keyword, annotation=str) for uid in uids]
    parameters += [inspect.Parameter(arg, keyword, annotation=annotation)
                   for arg, annotation in (("request", Request), ("session", Session), ("principal", Principal))]
    endpoint.__signature__ = inspect.Signature(parameters)
    endpoint.__name__ = endpoint.__qualname__ = name
    endpoint.__doc__ = doc
    router.add_api_route(path, one_hop(endpoint), methods=["GET"], name=name)


def route_each_level(router, suffix: str, work: Callable[..., Response], make_target: Callable[..., Any],
                     endpoints: tuple[tuple[str, str], ...]) -> None:
    """Route GET `<study|series|instance path><suffix>` to `work(request, session, principal, target)`.

    WADO-RS names most resources at all three levels with the same meaning; one call here
    replaces three route functions that differ only in their path parameters. `endpoints`
    gives each level's operation name and description, in LEVEL_PATHS order."""

    def call(request: Request, session: Session, principal: Principal, **uids: str) -> Response:
        return work(request, session, principal, make_target(**uids))

    for (path, uids), (name, doc) in zip(LEVEL_PATHS, endpoints, strict=True):
        add_read_route(router, path + suffix, uids, name, doc, call)


def runtime(request: Request):
    return request.app.state.runtime
