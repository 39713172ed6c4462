"""Reports: drafts that autosave, the reader's signed preliminary, the senior's co-signed final
(or a return with comments), signed addenda; every version kept, none ever edited.

Signing: each version is a PDF signed with PAdES by its signer(s) (consult/signing.py) with a
QR code to the public verification page, plus a detached CMS signature over the canonical
JSON of the report data.
"""

from __future__ import annotations

from dataclasses import dataclass

import base64
import hashlib
import json
import logging
import secrets
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from consult import obstetrics, signing, templates
from consult.models import ConsultRequest, ConsultStudy, Report, ReportVersion, SignerCredential, SigningAuthority
from consult.notify import notify_consult
from consult.reportpdf import ReportContent, Signer, Status, beijing_time, build_report_pdf
from consult import policy
from consult.service import get, step_with_reason, users_with_roles
from consult.state import transition
from imaging import keyimages, ob_sr
from imaging.annotations import Author
from imaging.dataset import display_name
from imaging.summary import age_at
from imaging.models import Instance, Series, Study
from imaging.query import shown_patient_id
from storage import audit, keys, localtime
from storage.db import after_commit
from storage.errors import Conflict, Invalid, NotFound, NotPermitted
from storage.models import User
from storage.types import revoke, utcnow

WRITABLE = ("assigned", "scheduled", "in_progress")
log = logging.getLogger("lancang.consult")


class SignatureRefused(NotPermitted):
    """Wrong signing password or no usable certificate (403 with the reason)."""


# -- certificate authority --------------------------------------------------------------


def init_authority(*, session: Session, name: str, organisation: str, password: str) -> SigningAuthority:
    """Create the institutional CA (refused when one is active: keys are not replaced silently)."""
    if session.scalar(select(SigningAuthority).where(SigningAuthority.active.is_(True))) is not None:
        raise Conflict("a signing authority exists already")
    if len(password) < 12:
        raise Invalid("the CA password needs at least 12 characters")
    material = signing.create_ca(name, organisation, password)
    authority = SigningAuthority(name=name, cert_pem=material.cert_pem, key_pem_encrypted=material.key_pem_encrypted)
    session.add(authority)
    session.flush()
    return authority


def active_authority(session: Session) -> SigningAuthority:
    authority = session.scalar(select(SigningAuthority).where(SigningAuthority.active.is_(True)))
    if authority is None:
        raise NotFound("no signing authority: run `lancang ca init` first")
    return authority


def trusted_roots(session: Session) -> list[bytes]:
    return list(session.scalars(select(SigningAuthority.cert_pem)))


def issue_credential(*, session: Session, user: User, ca_password: str, signing_password: str) -> SignerCredential:
    """Give a specialist an X.509 signing certificate; the key is encrypted with their password."""
    if user.role != "specialist":
        raise Invalid(f"{user.username} is not a specialist")
    if len(signing_password) < 8:
        raise Invalid("the signing password needs at least 8 characters")
    authority = active_authority(session)
    ca = signing.CaMaterial(authority.cert_pem, authority.key_pem_encrypted)
    try:
        material = signing.issue_signer(ca, ca_password, username=user.username, display_name=user.display_name,
                                        institution=user.institution.name_zh, signer_password=signing_password)
    except signing.SigningError as exc:
        raise SignatureRefused(str(exc)) from None
    for old in session.scalars(select(SignerCredential).where(SignerCredential.user_id == user.id,
                                                              SignerCredential.revoked_at.is_(None))):
        old.revoked_at = utcnow()
    credential = SignerCredential(user_id=user.id, authority_id=authority.id, cert_pem=material.cert_pem,
                                  key_pem_encrypted=material.key_pem_encrypted)
    session.add(credential)
    session.flush()
    return credential


def revoke_credential(*, session: Session, credential_id: int) -> SignerCredential:
    """Revoke a signing certificate (a lost card, a departed doctor): it signs nothing more;
    reports it signed before stay valid, as signed then."""
    credential = session.get(SignerCredential, credential_id)
    if credential is None:
        raise NotFound("未找到该证书 / unknown certificate")
    return revoke(credential)


def certificate_expiry(credential: SignerCredential):
    """When the certificate stops being valid (its notAfter), as an aware datetime."""
    return signing.not_after(credential.cert_pem)


def _credential(session: Session, user: User) -> tuple[SignerCredential, SigningAuthority]:
    credential = session.scalar(select(SignerCredential).where(SignerCredential.user_id == user.id,
                                                               SignerCredential.revoked_at.is_(None)))
    if credential is None:
        raise SignatureRefused("尚未签发数字证书 / you have no signing certificate yet; ask the administrator")
    return credential, session.get(SigningAuthority, credential.authority_id)


# -- drafts -----------------------------------------------------------------------------


def get_report(*, session: Session, consult: ConsultRequest) -> Report | None:
    return session.scalar(select(Report).where(Report.consult_id == consult.id))


def save_draft(*, session: Session, consult_id: int, user: User, template: str, content: dict) -> Report:
    """Autosave of the reader's working text (only while the read is open)."""
    consult = get(session=session, consult_id=consult_id, user=user)
    policy.require("draft", consult, user)
    if consult.status not in WRITABLE:
        raise Conflict(f"会诊当前状态下报告不能编辑 / the report cannot be edited while the consult is {consult.status}")
    cleaned = templates.clean_content(template, content, strict=False)
    if consult.status != "in_progress":
        transition(session, consult, user, "in_progress")
    report = get_report(session=session, consult=consult)
    if report is None:
        report = Report(consult_id=consult.id, template=template, status="draft", draft=cleaned)
        session.add(report)
    else:
        report.template, report.draft, report.updated_at = template, cleaned, utcnow()
    session.flush()
    return report


# -- signing ----------------------------------------------------------------------------


def _visit_number(session: Session, study: Study) -> str:
    """The 门诊/住院号 the modality wrote (Admission ID, 0038,0010) in the study's first instance."""
    text = session.scalar(select(Instance.dicom_json).join(Series, Series.id == Instance.series_pk)
                          .where(Series.study_pk == study.id).order_by(Instance.id).limit(1))
    try:
        element = json.loads(text or "{}").get("00380010") or {}
        return str((element.get("Value") or [""])[0])[:64]
    except (ValueError, AttributeError):
        return ""


def _exam(session: Session, consult: ConsultRequest) -> tuple[Study, Series | None]:
    study = session.scalar(select(Study).where(Study.study_instance_uid == consult.studies[0].study_instance_uid))
    series = session.scalar(select(Series).where(Series.study_pk == study.id).order_by(Series.id))
    return study, series


def _studies(session: Session, consult: ConsultRequest, template) -> list[tuple[str, str, str, str, str]]:
    """Each study of the consult as the report lists it, from that study's own index rows
    (the template's modality and body part when the images do not say)."""
    rows = []
    for link in consult.studies:
        study = session.scalar(select(Study).where(Study.study_instance_uid == link.study_instance_uid))
        if study is None:
            continue
        series = session.scalars(select(Series).where(Series.study_pk == study.id).order_by(Series.id)).all()
        # The exam's modalities: an SR or a KO stored beside the images is not a kind of exam.
        modality = "/".join(keyimages.image_modalities(
            study.modalities or "\\".join(dict.fromkeys(s.modality for s in series if s.modality))))
        body = next((s.body_part for s in series if s.body_part), "") or template.body_part
        modality = modality or template.modality
        rows.append((modality, body_part_zh(body), chinese_date(study.study_date),
                     study.accession_number, study.description))
    return rows


def key_image_lines(session: Session, consult: ConsultRequest) -> list[str]:
    """The key images of the consult's studies (each study's current Key Object Selection), as
    the report lists them; with several studies each line says which study."""
    found = []
    for link in consult.studies:
        study = session.scalar(select(Study).where(Study.study_instance_uid == link.study_instance_uid))
        if study is not None:
            found += [(study, key) for key in keyimages.key_images(session, study.id)]
    several = len({study.id for study, _ in found}) > 1
    return [f"{chinese_date(study.study_date)} {key.label}" if several else key.label for study, key in found]


# DICOM Body Part Examined (PS3.16 CID 4031) as a report prints it, Chinese first.
BODY_PARTS_ZH = {
    "HEAD": "头部", "BRAIN": "颅脑", "SKULL": "颅骨", "NECK": "颈部", "CHEST": "胸部", "LUNG": "肺部",
    "HEART": "心脏", "BREAST": "乳腺", "ABDOMEN": "腹部", "PELVIS": "盆腔", "ABDOMENPELVIS": "腹盆腔",
    "LIVER": "肝脏", "KIDNEY": "肾脏", "SPINE": "脊柱", "CSPINE": "颈椎", "TSPINE": "胸椎", "LSPINE": "腰椎",
    "SHOULDER": "肩关节", "ELBOW": "肘关节", "WRIST": "腕关节", "HAND": "手", "HIP": "髋关节", "KNEE": "膝关节",
    "ANKLE": "踝关节", "FOOT": "足", "EXTREMITY": "四肢", "UTERUS": "子宫", "OVARY": "卵巢", "FETUS": "胎儿",
    "THYROID": "甲状腺",
}


def body_part_zh(code: str) -> str:
    """'胸部 CHEST' for a known DICOM code, the text as it is otherwise."""
    code = (code or "").strip()
    chinese = BODY_PARTS_ZH.get(code.upper().replace(" ", ""))
    return f"{chinese} {code}" if chinese else code


def chinese_date(dicom_date: str) -> str:
    """20240301 as 2024年3月1日; anything else as it is."""
    text = (dicom_date or "").strip()
    if len(text) == 8 and text.isdigit():
        return f"{int(text[:4])}年{int(text[4:6])}月{int(text[6:])}日"
    return text


PRELIMINARY = Status("初步报告 Preliminary report", "待上级医师审核签发，以终审报告为准 "
                     "Awaiting the senior's review; the final report prevails", (190, 110, 0))
FINAL = Status("终审报告 Final report", "报告医师签发，上级医师审核签发 Signed by the reader and by the "
               "reviewing senior", (46, 125, 50))


def _addendum_status(final_number: int) -> Status:
    return Status("补充报告 Addendum", f"对第 {final_number} 版终审报告的补充 Addendum to the final report, "
                  f"version {final_number}", (11, 110, 138))


def _signer(user: User | None, role: str, signed_at: datetime | None, pending: str = "") -> Signer:
    if user is None:
        return Signer(role=role, name="—", pending=pending or "—")
    return Signer(role=role, name=user.display_name, title=user.title or "",
                  institution=user.institution.name_zh if user.institution else "", signed_at=signed_at,
                  pending=pending or "待签名 Not signed yet")


def _pdf_content(session: Session, consult: ConsultRequest, report: Report, content: dict, verify_url: str,
                 title: str | None = None, **printed) -> ReportContent:
    study, series = _exam(session, consult)
    template = templates.TEMPLATES[report.template]
    extra = {"title": title} if title else {}
    extra.update(printed)  # status, signers, attachments
    extra.setdefault("studies", _studies(session, consult, template))
    extra.setdefault("key_images", key_image_lines(session, consult))
    extra.setdefault("biometry", templates.biometry_table(report.template, content.get("fields", {}), study.study_date))
    signed = [s.signed_at for s in extra.get("signers", []) if s.signed_at is not None]
    where = consult.target_institution
    return ReportContent(
        institution=where.name_zh, report_id=f"LC-{consult.id:06d}",
        patient_name=display_name(study.patient.name) or study.patient.name,
        patient_sex=study.patient.sex, patient_age=age_at(study.patient.birth_date, study.study_date),
        patient_id=shown_patient_id(study.patient.patient_id), modality=(series.modality if series else "") or template.modality,
        body_part=body_part_zh((series.body_part if series else "") or template.body_part),
        exam_date=chinese_date(study.study_date),
        accession_number=study.accession_number, clinical_question=consult.clinical_question,
        findings=content["findings"], impression=content["impression"], recommendation=content["recommendation"],
        measurements=templates.measurement_rows(report.template, content.get("fields", {})),
        risk_colour=consult.risk_colour or "", department=where.department or "医学影像科",
        institution_address=where.address, reported_at=max(signed) if signed else utcnow(),
        visit_number=_visit_number(session, study),
        reader_name=consult.reader.display_name if consult.reader else "",
        read_at=None, reviewer_name=consult.reviewer.display_name if consult.reviewer else "", reviewed_at=None,
        verify_url=verify_url, requesting_institution=consult.requesting_institution.name_zh, **extra)


# Chinese first for the refusals a signer meets (the English reason follows).
SIGNING_REFUSALS_ZH = {"wrong signing password": "签名密码错误", "a non-empty password is required": "请输入签名密码"}


def _sign(session: Session, user: User, password: str, pdf: bytes, field: str, reason: str,
          content: dict, at: datetime | None = None) -> tuple[bytes, dict]:
    credential, authority = _credential(session, user)
    material = signing.SignerMaterial(credential.cert_pem, credential.key_pem_encrypted)
    try:
        signed = signing.sign_pdf(pdf, material, password, authority.cert_pem, field_name=field, reason=reason)
        cms = signing.sign_data(signing.canonical_json(content), material, password)
    except signing.SigningError as exc:
        audit.append(session, principal=None, actor=user.username, action="report.sign", outcome="denied",
                     detail={"reason": str(exc)})
        raise SignatureRefused(f"{SIGNING_REFUSALS_ZH.get(str(exc), '签名失败')} / {exc}") from None
    return signed, {"user": user.username, "name": user.display_name, "title": user.title or "", "field": field,
                    "signed_at": (at or utcnow()).isoformat(), "cms_b64": base64.b64encode(cms).decode()}


def _store_version(session: Session, store, report: Report, kind: str, content: dict, pdf: bytes,
                   signatures: list[dict], public_id: str) -> ReportVersion:
    number = len(report.versions) + 1
    key = keys.report_version(report.consult_id, number, kind)
    store.put(key, pdf, content_type="application/pdf")
    version = ReportVersion(report_id=report.id, number=number, kind=kind, public_id=public_id, content=content,
                            content_sha256=hashlib.sha256(signing.canonical_json(content)).hexdigest(),
                            pdf_key=key, pdf_sha256=hashlib.sha256(pdf).hexdigest(), signatures=signatures)
    session.add(version)
    session.flush()
    report.versions.append(version)
    return version


def _verify_url(base_url: str, public_id: str) -> str:
    return f"{base_url}/verify/{public_id}"


def sign_preliminary(*, session: Session, store, consult_id: int, user: User, password: str,
                     base_url: str) -> ReportVersion:
    """The reader signs the draft: a PAdES-signed PDF and a CMS signature; the senior is told."""
    consult = get(session=session, consult_id=consult_id, user=user)
    policy.require("sign", consult, user)
    report = get_report(session=session, consult=consult)
    if report is None or consult.status != "in_progress":
        raise Conflict("没有可签名的草稿 / there is no open draft to sign")
    content = templates.clean_content(report.template, report.draft)
    if not content["findings"].strip() or not content["impression"].strip():
        raise Invalid("请填写检查所见和诊断意见 / findings and impression are required")
    public_id, now = secrets.token_hex(8), utcnow()
    signers = [_signer(user, "报告医师 Reader", now),
               _signer(consult.reviewer, "审核医师 Reviewer", None, pending="待审核 Awaiting review")]
    pdf = build_report_pdf(_pdf_content(session, consult, report, content, _verify_url(base_url, public_id),
                                        status=PRELIMINARY, signers=signers))
    signed, signature = _sign(session, user, password, pdf, "reader", "初步报告 preliminary report", content, now)
    version = _store_version(session, store, report, "preliminary", content, signed, [signature], public_id)
    report.status, report.review_comment = "preliminary", ""
    transition(session, consult, user, "reported", f"第 {version.number} 版 version {version.number}")
    audit.append(session, principal=None, actor=user.username, action="report.sign", object_type="consult",
                 object_id=str(consult.id), detail={"version": version.number, "kind": "preliminary"})
    notify_consult(session, consult, {consult.reviewer_id}, kind="report.review",
                   title=f"待审核报告 Report of consult #{consult.id} awaits your review")
    return version


def return_for_revision(*, session: Session, consult_id: int, user: User, comments: str) -> Report:
    """The senior sends the preliminary back with comments; it stays on record."""
    consult = step_with_reason(session=session, consult_id=consult_id, user=user, step="return", reason=comments)
    report = get_report(session=session, consult=consult)
    report.status, report.review_comment = "draft", comments.strip()
    notify_consult(session, consult, {consult.reader_id}, kind="report.returned",
                   title=f"报告被退回修改 Report of consult #{consult.id} sent back for revision", body=comments)
    return report


def co_sign_final(*, session: Session, store, consult_id: int, user: User, password: str,
                  base_url: str) -> ReportVersion:
    """The senior signs the final report, returned to the requesting institution (审核回传).

    The final is its own document: 终审, both signers with title, institution and Beijing
    time, a QR to its own verification page. The reader's signed preliminary (same
    content) is embedded in it, so the reader's signature is verifiable from the final."""
    consult = get(session=session, consult_id=consult_id, user=user)
    policy.require("cosign", consult, user)
    if consult.status != "reported":
        raise Conflict(f"没有待审核签发的报告 / a consult that is {consult.status} has no report to co-sign")
    report = get_report(session=session, consult=consult)
    preliminary = report.versions[-1]
    pdf = store.get(preliminary.pdf_key)
    check = signing.verify_pdf(pdf, trusted_roots(session))
    if not check.ok:
        raise Conflict("初步报告验证未通过，未签发 / the preliminary report does not verify; it was not co-signed: "
                       + "; ".join(check.problems))
    public_id, now = secrets.token_hex(8), utcnow()
    read_at = datetime.fromisoformat(preliminary.signatures[0]["signed_at"])
    signers = [_signer(consult.reader, "报告医师 Reader", read_at), _signer(user, "审核医师 Reviewer", now)]
    embedded = (f"preliminary-v{preliminary.number}-signed.pdf", pdf,
                "报告医师签名的初步报告（内容与本报告相同） The reader's signed preliminary report (same content)")
    final_pdf = build_report_pdf(_pdf_content(session, consult, report, preliminary.content,
                                              _verify_url(base_url, public_id), status=FINAL, signers=signers,
                                              attachments=[embedded]))
    signed, signature = _sign(session, user, password, final_pdf, "reviewer", "审核签发 final report",
                              preliminary.content, now)
    version = _store_version(session, store, report, "final", preliminary.content, signed,
                             [*preliminary.signatures, signature], public_id)
    report.status = "final"
    _export_obstetric_sr(session, store, consult, report, version)
    transition(session, consult, user, "final", f"第 {version.number} 版 version {version.number}")
    transition(session, consult, None, "returned", "报告已回传申请机构 report delivered to the requesting institution")
    audit.append(session, principal=None, actor=user.username, action="report.sign", object_type="consult",
                 object_id=str(consult.id), detail={"version": version.number, "kind": "final"})
    recipients = users_with_roles(session, consult.requesting_institution_id, ("radiographer", "coordinator", "admin"))
    notify_consult(session, consult, recipients | {consult.requested_by_id}, kind="report.final",
                   title=f"报告已回传 Final report of consult #{consult.id}")
    return version


def sign_addendum(*, session: Session, store, consult_id: int, user: User, password: str, text: str,
                  base_url: str) -> ReportVersion:
    """A correction after the final: a new, separately signed version; the final stays as it was."""
    consult = get(session=session, consult_id=consult_id, user=user)
    policy.require("addendum", consult, user)
    if consult.status not in ("final", "returned", "acknowledged"):
        raise Conflict("终审报告签发后才能补充 / addenda follow a final report")
    if not text.strip():
        raise Invalid("补充内容为空 / the addendum is empty")
    report = get_report(session=session, consult=consult)
    final = next(v for v in reversed(report.versions) if v.kind == "final")
    content = {**final.content, "addendum": text.strip()[:20000], "amends_version": final.number}
    public_id, now = secrets.token_hex(8), utcnow()
    pdf_content = _pdf_content(session, consult, report, {**final.content, "findings": text.strip(),
                                                           "impression": "见原报告 See the final report",
                                                           "recommendation": ""},
                               _verify_url(base_url, public_id), title="补充报告  Addendum",
                               status=_addendum_status(final.number), signers=[_signer(user, "补充医师 Author", now)])
    signed, signature = _sign(session, user, password, build_report_pdf(pdf_content), "addendum",
                              "补充报告 addendum", content, now)
    version = _store_version(session, store, report, "addendum", content, signed, [signature], public_id)
    audit.append(session, principal=None, actor=user.username, action="report.sign", object_type="consult",
                 object_id=str(consult.id), detail={"version": version.number, "kind": "addendum"})
    notify_consult(session, consult, {consult.requested_by_id}, kind="report.addendum",
                   title=f"报告补充 Addendum to consult #{consult.id}")
    return version


# -- the obstetric report as structured data: a TID 5000 SR into the study ------------------


def _export_obstetric_sr(session: Session, store, consult: ConsultRequest, report: Report,
                         version: ReportVersion) -> None:
    """A final obstetric report goes into its study as a TID 5000 SR (imaging/ob_sr.py), built
    now and stored through the Ingestor once the co-signing commits (the Ingestor commits in a
    transaction of its own). One document per final version: a repeat is a no-op. A failure is
    logged and leaves the signed final as it is: the export never refuses a signature."""
    if report.template != templates.OBSTETRIC or not version.content.get("fields"):
        return
    study, _ = _exam(session, consult)
    try:
        document = ob_sr.build(session=session, study=study, values=_obstetric_values(version.content, study),
                               author=_sr_author(consult.reader), verifier=_sr_author(consult.reviewer),
                               seed=f"consult:{consult.id}:version:{version.number}")
    except Exception:  # noqa: BLE001 - whatever went wrong, the signature stands
        log.exception("consult.ob_sr.failed consult=%s version=%s step=build", consult.id, version.number)
        return
    if document is None:
        return
    engine, institution_id, consult_id = session.get_bind(), study.institution_id, consult.id

    def stored() -> None:
        try:
            result = ob_sr.store(engine=engine, store=store, document=document, institution_id=institution_id,
                                 source=f"report:{consult_id}")
            log.info("consult.ob_sr.stored consult=%s sop=%s outcome=%s", consult_id, result.sop_instance_uid,
                     result.outcome)
        except Exception:  # noqa: BLE001 - after the commit: the request has succeeded already
            log.exception("consult.ob_sr.failed consult=%s step=store", consult_id)

    after_commit(session, stored)


def _sr_author(user: User | None) -> Author | None:
    if user is None:
        return None
    return Author(name=user.display_name, login=user.username,
                  institution=user.institution.name_zh if user.institution else "")


def _obstetric_values(content: dict, study: Study) -> ob_sr.ObstetricValues:
    """The values the SR carries, worked out as the signed report printed them."""
    found = obstetrics.assess(content.get("fields", {}), study.study_date)
    dating, weight = found.dating, found.weight
    # Each GA's ±2 SD around the age it gives (TID 5008 row 6: the uncertainty of that GA).
    biometry = tuple(ob_sr.Biometric(b.key, b.mm, b.ga_days, round(obstetrics.two_sd_weeks(b.key, b.ga_days / 7) * 7))
                     for b in found.biometry)
    return ob_sr.ObstetricValues(
        biometry=biometry, lmp=dating.lmp, edd=dating.edd, edd_by_lmp=dating.edd_by_lmp,
        edd_by_ultrasound=dating.edd_by_ultrasound, stated_ga_days=dating.stated_days, ga_by_lmp_days=dating.lmp_days,
        composite_ga_days=dating.composite_days, composite_two_sd_days=dating.composite_two_sd_days,
        efw_g=weight.grams, efw_model=weight.model, efw_low_g=weight.low if weight.model else None,
        efw_high_g=weight.high if weight.model else None, efw_percentile=weight.percentile, observed=found.observed,
        comment=content.get("impression", ""))


# -- verification and reading -----------------------------------------------------------


def verify_upload(*, session: Session, pdf: bytes) -> dict:
    """What the verification page and `lancang report verify` say about a PDF."""
    roots = trusted_roots(session)
    result = signing.verify_pdf(pdf, roots)
    known = session.scalar(select(ReportVersion).where(ReportVersion.pdf_sha256 == hashlib.sha256(pdf).hexdigest()))
    signers, problems, ok = [], list(result.problems), result.ok
    if result.ok:  # a final carries the reader's signed preliminary: verify that signature too
        for name, data in signing.embedded_files(pdf).items():
            if name.startswith("preliminary-") and name.endswith("-signed.pdf"):
                inner = signing.verify_pdf(data, roots)
                signers += inner.signers
                problems += [f"{name}: {p}" for p in inner.problems]
                ok = ok and inner.ok
    signers += result.signers
    return {
        "ok": ok,
        "signers": [{"name": s.name, "institution": s.institution, "signed_at": s.signed_at.isoformat()
                     if s.signed_at else None, "intact": s.intact, "trusted": s.trusted} for s in signers],
        "problems": problems,
        "known_version": {"public_id": known.public_id, "kind": known.kind} if known else None,
    }


def version_standing(report: Report, version: ReportVersion) -> tuple[str, bool]:
    """(what this version is now, whether it is the one to rely on): current final,
    superseded, returned for revision, awaiting review, addendum to vN."""
    later = [v for v in report.versions if v.number > version.number]
    if version.kind == "addendum":
        amends = version.content.get("amends_version", "?")
        return f"对第 {amends} 版终审报告的补充 Addendum to final version {amends}", True
    if version.kind == "final":
        newer = next((v for v in later if v.kind == "final"), None)
        if newer:
            return f"已被第 {newer.number} 版取代 Superseded by version {newer.number}", False
        return "当前有效的终审报告 The current final report", True
    final = next((v for v in later if v.kind == "final"), None)
    if later and later[0].kind == "final":
        return (f"初步报告，已由上级医师审核签发为第 {final.number} 版终审报告 Preliminary; co-signed as the "
                f"final report, version {final.number}", False)
    if later:
        return (f"已退回修改，被第 {later[0].number} 版取代 Sent back for revision; superseded by version "
                f"{later[0].number}", False)
    if report.status == "draft":
        return "已退回修改 Sent back for revision", False
    return "初步报告，待上级医师审核 Preliminary, awaiting the senior's review", False


def version_by_public_id(*, session: Session, public_id: str) -> ReportVersion:
    version = session.scalar(select(ReportVersion).where(ReportVersion.public_id == public_id))
    if version is None:
        raise NotFound("未找到该报告 / no report with this verification code")
    return version


def final_for_study(session: Session, study_uid: str) -> ReportVersion | None:
    """The newest final (or addendum) of any returned consult on this study (for the patient's page)."""
    consult_ids = select(ConsultStudy.consult_id).where(ConsultStudy.study_instance_uid == study_uid)
    reports = select(Report.id).where(Report.consult_id.in_(consult_ids), Report.status == "final")
    return session.scalar(select(ReportVersion).where(ReportVersion.report_id.in_(reports),
                                                      ReportVersion.kind.in_(("final", "addendum")))
                          .order_by(ReportVersion.created_at.desc()))


@dataclass
class PatientReport:
    """What the patient's cloud-film page shows of a signed report (film/ reads it here)."""

    title: str
    findings: str
    impression: str
    signed_at: str  # Beijing time, e.g. 2026年12月3日 16:15（北京时间）
    pdf_url: str | None = None
    pdf_key: str | None = None  # the signed PDF in the object store
    recommendation: str = ""
    signers: tuple[str, ...] = ()  # "王医生 主治医师 · 澜沧县人民医院"
    status: str = ""  # 终审报告 Final report / 补充报告 Addendum


def patient_report(session: Session, study_uid: str) -> PatientReport | None:
    """The patient page's view of the newest returned final report (or addendum) of a study."""
    version = final_for_study(session, study_uid)
    if version is None:
        return None
    consult_id = session.get(Report, version.report_id).consult_id
    if session.get(ConsultRequest, consult_id).status not in ("returned", "acknowledged"):
        return None
    content = version.content
    findings = content.get("findings", "") + (f"\n补充：{content['addendum']}" if content.get("addendum") else "")
    signed = (beijing_time(datetime.fromisoformat(version.signatures[-1]["signed_at"])) + f"（{localtime.label_zh()}）"
              if version.signatures else "")
    return PatientReport(title="影像诊断报告 Diagnostic report", findings=findings,
                         impression=content.get("impression", ""), signed_at=signed, pdf_key=version.pdf_key,
                         recommendation=content.get("recommendation", ""),
                         signers=tuple(_signer_line(session, s) for s in version.signatures),
                         status=FINAL.text if version.kind == "final" else "补充报告 Addendum")


def _signer_line(session: Session, signature: dict) -> str:
    """"王医生 主治医师 · 澜沧县人民医院" for the patient page."""
    user = session.scalar(select(User).where(User.username == signature.get("user", "")))
    title = signature.get("title") or (user.title if user else "")
    institution = user.institution.name_zh if user and user.institution else ""
    return " · ".join(part for part in (f"{signature.get('name', '')} {title}".strip(), institution) if part)
