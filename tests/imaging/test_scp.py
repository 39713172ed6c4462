"""The DICOM receiver against real dcmtk peers: echo, store (many transfer syntaxes),
find, get, with tenancy and audit; on SQLite+filesystem and PostgreSQL+S3."""

from __future__ import annotations

import os
import subprocess

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from imaging.models import Instance, Study
from storage.models import AuditRecord
from tests.dicomdata import ct_instance
from tests.imaging.conftest import write_files

DCMTK = "/usr/bin"
ENV = {**os.environ, "TCP_NODELAY": "1"}


def dcmtk(tool: str, *args, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([f"{DCMTK}/{tool}", *map(str, args)], capture_output=True, text=True, env=ENV, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(f"{tool} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def find(node, level: str, *keys: str, calling: str = "FINDER") -> list[dict[str, str]]:
    """findscu answers as [{keyword: value}] (parsed from its -X output files would be nicer;
    dcmtk prints each response dataset, which is enough here)."""
    args = ["-S", "-aet", calling, "-aec", "LANCANG", "-k", f"QueryRetrieveLevel={level}",
            "-k", "SpecificCharacterSet=ISO_IR 192"]
    for key in keys:
        args += ["-k", key]
    done = dcmtk("findscu", *args, "127.0.0.1", node.port)
    return _parse_find(done.stdout + done.stderr)


def _parse_find(output: str) -> list[dict[str, str]]:
    answers, current = [], None
    for line in output.splitlines():
        if "Find Response:" in line:
            current = {}
            answers.append(current)
        elif current is not None and line.startswith("I: (") and "#" in line:
            head, _, comment = line.partition("#")
            keyword = comment.split(",")[-1].strip().split()[-1]
            value = head.split(" ", 3)[-1].strip()
            if value.startswith("["):
                value = value[1:value.rfind("]")]
            elif value.startswith("(no value"):
                value = ""
            # dcmtk prints a UID's NUL padding (PS3.5 6.2) inside the brackets: an odd-length
            # UID (about half of generated ones) came back as "…900\x00".
            current[keyword] = value.strip().rstrip("\x00")
    return answers


def _wait_for(runtime, action: str, count: int, timeout: float = 10) -> list[AuditRecord]:
    """Audit records are written by the association's thread, just after the peer is answered."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        with runtime.db.scope(readonly=True) as session:
            rows = session.scalars(select(AuditRecord).where(AuditRecord.action == action)).all()
            session.expunge_all()
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def _count(runtime, model) -> int:
    with runtime.db.scope(readonly=True) as session:
        return session.scalar(select(func.count()).select_from(model))


def test_echo_known_unknown_and_wrong_called_ae(node):
    dcmtk("echoscu", "-aet", "MOD1", "-aec", "LANCANG", "127.0.0.1", node.port)
    unknown = dcmtk("echoscu", "-aet", "NOBODY", "-aec", "LANCANG", "127.0.0.1", node.port, check=False)
    assert unknown.returncode != 0 and "Calling AE Title Not Recognized" in unknown.stdout + unknown.stderr
    wrong = dcmtk("echoscu", "-aet", "MOD1", "-aec", "NOTUS", "127.0.0.1", node.port, check=False)
    assert wrong.returncode != 0 and "Called AE Title Not Recognized" in wrong.stdout + wrong.stderr
    denied = _wait_for(node.runtime, "dicom.associate", 2)
    assert {r.detail["calling_ae"] for r in denied} == {"NOBODY", "MOD1"}
    assert all(r.outcome == "denied" for r in denied)


def test_disabled_ae_is_rejected(node):
    from storage import service

    with node.runtime.db.scope() as session:
        service.set_node_enabled(session=session, ae_title="MOD1", enabled=False)
    node.receiver._titles = (0.0, [])  # skip the registry cache's two seconds
    refused = dcmtk("echoscu", "-aet", "MOD1", "-aec", "LANCANG", "127.0.0.1", node.port, check=False)
    assert refused.returncode != 0


def test_store_then_every_instance_is_findable_at_once(node, tmp_path):
    study = generate_uid()
    series = generate_uid()
    blobs = [ct_instance(study_uid=study, series_uid=series, instance_number=i) for i in range(1, 21)]
    files = write_files(tmp_path / "in", blobs)
    dcmtk("storescu", "-aet", "MOD1", "-aec", "LANCANG", "127.0.0.1", node.port, *files)
    answers = find(node, "IMAGE", f"StudyInstanceUID={study}", f"SeriesInstanceUID={series}", "SOPInstanceUID")
    assert len(answers) == 20
    studies = find(node, "STUDY", "PatientName=张*", "StudyInstanceUID", "NumberOfStudyRelatedInstances",
                   "NumberOfStudyRelatedSeries", "ModalitiesInStudy", "PatientName")
    assert len(studies) == 1
    assert studies[0]["PatientName"] == "张^秀英"
    assert studies[0]["NumberOfStudyRelatedInstances"] == "20"
    assert studies[0]["NumberOfStudyRelatedSeries"] == "1"
    assert studies[0]["ModalitiesInStudy"] == "CT"


def test_gb18030_name_roundtrips_and_matches(node, tmp_path):
    blobs = [ct_instance(patient_name="张^秀英", charset="GB18030", patient_id="GB1"),
             # ISO 2022 IR 58 (GB2312) as a modality writes it: escape sequence ESC $ ) A.
             ct_instance(charset=r"\ISO 2022 IR 58", patient_id="GB2",
                         patient_name_bytes=b"Wang^Fang=\x1b$)A\xcd\xf5^\xb7\xbc"),
             ct_instance(patient_name="李^娜", charset="ISO_IR 192", patient_id="U8")]
    dcmtk("storescu", "-aet", "MOD1", "-aec", "LANCANG", "127.0.0.1", node.port, *write_files(tmp_path, blobs))
    by_id = {a["PatientID"]: a["PatientName"] for a in find(node, "STUDY", "PatientName", "PatientID")}
    assert by_id == {"GB1": "张^秀英", "GB2": "Wang^Fang=王^芳", "U8": "李^娜"}
    assert [a["PatientID"] for a in find(node, "STUDY", "PatientName=王*", "PatientID")] == ["GB2"]
    assert [a["PatientID"] for a in find(node, "STUDY", "PatientName=WANG*", "PatientID")] == ["GB2"]
    assert [a["PatientID"] for a in find(node, "STUDY", "PatientName=张^秀英", "PatientID")] == ["GB1"]
    patients = find(node, "PATIENT", "PatientName=李?娜", "PatientID", "NumberOfPatientRelatedStudies",
                    "NumberOfPatientRelatedInstances")
    assert [(p["PatientID"], p["NumberOfPatientRelatedStudies"], p["NumberOfPatientRelatedInstances"])
            for p in patients] == [("U8", "1", "1")]


def test_find_matching_rules(node, tmp_path):
    uids = [generate_uid() for _ in range(3)]
    blobs = [ct_instance(study_uid=uids[0], study_date="20261001", accession="ACC-1", patient_id="A"),
             ct_instance(study_uid=uids[1], study_date="20261015", accession="ACC-2", patient_id="B", modality="MR"),
             ct_instance(study_uid=uids[2], study_date="20261120", accession="X-3", patient_id="C")]
    dcmtk("storescu", "-aet", "MOD1", "-aec", "LANCANG", "127.0.0.1", node.port, *write_files(tmp_path, blobs))

    def ids(*keys, level="STUDY"):
        return sorted(a["PatientID"] for a in find(node, level, "PatientID", *keys))

    assert ids("StudyDate=20261001-20261031") == ["A", "B"]
    assert ids("StudyDate=20261016-") == ["C"]
    assert ids("StudyDate=-20261001") == ["A"]
    assert ids("StudyDate=20261015") == ["B"]
    assert ids("AccessionNumber=ACC-*") == ["A", "B"]
    assert ids(f"StudyInstanceUID={uids[0]}\\{uids[2]}") == ["A", "C"]
    assert ids("ModalitiesInStudy=MR") == ["B"]
    assert ids("ModalitiesInStudy=CT\\MR") == ["A", "B", "C"]
    assert ids("PatientID=?") == ["A", "B", "C"]
    assert ids("StudyDate=") == ["A", "B", "C"]
    series = find(node, "SERIES", f"StudyInstanceUID={uids[1]}", "Modality", "NumberOfSeriesRelatedInstances")
    assert [(s["Modality"], s["NumberOfSeriesRelatedInstances"]) for s in series] == [("MR", "1")]


def _with_sequences(blob: bytes, **sequences: list[dict]) -> bytes:
    """The instance with sequence elements added: {keyword: [ {item keyword: value} ]}."""
    import io

    from pydicom.dataset import Dataset

    ds = dcmread(io.BytesIO(blob))
    for keyword, items in sequences.items():
        values = []
        for fields in items:
            item = Dataset()
            for name, value in fields.items():
                setattr(item, name, value)
            values.append(item)
        setattr(ds, keyword, values)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def find_extracted(node, tmp_path, level: str, *keys: str) -> list:
    """findscu with -X: each response as a pydicom Dataset (nested items included)."""
    out = tmp_path / f"rsp-{len(list(tmp_path.glob('rsp-*')))}"
    out.mkdir()
    args = ["-S", "-X", "-od", out, "-aet", "FINDER", "-aec", "LANCANG", "-k", f"QueryRetrieveLevel={level}"]
    for key in keys:
        args += ["-k", key]
    dcmtk("findscu", *args, "127.0.0.1", node.port)
    return [dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]


def test_find_matches_sequences_at_image_level(node, tmp_path):
    study, series = generate_uid(), generate_uid()
    mpr = {"CodeValue": "113072", "CodingSchemeDesignator": "DCM", "CodeMeaning": "Multiplanar reformatting"}
    blobs = [
        _with_sequences(ct_instance(study_uid=study, series_uid=series, instance_number=1),
                        ReferencedImageSequence=[{"ReferencedSOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
                                                  "ReferencedSOPInstanceUID": "1.2.3.1"}]),
        _with_sequences(ct_instance(study_uid=study, series_uid=series, instance_number=2),
                        ReferencedImageSequence=[{"ReferencedSOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
                                                  "ReferencedSOPInstanceUID": "1.2.3.2"},
                                                 {"ReferencedSOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
                                                  "ReferencedSOPInstanceUID": "1.2.3.9"}],
                        DerivationCodeSequence=[mpr]),
        ct_instance(study_uid=study, series_uid=series, instance_number=3),
    ]
    dcmtk("storescu", "-aet", "MOD1", "-aec", "LANCANG", "127.0.0.1", node.port, *write_files(tmp_path / "in", blobs))
    where = [f"StudyInstanceUID={study}", f"SeriesInstanceUID={series}", "InstanceNumber"]

    def numbers(*keys) -> list[int]:
        return sorted(int(a.InstanceNumber) for a in find_extracted(node, tmp_path, "IMAGE", *where, *keys))

    # Any item may match (the second item of instance 2); a UID list; wildcards; every key of the item.
    assert numbers("ReferencedImageSequence[0].ReferencedSOPInstanceUID=1.2.3.9") == [2]
    assert numbers("ReferencedImageSequence[0].ReferencedSOPInstanceUID=1.2.3.1\\1.2.3.2") == [1, 2]
    assert numbers("DerivationCodeSequence[0].CodeMeaning=Multiplanar*") == [2]
    assert numbers("DerivationCodeSequence[0].CodeMeaning=multiplanar*") == []  # case-sensitive (LO)
    assert numbers("DerivationCodeSequence[0].CodeValue=113072",
                   "DerivationCodeSequence[0].CodingSchemeDesignator=SRT") == []
    assert numbers("ReferencedImageSequence[0].ReferencedSOPInstanceUID=9.9.9") == []
    # An empty item is universal matching: every instance, each with what it stored.
    answers = {int(a.InstanceNumber): a for a in find_extracted(node, tmp_path, "IMAGE", *where,
                                                               "ReferencedImageSequence[0].ReferencedSOPInstanceUID")}
    assert sorted(answers) == [1, 2, 3]
    assert [i.ReferencedSOPInstanceUID for i in answers[2].ReferencedImageSequence] == ["1.2.3.2", "1.2.3.9"]
    assert len(answers[3].get("ReferencedImageSequence") or []) == 0
    # Above IMAGE level a sequence key matches universally (no per-study JSON to match against).
    studies = find_extracted(node, tmp_path, "STUDY", f"StudyInstanceUID={study}",
                             "ReferencedImageSequence[0].ReferencedSOPInstanceUID=9.9.9")
    assert [str(a.StudyInstanceUID) for a in studies] == [study]


def test_qido_matches_sequences_as_c_find_does(node, tmp_path):
    """15.3: one identifier parser for C-FIND and QIDO-RS (imaging.query.parse_identifier).
    QIDO ignored `Sequence.Item=value` with a Warning; it now answers what C-FIND answers."""
    from fastapi.testclient import TestClient

    from storage import identity
    from web.app import create_app

    study, series = generate_uid(), generate_uid()
    blobs = [
        _with_sequences(ct_instance(study_uid=study, series_uid=series, instance_number=1),
                        ReferencedImageSequence=[{"ReferencedSOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
                                                  "ReferencedSOPInstanceUID": "1.2.3.1"}]),
        _with_sequences(ct_instance(study_uid=study, series_uid=series, instance_number=2),
                        ReferencedImageSequence=[{"ReferencedSOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
                                                  "ReferencedSOPInstanceUID": "1.2.3.9"}]),
        ct_instance(study_uid=study, series_uid=series, instance_number=3),
    ]
    dcmtk("storescu", "-aet", "MOD1", "-aec", "LANCANG", "127.0.0.1", node.port, *write_files(tmp_path / "in", blobs))
    with node.runtime.db.scope() as session:
        user = identity.add_user(session=session, username="seq-reader", role="radiographer",
                                 institution_code="T01", password="password-123")
        token, _ = identity.issue_token(session=session, user=user)
    where = [f"StudyInstanceUID={study}", f"SeriesInstanceUID={series}", "InstanceNumber"]
    cases = {"1.2.3.9": [2], "1.2.3.1\\1.2.3.9": [1, 2], "1.2.3.*": [1, 2], "9.9.9": []}
    with TestClient(create_app(node.runtime.settings)) as client:
        for value, expected in cases.items():
            by_find = sorted(int(a.InstanceNumber) for a in find_extracted(
                node, tmp_path, "IMAGE", *where, f"ReferencedImageSequence[0].ReferencedSOPInstanceUID={value}"))
            answer = client.get(f"/dicom-web/studies/{study}/series/{series}/instances",
                                params={"ReferencedImageSequence.ReferencedSOPInstanceUID": value.replace("\\", ",")},
                                headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 200 and "Warning" not in answer.headers, answer.headers.get("Warning")
            by_qido = sorted(item["00200013"]["Value"][0] for item in answer.json())
            assert by_find == by_qido == expected, value
        # Above IMAGE level a sequence key cannot be matched: both treat it as universal; QIDO says so.
        answer = client.get("/dicom-web/studies", params={"StudyInstanceUID": study,
                                                           "ReferencedImageSequence.ReferencedSOPInstanceUID": "9.9.9"},
                            headers={"Authorization": f"Bearer {token}"})
        assert len(answer.json()) == 1 and "not supported at this level" in answer.headers["Warning"]


def test_other_institution_sees_nothing(node, tmp_path):
    dcmtk("storescu", "-aet", "MOD1", "-aec", "LANCANG", "127.0.0.1", node.port,
          *write_files(tmp_path, [ct_instance()]))
    assert len(find(node, "STUDY", "StudyInstanceUID")) == 1
    assert find(node, "STUDY", "StudyInstanceUID", calling="OUTSIDER") == []
    assert find(node, "PATIENT", "PatientID", calling="OUTSIDER") == []


COMPRESSED = ["CT_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_RLE.dcm",
              "MR_small_jp2klossless.dcm", "JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm", "JPEG-LL.dcm",
              "MR_small_jpeg_ls_lossless.dcm", "JPGExtended.dcm", "SC_rgb_rle.dcm"]


# storescu proposes uncompressed syntaxes unless told which compressed one to offer.
PROPOSE = {
    "1.2.840.10008.1.2": "-xi", "1.2.840.10008.1.2.1": "-xe", "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.5": "-xr", "1.2.840.10008.1.2.4.70": "-xs", "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx", "1.2.840.10008.1.2.4.90": "-xv", "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.4.80": "-xt", "1.2.840.10008.1.2.4.81": "-xu",
}


def test_store_many_transfer_syntaxes_exactly_as_received(node, tmp_path):
    files = []
    for name in COMPRESSED:  # several samples share one SOP Instance UID: give each its own
        ds = dcmread(get_testdata_file(name))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        files.append(tmp_path / name)
        ds.save_as(files[-1])
    # Propose the file's own transfer syntax, as a modality sending compressed data does.
    for path in files:
        flag = PROPOSE[str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)]
        dcmtk("storescu", "-R", flag, "-aet", "MOD1", "-aec", "LANCANG", "127.0.0.1", node.port, path)
    with node.runtime.db.scope(readonly=True) as session:
        stored = {i.sop_instance_uid: i for i in session.scalars(select(Instance))}
    assert len(stored) == len(files)
    for path in files:
        original = dcmread(path)
        row = stored[original.SOPInstanceUID]
        assert row.transfer_syntax_uid == original.file_meta.TransferSyntaxUID
        kept = dcmread(node.runtime.store.stream and __import__("io").BytesIO(node.runtime.store.get(row.object_key)))
        assert kept.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert kept.PixelData == original.PixelData, path.name


def test_get_retrieves_byte_identical_pixels(node, tmp_path):
    study = generate_uid()
    blobs = [ct_instance(study_uid=study, instance_number=i) for i in range(1, 6)]
    dcmtk("storescu", "-aet", "MOD1", "-aec", "LANCANG", "127.0.0.1", node.port, *write_files(tmp_path / "in", blobs))
    out = tmp_path / "out"
    out.mkdir()
    done = dcmtk("getscu", "-aet", "FINDER", "-aec", "LANCANG", "-k", "QueryRetrieveLevel=STUDY",
                 "-k", f"StudyInstanceUID={study}", "-od", out, "127.0.0.1", node.port)
    received = {dcmread(p).SOPInstanceUID: dcmread(p) for p in out.iterdir()}
    sent = {dcmread(__import__("io").BytesIO(b)).SOPInstanceUID: dcmread(__import__("io").BytesIO(b)) for b in blobs}
    assert received.keys() == sent.keys(), done.stdout + done.stderr
    for uid, ds in sent.items():
        assert received[uid].PixelData == ds.PixelData
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    dcmtk("getscu", "-aet", "OUTSIDER", "-aec", "LANCANG", "-k", "QueryRetrieveLevel=STUDY",
          "-k", f"StudyInstanceUID={study}", "-od", nothing, "127.0.0.1", node.port, check=False)
    assert list(nothing.iterdir()) == []


def test_resend_is_idempotent_and_changed_bytes_keep_the_old_version(node, tmp_path):
    sop, study, series = generate_uid(), generate_uid(), generate_uid()
    first = ct_instance(sop_uid=sop, study_uid=study, series_uid=series, seed=1)
    changed = ct_instance(sop_uid=sop, study_uid=study, series_uid=series, seed=2)
    send = lambda blob, name: dcmtk("storescu", "-aet", "MOD1", "-aec", "LANCANG", "127.0.0.1", node.port,
                                    *write_files(tmp_path / name, [blob]))
    send(first, "a")
    send(first, "b")
    assert _count(node.runtime, Instance) == 1
    send(changed, "c")
    with node.runtime.db.scope(readonly=True) as session:
        row = session.scalar(select(Instance))
        study_row = session.scalar(select(Study))
        from imaging.models import SupersededInstance

        old = session.scalar(select(SupersededInstance))
        replaced = session.scalar(select(AuditRecord).where(AuditRecord.action == "dicom.instance.replaced"))
    assert study_row.num_instances == 1
    assert node.runtime.store.exists(old.object_key) and node.runtime.store.exists(row.object_key)
    assert old.object_key != row.object_key and replaced.object_id == sop


def test_store_and_find_are_audited_per_association(node, tmp_path):
    dcmtk("storescu", "-aet", "MOD1", "-aec", "LANCANG", "127.0.0.1", node.port,
          *write_files(tmp_path, [ct_instance(), ct_instance()]))
    find(node, "STUDY", "PatientID")
    _wait_for(node.runtime, "dicom.store", 1)  # written when the association's connection closes
    with node.runtime.db.scope(readonly=True) as session:
        records = {r.action: r for r in session.scalars(select(AuditRecord))}
    assert records["dicom.store"].detail["stored"] == 2 and records["dicom.store"].actor == "MOD1"
    assert records["dicom.find"].actor == "FINDER"


def test_an_instance_stays_in_its_series_and_institution(node, tmp_path):
    """13.1 over C-STORE: OUTSIDER (T02) re-sends T01's SOP Instance UID in a new study and
    series: 0x0124, audited as a security event, T01 keeps it; within T01 a move to another
    series is 0xA900. Failed on the previous code (0x0000 and the instance moved)."""
    from tests.imaging.scu import send_files

    sop, study, series = generate_uid(), generate_uid(), generate_uid()
    original = ct_instance(sop_uid=sop, study_uid=study, series_uid=series, seed=1)
    assert send_files(node.port, write_files(tmp_path / "a", [original])) == [0]
    takeover = ct_instance(sop_uid=sop, patient_id="THIEF", seed=2)
    assert send_files(node.port, write_files(tmp_path / "b", [takeover]), calling="OUTSIDER") == [0x0124]
    moved = ct_instance(sop_uid=sop, study_uid=study, seed=3)
    assert send_files(node.port, write_files(tmp_path / "c", [moved])) == [0xA900]
    with node.runtime.db.scope(readonly=True) as session:
        row = session.execute(select(Instance.sha256, Study.study_instance_uid, Study.num_instances)
                              .join(Instance.series).join(Study)).all()
        refused = session.scalars(select(AuditRecord).where(AuditRecord.action == "dicom.instance.refused")).all()
    assert [(r.study_instance_uid, r.num_instances) for r in row] == [(study, 1)]
    assert [r.detail["status"] for r in refused] == ["0x0124", "0xA900"]
    assert all(r.outcome == "denied" and r.detail["owner_series_uid"] == series for r in refused)


# -- 13.3: AEs bound to networks and to what they may do ----------------------------------


def _associate(node, calling: str, source: str = "127.0.0.1"):
    from pynetdicom import AE as ScuAE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

    ae = ScuAE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    return ae.associate("127.0.0.1", node.port, ae_title="LANCANG", bind_address=(source, 0))


def _set_access(node, title: str, **access):
    from storage import service

    with node.runtime.db.scope() as session:
        service.set_node_access(session=session, ae_title=title, **access)
    node.receiver._titles = (0.0, [])  # forget the 2 s registry cache


def test_an_ae_bound_to_a_network_is_refused_from_elsewhere(node):
    """Failed on the previous code: knowing the title was enough from any address."""
    _set_access(node, "FINDER", allow=["127.0.0.2/32"])
    elsewhere = _associate(node, "FINDER", source="127.0.0.1")
    assert elsewhere.is_rejected
    allowed = _associate(node, "FINDER", source="127.0.0.2")
    assert allowed.is_established
    allowed.release()
    denied = _rejections_of(node, "FINDER")
    assert [(r.outcome, r.source.split(":")[0]) for r in denied][-1:] == [("denied", "127.0.0.1")]


def test_binding_is_mandatory_for_query_aes_when_required(node):
    node.receiver.settings = node.receiver.settings.model_copy(update={"dicom_require_host_binding": True})
    node.receiver._titles = (0.0, [])
    assert _associate(node, "FINDER").is_rejected  # may query, bound to nothing
    store_only = _associate(node, "MOD1")  # a modality: may only store, binding optional
    assert store_only.is_established
    store_only.release()
    _set_access(node, "FINDER", allow=["127.0.0.0/8"])
    bound = _associate(node, "FINDER")
    assert bound.is_established
    bound.release()


def test_a_store_only_ae_cannot_query_or_retrieve(node, tmp_path):
    """Failed on the previous code: any registered AE could C-FIND and C-GET its institution."""
    study = generate_uid()
    dcmtk("storescu", "-aet", "MOD1", "-aec", "LANCANG", "127.0.0.1", node.port,
          *write_files(tmp_path / "in", [ct_instance(study_uid=study)]))
    refused = dcmtk("findscu", "-v", "-S", "-aet", "MOD1", "-aec", "LANCANG", "-k", "QueryRetrieveLevel=STUDY",
                    "-k", f"StudyInstanceUID={study}", "127.0.0.1", node.port, check=False)
    assert "Status: 0x124" in refused.stderr
    out = tmp_path / "out"
    out.mkdir()
    dcmtk("getscu", "-aet", "MOD1", "-aec", "LANCANG", "-k", "QueryRetrieveLevel=STUDY",
          "-k", f"StudyInstanceUID={study}", "-od", out, "127.0.0.1", node.port, check=False)
    assert list(out.iterdir()) == []
    with node.runtime.db.scope(readonly=True) as session:
        actions = session.execute(select(AuditRecord.action, AuditRecord.outcome)
                                  .where(AuditRecord.actor == "MOD1", AuditRecord.outcome == "denied")).all()
    assert sorted(actions) == [("dicom.find", "denied"), ("dicom.get", "denied")]
    assert find(node, "STUDY", "StudyInstanceUID") != []  # FINDER, allowed to query, still can


def test_rejected_associations_are_audited_once_per_source_and_interval(node):
    """Failed on the previous code: one synced record per rejected association."""
    for _ in range(6):
        assert _associate(node, "NOBODY").is_rejected
    # The rejection handler audits after the peer has its A-ASSOCIATE-RJ: poll a little.
    assert len(_rejections_of(node, "NOBODY", at_least=1)) == 1
    node.receiver.settings = node.receiver.settings.model_copy(update={"dicom_reject_audit_interval_s": 0.0})
    assert _associate(node, "NOBODY").is_rejected
    assert [r.detail["earlier_rejections"] for r in _rejections_of(node, "NOBODY", at_least=2)] == [0, 5]


def _rejections_of(node, calling: str, at_least: int = 1, timeout: float = 5.0) -> list:
    """This AE's rejected-association records, waiting up to `timeout` for `at_least`."""
    import time as clock

    deadline = clock.monotonic() + timeout
    while True:
        with node.runtime.db.scope(readonly=True) as session:
            records = session.scalars(select(AuditRecord).where(AuditRecord.action == "dicom.associate")
                                      .order_by(AuditRecord.seq)).all()
        found = [r for r in records if r.detail.get("calling_ae") == calling]
        if len(found) >= at_least or clock.monotonic() > deadline:
            return found
        clock.sleep(0.05)


def test_a_retired_storage_class_is_stored_and_the_association_goes_on(node, tmp_path):
    """14.2: retired US (1.2.840.10008.5.1.4.1.1.6), sent first on an association by an old
    ultrasound machine, aborted the association on the previous code, losing the ten files
    after it. Now all eleven are stored."""
    from tests.imaging.scu import send_files

    study = generate_uid()
    retired = ct_instance(study_uid=study, sop_class="1.2.840.10008.5.1.4.1.1.6", modality="US")
    normal = [ct_instance(study_uid=study, instance_number=n, seed=n) for n in range(2, 12)]
    statuses = send_files(node.port, write_files(tmp_path, [retired, *normal]))
    assert statuses == [0] * 11
    assert _count(node.runtime, Instance) == 11


def test_an_instance_without_patient_id_answers_an_empty_one(node, tmp_path):
    """14.4: the internal key "~<StudyInstanceUID>" showed in C-FIND answers."""
    study = generate_uid()
    dcmtk("storescu", "-aet", "MOD1", "-aec", "LANCANG", "127.0.0.1", node.port,
          *write_files(tmp_path, [ct_instance(study_uid=study, patient_id="")]))
    answers = find(node, "STUDY", f"StudyInstanceUID={study}", "PatientID", "PatientName")
    assert len(answers) == 1 and not answers[0].get("PatientID") and "~" not in str(answers)


def test_stored_files_name_their_sender_and_lancang(node, tmp_path):
    """14.4: Part 10 headers kept pynetdicom's implementation and no Source AE."""
    from imaging.scp import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

    sent = ct_instance(study_uid=generate_uid())
    dcmtk("storescu", "-aet", "MOD1", "-aec", "LANCANG", "127.0.0.1", node.port, *write_files(tmp_path, [sent]))
    with node.runtime.db.scope(readonly=True) as session:
        key = session.scalar(select(Instance.object_key))
    stored = dcmread(__import__("io").BytesIO(node.runtime.store.get(key)))
    meta = stored.file_meta
    assert meta.SourceApplicationEntityTitle == "MOD1"
    assert (meta.ImplementationClassUID, meta.ImplementationVersionName) == (IMPLEMENTATION_CLASS_UID,
                                                                            IMPLEMENTATION_VERSION_NAME)
    original = dcmread(__import__("io").BytesIO(sent))
    assert stored.PixelData == original.PixelData and stored.PatientName == original.PatientName


def test_c_find_decodes_an_iso_2022_ir_58_identifier(node, tmp_path):
    """14.6: `\\ISO 2022 IR 58` identifiers kept the escape sequence in the value (0 hits)."""
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset
    from pynetdicom import AE as ScuAE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

    study = generate_uid()
    dcmtk("storescu", "-aet", "MOD1", "-aec", "LANCANG", "127.0.0.1", node.port,
          *write_files(tmp_path, [ct_instance(study_uid=study, patient_name="张^秀英")]))
    identifier = Dataset()
    identifier.SpecificCharacterSet = ["", "ISO 2022 IR 58"]
    identifier.QueryRetrieveLevel = "STUDY"
    identifier[0x00100010] = DataElement(0x00100010, "PN", b"\x1b$)A" + "张".encode("gb2312") + b"*")
    identifier.StudyInstanceUID = ""
    ae = ScuAE(ae_title="FINDER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="LANCANG")
    try:
        found = [ds.StudyInstanceUID for status, ds in assoc.send_c_find(identifier,
                 StudyRootQueryRetrieveInformationModelFind) if status and status.Status == 0xFF00]
    finally:
        assoc.release()
    assert found == [study]


def test_another_institution_cannot_write_into_a_study_or_series_over_c_store(node, tmp_path):
    """13.1 authorization matrix, C-STORE side: OUTSIDER (T02) reusing T01's Study or Series
    Instance UID with new SOP Instance UIDs is refused 0x0124 and audited; T01's counters
    stay as QIDO/C-FIND list them."""
    from tests.imaging.scu import send_files

    study, series = generate_uid(), generate_uid()
    assert send_files(node.port, write_files(tmp_path / "a", [ct_instance(study_uid=study, series_uid=series)])) == [0]
    into_study = ct_instance(study_uid=study, patient_id="THIEF", seed=4)
    into_series = ct_instance(study_uid=generate_uid(), series_uid=series, patient_id="THIEF", seed=5)
    assert send_files(node.port, write_files(tmp_path / "b", [into_study, into_series]),
                      calling="OUTSIDER") == [0x0124, 0x0124]
    with node.runtime.db.scope(readonly=True) as session:
        counts = session.execute(select(Study.study_instance_uid, Study.num_instances)).all()
        refused = session.scalars(select(AuditRecord).where(AuditRecord.action == "dicom.instance.refused")).all()
    assert counts == [(study, 1)] and len(refused) == 2
    assert [a["StudyInstanceUID"] for a in find(node, "IMAGE", f"StudyInstanceUID={study}", "SOPInstanceUID")] \
        == [study]


def test_sloppy_uids_are_stored_exactly_with_a_warning(node, tmp_path):
    """14.4: a SOP Instance UID longer than 64 characters, and one with a letter and a
    leading zero, are stored exactly as sent with 0xB007 and a comment (they were refused
    0xA900); C-FIND answers them unchanged and the object key holds a digest, not the UID.
    A UID that could not be kept safely (a '/' in it) is still refused."""
    from imaging.models import Instance
    from tests.imaging.scu import send_files

    study = generate_uid()
    long_uid = generate_uid() + ".1234567890.1234567890"
    assert len(long_uid) > 64
    odd_uid = "1.2.840.099.ABC.7"
    blobs = [ct_instance(study_uid=study, sop_uid=long_uid, instance_number=1),
             ct_instance(study_uid=study, sop_uid=odd_uid, instance_number=2),
             ct_instance(study_uid=study, sop_uid="1.2.3/../../etc", instance_number=3)]
    assert send_files(node.port, write_files(tmp_path, blobs)) == [0xB007, 0xB007, 0xA900]
    found = {a["SOPInstanceUID"].rstrip("\x00") for a in find(node, "IMAGE", f"StudyInstanceUID={study}",
                                                              "SOPInstanceUID")}  # UI pads with NUL
    assert found == {long_uid, odd_uid}
    with node.runtime.db.scope(readonly=True) as session:
        keys = dict(session.execute(select(Instance.sop_instance_uid, Instance.object_key)).all())
    assert set(keys) == {long_uid, odd_uid}
    assert all(uid not in key and "/u" in key for uid, key in keys.items())
