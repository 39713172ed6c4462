"""DICOMweb (STOW-RS, QIDO-RS, WADO-RS, WADO-URI) through a real HTTP server.

Every resource is exercised with the real `dicomweb-client` library (it speaks `requests`,
so the app runs under uvicorn on a free loopback port in a background thread); negotiation
edge cases, authorization and WADO-URI use raw httpx. One server per backend for the
module: embedded (SQLite + filesystem) and servers (PostgreSQL + S3).
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest
import requests
import uvicorn
from dicomweb_client import DICOMwebClient
from dicomweb_client.session_utils import create_session
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import get_frame
from pydicom.pixels import pack_bits
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from imaging import dicomweb, pixels
from imaging.dicomweb import multipart, objects
from imaging.models import Series, Study
from imaging.service import Ingestor
from storage import audit
from storage import service as tenancy
from storage.models import AuditRecord
from tests.conftest import Servers, embedded_settings, server_settings
from tests.dicomdata import ct_instance
from tests.services import free_port
from storage import identity as service
from web.app import create_app

EVRLE = "1.2.840.10008.1.2.1"
J2K_LOSSY = "1.2.840.10008.1.2.4.91"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
DICOM_STAR = 'multipart/related; type="application/dicom"; transfer-syntax=*'


# -- the world: two institutions, users, studies, a running server ------------------------


@dataclass
class World:
    base: str
    runtime: object
    tokens: dict[str, str]
    uids: dict[str, str] = field(default_factory=dict)  # name -> UID
    blobs: dict[str, bytes] = field(default_factory=dict)  # SOP Instance UID -> Part 10 bytes sent

    def client(self, who: str = "town") -> DICOMwebClient:
        session = create_session()
        session.headers.update({"Authorization": f"Bearer {self.tokens[who]}"})
        return DICOMwebClient(url=self.base, session=session)

    def http(self, who: str | None = "town") -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=30)

    def original(self, name: str) -> Dataset:
        return dcmread(io.BytesIO(self.blobs[self.uids[name]]))


def _sample(name: str, **attrs) -> bytes:
    """A pydicom test file with new UIDs and our demographics."""
    ds = dcmread(get_testdata_file(name))
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _populate(world: World, ingestor: Ingestor, town: int, other: int) -> None:
    u = world.uids
    for name in ("A", "A1", "A2", "B", "C", "C1", "C2", "C3", "C4", "D"):
        u[name] = generate_uid()

    def add(key: str, data: bytes, institution: int) -> None:
        sop = dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID
        u[key] = sop
        world.blobs[sop] = data
        ingestor.ingest(data, institution_id=institution, source="test")

    a = dict(study_uid=u["A"], patient_name="张^秀英", patient_id="P1", study_date="20261101", accession="ACC-A")
    for number in (1, 2, 3):
        add(f"A1-{number}", ct_instance(series_uid=u["A1"], instance_number=number, **a), town)
    add("A2-1", ct_instance(series_uid=u["A2"], modality="MR", instance_number=1, **a), town)
    add("B-1", ct_instance(study_uid=u["B"], series_uid=generate_uid(), patient_name="李^四", patient_id="P2",
                           study_date="20250601", accession="ACC-B"), town)
    c = dict(StudyInstanceUID=u["C"], PatientName="王^五", PatientID="P3", StudyDate="20260315",
             AccessionNumber="ACC-C")
    add("J2K", _sample("JPEG2000.dcm", SeriesInstanceUID=u["C1"], SeriesNumber=1, **c), town)
    add("JPEG", _sample("SC_rgb_jpeg_dcmtk.dcm", SeriesInstanceUID=u["C2"], SeriesNumber=2, **c), town)
    add("MULTI", _sample("emri_small.dcm", SeriesInstanceUID=u["C3"], SeriesNumber=3, **c), town)
    add("PRIVATE", _sample("CT_small.dcm", SeriesInstanceUID=u["C4"], SeriesNumber=4, **c), town)
    add("D-1", ct_instance(study_uid=u["D"], patient_name="张^伟", patient_id="P9", accession="ACC-D"), other)


def _serve(app, port: int) -> tuple[uvicorn.Server, threading.Thread]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="dicomweb-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    return server, thread


@pytest.fixture(scope="module", params=["embedded", "servers"])
def world(request, tmp_path_factory):
    from storage.runtime import bootstrap

    tmp = tmp_path_factory.mktemp(f"dicomweb-{request.param}")
    # dicomweb-client sends a Host header without the port: URLs come from the public URL,
    # as they must behind any proxy.
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    if request.param == "servers":
        servers = Servers(*(request.getfixturevalue(f"{n}_server") for n in ("postgres", "redis", "s3")))
        settings = server_settings(tmp, servers, public_url=public)
    else:
        settings = embedded_settings(tmp, public_url=public)
    runtime = bootstrap(settings, component="test")
    tokens = {}
    with runtime.db.scope() as session:
        town = tenancy.add_institution(session=session, code="TOWN", name="思茅镇卫生院", level="township")
        other = tenancy.add_institution(session=session, code="OTHER", name="另一镇卫生院", level="township")
        for who, code in (("town", "TOWN"), ("other", "OTHER")):
            user = service.add_user(session=session, username=f"{who}-radiographer", role="radiographer",
                                    institution_code=code, password="password-1")
            tokens[who] = service.issue_token(session=session, user=user)[0]
            tokens[f"{who}-cookie"] = service.issue_token(session=session, user=user, kind="session")[0]
        town_id, other_id = town.id, other.id
    app = create_app(settings)
    server, thread = _serve(app, port)
    world = World(f"{public}/dicom-web", runtime, tokens)
    ingestor = Ingestor(runtime.db, runtime.store)
    try:
        _populate(world, ingestor, town_id, other_id)
    finally:
        ingestor.close()
    yield world
    server.should_exit = True
    thread.join(timeout=15)
    dicomweb.close(app)
    runtime.db.dispose()


def _values(results: list[dict], tag: str) -> list:
    return [r[tag]["Value"][0] for r in results if "Value" in r.get(tag, {})]


def _study_uids(results: list[dict]) -> set[str]:
    return set(_values(results, "0020000D"))


def _image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _parts(response: httpx.Response) -> list[multipart.Part]:
    boundary = multipart.boundary_of(response.headers["content-type"])[1]["boundary"]
    return multipart.split(response.content, boundary)


# -- QIDO-RS ----------------------------------------------------------------------------


def test_search_studies_by_chinese_name_wildcard(world):
    results = world.client().search_for_studies(search_filters={"PatientName": "张*"})
    assert _study_uids(results) == {world.uids["A"]}  # 张^伟 belongs to the other institution
    study = results[0]
    assert study["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "张^秀英"}]}
    assert study["00081190"]["Value"] == [f"{world.base}/studies/{world.uids['A']}"]
    assert study["00080061"]["Value"] == ["CT", "MR"]
    assert study["00201206"]["Value"] == [2] and study["00201208"]["Value"] == [4]


@pytest.mark.parametrize("filters, expected", [
    ({"00100020": "P1"}, {"A"}),
    ({"StudyDate": "20260101-20261231", "PatientID": "P*"}, {"A", "C"}),
    ({"ModalitiesInStudy": "MR", "StudyDate": "-20261231"}, {"A", "C"}),  # emri_small is MR
    ({"ModalitiesInStudy": "CT,SC", "PatientID": "P3"}, {"C"}),
    ({"AccessionNumber": "ACC-B"}, {"B"}),
    ({"PatientName": "王^五"}, {"C"}),
])
def test_search_studies_matching(world, filters, expected):
    results = world.client().search_for_studies(search_filters=filters)
    assert _study_uids(results) == {world.uids[name] for name in expected}


@pytest.mark.parametrize("separator", [",", "\\"])
def test_study_uid_list(world, separator):
    uids = separator.join((world.uids["A"], world.uids["B"], world.uids["D"]))
    results = world.client().search_for_studies(search_filters={"StudyInstanceUID": uids})
    assert _study_uids(results) == {world.uids["A"], world.uids["B"]}


def test_limit_and_offset(world):
    client, filters = world.client(), {"StudyDate": "20250101-20261231"}
    everything = [r["0020000D"]["Value"][0] for r in client.search_for_studies(search_filters=filters)]
    assert everything == [world.uids["A"], world.uids["C"], world.uids["B"]]  # newest first
    pages = [client.search_for_studies(search_filters=filters, limit=2, offset=offset) for offset in (0, 2, 4)]
    assert [[r["0020000D"]["Value"][0] for r in page] for page in pages] == [everything[:2], everything[2:], []]
    assert len(client.search_for_studies(search_filters=filters, limit=1, get_remaining=True)) == 3


def test_includefield_study_level_from_index_and_representative_instance(world):
    results = world.client().search_for_studies(search_filters={"StudyInstanceUID": world.uids["A"]},
                                                fields=["00080005", "InstitutionName", "PixelSpacing"])
    study = results[0]
    assert study["00080005"]["Value"] == ["GB18030"]  # from the first instance's stored JSON
    assert study["00080080"] == {"vr": "LO"}  # indexed, empty
    assert study["00280030"]["Value"] == [0.7, 0.7]


def test_includefield_all_at_instance_level(world):
    u = world.uids
    results = world.client().search_for_instances(u["A"], u["A1"], fields=["all"])
    assert [r["00200013"]["Value"][0] for r in results] == [1, 2, 3]
    first = results[0]
    assert first["00281050"]["Value"] == [40.0] and first["00280030"]["Value"] == [0.7, 0.7]
    instance = f"{world.base}/studies/{u['A']}/series/{u['A1']}/instances/{u['A1-1']}"
    assert first["7FE00010"]["BulkDataURI"] == f"{instance}/bulkdata/7FE00010"
    assert first["00081190"]["Value"] == [instance]
    assert first["00083002"]["Value"] == [EVRLE]
    named = world.client().search_for_instances(u["A"], u["A1"], fields=["PixelSpacing"])[0]
    assert "00280030" in named and "00281050" not in named


def test_search_series(world):
    u = world.uids
    series = world.client().search_for_series(u["A"])
    assert [(s["0020000E"]["Value"][0], s["00080060"]["Value"][0], s["00201209"]["Value"][0]) for s in series] == [
        (u["A1"], "CT", 3), (u["A2"], "MR", 1)]
    assert series[0]["00081190"]["Value"][0].startswith(f"{world.base}/studies/{u['A']}/series/")
    assert "00100010" not in series[0]  # within a study: series attributes only
    everywhere = world.client().search_for_series(search_filters={"PatientName": "张*", "Modality": "MR"})
    assert _values(everywhere, "0020000E") == [u["A2"]]
    assert everywhere[0]["00100010"]["Value"] == [{"Alphabetic": "张^秀英"}]  # all series: study attributes too


def test_search_instances_everywhere_and_in_study(world):
    u = world.uids
    found = world.client().search_for_instances(search_filters={"SOPInstanceUID": u["MULTI"]})
    assert _values(found, "00080018") == [u["MULTI"]] and found[0]["00280008"]["Value"] == [10]
    assert found[0]["0020000D"]["Value"] == [u["C"]] and "00100010" in found[0]
    in_study = world.client().search_for_instances(u["A"])
    assert len(in_study) == 4 and "0020000E" in in_study[0] and "00100010" not in in_study[0]


def test_search_warnings_and_bad_parameters(world):
    with world.http() as http:
        response = http.get("/studies", params={"fuzzymatching": "true", "Modality": "CT",
                                                "PatientID": "P1"})
        assert response.status_code == 200 and len(response.json()) == 1
        assert response.headers["content-type"] == "application/dicom+json"
        assert "fuzzy matching" in response.headers["warning"] and "Modality" in response.headers["warning"]
        nested = http.get("/studies", params={"00081111.张": "x", "PatientID": "P1"})
        assert nested.status_code == 200 and "00081111.?" in nested.headers["warning"]
        for params in ({"limit": "-1"}, {"limit": "x"}, {"offset": "-3"}, {"NoSuchKeyword": "1"},
                       {"0010002": "x"}, {"StudyDate": "2026xx01"}):
            bad = http.get("/studies", params=params)
            assert 400 <= bad.status_code < 500 and bad.json()["error"], params
        assert http.get("/studies", params={"PatientName": "没有^这个人"}).json() == []


# -- WADO-RS: objects -------------------------------------------------------------------


def test_retrieve_study_series_instance(world):
    client, u = world.client(), world.uids
    study = client.retrieve_study(u["A"])
    assert [ds.SOPInstanceUID for ds in study] == [u["A1-1"], u["A1-2"], u["A1-3"], u["A2-1"]]
    for ds in study:
        original = dcmread(io.BytesIO(world.blobs[ds.SOPInstanceUID]))
        assert ds.PixelData == original.PixelData and ds.PatientName == "张^秀英"
    assert [ds.SOPInstanceUID for ds in client.retrieve_series(u["A"], u["A1"])] == [
        u["A1-1"], u["A1-2"], u["A1-3"]]
    single = client.retrieve_instance(u["A"], u["A2"], u["A2-1"])
    assert single.SOPInstanceUID == u["A2-1"] and single.Modality == "MR"


def test_compressed_instance_is_transcoded_by_default_and_as_stored_on_request(world):
    client, u = world.client(), world.uids
    original = world.original("J2K")
    for media_types in (("application/dicom",), (("application/dicom", EVRLE),)):  # the default, named
        transcoded = client.retrieve_instance(u["C"], u["C1"], u["J2K"], media_types=media_types)
        assert transcoded.file_meta.TransferSyntaxUID == EVRLE
        assert transcoded.SOPInstanceUID == u["J2K"]
        assert np.array_equal(transcoded.pixel_array, original.pixel_array)
    stored = client.retrieve_instance(u["C"], u["C1"], u["J2K"])  # dicomweb-client asks transfer-syntax=*
    assert stored.file_meta.TransferSyntaxUID == J2K_LOSSY and stored.PixelData == original.PixelData
    mixed = client.retrieve_study(u["C"], media_types=(("application/dicom", "*"),))
    assert [ds.file_meta.TransferSyntaxUID for ds in mixed] == [J2K_LOSSY, JPEG_BASELINE, EVRLE, EVRLE]


# -- WADO-RS: metadata and bulk data ----------------------------------------------------


def test_metadata_study_series_instance(world):
    client, u = world.client(), world.uids
    study = client.retrieve_study_metadata(u["A"])
    assert [m["00080018"]["Value"][0] for m in study] == [u["A1-1"], u["A1-2"], u["A1-3"], u["A2-1"]]
    assert study[0]["00100010"]["Value"] == [{"Alphabetic": "张^秀英"}]
    uri = study[0]["7FE00010"]["BulkDataURI"]
    assert uri == f"{world.base}/studies/{u['A']}/series/{u['A1']}/instances/{u['A1-1']}/bulkdata/7FE00010"
    assert client.retrieve_bulkdata(uri) == [world.original("A1-1").PixelData]
    series = client.retrieve_series_metadata(u["A"], u["A1"])
    third = Dataset.from_json(series[2], bulk_data_uri_handler=lambda uri: b"")
    assert len(series) == 3 and third.InstanceNumber == 3
    instance = client.retrieve_instance_metadata(u["C"], u["C3"], u["MULTI"])
    assert instance["00280008"]["Value"] == [10]


def test_bulkdata_of_a_private_element_and_compressed_pixel_data(world):
    client, u = world.client(), world.uids
    metadata = client.retrieve_instance_metadata(u["C"], u["C4"], u["PRIVATE"])
    private = metadata["00431029"]["BulkDataURI"]
    assert client.retrieve_bulkdata(private) == [world.original("PRIVATE")[0x00431029].value]
    pixel_uri = f"{world.base}/studies/{u['C']}/series/{u['C2']}/instances/{u['JPEG']}/bulkdata/7FE00010"
    compressed = client.retrieve_bulkdata(pixel_uri, media_types=(("image/jpeg", JPEG_BASELINE),))
    assert compressed == [get_frame(world.original("JPEG").PixelData, 0, number_of_frames=1)]


# -- WADO-RS: frames --------------------------------------------------------------------


def test_uncompressed_frames(world):
    client, u = world.client(), world.uids
    frames = client.retrieve_instance_frames(u["C"], u["C3"], u["MULTI"], [1, 3, 10])
    pixels = world.original("MULTI").PixelData
    size = 64 * 64 * 2
    assert frames == [pixels[0:size], pixels[2 * size:3 * size], pixels[9 * size:10 * size]]


def test_compressed_frames_as_stored_or_decoded(world):
    client, u = world.client(), world.uids
    jpeg, j2k = world.original("JPEG"), world.original("J2K")
    as_stored = client.retrieve_instance_frames(u["C"], u["C2"], u["JPEG"], [1],
                                                media_types=(("image/jpeg", JPEG_BASELINE),))
    assert as_stored == [get_frame(jpeg.PixelData, 0, number_of_frames=1)]
    decoded = client.retrieve_instance_frames(u["C"], u["C2"], u["JPEG"], [1],
                                              media_types=("application/octet-stream",))
    assert decoded == [jpeg.pixel_array.astype("<u1").tobytes()]
    j2k_frames = client.retrieve_instance_frames(u["C"], u["C1"], u["J2K"], [1],
                                                 media_types=(("image/jp2", J2K_LOSSY),))
    assert j2k_frames == [get_frame(j2k.PixelData, 0, number_of_frames=1)]
    default = client.retrieve_instance_frames(u["C"], u["C1"], u["J2K"], [1])
    assert default == [j2k.pixel_array.astype("<u2").tobytes()]


# -- pixel data that could not be served (14.9) ------------------------------------------


def _new_study(world: World, name: str) -> tuple[str, Dataset]:
    """A pydicom test file stored by the town as a study of its own (far from the dates and
    patients other tests search for); its instance URL path and the dataset as sent."""
    study, series = generate_uid(), generate_uid()
    blob = _sample(name, StudyInstanceUID=study, SeriesInstanceUID=series, PatientID="P-PIXELS",
                   StudyDate="19990101")
    with world.runtime.db.scope(readonly=True) as session:
        from storage.models import Institution

        town = session.scalar(select(Institution.id).where(Institution.code == "TOWN"))
    ingestor = Ingestor(world.runtime.db, world.runtime.store)
    try:
        ingestor.ingest(blob, institution_id=town, source="test")
    finally:
        ingestor.close()
    ds = dcmread(io.BytesIO(blob))
    return f"/studies/{study}/series/{series}/instances/{ds.SOPInstanceUID}", ds


def test_12_bit_jpeg_with_a_non_sequential_scan_header(world):
    """JPEG-lossy.dcm (12-bit JPEG Extended whose scan header says Se=0) answered 406 to
    rendered, thumbnail and frames; JPGExtended.dcm is the same image with the header fixed."""
    instance, _ = _new_study(world, "JPEG-lossy.dcm")
    fixed = dcmread(get_testdata_file("JPGExtended.dcm"))
    with world.http() as http:
        frames = http.get(f"{instance}/frames/1")
        rendered = http.get(f"{instance}/rendered", headers={"Accept": "image/png"})
        thumbnail = http.get(f"{instance}/thumbnail")
    assert frames.status_code == 200, frames.text[:300]
    assert _parts(frames)[0].content == fixed.pixel_array.astype("<u2").tobytes()
    assert rendered.status_code == 200, rendered.text[:300]
    assert np.array_equal(np.asarray(_image(rendered.content)), pixels.render_frame(fixed))
    assert thumbnail.status_code == 200 and _image(thumbnail.content).size == (32, 128)


def test_uncompressed_ybr_full_422(world):
    """Native YBR_FULL_422 answered 404 "frame 1 is beyond the stored pixel data" to frames
    and bulk data: a 4:2:2 frame holds Rows x Columns x 2 bytes, not x 3. Frames come as
    stored; rendered is RGB, the same pattern as pydicom's RGB twin."""
    instance, sent = _new_study(world, "SC_ybr_full_422_uncompressed.dcm")
    assert sent.PhotometricInterpretation == "YBR_FULL_422" and len(sent.PixelData) == 100 * 100 * 2
    with world.http() as http:
        frames = http.get(f"{instance}/frames/1")
        bulk = http.get(f"{instance}/bulkdata/7FE00010")
        rendered = http.get(f"{instance}/rendered", headers={"Accept": "image/png"})
    assert frames.status_code == 200, frames.text[:300]
    assert [part.content for part in _parts(frames)] == [sent.PixelData]
    assert bulk.status_code == 200 and [part.content for part in _parts(bulk)] == [sent.PixelData]
    colour = np.asarray(_image(rendered.content), dtype=int)
    rgb = dcmread(get_testdata_file("SC_rgb_rle.dcm")).pixel_array.astype(int)
    assert colour.shape == (100, 100, 3) and np.abs(colour - rgb).mean() <= 1
    for row, expected in ((5, (255, 0, 0)), (25, (0, 255, 0)), (45, (0, 0, 255))):
        assert np.abs(colour[row, 50] - expected).max() <= 12, (row, colour[row, 50])


def test_one_bit_segmentation_frames_are_bit_packed(world):
    """liver.dcm (Segmentation, 3 frames of 512 x 512, Bits Allocated 1) came back one byte
    per pixel (262144 bytes a frame); a frame is its bits packed as stored (PS3.5 8.1.1),
    32768 bytes, also when the stored object is big endian and has to be decoded."""
    for name in ("liver.dcm", "liver_expb.dcm"):
        instance, sent = _new_study(world, name)
        assert sent.BitsAllocated == 1 and sent.NumberOfFrames == 3
        expected = [pack_bits(frame, pad=False) for frame in sent.pixel_array]
        with world.http() as http:
            frames = http.get(f"{instance}/frames/1,3")
            bulk = http.get(f"{instance}/bulkdata/7FE00010")
        assert frames.status_code == 200, frames.text[:300]
        assert [len(part.content) for part in _parts(frames)] == [512 * 512 // 8] * 2
        assert [part.content for part in _parts(frames)] == [expected[0], expected[2]], name
        assert [part.content for part in _parts(bulk)] == expected, name


def test_one_bit_frames_that_start_inside_a_byte():
    """Frames of 5 x 5 1-bit pixels follow one another without padding: the second starts at
    bit 25. Each is cut out and packed again from bit 0, its last byte's spare bits zero."""
    frames = np.random.default_rng(14).integers(0, 2, (3, 5, 5), dtype=np.uint8)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = EVRLE
    ds.Rows = ds.Columns = 5
    ds.NumberOfFrames, ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
    ds.PixelData = pack_bits(frames)
    for index, frame in enumerate(frames):
        assert objects.frame_bytes(ds, index, decode=False) == pack_bits(frame, pad=False)
    with pytest.raises(objects.NotFound):
        objects.frame_bytes(ds, 3, decode=False)


# -- WADO-RS: rendered and thumbnails ---------------------------------------------------


def test_rendered_instance_with_window_viewport_quality(world):
    client, u = world.client(), world.uids
    png = _image(client.retrieve_instance_rendered(u["A"], u["A1"], u["A1-1"], media_types=("image/png",)))
    assert png.format == "PNG" and png.size == (32, 32) and png.mode == "L"
    soft = np.asarray(_image(client.retrieve_instance_rendered(
        u["A"], u["A1"], u["A1-1"], media_types=("image/png",), params={"window": "40,400"})), dtype=float)
    bone = np.asarray(_image(client.retrieve_instance_rendered(
        u["A"], u["A1"], u["A1-1"], media_types=("image/png",), params={"window": "1500,100"})), dtype=float)
    assert soft.mean() > bone.mean() + 50  # stored 0..2000 -> -1024..976 HU: a high window darkens
    big = _image(client.retrieve_instance_rendered(u["A"], u["A1"], u["A1-1"], media_types=("image/jpeg",),
                                                   params={"viewport": "64,48", "quality": "50"}))
    assert big.format == "JPEG" and big.size == (48, 48)


def test_rendered_colour_series_and_frames(world):
    client, u = world.client(), world.uids
    colour = _image(client.retrieve_series_rendered(u["C"], u["C2"], media_types=("image/png",)))
    expected = world.original("JPEG").pixel_array.astype(float)
    assert colour.mode == "RGB" and colour.size == (100, 100)
    assert np.abs(np.asarray(colour, dtype=float).mean(axis=(0, 1)) - expected.mean(axis=(0, 1))).max() < 2
    frame = _image(client.retrieve_instance_frames_rendered(u["C"], u["C3"], u["MULTI"], [2],
                                                            media_types=("image/jpeg",)))
    assert frame.format == "JPEG" and frame.size == (64, 64)
    with world.http() as http:
        several = http.get(f"/studies/{u['C']}/series/{u['C3']}/instances/{u['MULTI']}/frames/1,5/rendered",
                           headers={"Accept": 'multipart/related; type="image/png"'})
        assert several.status_code == 200
        assert [_image(p.content).size for p in _parts(several)] == [(64, 64), (64, 64)]
        study = http.get(f"/studies/{u['A']}/rendered")
        assert study.headers["content-type"] == "image/jpeg" and _image(study.content).size == (32, 32)


def test_thumbnails(world):
    u = world.uids
    with world.http() as http:
        study = http.get(f"/studies/{u['C']}/thumbnail")
        assert study.headers["content-type"] == "image/jpeg" and max(_image(study.content).size) <= 128
        series = http.get(f"/studies/{u['C']}/series/{u['C2']}/thumbnail", params={"viewport": "50,20"},
                          headers={"Accept": "image/png"})
        assert series.headers["content-type"] == "image/png" and _image(series.content).size == (20, 20)
        instance = http.get(f"/studies/{u['C']}/series/{u['C3']}/instances/{u['MULTI']}/thumbnail",
                            params={"viewport": "32,32"})
        assert _image(instance.content).size == (32, 32)


# -- STOW-RS ----------------------------------------------------------------------------


def test_stow_round_trip(world):
    client, study, series = world.client(), generate_uid(), generate_uid()
    # 2 x 512 KB: above dicomweb-client's 1 MB chunk size, so it is sent with chunked encoding.
    sent = [dcmread(io.BytesIO(ct_instance(study_uid=study, series_uid=series, instance_number=n, seed=7, size=512,
                                           patient_name="赵^六", patient_id="P-STOW", study_date="20270101")))
            for n in (1, 2)]
    response = client.store_instances(sent)
    assert "FailedSOPSequence" not in response
    referenced = response.ReferencedSOPSequence
    assert [item.ReferencedSOPInstanceUID for item in referenced] == [ds.SOPInstanceUID for ds in sent]
    assert referenced[0].RetrieveURL.startswith(f"{world.base}/studies/{study}/series/")
    assert response.RetrieveURL == f"{world.base}/studies/{study}"
    back = client.retrieve_study(study, media_types=(("application/dicom", "*"),))
    assert [ds.PixelData for ds in back] == [ds.PixelData for ds in sent]
    assert _study_uids(client.search_for_studies(search_filters={"PatientName": "赵*"})) == {study}
    compressed = world.original("J2K")
    compressed.StudyInstanceUID, compressed.SeriesInstanceUID, compressed.SOPInstanceUID = (
        generate_uid(), generate_uid(), generate_uid())
    client.store_instances([compressed], study_instance_uid=compressed.StudyInstanceUID)
    again = client.retrieve_instance(compressed.StudyInstanceUID, compressed.SeriesInstanceUID,
                                     compressed.SOPInstanceUID, media_types=(("application/dicom", "*"),))
    assert again.file_meta.TransferSyntaxUID == J2K_LOSSY and again.PixelData == compressed.PixelData


def _stow(world: World, parts: list[bytes], path: str = "/studies", who: str = "town") -> httpx.Response:
    body = multipart.encode([("application/dicom", p) for p in parts], "XyZ")
    with world.http(who) as http:
        return http.post(path, content=body,
                         headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=XyZ'})


def _failures(response: httpx.Response) -> list[int]:
    return [item["00081197"]["Value"][0] for item in response.json().get("00081198", {}).get("Value", [])]


def test_stow_failures_and_statuses(world):
    good = ct_instance(study_uid=generate_uid(), patient_id="P-STOW2", study_date="20270101")
    some = _stow(world, [b"not dicom at all" * 20, good])
    assert some.status_code == 202 and some.headers["content-type"] == "application/dicom+json"
    assert _failures(some) == [0xC000] and len(some.json()["00081199"]["Value"]) == 1
    mismatch = _stow(world, [ct_instance(study_uid=generate_uid())], path=f"/studies/{generate_uid()}")
    assert mismatch.status_code == 409 and _failures(mismatch) == [0xA900]
    foreign = _stow(world, [ct_instance(study_uid=world.uids["D"], patient_id="P9")])
    assert foreign.status_code == 409 and _failures(foreign) == [0x0124]
    twice = ct_instance(study_uid=generate_uid(), patient_id="P-STOW3", study_date="20270101")
    duplicate = _stow(world, [twice, twice])
    assert duplicate.status_code == 202 and _failures(duplicate) == [0x0111]
    with world.http() as http:
        wrong = http.post("/studies", content=good, headers={"Content-Type": "application/dicom"})
        assert wrong.status_code == 415 and wrong.json()["error"] == "unsupported_media_type"
        json_stow = http.post("/studies", content=b"{}", headers={
            "Content-Type": 'multipart/related; type="application/dicom+json"; boundary=x'})
        assert json_stow.status_code == 415
        truncated = http.post("/studies", content=b"--XyZ\r\nContent-Type: application/dicom\r\n\r\n" + good,
                              headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=XyZ'})
        assert truncated.status_code == 400
        assert http.post("/studies/not-a-uid", content=b"", headers={
            "Content-Type": 'multipart/related; type="application/dicom"; boundary=XyZ'}).status_code == 400


def _instances_of(world: World, study: str, who: str = "town") -> set[str]:
    with world.http(who) as http:
        answer = http.get(f"/studies/{study}/instances")
    assert answer.status_code == 200, answer.text
    return {item["00080018"]["Value"][0] for item in answer.json()}


def test_another_institution_cannot_take_an_instance_series_or_study(world):
    """13.1: STOW as OTHER reusing TOWN's SOP Instance UID (new study and series), TOWN's
    series UID (new study) or TOWN's study UID: each refused 0x0124 and audited; TOWN keeps
    its instance and the counters agree with QIDO. Failed on the previous code: the SOP
    reuse answered 200 and moved the instance into OTHER's study."""
    study_a = world.uids["A"]
    before = _instances_of(world, study_a)
    victim = world.uids["A1-1"]
    takeover = ct_instance(study_uid=generate_uid(), series_uid=generate_uid(), sop_uid=victim,
                           patient_id="THIEF", seed=5)
    series_reuse = ct_instance(study_uid=generate_uid(), series_uid=world.uids["A1"], patient_id="THIEF")
    study_reuse = ct_instance(study_uid=study_a, series_uid=generate_uid(), patient_id="THIEF")
    for blob in (takeover, series_reuse, study_reuse):
        refused = _stow(world, [blob], who="other")
        assert refused.status_code == 409 and _failures(refused) == [0x0124], refused.text
        reason = refused.json()["00081198"]["Value"][0]
        assert reason["00081155"]["Value"] == [dcmread(io.BytesIO(blob)).SOPInstanceUID]
    assert _instances_of(world, study_a) == before and victim in before
    with world.http() as http:
        assert http.get(f"/studies/{study_a}/series/{world.uids['A1']}/instances/{victim}",
                        headers={"Accept": DICOM_STAR}).status_code == 200
    with world.runtime.db.scope(readonly=True) as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == study_a))
        series_counts = session.execute(select(func.sum(Series.num_instances))
                                        .where(Series.study_pk == study.id)).scalar()
        refusals = session.scalars(select(AuditRecord).where(AuditRecord.action == "dicom.instance.refused",
                                                             AuditRecord.object_id == victim)).all()
    assert study.num_instances == series_counts == len(before)
    assert refusals and refusals[-1].outcome == "denied"
    assert refusals[-1].detail["owner_study_uid"] == study_a


def test_retrieve_never_cuts_a_200_short(world):
    """13.7: a study holding an instance that cannot be transcoded for the default Accept
    answered 200 and then aborted the connection. Now: 406 before any byte, naming it;
    with transfer-syntax=* the instance goes as stored."""
    study, series = generate_uid(), generate_uid()
    broken = dcmread(get_testdata_file("JPEG2000.dcm"))
    raw = bytearray(broken.PixelData)
    raw[len(raw) // 3:len(raw) // 3 + 2000] = bytes(2000)  # a damaged codestream
    broken.PixelData = bytes(raw)
    broken.StudyInstanceUID, broken.SeriesInstanceUID = study, series
    broken.SOPInstanceUID = broken.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    out = io.BytesIO()
    broken.save_as(out, enforce_file_format=True)
    good = ct_instance(study_uid=study, series_uid=series, instance_number=2, patient_id="P-BROKEN")
    with world.runtime.db.scope(readonly=True) as session:
        from storage.models import Institution

        town = session.scalar(select(Institution.id).where(Institution.code == "TOWN"))
    ingestor = Ingestor(world.runtime.db, world.runtime.store)
    try:
        for blob in (good, out.getvalue()):
            ingestor.ingest(blob, institution_id=town, source="test")
    finally:
        ingestor.close()
    with world.http() as http:
        default = http.get(f"/studies/{study}", headers={"Accept": 'multipart/related; type="application/dicom"'})
        assert default.status_code == 406 and broken.SOPInstanceUID in default.json()["detail"], default.text[:300]
        anything = http.get(f"/studies/{study}", headers={"Accept": DICOM_STAR})
        assert anything.status_code == 200
        syntaxes = sorted(part.content_type.split("transfer-syntax=")[1] for part in _parts(anything))
    assert syntaxes == sorted([str(broken.file_meta.TransferSyntaxUID), EVRLE])


def test_a_corrected_resend_reaches_every_index_level(world):
    """14.5: re-sending an instance with a corrected PatientName, date and series
    description stored the new version but C-FIND/QIDO kept the old values. Newest wins,
    the uploader is told (WarningReason 0xB000 and a Warning header), the audit names old
    and new values."""
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    first = ct_instance(study_uid=study, series_uid=series, sop_uid=sop, patient_name="赵^甲",
                        patient_id="P-FIX", study_date="20260101", seed=1)
    assert _stow(world, [first]).status_code == 200
    corrected = dcmread(io.BytesIO(ct_instance(study_uid=study, series_uid=series, sop_uid=sop,
                                               patient_name="钱^乙", patient_id="P-FIX", study_date="20260102",
                                               seed=1)))
    corrected.SeriesDescription = "更正 corrected"
    out = io.BytesIO()
    corrected.save_as(out, enforce_file_format=True)
    answer = _stow(world, [out.getvalue()])
    assert answer.status_code == 202 and "replaced 1" in answer.headers["warning"]  # PS3.18 10.5.3: warnings
    item = answer.json()["00081199"]["Value"][0]
    assert item["00081196"]["Value"] == [0xB000]
    with world.http() as http:
        by_new = http.get("/studies", params={"PatientName": "钱*"}).json()
        assert study in {r["0020000D"]["Value"][0] for r in by_new}
        by_old = http.get("/studies", params={"PatientName": "赵^甲"}).json()
        assert study not in {r["0020000D"]["Value"][0] for r in by_old}
        dated = http.get("/studies", params={"StudyDate": "20260102", "StudyInstanceUID": study}).json()
        assert len(dated) == 1
        described = http.get(f"/studies/{study}/series", params={"SeriesDescription": "更正*"}).json()
        assert len(described) == 1
    with world.runtime.db.scope(readonly=True) as session:
        record = session.scalars(select(AuditRecord).where(AuditRecord.action == "dicom.instance.replaced",
                                                           AuditRecord.object_id == sop)).one()
    assert record.detail["changes"]["patient_name"] == ["赵^甲", "钱^乙"]
    assert record.detail["changes"]["study.study_date"] == ["20260101", "20260102"]


# -- negotiation over HTTP --------------------------------------------------------------


def test_negotiation_edge_cases(world):
    u = world.uids
    j2k = f"/studies/{u['C']}/series/{u['C1']}/instances/{u['J2K']}"
    jpeg = f"/studies/{u['C']}/series/{u['C2']}/instances/{u['JPEG']}"
    with world.http() as http:
        refused = http.get(j2k, headers={"Accept": f'{DICOM_STAR.replace("*", JPEG_BASELINE)}'})
        assert refused.status_code == 406 and refused.json()["error"] == "not_acceptable"
        weighted = http.get(j2k, headers={"Accept": f'multipart/related; type="application/dicom"; '
                                                    f'transfer-syntax={EVRLE}; q=0.4, {DICOM_STAR}; q=0.9'})
        assert f"transfer-syntax={J2K_LOSSY}" in weighted.headers["content-type"]
        assert _parts(weighted)[0].content == world.blobs[u["J2K"]]
        octets = http.get(f"{jpeg}/frames/1",
                          headers={"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"})
        part = _parts(octets)[0]
        assert part.content_type == f"application/octet-stream; transfer-syntax={JPEG_BASELINE}"
        assert part.content[:2] == b"\xff\xd8"
        png = http.get(f"{jpeg}/rendered", headers={"Accept": "image/jpeg;q=0.3, image/png;q=0.8, */*;q=0.1"})
        assert png.headers["content-type"] == "image/png"
        assert http.get(f"{jpeg}/rendered", params={"accept": "image/png"}).headers["content-type"] == "image/png"
        assert http.get(f"{jpeg}/rendered", headers={"Accept": "image/gif"}).status_code == 406
        assert http.get(f"{j2k}/metadata", headers={"Accept": "application/dicom+xml"}).status_code == 406
        assert http.get(f"{j2k}/metadata", headers={"Accept": "garbage"}).status_code == 400


def test_missing_accept_gives_each_resource_its_default(world):
    u = world.uids
    j2k = f"/studies/{u['C']}/series/{u['C1']}/instances/{u['J2K']}"
    with world.http() as http:
        def get(path: str) -> httpx.Response:
            request = http.build_request("GET", path)
            del request.headers["accept"]
            return http.send(request)

        retrieved = get(j2k)
        assert retrieved.headers["content-type"].startswith(
            f'multipart/related; type="application/dicom"; transfer-syntax={EVRLE}; boundary=')
        assert dcmread(io.BytesIO(_parts(retrieved)[0].content)).file_meta.TransferSyntaxUID == EVRLE
        assert get(f"{j2k}/metadata").headers["content-type"] == "application/dicom+json"
        assert get(f"{j2k}/rendered").headers["content-type"] == "image/jpeg"
        frames = get(f"{j2k}/frames/1")
        assert _parts(frames)[0].content_type == f"application/octet-stream; transfer-syntax={EVRLE}"
        assert get("/studies").headers["content-type"] == "application/dicom+json"


@pytest.mark.parametrize("path, params, status", [
    ("/studies/abc", {}, 404),  # a sloppy UID can be stored as sent (14.4): well-formed, not found
    ("/studies/a%20b", {}, 400),  # a space: no stored UID holds one
    ("/studies/{A}%0A/metadata", {}, 400),
    ("/studies/{A}/series/{A1}/instances/{A1-1}/frames/\u00b2", {}, 400),
    ("/studies/{A}/series/{A1}/instances/{A1-1}/rendered", {"quality": "\u00b2"}, 400),
    ("/studies", {"limit": "\u00b2"}, 400),
    ("/studies/{A}/series/1..2", {}, 404),
    ("/studies/{A}/series/1%5C2", {}, 400),  # a backslash separates values: never a UID
    ("/studies/{A}/series/{A1}/instances/{A1-1}/frames/0", {}, 400),
    ("/studies/{A}/series/{A1}/instances/{A1-1}/frames/1,x", {}, 400),
    ("/studies/{A}/series/{A1}/instances/{A1-1}/frames/999", {}, 404),
    ("/studies/{C}/series/{C3}/instances/{MULTI}/frames/1,11", {}, 404),
    ("/studies/{A}/series/{A1}/instances/{A1-1}/rendered", {"window": "abc"}, 400),
    ("/studies/{A}/series/{A1}/instances/{A1-1}/rendered", {"window": "40,0"}, 400),
    ("/studies/{A}/series/{A1}/instances/{A1-1}/rendered", {"viewport": "0,0"}, 400),
    ("/studies/{A}/series/{A1}/instances/{A1-1}/rendered", {"quality": "101"}, 400),
    ("/studies/{A}/series/{A1}/instances/{A1-1}/frames/9/rendered", {}, 404),
    ("/studies/{A}/series/{A1}/instances/{A1-1}/bulkdata/XYZ", {}, 400),
    ("/studies/{A}/series/{A1}/instances/{A1-1}/bulkdata/00191234", {}, 404),
    ("/studies/{A}/series/{C1}/instances/{J2K}", {}, 404),  # a real instance, but not in that study
])
def test_bad_input_is_a_client_error(world, path, params, status):
    for name, uid in sorted(world.uids.items(), key=lambda item: -len(item[0])):
        path = path.replace("{" + name + "}", uid)
    with world.http() as http:
        response = http.get(path, params=params)
    assert response.status_code == status, response.text
    assert response.json()["error"]


# -- authorization and audit ------------------------------------------------------------


def test_other_institution_sees_nothing_and_gets_the_same_404(world):
    u, other = world.uids, world.client("other")
    assert _study_uids(other.search_for_studies(search_filters={"PatientName": "张*"})) == {u["D"]}
    assert other.search_for_series(u["A"]) == []
    assert other.search_for_instances(search_filters={"SOPInstanceUID": u["A1-1"]}) == []
    paths = [f"/studies/{u['A']}", f"/studies/{u['A']}/metadata", f"/studies/{u['A']}/series/{u['A1']}/rendered",
             f"/studies/{u['A']}/series/{u['A1']}/instances/{u['A1-1']}/frames/1",
             f"/studies/{u['A']}/thumbnail"]
    with world.http("other") as http, world.http("town") as mine:
        for path in paths:
            denied = http.get(path)
            absent = mine.get(path.replace(u["A"], generate_uid()))
            assert denied.status_code == absent.status_code == 404
            assert denied.json() == absent.json()
        wado = http.get("/wado", params={"requestType": "WADO", "studyUID": u["A"], "seriesUID": u["A1"],
                                         "objectUID": u["A1-1"], "contentType": "application/dicom"})
        assert wado.status_code == 404


def test_anonymous_is_refused_and_a_browser_session_works(world):
    u = world.uids
    with world.http(None) as anonymous:
        for method, path in (("GET", "/studies"), ("GET", f"/studies/{u['A']}/metadata"),
                             ("GET", f"/studies/{u['A']}"), ("POST", "/studies")):
            response = anonymous.request(method, path)
            assert response.status_code == 401 and response.json()["error"] == "not_authenticated"
    with httpx.Client(base_url=world.base, cookies={"lancang_session": world.tokens["town-cookie"]}) as browser:
        cookie = browser.get(f"/studies/{u['A']}/metadata")
        assert cookie.status_code == 200 and len(cookie.json()) == 4


def test_reads_and_denials_are_audited(world):
    u = world.uids
    world.client().retrieve_series_metadata(u["A"], u["A1"])
    with pytest.raises(requests.HTTPError):
        world.client("other").retrieve_series_metadata(u["A"], u["A1"])
    world.client().search_for_studies(search_filters={"AccessionNumber": "ACC-A"})
    with world.runtime.db.scope(readonly=True) as session:
        rows = session.query(AuditRecord).filter(AuditRecord.action.like("dicomweb.%")).all()
        metadata = [(r.actor, r.outcome, r.detail.get("instances")) for r in rows
                    if r.action == "dicomweb.metadata" and r.object_id == u["A1"]]
        search = [r for r in rows if r.action == "dicomweb.search" and "ACC-A" in r.object_id]
    assert ("town-radiographer", "ok", 3) in metadata and ("other-radiographer", "denied", None) in metadata
    assert search and search[-1].detail == {"matches": 1}


def test_read_audits_are_written_once_the_read_transaction_has_ended(world, monkeypatch):
    """On SQLite a write beside the same request's open read keeps the WAL from rewinding:
    when a read's audit record is written, none of the request's connections is still out."""
    u, seen = world.uids, []
    write = audit.record_reads

    def watching(db, records):
        seen.extend((fields["action"], fields["outcome"], db.engine.pool.checkedout()) for fields in records)
        write(db, records)

    monkeypatch.setattr(audit, "record_reads", watching)
    world.client().retrieve_series_metadata(u["A"], u["A1"])
    with pytest.raises(requests.HTTPError):
        world.client("other").retrieve_series_metadata(u["A"], u["A1"])
    assert seen == [("dicomweb.metadata", "ok", 0), ("dicomweb.metadata", "denied", 0)]


# -- WADO-URI ---------------------------------------------------------------------------


def test_wado_uri(world):
    u = world.uids

    def wado(key: str, series: str, study: str, **params) -> httpx.Response:
        with world.http() as http:
            return http.get("/wado", params={"requestType": "WADO", "studyUID": u[study], "seriesUID": u[series],
                                             "objectUID": u[key], **params})

    dicom = wado("A1-2", "A1", "A", contentType="application/dicom")
    assert dicom.headers["content-type"] == f"application/dicom; transfer-syntax={EVRLE}"
    assert dcmread(io.BytesIO(dicom.content)).SOPInstanceUID == u["A1-2"]
    jpeg = wado("A1-2", "A1", "A")
    assert jpeg.headers["content-type"] == "image/jpeg" and _image(jpeg.content).size == (32, 32)
    small = wado("MULTI", "C3", "C", contentType="image/png", rows="16", columns="16", frameNumber="4",
                 windowCenter="300", windowWidth="600")
    assert _image(small.content).size == (16, 16)
    as_stored = wado("J2K", "C1", "C", contentType="application/dicom", transferSyntax=J2K_LOSSY)
    assert as_stored.content == world.blobs[u["J2K"]]
    assert wado("J2K", "C1", "C", contentType="application/dicom",
                transferSyntax=JPEG_BASELINE).status_code == 406
    assert wado("A1-2", "A1", "A", requestType="XYZ").status_code == 400
    assert wado("A1-2", "A1", "A", frameNumber="0").status_code == 400


def test_stow_stores_a_sloppy_uid_exactly_with_a_warning(world):
    """14.4 over STOW-RS: 202 with WarningReason 0xB007 and a Warning header naming it;
    QIDO and WADO-RS find the instance by the UID exactly as sent."""
    study = generate_uid()
    sloppy = generate_uid() + ".0123.ABC.99999999999999999999"
    answer = _stow(world, [ct_instance(study_uid=study, sop_uid=sloppy, patient_id="P-SLOPPY")])
    assert answer.status_code == 202, answer.text
    item = answer.json()["00081199"]["Value"][0]
    assert item["00081196"]["Value"] == [0xB007] and item["00081155"]["Value"] == [sloppy]
    assert "do not conform" in answer.headers["warning"]
    with world.http() as http:
        listed = http.get(f"/studies/{study}/instances").json()
        assert [i["00080018"]["Value"][0] for i in listed] == [sloppy]
        series = listed[0]["0020000E"]["Value"][0]
        got = http.get(f"/studies/{study}/series/{series}/instances/{sloppy}",
                       headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
        assert got.status_code == 200 and sloppy.encode() in got.content
