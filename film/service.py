"""Cloud film (云胶片): a link and a PIN that let a patient see one study on a phone.

Secrets and what is stored:

* The link token is HMAC-SHA256(server secret, 128 random bits kept as ``token_nonce``),
  base64url: random to anyone without the server secret. The database keeps only its
  SHA-256 (``token_hash``), which is what a request is looked up by. Deriving it from the
  nonce lets the film-sheet worker print the QR code again without the token ever passing
  through the broker or sitting in the database; a stolen database alone opens nothing.
* The 6-digit PIN is shown once (to the radiographer, who gives it to the patient) and
  kept as HMAC-SHA256(server secret, per-share salt + PIN), compared with
  hmac.compare_digest. Five wrong PINs lock the link for good; the hospital makes a new one.
* After the PIN the browser gets a short-lived cookie scoped to the link's path whose value
  is an HMAC over the share, the token hash and the expiry: nothing to look up, and
  revocation, expiry and locking are still checked on every request because every request
  loads the share by its token.

Every open, unlock (right or wrong), view and download is audited with the address and
the user agent. Services here never commit; the caller's unit of work does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from consult.reports import PatientReport, patient_report
from film import policy
from film.models import Share, ShareStudy
from imaging import keyimages
from imaging.dataset import display_name
from imaging.models import Instance, Patient, Series, Study
from storage import audit, jobs, localtime
from storage.access import Principal
from storage.errors import DomainError, Gone, Invalid, Locked, NotFound
from storage.models import Institution
from storage.types import utcnow

DEFAULT_DAYS = 30
MAX_DAYS = 365
MAX_FAILED_PINS = 5
UNLOCK_TTL_S = 30 * 60            # the unlocked cookie; the page re-asks for the PIN after it
FILM_TASK = "imaging.make_film_sheet"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{32,64}$")
_PIN = re.compile(r"^\d{6}$")

MODALITY_ZH = {
    "CT": "CT 计算机断层扫描", "MR": "磁共振 MR", "CR": "X线摄影", "DX": "X线摄影", "DR": "X线摄影",
    "US": "超声", "MG": "乳腺X线摄影", "NM": "核医学", "PT": "PET", "XA": "血管造影",
    "RF": "X线透视", "ES": "内镜", "OT": "其他", "SC": "图像", "IO": "口腔X线", "PX": "全景X线",
}


# --------------------------------------------------------------------------- secrets


def link_token(secret_key: str, nonce: str) -> str:
    """The link token for a share's nonce (43 base64url characters, 256 bits of HMAC)."""
    digest = hmac.new(secret_key.encode(), b"lancang/film-link/" + nonce.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _pin_digest(secret_key: str, salt: str, pin: str) -> str:
    return hmac.new(secret_key.encode(), f"lancang/film-pin/{salt}/{pin}".encode(), hashlib.sha256).hexdigest()


def share_url(public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}/f/{token}"


def token_from(text: str) -> str | None:
    """The token in a link (".../f/TOKEN[/...]") or a bare token; None if it has none."""
    text = text.strip()
    match = re.search(r"/f/([A-Za-z0-9_-]+)", text)
    candidate = match.group(1) if match else text
    return candidate if _TOKEN.match(candidate) else None


# --------------------------------------------------------------------------- radiographer side


@dataclass
class CreatedShare:
    """A new share and its secrets: the only moment the PIN and the link exist in clear."""

    share: Share
    token: str
    pin: str
    url: str
    together: tuple[str, ...] = ()

    def as_json(self) -> dict:
        return {"id": self.share.id, "url": self.url, "pin": self.pin,
                "expires_at": self.share.expires_at.isoformat(timespec="seconds"),
                "study_instance_uid": self.share.study_instance_uid, "together": list(self.together)}


MAX_TOGETHER = 10


def create_share(*, session: Session, principal: Principal, study_uid: str, secret_key: str,
                 public_url: str, days: float = DEFAULT_DAYS, source: str = "",
                 together: list[str] | tuple[str, ...] = ()) -> CreatedShare:
    """Creates a link + PIN for one study (and, `together`, the same patient's other studies the
    principal may share), audits it, and asks a worker for the film sheet of the first."""
    if not (0 < days <= MAX_DAYS):
        raise Invalid(f"有效期须为1至{MAX_DAYS}天 / days must be more than 0 and at most {MAX_DAYS}")
    study = policy.require_sharer(session, principal, study_uid)
    others = _together(session, principal, study, together)
    nonce = secrets.token_hex(16)
    token = link_token(secret_key, nonce)
    pin = f"{secrets.randbelow(10**6):06d}"
    salt = secrets.token_hex(16)
    now = utcnow()
    share = Share(study_pk=study.id, study_instance_uid=study.study_instance_uid,
                  institution_id=study.institution_id, token_hash=hash_token(token), token_nonce=nonce,
                  pin_salt=salt, pin_hash=_pin_digest(secret_key, salt, pin),
                  created_by=principal.name[:128], created_at=now, expires_at=now + timedelta(days=days),
                  failed_attempts=0, opened_count=0, film_state="pending")
    session.add(share)
    session.flush()
    session.add_all(ShareStudy(share_id=share.id, study_pk=other.id, study_instance_uid=other.study_instance_uid)
                    for other in others)
    audit.append(session, principal=principal, action="film.share.create", object_type="share",
                 object_id=str(share.id), source=source,
                 detail={"study": study.study_instance_uid, "expires_at": share.expires_at.isoformat(),
                         "together": [other.study_instance_uid for other in others]})
    jobs.send_after_commit(session, FILM_TASK, share.id, queue="render")
    return CreatedShare(share, token, pin, share_url(public_url, token),
                        tuple(other.study_instance_uid for other in others))


def same_patient(session: Session, one: Study, other: Study) -> bool:
    """The same patient record, or records a trusted identifier (or an admin) joined."""
    if one.patient_pk == other.patient_pk:
        return True
    people = {session.get(Patient, pk).person_id for pk in (one.patient_pk, other.patient_pk)}
    return len(people) == 1 and None not in people


def _together(session: Session, principal: Principal, study: Study, uids) -> list[Study]:
    """The other studies to share with `study`: each one the principal may share, of the same
    patient; refused whole otherwise (a link never mixes two patients)."""
    wanted = [uid for uid in dict.fromkeys(uids) if uid and uid != study.study_instance_uid]
    if len(wanted) > MAX_TOGETHER:
        raise Invalid(f"一次最多共享{MAX_TOGETHER + 1}个检查 / at most {MAX_TOGETHER + 1} studies per link")
    others = [policy.require_sharer(session, principal, uid) for uid in wanted]
    for other in others:
        if not same_patient(session, study, other):
            raise Invalid("只能共享同一患者的检查 / only the same patient's studies are shared together")
    return others


def shareable_with(session: Session, principal: Principal, study: Study) -> list[Study]:
    """The patient's other studies this principal could share together with `study`, newest first."""
    records = [study.patient_pk]
    person = session.get(Patient, study.patient_pk).person_id
    if person is not None:
        records = list(session.scalars(select(Patient.id).where(Patient.person_id == person)))
    found = []
    for other in session.scalars(select(Study).where(Study.patient_pk.in_(records), Study.id != study.id)
                                 .order_by(Study.study_date.desc(), Study.id.desc()).limit(30)):
        try:
            found.append(policy.require_sharer(session, principal, other.study_instance_uid))
        except DomainError:
            continue
    return found


def shared_studies(session: Session, share: Share) -> list[tuple[int, str]]:
    """(study pk, uid) of every study the link shows: the first one, then those shared with it."""
    extra = session.execute(select(ShareStudy.study_pk, ShareStudy.study_instance_uid)
                            .where(ShareStudy.share_id == share.id).order_by(ShareStudy.id)).all()
    return [(share.study_pk, share.study_instance_uid), *((pk, uid) for pk, uid in extra)]


def list_shares(*, session: Session, principal: Principal, study_uid: str) -> list[Share]:
    """The study's shares, newest first (for the radiographer)."""
    study = policy.require_sharer(session, principal, study_uid)
    return list(session.scalars(select(Share).where(Share.study_pk == study.id)
                                .order_by(Share.created_at.desc(), Share.id.desc())))


def get_share_for(*, session: Session, principal: Principal, share_id: int | None = None,
                  token: str | None = None) -> Share:
    """A share by id or token, if the principal may manage its study."""
    if token is not None:
        share = session.scalar(select(Share).where(Share.token_hash == hash_token(token)))
    else:
        share = session.get(Share, share_id) if share_id is not None else None
    if share is None:
        raise NotFound("未找到该云胶片链接 / share not found")
    try:
        policy.require_sharer(session, principal, share.study_instance_uid)
    except NotFound:
        raise NotFound("未找到该云胶片链接 / share not found") from None
    return share


def revoke_share(*, session: Session, principal: Principal, share_id: int | None = None,
                 token: str | None = None, source: str = "") -> Share:
    """Revokes a link at once (idempotent) and audits it."""
    share = get_share_for(session=session, principal=principal, share_id=share_id, token=token)
    if share.revoked_at is None:
        share.revoked_at = utcnow()
        share.revoked_by = principal.name[:128]
        audit.append(session, principal=principal, action="film.share.revoke", object_type="share",
                     object_id=str(share.id), source=source, detail={"study": share.study_instance_uid})
    return share


def share_state(share: Share, now: datetime | None = None) -> str:
    """active | revoked | expired | locked."""
    now = now or utcnow()
    if share.revoked_at is not None:
        return "revoked"
    if share.expires_at <= now:
        return "expired"
    if share.locked_until is not None and share.locked_until > now:
        return "locked"
    return "active"


# Each lockout is longer than the last: anyone holding the link can trigger one with five
# guesses, so none is permanent (the patient can always come back), while guessing a
# six-digit PIN at 5 tries per growing pause takes years.
LOCKOUT_MINUTES = (1, 5, 15, 60, 240, 1440)


def _lock(share: Share, now: datetime) -> None:
    minutes = LOCKOUT_MINUTES[min(share.lockouts, len(LOCKOUT_MINUTES) - 1)]
    share.lockouts += 1
    share.failed_attempts = 0
    share.locked_at = now
    share.locked_until = now + timedelta(minutes=minutes)


def locked_message(share: Share) -> str:
    until = share.locked_until.astimezone(localtime.zone()).strftime("%H:%M") if share.locked_until else ""
    return (f"提取码错误次数过多，请于{localtime.label_zh()} {until} 后再试；如忘记提取码，请联系检查医院重新设置。"
            f" Too many wrong PINs: try again after {until} (Beijing time), or ask the hospital for a new PIN.")


def unlock_by_staff(*, session: Session, principal: Principal, share_id: int, source: str = "") -> Share:
    """Lift a lockout now (the patient phoned the hospital); audited."""
    share = get_share_for(session=session, principal=principal, share_id=share_id)
    share.locked_until, share.failed_attempts = None, 0
    audit.append(session, principal=principal, action="film.share.unlock", object_type="share",
                 object_id=str(share.id), source=source, detail={"study": share.study_instance_uid})
    return share


def new_pin(*, session: Session, principal: Principal, share_id: int, secret_key: str, source: str = "") -> str:
    """A new PIN for the same link (no reprint of the QR): the old PIN and every browser
    unlocked with it stop working; the lockout is lifted. Audited; the PIN is shown once."""
    share = get_share_for(session=session, principal=principal, share_id=share_id)
    if share_state(share) in ("revoked", "expired"):
        raise Gone("该链接已失效，请新建 / this link is no longer active; create a new one")
    pin = f"{secrets.randbelow(10**6):06d}"
    share.pin_salt = secrets.token_hex(16)
    share.pin_hash = _pin_digest(secret_key, share.pin_salt, pin)
    share.locked_until, share.failed_attempts = None, 0
    audit.append(session, principal=principal, action="film.share.new_pin", object_type="share",
                 object_id=str(share.id), source=source, detail={"study": share.study_instance_uid})
    return pin


# --------------------------------------------------------------------------- patient side


def patient_principal(share: Share) -> Principal:
    return Principal(kind="patient", name=f"film-share:{share.id}", study_uid=share.study_instance_uid)


def find_share(session: Session, token: str, *, for_update: bool = False) -> Share:
    """The share a link token names, whatever its state; NotFound otherwise."""
    if not isinstance(token, str) or not _TOKEN.match(token):
        raise NotFound("链接不存在 / no such link")
    statement = select(Share).where(Share.token_hash == hash_token(token))
    if for_update:
        statement = statement.with_for_update()
    share = session.scalar(statement)
    if share is None:
        raise NotFound("链接不存在 / no such link")
    return share


def require_usable(share: Share) -> None:
    """Raise Gone (revoked or expired) or Locked (too many wrong PINs)."""
    state = share_state(share)
    if state == "revoked":
        raise Gone("该链接已被医院撤销 / this link was withdrawn by the hospital")
    if state == "expired":
        raise Gone("该链接已过期 / this link has expired")
    if state == "locked":
        raise Locked(locked_message(share))


def record_access(session: Session, share: Share, action: str, *, source: str, user_agent: str,
                  outcome: str = "ok", **detail) -> None:
    """Audit one patient-side event in the caller's transaction."""
    audit.append(session, principal=patient_principal(share), action=action, outcome=outcome,
                 object_type="share", object_id=str(share.id), source=source,
                 detail={"user_agent": (user_agent or "")[:300], "study": share.study_instance_uid, **detail})


def record_image_read(db, share: Share, action: str, *, instance_uid: str, source: str) -> None:
    """Audit one patient image read in its own (relaxed) transaction: the image routes hold
    only a read session, and a phone paging a series makes many small requests."""
    audit.record_read(db, principal=patient_principal(share), action=action, object_type="instance",
                      object_id=instance_uid, source=source, detail={"share": share.id,
                                                                     "study": share.study_instance_uid})


def open_share(*, session: Session, token: str, source: str, user_agent: str) -> Share:
    """The PIN page was opened: counts and audits it; raises for a dead link."""
    share = find_share(session, token, for_update=True)
    require_usable(share)
    share.opened_count += 1
    share.last_opened_at = utcnow()
    record_access(session, share, "film.open", source=source, user_agent=user_agent)
    return share


@dataclass
class UnlockResult:
    ok: bool
    share: Share
    remaining: int          # wrong PINs left before the link locks
    locked: bool = False


def unlock(*, session: Session, token: str, pin: str, secret_key: str, source: str,
           user_agent: str) -> UnlockResult:
    """Checks a PIN in constant time; the fifth wrong one locks the link. Audited either way.

    Does not raise for a wrong PIN: the caller must commit the failure count.
    """
    share = find_share(session, token, for_update=True)
    require_usable(share)
    candidate = (pin or "").strip()
    # Compare even malformed input, so the answer takes the same time either way.
    expected = share.pin_hash
    given = _pin_digest(secret_key, share.pin_salt, candidate if _PIN.match(candidate) else "x")
    if hmac.compare_digest(expected, given) and _PIN.match(candidate):
        share.failed_attempts = 0
        record_access(session, share, "film.unlock", source=source, user_agent=user_agent)
        return UnlockResult(True, share, MAX_FAILED_PINS)
    share.failed_attempts += 1
    locked = share.failed_attempts >= MAX_FAILED_PINS
    if locked:
        _lock(share, utcnow())
    record_access(session, share, "film.unlock", source=source, user_agent=user_agent,
                  outcome="denied", failed_attempts=share.failed_attempts, locked=locked)
    return UnlockResult(False, share, max(0, MAX_FAILED_PINS - share.failed_attempts), locked)


def unlock_cookie(secret_key: str, share: Share, now: float | None = None) -> tuple[str, int]:
    """(cookie value, max-age): proof that this browser entered this link's PIN recently."""
    expires = int((now or time.time()) + UNLOCK_TTL_S)
    return f"{expires}.{_cookie_mac(secret_key, share, expires)}", UNLOCK_TTL_S


def _cookie_mac(secret_key: str, share: Share, expires: int) -> str:
    # The link's secret hash and the PIN's salt are in the MAC: the cookie cannot be made
    # from guessable ids, and setting a new PIN ends every unlocked browser.
    message = f"lancang/film-unlocked/{share.id}/{share.token_hash}/{share.pin_salt}/{expires}".encode()
    return hmac.new(secret_key.encode(), message, hashlib.sha256).hexdigest()


def cookie_valid(secret_key: str, share: Share, value: str | None) -> bool:
    if not value or "." not in value:
        return False
    expires_text, _, mac = value.partition(".")
    if not expires_text.isdigit() or int(expires_text) < time.time():
        return False
    return hmac.compare_digest(_cookie_mac(secret_key, share, int(expires_text)), mac)


# --------------------------------------------------------------------------- what the patient sees


@dataclass
class FilmSeries:
    series_uid: str
    label: str
    modality: str
    thumbnail_key: str | None
    items: list[tuple[int, int]] = field(default_factory=list)  # (instance id, frames)
    key: bool = False  # the reader's key images, gathered from the series below

    @property
    def images(self) -> int:
        return sum(frames for _, frames in self.items)


KEY_SERIES = "key-images"


@dataclass
class FilmStudy:
    """One study as the patient page shows it, in plain Chinese."""

    study_uid: str
    institution: str
    date: str
    exam: str
    patient_name: str
    series: list[FilmSeries]

    @property
    def images(self) -> int:
        return sum(s.images for s in self.series if not s.key)

    @property
    def groups(self) -> int:
        """Series of the exam (the key images are a selection from them, not another series)."""
        return sum(not s.key for s in self.series)


def report_for_study(session: Session, study_uid: str) -> PatientReport | None:
    """The signed, returned report of this study for the patient page, once it exists."""
    return patient_report(session, study_uid)


def chinese_date(dicom_date: str) -> str:
    """DICOM DA (YYYYMMDD) as 2026年11月1日; the raw text if it is not a date."""
    if len(dicom_date) == 8 and dicom_date.isdigit():
        return f"{int(dicom_date[:4])}年{int(dicom_date[4:6])}月{int(dicom_date[6:])}日"
    return dicom_date or "日期不详"


def exam_name(study: Study, modalities: list[str]) -> str:
    if study.description:
        return study.description
    names = [MODALITY_ZH.get(m, m) for m in modalities if m]
    return "、".join(dict.fromkeys(names)) or "影像检查"


def film_study(session: Session, share: Share, study_pk: int | None = None) -> FilmStudy:
    """One study of a share (the first unless `study_pk`), with its series and images in
    viewing order; the caller picked `study_pk` from shared_studies()."""
    study = session.get(Study, study_pk or share.study_pk)
    institution = session.get(Institution, study.institution_id)
    patient = session.get(Patient, study.patient_pk)
    series_rows = session.scalars(select(Series).where(Series.study_pk == study.id)
                                  .order_by(Series.series_number.asc().nullslast(), Series.id)).all()
    instances = session.execute(
        select(Instance.series_pk, Instance.id, Instance.instance_number, Instance.sop_instance_uid,
               Instance.number_of_frames, Instance.rows)
        .join(Series, Series.id == Instance.series_pk).where(Series.study_pk == study.id)).all()
    by_series: dict[int, list] = {}
    for row in instances:
        by_series.setdefault(row.series_pk, []).append(row)
    result = []
    for series in series_rows:
        rows = [r for r in by_series.get(series.id, []) if r.rows]  # no pixels, nothing to show
        if not rows:
            continue
        ordered = sorted(rows, key=lambda r: (r.instance_number is None, r.instance_number or 0,
                                              r.sop_instance_uid))  # as viewing_order
        modality_name = MODALITY_ZH.get(series.modality, series.modality or "图像")
        label = series.description or modality_name
        if series.series_number is not None:
            label = f"{label}（序列 {series.series_number}）"
        result.append(FilmSeries(series.series_instance_uid, label, series.modality, series.thumbnail_key,
                                 [(r.id, max(1, r.number_of_frames or 1)) for r in ordered]))
    modalities = keyimages.image_modalities("\\".join(s.modality for s in series_rows))
    return FilmStudy(
        study_uid=study.study_instance_uid,
        institution=(institution.name_zh if institution else "") or study.institution_name or "检查医院",
        date=chinese_date(study.study_date), exam=exam_name(study, modalities),
        patient_name=display_name(patient.name) if patient else "", series=_key_series(session, study.id) + result)


def _key_series(session: Session, study_pk: int) -> list[FilmSeries]:
    """The reader's key images (the study's current Key Object Selection) as a first "series",
    so the patient's page opens on them. A multi-frame key image shows all its frames: the
    phone page pages through instances and their frames."""
    items = list(dict.fromkeys((key.instance_id, key.frames) for key in keyimages.key_images(session, study_pk)))
    return [FilmSeries(KEY_SERIES, "关键图像 Key images", "关键", None, items, key=True)] if items else []


def instance_in_share(session: Session, share: Share, instance_id: int) -> Instance:
    """An instance of a study the link shares, or NotFound (never another study's)."""
    pks = [pk for pk, _ in shared_studies(session, share)]
    instance = session.scalar(select(Instance).join(Series, Series.id == Instance.series_pk)
                              .where(Instance.id == instance_id, Series.study_pk.in_(pks)))
    if instance is None:
        raise NotFound("未找到该图像 / image not found")
    return instance


def viewing_order(instance: Instance):
    """Sort key: Instance Number, then SOP Instance UID (missing numbers last)."""
    return (instance.instance_number is None, instance.instance_number or 0, instance.sop_instance_uid)


def study_instances(session: Session, share: Share, study_pk: int | None = None) -> list[tuple[Series, Instance]]:
    """Every instance of one shared study, series by series in viewing order (for download)."""
    rows = session.execute(select(Series, Instance).join(Instance, Instance.series_pk == Series.id)
                           .where(Series.study_pk == (study_pk or share.study_pk))).all()
    return sorted(rows, key=lambda row: ((row[0].series_number is None, row[0].series_number or 0, row[0].id),
                                         viewing_order(row[1])))
