"""`lancang edge init` then `lancang edge run` on a fresh data dir, as a township installs it:
init creates the township, the desk user and the modality's AE (and a second run keeps them);
run supervises web, DICOM receiver, worker, worklist (and the forwarder when installed); dcmtk's
echoscu and storescu succeed against it, the worklist answers C-ECHO, the stored study is on the
local study API while the region is unreachable (the line is down), and SIGTERM stops every
child."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import embedded_settings, settings_env
from tests.dicomdata import ct_instance
from tests.services import free_port, pid_alive

DCMTK = Path("/usr/bin")
CLI = [sys.executable, "-m", "lancang.cli"]

pytestmark = pytest.mark.skipif(not (DCMTK / "storescu").exists() and os.environ.get("CI") != "true",
                                reason="dcmtk not installed (scripts/test.sh installs it)")


def _dcmtk(tool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(DCMTK / tool), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "TCP_NODELAY": "1"})


def _until(check, what: str, process: subprocess.Popen, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"lancang edge run exited early while waiting for {what}"
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _healthy(url: str):
    try:
        response = httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


@pytest.fixture
def edge_env(tmp_path):
    ports = {"http_port": free_port(), "dicom_port": free_port(), "edge_mwl_port": free_port()}
    # A region that never answers: the line is down for the whole test.
    settings = embedded_settings(tmp_path, edge_region_url=f"http://127.0.0.1:{free_port()}",
                                 edge_credential="lce_test-credential-of-this-edge", **ports)
    env = settings_env(settings)
    env.update(PYTHONUNBUFFERED="1")
    return env, ports, tmp_path


def test_init_then_run_receives_from_a_modality_and_stops_on_sigterm(edge_env):
    env, ports, tmp_path = edge_env
    init = [*CLI, "edge", "init", "--institution", "MLZ", "--name", "勐朗镇卫生院", "--modality", "DR01",
            "--allow", "127.0.0.1"]
    first = subprocess.run(init, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "institution MLZ added (勐朗镇卫生院, township)" in first.stdout
    assert re.search(r"user desk added \(radiographer at MLZ\), password \S{8,} \(to be changed", first.stdout)
    assert "AE DR01 registered for MLZ: may store,query; from 127.0.0.1/32" in first.stdout
    assert f"worklist from AE LANCANG_MWL at 127.0.0.1:{ports['edge_mwl_port']}" in first.stdout
    again = subprocess.run(init, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "institution MLZ already there" in again.stdout and \
        "AE DR01 already registered" in again.stdout, again.stdout + again.stderr

    log_path = tmp_path / "edge.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([*CLI, "edge", "run"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _exercise(env, ports, tmp_path, process)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    output = log_path.read_text()
    assert process.returncode == 0, output[-4000:]
    assert "serve.stop" in output
    started = dict(re.findall(r"serve\.child\.started name=(\w+) pid=(\d+)", output))
    assert {"web", "dicom", "worker", "mwl"} <= set(started), output[-4000:]
    assert "forward" in started or "serve.child.skipped name=forward" in output
    assert not [name for name, pid in started.items() if pid_alive(int(pid))], "children left running"


def _exercise(env: dict, ports: dict, tmp_path: Path, process: subprocess.Popen) -> None:
    health = _until(lambda: _healthy(f"http://127.0.0.1:{ports['http_port']}/healthz"), "the web app", process)
    assert health["checks"]["database"] == "ok"
    echo = _until(lambda: (d := _dcmtk("echoscu", "-aet", "DR01", "-aec", "LANCANG", "127.0.0.1",
                                       str(ports["dicom_port"]))).returncode == 0 and d, "the receiver", process)
    assert echo.returncode == 0
    mwl_echo = _until(lambda: (d := _dcmtk("echoscu", "-aet", "DR01", "-aec", "LANCANG_MWL", "127.0.0.1",
                                           str(ports["edge_mwl_port"]))).returncode == 0 and d, "the worklist", process)
    assert mwl_echo.returncode == 0
    study = "2.25.1234567890123456789012345"
    paths = []
    for n in (1, 2):
        path = tmp_path / f"ct{n}.dcm"
        path.write_bytes(ct_instance(study_uid=study, patient_id="MLZ-000001", instance_number=n, size=64))
        paths.append(str(path))
    stored = _dcmtk("storescu", "-aet", "DR01", "-aec", "LANCANG", "127.0.0.1", str(ports["dicom_port"]), *paths)
    assert stored.returncode == 0 and "E:" not in stored.stdout + stored.stderr, stored.stdout + stored.stderr
    # The township sees its own study at once, with the region unreachable (offline viewing).
    issued = subprocess.run([*CLI, "token", "issue", "desk"], env=env, capture_output=True, text=True, timeout=120)
    token = issued.stdout.strip().splitlines()[-1]
    listed = httpx.get(f"http://127.0.0.1:{ports['http_port']}/api/studies", timeout=10,
                       headers={"Authorization": f"Bearer {token}"})
    assert listed.status_code == 200, listed.text
    assert study in listed.text
