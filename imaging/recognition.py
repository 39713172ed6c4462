"""互认: recognising another institution's exam result instead of repeating it (医疗机构检查检验
结果互认管理办法, 国卫医发〔2022〕6号). A clinician who may see the study records "recognised" or
"not recognised" with a reason from the national list; decisions are rows, never edited, each
audited, and counted by performing institution and modality."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from imaging.models import RECOGNITION_REASONS, RecognitionDecision, Study
from storage import access, audit
from storage.access import Principal
from storage.errors import Invalid, NotFound, NotPermitted
from storage.models import Institution, User

DECIDER_ROLES = ("specialist", "coordinator")
REASON_TEXT_MAX = 200


def require_decider(session: Session, principal: Principal, study: Study) -> None:
    """Clinicians (specialists, coordinators) of *another* institution who may see the study."""
    if principal.kind != "user" or principal.role not in DECIDER_ROLES:
        raise NotPermitted("仅临床医师可作互认决定 / only clinicians record 互认 decisions")
    if principal.institution_id == study.institution_id:
        raise Invalid("本院检查无需互认 / 互认 is for results from another institution")
    access.require_study(session, principal, institution_id=study.institution_id,
                         study_uid=study.study_instance_uid)


def decide(*, session: Session, principal: Principal, study_uid: str, recognised: bool, reason: str = "",
           reason_text: str = "", source: str = "") -> RecognitionDecision:
    study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
    if study is None:
        raise NotFound("未找到该检查 / study not found")
    require_decider(session, principal, study)
    reason_text = (reason_text or "").strip()
    if recognised:
        reason, reason_text = "", ""
    elif reason not in RECOGNITION_REASONS:
        raise Invalid("请选择不互认的原因 / choose why the result is not recognised")
    elif reason == "other" and not reason_text:
        raise Invalid("选择“其他”时请说明原因 / describe the reason for “other”")
    if len(reason_text) > REASON_TEXT_MAX:
        raise Invalid(f"说明不超过{REASON_TEXT_MAX}字 / at most {REASON_TEXT_MAX} characters")
    decision = RecognitionDecision(
        study_pk=study.id, study_instance_uid=study_uid, performing_institution_id=study.institution_id,
        deciding_institution_id=principal.institution_id, user_id=principal.user_id,
        modality=study.modalities, recognised=recognised, reason=reason, reason_text=reason_text)
    session.add(decision)
    session.flush()
    audit.append(session, principal=principal, action="study.recognition", object_type="study", object_id=study_uid,
                 source=source, detail={"recognised": recognised, "reason": reason, "text": reason_text})
    return decision


def history(session: Session, study_uid: str) -> list[tuple[RecognitionDecision, str, str]]:
    """Every decision on a study, newest first, with the decider's name and institution."""
    rows = session.execute(select(RecognitionDecision, User.display_name, Institution.name_zh)
                           .join(User, User.id == RecognitionDecision.user_id)
                           .join(Institution, Institution.id == RecognitionDecision.deciding_institution_id)
                           .where(RecognitionDecision.study_instance_uid == study_uid)
                           .order_by(RecognitionDecision.id.desc())).all()
    return [(decision, name, institution) for decision, name, institution in rows]


@dataclass
class RecognitionStats:
    decisions: int = 0
    recognised: int = 0
    by_institution: dict = field(default_factory=dict)  # {performing institution: [recognised, total]}
    by_modality: dict = field(default_factory=dict)     # {modality: [recognised, total]}
    reasons: dict = field(default_factory=dict)         # {reason label: count}

    @property
    def rate(self) -> float | None:
        return round(100 * self.recognised / self.decisions, 1) if self.decisions else None

    @property
    def repeats_avoided(self) -> int:
        """Each recognised result is an exam the patient did not have again."""
        return self.recognised


def stats(session: Session, *, institution_ids: set[int], since) -> RecognitionStats:
    """Decisions made by, or about results of, these institutions since `since`."""
    rows = session.execute(select(RecognitionDecision, Institution.name_zh)
                           .join(Institution, Institution.id == RecognitionDecision.performing_institution_id)
                           .where(RecognitionDecision.decided_at >= since,
                                  RecognitionDecision.deciding_institution_id.in_(institution_ids)
                                  | RecognitionDecision.performing_institution_id.in_(institution_ids))).all()
    found = RecognitionStats()
    reasons: Counter = Counter()
    for decision, performer in rows:
        found.decisions += 1
        found.recognised += decision.recognised
        for table, key in ((found.by_institution, performer),
                           (found.by_modality, (decision.modality or "?").replace("\\", "/"))):
            counts = table.setdefault(key, [0, 0])
            counts[0] += decision.recognised
            counts[1] += 1
        if not decision.recognised:
            reasons[RECOGNITION_REASONS.get(decision.reason, decision.reason)] += 1
    found.reasons = dict(reasons.most_common())
    return found
