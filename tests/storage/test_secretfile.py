"""13.2: no signing secret in the source; a generated one per data dir (0600, reused);
no start beyond loopback or over https without a configured one; links sign their name."""

from __future__ import annotations

import stat
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import select

from storage import secretfile
from storage.settings import Settings
from storage.models import AuditRecord
from storage.objects import url_signature

REPO = Path(__file__).resolve().parents[2]
OLD_PUBLIC_CONSTANT = "lancang-embedded-mode-" + "not-a-secret"


def test_no_secret_constant_in_the_source():
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True).stdout.split()
    offenders = [name for name in tracked if OLD_PUBLIC_CONSTANT in (REPO / name).read_text(encoding="utf-8")]
    assert offenders == [Path(__file__).relative_to(REPO).as_posix()] or offenders == []


def test_generated_once_per_data_dir_mode_0600_and_reused(tmp_path):
    first = Settings(data_dir=tmp_path / "a").effective_secret_key
    path = tmp_path / "a" / secretfile.FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(first) >= 48
    # Another process of the same data dir reads the same key.
    again = subprocess.run([sys.executable, "-c", "import pathlib; from storage import secretfile; "
                            f"print(secretfile.read_or_create(pathlib.Path({str(tmp_path / 'a')!r})))"],
                           capture_output=True, text=True, cwd=REPO)
    assert again.stdout.strip() == first, again.stderr
    assert Settings(data_dir=tmp_path / "b").effective_secret_key != first
    path.chmod(0o644)
    assert Settings(data_dir=tmp_path / "c").effective_secret_key  # unrelated dir untouched
    assert secretfile.read_or_create(tmp_path / "a") == first and stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("overrides", [dict(bind_host="0.0.0.0"), dict(bind_host="10.1.2.3"),
                                       dict(public_url="https://imaging.example.cn")])
def test_refuses_to_start_exposed_without_a_configured_secret(tmp_path, overrides):
    with pytest.raises(ValidationError, match="LANCANG_SECRET_KEY must be set"):
        Settings(data_dir=tmp_path, **overrides)
    assert Settings(data_dir=tmp_path, secret_key="x" * 40, **overrides).effective_secret_key == "x" * 40
    assert not (tmp_path / secretfile.FILE_NAME).exists()


@pytest.mark.parametrize("weak", ["CHANGE-ME-long-random-but-still-the-example-value", "short"])
def test_weak_configured_secrets_are_refused(tmp_path, weak):
    with pytest.raises(ValidationError, match="at least 32 characters"):
        Settings(data_dir=tmp_path, secret_key=weak)


def test_links_forged_with_the_old_constant_or_a_new_filename_are_refused(tmp_path):
    """Failed on the previous code: the embedded secret was the public constant, and the
    filename was not signed (it went into Content-Disposition as given)."""
    from storage.runtime import bootstrap
    from web.app import create_app

    settings = Settings(data_dir=tmp_path, public_url="http://127.0.0.1:8000")
    runtime = bootstrap(settings, component="test")
    runtime.store.put("reports/1/v1.pdf", b"%PDF-1.7 signed report")
    expires = 4_000_000_000
    forged = urlencode({"expires": expires, "signature": url_signature(OLD_PUBLIC_CONSTANT, "reports/1/v1.pdf", expires)})
    genuine = urlsplit(runtime.store.url("reports/1/v1.pdf", timedelta(minutes=5), filename="报告 v1.pdf"))
    query = parse_qs(genuine.query)
    with TestClient(create_app(settings)) as client:
        assert client.get(f"/objects/reports/1/v1.pdf?{forged}").status_code == 403
        ok = client.get(f"{genuine.path}?{genuine.query}")
        assert ok.status_code == 200 and ok.content == b"%PDF-1.7 signed report"
        disposition = ok.headers["content-disposition"]
        assert "filename*=UTF-8''%E6%8A%A5%E5%91%8A%20v1.pdf" in disposition and "\r" not in disposition
        query["filename"] = ["evil\r\nSet-Cookie: x=1.html"]
        renamed = client.get(f"{genuine.path}?{urlencode(query, doseq=True)}")
        assert renamed.status_code == 403
    with runtime.db.scope(readonly=True) as session:
        reads = session.scalars(select(AuditRecord).where(AuditRecord.action == "object.read")).all()
    assert [r.object_id for r in reads] == ["reports/1/v1.pdf"]
    runtime.db.dispose()
