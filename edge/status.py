"""What the edge's status page says: the line to the region, the queue in sending order with
bytes and an ETA per study, what was sent lately, and every error in words a radiographer
understands (Chinese first), never a stack trace. Times are local (Beijing time)."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from edge.models import EdgeLink, OutboxInstance, OutboxStudy
from edge.outbox import PRIORITY
from edge.windows import PAUSED, cap_at, parse_windows, paused_until
from edge.worklist_models import WorklistEntry
from imaging import summary
from storage import localtime
from storage.settings import Settings

ASSUMED_RATIO = 0.6  # wire bytes per stored byte before anything was measured (gzip of CT, US)
STALE = timedelta(minutes=2)  # no heartbeat and no retry for this long: the forwarder is not running
RECENT = 20

WORDS = Path(__file__).with_name("status_words.csv")  # an error kind in words, Chinese and English


def _load_words() -> dict[str, dict[str, tuple[str, str]]]:
    """{"line": words of a line error, "study": words of one study's error}, each {kind: (zh, en)}.
    utf-8-sig: a spreadsheet that saves the table back writes a BOM first."""
    tables: dict[str, dict[str, tuple[str, str]]] = {"line": {}, "study": {}}
    with WORDS.open(encoding="utf-8-sig", newline="") as rows:
        for row in csv.DictReader(rows):
            tables[row["about"]][row["kind"]] = (row["zh"], row["en"])
    return tables


_WORDS = _load_words()
LINE_WORDS, STUDY_WORDS = _WORDS["line"], _WORDS["study"]


def _clock(moment: datetime | None, zone) -> str:
    return moment.astimezone(zone).strftime("%H:%M") if moment else "—"


def kind_words(kind: str) -> str:
    """An error kind an edge reported, in words (for the region's console)."""
    zh, en = LINE_WORDS.get(kind) or STUDY_WORDS.get(kind) or (kind, "")
    return f"{zh} / {en}" if en else zh


def error_words(kind: str, attempts: int, next_at: datetime | None, zone, *, line: bool) -> str:
    """"与县医院的网络中断，已自动重试（第3次，下次 14:05）" and its English."""
    table = LINE_WORDS if line else STUDY_WORDS
    zh, en = table.get(kind) or STUDY_WORDS.get(kind) or LINE_WORDS.get(kind) or (
        "传输出错", "the transfer failed")
    if next_at is None:
        return f"{zh} / {en}"
    return (f"{zh}，已自动重试（第{attempts}次，下次 {_clock(next_at, zone)}） / "
            f"{en}; retrying automatically (attempt {attempts}, next at {_clock(next_at, zone)})")


def duration_words(seconds: float) -> str:
    """约 3 分钟 / about 3 min (and hours past an hour)."""
    minutes = max(1, round(seconds / 60))
    if minutes < 60:
        return f"约 {minutes} 分钟 / about {minutes} min"
    return f"约 {minutes // 60} 小时 {minutes % 60} 分 / about {minutes // 60} h {minutes % 60} min"


@dataclass
class StudyLine:
    uid: str
    title: str        # patient, sex and age; exam; date (imaging/summary.py)
    urgent: bool
    instances: int
    done: int
    size: int
    confirmed: int
    eta: str = ""
    error: str = ""
    sent_at: datetime | None = None
    purge_on: datetime | None = None

    @property
    def fraction(self) -> float:
        return self.confirmed / self.size if self.size else 0.0


@dataclass
class EdgeStatus:
    region: str
    line: str          # up | down | paused | never | stopped
    line_words: str
    cap_words: str
    last_contact_at: datetime | None
    rate_bps: float
    queue: list[StudyLine] = field(default_factory=list)
    sent: list[StudyLine] = field(default_factory=list)

    @property
    def remaining(self) -> int:
        return sum(s.size - s.confirmed for s in self.queue)


def edge_status(*, session: Session, settings: Settings, now: datetime) -> EdgeStatus:
    """The whole page's data, from the edge's own database."""
    zone = localtime.zone(settings.timezone)
    link = session.get(EdgeLink, 1) or EdgeLink(failures=0, error_kind="", rate_bps=0.0, wire_ratio=0.0)
    status = _line(link, settings, now, zone)
    queue = _queue_rows(session)
    titles = summary.summarize(session, [row.study_instance_uid for row, *_ in queue])
    ratio, rate = link.wire_ratio or ASSUMED_RATIO, _rate(link, settings, now)
    ahead = 0.0
    for study, urgent, done, confirmed in queue:
        line = StudyLine(study.study_instance_uid, _title(titles.get(study.study_instance_uid)), urgent,
                         study.instances, int(done or 0), study.size, int(confirmed or 0))
        ahead += (line.size - line.confirmed) * ratio
        line.eta = _eta(ahead, rate, status.line)
        if study.error_kind:
            line.error = error_words(study.error_kind, study.attempts, study.next_attempt_at, zone, line=False)
        status.queue.append(line)
    status.sent = _recent(session, settings)
    return status


def _line(link: EdgeLink, settings: Settings, now: datetime, zone) -> EdgeStatus:
    windows = parse_windows(settings.edge_windows)
    local = now.astimezone(zone)
    cap = cap_at(windows, settings.edge_rate_limit_kbps, local)
    cap_words = "不限速 / no cap" if cap is None else (
        "暂停 / paused" if cap == PAUSED else f"限速 {cap * 8 / 1000:.0f} kbit/s / capped at {cap * 8 / 1000:.0f} kbit/s")
    heard = max(filter(None, (link.last_contact_at, link.error_at)), default=None)
    region = urlsplit(settings.edge_region_url).hostname or "—"
    status = EdgeStatus(region, "up", "", cap_words, link.last_contact_at, link.rate_bps)
    if cap == PAUSED:
        until = paused_until(windows, local)
        status.line, status.line_words = "paused", f"按设定时段暂停传输，{until} 后继续 / paused by the schedule until {until}"
    elif heard is None:
        status.line, status.line_words = "never", "尚未连接县医院 / not yet in contact with the region"
    elif now - heard > STALE and (link.next_attempt_at is None or now - link.next_attempt_at > STALE):
        status.line, status.line_words = "stopped", ("传输程序未在运行，请重启本机云PACS或联系信息科 / "
                                                     "the forwarder is not running: restart the edge")
    elif link.error_kind:
        status.line = "down"
        status.line_words = error_words(link.error_kind, link.failures, link.next_attempt_at, zone, line=True)
    else:
        status.line_words = (f"已连接县医院（最后联系 {_clock(link.last_contact_at, zone)}） / "
                             f"in contact with the region (last at {_clock(link.last_contact_at, zone)})")
    return status


def _rate(link: EdgeLink, settings: Settings, now: datetime) -> float | None:
    """Bytes per second to expect: measured lately, else the cap, else unknown."""
    if link.rate_bps and link.measured_at and now - link.measured_at < timedelta(minutes=30):
        return link.rate_bps
    zone = localtime.zone(settings.timezone)
    cap = cap_at(parse_windows(settings.edge_windows), settings.edge_rate_limit_kbps, now.astimezone(zone))
    return cap or None


def _eta(wire_bytes: float, rate: float | None, line: str) -> str:
    if not rate:
        return "—"
    words = duration_words(wire_bytes / rate)
    return words if line == "up" else f"网络恢复后{words}"


def _title(found) -> str:
    if found is None:
        return "—"
    who = " ".join(p for p in (found.patient_name, found.sex, found.age) if p)
    what = " · ".join(p for p in (found.modality, found.description, found.study_date) if p)
    return f"{who} | {what}"


def _queue_rows(session: Session) -> list:
    progress = (select(OutboxInstance.study_id, func.sum(case((OutboxInstance.done, 1), else_=0)).label("done"),
                       func.sum(OutboxInstance.confirmed).label("confirmed"))
                .group_by(OutboxInstance.study_id).subquery())
    query = (select(OutboxStudy, PRIORITY == 0, progress.c.done, progress.c.confirmed)
             .outerjoin(progress, progress.c.study_id == OutboxStudy.id)
             .outerjoin(WorklistEntry, WorklistEntry.study_instance_uid == OutboxStudy.study_instance_uid)
             .where(OutboxStudy.state == "queued").order_by(PRIORITY, OutboxStudy.queued_at, OutboxStudy.id))
    return list(session.execute(query).all())


def _recent(session: Session, settings: Settings) -> list[StudyLine]:
    rows = list(session.scalars(select(OutboxStudy).where(OutboxStudy.state.in_(("sent", "purged")))
                                .order_by(OutboxStudy.sent_at.desc()).limit(RECENT)))
    titles = summary.summarize(session, [row.study_instance_uid for row in rows])
    return [StudyLine(row.study_instance_uid, _title(titles.get(row.study_instance_uid)), False, row.instances,
                      row.instances, row.size, row.size, sent_at=row.sent_at,
                      purge_on=row.purged_at or (row.sent_at + timedelta(days=settings.edge_retention_days)))
            for row in rows]
