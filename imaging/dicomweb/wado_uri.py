"""WADO-URI (PS3.18 9) for older viewers: one object as application/dicom, or one frame as
image/jpeg or image/png."""


from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from sqlalchemy.orm import Session

from imaging import pixels
from imaging.dicomweb.common import audit_request, choose, number_param, one_hop, RENDERED, runtime
from imaging.dicomweb.index import instances_or_404, target
from imaging.dicomweb.negotiation import EXPLICIT_VR_LITTLE_ENDIAN as EVRLE, Offer
from imaging.dicomweb.objects import (
    can_transcode_to_explicit_little, frame_numbers_or_404, object_chunks
)
from imaging.dicomweb.render import Frames, render_options, rendered_image, RenderOptions
from storage.access import Principal
from storage.errors import BadRequest, NotAcceptable


def wado_uri_offers(row) -> list[Offer]:
    """WADO-URI representations (PS3.18 9.1.2.1.5): JPEG (the default for images), PNG, or
    the object itself (the default for everything else); transferSyntax is a separate parameter."""
    images = [Offer(media_type) for media_type in RENDERED] if row.rows is not None else []
    return images + [Offer("application/dicom")]


def wado_uri_syntax(row, requested: str | None) -> str:
    """The WADO-URI transferSyntax: Explicit VR LE by default (transcoding when needed) or
    the stored syntax; anything else 406."""
    wanted = (requested or EVRLE).strip()
    if wanted == row.syntax or (wanted == EVRLE and can_transcode_to_explicit_little(row.syntax)):
        return wanted
    raise NotAcceptable(f"the object is stored as {row.syntax} and cannot be sent as {wanted[:70]}")


def wado_uri_render_options(params) -> RenderOptions:
    """WADO-URI rows/columns/windowCenter/windowWidth/imageQuality as rendering options."""
    rows = number_param(params.get("rows"), "rows", minimum=1)
    columns = number_param(params.get("columns"), "columns", minimum=1)
    translated = {}
    if rows or columns:
        translated["viewport"] = f"{columns or pixels.MAX_VIEWPORT},{rows or pixels.MAX_VIEWPORT}"
    center, width = params.get("windowCenter"), params.get("windowWidth")
    if center or width:
        if not (center and width):
            raise BadRequest("windowCenter and windowWidth go together")
        translated["window"] = f"{center},{width}"
    if params.get("imageQuality"):
        translated["quality"] = params["imageQuality"]
    return render_options(translated)


router = APIRouter()


@router.get("/wado")
@one_hop
def wado_uri(request: Request, session: Session, principal: Principal) -> Response:
    """WADO-URI (PS3.18 9): one object as application/dicom, or one frame as image/jpeg|png."""
    params = request.query_params
    if params.get("requestType", "") != "WADO":
        raise BadRequest("requestType must be WADO")
    where = target(*(params.get(name, "") for name in ("studyUID", "seriesUID", "objectUID")))
    row = instances_or_404(request, session, principal, where, "dicomweb.wado_uri")[0]
    offer = choose(request, wado_uri_offers(row), accept=params.get("contentType") or "*/*")
    if offer.media_type == "application/dicom":
        syntax = wado_uri_syntax(row, params.get("transferSyntax"))
        audit_request(request, principal, "dicomweb.wado_uri", object_type="instance", object_id=where.sop,
                      detail={"content_type": offer.media_type, "transfer_syntax": syntax})
        as_sent = Offer("application/dicom", False, syntax)
        return StreamingResponse(object_chunks(runtime(request).store, row, as_sent),
                                 media_type=as_sent.content_type())
    options = wado_uri_render_options(params)
    frame = number_param(params.get("frameNumber"), "frameNumber", minimum=1) or 1
    frame_numbers_or_404(row, [frame])
    audit_request(request, principal, "dicomweb.wado_uri", object_type="instance", object_id=where.sop,
                  detail={"content_type": offer.media_type, "frame": frame})
    frames = Frames(runtime(request).store, row.key)
    return Response(rendered_image(frames, frame - 1, offer.media_type, options), media_type=offer.media_type)
