"""Coordinator dashboard: volumes per institution per week, turnaround, overdue, queue;
charts rendered on the server as small SVG (no chart library to ship or keep current)."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from datetime import timedelta
from html import escape

from sqlalchemy import select
from sqlalchemy.orm import Session

from consult import critical
from consult.models import PRIORITIES, RISK_COLOURS, ConsultRequest
from consult.service import is_overdue, urgency_key
from maternal.referrals import referral_counts
from consult.state import OPEN
from storage import access, localtime
from storage.errors import Invalid, NotPermitted

VIEWER_ROLES = ("coordinator", "admin")
MAX_WEEKS = 52


def require_viewer(user, weeks: int) -> None:
    """One rule for the dashboard page and its API: coordinators and admins, 1-52 weeks."""
    if user.role not in VIEWER_ROLES:
        raise NotPermitted("仅协调员和管理员可见 / the dashboard is for coordinators and admins")
    if not 1 <= weeks <= MAX_WEEKS:
        raise Invalid(f"周数须为1至{MAX_WEEKS} / weeks must be 1-{MAX_WEEKS}")
from storage.types import utcnow

COLOURS = {"green": "#2e7d32", "yellow": "#f9a825", "orange": "#ef6c00", "red": "#c62828", "purple": "#6a1b9a",
           "none": "#607d8b", "routine": "#0b6e8a", "urgent": "#ef6c00", "critical": "#c62828"}


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def stats(*, session: Session, institution_id: int, weeks: int = 8, response_minutes: float = 15.0) -> dict:
    """Everything the board shows, for consults sent to or from the institution; 危急值 told
    to it or to any institution below it."""
    since = utcnow() - timedelta(weeks=weeks)
    consults = session.scalars(select(ConsultRequest).where(
        (ConsultRequest.target_institution_id == institution_id) |
        (ConsultRequest.requesting_institution_id == institution_id))).all()
    recent = [c for c in consults if c.created_at >= since]
    volumes: dict[str, Counter] = defaultdict(Counter)
    for consult in recent:
        year, week, _ = consult.created_at.astimezone(localtime.zone()).isocalendar()
        volumes[f"{year}-W{week:02d}"][consult.requesting_institution.code] += 1
    hours = [(c.final_at - c.created_at).total_seconds() / 3600 for c in recent if c.final_at]
    open_items = sorted((c for c in consults if c.status in OPEN), key=urgency_key)
    return {
        "volumes": {week: dict(counts) for week, counts in sorted(volumes.items())},
        "turnaround_hours": {"count": len(hours),
                             "median": round(statistics.median(hours), 2) if hours else None,
                             "p90": round(_percentile(hours, 0.9), 2) if hours else None},
        "overdue": [{"id": c.id, "priority": c.priority, "colour": c.risk_colour, "status": c.status,
                     "due_at": c.due_at.isoformat(), "from": c.requesting_institution.code,
                     "due_local": c.due_at.astimezone(localtime.zone()).strftime("%Y-%m-%d %H:%M")}
                    for c in open_items if is_overdue(c)],
        "queue_by_priority": {p: sum(1 for c in open_items if c.priority == p) for p in PRIORITIES},
        "queue_by_colour": {k: sum(1 for c in open_items if (c.risk_colour or "none") == k)
                            for k in (*RISK_COLOURS, "none")},
        "critical": critical.figures(session=session, institution_ids=access.subtree_ids(session, institution_id),
                                     since=since),
        "emergency": emergency_figures([c for c in recent if c.emergency], response_minutes),
        "directions": {d: sum(1 for c in recent if c.direction == d) for d in ("up", "down")},
        # 上转/下转人次 as the seed documents count them: women referred (maternal/referrals.py).
        "referrals": referral_counts(session, institution_ids=access.subtree_ids(session, institution_id),
                                     since=since),
    }


def emergency_figures(consults: list[ConsultRequest], target_minutes: float) -> dict:
    """危重孕产妇 fast path: how fast the target took each emergency, against the target time."""
    minutes = [(c.accepted_at - c.created_at).total_seconds() / 60 for c in consults if c.accepted_at]
    return {"count": len(consults), "taken": len(minutes), "target_min": target_minutes,
            "median_min": round(statistics.median(minutes), 1) if minutes else None,
            "p90_min": round(_percentile(minutes, 0.9), 1) if minutes else None,
            "within_target": sum(1 for m in minutes if m <= target_minutes)}


def _axis_ticks(peak: float) -> list[int]:
    """Up to five round tick values from 0 to at least `peak` (counts: integers)."""
    step = 1
    for candidate in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000):
        step = candidate
        if peak / candidate <= 4:
            break
    top = max(step, -(-int(peak) // step) * step)
    return list(range(0, top + 1, step))


def _svg(title: str, width: int, height: int, body: str) -> str:
    return (f'<svg role="img" aria-label="{escape(title)}" viewBox="0 0 {width} {height}" width="100%" '
            f'style="max-width:{width}px;min-width:{int(width * 0.8)}px" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif">'
            f'<title>{escape(title)}</title>'
            f'<text x="0" y="18" font-size="17" font-weight="bold">{escape(title)}</text>{body}</svg>')


def bar_chart(title: str, data: dict[str, float], *, labels: dict[str, str] | None = None,
              unit: str = "例", width: int = 440, bar_height: int = 30) -> str:
    """A horizontal bar chart as inline SVG: a label per bar (Chinese first), the value at
    the end of each bar, and a count axis with grid lines under them."""
    labels = labels or {}
    ticks = _axis_ticks(max(data.values(), default=0))
    left, right, top = 130, 34, 34
    span = width - left - right
    height = top + bar_height * max(1, len(data)) + 30
    grid = "".join(
        f'<line x1="{left + span * t / ticks[-1]:.1f}" y1="{top}" x2="{left + span * t / ticks[-1]:.1f}" '
        f'y2="{height - 26}" stroke="#d0d7de" stroke-width="1"/>'
        f'<text x="{left + span * t / ticks[-1]:.1f}" y="{height - 10}" font-size="15" text-anchor="middle" '
        f'fill="#444">{t}</text>' for t in ticks)
    rows = []
    for i, (key, value) in enumerate(data.items()):
        y = top + i * bar_height
        length = span * value / ticks[-1]
        rows.append(f'<text x="{left - 8}" y="{y + bar_height / 2 + 5:.1f}" font-size="15" text-anchor="end">'
                    f'{escape(labels.get(key, str(key)))}</text>'
                    f'<rect x="{left}" y="{y + 5}" width="{max(length, 1):.1f}" height="{bar_height - 10}" '
                    f'fill="{COLOURS.get(key, "#0b6e8a")}"><title>{escape(labels.get(key, str(key)))}: '
                    f'{value:g} {unit}</title></rect>'
                    f'<text x="{left + length + 6:.1f}" y="{y + bar_height / 2 + 5:.1f}" font-size="15" '
                    f'font-weight="bold">{value:g}</text>')
    axis = (f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - 26}" stroke="#333"/>'
            f'<text x="{width - 2}" y="{height - 10}" font-size="14" text-anchor="end" fill="#444">{unit}</text>')
    return _svg(title, width, height, grid + "".join(rows) + axis)


def stacked_weeks(title: str, volumes: dict[str, dict[str, int]], *, width: int = 640) -> str:
    """Weekly volumes per institution as stacked columns: a count axis with grid lines, the
    week's total above each column, ISO week under it, a legend of institutions."""
    weeks = list(volumes)
    institutions = sorted({code for counts in volumes.values() for code in counts})
    palette = ["#0b6e8a", "#ef6c00", "#2e7d32", "#6a1b9a", "#c62828", "#f9a825", "#607d8b"]
    ticks = _axis_ticks(max((sum(c.values()) for c in volumes.values()), default=0))
    left, top, chart_height = 44, 52, 200
    column = max(22, min(56, (width - left - 10) // max(1, len(weeks)) - 10))
    base = top + chart_height
    parts = [f'<line x1="{left}" y1="{base - chart_height * t / ticks[-1]:.1f}" x2="{width - 4}" '
             f'y2="{base - chart_height * t / ticks[-1]:.1f}" stroke="#d0d7de"/>'
             f'<text x="{left - 6}" y="{base - chart_height * t / ticks[-1] + 4:.1f}" font-size="15" '
             f'text-anchor="end" fill="#444">{t}</text>' for t in ticks]
    for i, week in enumerate(weeks):
        x, y = left + 10 + i * (column + 10), base
        for j, code in enumerate(institutions):
            value = volumes[week].get(code, 0)
            h = chart_height * value / ticks[-1]
            y -= h
            if value:
                parts.append(f'<rect x="{x}" y="{y:.1f}" width="{column}" height="{h:.1f}" '
                             f'fill="{palette[j % len(palette)]}"><title>{escape(week)} {escape(code)}: '
                             f'{value} 例</title></rect>')
        total = sum(volumes[week].values())
        parts.append(f'<text x="{x + column / 2:.1f}" y="{y - 5:.1f}" font-size="15" font-weight="bold" '
                     f'text-anchor="middle">{total}</text>'
                     f'<text x="{x + column / 2:.1f}" y="{base + 18}" font-size="15" text-anchor="middle">'
                     f'{escape(week[-3:])}</text>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{base}" stroke="#333"/>'
                 f'<line x1="{left}" y1="{base}" x2="{width - 4}" y2="{base}" stroke="#333"/>'
                 f'<text x="{left + 6}" y="{top - 8}" font-size="14" fill="#444">例 cases</text>')
    legend_y = base + 40
    legend = "".join(f'<rect x="{left + k * 120}" y="{legend_y - 11}" width="12" height="12" '
                     f'fill="{palette[k % len(palette)]}"/><text x="{left + 18 + k * 120}" y="{legend_y}" '
                     f'font-size="15">{escape(code)}</text>' for k, code in enumerate(institutions))
    if not weeks:
        legend = f'<text x="{left + 10}" y="{top + chart_height / 2}" font-size="15" fill="#666">暂无数据 No consults yet</text>'
    return _svg(title, width, legend_y + 10, "".join(parts) + legend)
