"""One settings object for every process (env prefix LANCANG_, optional .env)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from storage import secretfile

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LANCANG_", env_file=".env", extra="ignore")

    data_dir: Path = Path("./var")

    # Database: empty means SQLite inside data_dir.
    database_url: str = ""

    # Object store: "fs" keeps objects under data_dir/objects; "s3" talks to MinIO/S3.
    object_store: Literal["fs", "s3"] = "fs"
    s3_endpoint: str = ""
    s3_public_endpoint: str = ""
    s3_access_key: str = ""
    s3_secret_key: SecretStr = SecretStr("")
    s3_bucket: str = "lancang"
    s3_region: str = "cn-north-1"
    s3_secure: bool = False

    # Broker: empty means a filesystem kombu transport inside data_dir.
    broker_url: str = ""

    # Network services.
    bind_host: str = "127.0.0.1"
    http_port: int = 8000
    public_url: str = ""
    dicom_port: int = 11112
    dicom_ae_title: str = "LANCANG"
    dicom_max_associations: int = 16
    dicom_acse_timeout: float = 30.0
    dicom_dimse_timeout: float = 60.0
    dicom_network_timeout: float = 60.0
    dicom_processes: int = 1
    # Seconds the worker waits after each preview: only for tests of redelivery after a
    # worker dies mid-task (a slow task on purpose); 0 in every real deployment.
    derive_preview_delay_s: float = 0.0

    # Fonts for the printed PDFs (storage/fonts.py): a .ttf/.otf/.ttc with Simplified Chinese;
    # empty means the first Debian CJK font installed. The film sheet falls back to report_font.
    report_font: str = ""
    film_font: str = ""
    # AEs that may query or retrieve must be bound to networks (`lancang ae add --allow`).
    dicom_require_host_binding: bool = False
    # Rejected associations: one audit record per source at once, then one summary per interval.
    dicom_reject_audit_interval_s: float = 60.0

    # What one upload may cost (imaging/limits.py): a STOW-RS body, one instance (STOW,
    # C-STORE, import), and what a deflated data set may inflate to.
    max_upload_bytes: int = 2 * 1024 ** 3
    max_instance_bytes: int = 1024 ** 3
    max_inflated_bytes: int = 256 * 1024 ** 2

    # Web viewers on other origins allowed to call DICOMweb and the study API with bearer
    # tokens (comma-separated origins, e.g. https://viewer.example.cn). Cookies never
    # authenticate a cross-origin request.
    cors_origins: str = ""

    # Reverse proxies whose X-Forwarded-For/-Proto are believed (comma-separated addresses or
    # CIDR networks). Empty: none, the client address is the peer's (never spoofable).
    trusted_proxies: str = ""

    secret_key: SecretStr = SecretStr("")
    # The audit chain's MAC key, kept outside the database (storage/audit.py). Embedded:
    # generated into <data_dir>/audit_key; with servers every process must share one.
    audit_key: SecretStr = SecretStr("")
    session_max_age_s: int = 12 * 3600
    token_days: int = 90

    # Data residency: see storage/residency.py. Overrides are audited at startup.
    residency_override: bool = False
    residency_override_reason: str = ""

    # Live consult rooms: ICE servers handed to browsers and to the server's own peers.
    # TURN credentials are time-limited (coturn --use-auth-secret with this shared secret).
    room_stun_urls: list[str] = []
    room_turn_urls: list[str] = []
    room_turn_secret: SecretStr = SecretStr("")
    room_turn_ttl_s: int = 3600
    room_recording_retention_days: int = 365

    # Notifications outside the platform (consult/notify.py): each channel is on when set.
    # They carry the title and a link, never the clinical text (that stays behind the login).
    notify_smtp_host: str = ""
    notify_smtp_port: int = 25
    notify_smtp_from: str = ""
    notify_smtp_user: str = ""
    notify_smtp_password: SecretStr = SecretStr("")
    notify_smtp_starttls: bool = False
    # A 企业微信 (WeChat Work) group robot: https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=…
    notify_wecom_webhook: str = ""
    # The region's SMS gateway (短信平台): POST {"mobile", "text"} as JSON, bearer token if set.
    notify_sms_url: str = ""
    notify_sms_token: SecretStr = SecretStr("")
    notify_timeout_s: float = 10.0

    # 危急值 (consult/critical.py): the categories a reader picks from (comma-separated), and
    # how long the requesting institution has to acknowledge before each escalation step
    # (its coordinators, then the region's). Hospital policy is about 30 minutes.
    critical_categories: str = ("大量气胸,主动脉夹层,颅内出血,急性肺栓塞,异位妊娠破裂,胎盘早剥,前置胎盘大出血,"
                                "胎心消失,其他")
    critical_ack_minutes: float = 30.0
    # 危重孕产妇 fast path: the target's response time an emergency consult is measured against.
    emergency_response_minutes: float = 15.0

    # One patient across institutions (imaging/persons.py): the IssuerOfPatientID values in
    # OtherPatientIDsSequence that name a 居民身份证号 and an 电子健康卡 number, comma-separated.
    resident_id_issuers: str = "RESIDENT_ID_CN,CN_RESIDENT_ID,居民身份证"
    health_card_issuers: str = "EHC_CN,电子健康卡"

    # The township edge (edge/, `lancang edge`): an embedded Lancang at a township that
    # receives from its modalities on the LAN, serves a modality worklist, and forwards each
    # study to the region over a weak line. Empty region URL: not an edge.
    edge_region_url: str = ""
    edge_credential: SecretStr = SecretStr("")  # issued by the region, bound to this institution
    edge_mwl_ae: str = "LANCANG_MWL"
    edge_mwl_port: int = 11113
    edge_rate_limit_kbps: int = 0  # 0: no cap
    # Time windows with their own cap, local time: "08:00-18:00=512,18:00-08:00=0" (kbit/s, 0 = no cap).
    edge_windows: str = ""
    edge_chunk_bytes: int = 1024 * 1024
    edge_retention_days: int = 30  # kept locally after the region confirmed the study

    log_level: str = "INFO"
    # The zone pages, PDFs and messages show times in (IANA name); data stays in UTC.
    timezone: str = "Asia/Shanghai"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"LANCANG_TIMEZONE={value!r} is not an IANA time zone such as Asia/Shanghai") from None
        return value

    @model_validator(mode="after")
    def _no_working_default_secrets_in_production(self) -> "Settings":
        configured = self.secret_key.get_secret_value()
        if configured:
            secretfile.check_strength(configured)
        if configured:
            pass
        elif not self.embedded:
            raise ValueError(
                "LANCANG_SECRET_KEY must be set when a database, S3 or broker server is configured "
                "(every process must share it; only a loopback embedded install generates its own)")
        elif self.exposed:
            raise ValueError(
                "LANCANG_SECRET_KEY must be set when Lancang listens beyond loopback "
                f"(LANCANG_BIND_HOST={self.bind_host}) or is published over https "
                f"(LANCANG_PUBLIC_URL={self.public_url})")
        if self.audit_key.get_secret_value():
            secretfile.check_strength(self.audit_key.get_secret_value())
        elif not self.embedded:
            raise ValueError("LANCANG_AUDIT_KEY must be set when a database, S3 or broker server is configured "
                             "(every process signs the audit chain with it; keep it outside the database)")
        return self

    @property
    def exposed(self) -> bool:
        """Reachable from other machines: bound beyond loopback or published over https."""
        return self.bind_host not in LOOPBACK_HOSTS or self.public_url.lower().startswith("https://")

    @property
    def embedded(self) -> bool:
        """True when no external server is configured: SQLite, filesystem store, local broker."""
        return not self.database_url and self.object_store == "fs" and not self.broker_url

    @property
    def effective_secret_key(self) -> str:
        """The configured key, else (loopback embedded installs only) the data dir's
        generated one (storage/secretfile.py)."""
        configured = self.secret_key.get_secret_value()
        if configured:
            return configured
        directory = self.data_dir.resolve()
        if directory not in _GENERATED:
            _GENERATED[directory] = secretfile.read_or_create(directory)
        return _GENERATED[directory]

    @property
    def effective_audit_key(self) -> str:
        configured = self.audit_key.get_secret_value()
        if configured:
            return configured
        directory = self.data_dir.resolve()
        if (directory, "audit") not in _GENERATED:
            _GENERATED[(directory, "audit")] = secretfile.read_or_create(directory, "audit_key")
        return _GENERATED[(directory, "audit")]

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'lancang.db').resolve()}"

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def broker_dir(self) -> Path:
        return (self.data_dir / "broker").resolve()

    @property
    def objects_dir(self) -> Path:
        return (self.data_dir / "objects").resolve()

    @property
    def effective_public_url(self) -> str:
        return (self.public_url or f"http://{self.bind_host}:{self.http_port}").rstrip("/")

    @property
    def public_url_is_loopback(self) -> bool:
        """True when links given to patients (cloud-film QR codes, report QR codes) point at
        this machine itself: a phone that scans them reaches nothing."""
        from urllib.parse import urlsplit

        host = (urlsplit(self.effective_public_url).hostname or "").lower()
        return host in ("localhost", "::1", "0.0.0.0") or host.startswith("127.")


_GENERATED: dict = {}


@lru_cache
def get_settings() -> Settings:
    return Settings()
