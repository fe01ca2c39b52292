"""The console's audit log: one JSON line per release or delete (who, when, what), in [report] state_dir/web-audit.jsonl."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from typing import Any

NAME = "web-audit.jsonl"


def record(state_dir: str, who: str, action: str, qid: str, **details: Any) -> dict[str, Any]:
    """Append one line with a single O_APPEND write (never interleaved with another's)."""
    line = {"at": datetime.now(UTC).isoformat(timespec="seconds"), "who": who, "action": action, "id": qid, **details}
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(state_dir, NAME), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, (json.dumps(line, sort_keys=True) + "\n").encode("utf-8"))
    finally:
        os.close(fd)
    return line


def of(state_dir: str, qid: str) -> list[dict[str, Any]]:
    """The lines about QID, oldest first (damaged lines skipped)."""
    out = []
    try:
        fd = os.open(os.path.join(state_dir, NAME), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    needle = f'"id": "{qid}"'
    with open(fd, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if needle not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("id") == qid:
                out.append(entry)
    return out
