"""`lancang serve` runs web, DICOM receiver and worker, answers health and echo, stops on Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx

from tests.cli import run_cli
from tests.conftest import embedded_settings, settings_env
from tests.services import free_port


def _wait_healthy(url: str, process: subprocess.Popen, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "lancang serve exited early"
        try:
            response = httpx.get(url, timeout=2)
            if response.status_code == 200:
                return response.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError("lancang serve did not become healthy")


def test_serve_answers_health_and_echo_and_stops_cleanly(tmp_path):
    http_port, dicom_port = free_port(), free_port()
    env = settings_env(embedded_settings(tmp_path, http_port=http_port, dicom_port=dicom_port))
    cli = [sys.executable, "-m", "lancang.cli"]
    run_cli(env, "institution", "add", "T01", "--name", "镇卫生院", "--level", "township")
    run_cli(env, "ae", "add", "ECHOER", "--institution", "T01")
    process = subprocess.Popen(cli + ["serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        health = _wait_healthy(f"http://127.0.0.1:{http_port}/healthz", process)
        assert health["checks"] == {"database": "ok", "object_store": "ok", "broker": "ok"}
        echo = _echo(dicom_port, "ECHOER")
        assert echo.returncode == 0, echo.stdout + echo.stderr
        refused = _echo(dicom_port, "STRANGER")
        assert refused.returncode != 0 and "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "serve.stop" in output


def _echo(port: int, calling: str) -> subprocess.CompletedProcess:
    deadline = time.monotonic() + 30
    while True:
        done = subprocess.run(["/usr/bin/echoscu", "-aet", calling, "-aec", "LANCANG", "127.0.0.1", str(port)],
                              capture_output=True, text=True, timeout=30)
        if done.returncode == 0 or "Not Recognized" in done.stdout + done.stderr or time.monotonic() > deadline:
            return done
        time.sleep(0.5)  # the receiver may still be starting
