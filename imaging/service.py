"""Durable ingest, shared by C-STORE, STOW-RS and `lancang import`.

Order of work for one instance (the acknowledgement waits for all of it):
  1. parse and validate (required UIDs, SOP class as negotiated);
  2. write the Part 10 bytes to the object store under a key derived from the UIDs and
     the content hash (in a helper thread, overlapped with building the DICOM JSON);
  3. upsert Patient/Study/Series/Instance and commit.
Only then does the caller answer success. If the store or the database is down the
caller answers "out of resources"; nothing is acknowledged that is not durable.

Re-sending identical bytes is a no-op ("already"). Re-sending different bytes for the
same SOP Instance UID makes the new version current, keeps the old object and lists it in
superseded_instances, and audits the replacement ("replaced").

An instance belongs to its series, study and institution for ever: a re-send may replace
it only into the same series (hence the same study and institution). Anything else is an
attempt to move another's image and is refused (`OwnershipConflict`, 0x0124 across
institutions) and audited as a security event (`dicom.instance.refused`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from imaging import persons, pinyin
from imaging.dataset import IndexRecord, InvalidInstance, dicom_json, extract
from imaging.limits import Limits, check_instance
from imaging.models import Instance, Patient, Series, Study, SupersededInstance
from storage import keys
from storage import audit
from storage.db import Database
from storage.models import Institution
from storage.settings import Settings
from storage.objects import ObjectStore
from storage.types import utcnow

log = logging.getLogger("lancang.imaging")


class OwnershipConflict(InvalidInstance):
    """The instance, series or study already belongs elsewhere; `detail` goes to the audit."""

    def __init__(self, reason: str, status: int, detail: dict):
        super().__init__(reason, status)
        self.detail = detail


# PS3.7 C.4: "Refused: Not Authorized". Used when the other owner is another institution;
# within one institution a wrong series/study is a data error (0xA900).
NOT_AUTHORIZED = 0x0124


def _conflict_status(owner: int, institution_id: int) -> int:
    return NOT_AUTHORIZED if owner != institution_id else 0xA900


@dataclass(frozen=True)
class IngestResult:
    outcome: str  # stored | already | replaced
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    object_key: str
    series_pk: int
    changes: dict = field(default_factory=dict)  # a replacement's index corrections {field: [old, new]}
    warnings: tuple[str, ...] = ()  # stored, but not as the standard wants it (a sloppy UID)


def parse_part10(data: bytes) -> Dataset:
    """Parse a Part 10 file (or a bare dataset with a transfer syntax we can infer)."""
    try:
        return dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError, IndexError) as exc:
        raise InvalidInstance(f"not a readable DICOM file: {exc}", 0xC210) from None


def object_key(record: IndexRecord, sha256: str) -> str:
    """Where this version of the instance lives (storage/keys.py)."""
    return keys.instance(record.study_uid, record.series_uid, record.sop_uid, sha256)


class _Lru(OrderedDict):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def remember(self, key, value):
        self[key] = value
        self.move_to_end(key)
        if len(self) > self.size:
            self.popitem(last=False)


def _insert_ignore(conn, model, values: dict, keys: list[str], returning=None):
    """INSERT ... ON CONFLICT DO NOTHING (both dialects): concurrent writers may race."""
    builder = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    statement = builder(model.__table__).values(**values).on_conflict_do_nothing(index_elements=keys)
    if returning is not None:
        statement = statement.returning(returning)
    return conn.execute(statement)


# The statements every instance runs, built once.
INSERT_INSTANCE = Instance.__table__.insert()
COUNT_SERIES_INSTANCE = (Series.__table__.update().where(Series.__table__.c.id == bindparam("pk"))
                         .values(num_instances=Series.__table__.c.num_instances + 1,
                                 last_received_at=bindparam("now")))
COUNT_STUDY_INSTANCE = (Study.__table__.update().where(Study.__table__.c.id == bindparam("pk"))
                        .values(num_instances=Study.__table__.c.num_instances + 1, updated_at=bindparam("now")))
TOUCH_SERIES = (Series.__table__.update().where(Series.__table__.c.id == bindparam("pk"))
                .values(last_received_at=bindparam("now")))


class Ingestor:
    """Stores instances durably and indexes them; safe to call from many threads."""

    def __init__(self, db: Database, store: ObjectStore, *, on_committed=None, limits: Limits | None = None,
                 identity: persons.IdentityRules | None = None):
        self.db = db
        self.store = store
        self.limits = limits or Limits()
        self.identity = identity or persons.IdentityRules.of(Settings.model_construct())
        self.on_committed = on_committed  # called with IngestResult after each commit
        self._writers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ingest-write")
        self._cache_lock = threading.Lock()
        self._studies = _Lru(2048)   # study uid -> (study pk, institution id)
        self._series = _Lru(4096)    # series uid -> (series pk, study pk)

    def close(self) -> None:
        self._writers.shutdown(wait=True)

    # -- public -------------------------------------------------------------------------

    def ingest(self, data: bytes, *, institution_id: int, source: str, ds: Dataset | None = None,
               expected_sop_class: str | None = None) -> IngestResult:
        """Store one Part 10 instance durably and index it. Raises InvalidInstance for bad
        data; StoreUnavailable / SQLAlchemy errors when a backend is down."""
        if ds is None:  # parsed here: bound it first (a caller that parsed has checked)
            check_instance(data, max_instance=self.limits.max_instance, max_inflated=self.limits.max_inflated)
        ds = ds if ds is not None else parse_part10(data)
        record = extract(ds)
        if expected_sop_class and record.sop_class_uid != expected_sop_class:
            raise InvalidInstance(
                f"SOP Class UID {record.sop_class_uid} in the data set does not match the "
                f"negotiated {expected_sop_class}", 0xA900)
        # Hash and write off the GIL while this thread builds the DICOM JSON.
        write = self._writers.submit(self._hash_and_write, data, record)
        try:
            metadata = dicom_json(ds)
        finally:
            sha256, key = write.result()
        result = self._index(record, metadata=metadata, sha256=sha256, key=key, size=len(data),
                             institution_id=institution_id, source=source,
                             transfer_syntax=self._transfer_syntax(ds))
        if self.on_committed is not None:
            self.on_committed(result)
        return result

    # -- steps --------------------------------------------------------------------------

    @staticmethod
    def _transfer_syntax(ds: Dataset) -> str:
        meta = getattr(ds, "file_meta", None)
        uid = meta.get("TransferSyntaxUID") if meta is not None else None
        return str(uid) if uid else "1.2.840.10008.1.2.1"

    def _hash_and_write(self, data: bytes, record: IndexRecord) -> tuple[str, str]:
        sha256 = hashlib.sha256(data).hexdigest()
        key = object_key(record, sha256)
        self.store.put(key, data, content_type="application/dicom")
        return sha256, key

    def _index(self, record: IndexRecord, **kwargs) -> IngestResult:
        learned: dict = {}
        try:
            with self.db.scope() as session:
                result = self._upsert(session, record, learned=learned, **kwargs)
        except OwnershipConflict as exc:
            # The refused transaction rolled back; the security record needs its own.
            self._audit_refusal(record, exc, source=kwargs["source"], institution_id=kwargs["institution_id"])
            raise
        # Only committed rows are cached: another thread must never reuse a key that a
        # transaction still in flight (and perhaps about to roll back) created.
        with self._cache_lock:
            for cache, key, value in learned.values():
                cache.remember(key, value)
        return result

    def _audit_refusal(self, record: IndexRecord, exc: OwnershipConflict, *, source: str,
                       institution_id: int) -> None:
        log.warning("dicom.instance.refused sop=%s source=%s reason=%s", record.sop_uid, source, exc.reason)
        with self.db.scope() as session:
            audit.append(session, principal=None, actor=source or "system", action="dicom.instance.refused",
                         outcome="denied", object_type="instance", object_id=record.sop_uid,
                         detail={"reason": exc.reason, "status": f"0x{exc.status:04X}",
                                 "sender_institution_id": institution_id, "study_uid": record.study_uid,
                                 "series_uid": record.series_uid, **exc.detail})

    def _upsert(self, session: Session, record: IndexRecord, *, learned: dict, metadata: str, sha256: str, key: str,
                size: int, institution_id: int, source: str, transfer_syntax: str) -> IngestResult:
        conn = session.connection()  # Core statements: the ORM execute path costs more than the SQL
        study_pk = self._study_pk(conn, record, institution_id, learned, source)
        series_pk, new_series = self._series_pk(conn, record, study_pk, institution_id, learned)
        now = utcnow()
        existing = conn.execute(
            select(Instance.id, Instance.sha256, Instance.object_key, Instance.size, Instance.series_pk)
            .where(Instance.sop_instance_uid == record.sop_uid)
        ).first()
        if existing is not None and existing.series_pk != series_pk:
            self._refuse_move(conn, record, existing.series_pk, institution_id)
        outcome, changes = "stored", {}
        values = dict(
            series_pk=series_pk, sop_class_uid=record.sop_class_uid, instance_number=record.instance_number,
            transfer_syntax_uid=transfer_syntax, object_key=key, size=size, sha256=sha256,
            rows=record.rows, columns=record.columns, number_of_frames=record.number_of_frames,
            dicom_json=metadata, received_from=source[:64], updated_at=now,
        )
        if existing is None:
            conn.execute(INSERT_INSTANCE, dict(sop_instance_uid=record.sop_uid, created_at=now, **values))
            conn.execute(COUNT_SERIES_INSTANCE, {"pk": series_pk, "now": now})
            conn.execute(COUNT_STUDY_INSTANCE, {"pk": study_pk, "now": now})
        elif existing.sha256 == sha256:
            outcome = "already"
            conn.execute(TOUCH_SERIES, {"pk": series_pk, "now": now})
        else:
            outcome = "replaced"
            session.add(SupersededInstance(sop_instance_uid=record.sop_uid, object_key=existing.object_key,
                                           sha256=existing.sha256, size=existing.size, replaced_by=source[:200]))
            conn.execute(update(Instance.__table__).where(Instance.id == existing.id).values(**values))
            conn.execute(TOUCH_SERIES, {"pk": series_pk, "now": now})
            changes = self._correct_index(conn, record, study_pk, series_pk, institution_id, source)
            audit.append(session, principal=None, actor=source or "system", action="dicom.instance.replaced",
                         object_type="instance", object_id=record.sop_uid,
                         detail={"old_sha256": existing.sha256, "new_sha256": sha256, "old_key": existing.object_key,
                                 "changes": changes})
        if new_series:
            self._refresh_study_series(conn, study_pk)
        return IngestResult(outcome, record.sop_uid, record.sop_class_uid, record.series_uid,
                            record.study_uid, key, series_pk, changes if outcome == "replaced" else {},
                            record.uid_warnings)

    # The index levels a corrected re-send feeds: {level: (table, pk column, {field: record attr})}.
    _CORRECTABLE = {
        "study": (Study, {"study_date": "study_date", "study_time": "study_time",
                          "accession_number": "accession_number", "study_id": "study_id",
                          "description": "study_description", "referring_physician": "referring_physician"}),
        "series": (Series, {"modality": "modality", "series_number": "series_number",
                            "description": "series_description", "body_part": "body_part"}),
    }

    def _correct_index(self, conn, record: IndexRecord, study_pk: int, series_pk: int,
                       institution_id: int, source: str = "") -> dict:
        """A replaced instance carries the newest values: every index level it feeds takes
        them (newest wins, also for the patient identity of its study). Returns
        {field: [old, new]} for the audit record and the uploader."""
        changes: dict = {}
        study = conn.execute(select(Study.__table__).where(Study.id == study_pk)).one()
        patient = conn.execute(select(Patient.__table__).where(Patient.id == study.patient_pk)).one()
        newest_patient = self._patient_pk(conn, record, institution_id, source)
        if newest_patient != study.patient_pk:
            conn.execute(update(Study.__table__).where(Study.id == study_pk).values(patient_pk=newest_patient))
        for name, new in (("patient_id", record.patient_id), ("patient_name", record.patient_name.full),
                          ("birth_date", record.birth_date), ("sex", record.sex)):
            old = patient.name if name == "patient_name" else getattr(patient, name)
            if (old or "") != (new or "") and not (name == "patient_id" and old.startswith("~") and not new):
                changes[name] = [old, new]
        if newest_patient == study.patient_pk and ("birth_date" in changes or "sex" in changes):
            conn.execute(update(Patient.__table__).where(Patient.id == newest_patient)
                         .values(birth_date=record.birth_date, sex=record.sex))
        for level, (model, fields) in self._CORRECTABLE.items():
            pk = study_pk if level == "study" else series_pk
            row = study if level == "study" else conn.execute(select(Series.__table__).where(Series.id == pk)).one()
            wanted = {column: getattr(record, attr) for column, attr in fields.items()}
            differing = {c: v for c, v in wanted.items() if getattr(row, c) != v and not (v in ("", None))}
            if differing:
                conn.execute(update(model.__table__).where(model.id == pk).values(**differing))
                changes.update({f"{level}.{c}": [getattr(row, c), v] for c, v in differing.items()})
        if any(k.startswith("series.modality") for k in changes):
            self._refresh_study_series(conn, study_pk)
        return changes

    @staticmethod
    def _refuse_move(conn, record: IndexRecord, owner_series_pk: int, institution_id: int) -> None:
        """The SOP Instance UID exists in another series: never move it (see the module doc)."""
        owner = conn.execute(
            select(Series.series_instance_uid, Study.study_instance_uid, Study.institution_id)
            .join(Study, Study.id == Series.study_pk).where(Series.id == owner_series_pk)).one()
        status = _conflict_status(owner.institution_id, institution_id)
        where = "another institution's study" if status == NOT_AUTHORIZED else \
            f"series {owner.series_instance_uid} of study {owner.study_instance_uid}"
        raise OwnershipConflict(
            f"SOP Instance UID {record.sop_uid} already belongs to {where}; it cannot be moved",
            status, {"owner_institution_id": owner.institution_id, "owner_study_uid": owner.study_instance_uid,
                     "owner_series_uid": owner.series_instance_uid})

    def _patient_pk(self, conn, record: IndexRecord, institution_id: int, source: str = "") -> int:
        # Without a PatientID nothing says two studies are the same person: one per study.
        patient_id = record.patient_id or f"~{record.study_uid}"[:64]
        name = record.patient_name
        full, initials = pinyin.keys(name.ideographic, name.alphabetic)
        naming = dict(name=name.full, name_alphabetic=name.alphabetic, name_ideographic=name.ideographic,
                      name_phonetic=name.phonetic, name_pinyin=full, name_initials=initials)
        values = dict(institution_id=institution_id, issuer=record.issuer, patient_id=patient_id,
                      birth_date=record.birth_date, sex=record.sex, created_at=utcnow(), **naming)
        _insert_ignore(conn, Patient, values, ["institution_id", "issuer", "patient_id"])
        row = conn.execute(select(Patient.id, Patient.name).where(
            Patient.institution_id == institution_id, Patient.issuer == record.issuer,
            Patient.patient_id == patient_id)).one()
        if name.full and row.name != name.full:  # the newest demographics win
            conn.execute(update(Patient.__table__).where(Patient.id == row.id).values(**naming))
        self._link_person(conn, row.id, record, institution_id, source)
        return row.id

    def _link_person(self, conn, patient_pk: int, record: IndexRecord, institution_id: int, source: str) -> None:
        """Join the record to its person when a trusted identifier names one (once per new study)."""
        declared = bool(record.patient_id) and conn.execute(
            select(Institution.patient_ids_are_resident_ids).where(Institution.id == institution_id)).scalar()
        if not (declared or record.other_ids):
            return
        ids = persons.identifiers_of(
            patient_id=record.patient_id, other_ids=record.other_ids, birth_date=record.birth_date, sex=record.sex,
            resident_issuers=self.identity.resident_issuers, health_card_issuers=self.identity.health_card_issuers,
            patient_ids_are_resident_ids=bool(declared))
        if ids.problem:
            log.warning("dicom.patient.resident_id_refused patient=%s problem=%s", patient_pk, ids.problem)
        persons.link_by_identifiers(conn, patient_pk, ids, source=source)

    def _study_pk(self, conn, record: IndexRecord, institution_id: int, learned: dict, source: str = "") -> int:
        with self._cache_lock:
            cached = self._studies.get(record.study_uid)
        if cached is None:
            found = conn.execute(select(Study.id, Study.institution_id)
                                 .where(Study.study_instance_uid == record.study_uid)).first()
            if found is None:
                patient_pk = self._patient_pk(conn, record, institution_id, source)
                now = utcnow()
                _insert_ignore(conn, Study, dict(
                    study_instance_uid=record.study_uid, patient_pk=patient_pk, institution_id=institution_id,
                    study_date=record.study_date, study_time=record.study_time,
                    accession_number=record.accession_number, study_id=record.study_id,
                    description=record.study_description, referring_physician=record.referring_physician,
                    institution_name=record.institution_name, created_at=now, updated_at=now,
                ), ["study_instance_uid"])
                found = conn.execute(select(Study.id, Study.institution_id)
                                     .where(Study.study_instance_uid == record.study_uid)).one()
            cached = (found.id, found.institution_id)
            learned["study"] = (self._studies, record.study_uid, cached)
        study_pk, owner = cached
        if owner != institution_id:
            raise OwnershipConflict(
                f"study {record.study_uid} belongs to another institution; it cannot be extended "
                "from here", NOT_AUTHORIZED, {"owner_institution_id": owner})
        return study_pk

    def _series_pk(self, conn, record: IndexRecord, study_pk: int, institution_id: int, learned: dict) -> tuple[int, bool]:
        with self._cache_lock:
            cached = self._series.get(record.series_uid)
        if cached is not None and cached[1] == study_pk:
            return cached[0], False
        # Not cached, or cached under another study: look again, so the ownership check
        # below runs (a cache hit must never skip it).
        found = conn.execute(select(Series.id, Series.study_pk)
                             .where(Series.series_instance_uid == record.series_uid)).first()
        created = False
        if found is None:
            now = utcnow()
            inserted = _insert_ignore(conn, Series, dict(
                series_instance_uid=record.series_uid, study_pk=study_pk, modality=record.modality,
                series_number=record.series_number, description=record.series_description,
                body_part=record.body_part, num_instances=0, last_received_at=now, created_at=now,
            ), ["series_instance_uid"], returning=Series.id)
            created = inserted.first() is not None  # nothing comes back when another writer won
            found = conn.execute(select(Series.id, Series.study_pk)
                                 .where(Series.series_instance_uid == record.series_uid)).one()
        if found.study_pk != study_pk:
            owner = conn.execute(select(Study.institution_id, Study.study_instance_uid)
                                 .where(Study.id == found.study_pk)).one()
            raise OwnershipConflict(
                f"series {record.series_uid} already belongs to another study",
                _conflict_status(owner.institution_id, institution_id),
                {"owner_institution_id": owner.institution_id, "owner_study_uid": owner.study_instance_uid})
        learned["series"] = (self._series, record.series_uid, (found.id, found.study_pk))
        return found.id, created

    @staticmethod
    def _refresh_study_series(conn, study_pk: int) -> None:
        modalities = sorted({m for (m,) in conn.execute(
            select(Series.modality).where(Series.study_pk == study_pk)) if m})
        count = conn.execute(select(func.count()).select_from(Series).where(Series.study_pk == study_pk)).scalar()
        conn.execute(update(Study.__table__).where(Study.id == study_pk).values(
            modalities="\\".join(modalities), num_series=count))
