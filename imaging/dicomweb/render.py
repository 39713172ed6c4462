"""WADO-RS rendered and thumbnail resources (PS3.18 10.4.1.1.3, 10.7): JPEG or PNG of a
study's, series' or instance's representative image, or of chosen frames."""

import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydicom import dcmread
from sqlalchemy.orm import Session

from imaging import derive, pixels
from imaging.dicomweb import multipart
from imaging.dicomweb.common import (
    audit_request, choose, decimal, one_hop, parse_frame_numbers, RENDERED, route_each_level, runtime,
    THUMBNAIL_SIZE
)
from imaging.dicomweb.index import instances_or_404, representative, Target, target
from imaging.dicomweb.negotiation import Offer
from imaging.dicomweb.objects import frame_numbers_or_404
from storage.access import Principal
from storage.errors import BadRequest, NotAcceptable, NotFound
from storage.objects import ObjectNotFound

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


# Object key -> pixels.NativeGray, the header of a native grayscale object as rendering needs
# it. A frame seen before then reads only that frame's bytes and never parses the object
# (a 512x512 CT slice: ~0.4-0.6 ms of parsing and header reading saved in-process; the
# no-header-cache variant of bench/dicomweb.py). An object's key carries its content hash
# (storage/keys.py), so an entry is never stale; under 1 KB each, per process.
NATIVE_HEADERS_MAX = 8192
_native_headers: OrderedDict = OrderedDict()
_native_lock = threading.Lock()


def _known_header(key: str) -> "pixels.NativeGray | None":
    with _native_lock:
        header = _native_headers.get(key)
        if header is not None:
            _native_headers.move_to_end(key)
        return header


def _remember_header(key: str, header: "pixels.NativeGray") -> None:
    with _native_lock:
        _native_headers[key] = header
        while len(_native_headers) > NATIVE_HEADERS_MAX:
            _native_headers.popitem(last=False)


class Frames:
    """The frames of one stored object, for rendering: from the frame's bytes alone when the
    object is native grayscale (pixels.native_gray), else from the parsed object."""

    def __init__(self, store, key: str):
        self.store, self.key = store, key
        self.header, self.ds, self._data = _known_header(key), None, None
        if self.header is None:
            self._data = store.get(key)
            self.ds = dcmread(io.BytesIO(self._data))
            self.header = pixels.native_gray(self.ds)
            if self.header is not None:
                _remember_header(key, self.header)

    def representative(self) -> int:
        """0-based frame that stands for the instance (pixels.representative_frame)."""
        return self.header.representative if self.header else pixels.representative_frame(self.ds)

    def _bytes(self, index: int):
        offset, length = self.header.frame_span(index)
        if self._data is not None:
            data = memoryview(self._data)[offset:offset + length]
        else:
            data = self.store.get(self.key, offset, length)
        if len(data) < length:
            raise pixels.PixelDataError(f"frame {index + 1} is beyond the stored pixel data")
        return data

    def image(self, index: int, window=None) -> np.ndarray:
        """Frame `index` (0-based) rendered to uint8 as pixels.render_frame does."""
        if self.header is None:
            return pixels.render_frame(self.ds, index, window)
        return pixels.render_native_frame(self._bytes(index), self.header, window)

    def encoded(self, index: int, media_type: str, options: "RenderOptions") -> bytes:
        """Frame `index` as JPEG/PNG with window, viewport and quality (pixels.render)."""
        if self.header is None:
            return pixels.render(self.ds, index, media_type=media_type, window=options.window,
                                 viewport=options.viewport, quality=options.quality)
        return pixels.render_native(self._bytes(index), self.header, index, media_type=media_type,
                                    window=options.window, viewport=options.viewport, quality=options.quality)


def rendered_image(frames: Frames, frame: int, media_type: str, options: RenderOptions) -> bytes:
    """One frame (0-based) rendered as JPEG/PNG with window, viewport and quality."""
    return _pixel_errors(lambda: frames.encoded(frame, media_type, options))


def thumbnail_image(frames: Frames, media_type: str, viewport: tuple | None) -> bytes:
    """The representative frame fitted (never enlarged) to the viewport, default 128x128
    (a square JPEG at pixels.THUMBNAIL_QUALITY, as pixels.thumbnail makes it)."""
    def make() -> bytes:
        image = frames.image(frames.representative())
        if media_type == "image/jpeg" and (viewport is None or viewport[0] == viewport[1]):
            size = viewport[0] if viewport else THUMBNAIL_SIZE
            try:
                return pixels.encode(pixels.fit(image, size, size), "image/jpeg", pixels.THUMBNAIL_QUALITY)
            except Exception as exc:
                raise pixels.PixelDataError(f"cannot make thumbnail: {exc}") from exc
        width, height = viewport[:2] if viewport else (THUMBNAIL_SIZE, THUMBNAIL_SIZE)
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
    frames = Frames(runtime(request).store, row.key)
    index = frames.representative() if frame is None else frame
    return Response(rendered_image(frames, index, offer.media_type, options), media_type=offer.media_type)


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
    source = Frames(runtime(request).store, row.key)
    images = [(offer.media_type, rendered_image(source, n - 1, offer.media_type, options)) for n in numbers]
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
    store = runtime(request).store
    if row.preview and offer.media_type == "image/jpeg" and viewport in (None, (THUMBNAIL_SIZE, THUMBNAIL_SIZE)) \
            and (row.frames or 1) == 1 and PREVIEW_IS_THUMBNAIL:
        try:  # exactly what would be rendered here (derive.render_jpeg), made once by the worker
            return Response(store.get(row.preview), media_type="image/jpeg")
        except ObjectNotFound:
            pass
    frames = Frames(store, row.key)
    return Response(thumbnail_image(frames, offer.media_type, viewport), media_type=offer.media_type)


# The worker's per-instance preview (imaging/derive.py) is this resource's default thumbnail
# of a single-frame instance: the same frame, size, window and JPEG quality. Served as stored
# when the request asks exactly that (JPEG, no viewport or 128x128): no parse, no decoding.
PREVIEW_IS_THUMBNAIL = (derive.PREVIEW_SIZE == THUMBNAIL_SIZE and derive.JPEG_QUALITY == pixels.THUMBNAIL_QUALITY)


route_each_level(router, "/thumbnail", thumbnail, target, (
    ("study_thumbnail", "WADO-RS Retrieve Study Thumbnail (viewport=vw,vh; default 128x128)."),
    ("series_thumbnail", "WADO-RS Retrieve Series Thumbnail."),
    ("instance_thumbnail", "WADO-RS Retrieve Instance Thumbnail (its representative frame).")))
