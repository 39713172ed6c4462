"""The floor under Lancang's rendered-frame figure: FastAPI + uvicorn + Lancang's pixel pipeline.

    BARE_RENDER_DATA=/tmp/ct800s4 python -m uvicorn bench.bare_render:app --port P

GET /render/{sop} reads that instance's Part 10 file from the data folder, parses it with
pydicom and answers `imaging.pixels.render(ds, 0, media_type="image/jpeg")`, as
`lancang web` does for .../frames/1/rendered, in a plain `def` route (one thread-pool hop,
as there). What it leaves out is everything else a Lancang request does: no token, no
database lookup, no access check, no audit record. GET /empty answers one byte: FastAPI and
uvicorn alone. bench/dicomweb.py times both beside Orthanc in the same run.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from fastapi import FastAPI, HTTPException, Response
from pydicom import dcmread

from imaging import pixels


def index_files(folder: Path) -> dict[str, Path]:
    """SOP Instance UID -> file, for every .dcm under the folder."""
    found = {}
    for path in sorted(folder.rglob("*.dcm")):
        ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        found[str(ds.SOPInstanceUID)] = path
    return found


def create_app(folder: Path) -> FastAPI:
    files = index_files(folder)
    app = FastAPI()

    @app.get("/render/{sop}")
    def render(sop: str) -> Response:
        path = files.get(sop)
        if path is None:
            raise HTTPException(404, f"no instance {sop}")
        ds = dcmread(io.BytesIO(path.read_bytes()))
        return Response(pixels.render(ds, 0, media_type="image/jpeg"), media_type="image/jpeg")

    @app.get("/empty")
    def empty() -> Response:
        return Response(b"x", media_type="application/octet-stream")

    return app


app = create_app(Path(os.environ["BARE_RENDER_DATA"])) if "BARE_RENDER_DATA" in os.environ else None
