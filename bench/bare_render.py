"""The floor under Lancang's rendered-frame figure: FastAPI + uvicorn + Lancang's pixel pipeline.

    BARE_RENDER_DATA=/tmp/ct800s4 python -m uvicorn bench.bare_render:app --port P

GET /render/{sop} renders frame 1 of that instance's Part 10 file from the data folder with
the code `lancang web` uses for .../frames/1/rendered (`imaging.dicomweb.render.Frames`: the
native grayscale path, whose header is read once per object, else pydicom), in a plain
`def` route (one thread-pool hop, as there). What it leaves out is everything else a Lancang
request does: no token, no database lookup, no access check, no audit record. GET /empty
answers one byte: FastAPI and uvicorn alone. bench/dicomweb.py times both beside Orthanc in
the same run.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI, HTTPException, Response
from pydicom import dcmread

from imaging.dicomweb.render import Frames, RenderOptions, rendered_image


class Folder:
    """The object store's reading side over plain files (a key is a file's path)."""

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        with open(key, "rb") as handle:
            handle.seek(offset)
            return handle.read() if length is None else handle.read(length)


def index_files(folder: Path) -> dict[str, Path]:
    """SOP Instance UID -> file, for every .dcm under the folder."""
    found = {}
    for path in sorted(folder.rglob("*.dcm")):
        ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        found[str(ds.SOPInstanceUID)] = path
    return found


def create_app(folder: Path) -> FastAPI:
    files = index_files(folder)
    store = Folder()
    app = FastAPI()

    @app.get("/render/{sop}")
    def render(sop: str) -> Response:
        path = files.get(sop)
        if path is None:
            raise HTTPException(404, f"no instance {sop}")
        frames = Frames(store, str(path))
        return Response(rendered_image(frames, 0, "image/jpeg", RenderOptions()), media_type="image/jpeg")

    @app.get("/empty")
    def empty() -> Response:
        return Response(b"x", media_type="application/octet-stream")

    return app


app = create_app(Path(os.environ["BARE_RENDER_DATA"])) if "BARE_RENDER_DATA" in os.environ else None
