"""WADO-RS (PS3.18 10.4): instances as Part 10, their metadata (from the index), frames and
bulk data."""


from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy.orm import Session

from imaging import pixels
from imaging.dicomweb import multipart
from imaging.dicomweb.common import (
    accepts_gzip, audit_request, base_url, choose, JSON_OFFERS, maybe_gzipped, not_found, one_hop,
    parse_frame_numbers, PIXEL_TAGS, route_each_level, runtime, TAG
)
from imaging.dicomweb.index import instances_or_404, metadata_body, metadata_rows, Target, target
from imaging.dicomweb.negotiation import Offer
from imaging.dicomweb.objects import (
    accepts_any_syntax, dicom_offers, element_bytes, find_element, frame_numbers_or_404,
    frame_offers, frames_response, load_dataset, prepared_parts
)
from storage import access
from storage.access import Principal
from storage.errors import BadRequest, NotFound

router = APIRouter()


def retrieve(request: Request, session: Session, principal: Principal, where: Target) -> Response:
    rows = instances_or_404(request, session, principal, where, "dicomweb.retrieve")
    offer = choose(request, dicom_offers({r.syntax for r in rows}, single_part=where.sop is not None))
    audit_request(request, principal, "dicomweb.retrieve", object_type=where.level, object_id=where.uid,
                  detail={"instances": len(rows), "transfer_syntax": offer.transfer_syntax})
    store = runtime(request).store
    # Everything that can fail is decided before the status line (PS3.18 8.7): a
    # transcoding error mid-stream used to cut a 200 answer short.
    parts = prepared_parts(store, rows, offer, any_syntax_ok=accepts_any_syntax(request),
                           spool_dir=runtime(request).settings.data_dir / "tmp")
    if not offer.multipart:
        content_type, chunks = parts[0]
        return StreamingResponse(chunks, media_type=content_type)
    boundary = multipart.new_boundary()
    return StreamingResponse(multipart.stream(parts, boundary), media_type=offer.content_type(boundary))


route_each_level(router, "", retrieve, target, (
    ("retrieve_study", 'WADO-RS Retrieve Study: every instance, multipart/related; type="application/dicom".'),
    ("retrieve_series", "WADO-RS Retrieve Series."),
    ("retrieve_instance", "WADO-RS Retrieve Instance.")))

# ---- WADO-RS: metadata ----

def metadata(request: Request, session: Session, principal: Principal, where: Target) -> Response:
    offer = choose(request, JSON_OFFERS)
    rows = metadata_rows(session, access.scope_for(session, principal), where)
    if not rows:
        raise not_found(request, principal, "dicomweb.metadata", where.level, where.uid)
    audit_request(request, principal, "dicomweb.metadata", object_type=where.level, object_id=where.uid,
                  detail={"instances": len(rows)})
    return maybe_gzipped(metadata_body(rows, base_url(request)), offer.media_type, gzip_ok=accepts_gzip(request))


route_each_level(router, "/metadata", metadata, target, (
    ("study_metadata", "WADO-RS Retrieve Study Metadata (DICOM JSON of every instance, from the index)."),
    ("series_metadata", "WADO-RS Retrieve Series Metadata."),
    ("instance_metadata", "WADO-RS Retrieve Instance Metadata (a JSON array of one dataset).")))

# ---- WADO-RS: frames and bulk data ----

@router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frames}")
@one_hop
def retrieve_frames(study: str, series: str, sop: str, frames: str, request: Request,
                    session: Session, principal: Principal):
    """WADO-RS Retrieve Frames (1-based list): uncompressed octet-stream by default, or the
    compressed frames as stored when the client accepts their media type."""
    where, numbers = target(study, series, sop), parse_frame_numbers(frames)
    row = instances_or_404(request, session, principal, where, "dicomweb.frames")[0]
    frame_numbers_or_404(row, numbers)
    offer = choose(request, frame_offers(row.syntax))
    audit_request(request, principal, "dicomweb.frames", object_type="instance", object_id=sop,
                  detail={"frames": numbers[:50], "transfer_syntax": offer.transfer_syntax})
    ds = load_dataset(runtime(request).store, row.key)
    return frames_response(row, ds, numbers, offer, gzip_ok=accepts_gzip(request))


@router.get("/studies/{study}/series/{series}/instances/{sop}/bulkdata/{tag}")
@one_hop
def retrieve_bulkdata(study: str, series: str, sop: str, tag: str, request: Request,
                      session: Session, principal: Principal):
    """WADO-RS Retrieve Bulk Data named by the metadata's BulkDataURI (an 8-hex tag); pixel
    data comes as its frames, one part each."""
    where = target(study, series, sop)
    if not TAG.fullmatch(tag):
        raise BadRequest(f"bulk data {tag[:40]!r}: expected an 8-hex-digit tag")
    row = instances_or_404(request, session, principal, where, "dicomweb.bulkdata")[0]
    pixel = tag.upper() in PIXEL_TAGS
    offers = frame_offers(row.syntax) if pixel else [Offer("application/octet-stream", True),
                                                     Offer("application/octet-stream", False)]
    offer = choose(request, offers)
    ds = load_dataset(runtime(request).store, row.key)
    element = find_element(ds, int(tag, 16))
    if element is None:
        raise NotFound(f"the instance has no bulk data element {tag}")
    audit_request(request, principal, "dicomweb.bulkdata", object_type="instance", object_id=sop,
                  detail={"tag": tag.upper()})
    if pixel:
        return frames_response(row, ds, list(range(1, pixels.number_of_frames(ds) + 1)), offer,
                               gzip_ok=accepts_gzip(request))
    value = element_bytes(element)
    if not offer.multipart:
        return Response(value, media_type=offer.media_type)
    boundary = multipart.new_boundary()
    return Response(multipart.encode([(offer.media_type, value)], boundary),
                    media_type=offer.content_type(boundary))
