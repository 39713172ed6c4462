"""Data residency: patient data must never be stored on servers outside mainland China.

Seed rule (卫生健康行业 data security notices): 医疗卫生机构不得将患者信息等敏感数据存储在境外服务器.
At startup every endpoint that will hold patient data (database, object store) is checked.
Private addresses, plain host names and mainland-China cloud regions pass; a known
public-cloud endpoint or region outside mainland China (Hong Kong included) is refused.
The override (LANCANG_RESIDENCY_OVERRIDE=true with a reason) exists for a ruling by the
institution's data-security officer and is written to the audit trail every start.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

RULE = "患者信息等敏感数据不得存储在境外服务器 (patient data must not be stored on servers outside mainland China)"

# Mainland regions of the clouds that have them; everything else of those clouds is abroad.
_MAINLAND = {
    "aws": {"cn-north-1", "cn-northwest-1"},
    "aliyun": {"cn-qingdao", "cn-beijing", "cn-zhangjiakou", "cn-huhehaote", "cn-wulanchabu",
               "cn-hangzhou", "cn-shanghai", "cn-nanjing", "cn-fuzhou", "cn-shenzhen", "cn-heyuan",
               "cn-guangzhou", "cn-chengdu", "cn-wuhan-lr"},
    "tencent": {"ap-beijing", "ap-shanghai", "ap-guangzhou", "ap-chengdu", "ap-chongqing",
                "ap-nanjing", "ap-shanghai-fsi", "ap-shenzhen-fsi", "ap-beijing-fsi"},
}


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str


def _host_of(endpoint: str) -> str:
    if "://" not in endpoint:
        endpoint = "//" + endpoint
    return (urlsplit(endpoint).hostname or "").lower()


def _is_private(host: str) -> bool:
    if host in ("localhost",) or "." not in host:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host.endswith((".local", ".internal", ".lan", ".svc", ".cluster.local"))
    return ip.is_private or ip.is_loopback or ip.is_link_local


def _cloud_region(host: str) -> tuple[str, str | None] | None:
    """(cloud, region) for a known public-cloud storage or database host, else None."""
    if host.endswith(".amazonaws.com.cn"):
        match = re.search(r"\.(cn-[a-z]+-\d)\.", host)
        return "aws", match.group(1) if match else "cn-north-1"
    if host.endswith(".amazonaws.com"):
        match = re.search(r"\.([a-z]{2}(?:-gov)?-[a-z]+-\d)\.", host)
        return "aws", match.group(1) if match else None  # global endpoint: us-east-1
    if host.endswith(".aliyuncs.com"):
        match = re.search(r"(?:oss-|rds\.|^)((?:cn|ap|us|eu|me|na)-[a-z0-9-]+?)(?:-internal)?\.", host)
        return "aliyun", match.group(1) if match else None
    if host.endswith(".myqcloud.com") or host.endswith(".tencentcloudapi.com"):
        match = re.search(r"\.((?:ap|na|eu|sa)-[a-z0-9-]+)\.", host)
        return "tencent", match.group(1) if match else None
    if host.endswith(".chinacloudapi.cn"):
        return "azure-china", "china"
    if host.endswith((".windows.net", ".azure.com")):
        return "azure", None
    if host.endswith((".googleapis.com", ".cloud.google.com")):
        return "gcp", None
    if host.endswith(".myhuaweicloud.com"):
        match = re.search(r"\.((?:cn|ap|af|la|sa|me|tr|eu)-[a-z0-9-]+)\.", host)
        return "huawei", match.group(1) if match else None
    if host.endswith((".digitaloceanspaces.com", ".backblazeb2.com", ".wasabisys.com", ".r2.cloudflarestorage.com")):
        return "abroad", None
    return None


def _mainland(cloud: str, region: str | None) -> bool:
    if cloud == "azure-china":
        return True
    if cloud == "huawei":
        return bool(region) and region.startswith("cn-") and region != "cn-hongkong"
    if region is None:
        return False
    return region in _MAINLAND.get(cloud, set())


def check_endpoint(what: str, endpoint: str, region: str | None = None) -> Verdict:
    host = _host_of(endpoint)
    if not host or _is_private(host):
        return Verdict(True, f"{what}: private host {host or '(local)'}")
    found = _cloud_region(host)
    if found is None:
        return Verdict(True, f"{what}: {host} is not a known public-cloud endpoint")
    cloud, host_region = found
    region = host_region or (region if cloud == "aws" and region else None)
    if _mainland(cloud, region):
        return Verdict(True, f"{what}: {host} is in mainland China ({cloud} {region})")
    return Verdict(False, f"{what}: {host} ({cloud} {region or 'global'}) is outside mainland China")


def check_settings(settings) -> list[Verdict]:
    """Verdicts for every endpoint that may hold patient data."""
    verdicts = []
    if settings.database_url:
        verdicts.append(check_endpoint("database", settings.database_url))
    if settings.object_store == "s3":
        verdicts.append(check_endpoint("object store", settings.s3_endpoint, settings.s3_region))
    return verdicts


class ResidencyError(RuntimeError):
    pass


def enforce(settings) -> list[Verdict]:
    """Raise ResidencyError naming the rule unless every endpoint passes or an override is set.

    Returns the refused verdicts that were overridden (the caller audits them)."""
    refused = [v for v in check_settings(settings) if not v.allowed]
    if not refused:
        return []
    if settings.residency_override and settings.residency_override_reason.strip():
        return refused
    reasons = "; ".join(v.reason for v in refused)
    raise ResidencyError(
        f"refusing to start: {reasons}. Rule: {RULE}. If your data-security officer has ruled this "
        "endpoint acceptable, set LANCANG_RESIDENCY_OVERRIDE=true and LANCANG_RESIDENCY_OVERRIDE_REASON "
        "(the override is audited at every start)."
    )
