"""`lancang import` on folders, files and zip archives: summary, reasons, safe re-runs."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile

from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from imaging.models import Instance
from storage.runtime import bootstrap
from tests.conftest import embedded_settings, settings_env
from tests.dicomdata import ct_instance
from tests.imaging.scu import dataset_bytes


def _lancang(env, *args):
    return subprocess.run([sys.executable, "-m", "lancang.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_import_folder_zip_and_rerun(tmp_path):
    settings = embedded_settings(tmp_path)
    env = settings_env(settings)
    assert _lancang(env, "institution", "add", "T01", "--name", "镇卫生院", "--level", "township").returncode == 0
    study = generate_uid()
    folder = tmp_path / "usb" / "DICOM" / "S1"
    folder.mkdir(parents=True)
    for i in range(5):
        (folder / f"IM{i}").write_bytes(ct_instance(study_uid=study, instance_number=i))
    (folder / "notes.txt").write_text("not an image")
    bare = dataset_bytes(ct_instance(study_uid=study, instance_number=9))  # a data set without file meta
    (folder / "BARE").write_bytes(bare)
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(3):
            zf.writestr(f"series/{i}.dcm", ct_instance(study_uid=study, instance_number=20 + i))
        zf.writestr("readme.txt", "hello")

    first = _lancang(env, "import", str(tmp_path / "usb"), str(archive), "--institution", "T01")
    assert first.returncode == 1  # the two text files are rejected
    assert "stored 9, already present 0, replaced 0, rejected 2, failed 0 (1 studies)" in first.stdout
    assert "2 x not a DICOM file" in first.stdout
    assert "import" in first.stderr and "11/11" in first.stderr  # the progress bar

    again = _lancang(env, "import", str(folder / "IM0"), str(archive), "--institution", "T01")
    assert again.returncode == 1, again.stdout  # readme.txt in the archive, again
    assert "stored 0, already present 4, replaced 0, rejected 1" in again.stdout

    runtime = bootstrap(settings, component="test")
    with runtime.db.scope(readonly=True) as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 9
        keys = list(session.scalars(select(Instance.object_key)))
    for key in keys:
        assert dcmread(io.BytesIO(runtime.store.get(key))).file_meta.TransferSyntaxUID


def test_import_unknown_institution_is_a_clear_error(tmp_path):
    env = settings_env(embedded_settings(tmp_path))
    done = _lancang(env, "import", str(tmp_path), "--institution", "NOPE")
    assert done.returncode == 2 and "unknown institution" in done.stderr
