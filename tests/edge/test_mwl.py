"""The edge's Modality Worklist SCP (edge/mwl.py) queried by dcmtk's `findscu -W`, a peer nobody
here wrote, as a modality would: the registered patient comes back with the Chinese name in
the declared character set (GB18030 unless the query asks for UTF-8), decoded by pydicom and
by dcmtk's own converter; matching by modality, station, date range and name; an AE that is not
registered is refused at association, one that may only store is refused the query, and
another institution's AE sees none of ours. Every query is audited."""

from __future__ import annotations

import os
import struct
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select

from edge import mwl, worklist
from edge.worklist import Registration
from imaging.persons import check_character
from storage import identity
from storage import service as tenancy
from storage.models import AuditRecord
from tests.services import free_port

FINDSCU, DCMDUMP = "/usr/bin/findscu", "/usr/bin/dcmdump"
BODY = "53082819900101002"
RESIDENT = BODY + check_character(BODY)
NAME = "Zhang^Xiuying=张^秀英"
RETURN_KEYS = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
               "StudyInstanceUID", "RequestedProcedureDescription", "RequestedProcedurePriority",
               "OtherPatientIDsSequence", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription",
               "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime")

pytestmark = pytest.mark.skipif(not Path(FINDSCU).exists() and os.environ.get("CI") != "true",
                                reason="dcmtk not installed (scripts/test.sh installs it)")


@pytest.fixture
def edge(runtime):
    """勐朗镇 with a DR (DR01) and an ultrasound (US01) that may store and query, a CT that may
    only store, and another township's DR; the MWL SCP on a free loopback port."""
    with runtime.db.scope() as session:
        tenancy.add_institution(session=session, code="MLZ", name="勐朗镇卫生院", level="township")
        tenancy.add_institution(session=session, code="NFX", name="糯福乡卫生院", level="township")
        for aet, code, can in (("DR01", "MLZ", "store,query"), ("US01", "MLZ", "store,query"),
                               ("CT_ONLY", "MLZ", "store"), ("NF_DR", "NFX", "store,query")):
            tenancy.add_node(session=session, ae_title=aet, institution_code=code, can=can, allow=["127.0.0.1"])
        identity.add_user(session=session, username="desk", role="radiographer", institution_code="MLZ",
                          password="password-1")
        runtime.principal = identity.principal_for(identity.get_user(session=session, username="desk"))
    runtime.port = free_port()
    server = mwl.start_server(mwl.WorklistSCP(runtime), runtime.settings, host="127.0.0.1", port=runtime.port)
    yield runtime
    server.shutdown()


def _register(edge, **fields):
    values = dict(family_name="张", given_name="秀英", sex="F", birth_date="1990-01-01", resident_id=RESIDENT,
                  modality="DX", procedure_code="DX01", station_ae="DR01", risk_colour="red")
    values.update(fields)
    with edge.db.scope() as session:
        entry = worklist.register(session=session, principal=edge.principal, registration=Registration(**values))
        return entry.accession_number


def _findscu(edge, tmp_path: Path, *keys: str | bytes,
             calling: str = "DR01") -> tuple[subprocess.CompletedProcess, list]:
    """findscu -W with the keys (plus RETURN_KEYS); (the process, the response files read back)."""
    out = tmp_path / f"rsp{len(list(tmp_path.glob('rsp*')))}"
    out.mkdir()
    command = [FINDSCU, "-W", "-v", "-X", "-od", str(out), "-aet", calling, "-aec", "LANCANG_MWL"]
    for key in (*RETURN_KEYS, *keys):  # later keys win; one given as bytes goes to findscu as those bytes
        command += ["-k", key]
    command = [part if isinstance(part, bytes) else part.encode() for part in command]
    done = subprocess.run(command + [b"127.0.0.1", str(edge.port).encode()], capture_output=True, timeout=60,
                          env={**os.environ, "TCP_NODELAY": "1"})
    done.stdout, done.stderr = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    return done, [dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]


def _accessions(answers) -> set[str]:
    return {str(ds.AccessionNumber) for ds in answers}


def _raw_value(path: Path, tag: int) -> bytes:
    """A top-level element's value bytes exactly as findscu wrote them (Implicit VR Little
    Endian, as its -X files are): nothing decoded on the way."""
    assert dcmread(path).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    data = path.read_bytes()
    at = data.index(struct.pack("<HH", tag >> 16, tag & 0xFFFF), 132 + 12 + struct.unpack("<I", data[140:144])[0])
    length = struct.unpack("<I", data[at + 4:at + 8])[0]
    return data[at + 8:at + 8 + length]


def _day(edge, days: int = 0) -> str:
    return (worklist.localtime_today() + timedelta(days=days)).strftime("%Y%m%d")


def test_findscu_gets_the_registered_patient_with_the_chinese_name_in_gb18030(edge, tmp_path):
    accession = _register(edge)
    done, answers = _findscu(edge, tmp_path, "ScheduledProcedureStepSequence[0].Modality=DX",
                             f"ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate={_day(edge)}",
                             "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=DR01")
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(answers) == 1
    answer = answers[0]
    path = Path(answer.filename)
    # The bytes on the wire: GB18030 declared, the name encoded in it (PN padded to even length).
    assert _raw_value(path, 0x00080005).rstrip(b" ") == b"GB18030"
    assert _raw_value(path, 0x00100010).rstrip(b" ") == NAME.encode("gb18030")
    assert str(answer.PatientName) == NAME  # decoded by pydicom under the declared set
    dumped = subprocess.run([DCMDUMP, "+U8", str(path)], capture_output=True, text=True, check=True).stdout
    assert "[Zhang^Xiuying=张^秀英]" in dumped  # and by dcmtk's own converter
    assert "[胸部正位 Chest PA]" in dumped
    assert (answer.AccessionNumber, answer.PatientID, answer.PatientBirthDate, answer.PatientSex) == \
        (accession, f"MLZ-{int(accession[-6:]):06d}", "19900101", "F")
    assert answer.StudyInstanceUID.startswith("2.25.") and answer.RequestedProcedurePriority == "HIGH"
    other = answer.OtherPatientIDsSequence[0]  # how the region joins the images to the person
    assert (other.PatientID, other.IssuerOfPatientID) == (RESIDENT, "RESIDENT_ID_CN")
    step = answer.ScheduledProcedureStepSequence[0]
    assert (step.Modality, step.ScheduledStationAETitle, step.ScheduledProcedureStepStartDate) == \
        ("DX", "DR01", _day(edge))
    assert "PatientTelephoneNumbers" not in answer and "MedicalAlerts" not in answer  # only the keys asked for
    with edge.db.scope(readonly=True) as session:
        record = session.scalars(select(AuditRecord).where(AuditRecord.action == "worklist.find")).one()
    assert (record.actor, record.actor_kind, record.institution, record.outcome) == ("DR01", "ae", "MLZ", "ok")
    assert record.detail == {"matches": 1, "charset": "GB18030"} and '"Modality": "DX"' in record.object_id


def test_a_modality_that_asks_in_utf8_is_answered_in_utf8(edge, tmp_path):
    _register(edge)
    done, answers = _findscu(edge, tmp_path, "SpecificCharacterSet=ISO_IR 192",
                             "ScheduledProcedureStepSequence[0].Modality=DX")
    assert done.returncode == 0, done.stdout + done.stderr
    path = Path(answers[0].filename)
    assert _raw_value(path, 0x00080005).rstrip(b" ") == b"ISO_IR 192"
    assert _raw_value(path, 0x00100010).rstrip(b" ") == NAME.encode("utf-8")
    assert str(answers[0].PatientName) == NAME


def test_matching_by_modality_date_range_station_and_name(edge, tmp_path):
    today = _register(edge)
    tomorrow = _register(edge, scheduled_date=(worklist.localtime_today() + timedelta(days=1)).isoformat(),
                         scheduled_time="09:30", family_name="王", given_name="芳", resident_id="", risk_colour="")
    scan = _register(edge, modality="US", procedure_code="US01", station_ae="", resident_id="", birth_date="1995-05-05")
    cancelled = _register(edge)
    with edge.db.scope() as session:
        entry = session.scalars(select(worklist.WorklistEntry).where(
            worklist.WorklistEntry.accession_number == cancelled)).one()
        worklist.cancel(session=session, principal=edge.principal, entry_id=entry.id)

    def found(*keys, calling="DR01") -> set[str]:
        done, answers = _findscu(edge, tmp_path, *keys, calling=calling)
        assert done.returncode == 0, done.stdout + done.stderr
        return _accessions(answers)

    sps = "ScheduledProcedureStepSequence[0]."
    assert found(f"{sps}Modality=DX", f"{sps}ScheduledProcedureStepStartDate={_day(edge)}") == {today}
    assert found(f"{sps}Modality=DX", f"{sps}ScheduledProcedureStepStartDate={_day(edge)}-{_day(edge, 1)}") == \
        {today, tomorrow}
    assert found(f"{sps}ScheduledProcedureStepStartDate={_day(edge, 1)}-") == {tomorrow}
    assert found(f"{sps}ScheduledProcedureStepStartDate=-{_day(edge, -1)}") == set()
    assert found(f"{sps}ScheduledProcedureStepStartDate={_day(edge, 1)}",
                 f"{sps}ScheduledProcedureStepStartTime=0900-1000") == {tomorrow}
    assert found(f"{sps}Modality=US") == {scan}
    # The ultrasound asks for its own station: its exam was booked for any station.
    assert found(f"{sps}ScheduledStationAETitle=US01", calling="US01") == {scan}
    # A Chinese modality that declares no character set sends GBK/GB18030 bytes; one that
    # declares UTF-8 is read as UTF-8.
    assert found("PatientName=张*".encode("gb18030")) == {today, scan}
    assert found("SpecificCharacterSet=ISO_IR 192", "PatientName=张*") == {today, scan}
    assert found("PatientName=zhang^xiu*") == {today, scan}  # the pinyin group, any case
    assert found("PatientName=王芳".encode("gb18030")) == {tomorrow}  # typed without the ^
    assert found("SpecificCharacterSet=ISO_IR 192", "PatientName=李*") == set()
    assert found(f"AccessionNumber={today}") == {today}
    assert found("PatientID=MLZ-*") == {today, tomorrow, scan}


def test_an_unregistered_ae_is_refused_and_others_get_nothing_of_ours(edge, tmp_path):
    _register(edge)
    stranger, answers = _findscu(edge, tmp_path, calling="STRANGER")
    assert stranger.returncode != 0 and not answers
    assert "Calling AE Title Not Recognized" in stranger.stdout + stranger.stderr
    store_only, answers = _findscu(edge, tmp_path, calling="CT_ONLY")
    said = store_only.stdout + store_only.stderr
    assert not answers and "Final Find Response (Unknown Status: 0x124)" in said, said  # Refused: Not Authorized
    elsewhere, answers = _findscu(edge, tmp_path, calling="NF_DR")
    assert elsewhere.returncode == 0 and answers == []
    with edge.db.scope(readonly=True) as session:
        records = session.scalars(select(AuditRecord).where(AuditRecord.action.like("worklist.%"))
                                  .order_by(AuditRecord.seq)).all()
    assert [(r.action, r.actor, r.outcome) for r in records if r.action != "worklist.register"] == [
        ("worklist.associate", "ae:STRANGER", "denied"), ("worklist.find", "CT_ONLY", "denied"),
        ("worklist.find", "NF_DR", "ok")]
    assert records[-1].detail["matches"] == 0
