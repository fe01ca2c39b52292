"""What a split message already had sealed, for the retry of a door that deferred it halfway.

A message whose recipients were split (split.py) is carried out group by group; when a later group
fails after an earlier one was delivered or quarantined, the door defers the message and Postfix
retries it with every recipient. This log, one small file per message in [report] state_dir/split/,
named by the message's key (queue id, envelope and bytes, as the smtp door's ledger), lists the
recipients whose copy is sealed; the retry skips them. Each line is written and fsynced before the
next group is tried, so what is listed is what was sealed; files older than MAX_AGE are removed.

    RECIPIENT<TAB>what<LF>          what: "delivered" or "quarantined ID"
"""

from __future__ import annotations

import os
import time

FOLDER = "split"
MAX_AGE = 86400.0  # seconds: a day, as Postfix retries a deferred message well within it


class SplitLog:
    """The sealed recipients of one message (KEY: hex digest)."""

    def __init__(self, state_dir: str, key: str, max_age: float = MAX_AGE) -> None:
        self.folder = os.path.join(state_dir, FOLDER)
        self.path = os.path.join(self.folder, key)
        self.max_age = max_age

    def sealed(self) -> dict[str, str]:
        """Recipient -> what was done, from an earlier attempt (empty for a message seen first)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return {}
        with os.fdopen(fd, "rb") as fh:
            if time.time() - os.fstat(fh.fileno()).st_mtime > self.max_age:
                return {}
            done = {}
            for line in fh.read(1 << 20).decode("utf-8", "surrogateescape").splitlines():
                recipient, tab, what = line.partition("\t")
                if tab:
                    done[recipient] = what
            return done

    def record(self, recipients: tuple[str, ...], what: str) -> None:
        """Durably note that RECIPIENTS' copy is sealed (before the next group is tried)."""
        os.makedirs(self.folder, mode=0o700, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        try:
            text = "".join(f"{r}\t{what}\n" for r in recipients if "\n" not in r and "\t" not in r)
            os.write(fd, text.encode("utf-8", "surrogateescape"))
            os.fsync(fd)
        finally:
            os.close(fd)
        self.expire()

    def remove(self) -> None:
        """Forget this message (its replies were given: no retry needs the log)."""
        os.unlink(self.path)

    def expire(self) -> None:
        """Remove the logs of messages older than MAX_AGE (their retries are long over)."""
        cutoff = time.time() - self.max_age
        try:
            with os.scandir(self.folder) as names:
                for entry in names:
                    if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)
        except OSError:
            pass  # a log left behind is harmless: it is ignored once older than MAX_AGE
