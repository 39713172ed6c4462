"""`lancang dicom` with several receiver processes behind one port (fd hand-over)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from pydicom.uid import generate_uid
from sqlalchemy import func, select

from imaging.models import Instance, Study
from storage.runtime import bootstrap
from tests.conftest import embedded_settings, settings_env
from tests.dicomdata import ct_instance
from tests.services import free_port


def test_four_associations_over_two_processes(tmp_path):
    port = free_port()
    settings = embedded_settings(tmp_path, dicom_port=port, dicom_processes=2)
    env = settings_env(settings)
    cli = [sys.executable, "-m", "lancang.cli"]
    subprocess.run(cli + ["institution", "add", "T01", "--name", "镇", "--level", "township"], env=env, check=True)
    subprocess.run(cli + ["ae", "add", "MOD1", "--institution", "T01"], env=env, check=True)
    receiver = subprocess.Popen(cli + ["dicom"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_echo(port)
        study = generate_uid()
        groups = []
        for a in range(4):
            folder = tmp_path / f"a{a}"
            folder.mkdir()
            for i in range(10):
                (folder / f"{i}.dcm").write_bytes(ct_instance(study_uid=study, instance_number=a * 10 + i))
            groups.append(sorted(str(p) for p in folder.iterdir()))
        senders = [subprocess.Popen(["/usr/bin/storescu", "-aet", "MOD1", "-aec", "LANCANG", "127.0.0.1", str(port),
                                     *files], env={"TCP_NODELAY": "1"}) for files in groups]
        assert [s.wait(timeout=120) for s in senders] == [0, 0, 0, 0]
    finally:
        receiver.send_signal(signal.SIGTERM)
        output, _ = receiver.communicate(timeout=30)
    assert receiver.returncode == 0, output
    runtime = bootstrap(settings, component="test")
    with runtime.db.scope(readonly=True) as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 40
        assert session.scalar(select(Study.num_instances)) == 40


def _wait_for_echo(port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if subprocess.run(["/usr/bin/echoscu", "-aet", "MOD1", "-aec", "LANCANG", "127.0.0.1", str(port)],
                          capture_output=True).returncode == 0:
            return
        time.sleep(0.3)
    raise AssertionError("receiver did not answer C-ECHO")
