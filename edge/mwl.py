"""The township edge's Modality Worklist SCP (C-FIND, Modality Worklist Information Model –
FIND, PS3.4 Annex K): modalities on the LAN pull the patients registered at the desk
(edge/worklist.py), so the images carry the desk's name, IDs, accession and Study Instance UID.

Who may ask: a calling AE registered for an institution (`lancang ae add`, enabled, allowed
from the requestor's address, as the receiver checks) is accepted; its C-FIND is answered only
when it may `query`, and only with its own institution's scheduled entries. Refusals and every
query are audited (`worklist.find`), rejected associations once per source and interval.

Matching (PS3.4 C.2.2.2, K.2.2.1): universal, single value, wildcards (* ?), date and time
ranges and UID lists, on the keys a modality sends: Scheduled Procedure Step Sequence >
Modality, Scheduled Station AE Title (an entry booked for "any station" matches every one),
Scheduled Procedure Step Start Date and Time; Patient's Name (case-insensitive, each
component group, with or without the ^), Patient ID, Accession Number, Study Instance UID,
Requested Procedure ID, Patient's Sex and Birth Date. Other keys are returned, not matched.
The answer carries exactly the keys asked for (empty when we hold no value; a sequence key
with no item gets every attribute of the sequence).

Character set. The answer declares GB18030 unless the query declared ISO_IR 192 (UTF-8), in
which case it answers in UTF-8. GB18030 is the national standard for Chinese text (GB 18030
is mandatory for software sold in China), a defined term of its own in DICOM (PS3.3
C.12.1.1.2, multi-byte without code extensions; PS3.5 Annex J writes Chinese names in it), and
what the Chinese-market modalities we must serve read: most read GBK (Windows code page 936,
a subset of GB18030: every common name is the same bytes) and many cannot show UTF-8, while a
modality that reads UTF-8 says so with ISO_IR 192 in its query. GB18030 also encodes every
character (rare ones in names included), which GBK and GB2312 cannot. A query without a
character set is read as GB18030 too: ASCII is the same bytes, and modalities that send a
Chinese name without declaring one send GBK. The name goes out as `Zhang^Xiuying=张^秀英`:
the pinyin as the alphabetic group for consoles that show only ASCII, the Chinese as the
ideographic group (PS3.5 6.2.1); the images then carry both.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import signal
import threading
import time
from copy import deepcopy
from dataclasses import dataclass
from datetime import date, datetime
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import evt
from pynetdicom.dsutils import decode
from pynetdicom.sop_class import ModalityWorklistInformationFind, Verification
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from edge.worklist_models import CODING_SCHEME, WorklistEntry, day_bounds
from imaging import compat_pynetdicom
from imaging.dimse import NodelayServer, RegistryAE
from maternal.criteria import COLOUR_LABELS
from storage import audit, localtime
from storage.access import Principal
from storage.models import DicomNode, Institution
from storage.runtime import bootstrap
from storage.service import address_allowed
from storage.settings import Settings

log = logging.getLogger("lancang.mwl")

GB18030 = "GB18030"
UTF8 = "ISO_IR 192"
REGISTRY_TTL_S = 2.0
MAX_ASSOCIATIONS = 8  # a township has a handful of modalities
NO_AE = "\x00no-registered-ae"  # matches no calling AE: an empty list would mean "accept all"
_CHARSET_TAG = 0x00080005


# -- handlers: thin, they return or yield DICOM statuses -----------------------------------------


def on_c_echo(event, scp):
    """C-ECHO: 0x0000 Success."""
    return 0x0000


def on_c_find(event, scp):
    """C-FIND (MWL): (0xFF00, identifier) per scheduled step, then Success; 0x0124 for an AE
    that may not query, 0xC000 for an identifier we cannot read, 0xA700 with the database
    down, 0xFE00 on cancel."""
    yield from scp.find(event)


def on_rejected(event, scp):
    scp.association_rejected(event)


# -- the application -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    title: str
    institution_id: int
    institution_code: str
    can: frozenset
    networks: list


class WorklistSCP:
    """The registry check, the query and the audit behind the handlers."""

    def __init__(self, runtime):
        self.db = runtime.db
        self.settings: Settings = runtime.settings
        self._cache: tuple[float, list[_Rule]] = (0.0, [])
        self._rejections: dict[tuple[str, str], list] = {}
        self._lock = threading.Lock()

    def _rules(self) -> list[_Rule]:
        """Enabled AEs of active institutions (cached for a couple of seconds)."""
        now = time.monotonic()
        if now - self._cache[0] < REGISTRY_TTL_S:
            return self._cache[1]
        with self.db.scope(readonly=True) as session:
            rows = session.execute(select(DicomNode, Institution.code).join(Institution).where(
                DicomNode.enabled.is_(True), Institution.active.is_(True))).all()
            rules = [_Rule(n.ae_title, n.institution_id, code, n.can, n.networks) for n, code in rows]
        self._cache = (now, rules)
        return rules

    def registered_titles(self, address: str | None = None) -> list[str]:
        """Calling AE titles an association from `address` may use (RegistryAE below asks)."""
        strict = self.settings.dicom_require_host_binding
        titles = [r.title for r in self._rules() if address_allowed(r.networks, address)
                  and not (strict and "query" in r.can and not r.networks)]
        return titles or [NO_AE]

    def _rule(self, title: str) -> _Rule | None:
        return next((r for r in self._rules() if r.title == title), None)

    def find(self, event):
        calling = event.assoc.requestor.ae_title.strip()
        rule = self._rule(calling)
        if rule is None:
            yield _status(0x0124, f"calling AE {calling} is not registered"), None
            return
        principal = Principal(kind="ae", name=calling, institution_id=rule.institution_id,
                              institution_code=rule.institution_code)
        if "query" not in rule.can:
            log.warning("mwl.find.refused calling=%s reason=may not query", calling)
            audit.record(self.db, principal=principal, action="worklist.find", outcome="denied",
                         source=_address(event.assoc), detail={"reason": "AE may not query"})
            yield _status(0x0124, f"{calling} may not query (lancang ae set --can store,query)"), None
            return
        try:
            query, charset = read_query(undecoded_identifier(event))
            answers = self._answers(rule, query, charset)
        except SQLAlchemyError as exc:
            log.error("mwl.find.unavailable calling=%s error=%s", calling, exc)
            yield _status(0xA700, "out of resources: the database is not available"), None
            return
        except Exception as exc:  # an identifier pydicom cannot decode, a date that is no date
            log.warning("mwl.find.unreadable calling=%s error=%s", calling, exc)
            yield _status(0xC000, f"cannot read the identifier: {type(exc).__name__}"), None
            return
        audit.record_read(self.db, principal=principal, action="worklist.find", object_type="worklist",
                          object_id=json.dumps(_shown_keys(query), ensure_ascii=False)[:1000],
                          source=_address(event.assoc), detail={"matches": len(answers), "charset": charset})
        for answer in answers:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            yield 0xFF00, answer

    def _answers(self, rule: _Rule, query: Dataset, charset: str) -> list[Dataset]:
        with self.db.scope(readonly=True) as session:
            entries = candidates(session=session, institution_id=rule.institution_id, dates=_date_key(query))
            full = [entry_dataset(entry, charset=charset, institution_code=rule.institution_code,
                                  resident_issuer=_first(self.settings.resident_id_issuers)) for entry in entries]
        return [answer_for(query, ds) for ds in full if matches(query, ds)]

    def association_rejected(self, event) -> None:
        """Audit a rejected association: the first from a source at once, then one summary per
        source and LANCANG_DICOM_REJECT_AUDIT_INTERVAL_S (a modality retrying would flood the chain)."""
        calling = event.assoc.requestor.ae_title.strip()
        source = _address(event.assoc)
        log.warning("mwl.association.rejected calling=%s source=%s", calling, source)
        key, now = (calling, source.rsplit(":", 1)[0]), time.monotonic()
        with self._lock:
            window = self._rejections.get(key)
            if window is not None and now - window[0] < self.settings.dicom_reject_audit_interval_s:
                window[1] += 1
                return
            self._rejections[key] = [now, 0]
        audit.record(self.db, principal=None, actor=f"ae:{calling}", action="worklist.associate", outcome="denied",
                     source=source, detail={"calling_ae": calling, "earlier_rejections": window[1] if window else 0,
                                            "reason": "calling AE not registered/enabled, not allowed from this "
                                                      "address, or wrong called AE"})


# -- the query -------------------------------------------------------------------------------


def undecoded_identifier(event) -> Dataset:
    """The request's identifier decoded afresh from its bytes: pynetdicom may already have
    read `event.identifier`'s values (logging it) under the default character set, before
    read_query could say how an undeclared one is to be read."""
    syntax = event.context.transfer_syntax
    return decode(BytesIO(event.request.Identifier.getvalue()), syntax.is_implicit_VR, syntax.is_little_endian,
                  syntax.is_deflated)


def read_query(identifier: Dataset) -> tuple[Dataset, str]:
    """The identifier with its values decoded, and the character set to answer in."""
    declared = identifier.get("SpecificCharacterSet") or ""
    declared = list(declared) if isinstance(declared, MultiValue) else [declared]
    charset = UTF8 if UTF8 in declared else GB18030
    if not any(value.strip() for value in declared):  # undeclared: read as GB18030 (ASCII is unchanged)
        identifier.set_original_encoding(*identifier.original_encoding, character_encoding=GB18030)
    for element in identifier.iterall():  # decode now: a bad value is the query's fault, not ours
        _ = element.value
    return identifier, charset


def _first(listing: str) -> str:
    return next((part.strip() for part in listing.split(",") if part.strip()), "")


def _date_key(query: Dataset) -> tuple[date | None, date | None] | None:
    """The Scheduled Procedure Step Start Date asked for, as (first, last) local dates; None
    for universal matching (then every scheduled entry is a candidate)."""
    steps = query.get("ScheduledProcedureStepSequence")
    value = str(steps[0].get("ScheduledProcedureStepStartDate", "") or "") if steps else ""
    value = value.replace(".", "").strip()
    if not value:
        return None
    low, _, high = value.partition("-") if "-" in value else (value, "", value)
    return _da(low), _da(high)


def _da(text: str) -> date | None:
    return datetime.strptime(text, "%Y%m%d").date() if text else None


def candidates(*, session, institution_id: int, dates: tuple[date | None, date | None] | None) -> list[WorklistEntry]:
    """The institution's scheduled entries, within the local dates when given."""
    statement = select(WorklistEntry).where(WorklistEntry.institution_id == institution_id,
                                            WorklistEntry.status == "scheduled")
    if dates is not None:
        first, last = dates
        if first is not None:
            statement = statement.where(WorklistEntry.scheduled_at >= day_bounds(first)[0])
        if last is not None:
            statement = statement.where(WorklistEntry.scheduled_at < day_bounds(last)[1])
    return list(session.scalars(statement.order_by(WorklistEntry.priority, WorklistEntry.scheduled_at,
                                                   WorklistEntry.id)))


def person_name(entry: WorklistEntry) -> str:
    """`Zhang^Xiuying=张^秀英`: pinyin as the alphabetic group, the Chinese as the ideographic."""
    ideographic = f"{entry.family_name}^{entry.given_name}"
    return entry.name_pinyin if ideographic.isascii() else f"{entry.name_pinyin}={ideographic}"


def _code(entry: WorklistEntry) -> Dataset:
    item = Dataset()
    item.CodeValue = entry.procedure_code
    item.CodingSchemeDesignator = CODING_SCHEME
    item.CodeMeaning = entry.procedure
    return item


def _step(entry: WorklistEntry) -> Dataset:
    local = entry.scheduled_at.astimezone(localtime.zone())  # DA and TM are local time
    step = Dataset()
    step.Modality = entry.modality
    step.ScheduledStationAETitle = entry.station_ae
    step.ScheduledProcedureStepStartDate = f"{local:%Y%m%d}"
    step.ScheduledProcedureStepStartTime = f"{local:%H%M%S}"
    step.ScheduledPerformingPhysicianName = ""
    step.ScheduledProcedureStepDescription = entry.procedure
    step.ScheduledProtocolCodeSequence = [_code(entry)]
    step.ScheduledProcedureStepID = entry.accession_number
    step.ScheduledProcedureStepStatus = "SCHEDULED"
    return step


def entry_dataset(entry: WorklistEntry, *, charset: str, institution_code: str, resident_issuer: str) -> Dataset:
    """Everything the worklist holds about one scheduled step (the phone stays at the desk:
    a modality has no use for it)."""
    ds = Dataset()
    ds.SpecificCharacterSet = charset
    ds.AccessionNumber = entry.accession_number
    ds.ReferringPhysicianName = ""
    ds.PatientName = person_name(entry)
    ds.PatientID = entry.patient_id
    by_resident_id = bool(entry.resident_id) and entry.patient_id == entry.resident_id
    ds.IssuerOfPatientID = resident_issuer if by_resident_id else institution_code
    if entry.resident_id and not by_resident_id:  # how the region joins this patient to a person
        other = Dataset()
        other.PatientID, other.IssuerOfPatientID, other.TypeOfPatientID = entry.resident_id, resident_issuer, "TEXT"
        ds.OtherPatientIDsSequence = [other]
    ds.PatientBirthDate = f"{entry.birth_date:%Y%m%d}"
    ds.PatientSex = entry.sex
    if entry.risk_colour:
        zh, en = COLOUR_LABELS[entry.risk_colour]
        ds.MedicalAlerts = f"妊娠风险 {zh} / maternal risk {en}"[:64]
    ds.StudyInstanceUID = entry.study_instance_uid
    ds.RequestedProcedureID = entry.accession_number
    ds.RequestedProcedureDescription = entry.procedure
    ds.RequestedProcedureCodeSequence = [_code(entry)]
    ds.RequestedProcedurePriority = "STAT" if entry.urgent else ("HIGH" if entry.priority == 0 else "ROUTINE")
    ds.ScheduledProcedureStepSequence = [_step(entry)]
    return ds


# -- matching and the answer -----------------------------------------------------------------


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


def _wild(pattern: str, candidates: list[str]) -> bool:
    if "*" in pattern or "?" in pattern:
        return any(fnmatch.fnmatchcase(c, pattern.replace("[", "[[]")) for c in candidates)
    return pattern in candidates


def _in_range(wanted: str, stored: str, vr: str) -> bool:
    wanted = wanted.replace(".", "").replace(":", "")
    stored = stored.replace(".", "").replace(":", "")
    if "-" not in wanted:
        return stored == wanted if vr == "DA" else stored.startswith(wanted)
    low, _, high = wanted.partition("-")
    return (not low or stored >= low) and (not high or stored <= (high + "\uffff" if vr == "TM" else high))


def value_matches(wanted: str, stored: str, vr: str) -> bool:
    """One key against one stored value (C.2.2.2.1-5); an unassigned stored value (an entry
    for any station) matches."""
    if not stored:
        return True
    if vr in ("DA", "TM"):
        return _in_range(wanted, stored, vr)
    if vr in ("UI", "CS") and "\\" in wanted:
        return any(value_matches(one.strip(), stored, vr) for one in wanted.split("\\") if one.strip())
    if vr == "PN":
        wanted, stored = wanted.upper(), stored.upper()
        if "=" in wanted:
            return _wild(wanted, [stored])
        groups = [g for g in stored.split("=") if g]
        return _wild(wanted, groups + [g.replace("^", "") for g in groups])
    return _wild(wanted, [stored])


def matches(query: Dataset, candidate: Dataset) -> bool:
    """Whether the candidate matches every key of the query (sequence keys: any item matches
    the query's first item, C.2.2.2.6)."""
    for element in query:
        if element.tag == _CHARSET_TAG or element.tag.is_private or element.tag not in candidate:
            continue
        if element.VR == "SQ":
            if element.value and not any(matches(element.value[0], item) for item in candidate[element.tag].value):
                return False
            continue
        wanted = _text(element.value).strip()
        if wanted and wanted.strip("*") and not value_matches(wanted, _text(candidate[element.tag].value), element.VR):
            return False
    return True


def answer_for(query: Dataset, full: Dataset) -> Dataset:
    """The keys asked for, with the candidate's values (empty where it holds none)."""
    answer = Dataset()
    answer.SpecificCharacterSet = full.SpecificCharacterSet
    _copy_asked(query, full, answer)
    return answer


def _copy_asked(query: Dataset, full: Dataset, answer: Dataset) -> None:
    for element in query:
        if element.tag == _CHARSET_TAG or element.tag.is_private or element.tag.group in (0x0000, 0x0002):
            continue
        held = full.get(element.tag)
        if element.VR != "SQ":
            answer.add_new(element.tag, held.VR if held is not None else element.VR,
                           held.value if held is not None else None)
        elif held is None:
            answer.add_new(element.tag, "SQ", [])
        elif not element.value:  # a sequence key with no item: all of it (C.2.2.2.6)
            answer.add_new(element.tag, "SQ", deepcopy(list(held.value)))
        else:
            items = []
            for item in held.value:
                asked = Dataset()
                _copy_asked(element.value[0], item, asked)
                items.append(asked)
            answer.add_new(element.tag, "SQ", items)


def _shown_keys(query: Dataset) -> dict[str, str]:
    """The query's non-empty keys for the audit record (sequence items flattened)."""
    shown = {}
    for element in query.iterall():
        if element.VR != "SQ" and element.tag != _CHARSET_TAG and element.keyword:
            value = _text(element.value).strip()
            if value:
                shown[element.keyword] = value[:64]
    return shown


def _address(assoc) -> str:
    try:
        return f"{assoc.requestor.address}:{assoc.requestor.port}"
    except Exception:
        return ""


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment.encode("ascii", "replace").decode()[:64]  # LO, default repertoire
    return status


# -- the server ------------------------------------------------------------------------------


def build_ae(scp: WorklistSCP, settings: Settings) -> RegistryAE:
    ae = RegistryAE(scp, settings.edge_mwl_ae)
    ae.require_called_aet = True
    ae.maximum_associations = MAX_ASSOCIATIONS
    ae.acse_timeout = settings.dicom_acse_timeout
    ae.dimse_timeout = settings.dicom_dimse_timeout
    ae.network_timeout = settings.dicom_network_timeout
    ae.add_supported_context(Verification)
    ae.add_supported_context(ModalityWorklistInformationFind)
    return ae


def start_server(scp: WorklistSCP, settings: Settings, *, host: str | None = None,
                 port: int | None = None) -> NodelayServer:
    """Start the MWL SCP in a thread (non-blocking); `server.shutdown()` stops it."""
    ae = build_ae(scp, settings)
    handlers = [(evt.EVT_C_ECHO, on_c_echo, [scp]), (evt.EVT_C_FIND, on_c_find, [scp]),
                (evt.EVT_REJECTED, on_rejected, [scp])]
    address = (host or settings.bind_host, settings.edge_mwl_port if port is None else port)
    server = ae.make_server(address, evt_handlers=handlers, server_class=NodelayServer)
    threading.Thread(target=server.serve_forever, name="mwl-acceptor", daemon=True).start()
    compat_pynetdicom.register_server(ae, server)
    return server


def run_forever(settings: Settings) -> None:
    """`lancang edge mwl`: serve the worklist until SIGTERM/SIGINT."""
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    scp = WorklistSCP(bootstrap(settings, component="mwl"))
    server = start_server(scp, settings)
    log.info("mwl.start.ok ae=%s address=%s:%s", settings.edge_mwl_ae, *server.server_address[:2])
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    server.shutdown()
    log.info("mwl.stop")
