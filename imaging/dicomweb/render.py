"""WADO-RS rendered and thumbnail resources (PS3.18 10.4.1.1.3, 10.7): JPEG or PNG of a
study's, series' or instance's representative image, or of chosen frames."""

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydicom.dataset import Dataset
from sqlalchemy.orm import Session

from imaging import pixels
from imaging.dicomweb import multipart
from imaging.dicomweb.common import (
    audit_request, choose, decimal, one_hop, parse_frame_numbers, RENDERED, route_each_level, runtime,
    THUMBNAIL_SIZE
)
from imaging.dicomweb.index import instances_or_404, representative, Target, target
from imaging.dicomweb.negotiation import Offer
from imaging.dicomweb.objects import frame_numbers_or_404, load_dataset
from storage.access import Principal
from storage.errors import BadRequest, NotAcceptable, NotFound

# -- rendering --------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderOptions:
    """The PS3.18 8.3.5 rendering parameters, validated before any object is read."""

    window: tuple | None = None
    viewport: tuple | None = None
    quality: int = 90


def render_options(params) -> RenderOptions:
    """window=c,w[,fn], viewport=vw,vh[,sx,sy,sw,sh], quality=1..100; anything else 400."""
    try:
        window = pixels.parse_window(params["window"]) if params.get("window") else None
        viewport = pixels.parse_viewport(params["viewport"]) if params.get("viewport") else None
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    quality = 90
    if params.get("quality"):
        quality = decimal(params["quality"])
        if quality is None or not 1 <= quality <= 100:
            raise BadRequest(f"quality {params['quality'][:20]!r}: an integer from 1 to 100")
    return RenderOptions(window, viewport, quality)


def _pixel_errors(call: Callable[[], bytes]) -> bytes:
    """Map the pixel module's errors: bad arguments 400, no such frame 404, no image 406."""
    try:
        return call()
    except pixels.PixelDataError as exc:
        raise NotAcceptable(f"cannot render: {exc}"[:300]) from None
    except IndexError as exc:
        raise NotFound(str(exc)) from None
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def rendered_image(ds: Dataset, frame: int, media_type: str, options: RenderOptions) -> bytes:
    """One frame (0-based) rendered as JPEG/PNG with window, viewport and quality."""
    return _pixel_errors(lambda: pixels.render(ds, frame, media_type=media_type, window=options.window,
                                               viewport=options.viewport, quality=options.quality))


def thumbnail_image(ds: Dataset, media_type: str, viewport: tuple | None) -> bytes:
    """The representative frame fitted (never enlarged) to the viewport, default 128x128."""
    if media_type == "image/jpeg" and (viewport is None or viewport[0] == viewport[1]):
        size = viewport[0] if viewport else THUMBNAIL_SIZE
        return _pixel_errors(lambda: pixels.thumbnail(ds, size))

    def make() -> bytes:
        width, height = viewport[:2] if viewport else (THUMBNAIL_SIZE, THUMBNAIL_SIZE)
        image = pixels.render_frame(ds, pixels.representative_frame(ds))
        return pixels.encode(pixels.fit(image, width, height), media_type, pixels.THUMBNAIL_QUALITY)

    return _pixel_errors(make)


def rendered_offers(*, several: bool) -> list[Offer]:
    """JPEG (default) or PNG; several frames come as a multipart of images."""
    return [Offer(media_type, several) for media_type in RENDERED]



router = APIRouter()


def render_one(request: Request, session: Session, principal: Principal, where: Target,
               frame: int | None) -> Response:
    """Render the target's representative instance; frame None: its representative frame."""
    options = render_options(request.query_params)
    offer = choose(request, rendered_offers(several=False))
    rows = instances_or_404(request, session, principal, where, "dicomweb.rendered")
    row = representative(rows)
    audit_request(request, principal, "dicomweb.rendered", object_type=where.level, object_id=where.uid,
                  detail={"instance": row.sop, "media_type": offer.media_type})
    ds = load_dataset(runtime(request).store, row.key)
    index = pixels.representative_frame(ds) if frame is None else frame
    return Response(rendered_image(ds, index, offer.media_type, options), media_type=offer.media_type)


def rendered(request: Request, session: Session, principal: Principal, where: Target) -> Response:
    """A study's or series' representative frame; an instance's first frame."""
    return render_one(request, session, principal, where, 0 if where.sop else None)


route_each_level(router, "/rendered", rendered, target, (
    ("study_rendered", "WADO-RS Retrieve Rendered Study: one image of its representative instance."),
    ("series_rendered", "WADO-RS Retrieve Rendered Series: one image of its middle instance."),
    ("instance_rendered", "WADO-RS Retrieve Rendered Instance: its first frame.")))


@router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frames}/rendered")
@one_hop
def frames_rendered(study: str, series: str, sop: str, frames: str, request: Request,
                    session: Session, principal: Principal):
    """WADO-RS Retrieve Rendered Frames: one image, or a multipart of images for several."""
    where, numbers = target(study, series, sop), parse_frame_numbers(frames)
    options = render_options(request.query_params)
    offer = choose(request, rendered_offers(several=len(numbers) > 1))
    row = instances_or_404(request, session, principal, where, "dicomweb.rendered")[0]
    frame_numbers_or_404(row, numbers)
    audit_request(request, principal, "dicomweb.rendered", object_type="instance", object_id=sop,
                  detail={"frames": numbers[:50], "media_type": offer.media_type})
    ds = load_dataset(runtime(request).store, row.key)
    images = [(offer.media_type, rendered_image(ds, n - 1, offer.media_type, options)) for n in numbers]
    if not offer.multipart:
        return Response(images[0][1], media_type=offer.media_type)
    boundary = multipart.new_boundary()
    return Response(multipart.encode(images, boundary), media_type=offer.content_type(boundary))


def thumbnail(request: Request, session: Session, principal: Principal, where: Target) -> Response:
    viewport = render_options(request.query_params).viewport
    offer = choose(request, rendered_offers(several=False))
    row = representative(instances_or_404(request, session, principal, where, "dicomweb.thumbnail"))
    audit_request(request, principal, "dicomweb.thumbnail", object_type=where.level, object_id=where.uid,
                  detail={"instance": row.sop})
    ds = load_dataset(runtime(request).store, row.key)
    return Response(thumbnail_image(ds, offer.media_type, viewport), media_type=offer.media_type)


route_each_level(router, "/thumbnail", thumbnail, target, (
    ("study_thumbnail", "WADO-RS Retrieve Study Thumbnail (viewport=vw,vh; default 128x128)."),
    ("series_thumbnail", "WADO-RS Retrieve Series Thumbnail."),
    ("instance_thumbnail", "WADO-RS Retrieve Instance Thumbnail (its representative frame).")))
