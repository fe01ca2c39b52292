"""The journal: one JSON line per filtered message, for `mailfilter report` and the metrics.

Files are `DIR/YYYY-MM-DD.jsonl` (UTC dates), 0600. Each event is written with
a single O_APPEND write, so concurrent `pipe` processes and milter threads
never interleave or lose lines. No message content beyond the envelope, the
Subject-free verdict and the scanner results is kept.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

from .model import Decision, Envelope, ScanFailure, ScanResults, SpamReport, VirusReport


def event(
    door: str,
    envelope: Envelope,
    results: ScanResults | None,
    decision: Decision | None,
    action: str,
    size: int,
    delay: float,
    now: datetime,
    quarantine_id: str | None = None,
) -> dict[str, Any]:
    """The record of one message. ACTION is what the door did (deliver, quarantine, hold, reject, tempfail)."""
    spam = results.spam if results else None
    virus = results.virus if results else None
    failures = results.failures if results else ()
    accepted = decision is not None and decision.action.value == "deliver"
    return {
        "time": now.astimezone(UTC).isoformat(timespec="seconds"),
        "door": door,
        "queue_id": envelope.queue_id,
        "sender": envelope.sender,
        "recipients": list(envelope.recipients),
        "size": size,
        "verdict": decision.verdict.value if decision else "error",
        "action": action,
        "spam_score": spam.score if isinstance(spam, SpamReport) else None,
        "spam_threshold": spam.threshold if isinstance(spam, SpamReport) else None,
        "virus_names": list(virus.names) if isinstance(virus, VirusReport) else [],
        "failures": [f"{f.scanner}:{f.cause.value}" for f in failures],
        "unscanned": [f.scanner for f in failures if accepted and isinstance(f, ScanFailure)],
        "quarantine_id": quarantine_id,
        "delay": round(delay, 3),
        "spam_seconds": round(results.spam_seconds, 4) if results else None,
        "virus_seconds": round(results.virus_seconds, 4) if results else None,
    }


def record(folder: str, entry: dict[str, Any]) -> None:
    """Append ENTRY to the day's file with one write (atomic for O_APPEND on a local file system)."""
    os.makedirs(folder, mode=0o700, exist_ok=True)
    day = entry["time"][:10]
    line = (json.dumps(entry, sort_keys=True, ensure_ascii=True) + "\n").encode("ascii")
    fd = os.open(os.path.join(folder, f"{day}.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read(folder: str, since: datetime, until: datetime) -> Iterator[dict[str, Any]]:
    """Events with since <= time < until, oldest first. A damaged line is skipped, not fatal."""
    day: date = since.astimezone(UTC).date()
    while day <= until.astimezone(UTC).date():
        path = os.path.join(folder, f"{day.isoformat()}.jsonl")
        try:
            with open(path, encoding="ascii", errors="replace") as fh:
                for line in fh:
                    try:
                        entry = json.loads(line)
                        when = datetime.fromisoformat(entry["time"])
                    except (ValueError, KeyError, TypeError):
                        continue
                    if since <= when < until:
                        yield entry
        except FileNotFoundError:
            pass
        day += timedelta(days=1)
