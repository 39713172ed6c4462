"""Bad input and failing backends: clear statuses, the receiver keeps running, nothing
acknowledged is lost, and it recovers without a restart."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import CTImageStorage, MRImageStorage, generate_uid
from sqlalchemy import func, select

from imaging.models import Instance
from tests.dicomdata import ct_instance
from tests.imaging.scu import dataset_bytes, send_files, send_raw

pytestmark = pytest.mark.timeout(300)


def _write(directory: Path, name: str, blob: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(blob)
    return path


def _indexed(runtime) -> set[str]:
    with runtime.db.scope(readonly=True) as session:
        return set(session.scalars(select(Instance.sop_instance_uid)))


def _assert_acknowledged_are_intact(runtime, sent: dict[str, bytes], acknowledged: set[str]) -> None:
    """Every acknowledged instance is indexed and its stored data set is byte-identical."""
    with runtime.db.scope(readonly=True) as session:
        rows = {r.sop_instance_uid: r.object_key for r in session.execute(select(Instance.sop_instance_uid, Instance.object_key))}
    assert acknowledged <= rows.keys()
    for uid in acknowledged:
        stored = runtime.store.get(rows[uid])
        assert dataset_bytes(stored) == dataset_bytes(sent[uid]), uid


def test_wrong_sop_class_truncated_and_garbage_get_failure_statuses(node, tmp_path):
    good = _write(tmp_path, "good.dcm", ct_instance())
    # Required UIDs missing.
    ds = dcmread(io.BytesIO(ct_instance()))
    del ds.StudyInstanceUID
    no_study = tmp_path / "no_study.dcm"
    ds.save_as(no_study)
    truncated = Path(get_testdata_file("MR_truncated.dcm"))

    statuses = send_files(node.port, [no_study, truncated, good])
    assert statuses[0] == 0xA900                      # missing StudyInstanceUID
    assert 0xC000 <= statuses[1] <= 0xCFFF            # truncated pixel data: cannot understand
    assert statuses[2] == 0x0000                      # and the association still works
    # Negotiated and announced as MR Image Storage, but the data set is a CT image.
    mismatch = send_raw(node.port, MRImageStorage, generate_uid(), dataset_bytes(ct_instance()))
    assert mismatch == 0xA900                         # data set does not match SOP class
    garbage = send_raw(node.port, CTImageStorage, generate_uid(), os.urandom(3000))
    assert 0xC000 <= garbage <= 0xCFFF                # cannot understand
    half = dataset_bytes(ct_instance())[:700]          # a data set cut off mid-element
    assert send_raw(node.port, CTImageStorage, generate_uid(), half) != 0x0000
    assert len(_indexed(node.runtime)) == 1
    assert send_files(node.port, [good]) == [0]       # the receiver is alive and well


def _break_store(runtime, servers=None):
    if runtime.settings.object_store == "s3":
        servers.s3.stop()
        return lambda: servers.s3.start()
    objects = runtime.store.root
    aside = objects.with_name("objects-aside")
    objects.rename(aside)
    objects.write_text("the disk is gone")  # a file where the directory was: writes fail

    def repair():
        objects.unlink()
        aside.rename(objects)
    return repair


def test_object_store_down_mid_ingest_loses_nothing_and_recovers(request, node, tmp_path):
    servers = request.getfixturevalue("servers") if node.runtime.settings.object_store == "s3" else None
    blobs = {}
    paths = []
    for i in range(30):
        blob = ct_instance(instance_number=i)
        uid = dcmread(io.BytesIO(blob), stop_before_pixels=True).SOPInstanceUID
        blobs[uid] = blob
        paths.append(_write(tmp_path / "in", f"{i:03d}.dcm", blob))
    uids = list(blobs)

    first = send_files(node.port, paths[:10])
    repair = _break_store(node.runtime, servers)
    try:
        during = send_files(node.port, paths[10:20])
    finally:
        repair()
    after = send_files(node.port, paths[10:])  # the modality re-sends what failed, and the rest

    assert first == [0] * 10
    assert set(during) == {0xA700}, [hex(s) for s in during]
    assert after == [0] * 20
    acknowledged = {uid for uid, s in zip(uids, first + [None] * 10 + after[10:]) if s == 0} | set(uids[10:20])
    assert _indexed(node.runtime) == set(uids)
    _assert_acknowledged_are_intact(node.runtime, blobs, acknowledged)


def test_database_down_mid_ingest_answers_out_of_resources(request, node, tmp_path):
    if node.runtime.settings.database_url == "":
        pytest.skip("the embedded SQLite file cannot be stopped; the object-store fault covers it")
    servers = request.getfixturevalue("servers")
    paths = [_write(tmp_path, f"{i}.dcm", ct_instance(instance_number=i)) for i in range(6)]
    assert send_files(node.port, paths[:2]) == [0, 0]
    servers.postgres.stop()
    try:
        during = send_files(node.port, paths[2:4])
    finally:
        servers.postgres.start()
    assert set(during) == {0xA700}
    assert send_files(node.port, paths[2:]) == [0, 0, 0, 0]
    assert len(_indexed(node.runtime)) == 6


def test_eight_concurrent_associations(node, tmp_path):
    blobs: dict[str, bytes] = {}
    batches: list[list[Path]] = []
    study = generate_uid()
    for a in range(8):
        batch = []
        series = generate_uid()
        for i in range(8):
            blob = ct_instance(study_uid=study, series_uid=series, instance_number=i, seed=a * 100)
            uid = dcmread(io.BytesIO(blob), stop_before_pixels=True).SOPInstanceUID
            blobs[uid] = blob
            batch.append(_write(tmp_path / str(a), f"{i}.dcm", blob))
        batches.append(batch)
    results: list[list[int]] = [[] for _ in batches]

    def send(index):
        results[index] = send_files(node.port, batches[index])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert all(r == [0] * 8 for r in results), results
    assert _indexed(node.runtime) == set(blobs)
    _assert_acknowledged_are_intact(node.runtime, blobs, set(blobs))
    with node.runtime.db.scope(readonly=True) as session:
        from imaging.models import Series, Study

        study_row = session.scalar(select(Study))
        assert (study_row.num_instances, study_row.num_series) == (64, 8)
        assert session.scalar(select(func.sum(Series.num_instances))) == 64
