"""STOW-RS (PS3.18 10.5): each part a Part 10 object, stored durably like C-STORE.

STOW-RS takes no request-long session: the Ingestor commits each instance in its own
transaction, and holding a request-long write transaction would block it on SQLite."""

import json
import logging
import mmap
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from imaging.dicomweb import multipart, negotiation
from imaging.dicomweb.common import (
    audit_request, base_url, check_uid, choose, instance_url, JSON_OFFERS, json_response,
    RETRIEVE_URL, runtime, study_url
)
from imaging.announce import SeriesAnnouncer
from imaging.dataset import InvalidInstance
from imaging.limits import Limits, check_instance
from imaging.models import Study
from imaging.service import Ingestor, parse_part10
from imaging import persons, policy
from storage.access import Principal
from storage.deps import CurrentPrincipal
from storage.errors import BadRequest, DomainError, PayloadTooLarge, Unavailable, UnsupportedMediaType

# STOW-RS response attributes (PS3.18 10.5.3, Table 10.5.3-1) and failure reasons (PS3.4).
REFERENCED_SOP_SEQUENCE, FAILED_SOP_SEQUENCE = "00081199", "00081198"
REFERENCED_SOP_CLASS, REFERENCED_SOP_INSTANCE, FAILURE_REASON = "00081150", "00081155", "00081197"
OUT_OF_RESOURCES, MISMATCH, CANNOT_UNDERSTAND = 0xA700, 0xA900, 0xC000
PROCESSING_FAILURE, DUPLICATE_SOP_INSTANCE, NOT_AUTHORIZED = 0x0110, 0x0111, 0x0124
WARNING_REASON, COERCED = "00081196", 0xB000  # PS3.4: "Coercion of Data Elements"
CHANGES_HEADER = "Lancang-Changes"  # a corrected re-send's [{sop, changes: {field: [old, new]}}]
NOT_CONFORMING = 0xB007  # PS3.4: "Data Set does not match SOP Class" (a UID that does not conform)

log = logging.getLogger("lancang.dicomweb")

# -- STOW-RS ----------------------------------------------------------------------------

_INGESTOR_LOCK = threading.Lock()


def ingestor_for(app) -> Ingestor:
    """The app's one Ingestor (it owns a thread pool), made on first use from the runtime;
    committed series are announced for thumbnails exactly as after C-STORE."""
    found = getattr(app.state, "dicomweb_ingestor", None)
    if found is not None:
        return found
    with _INGESTOR_LOCK:
        found = getattr(app.state, "dicomweb_ingestor", None)
        if found is None:
            runtime = app.state.runtime
            announcer = SeriesAnnouncer(runtime.db)
            found = Ingestor(runtime.db, runtime.store, on_committed=announcer.note,
                             limits=Limits.of(runtime.settings),
                             identity=persons.IdentityRules.of(runtime.settings))
            app.state.dicomweb_announcer = announcer
            app.state.dicomweb_ingestor = found
    return found


def close(app) -> None:
    """Stop the STOW ingestor and announcer if they were started (call on app shutdown)."""
    announcer = getattr(app.state, "dicomweb_announcer", None)
    ingestor = getattr(app.state, "dicomweb_ingestor", None)
    if announcer is not None:
        announcer.stop()
    if ingestor is not None:
        ingestor.close()
    app.state.dicomweb_ingestor = app.state.dicomweb_announcer = None


def stow_warning_header(outcome: "StowOutcome") -> dict | None:
    """Tell the uploader in a Warning header too (RFC 9111 299; ASCII, JSON-escaped)."""
    said = []
    if outcome.replacements:
        summary = json.dumps(outcome.replacements[:5], separators=(",", ":"))[:900].replace('"', "'")
        said.append(f"replaced {len(outcome.replacements)} instance(s): {summary}")
    if outcome.warnings:
        summary = json.dumps(outcome.warnings[:5], separators=(",", ":"))[:900].replace('"', "'")
        said.append(f"stored {len(outcome.warnings)} instance(s) with UIDs that do not conform: {summary}")
    if not said:
        return None
    text = "; ".join(said).encode("ascii", "backslashreplace").decode()
    headers = {"Warning": f'299 lancang "{text}"'}
    if outcome.replacements:  # what changed, as JSON the upload page shows (ASCII, \u-escaped)
        headers[CHANGES_HEADER] = json.dumps(outcome.replacements[:20], separators=(",", ":"), default=str)[:6000]
    return headers


@dataclass
class StowOutcome:
    """What one STOW-RS request did, for the response and the audit record."""

    referenced: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {"stored": 0, "already": 0, "replaced": 0})
    studies: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    replacements: list[dict] = field(default_factory=list)  # corrected re-sends and what changed
    warnings: list[dict] = field(default_factory=list)  # stored, but not as the standard wants it

    def fail(self, sop_class: str, sop_uid: str, reason: int, why: str) -> None:
        item = {}
        if sop_class:
            item[REFERENCED_SOP_CLASS] = {"vr": "UI", "Value": [sop_class]}
        if sop_uid:
            item[REFERENCED_SOP_INSTANCE] = {"vr": "UI", "Value": [sop_uid]}
        item[FAILURE_REASON] = {"vr": "US", "Value": [reason]}
        self.failed.append(item)
        if len(self.failures) < 20:
            self.failures.append(f"{reason:04X} {sop_uid or '?'} {why}"[:300])

    @property
    def status(self) -> int:
        """PS3.18 10.5.3: 200 all stored, 202 stored with warnings or some failed, 409 none stored."""
        if not self.failed:
            return 202 if any(WARNING_REASON in item for item in self.referenced) else 200
        return 202 if self.referenced else 409


def check_stow_content_type(content_type: str) -> str:
    """The boundary of a STOW-RS body; 415 unless multipart/related; type="application/dicom"."""
    try:
        media_type, params = multipart.boundary_of(content_type or "")
    except multipart.MalformedMultipart:
        media_type, params = negotiation.parse_media_type(content_type or "")
        if media_type == negotiation.MULTIPART:
            raise BadRequest("multipart/related without a boundary parameter") from None
        raise UnsupportedMediaType(f'expected multipart/related; type="application/dicom", '
                                   f'got {content_type[:100]!r}') from None
    part_type = negotiation.parse_media_type(params.get("type", ""))[0]
    if media_type != negotiation.MULTIPART or part_type not in ("", "application/dicom"):
        raise UnsupportedMediaType('only multipart/related; type="application/dicom" is accepted '
                                   "(DICOM JSON / XML metadata with bulk data is not supported)")
    return params["boundary"]


class Refused(Exception):
    """One STOW-RS part that is not stored, with its PS3.4 failure reason."""

    def __init__(self, reason: int, why: str):
        super().__init__(why)
        self.reason, self.why = reason, why


class StowContext:
    """Stores the parts of one STOW-RS request for one caller, one part at a time."""

    def __init__(self, ingestor: Ingestor, db, principal: Principal, base: str, study: str | None):
        self.ingestor, self.db, self.principal, self.base, self.study = ingestor, db, principal, base, study
        self.outcome = StowOutcome()
        self._seen: set[str] = set()
        self._owners: dict[str, int | None] = {}

    def store_all(self, parts: Iterable[multipart.Part]) -> StowOutcome:
        for part in parts:
            self.store(part)
        return self.outcome

    def store(self, part: multipart.Part) -> None:
        """Store one part durably, or record why not."""
        sop_class = sop_uid = ""
        try:
            self._bounded(part)
            ds = self._readable(part)
            sop_class, sop_uid = str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", ""))
            self._check(ds, sop_uid)
            result = self._ingest(part.content, ds, sop_uid)
        except Refused as refused:
            self.outcome.fail(sop_class, sop_uid, refused.reason, refused.why)
            return
        self._referenced(result)

    def _bounded(self, part: multipart.Part) -> None:
        limits = self.ingestor.limits
        try:
            check_instance(part.content, max_instance=limits.max_instance, max_inflated=limits.max_inflated)
        except InvalidInstance as exc:
            raise Refused(_stow_reason(exc.status), exc.reason) from None

    @staticmethod
    def _readable(part: multipart.Part) -> Dataset:
        """The part as a dataset: application/dicom (or untyped) Part 10 bytes, else 0xC000."""
        part_type = negotiation.parse_media_type(part.content_type)[0] if part.content_type else ""
        if part_type not in ("", "application/dicom"):
            raise Refused(CANNOT_UNDERSTAND, f"part of type {part_type}")
        if part.content[128:132] != b"DICM":
            raise Refused(CANNOT_UNDERSTAND, "not a DICOM Part 10 file")
        try:
            return parse_part10(part.content)
        except InvalidInstance as exc:
            raise Refused(CANNOT_UNDERSTAND, exc.reason) from None

    def _check(self, ds: Dataset, sop_uid: str) -> None:
        """Refuse a study other than the URL's (0xA900), a SOP Instance UID sent twice in
        this request (0x0111) and a study that another institution owns (0x0124)."""
        study = str(ds.get("StudyInstanceUID", ""))
        if self.study and study != self.study:
            raise Refused(MISMATCH, f"StudyInstanceUID {study} does not match the URL's {self.study}")
        if sop_uid and sop_uid in self._seen:
            raise Refused(DUPLICATE_SOP_INSTANCE, "the same SOP Instance UID twice in one request")
        self._seen.add(sop_uid)
        owner = self._owner(study)
        if owner is not None and owner != self.principal.institution_id:
            raise Refused(NOT_AUTHORIZED, "the study belongs to another institution")

    def _owner(self, study: str) -> int | None:
        """The institution that owns an existing study (None for a new one), cached per request."""
        if study and study not in self._owners:
            with self.db.scope(readonly=True) as session:
                self._owners[study] = session.scalar(
                    select(Study.institution_id).where(Study.study_instance_uid == study))
        return self._owners.get(study)

    def _ingest(self, data: bytes, ds: Dataset, sop_uid: str):
        """Ingestor.ingest with its errors as failure reasons: backend down 0xA700, bad data
        0xC000 or 0xA900, anything unforeseen 0x0110."""
        try:
            return self.ingestor.ingest(data, ds=ds, institution_id=self.principal.institution_id,
                                        source=f"stow:{self.principal.name}")
        except InvalidInstance as exc:
            raise Refused(_stow_reason(exc.status), exc.reason) from None
        except (Unavailable, SQLAlchemyError, OSError) as exc:
            log.error("dicomweb.store.unavailable sop=%s error=%s", sop_uid, exc)
            raise Refused(OUT_OF_RESOURCES, type(exc).__name__) from None
        except DomainError as exc:
            raise Refused(MISMATCH, exc.detail) from None
        except Exception as exc:  # one bad instance must not lose the others' answers
            log.exception("dicomweb.store.error sop=%s", sop_uid)
            raise Refused(PROCESSING_FAILURE, type(exc).__name__) from None

    def _referenced(self, result) -> None:
        self.outcome.counts[result.outcome] += 1
        self.outcome.studies.add(result.study_instance_uid)
        url = instance_url(self.base, result.study_instance_uid, result.series_instance_uid,
                           result.sop_instance_uid)
        item = {
            REFERENCED_SOP_CLASS: {"vr": "UI", "Value": [result.sop_class_uid]},
            REFERENCED_SOP_INSTANCE: {"vr": "UI", "Value": [result.sop_instance_uid]},
            RETRIEVE_URL: {"vr": "UR", "Value": [url]},
        }
        if result.outcome == "replaced":
            # A corrected re-send replaced the stored version; its values now feed the index.
            item[WARNING_REASON] = {"vr": "US", "Value": [COERCED]}
            self.outcome.replacements.append({"sop": result.sop_instance_uid, "changes": result.changes})
        if result.warnings:  # WarningReason holds one value: the UID's, which the sender must fix
            item[WARNING_REASON] = {"vr": "US", "Value": [NOT_CONFORMING]}
            self.outcome.warnings.append({"sop": result.sop_instance_uid, "warnings": list(result.warnings)})
        self.outcome.referenced.append(dict(sorted(item.items())))


class SpooledBody:
    """A request body held in memory while small, else in a temporary file read through
    mmap (file-backed pages, not the process's heap)."""

    IN_MEMORY = 8 * 1024 * 1024

    def __init__(self, directory: Path):
        self.directory = directory
        self.buffer = bytearray()
        self.file = None
        self.view = b""
        self._map = None

    def write(self, chunk: bytes) -> None:
        if self.file is None and len(self.buffer) + len(chunk) > self.IN_MEMORY:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.file = tempfile.TemporaryFile(dir=self.directory)
            self.file.write(self.buffer)
            self.buffer = bytearray()
        if self.file is None:
            self.buffer += chunk
        else:
            self.file.write(chunk)

    def finish(self) -> "SpooledBody":
        if self.file is None:
            self.view = bytes(self.buffer)
        elif self.file.tell():
            self.file.flush()
            self._map = mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_READ)
            self.view = self._map
        return self

    def __enter__(self) -> "SpooledBody":
        return self

    def __exit__(self, *exc) -> None:
        self.view = b""
        if self._map is not None:
            self._map.close()
        if self.file is not None:
            self.file.close()


async def spool_body(request: Request, limit: int, directory: Path) -> SpooledBody:
    """The body, refused with 413 past `limit` bytes (declared or received)."""
    declared = request.headers.get("content-length", "")
    too_large = PayloadTooLarge(f"the upload is larger than {limit // (1 << 20)} MiB (LANCANG_MAX_UPLOAD_BYTES); "
                                "send fewer instances per request / 上传内容过大，请分批上传")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body, received = SpooledBody(directory), 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise too_large
            body.write(chunk)
    except BaseException:
        body.__exit__(None, None, None)
        raise
    return body.finish()


def _stow_reason(status: int) -> int:
    """The STOW failure reason for an ingest refusal's C-STORE status."""
    if status == NOT_AUTHORIZED:
        return NOT_AUTHORIZED
    if status & 0xFF00 == OUT_OF_RESOURCES & 0xFF00:
        return OUT_OF_RESOURCES
    return CANNOT_UNDERSTAND if status & 0xF000 == 0xC000 else MISMATCH


def stow_response(outcome: StowOutcome, base: str, study: str | None) -> dict:
    """The Store Instances response dataset (PS3.18 Table 10.5.3-1)."""
    body: dict[str, dict] = {}
    studies = {study} if study else outcome.studies
    if len(studies) == 1 and outcome.referenced:
        body[RETRIEVE_URL] = {"vr": "UR", "Value": [study_url(base, next(iter(studies)))]}
    if outcome.failed:
        body[FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": outcome.failed}
    if outcome.referenced:
        body[REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": outcome.referenced}
    return dict(sorted(body.items()))



router = APIRouter()


async def stow(request: Request, principal: Principal, study: str | None) -> Response:
    if study is not None:
        check_uid(study, "StudyInstanceUID")
    boundary = check_stow_content_type(request.headers.get("content-type", ""))
    offer = choose(request, JSON_OFFERS)
    policy.require_uploader(principal)
    settings = runtime(request).settings
    with await spool_body(request, settings.max_upload_bytes, settings.data_dir / "tmp") as body:
        try:
            parts = multipart.iter_parts(body.view, boundary)
        except multipart.MalformedMultipart as exc:
            raise BadRequest(str(exc)) from None
        base = base_url(request)
        context = StowContext(ingestor_for(request.app), runtime(request).db, principal, base, study)
        try:
            outcome = await run_in_threadpool(context.store_all, parts)
        except multipart.MalformedMultipart as exc:
            raise BadRequest(str(exc)) from None
    if not (outcome.referenced or outcome.failed):
        raise BadRequest("the multipart body has no parts")
    audit_request(request, principal, "dicomweb.store", object_type="study",
                  object_id=",".join(sorted(outcome.studies)) or (study or ""),
                  outcome="ok" if not outcome.failed else "failed",
                  detail={**outcome.counts, "failed": len(outcome.failed), "failures": outcome.failures,
                   "replacements": outcome.replacements[:50], "warnings": outcome.warnings[:50]},
                  change=True)
    log.info("dicomweb.store.done user=%s stored=%s failed=%s", principal.name,
             len(outcome.referenced), len(outcome.failed))
    headers = stow_warning_header(outcome)
    return json_response(stow_response(outcome, base, study), offer, outcome.status, headers=headers)


@router.post("/studies")
async def store_instances(request: Request, principal: CurrentPrincipal) -> Response:
    """STOW-RS Store Instances: each part a Part 10 object, stored durably like C-STORE."""
    return await stow(request, principal, None)


@router.post("/studies/{study}")
async def store_study_instances(study: str, request: Request, principal: CurrentPrincipal) -> Response:
    """STOW-RS into one study: instances of another study fail with 0xA900."""
    return await stow(request, principal, study)
