"""The journal: one JSON line per filtered message, for `mailfilter report` and the metrics.

Files are `DIR/YYYY-MM-DD.jsonl` (UTC dates), 0600. Each event is written with
a single O_APPEND write, so concurrent `pipe` processes and milter threads
never interleave or lose lines. No message content beyond the envelope, the
Subject-free verdict and the scanner results is kept.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

from .model import Decision, Envelope, ScanFailure, ScanResults, SpamReport, VirusReport

LOG = logging.getLogger("mailfilter")


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
        "servers": dict(results.servers) if results else {},  # scanner -> the pool member that answered
        "failovers": dict(results.failovers) if results else {},  # scanner -> members that failed first
        "banned": [f"{b.part}: {b.reason}" for b in results.attachments.banned] if results and results.attachments else [],
        "sender_rule": decision.sender_rule if decision else "",  # "allow ENTRY" / "block ENTRY": a [senders] hit
    }


def record(folder: str, entry: dict[str, Any]) -> None:
    """Append ENTRY to the day's file with one write (atomic for O_APPEND on a local file system).

    The day's file is never a symlink followed (O_NOFOLLOW) nor a FIFO waited on
    (O_NONBLOCK): anything but a regular file is an OSError, which the caller logs."""
    os.makedirs(folder, mode=0o700, exist_ok=True)
    day = entry["time"][:10]
    line = (json.dumps(entry, sort_keys=True, ensure_ascii=True) + "\n").encode("ascii")
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(os.path.join(folder, f"{day}.jsonl"), flags, 0o600)
    try:
        _regular(fd, f"{day}.jsonl")
        os.write(fd, line)
    finally:
        os.close(fd)


def _regular(fd: int, name: str) -> None:
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise OSError(errno.EINVAL, "not a regular file", name)


def read(folder: str, since: datetime, until: datetime) -> Iterator[dict[str, Any]]:
    """Events with since <= time < until, oldest first. A damaged line is skipped, not fatal; so is a day's
    file that is a symlink, a FIFO or anything but a regular file (never followed or waited on), with a warning."""
    day: date = since.astimezone(UTC).date()
    while day <= until.astimezone(UTC).date():
        name = f"{day.isoformat()}.jsonl"
        day += timedelta(days=1)
        try:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        except OSError as exc:
            LOG.warning("journal %s skipped: %s", os.path.join(folder, name), exc.strerror or exc)
            continue
        try:
            _regular(fd, name)
        except OSError:
            os.close(fd)
            LOG.warning("journal %s skipped: not a regular file", os.path.join(folder, name))
            continue
        with open(fd, encoding="ascii", errors="replace") as fh:
            for line in fh:
                try:
                    entry = json.loads(line)
                    when = datetime.fromisoformat(entry["time"])
                except (ValueError, KeyError, TypeError, RecursionError):
                    continue
                if since <= when < until:
                    yield entry
