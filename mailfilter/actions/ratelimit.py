"""Report rate limit shared by every filter process: one report per key and interval.

State is a small JSON file, read and rewritten under an exclusive flock, so
concurrent `pipe` processes count every suppressed report exactly once.
"""

from __future__ import annotations

import fcntl
import json
import os

from .quarantine import write_atomic

STATE_FILE = "report-state.json"


def admit(state_dir: str, key: str, interval: float, now: float) -> tuple[bool, int]:
    """(True, n) when a report for KEY may go now, n being how many were held back
    since the last one; (False, 0) when one went out less than INTERVAL seconds ago."""
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    lock = os.open(os.path.join(state_dir, ".report-state.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = _read(os.path.join(state_dir, STATE_FILE))
        entry = state.get(key, {"last_sent": None, "suppressed": 0})
        last = entry.get("last_sent")
        if last is not None and now - last < interval:
            entry["suppressed"] = int(entry.get("suppressed", 0)) + 1
            verdict = (False, 0)
        else:
            verdict = (True, int(entry.get("suppressed", 0)))
            entry = {"last_sent": now, "suppressed": 0}
        state[key] = entry
        write_atomic(state_dir, STATE_FILE, [json.dumps(state, sort_keys=True).encode("utf-8")])
        return verdict
    finally:
        os.close(lock)  # releases the lock


def _read(path: str) -> dict:
    try:
        with open(path, "rb") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return {}
    except ValueError:
        return {}  # a damaged state file only costs one extra report
    return data if isinstance(data, dict) else {}
