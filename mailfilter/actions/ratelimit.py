"""Report rate limit shared by every filter process: one report per key and interval.

State is a small JSON file, read and rewritten under an exclusive flock, so
concurrent `pipe` processes and milter threads count every held-back report
exactly once. A report held back may leave a note (what the next report lists);
at most MAX_NOTES are kept, the rest are only counted.

The lock is waited for at most `timeout` seconds (LOCK_NB polling): a process
that holds it forever (stopped, stuck on a dead disk) costs one report, never a
hung filter.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from typing import Any, NamedTuple

from .quarantine import write_atomic

STATE_FILE = "report-state.json"
LOCK_FILE = ".report-state.lock"
LOCK_TIMEOUT = 5.0  # seconds
MAX_NOTES = 100
POLL = 0.01  # seconds between two tries for the lock


class LockTimeout(OSError):
    """The rate-limit state stayed locked by another process for longer than the timeout."""


class Admission(NamedTuple):
    """May a report go now; if so, how many were held back since the last one, and their notes (oldest first)."""

    allowed: bool
    suppressed: int = 0
    notes: tuple[dict[str, Any], ...] = ()


def admit(
    state_dir: str,
    key: str,
    interval: float,
    now: float,
    note: dict[str, Any] | None = None,
    timeout: float | None = None,
) -> Admission:
    """Admission(True, n, notes) when a report for KEY may go now, n being how many were held back
    since the last one; Admission(False) when one went out less than INTERVAL seconds ago (NOTE, if
    given, is then kept for the next report). Raises LockTimeout (an OSError) when the state stays
    locked for TIMEOUT (default LOCK_TIMEOUT) seconds, OSError when it cannot be kept."""
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    lock = os.open(os.path.join(state_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        _lock(lock, LOCK_TIMEOUT if timeout is None else timeout)
        state = _read(os.path.join(state_dir, STATE_FILE))
        entry = state.get(key)
        entry = entry if isinstance(entry, dict) else {}
        last = entry.get("last_sent")
        suppressed = _count(entry.get("suppressed"))
        notes = [n for n in entry.get("notes", ()) if isinstance(n, dict)] if isinstance(entry.get("notes"), list) else []
        if isinstance(last, (int, float)) and now - last < interval:
            if note is not None and len(notes) < MAX_NOTES:
                notes.append(note)
            entry = {"last_sent": last, "suppressed": suppressed + 1, "notes": notes}
            verdict = Admission(False)
        else:
            verdict = Admission(True, suppressed, tuple(notes))
            entry = {"last_sent": now, "suppressed": 0, "notes": []}
        state[key] = entry
        write_atomic(state_dir, STATE_FILE, [json.dumps(state, sort_keys=True).encode("utf-8")])
        return verdict
    finally:
        os.close(lock)  # releases the lock


def _lock(fd: int, timeout: float) -> None:
    """flock(LOCK_EX), waiting at most TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() >= deadline:
            raise LockTimeout(errno.ETIMEDOUT, f"report rate-limit state still locked after {timeout:g} s")
        time.sleep(POLL)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _read(path: str) -> dict:
    try:
        with open(path, "rb") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return {}
    except ValueError:
        return {}  # a damaged state file only costs one extra report
    return data if isinstance(data, dict) else {}
