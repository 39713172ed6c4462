"""The DICOM receiver: Storage SCP, Query/Retrieve SCP (C-FIND, C-GET, C-MOVE), Verification.

- Associations are accepted only from calling AE titles registered with `lancang ae add`
  (enabled, institution active) and only when called with our AE title; rejections are audited.
- TCP_NODELAY is set on every accepted and every outgoing socket: pynetdicom leaves Nagle
  on, and each DIMSE message would wait ~40 ms for a delayed ACK.
- With LANCANG_DICOM_PROCESSES > 1 an acceptor process hands each new connection (the file
  descriptor, over a Unix socket) to the worker process with the fewest open associations:
  one Python process is held to one core by the GIL.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pynetdicom import ALL_TRANSFER_SYNTAXES, evt, register_uid
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from imaging import compat_pynetdicom, handlers, persons, query, transcode
from imaging.dimse import NodelayServer, RegistryAE, set_nodelay
from imaging.dataset import InvalidInstance
from imaging.limits import Limits, check_instance, data_set_offset
from imaging.service import Ingestor
from storage.settings import Settings
from storage import access, audit
from storage.access import Principal
from storage.errors import DomainError, Unavailable
from storage.models import DicomNode, Institution
from storage.service import address_allowed, find_enabled_node

log = logging.getLogger("lancang.dicom")

REGISTRY_TTL_S = 2.0
SPOOL_SWEEP_INTERVAL_S = 60.0
NO_AE = "\x00no-registered-ae"  # matches no calling AE: an empty list would mean "accept all"
UTF8 = "ISO_IR 192"


def _nodelay_on_open(event) -> None:
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        set_nodelay(sock)


# pynetdicom's DUL thread sleeps 1 ms whenever its queues are empty; each C-STORE crosses
# that loop several times, so the default adds milliseconds per instance. 0.1 ms costs a
# little idle CPU per open association and nothing else.
DUL_LOOP_DELAY_S = 0.0001
# Large PDUs: a 512 KB CT slice in one P-DATA instead of 32, far less per-PDU overhead.
MAX_PDU_SIZE = 4 * 1024 * 1024
# Hand the GIL over sooner: the association, DUL and writer threads take turns in
# sub-millisecond steps, and the default 5 ms switch interval shows up as latency.
GIL_SWITCH_INTERVAL_S = 0.0005


def tune_association(event) -> None:
    compat_pynetdicom.set_dul_loop_delay(event.assoc, DUL_LOOP_DELAY_S)


@dataclass(frozen=True)
class _NodeRule:
    title: str
    can: frozenset
    networks: list


@dataclass
class _AssociationLog:
    """What one association did, audited as one record when it closes."""

    calling: str
    source: str
    stored: int = 0
    already: int = 0
    replaced: int = 0
    failed: int = 0
    studies: set = field(default_factory=set)
    failures: list = field(default_factory=list)


class Receiver:
    """The DICOM application behind the handlers: registry, ingest, query, retrieve, audit."""

    def __init__(self, runtime, *, on_committed=None):
        self.runtime = runtime
        self.settings: Settings = runtime.settings
        self.db = runtime.db
        self.objects = runtime.store
        self.limits = Limits.of(self.settings)
        self.ingestor = Ingestor(self.db, self.objects, on_committed=on_committed, limits=self.limits,
                                 identity=persons.IdentityRules.of(self.settings))
        self._nodes: dict[str, tuple[float, Principal | None]] = {}
        self._titles: tuple[float, list[_NodeRule]] = (0.0, [])
        self._rejections: dict[tuple[str, str], list] = {}
        self._lock = threading.Lock()
        self._logs: dict[int, _AssociationLog] = {}
        self._swept = 0.0

    # -- registry -----------------------------------------------------------------------

    def _rules(self) -> list[_NodeRule]:
        """Enabled AEs of active institutions, with what they may do and where from
        (cached for a couple of seconds)."""
        now = time.monotonic()
        stamp, rules = self._titles
        if now - stamp < REGISTRY_TTL_S:
            return rules
        with self.db.scope(readonly=True) as session:
            rules = [_NodeRule(node.ae_title, node.can, node.networks) for node in session.scalars(
                select(DicomNode).join(Institution)
                .where(DicomNode.enabled.is_(True), Institution.active.is_(True)))]
        self._titles = (now, rules)
        return rules

    def registered_titles(self, address: str | None = None) -> list[str]:
        """Calling AE titles an association from `address` may use right now: enabled, and
        bound to no network or to one holding the address. With
        LANCANG_DICOM_REQUIRE_HOST_BINDING an AE that may query or retrieve must be bound."""
        titles = [rule.title for rule in self._rules() if self._reachable(rule, address)]
        return titles or [NO_AE]

    def _reachable(self, rule: _NodeRule, address: str | None) -> bool:
        if self.settings.dicom_require_host_binding and rule.can & {"query", "retrieve"} and not rule.networks:
            return False
        return address_allowed(rule.networks, address)

    def permitted(self, ae_title: str, action: str) -> bool:
        """Whether a registered AE may `action` (store, query, retrieve)."""
        return any(rule.title == ae_title.strip() and action in rule.can for rule in self._rules())

    def principal(self, ae_title: str) -> Principal | None:
        title = ae_title.strip()
        now = time.monotonic()
        cached = self._nodes.get(title)
        if cached and now - cached[0] < REGISTRY_TTL_S:
            return cached[1]
        with self.db.scope(readonly=True) as session:
            node = find_enabled_node(session=session, ae_title=title)
            found = None if node is None else Principal(
                kind="ae", name=title, institution_id=node.institution_id,
                institution_code=node.institution.code)
        self._nodes[title] = (now, found)
        return found

    def _assoc_log(self, assoc) -> _AssociationLog:
        key = id(assoc)
        with self._lock:
            entry = self._logs.get(key)
            if entry is None:
                entry = self._logs[key] = _AssociationLog(
                    calling=assoc.requestor.ae_title.strip(), source=_address(assoc))
            return entry

    # -- C-STORE ------------------------------------------------------------------------

    def store(self, event):
        calling = event.assoc.requestor.ae_title.strip()
        entry = self._assoc_log(event.assoc)
        principal = self.principal(calling)
        if principal is None:
            return _status(0x0124, f"calling AE {calling} is not registered or disabled")
        if not self.permitted(calling, "store"):
            return self._store_failed(entry, 0x0124, f"{calling} may not store (lancang ae set --can)")
        try:
            data, ds = self._received(event, calling)
        except InvalidInstance as exc:
            return self._store_failed(entry, exc.status, exc.reason)
        except Exception as exc:
            entry.failed += 1
            return _status(0xC210, f"cannot decode the data set: {exc}"[:64])
        try:
            result = self.ingestor.ingest(data, ds=ds, institution_id=principal.institution_id,
                                          source=calling, expected_sop_class=event.context.abstract_syntax)
        except InvalidInstance as exc:
            return self._store_failed(entry, exc.status, exc.reason)
        except (Unavailable, SQLAlchemyError, OSError) as exc:
            log.error("dicom.store.unavailable calling=%s error=%s", calling, exc)
            return self._store_failed(entry, 0xA700, f"out of resources: {_short(exc)}")
        except DomainError as exc:
            return self._store_failed(entry, 0xA900, exc.detail)
        except Exception as exc:  # never let one bad instance take the association down
            log.exception("dicom.store.error calling=%s", calling)
            return self._store_failed(entry, 0xC211, f"cannot understand: {_short(exc)}")
        setattr(entry, result.outcome, getattr(entry, result.outcome) + 1)
        entry.studies.add(result.study_instance_uid)
        if result.warnings:  # stored exactly as sent; the sender should still hear it
            log.warning("dicom.store.warning calling=%s sop=%s warning=%s", calling, result.sop_instance_uid[:80],
                        result.warnings[0])
            return _status(0xB007, "; ".join(result.warnings))
        return 0x0000

    def _received(self, event, calling: str) -> tuple[bytes, Dataset]:
        """The instance as we store it (Part 10 bytes: our File Meta, the data set exactly as
        received) and decoded. The size and inflation are checked on the spool file before
        anything reads it, so an oversized instance never enters memory (imaging/compat_pynetdicom.py)."""
        spooled = _spool_path(event)
        if spooled is None:  # pynetdicom gathered the data set in memory (no spool configured)
            received = part10_bytes(event.file_meta, event.request.DataSet.getbuffer())
        else:
            received = self._read_bounded(spooled)
        check_instance(received, max_instance=self.limits.max_instance, max_inflated=self.limits.max_inflated)
        ds = dcmread(io.BytesIO(received))
        offset, _ = data_set_offset(received)
        ds.file_meta = stored_file_meta(ds.file_meta, calling)
        return part10_bytes(ds.file_meta, memoryview(received)[offset:]), ds

    def _read_bounded(self, path) -> bytes:
        if os.stat(path).st_size > self.limits.max_instance:
            raise InvalidInstance(f"the instance is larger than {self.limits.max_instance // (1 << 20)} MiB "
                                  "(LANCANG_MAX_INSTANCE_BYTES) / 文件过大", 0xA700)
        with open(path, "rb") as handle:
            return handle.read()

    @staticmethod
    def _store_failed(entry: _AssociationLog, status: int, reason: str):
        entry.failed += 1
        if len(entry.failures) < 20:
            entry.failures.append(f"{status:04X} {reason}")
        log.warning("dicom.store.failed calling=%s status=0x%04X reason=%s", entry.calling, status, reason)
        return _status(status, reason)

    # -- C-FIND -------------------------------------------------------------------------

    def find(self, event):
        calling = event.assoc.requestor.ae_title.strip()
        principal = self.principal(calling)
        if principal is None:
            yield _status(0x0124, "calling AE is not registered"), None
            return
        if not self.permitted(calling, "query"):
            self._refuse(event, principal, "dicom.find", "query")
            yield _status(0x0124, f"{calling} may not query (lancang ae set --can)"), None
            return
        identifier = event.identifier
        level = str(identifier.get("QueryRetrieveLevel", "")).upper()
        if level not in query.LEVELS:
            yield _status(0xC000, f"unsupported QueryRetrieveLevel {level!r}"), None
            return
        wanted = query.parse_identifier(query.identifier_pairs(identifier), level)
        keys = wanted.keys
        try:
            with self.db.scope(readonly=True) as session:
                scope = access.scope_for(session, principal)
                rows = query.matching_sequences(query.run(session, scope, query.Query(level=level, keys=keys)),
                                                wanted.sequences)
                answers = [answer_dataset(level, keys, row, identifier) for row in rows]
        except DomainError as exc:
            yield _status(0xA900, exc.detail), None
            return
        except SQLAlchemyError as exc:
            yield _status(0xA700, f"out of resources: {_short(exc)}"), None
            return
        self._audit(principal, event, "dicom.find", level, keys, len(answers))
        for answer in answers:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            yield 0xFF00, answer

    # -- C-GET / C-MOVE -----------------------------------------------------------------

    def _instances_for(self, principal: Principal, identifier: Dataset) -> list["Stored"]:
        keys = {k: v for k, v in identifier_keys(identifier).items()
                if k in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")}
        if not any(keys.values()):
            raise DomainError("a retrieve needs at least one unique key (UID or PatientID)")
        keys.setdefault("SOPInstanceUID", "")
        with self.db.scope(readonly=True) as session:
            scope = access.scope_for(session, principal)
            rows = query.run(session, scope, query.Query(level="IMAGE", keys=keys))
            return [Stored(i.object_key, i.sop_class_uid, i.transfer_syntax_uid, i.sop_instance_uid)
                    for i in (r["_entities"]["Instance"] for r in rows)]

    def _load(self, key: str) -> Dataset:
        return dcmread(io.BytesIO(self.objects.get(key)))

    def get(self, event):
        calling = event.assoc.requestor.ae_title.strip()
        principal = self.principal(calling)
        if principal is None:
            yield 0
            return
        if not self.permitted(calling, "retrieve"):
            self._refuse(event, principal, "dicom.get", "retrieve")
            yield 1  # pynetdicom sends a status only while a sub-operation is outstanding
            yield _status(0x0124, f"{calling} may not retrieve (lancang ae set --can)"), None
            return
        try:
            instances = self._instances_for(principal, event.identifier)
        except DomainError as exc:
            log.warning("dicom.get.refused calling=%s reason=%s", calling, exc.detail)
            yield 0
            return
        self._audit(principal, event, "dicom.get", str(event.identifier.get("QueryRetrieveLevel", "")),
                    identifier_keys(event.identifier), len(instances))
        yield len(instances)
        # C-GET sends on the requestor's own association, on the storage contexts where it
        # took the SCP role (we are the SCU there).
        accepted = [(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in event.assoc.accepted_contexts
                    if cx.as_scu]
        yield from self._send_all(event, principal, "dicom.get", instances, lambda: accepted)

    def _send_all(self, event, principal: Principal, action: str, instances: list["Stored"], accepted):
        """The C-STORE sub-operations: each instance as stored when the peer accepted that,
        else converted (imaging/transcode.py); one that cannot be sent is counted failed,
        with its reason logged and audited once for the whole retrieve."""
        failures: list[dict] = []
        for item in instances:
            if event.is_cancelled:
                yield 0xFE00, None
                break
            yield 0xFF00, self._outgoing(item, accepted(), failures)
        if failures:
            audit.record(self.db, principal=principal, action=f"{action}.incomplete", outcome="failed",
                         object_type="instance", object_id=",".join(f["sop"] for f in failures)[:4000],
                         source=_address(event.assoc), detail={"failed": len(failures), "failures": failures[:50]})

    def _outgoing(self, item: "Stored", accepted: list[tuple[str, str]], failures: list[dict]) -> Dataset:
        target = transcode.choose_syntax(item.sop_class, item.syntax, accepted)
        try:
            if target is None:
                raise transcode.CannotConvert(f"the peer accepted no syntax for {item.sop_class} that "
                                              f"{item.syntax} can be sent or converted as")
            return transcode.convert(self._load(item.key), target)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"[:300]
            log.warning("dicom.retrieve.sub_operation_failed sop=%s reason=%s", item.sop_uid, reason)
            failures.append({"sop": item.sop_uid, "reason": reason})
            return _unsendable(item)

    def move(self, event):
        calling = event.assoc.requestor.ae_title.strip()
        principal = self.principal(calling)
        destination = event.move_destination.decode() if isinstance(event.move_destination, bytes) \
            else str(event.move_destination)
        if principal is not None and not self.permitted(calling, "retrieve"):
            self._refuse(event, principal, "dicom.move", "retrieve")
            principal = None  # answered 0xA801: PS3.4 has no "not authorized" before the destination
        node = self._destination(principal, destination.strip())
        if principal is None or node is None:
            yield None, None
            return
        try:
            instances = self._instances_for(principal, event.identifier)
        except DomainError as exc:
            log.warning("dicom.move.refused calling=%s reason=%s", calling, exc.detail)
            yield node[0], node[1], move_options([], _Accepted())
            yield 0
            return
        self._audit(principal, event, "dicom.move", str(event.identifier.get("QueryRetrieveLevel", "")),
                    {**identifier_keys(event.identifier), "MoveDestination": destination}, len(instances))
        accepted = _Accepted()
        yield node[0], node[1], move_options(instances, accepted)
        yield len(instances)
        yield from self._send_all(event, principal, "dicom.move", instances, accepted.pairs)

    def _destination(self, principal: Principal | None, title: str) -> tuple[str, int] | None:
        """A C-MOVE destination: registered, with host/port, of the caller's own institution."""
        if principal is None:
            return None
        with self.db.scope(readonly=True) as session:
            node = find_enabled_node(session=session, ae_title=title)
            if node is None or not node.host or not node.port:
                log.warning("dicom.move.unknown_destination destination=%s", title)
                return None
            if node.institution_id != principal.institution_id:
                log.warning("dicom.move.foreign_destination destination=%s", title)
                return None
            return node.host, node.port

    # -- audit --------------------------------------------------------------------------

    def _audit(self, principal: Principal, event, action: str, level: str, keys: dict, count: int) -> None:
        shown = {k: v for k, v in keys.items() if v}
        audit.record_read(self.db, principal=principal, action=action, object_type=level.lower() or "query",
                     object_id=json.dumps(shown, ensure_ascii=False)[:1000], source=_address(event.assoc),
                     detail={"matches": count})

    def _refuse(self, event, principal: Principal, action: str, missing: str) -> None:
        log.warning("%s.refused calling=%s reason=may not %s", action, principal.name, missing)
        audit.record(self.db, principal=principal, action=action, outcome="denied", source=_address(event.assoc),
                     detail={"reason": f"AE may not {missing}"})

    def association_rejected(self, event) -> None:
        """Audit a rejected association: the first from a source at once, then at most one
        summary per source and LANCANG_DICOM_REJECT_AUDIT_INTERVAL_S (a scanner or a
        misconfigured modality retrying would otherwise flood the chain)."""
        calling = event.assoc.requestor.ae_title.strip()
        called = event.assoc.acceptor.ae_title.strip() if event.assoc.acceptor.ae_title else ""
        source = _address(event.assoc)
        log.warning("dicom.association.rejected calling=%s source=%s", calling, source)
        key = (calling, source.rsplit(":", 1)[0])
        now = time.monotonic()
        with self._lock:
            window = self._rejections.get(key)
            if window is not None and now - window[0] < self.settings.dicom_reject_audit_interval_s:
                window[1] += 1
                return
            suppressed = window[1] if window is not None else 0
            self._rejections[key] = [now, 0]
        audit.record(self.db, principal=None, actor=f"ae:{calling}", action="dicom.associate",
                     outcome="denied", source=source,
                     detail={"calling_ae": calling, "called_ae": called, "earlier_rejections": suppressed,
                             "reason": "calling AE not registered/enabled, not allowed from this address, "
                                       "or wrong called AE"})

    def sweep_spool(self, *, force: bool = False) -> None:
        """Remove data sets left in the spool by associations that broke mid-transfer, at
        most once a minute (a file in use is written at least every network timeout)."""
        now = time.monotonic()
        if not force and now - self._swept < SPOOL_SWEEP_INTERVAL_S:
            return
        self._swept = now
        idle = 2 * max(self.settings.dicom_network_timeout or 0, self.settings.dicom_dimse_timeout or 0) + 60
        compat_pynetdicom.sweep(spool_directory(self.settings), idle)

    def association_closed(self, event) -> None:
        self.sweep_spool()
        with self._lock:
            entry = self._logs.pop(id(event.assoc), None)
        if entry is None or not (entry.stored or entry.already or entry.replaced or entry.failed):
            return
        principal = self.principal(entry.calling)
        try:
            audit.record(self.db, principal=principal, actor=None if principal else f"ae:{entry.calling}",
                         action="dicom.store",
                         object_type="study", object_id=",".join(sorted(entry.studies))[:4000],
                         source=entry.source, outcome="ok" if not entry.failed else "failed",
                         detail={"stored": entry.stored, "already": entry.already, "replaced": entry.replaced,
                                 "failed": entry.failed, "failures": entry.failures})
        except Exception:  # the database may be the reason this association failed
            log.exception("dicom.store.audit_failed calling=%s", entry.calling)


@dataclass(frozen=True)
class Stored:
    key: str
    sop_class: str
    syntax: str
    sop_uid: str


class _Accepted:
    """The contexts the C-MOVE destination accepted: pynetdicom makes that association
    itself, so its EVT_ACCEPTED hands the association to us before the first sub-operation."""

    def __init__(self):
        self._pairs: list[tuple[str, str]] = []

    def on_accepted(self, event) -> None:
        self._pairs = [(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in event.assoc.accepted_contexts]

    def pairs(self) -> list[tuple[str, str]]:
        return self._pairs


MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: presentation context IDs are odd numbers 1..255


def move_contexts(instances: list[Stored]) -> list[tuple[str, str]]:
    """(SOP class, transfer syntax) pairs to propose to a C-MOVE destination, one syntax per
    context so each can be accepted on its own: for every SOP class the study holds,
    Explicit then Implicit VR Little Endian (what any peer takes, converted if need be),
    then each syntax the instances are stored in (sent as stored when accepted). Within the
    context limit the uncompressed ones come first, so every instance can always go out."""
    classes: dict[str, list[str]] = {}
    for item in instances:
        stored = classes.setdefault(item.sop_class, [])
        if item.syntax not in stored and item.syntax not in transcode.UNCOMPRESSED_TARGETS:
            stored.append(item.syntax)
    wanted = [(c, transcode.EXPLICIT_LE) for c in classes]
    wanted += [(c, transcode.IMPLICIT_LE) for c in classes]
    wanted += [(c, syntax) for c, stored in classes.items() for syntax in stored]
    return wanted[:MAX_CONTEXTS]


def move_options(instances: list[Stored], accepted: _Accepted) -> dict:
    """Association options for the C-MOVE sub-operations (pynetdicom's associate kwargs)."""
    from pynetdicom import build_context

    contexts = [build_context(sop_class, [syntax]) for sop_class, syntax in move_contexts(instances)]
    if not contexts:  # nothing to send: pynetdicom still wants one context to associate
        contexts.append(build_context(Verification))
    return {"contexts": contexts, "evt_handlers": [(evt.EVT_CONN_OPEN, _nodelay_on_open),
                                                   (evt.EVT_ACCEPTED, accepted.on_accepted)]}


def _unsendable(item: Stored) -> Dataset:
    """A stand-in for an instance that cannot be sent. pynetdicom counts a sub-operation as
    failed, and lists its SOP Instance UID (PS3.4 C.4.2.1.4.2), when the yielded data set has
    no presentation context; a SOP class no peer can have accepted guarantees that, and
    nothing is sent."""
    stand_in = Dataset()
    stand_in.SOPClassUID = "2.25.43618589640826856077119901200028024226"
    stand_in.SOPInstanceUID = item.sop_uid
    stand_in.file_meta = FileMetaDataset()
    stand_in.file_meta.TransferSyntaxUID = transcode.EXPLICIT_LE
    return stand_in


def _address(assoc) -> str:
    try:
        return f"{assoc.requestor.address}:{assoc.requestor.port}"
    except Exception:
        return ""


def _short(exc: Exception) -> str:
    return (getattr(exc, "detail", None) or type(exc).__name__)[:60]


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    # ErrorComment is LO: at most 64 characters of the default repertoire.
    status.ErrorComment = comment.encode("ascii", "replace").decode()[:64]
    return status


# -- identifiers ------------------------------------------------------------------------


def identifier_keys(identifier: Dataset) -> dict[str, str]:
    """The identifier's keys as {keyword: value}, parsed as QIDO-RS parses its query string
    (imaging.query.parse_identifier)."""
    return query.parse_identifier(query.identifier_pairs(identifier), "STUDY").keys


def answer_dataset(level: str, keys: dict[str, str], row: dict, identifier: Dataset) -> Dataset:
    """A C-FIND response identifier carrying every requested key."""
    answer = Dataset()
    answer.SpecificCharacterSet = UTF8
    answer.QueryRetrieveLevel = level
    for keyword in keys:
        element = identifier[keyword]
        if element.VR == "SQ" and level != "IMAGE":  # no per-study/series JSON: returned empty
            setattr(answer, keyword, [])
            continue
        if keyword in row:
            value = row[keyword]
            setattr(answer, keyword, "" if value is None else (str(value) if element.VR in ("IS", "DS") else value))
            continue
        if level == "IMAGE":  # not indexed: from the stored DICOM JSON of the instance
            item = query.stored_json(row).get(f"{element.tag:08X}")
            if item and "BulkDataURI" not in item and "InlineBinary" not in item:
                try:
                    answer.update(Dataset.from_json({f"{element.tag:08X}": item}))
                    continue
                except Exception:  # e.g. bulk data inside a sequence item: returned empty
                    pass
        setattr(answer, keyword, [] if element.VR == "SQ" else None)
    return answer


# -- application entity -----------------------------------------------------------------


def preferred_transfer_syntaxes() -> list[str]:
    """Every syntax pynetdicom can negotiate, in the order we choose within one context.

    pynetdicom picks, per proposed context, the first of *our* syntaxes the requestor listed.
    Explicit VR Little Endian comes first: a requestor that lists it can always send what it
    holds in it (dcmtk's storescu +C -xs proposed JPEG Lossless and the uncompressed syntaxes
    in one context for an uncompressed file; picking JPEG made it fail). Compressed syntaxes
    follow, lossless before lossy, so a modality that proposes only compressed ones (or one
    per context, as most do) still has its data stored as it made it. Implicit VR comes
    after them: it loses the VRs of private elements.
    """
    from pydicom.uid import UID

    def rank(uid: str) -> int:
        if uid == "1.2.840.10008.1.2.1":
            return 0
        if UID(uid).is_compressed:
            return 1 if "Lossless" in UID(uid).name else 2
        return 3

    return sorted(ALL_TRANSFER_SYNTAXES, key=rank)


QR_FIND = (PatientRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelFind)
QR_RETRIEVE = (PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelGet,
               PatientRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelMove)


# Lancang's own Implementation Class UID (PS3.7 D.3.3.2, a 2.25 UUID-derived UID made once)
# and version name: the File Meta of every file we write says who wrote it.
IMPLEMENTATION_CLASS_UID = "2.25.91167568698191486718451336226070684935"
IMPLEMENTATION_VERSION_NAME = "LANCANG_0_1"


def stored_file_meta(meta: FileMetaDataset, calling_ae: str) -> FileMetaDataset:
    """The File Meta of a received instance as we store it: our implementation, the sender's
    AE title as Source Application Entity Title (PS3.10 7.1)."""
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    meta.SourceApplicationEntityTitle = calling_ae[:16]
    return meta


def part10_bytes(meta: FileMetaDataset, encoded_dataset) -> bytes:
    """Preamble, DICM, File Meta and the data set bytes exactly as received."""
    out = io.BytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    out.write(encoded_dataset)
    return out.getvalue()


def _spool_path(event):
    """The spool file pynetdicom wrote the data set to, or None when it kept it in memory."""
    try:
        return event.dataset_path
    except AttributeError:
        return None


def register_retired_storage_classes() -> list[str]:
    """Give every storage SOP class we accept a Storage service (pynetdicom's public
    register_uid). pynetdicom negotiates the retired ones (old ultrasound 1.2.840.10008.
    5.1.4.1.1.6 and .3.1, nuclear medicine .5, ...) but maps them to no service, and a
    C-STORE of one then aborted the association, losing every later file on it. Idempotent."""
    added = []
    for context in StoragePresentationContexts:
        uid = context.abstract_syntax
        if uid_to_service_class(uid) is not StorageServiceClass:
            register_uid(uid, "LancangStorage_" + uid.replace(".", "_"), StorageServiceClass)
            added.append(uid)
    return added


RETIRED_STORAGE_CLASSES = register_retired_storage_classes()


def spool_directory(settings: Settings):
    return settings.data_dir.resolve() / "spool" / "dicom"


def build_ae(receiver: Receiver, settings: Settings, *, max_associations: int | None = None) -> RegistryAE:
    compat_pynetdicom.spool_received_datasets(spool_directory(settings))
    compat_pynetdicom.accept_sloppy_uids()
    receiver.sweep_spool(force=True)
    ae = RegistryAE(receiver, settings.dicom_ae_title)
    ae.require_called_aet = True
    ae.maximum_associations = max_associations or settings.dicom_max_associations
    ae.acse_timeout = settings.dicom_acse_timeout
    ae.dimse_timeout = settings.dicom_dimse_timeout
    ae.network_timeout = settings.dicom_network_timeout
    ae.maximum_pdu_size = MAX_PDU_SIZE
    ae.add_supported_context(Verification)
    syntaxes = preferred_transfer_syntaxes()
    for context in StoragePresentationContexts:
        # SCP role for C-STORE; SCU role too so C-GET can send instances back on the association.
        ae.add_supported_context(context.abstract_syntax, syntaxes, scu_role=True, scp_role=True)
    for sop_class in QR_FIND + QR_RETRIEVE:
        ae.add_supported_context(sop_class)
    return ae


def event_handlers(receiver: Receiver) -> list:
    return [
        (evt.EVT_C_ECHO, handlers.on_c_echo, [receiver]),
        (evt.EVT_C_STORE, handlers.on_c_store, [receiver]),
        (evt.EVT_C_FIND, handlers.on_c_find, [receiver]),
        (evt.EVT_C_GET, handlers.on_c_get, [receiver]),
        (evt.EVT_C_MOVE, handlers.on_c_move, [receiver]),
        (evt.EVT_REJECTED, handlers.on_rejected, [receiver]),
        (evt.EVT_CONN_CLOSE, handlers.on_closed, [receiver]),
        (evt.EVT_CONN_OPEN, tune_association),
    ]


def start_server(receiver: Receiver, settings: Settings, *, host: str | None = None, port: int | None = None,
                 max_associations: int | None = None) -> NodelayServer:
    """Start a non-blocking threaded server (used by tests and the single-process receiver)."""
    ae = build_ae(receiver, settings, max_associations=max_associations)
    address = (host or settings.bind_host, settings.dicom_port if port is None else port)
    server = ae.make_server(address, evt_handlers=event_handlers(receiver), server_class=NodelayServer)
    thread = threading.Thread(target=server.serve_forever, name="dicom-acceptor", daemon=True)
    thread.start()
    compat_pynetdicom.register_server(ae, server)
    return server
