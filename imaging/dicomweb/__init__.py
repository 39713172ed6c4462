"""DICOMweb Studies Service (PS3.18 10.3-10.6) at /dicom-web, and WADO-URI for older viewers.

Resources:
  STOW-RS  POST /studies[/{study}]                         multipart/related; type="application/dicom"
  QIDO-RS  GET  /studies, /series, /instances,
                /studies/{s}/series, /studies/{s}/instances, /studies/{s}/series/{se}/instances
  WADO-RS  GET  /studies/{s}[/series/{se}[/instances/{i}]]  Part 10 objects, multipart
                .../metadata                                DICOM JSON from the index only
                .../rendered, .../thumbnail                 image/jpeg, image/png
                .../instances/{i}/frames/{list}[/rendered]  pixel data per frame (1-based)
                .../instances/{i}/bulkdata/{tag}            the BulkDataURIs of the metadata
  WADO-URI GET  /wado?requestType=WADO&studyUID=&seriesUID=&objectUID=&contentType=

Rules that hold everywhere:
  * The caller is a user (bearer token or browser session); what they may see is
    `storage.access.scope_for`, applied in the SQL of every lookup. A study that is not
    visible answers exactly like one that does not exist (404); searches just do not match it.
  * Every read and every denial is audited (`audit.record_read`), with the object ids and counts.
  * Searches and metadata are answered from the index: stored DICOM JSON text is concatenated,
    never re-parsed per instance for metadata, and objects are never opened for them.
  * Media types are negotiated by `imaging.negotiation` (PS3.18 8.7): 406 only when nothing
    acceptable can be produced. Objects are served as stored or transcoded to Explicit VR
    Little Endian (decompressed with pydicom); other transcodings are not offered.
  * Empty search results answer 200 with [] (PS3.18 allows 204; a JSON array is simpler
    for every client and cannot be mistaken for an error).
  * Bad input answers 400 (bad UIDs, frame 0, bad window/viewport/quality), never 500.
  * GET reads are routed by `lane.ReadLane` to the same units of work as the routes here,
    around FastAPI's per-request machinery (install_read_lane; web/app.py installs it).
"""

from fastapi import APIRouter

from imaging.dicomweb import qido, render, stow, wado, wado_uri
from imaging.dicomweb.common import PREFIX
from imaging.dicomweb.lane import ReadLane
from imaging.dicomweb.stow import close

RESOURCES = (stow, qido, wado, render, wado_uri)
router = APIRouter(prefix=PREFIX, tags=["dicomweb"])
for resource in RESOURCES:
    router.include_router(resource.router)


def install_read_lane(app) -> None:
    """GET reads straight to their unit of work (imaging/dicomweb/lane.py); add it before the
    security-header and CORS middleware, so that they wrap its answers too."""
    app.add_middleware(ReadLane, routers=[resource.router for resource in RESOURCES])


__all__ = ["close", "install_read_lane", "router"]
