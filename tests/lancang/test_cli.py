"""The CLI forms scripts rely on, on a fresh data dir: most run in the test process
(tests/cli.py, the same `main`); the ones below that start `python -m lancang.cli` check what
only a real process shows (its exit code, stderr without a traceback, refusals at start)."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys

import pytest

from tests.cli import run_cli
from tests.conftest import embedded_settings, settings_env


@pytest.fixture
def cli(tmp_path):
    env = settings_env(embedded_settings(tmp_path))

    def run(*args, check=True):
        return run_cli(env, *args, check=check)

    run.data_dir = tmp_path / "var"
    return run


def test_admin_forms_work_on_a_fresh_data_dir(cli):
    cli("institution", "add", "PE-CITY", "--name", "普洱市人民医院", "--level", "city")
    cli("institution", "add", "LC-T01", "--name", "澜沧县勐朗镇卫生院", "--level", "township", "--parent", "PE-CITY")
    cli("ae", "add", "LC_CT01", "--institution", "LC-T01")
    cli("ae", "add", "LC_PACS", "--institution", "LC-T01", "--host", "127.0.0.1", "--port", "11113",
        "--can", "store,query,retrieve", "--allow", "10.1.2.0/24", "--allow", "127.0.0.1")
    cli("user", "add", "wang", "--role", "specialist", "--institution", "PE-CITY", "--password", "s3cret-pass")
    issued = cli("token", "issue", "wang")
    token = issued.stdout.strip().splitlines()[-1]
    assert token.startswith("lct_") and len(token) > 40

    listing = cli("institution", "list").stdout
    assert "澜沧县勐朗镇卫生院" in listing and "PE-CITY" in listing
    assert ("LC_PACS\tLC-T01\t127.0.0.1:11113\tstore,query,retrieve\t10.1.2.0/24,127.0.0.1/32\tenabled"
            in cli("ae", "list").stdout)
    assert "LC_CT01\tLC-T01\t-\tstore\tany\tenabled" in cli("ae", "list").stdout
    cli("ae", "set", "LC_PACS", "--allow-any", "--can", "query")
    assert "LC_PACS\tLC-T01\t127.0.0.1:11113\tquery\tany\tenabled" in cli("ae", "list").stdout
    assert "not an IP address" in cli("ae", "set", "LC_PACS", "--allow", "pacs.example", check=False).stderr
    assert "wang\tspecialist\tPE-CITY" in cli("user", "list").stdout
    assert "valid" in cli("token", "list", "wang").stdout
    said = cli("user", "contact", "wang", "--email", "wang@pe-hospital.cn", "--mobile", "138 0000 1234").stdout
    assert "wang@pe-hospital.cn" in said and "13800001234" in said
    assert "not a mainland mobile" in cli("user", "contact", "wang", "--mobile", "12345", check=False).stderr

    cli("token", "revoke", token)
    assert "revoked" in cli("token", "list").stdout
    cli("user", "disable", "wang")
    assert "disabled" in cli("user", "list").stdout
    cli("ae", "disable", "LC_CT01")
    assert "LC_CT01\tLC-T01\t-\tstore\tany\tdisabled" in cli("ae", "list").stdout


@pytest.mark.parametrize("args, message", [
    (("institution", "add", "X", "--name", "x", "--level", "township", "--parent", "NOPE"), "unknown institution"),
    (("ae", "add", "CT9", "--institution", "NOPE"), "unknown institution"),
    (("user", "add", "li", "--role", "specialist", "--institution", "NOPE", "--password", "long-enough"),
     "unknown institution"),
    (("user", "add", "li", "--role", "specialist", "--institution", "A", "--password", "short"), "at least 8"),
    (("token", "issue", "nobody"), "unknown user"),
    (("token", "revoke", "999"), "unknown token"),
    (("ae", "add", "A_TITLE_THAT_IS_TOO_LONG", "--institution", "A"), "1-16"),
    (("audit", "export", "--since", "yesterday"), "--since"),
])
def test_clear_errors_for_unknown_references(cli, args, message):
    cli("institution", "add", "A", "--name", "甲", "--level", "county")
    done = cli(*args, check=False)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_duplicates_are_refused(cli):
    cli("institution", "add", "A", "--name", "甲", "--level", "county")
    assert "already exists" in cli("institution", "add", "A", "--name", "乙", "--level", "county", check=False).stderr
    cli("ae", "add", "CT1", "--institution", "A")
    assert "already registered" in cli("ae", "add", "CT1", "--institution", "A", check=False).stderr
    cli("user", "add", "li", "--role", "admin", "--institution", "A", "--password", "long-enough")
    assert "already exists" in cli("user", "add", "li", "--role", "admin", "--institution", "A",
                                   "--password", "long-enough", check=False).stderr


def test_audit_verify_detects_an_edited_record_and_export_works(cli):
    cli("institution", "add", "A", "--name", "甲", "--level", "county")
    cli("user", "add", "li", "--role", "admin", "--institution", "A", "--password", "long-enough")
    ok = cli("audit", "verify")
    assert "intact: 2 records" in ok.stdout

    exported = json.loads(cli("audit", "export", "--since", "2020-01-01", "--format", "json").stdout)
    assert [r["action"] for r in exported] == ["admin.institution.add", "admin.user.add"]
    rows = list(csv.DictReader(io.StringIO(cli("audit", "export", "--format", "csv").stdout)))
    assert rows[1]["object_id"] == "li"

    with sqlite3.connect(cli.data_dir / "lancang.db") as db:
        db.execute("UPDATE audit_records SET object_id = 'someone-else' WHERE seq = 1")
    broken = cli("audit", "verify", check=False)
    assert broken.returncode == 1 and "BROKEN at record 1" in broken.stderr


def test_the_installed_command_exits_2_with_the_message_alone(tmp_path):
    env = settings_env(embedded_settings(tmp_path))
    done = subprocess.run([sys.executable, "-m", "lancang.cli", "ae", "add", "CT9", "--institution", "NOPE"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown institution" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_production_mode_without_secret_is_refused(tmp_path):
    env = settings_env(embedded_settings(tmp_path))
    env["LANCANG_DATABASE_URL"] = "postgresql+psycopg://u@127.0.0.1:1/x"
    done = subprocess.run([sys.executable, "-m", "lancang.cli", "audit", "verify"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "LANCANG_SECRET_KEY" in done.stderr


def test_endpoint_abroad_is_refused_at_startup(tmp_path):
    env = settings_env(embedded_settings(tmp_path))
    env.update(LANCANG_OBJECT_STORE="s3", LANCANG_S3_ENDPOINT="s3.us-west-2.amazonaws.com",
               LANCANG_SECRET_KEY="k" * 40, LANCANG_AUDIT_KEY="a" * 40)
    done = subprocess.run([sys.executable, "-m", "lancang.cli", "institution", "list"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3 and "境外" in done.stderr


def test_an_edge_credential_is_printed_once_stored_as_a_hash_and_revoked(cli):
    cli("institution", "add", "LC-T01", "--name", "澜沧县勐朗镇卫生院", "--level", "township")
    said = cli("edge", "credential", "--institution", "LC-T01", "--name", "t01-edge").stdout
    secret = said.split("LANCANG_EDGE_CREDENTIAL=", 1)[1].split()[0]
    assert secret.startswith("lce_") and len(secret) > 40
    with sqlite3.connect(cli.data_dir / "lancang.db") as db:
        stored = db.execute("select credential_hash, revoked_at from edge_nodes").fetchall()
        actions = [row[0] for row in db.execute("select action from audit_records where action like 'admin.edge%'")]
    assert len(stored) == 1 and secret not in stored[0][0] and stored[0][1] is None
    assert "unknown institution" in cli("edge", "credential", "--institution", "NOPE", "--name", "x",
                                        check=False).stderr.lower()
    cli("edge", "revoke", "t01-edge")
    with sqlite3.connect(cli.data_dir / "lancang.db") as db:
        assert db.execute("select revoked_at from edge_nodes").fetchone()[0] is not None
        actions = [row[0] for row in db.execute("select action from audit_records where action like 'admin.edge%'")]
    assert actions == ["admin.edge.issue", "admin.edge.revoke"]
    assert "unknown edge" in cli("edge", "revoke", "nobody", check=False).stderr
