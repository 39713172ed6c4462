"""Measurements saved as a DICOM SR (TID 1500) and key images as a Key Object Selection, stored
into the study through the Ingestor and read back by another reader; the objects pass
dciodvfy, DICOMweb lists them, the patient's film page and the consult report show the key
images first. Refusals: unseen study 404, wrong role 403, patient link 401, bad bodies 422.

On the previous code none of the four endpoints existed (404/405)."""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from film import service as shares
from imaging import annotations, keyimages, policy
from imaging.models import Instance, Series, Study
from imaging.service import Ingestor
from storage import identity
from storage.access import Principal
from storage.errors import NotPermitted
from storage.models import AuditRecord, Institution
from tests.consult import test_flow
from tests.dicomdata import ct_instance
from web.app import create_app

# The consult flow's people, institutions, signing certificates and CT study, and its API client.
world, api, ok = test_flow.world, test_flow.api, test_flow.ok

PHONE = {"user-agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0) LancangTest", "accept": "text/html"}
SIZE = 64


@pytest.fixture(params=["embedded"])
def backend(request):
    return request.param


def _multi_frame(study_uid: str, series_uid: str, frames: int = 3) -> bytes:
    """An Enhanced CT instance with `frames` frames (pixels and frame count: all a viewer needs here)."""
    ds = dcmread(io.BytesIO(ct_instance(study_uid=study_uid, series_uid=series_uid, size=SIZE, instance_number=9,
                                        sop_class="1.2.840.10008.5.1.4.1.1.2.1")))
    ds.NumberOfFrames = frames
    ds.PixelData = ds.PixelData * frames
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def study(runtime, world, api):
    """The flow's CT (one image) plus a second series of two images and a three-frame image;
    a read consult assigned to wang (reader) and chen, which grants them the study. zhao is
    the township's coordinator (sees the study, may not annotate)."""
    _, study_uid = world
    with runtime.db.scope() as session:
        town = session.scalar(select(Institution).where(Institution.code == "TOWN"))
        zhao = identity.add_user(session=session, username="zhao", role="coordinator", institution_code="TOWN",
                                 password="password-1", display_name="赵协调")
        world[0]["zhao"] = identity.issue_token(session=session, user=zhao)[0]
        town_id = town.id
    series_uid = generate_uid()
    ingestor = Ingestor(runtime.db, runtime.store)
    for n in (1, 2):
        ingestor.ingest(ct_instance(study_uid=study_uid, series_uid=series_uid, size=SIZE, instance_number=n),
                        institution_id=town_id, source="test")
    ingestor.ingest(_multi_frame(study_uid, series_uid), institution_id=town_id, source="test")
    ingestor.close()
    cid = ok(api("POST", "li", "/api/consults", json={
        "kind": "read", "target": "COUNTY", "study_uids": [study_uid], "clinical_question": "右下肺结节？"}), 201)["id"]
    ok(api("POST", "zhou", f"/api/consults/{cid}/accept"))
    ok(api("POST", "zhou", f"/api/consults/{cid}/assign", json={"reader": "wang", "reviewer": "chen"}))
    with runtime.db.scope(readonly=True) as session:
        rows = session.execute(select(Instance.sop_instance_uid, Series.series_instance_uid, Instance.instance_number,
                                      Instance.number_of_frames, Instance.id)
                               .join(Series, Series.id == Instance.series_pk)
                               .where(Series.series_instance_uid == series_uid)
                               .order_by(Instance.instance_number)).all()
    images = {row.instance_number: {"seriesUid": row.series_instance_uid, "sopInstanceUid": row.sop_instance_uid,
                                    "id": row.id, "frames": row.number_of_frames} for row in rows}
    return {"uid": study_uid, "consult": cid, "images": images}


def _ref(image: dict, **more) -> dict:
    return {"seriesUid": image["seriesUid"], "sopInstanceUid": image["sopInstanceUid"], **more}


def _every_kind(images: dict) -> list[dict]:
    one, two, multi = images[1], images[2], images[9]
    return [
        _ref(one, type="length", frame=1, points=[[10.123, 20.456], [40.5, 33.25]],
             values={"lengthMm": 23.4567}, unit="mm"),
        _ref(one, type="angle", frame=1, points=[[5.5, 5.5], [20.0, 20.0], [40.25, 6.75]],
             values={"angleDeg": 87.125}, unit="mm"),
        _ref(two, type="rect", frame=1, points=[[50.5, 40.25], [12.75, 8.0]],
             values={"areaMm2": 612.3, "mean": -12.5, "sd": 30.25, "min": -90.0, "max": 64.0}, unit="HU"),
        _ref(two, type="ellipse", frame=1, points=[[8.0, 60.0], [30.5, 2.5]],
             values={"areaMm2": 501.7, "mean": 41.0, "sd": 3.5, "min": 30.0, "max": 52.0}, unit="HU"),
        _ref(multi, type="probe", frame=2, points=[[32.5, 31.5]], values={"value": -1000.0}, unit="HU"),
        _ref(two, type="arrow", frame=1, points=[[33.0, 33.0], [60.0, 10.0]], values={}, unit="",
             text="结节 nodule ↑"),
        _ref(multi, type="ellipse", frame=3, points=[[10.0, 10.0], [10.0, 30.0]], values={}, unit="px"),
    ]


def _same(posted: dict, read: dict) -> None:
    assert (read["type"], read["seriesUid"], read["sopInstanceUid"], read["frame"], read["unit"]) == (
        posted["type"], posted["seriesUid"], posted["sopInstanceUid"], posted["frame"], posted["unit"])
    assert len(read["points"]) == len(posted["points"])
    for (x, y), (px, py) in zip(read["points"], posted["points"]):
        assert math.isclose(x, px, abs_tol=1e-3) and math.isclose(y, py, abs_tol=1e-3), (read, posted)
    assert read["values"] == posted["values"]
    assert read["text"] == posted.get("text")


@pytest.mark.parametrize("backend", ["embedded", "servers"])
def test_every_kind_of_measurement_round_trips_to_a_second_reader(runtime, study, api):
    """li (the township radiographer) saves; wang (the county reader, granted by the consult)
    reads the same types, points, values and text back; each author's newest set is returned."""
    uid, images = study["uid"], study["images"]
    posted = _every_kind(images)
    saved = ok(api("POST", "li", f"/api/studies/{uid}/measurements", json={"measurements": posted}), 201)
    assert saved["count"] == len(posted) and saved["sopInstanceUid"] and saved["seriesInstanceUid"]

    documents = ok(api("GET", "wang", f"/api/studies/{uid}/measurements"))["documents"]
    assert [(d["sopInstanceUid"], d["author"]) for d in documents] == [(saved["sopInstanceUid"], "李技师")]
    assert datetime.fromisoformat(documents[0]["createdAt"]).tzinfo is not None
    for sent, read in zip(posted, documents[0]["measurements"], strict=True):
        _same(sent, read)

    # wang adds his own set; li saves again: one document per author, newest first.
    mine = ok(api("POST", "wang", f"/api/studies/{uid}/measurements", json={"measurements": posted[:1]}), 201)
    again = ok(api("POST", "li", f"/api/studies/{uid}/measurements", json={"measurements": posted[2:4]}), 201)
    documents = ok(api("GET", "chen", f"/api/studies/{uid}/measurements"))["documents"]
    assert [(d["sopInstanceUid"], d["author"], len(d["measurements"])) for d in documents] == [
        (again["sopInstanceUid"], "李技师", 2), (mine["sopInstanceUid"], "王医生", 1)]
    assert mine["seriesInstanceUid"] == saved["seriesInstanceUid"]  # one measurement series per study

    # An empty save withdraws the reader's own set (a rejection note), not the others'.
    cleared = ok(api("POST", "li", f"/api/studies/{uid}/measurements", json={"measurements": []}), 201)
    assert cleared == {"sopInstanceUid": None, "seriesInstanceUid": None, "count": 0}
    documents = ok(api("GET", "wang", f"/api/studies/{uid}/measurements"))["documents"]
    assert [d["author"] for d in documents] == ["王医生"]
    with runtime.db.scope(readonly=True) as session:
        saves = session.scalars(select(AuditRecord).where(AuditRecord.action == "study.measurements.save")).all()
        reads = session.scalars(select(AuditRecord).where(AuditRecord.action == "study.measurements.read")).all()
    assert [r.actor for r in saves] == ["li", "wang", "li", "li"] and {r.object_id for r in saves} == {uid}
    assert [r.actor for r in reads] == ["wang", "chen", "wang"]


def _stored(runtime, sop_uid: str) -> bytes:
    with runtime.db.scope(readonly=True) as session:
        key = session.scalar(select(Instance.object_key).where(Instance.sop_instance_uid == sop_uid))
    return runtime.store.get(key)


def _dciodvfy(data: bytes, tmp_path: Path, name: str) -> list[str]:
    """dciodvfy's Error lines for the object (warnings are allowed)."""
    tool = shutil.which("dciodvfy")
    assert tool, "dciodvfy is needed (Debian dicom3tools)"
    path = tmp_path / f"{name}.dcm"
    path.write_bytes(data)
    done = subprocess.run([tool, str(path)], capture_output=True, text=True)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]


def test_the_stored_documents_are_valid_dicom_and_dicomweb_lists_them(runtime, study, api, tmp_path):
    uid, images = study["uid"], study["images"]
    before = ok(api("GET", "li", f"/api/studies/{uid}"))["num_instances"]
    saved = ok(api("POST", "li", f"/api/studies/{uid}/measurements",
                   json={"measurements": _every_kind(images)}), 201)
    sr = dcmread(io.BytesIO(_stored(runtime, saved["sopInstanceUid"])))
    assert (sr.SOPClassUID, sr.Modality, sr.StudyInstanceUID) == (annotations.COMPREHENSIVE_3D_SR, "SR", uid)
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.ConceptNameCodeSequence[0].CodeValue == "126000"  # Imaging Measurement Report
    assert _dciodvfy(_stored(runtime, saved["sopInstanceUid"]), tmp_path, "sr") == []

    key = ok(api("PUT", "wang", f"/api/studies/{uid}/key-images",
                 json={"images": [_ref(images[2]), _ref(images[9], frame=2)], "note": "右下肺结节"}))
    ko = dcmread(io.BytesIO(_stored(runtime, key["sopInstanceUid"])))
    assert (ko.SOPClassUID, ko.Modality) == (keyimages.KEY_OBJECT_SELECTION, "KO")
    assert (ko.ConceptNameCodeSequence[0].CodeValue, ko.ConceptNameCodeSequence[0].CodingSchemeDesignator) == (
        "113000", "DCM")
    evidence = ko.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == uid
    assert {r.ReferencedSOPInstanceUID for s in evidence.ReferencedSeriesSequence
            for r in s.ReferencedSOPSequence} == {images[2]["sopInstanceUid"], images[9]["sopInstanceUid"]}
    assert _dciodvfy(_stored(runtime, key["sopInstanceUid"]), tmp_path, "ko") == []

    ok(api("PUT", "wang", f"/api/studies/{uid}/key-images", json={"images": []}))
    with runtime.db.scope(readonly=True) as session:
        note = session.scalars(select(Instance.sop_instance_uid).where(
            Instance.sop_class_uid == keyimages.KEY_OBJECT_SELECTION).order_by(Instance.id.desc())).first()
    assert _dciodvfy(_stored(runtime, note), tmp_path, "rejection") == []

    # Indexed like any instance: the study counts them and DICOMweb lists the SR series.
    assert ok(api("GET", "li", f"/api/studies/{uid}"))["num_instances"] == before + 3
    series = api("GET", "chen", f"/dicom-web/studies/{uid}/series")
    assert series.status_code == 200
    modalities = {item["00080060"]["Value"][0] for item in series.json()}
    assert {"CT", "SR", "KO"} <= modalities
    found = api("GET", "chen", f"/dicom-web/studies/{uid}/instances", params={"Modality": "SR"})
    assert [item["00080018"]["Value"][0] for item in found.json()] == [saved["sopInstanceUid"]]


def test_key_images_round_trip_show_first_for_the_patient_and_can_be_cleared(runtime, study, api):
    uid, images = study["uid"], study["images"]
    assert ok(api("GET", "wang", f"/api/studies/{uid}/key-images")) == {
        "images": [], "sopInstanceUid": None, "author": None}
    chosen = [_ref(images[9], frame=3), _ref(images[2]), _ref(images[1])]
    saved = ok(api("PUT", "wang", f"/api/studies/{uid}/key-images", json={"images": chosen, "note": "关注"}))
    expected = [{**c, "frame": c.get("frame")} for c in chosen]
    assert saved == {"images": expected, "sopInstanceUid": saved["sopInstanceUid"], "author": "王医生"}
    assert ok(api("GET", "li", f"/api/studies/{uid}/key-images")) == saved  # another user, same answer

    page = _film_page(runtime, uid)
    first = re.search(r'id="film-image"[^>]*src="/f/[^/]+/img/(\d+)/0\.jpg', page)
    assert first and int(first.group(1)) == images[9]["id"]
    assert page.index("关键图像 Key images") < page.index("序列 1")
    data = json.loads(re.search(r'id="film-data">(.*?)</script>', page, re.S).group(1))
    assert [item[0] for item in data["series"][0]["items"]] == [images[9]["id"], images[2]["id"], images[1]["id"]]

    cleared = ok(api("PUT", "wang", f"/api/studies/{uid}/key-images", json={"images": []}))
    assert cleared == {"images": [], "sopInstanceUid": None, "author": None}
    assert ok(api("GET", "li", f"/api/studies/{uid}/key-images"))["sopInstanceUid"] is None
    assert "关键图像 Key images" not in _film_page(runtime, uid)
    again = ok(api("PUT", "li", f"/api/studies/{uid}/key-images", json={"images": [_ref(images[1])]}))
    assert ok(api("GET", "wang", f"/api/studies/{uid}/key-images")) == again  # a new KOS is current again


def _film_page(runtime, study_uid: str) -> str:
    settings = runtime.settings
    with runtime.db.scope() as session:
        created = shares.create_share(session=session, principal=Principal(kind="system", name="system"),
                                      study_uid=study_uid, secret_key=settings.effective_secret_key,
                                      public_url=settings.effective_public_url)
        token, pin = created.url.rsplit("/f/", 1)[1], created.pin
    with TestClient(create_app(settings)) as phone:
        phone.post(f"/f/{token}/unlock", data={"pin": pin}, headers=PHONE)
        page = phone.get(f"/f/{token}/view", headers=PHONE)
    assert page.status_code == 200
    return page.text


def test_the_consult_report_lists_the_key_images(runtime, study, api, tmp_path):
    uid, images, cid = study["uid"], study["images"], study["consult"]
    ok(api("PUT", "wang", f"/api/studies/{uid}/key-images",
           json={"images": [_ref(images[2]), _ref(images[9], frame=3)]}))
    page = api("GET", "wang", f"/consults/{cid}")
    assert page.status_code == 200
    assert "关键图像" in page.text and "序列 Series 1 · 图像 Image 2" in page.text
    assert "序列 Series 1 · 图像 Image 9 · 帧 Frame 3" in page.text
    ok(api("PUT", "wang", f"/api/consults/{cid}/report/draft", json={
        "template": "ct_head", "findings": "右下肺见结节。", "impression": "右下肺结节", "recommendation": "复查",
        "fields": {}}))
    signed = ok(api("POST", "wang", f"/api/consults/{cid}/report/sign", json={"password": "sign-wang"}))
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(api("GET", "wang", signed["versions"][0]["pdf_url"]).content)
    text = subprocess.run([shutil.which("pdftotext"), "-layout", str(pdf), "-"], capture_output=True, check=True,
                          text=True).stdout
    assert "关键图像 Key images" in text
    lines = [line for line in text.splitlines() if "序列 Series" in line]
    assert "图像 Image 2" in lines[0] and "图像 Image 9 · 帧 Frame 3" in " ".join(lines)
    assert "KO" not in text.split("检查信息")[1].split("临床问题")[0]  # the exam is a CT, not a CT/KO


def test_who_may_read_and_save(runtime, study, api):
    uid, images = study["uid"], study["images"]
    body = {"measurements": _every_kind(images)[:1]}
    for user in ("sun", "zhou"):  # same county, not assigned; the coordinator who triaged
        assert api("GET", user, f"/api/studies/{uid}/measurements").status_code == 404
        assert api("GET", user, f"/api/studies/{uid}/key-images").status_code == 404
        assert api("POST", user, f"/api/studies/{uid}/measurements", json=body).status_code == 404
        assert api("PUT", user, f"/api/studies/{uid}/key-images", json={"images": []}).status_code == 404
    unknown = generate_uid()
    assert api("GET", "wang", f"/api/studies/{unknown}/measurements").status_code == 404
    assert api("POST", "wang", f"/api/studies/{unknown}/measurements", json=body).status_code == 404
    # The township's coordinator sees the study but does not read images.
    assert api("GET", "zhao", f"/api/studies/{uid}/measurements").status_code == 200
    refused = api("POST", "zhao", f"/api/studies/{uid}/measurements", json=body)
    assert refused.status_code == 403 and "仅阅片医生和技师" in refused.json()["detail"]
    assert api("PUT", "zhao", f"/api/studies/{uid}/key-images", json={"images": [_ref(images[1])]}).status_code == 403
    assert api("GET", "wang", f"/api/studies/{uid}/measurements").json() == {"documents": []}
    with runtime.db.scope(readonly=True) as session:
        denied = session.scalars(select(AuditRecord.actor).where(AuditRecord.outcome == "denied",
                                                                 AuditRecord.action.like("study.%"))).all()
    assert {"sun", "zhou", "zhao", "wang"} <= set(denied)


def test_a_patient_link_cannot_save(runtime, study, api):
    uid, images = study["uid"], study["images"]
    settings = runtime.settings
    with runtime.db.scope() as session:
        created = shares.create_share(session=session, principal=Principal(kind="system", name="system"),
                                      study_uid=uid, secret_key=settings.effective_secret_key,
                                      public_url=settings.effective_public_url)
        token, pin, share = created.url.rsplit("/f/", 1)[1], created.pin, created.share
        patient = shares.patient_principal(share)
    with pytest.raises(NotPermitted):
        policy.require_annotator(patient)
    with TestClient(create_app(settings)) as phone:
        phone.post(f"/f/{token}/unlock", data={"pin": pin}, headers=PHONE)
        for cookie in list(phone.cookies.jar):  # even the link's cookie sent to the API itself
            phone.cookies.set(cookie.name, cookie.value)
        body = {"measurements": _every_kind(images)[:1]}
        assert phone.post(f"/api/studies/{uid}/measurements", json=body).status_code in (401, 403)
        assert phone.put(f"/api/studies/{uid}/key-images", json={"images": []}).status_code in (401, 403)
    assert ok(api("GET", "li", f"/api/studies/{uid}/measurements")) == {"documents": []}


def test_a_browser_session_saves_through_the_csrf_check(runtime, study):
    uid, images = study["uid"], study["images"]
    body = {"measurements": _every_kind(images)[:2]}
    with TestClient(create_app(runtime.settings)) as browser:
        browser.post("/login", data={"username": "wang", "password": "password-1"}, follow_redirects=False)
        token = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)"', browser.get("/").text).group(1)
        refused = browser.post(f"/api/studies/{uid}/measurements", json=body)
        assert refused.status_code == 403 and refused.json()["error"] == "csrf"
        saved = browser.post(f"/api/studies/{uid}/measurements", json=body, headers={"X-CSRF-Token": token})
        assert saved.status_code == 201, saved.text
        put = browser.put(f"/api/studies/{uid}/key-images", json={"images": [_ref(images[1])]},
                          headers={"X-CSRF-Token": token})
        assert put.status_code == 200, put.text


def _bad(images: dict) -> dict[str, object]:
    one = images[1]
    length = _ref(one, type="length", frame=1, points=[[1, 1], [2, 2]], values={}, unit="mm")
    return {
        "three points for a length": [{**length, "points": [[1, 1], [2, 2], [3, 3]]}],
        "one point for an angle": [{**length, "type": "angle", "points": [[1, 1]]}],
        "an unknown tool": [{**length, "type": "polygon"}],
        "a value that is not a number": [{**length, "values": {"lengthMm": "long"}}],
        "an unknown unit": [{**length, "unit": "cm"}],
        "frame 0": [{**length, "frame": 0}],
        "a frame the image does not have": [{**length, "frame": 2}],
        "a point off the image": [{**length, "points": [[1, 1], [SIZE + 1, 2]]}],
        "a negative point": [{**length, "points": [[-0.5, 1], [2, 2]]}],
        "text over 200 characters": [{**length, "type": "arrow", "text": "字" * 201}],
        "a control character": [{**length, "type": "arrow", "text": "a\x00b"}],
        "an unknown instance": [{**length, "sopInstanceUid": generate_uid()}],
        "an instance of another series": [{**length, "seriesUid": generate_uid()}],
        "more than 500": [length] * 501,
        "no body": None,
    }


def test_malformed_bodies_are_422_never_500(runtime, world, study, api):
    uid, images = study["uid"], study["images"]
    raw = {"Authorization": f"Bearer {world[0]['wang']}", "Content-Type": "application/json"}
    for why, measurements in _bad(images).items():
        body = {"measurements": measurements} if measurements is not None else {}
        response = api("POST", "wang", f"/api/studies/{uid}/measurements", json=body)
        assert response.status_code == 422, (why, response.text)
    for number in ("NaN", "Infinity", "-Infinity", "1e999"):
        text = json.dumps({"measurements": [_ref(images[1], type="probe", frame=1, points=[[1, 1]], unit="HU",
                                                 values={"value": 0})]}).replace('"value": 0', f'"value": {number}')
        response = api.client.post(f"/api/studies/{uid}/measurements", content=text, headers=raw)
        assert response.status_code == 422, (number, response.text)
    unknown = api("POST", "wang", f"/api/studies/{uid}/measurements",
                  json={"measurements": _bad(images)["an unknown instance"]})
    assert "该检查中没有这幅图像" in unknown.json()["detail"] and "is not in this study" in unknown.json()["detail"]
    key_bodies = {
        "twice the same image": {"images": [_ref(images[1]), _ref(images[1])]},
        "a long note": {"images": [_ref(images[1])], "note": "注" * 201},
        "a frame too many": {"images": [_ref(images[9], frame=4)]},
        "an instance elsewhere": {"images": [_ref(images[1], sopInstanceUid=generate_uid())]},
        "not a list": {"images": "all"},
    }
    for why, body in key_bodies.items():
        response = api("PUT", "wang", f"/api/studies/{uid}/key-images", json=body)
        assert response.status_code == 422, (why, response.text)
    assert ok(api("GET", "wang", f"/api/studies/{uid}/measurements")) == {"documents": []}
    with runtime.db.scope(readonly=True) as session:
        assert session.scalar(select(Study.modalities).where(Study.study_instance_uid == uid)) == "CT"
        failed = session.scalars(select(AuditRecord).where(AuditRecord.outcome == "failed")).all()
    assert {r.action for r in failed} == {"study.measurements.save", "study.key_images.save"}
    assert any("is not in this study" in r.detail["reason"] for r in failed)


def test_a_document_that_cannot_be_parsed_is_skipped(runtime, study, api, caplog):
    uid, images = study["uid"], study["images"]
    ok(api("POST", "li", f"/api/studies/{uid}/measurements", json={"measurements": _every_kind(images)[:1]}), 201)
    wang = ok(api("POST", "wang", f"/api/studies/{uid}/measurements", json={"measurements": _every_kind(images)[:2]}),
              201)
    with runtime.db.scope() as session:  # li's document damaged in the index (as another system might send it)
        instance = session.scalar(select(Instance).join(Series, Series.id == Instance.series_pk)
                                  .where(Instance.sop_class_uid == annotations.COMPREHENSIVE_3D_SR)
                                  .order_by(Instance.id).limit(1))
        content = json.loads(instance.dicom_json)
        content["0040A730"] = {"vr": "SQ", "Value": [{"0040A040": {"vr": "CS", "Value": ["NOT A TYPE"]}}]}
        instance.dicom_json = json.dumps(content)
    documents = ok(api("GET", "chen", f"/api/studies/{uid}/measurements"))["documents"]
    assert [d["sopInstanceUid"] for d in documents] == [wang["sopInstanceUid"]]
    assert "imaging.measurements.unreadable" in caplog.text


@pytest.mark.parametrize("corners", [
    [[8.0, 60.0], [30.5, 2.5]], [[30.5, 2.5], [8.0, 60.0]], [[0.1, 0.1], [3.4, 3.4]], [[10.0, 10.0], [10.0, 30.0]],
    [[10.0, 10.0], [30.0, 10.0]], [[5.0, 5.0], [5.0, 5.0]], [[63.9, 0.3], [0.7, 63.3]]])
def test_an_ellipse_reads_back_as_its_posted_corners_after_float32(corners):
    """SCOORD Graphic Data is FL (float32): the axis order must survive it, a circle and a
    flat ellipse included, corners in either order."""
    stored = [[float(np.float32(x)), float(np.float32(y))] for x, y in annotations.graphic_data("ellipse", corners)]
    assert len(stored) == 4
    for (x, y), (px, py) in zip(annotations.points_of("ellipse", stored), corners, strict=True):
        assert math.isclose(x, px, abs_tol=1e-5) and math.isclose(y, py, abs_tol=1e-5)
    rect = annotations.graphic_data("rect", corners)
    assert rect[0] == rect[-1] and annotations.points_of("rect", rect) == corners


def test_the_film_sheet_prints_the_current_key_images_first(runtime, study, api, tmp_path):
    """The sheet follows the study's current selection: our KOS first, in the reader's order;
    none once it is withdrawn."""
    from film import sheet as filmsheet

    uid, images = study["uid"], study["images"]
    ok(api("PUT", "wang", f"/api/studies/{uid}/key-images", json={"images": [_ref(images[2]), _ref(images[1])]}))

    def captions() -> list[str]:
        settings = runtime.settings
        with runtime.db.scope() as session:
            share = shares.create_share(session=session, principal=Principal(kind="system", name="system"),
                                        study_uid=uid, secret_key=settings.effective_secret_key,
                                        public_url=settings.effective_public_url).share.id
        key = filmsheet.make_film_sheet(runtime.db, runtime.store, share, secret_key=settings.effective_secret_key,
                                        public_url=settings.effective_public_url)
        pdf = tmp_path / f"sheet-{share}.pdf"
        pdf.write_bytes(runtime.store.get(key))
        text = subprocess.run([shutil.which("pdftotext"), "-layout", str(pdf), "-"], capture_output=True,
                              check=True, text=True).stdout
        return [line for line in text.splitlines() if "幅" in line and "·" in line]

    first = " ".join(captions())
    assert first.index("关键图像 Key · 第 2 幅") < first.index("关键图像 Key · 第 1 幅"), first
    assert first.count("关键图像 Key") == 4  # a chest CT: each key slice in the lung and mediastinal windows
    ok(api("PUT", "wang", f"/api/studies/{uid}/key-images", json={"images": []}))
    assert not any("关键图像 Key" in line for line in captions())


def test_the_viewers_own_measurement_objects_are_accepted(runtime, study, api):
    """The viewer posts its measurement objects as it keeps them: keys outside the contract
    (index, author, lengthPx...) are ignored, null values are absent, an empty text is none."""
    uid, images = study["uid"], study["images"]
    sent = _ref(images[1], type="length", frame=1, points=[[1.5, 2.5], [30.0, 40.0]], unit="mm", index=0,
                valueUnit="HU", author=None, mm=23.5, px=33.6, text="",
                values={"lengthMm": 23.456, "lengthPx": 33.6, "areaPx2": None, "mean": None})
    ok(api("POST", "wang", f"/api/studies/{uid}/measurements", json={"measurements": [sent]}), 201)
    read = ok(api("GET", "li", f"/api/studies/{uid}/measurements"))["documents"][0]["measurements"]
    assert read == [{"type": "length", "seriesUid": sent["seriesUid"], "sopInstanceUid": sent["sopInstanceUid"],
                     "frame": 1, "points": [[1.5, 2.5], [30.0, 40.0]], "values": {"lengthMm": 23.456},
                     "unit": "mm", "valueUnit": "", "text": None}]  # no pixel values: no HU
