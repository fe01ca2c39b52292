"""The dashboard: today's messages by verdict, scanner failures, the quarantine's size, an hourly chart (UTC)."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta

from .. import journal
from ..actions.quarantine import FolderStore
from ..commands.daily import VERDICTS, Summary, summarize
from ..config import Config
from ..record import dataclass

CHART_HEIGHT = 120


@dataclass(frozen=True)
class Bar:
    hour: int
    verdict: str
    x: int
    y: int
    height: int
    count: int


@dataclass(frozen=True)
class Board:
    summary: Summary
    bars: list[Bar]
    top: int
    journal: bool  # False: [report] journal_dir is off, so there is nothing to count


def bars(hourly: dict[str, list[int]]) -> tuple[list[Bar], int]:
    """Stacked bars, one per hour, as SVG rectangles (attributes, not style: the CSP allows no inline style)."""
    top = max([sum(hourly[v][h] for v in hourly) for h in range(24)] + [1])
    out = []
    for hour in range(24):
        y = CHART_HEIGHT
        for verdict in VERDICTS:
            count = hourly.get(verdict, [0] * 24)[hour]
            if count:
                height = max(1, round(count * CHART_HEIGHT / top))
                y -= height
                out.append(Bar(hour, verdict, 30 + hour * 20, y, height, count))
    return out, top


def today(config: Config, store: FolderStore) -> Board:
    now = datetime.now(UTC)
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    events = list(journal.read(config.report.journal_dir, start, start + timedelta(days=1))) if config.report.journal_dir else []
    good, _bad = store.entries()
    summary = summarize(events, start.date(), socket.gethostname(), (len(good), sum(entry.size for entry in good)))
    shown, top = bars(summary.hourly)
    return Board(summary, shown, top, bool(config.report.journal_dir))
