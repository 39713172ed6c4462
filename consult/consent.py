"""Informed consent to a remote consult (远程医疗服务管理规范（试行）, 2018).

The inviting side obtains the patient's written informed consent; where the patient should
not be told (a poor prognosis, a minor, a patient who cannot decide), a guardian or close
relative signs instead, and the reason is kept. The scanned form (PDF, JPEG or PNG) goes to
the object store under `storage.keys.consent_form`, its SHA-256 beside it; reading it back
is a read of patient data and is audited by the route.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from consult import policy
from consult.models import CONSENT_SIGNERS, ConsentRecord
from consult.service import get
from storage import audit, keys
from storage.errors import Invalid, NotFound, PayloadTooLarge
from storage.identity import principal_for
from storage.models import User
from storage.objects import ObjectStore
from storage.types import utcnow

MAX_FORM_BYTES = 10 * 1024 * 1024  # a few scanned pages at 300 dpi
# What a scanned form may be, by its first bytes (the browser's declared type is not trusted).
FORM_TYPES = ((b"%PDF-", "application/pdf", "pdf"), (b"\xff\xd8\xff", "image/jpeg", "jpg"),
              (b"\x89PNG\r\n\x1a\n", "image/png", "png"))
SIGNER_LABELS = {"patient": "患者本人 patient", "guardian": "监护人 guardian", "relative": "近亲属 close relative"}


@dataclass(frozen=True)
class Consent:
    signer: str  # patient | guardian | relative
    obtained_at: datetime | None = None
    signer_name: str = ""
    relationship: str = ""
    reason_not_patient: str = ""


def record(*, session: Session, store: ObjectStore, user: User, consult_id: int, consent: Consent,
           form: bytes = b"") -> ConsentRecord:
    """Record who obtained consent, when, who signed, and keep the scanned form."""
    consult = get(session=session, consult_id=consult_id, user=user)
    policy.require("consent", consult, user)
    _check(consent)
    row = ConsentRecord(consult_id=consult.id, obtained_by_id=user.id,
                        obtained_at=consent.obtained_at or utcnow(), signer=consent.signer,
                        signer_name=consent.signer_name.strip()[:64],
                        relationship_to_patient=consent.relationship.strip()[:32],
                        reason_not_patient=consent.reason_not_patient.strip()[:500])
    if form:
        row.form_type, extension = _form_type(form)
        row.form_sha256 = hashlib.sha256(form).hexdigest()
        row.form_key = keys.consent_form(consult.id, row.form_sha256, extension)
        store.put(row.form_key, form, len(form), content_type=row.form_type)
    session.add(row)
    session.flush()
    audit.append(session, principal=principal_for(user), action="consult.consent", object_type="consult",
                 object_id=str(consult.id), detail={"consent": row.id, "signer": row.signer,
                                                    "form_sha256": row.form_sha256})
    return row


def _check(consent: Consent) -> None:
    if consent.signer not in CONSENT_SIGNERS:
        raise Invalid("请选择签署人 / choose who signed: the patient, a guardian or a close relative")
    if consent.obtained_at is not None and consent.obtained_at > utcnow():
        raise Invalid("签署时间不能晚于现在 / consent cannot be obtained in the future")
    if consent.signer != "patient":
        if not consent.signer_name.strip() or not consent.relationship.strip():
            raise Invalid("请填写签署人姓名及与患者关系 / give the signer's name and relationship to the patient")
        if not consent.reason_not_patient.strip():
            raise Invalid("请说明未由患者本人签署的原因 / say why the patient did not sign")


def _form_type(form: bytes) -> tuple[str, str]:
    if len(form) > MAX_FORM_BYTES:
        raise PayloadTooLarge(f"扫描件不超过{MAX_FORM_BYTES // 1024 // 1024} MB / the scanned form is limited to "
                       f"{MAX_FORM_BYTES // 1024 // 1024} MB")
    for magic, content_type, extension in FORM_TYPES:
        if form.startswith(magic):
            return content_type, extension
    raise Invalid("知情同意书扫描件须为PDF、JPEG或PNG / the scanned form must be a PDF, JPEG or PNG")


def records_for(session: Session, consult_id: int) -> list[ConsentRecord]:
    return list(session.scalars(select(ConsentRecord).where(ConsentRecord.consult_id == consult_id)
                                .order_by(ConsentRecord.id)))


def form_of(*, session: Session, user: User, consult_id: int, consent_id: int) -> ConsentRecord:
    """A consent record with a form, of a consult the user may view."""
    get(session=session, consult_id=consult_id, user=user)
    row = session.get(ConsentRecord, consent_id)
    if row is None or row.consult_id != consult_id or not row.form_key:
        raise NotFound("未找到知情同意书 / no such consent form")
    return row
