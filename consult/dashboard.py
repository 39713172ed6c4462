"""Coordinator dashboard: volumes per institution per week, turnaround, overdue, queue;
charts rendered on the server as small SVG (no chart library to ship or keep current)."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from datetime import timedelta
from html import escape

from sqlalchemy import select
from sqlalchemy.orm import Session

from consult.models import PRIORITIES, RISK_COLOURS, ConsultRequest
from consult.scheduling import LOCAL
from consult.service import OPEN, is_overdue, urgency_key
from storage.errors import Invalid, NotPermitted

VIEWER_ROLES = ("coordinator", "admin")
MAX_WEEKS = 52


def require_viewer(user, weeks: int) -> None:
    """One rule for the dashboard page and its API: coordinators and admins, 1-52 weeks."""
    if user.role not in VIEWER_ROLES:
        raise NotPermitted("the dashboard is for coordinators and admins / 仅协调员和管理员可见")
    if not 1 <= weeks <= MAX_WEEKS:
        raise Invalid(f"weeks must be 1-{MAX_WEEKS} / 周数须为1至{MAX_WEEKS}")
from storage.types import utcnow

COLOURS = {"green": "#2e7d32", "yellow": "#f9a825", "orange": "#ef6c00", "red": "#c62828", "purple": "#6a1b9a",
           "none": "#607d8b", "routine": "#0b6e8a", "urgent": "#ef6c00", "critical": "#c62828"}


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def stats(*, session: Session, institution_id: int, weeks: int = 8) -> dict:
    """Everything the board shows, for consults sent to or from the institution."""
    since = utcnow() - timedelta(weeks=weeks)
    consults = session.scalars(select(ConsultRequest).where(
        (ConsultRequest.target_institution_id == institution_id) |
        (ConsultRequest.requesting_institution_id == institution_id))).all()
    recent = [c for c in consults if c.created_at >= since]
    volumes: dict[str, Counter] = defaultdict(Counter)
    for consult in recent:
        year, week, _ = consult.created_at.astimezone(LOCAL).isocalendar()
        volumes[f"{year}-W{week:02d}"][consult.requesting_institution.code] += 1
    hours = [(c.final_at - c.created_at).total_seconds() / 3600 for c in recent if c.final_at]
    open_items = sorted((c for c in consults if c.status in OPEN), key=urgency_key)
    return {
        "volumes": {week: dict(counts) for week, counts in sorted(volumes.items())},
        "turnaround_hours": {"count": len(hours),
                             "median": round(statistics.median(hours), 2) if hours else None,
                             "p90": round(_percentile(hours, 0.9), 2) if hours else None},
        "overdue": [{"id": c.id, "priority": c.priority, "colour": c.risk_colour, "status": c.status,
                     "due_at": c.due_at.isoformat(), "from": c.requesting_institution.code}
                    for c in open_items if is_overdue(c)],
        "queue_by_priority": {p: sum(1 for c in open_items if c.priority == p) for p in PRIORITIES},
        "queue_by_colour": {k: sum(1 for c in open_items if (c.risk_colour or "none") == k)
                            for k in (*RISK_COLOURS, "none")},
    }


def bar_chart(title: str, data: dict[str, float], *, width: int = 420, bar_height: int = 22) -> str:
    """A horizontal bar chart as inline SVG (accessible: a title and text labels)."""
    peak = max(data.values(), default=0) or 1
    height = 28 + bar_height * max(1, len(data))
    rows = []
    for i, (label, value) in enumerate(data.items()):
        y = 24 + i * bar_height
        length = int((width - 170) * value / peak)
        colour = COLOURS.get(label, "#0b6e8a")
        rows.append(f'<text x="0" y="{y + 15}" font-size="13">{escape(str(label))}</text>'
                    f'<rect x="110" y="{y + 3}" width="{max(length, 1)}" height="{bar_height - 8}" fill="{colour}"/>'
                    f'<text x="{116 + length}" y="{y + 15}" font-size="13">{value:g}</text>')
    return (f'<svg role="img" aria-label="{escape(title)}" viewBox="0 0 {width} {height}" width="100%" '
            f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
            f'<text x="0" y="14" font-size="14" font-weight="bold">{escape(title)}</text>{"".join(rows)}</svg>')


def stacked_weeks(title: str, volumes: dict[str, dict[str, int]], *, width: int = 520) -> str:
    """Weekly volumes per institution as stacked columns."""
    weeks = list(volumes)
    institutions = sorted({code for counts in volumes.values() for code in counts})
    palette = ["#0b6e8a", "#ef6c00", "#2e7d32", "#6a1b9a", "#c62828", "#f9a825", "#607d8b"]
    peak = max((sum(c.values()) for c in volumes.values()), default=0) or 1
    chart_height, column = 160, max(18, (width - 40) // max(1, len(weeks)) - 6)
    parts = []
    for i, week in enumerate(weeks):
        x, y = 30 + i * (column + 6), 20 + chart_height
        for j, code in enumerate(institutions):
            value = volumes[week].get(code, 0)
            h = int(chart_height * value / peak)
            y -= h
            if h:
                parts.append(f'<rect x="{x}" y="{y}" width="{column}" height="{h}" fill="{palette[j % len(palette)]}">'
                             f'<title>{escape(week)} {escape(code)}: {value}</title></rect>')
        parts.append(f'<text x="{x}" y="{chart_height + 34}" font-size="10">{escape(week[-3:])}</text>')
    legend = "".join(f'<rect x="{30 + k * 90}" y="{chart_height + 44}" width="10" height="10" '
                     f'fill="{palette[k % len(palette)]}"/><text x="{44 + k * 90}" y="{chart_height + 53}" '
                     f'font-size="11">{escape(code)}</text>' for k, code in enumerate(institutions))
    height = chart_height + 62
    return (f'<svg role="img" aria-label="{escape(title)}" viewBox="0 0 {width} {height}" width="100%" '
            f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
            f'<text x="0" y="14" font-size="14" font-weight="bold">{escape(title)}</text>{"".join(parts)}{legend}</svg>')
