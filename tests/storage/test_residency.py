"""Data residency: endpoints abroad are refused at startup, with the rule named."""

from __future__ import annotations

import pytest

from storage.settings import Settings
from storage import residency


@pytest.mark.parametrize("endpoint, region", [
    ("s3.amazonaws.com", "us-east-1"),
    ("s3.eu-west-1.amazonaws.com", None),
    ("mybucket.s3.ap-southeast-1.amazonaws.com", None),
    ("oss-us-west-1.aliyuncs.com", None),
    ("oss-cn-hongkong.aliyuncs.com", None),
    ("cos.ap-singapore.myqcloud.com", None),
    ("cos.ap-hongkong.myqcloud.com", None),
    ("lancang.blob.core.windows.net", None),
    ("storage.googleapis.com", None),
    ("https://obs.ap-southeast-1.myhuaweicloud.com", None),
])
def test_endpoints_outside_mainland_are_refused(endpoint, region):
    assert not residency.check_endpoint("object store", endpoint, region).allowed


@pytest.mark.parametrize("endpoint, region", [
    ("127.0.0.1:9000", None),
    ("minio:9000", None),
    ("10.2.3.4:9000", None),
    ("pacs.local", None),
    ("s3.cn-north-1.amazonaws.com.cn", None),
    ("s3.cn-northwest-1.amazonaws.com.cn", None),
    ("oss-cn-hangzhou.aliyuncs.com", None),
    ("oss-cn-shanghai-internal.aliyuncs.com", None),
    ("cos.ap-guangzhou.myqcloud.com", None),
    ("obs.cn-north-4.myhuaweicloud.com", None),
    ("lancang.blob.core.chinacloudapi.cn", None),
    ("imaging.pe-hospital.cn", None),
])
def test_private_and_mainland_endpoints_pass(endpoint, region):
    assert residency.check_endpoint("object store", endpoint, region).allowed


def _abroad(**extra) -> Settings:
    return Settings(_env_file=None, object_store="s3", s3_endpoint="s3.us-west-2.amazonaws.com",
                    secret_key="k" * 40, audit_key="a" * 40, **extra)


def test_enforce_names_the_rule():
    with pytest.raises(residency.ResidencyError) as caught:
        residency.enforce(_abroad())
    assert "境外" in str(caught.value) and "LANCANG_RESIDENCY_OVERRIDE" in str(caught.value)


def test_database_abroad_is_refused():
    settings = Settings(_env_file=None, database_url="postgresql+psycopg://u@db.xyz.us-east-1.rds.amazonaws.com/x",
                        secret_key="k" * 40, audit_key="a" * 40)
    with pytest.raises(residency.ResidencyError):
        residency.enforce(settings)


def test_override_needs_a_reason():
    with pytest.raises(residency.ResidencyError):
        residency.enforce(_abroad(residency_override=True))
    overridden = residency.enforce(_abroad(residency_override=True, residency_override_reason="ruling 2026-7"))
    assert overridden and not overridden[0].allowed


def test_override_is_audited_at_startup(tmp_path, monkeypatch):
    """bootstrap() with an overridden endpoint writes an audit record (the store itself is
    local here: the verdict comes from the database endpoint)."""
    from storage.runtime import bootstrap
    from storage import audit
    from storage.models import AuditRecord

    settings = Settings(_env_file=None, data_dir=tmp_path, residency_override=True,
                        residency_override_reason="officer ruling 12")
    monkeypatch.setattr(residency, "check_settings",
                        lambda s: [residency.Verdict(False, "database: x.amazonaws.com is outside")])
    runtime = bootstrap(settings, component="test")
    with runtime.db.scope(readonly=True) as session:
        records = session.query(AuditRecord).filter_by(action="residency.override").all()
        assert len(records) == 1 and records[0].detail["justification"] == "officer ruling 12"
        assert audit.verify(session).ok
