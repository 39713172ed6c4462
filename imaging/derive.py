"""Derived images: one representative thumbnail per series and a small preview per instance.

Run by the worker (task ``imaging.derive_series``) once a series has stopped receiving
(imaging/announce.py), and by the periodic/startup sweep for anything that was missed.

Object keys come from the UIDs, so a redelivered task overwrites the same objects:

    derived/{study}/{series}/series.jpg          the series thumbnail (THUMBNAIL_SIZE)
    derived/{study}/{series}/{sop}.preview.jpg   one preview per instance (PREVIEW_SIZE)

State lives on the rows: ``Series.derived_through`` is the ``last_received_at`` the last
completed derivation covered (up to date when they are equal); ``Instance.preview_sha256``
is the version of the instance a preview was attempted for, so a corrupt instance is
recorded once (``preview_error``) and not retried until different bytes arrive.

Pixels go through imaging.pixels (pydicom decoders for every installed transfer syntax,
Modality LUT, VOI LUT/window or an automatic window, MONOCHROME1 inversion, colour
spaces and palettes, SimpleITK resampling).
"""

from __future__ import annotations

import io
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from imaging import pixels
from storage import keys
from imaging.models import Instance, Series, Study
from storage.db import Database
from storage.objects import ObjectStore, StoreUnavailable
from storage.types import utcnow

log = logging.getLogger("lancang.imaging")

THUMBNAIL_SIZE = 256     # series thumbnail: lists, the patient's series strip (sharp at 2x)
PREVIEW_SIZE = 128       # per-instance preview: placeholders while a screen image loads
JPEG_QUALITY = 85
MAX_ATTEMPTS = 3         # deliveries per derivation before giving up (a crash loops otherwise)
BATCH = 32               # previews recorded per transaction: progress survives a killed worker
THREADS = 2              # decoding and store I/O release the GIL; the machine has few cores
SWEEP_SETTLE_S = 30.0    # leave series that are still receiving to the announcer
SWEEP_LOOKBACK = timedelta(days=7)
SWEEP_LIMIT = 500
# Test hook: seconds to sleep after each preview, so a test can kill a worker mid-task.


@dataclass
class DeriveOutcome:
    """What one derive_series call did; status is missing|already|gave_up|done|partial|failed."""

    status: str
    series_pk: int
    thumbnail_key: str | None = None
    previews: int = 0
    failures: dict[str, str] = field(default_factory=dict)  # SOP Instance UID -> reason


@dataclass(frozen=True)
class _Item:
    id: int
    sop_uid: str
    sha256: str
    object_key: str
    instance_number: int | None
    preview_sha256: str
    preview_key: str | None
    preview_error: str


@dataclass(frozen=True)
class _Claim:
    series_pk: int
    study_uid: str
    series_uid: str
    snapshot: datetime       # last_received_at when the derivation started
    items: list[_Item]


def series_thumbnail_key(study_uid: str, series_uid: str) -> str:
    return keys.series_thumbnail(study_uid, series_uid)


def preview_key(study_uid: str, series_uid: str, sop_uid: str) -> str:
    return keys.instance_preview(study_uid, series_uid, sop_uid)


def display_order(items):
    """Instances in viewing order: Instance Number, then SOP Instance UID (missing numbers last)."""
    return sorted(items, key=lambda i: (i.instance_number is None, i.instance_number or 0, i.sop_uid))


def representative_frame(ds: Dataset) -> int:
    """0-based frame shown for an instance: (0028,6010) Representative Frame Number when
    valid, otherwise the first frame (a cine loop starts on a meaningful frame)."""
    n = pixels.number_of_frames(ds)
    try:
        rep = int(ds.get("RepresentativeFrameNumber") or 0)
    except (TypeError, ValueError):
        rep = 0
    return rep - 1 if 1 <= rep <= n else 0


def load_dataset(store: ObjectStore, key: str) -> Dataset:
    """Read one stored Part 10 object; pixel data is decoded later, one frame at a time."""
    return dcmread(io.BytesIO(store.get(key)), force=True)


def render_jpeg(ds: Dataset, size: int, frame: int | None = None) -> bytes:
    """A JPEG of one frame fitting size x size (never enlarged)."""
    image = pixels.render_frame(ds, representative_frame(ds) if frame is None else frame)
    return pixels.encode(pixels.fit(image, size, size), "image/jpeg", JPEG_QUALITY)


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:1000]


def _is_transient(exc: BaseException) -> bool:
    # Backends that are down are worth a retry by the task; bad pixel data never is.
    return isinstance(exc, (StoreUnavailable, SQLAlchemyError))


# --------------------------------------------------------------------------- steps


def _claim(db: Database, series_pk: int) -> _Claim | DeriveOutcome:
    """Decide whether to work and count the attempt, in one short transaction."""
    with db.scope() as session:
        row = session.execute(
            select(Series, Study.study_instance_uid).join(Study, Study.id == Series.study_pk)
            .where(Series.id == series_pk).with_for_update(of=Series)
        ).first()
        if row is None:
            return DeriveOutcome("missing", series_pk)
        series, study_uid = row
        if series.derived_through is not None and series.derived_through >= series.last_received_at:
            return DeriveOutcome("already", series_pk, thumbnail_key=series.thumbnail_key)
        if series.derive_attempts >= MAX_ATTEMPTS:
            # Earlier deliveries died without finishing (a decoder crash, memory): stop the
            # loop, mark the series so the sweep leaves it, and start afresh when it changes.
            series.derive_state = "failed"
            series.derive_error = f"gave up after {series.derive_attempts} interrupted attempts"
            series.derived_through = series.last_received_at
            series.derived_at = utcnow()
            series.derive_attempts = 0
            return DeriveOutcome("gave_up", series_pk)
        series.derive_attempts += 1
        series.derive_state = "running"
        items = [_Item(*r) for r in session.execute(
            select(Instance.id, Instance.sop_instance_uid, Instance.sha256, Instance.object_key,
                   Instance.instance_number, Instance.preview_sha256, Instance.preview_key,
                   Instance.preview_error)
            .where(Instance.series_pk == series_pk))]
        return _Claim(series_pk, study_uid, series.series_instance_uid, series.last_received_at,
                      display_order(items))


def _record_previews(db: Database, results: list[tuple[_Item, str | None, str]]) -> None:
    if not results:
        return
    with db.scope() as session:
        session.execute(update(Instance), [
            {"id": item.id, "preview_key": key, "preview_sha256": item.sha256, "preview_error": error}
            for item, key, error in results])


def _thumbnail(store: ObjectStore, claim: _Claim, outcome: DeriveOutcome,
               done: dict[int, tuple[str | None, str]]) -> str | None:
    """Render the series thumbnail from the middle instance, or the nearest one that renders.

    Also writes that instance's preview from the dataset already in memory.
    """
    items = claim.items
    middle = len(items) // 2
    # middle, middle+1, middle-1, middle+2, ...: the nearest slice to the centre that works
    order = sorted(range(len(items)), key=lambda i: (abs(i - middle), i < middle))
    key = series_thumbnail_key(claim.study_uid, claim.series_uid)
    for index in order:
        item = items[index]
        if item.preview_sha256 == item.sha256 and item.preview_key is None:
            continue  # known not to render
        try:
            ds = load_dataset(store, item.object_key)
            store.put(key, render_jpeg(ds, THUMBNAIL_SIZE), content_type="image/jpeg")
        except Exception as exc:
            if _is_transient(exc):
                raise
            done[item.id] = (None, _reason(exc))
            outcome.failures[item.sop_uid] = _reason(exc)
            log.warning("imaging.derive_thumbnail.failed series_pk=%s sop=%s reason=%s",
                        claim.series_pk, item.sop_uid, _reason(exc))
            continue
        if item.preview_sha256 != item.sha256:
            try:
                pkey = preview_key(claim.study_uid, claim.series_uid, item.sop_uid)
                store.put(pkey, render_jpeg(ds, PREVIEW_SIZE), content_type="image/jpeg")
                done[item.id] = (pkey, "")
            except Exception as exc:
                if _is_transient(exc):
                    raise
                done[item.id] = (None, _reason(exc))
        return key
    return None


def _preview(store: ObjectStore, claim: _Claim, item: _Item) -> tuple[str | None, str]:
    try:
        ds = load_dataset(store, item.object_key)
        key = preview_key(claim.study_uid, claim.series_uid, item.sop_uid)
        store.put(key, render_jpeg(ds, PREVIEW_SIZE), content_type="image/jpeg")
        return key, ""
    except Exception as exc:
        if _is_transient(exc):
            raise
        return None, _reason(exc)


# --------------------------------------------------------------------------- service


def derive_series(db: Database, store: ObjectStore, series_pk: int, *, preview_delay_s: float = 0.0) -> DeriveOutcome:
    """Make the series thumbnail and the per-instance previews of one series; idempotent.

    Runs its own short units of work (like the Ingestor) so that seconds of decoding never
    hold a database write lock: claim (count the attempt), thumbnail first (what lists and
    the patient page show), previews recorded in batches, then the series marked derived
    through the ``last_received_at`` seen at the start. Instances that arrive meanwhile
    leave the series stale, and the next announcement or sweep derives it again.

    DICOM: the thumbnail comes from the middle instance in Instance Number order (the next
    nearest when it cannot be rendered), frame = Representative Frame Number or the first;
    rendering as imaging.pixels.render_frame (header VOI or automatic window, MONOCHROME1
    inverted, colour converted). An instance that cannot be decoded gets preview_error and
    the series ends "partial" (or "failed" when nothing renders); backend outages raise for
    the task to retry.
    """
    claim = _claim(db, series_pk)
    if isinstance(claim, DeriveOutcome):
        log.info("imaging.derive_series.%s series_pk=%s", claim.status, series_pk)
        return claim
    try:
        return _derive(db, store, claim, preview_delay_s)
    except Exception as exc:
        if _is_transient(exc):
            _release_attempt(db, series_pk)  # an outage is not a crash: do not count it
        raise


def _release_attempt(db: Database, series_pk: int) -> None:
    try:
        with db.scope() as session:
            session.execute(update(Series).where(Series.id == series_pk, Series.derive_attempts > 0)
                            .values(derive_attempts=Series.derive_attempts - 1))
    except Exception:  # the database may be the backend that is down
        log.warning("imaging.derive_series.release_failed series_pk=%s", series_pk)


def _derive(db: Database, store: ObjectStore, claim: _Claim, preview_delay_s: float) -> DeriveOutcome:
    series_pk = claim.series_pk
    started = time.monotonic()
    outcome = DeriveOutcome("done", series_pk)
    done: dict[int, tuple[str | None, str]] = {}
    if claim.items:
        outcome.thumbnail_key = _thumbnail(store, claim, outcome, done)
        with db.scope() as session:  # the thumbnail is visible before the previews are done
            session.execute(update(Series).where(Series.id == series_pk)
                            .values(thumbnail_key=outcome.thumbnail_key))
        _record_previews(db, [(i, *done[i.id]) for i in claim.items if i.id in done])

    todo = [i for i in claim.items if i.id not in done and i.preview_sha256 != i.sha256]
    delay = max(0.0, preview_delay_s)
    with ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="derive") as pool:
        for start in range(0, len(todo), BATCH):
            batch = todo[start:start + BATCH]
            results = []
            for item, (key, error) in zip(batch, pool.map(lambda i: _preview(store, claim, i), batch)):
                results.append((item, key, error))
                done[item.id] = (key, error)
                if delay:
                    time.sleep(delay)
            _record_previews(db, results)

    for item in claim.items:
        key, error = done.get(item.id, (item.preview_key, item.preview_error))
        if error:
            outcome.failures[item.sop_uid] = error
        elif key:
            outcome.previews += 1
    rendered = outcome.previews > 0 or outcome.thumbnail_key is not None
    if outcome.failures:
        outcome.status = "partial" if rendered else "failed"
    summary = "" if not outcome.failures else (
        f"{len(outcome.failures)} of {len(claim.items)} instances could not be rendered; first: "
        + next(iter(outcome.failures.values())))[:2000]
    with db.scope() as session:
        session.execute(update(Series).where(Series.id == series_pk).values(
            thumbnail_key=outcome.thumbnail_key, derive_state=outcome.status,
            derived_through=claim.snapshot, derived_at=utcnow(), derive_attempts=0,
            derive_error=summary))
    log.info("imaging.derive_series.%s series_pk=%s instances=%s previews=%s failures=%s seconds=%.2f",
             outcome.status, series_pk, len(claim.items), outcome.previews, len(outcome.failures),
             time.monotonic() - started)
    return outcome


def sweep_underived(db: Database, *, settle_s: float = SWEEP_SETTLE_S,
                    lookback: timedelta = SWEEP_LOOKBACK, limit: int = SWEEP_LIMIT) -> list[int]:
    """Series whose last_received_at is newer than their derivation (never derived, or more
    instances since), quiet for settle_s, received within lookback; oldest first.

    For the periodic sweep and worker startup: catches announcements lost with a receiver
    that died, and tasks lost with a broker that cannot redeliver (the embedded one).
    """
    now = utcnow()
    with db.scope(readonly=True) as session:
        rows = session.scalars(
            select(Series.id).where(
                Series.last_received_at >= now - lookback,
                Series.last_received_at <= now - timedelta(seconds=settle_s),
                or_(Series.derived_through.is_(None), Series.derived_through < Series.last_received_at),
            ).order_by(Series.last_received_at).limit(limit)
        ).all()
    return list(rows)


def series_status(db: Database, series_pk: int) -> dict | None:
    """The derive state of one series, for pages and benchmarks."""
    with db.scope(readonly=True) as session:
        series = session.get(Series, series_pk)
        if series is None:
            return None
        return {"state": series.derive_state, "thumbnail_key": series.thumbnail_key,
                "up_to_date": series.derived_through is not None
                and series.derived_through >= series.last_received_at,
                "error": series.derive_error}
