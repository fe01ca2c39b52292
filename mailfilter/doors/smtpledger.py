"""The sealed-but-unanswered ledger of `mailfilter smtp`: what closes SMTP's duplicate window.

Between the reinjecting smtpd's 250 (or the quarantine entry becoming durable) and our own 250 reaching
Postfix there is a moment (RFC 1047) where the message's fate is sealed but Postfix does not know it: the
door killed there, or the connection cut there, and Postfix logs "message may be sent more than once" and
retries a message that was already reinjected. Postfix retries the same bytes with the same envelope and
the same queue id (XFORWARD IDENT), so the door can recognise the retry and answer it without a second
reinjection.

The ledger is one append-only file in [report] state_dir (smtp-sealed.log), up to three lines per message:

    D <unix time> <key>             right before the final dot of its reinjection goes out
    H <unix time> <key>             right before its quarantine entry is stored (the entry's metadata
                                    carries the key as "ledger_key")
    S <unix time> <key> <reply>     in the filtering thread, the moment the fate is sealed (the smtpd's 2xx
                                    read, or the quarantine entry durable)
    A <key>                         once the reply was handed to Postfix's connection (or the smtpd refused
                                    the message outright: nothing was taken)

A key with an S line and no A line is a message Postfix may retry although it was reinjected: its retry is
answered with the recorded reply ("already done, not again"), scanned and reinjected never again. A key
with a D line and nothing after it is the window no SMTP filter can close: our final dot went out and the
smtpd's answer never came back (the door killed, the connection cut while it wrote its queue file). The
smtpd may or may not have taken it; the retry is delivered again (a possible duplicate, never a loss), and
the door says so in a warning naming the queue id. A key with an H line and nothing after it is a
quarantine entry that may or may not have been stored when the door was killed: the store is ours, so the
retry looks for the entry carrying that key and answers from it, or stores it if it is not there.

Lines are plain write()s to an O_APPEND file, no fsync: they survive the door being killed (the kernel has
them), not a power loss (which also loses the connections). At start the file is read, entries older than
MAX_AGE and the answered ones are dropped, and it is rewritten with what is left (usually nothing); it is
compacted the same way when it passes COMPACT_BYTES. What stays in memory is only the open entries.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterable

from ..model import Envelope

FILE = "smtp-sealed.log"
MAX_AGE = 5 * 86400.0  # seconds: Postfix's maximal_queue_lifetime; no retry comes later than that
COMPACT_BYTES = 32 * 1024 * 1024


class LedgerError(Exception):
    """The ledger cannot be opened or written (the door does not start without it)."""


def key(envelope: Envelope, data: bytes) -> str:
    """The identity of one queued message as Postfix hands it over: queue id, envelope, bytes."""
    digest = hashlib.sha256()
    for part in (envelope.queue_id or "", envelope.sender, *envelope.recipients):
        digest.update(part.encode("utf-8", "surrogateescape") + b"\0")
    digest.update(data)
    return digest.hexdigest()


class Ledger:
    """Thread-safe. pending: key -> (sealed at, reply), sealed and perhaps unanswered; dots: key -> when its
    final dot went out with no answer read yet; holds: key -> when its quarantine entry was about to be stored."""

    def __init__(self, folder: str, max_age: float = MAX_AGE, compact_bytes: int = COMPACT_BYTES) -> None:
        self.path = os.path.join(folder, FILE)
        self.max_age, self.compact_bytes = max_age, compact_bytes
        self._lock = threading.Lock()
        self.pending: dict[str, tuple[float, str]] = {}
        self.dots: dict[str, float] = {}
        self.holds: dict[str, float] = {}
        try:
            os.makedirs(folder, mode=0o700, exist_ok=True)
            self.pending, self.dots, self.holds = _read(self.path, time.time() - max_age)
            self._fd = self._rewrite()
        except OSError as exc:
            raise LedgerError(f"cannot open the sealed-message ledger {self.path}: {exc.strerror or exc}") from None
        self.recovered = len(self.pending)  # sealed by an earlier run, perhaps never answered
        self.unsure = len(self.dots)  # reinjected by an earlier run with no answer read: taken or not, nobody knows

    def sealed(self, message_key: str) -> str | None:
        """The reply recorded for a sealed, unanswered message with this key; None for a message not seen."""
        with self._lock:
            entry = self.pending.get(message_key)
        return entry[1] if entry else None

    def dot_unanswered(self, message_key: str) -> bool:
        """Whether an earlier attempt of this message sent its final dot and never read the smtpd's answer."""
        with self._lock:
            return message_key in self.dots

    def hold_unsealed(self, message_key: str) -> bool:
        """Whether an earlier attempt of this message was storing its quarantine entry when it ended."""
        with self._lock:
            return message_key in self.holds

    def hold(self, message_key: str) -> None:
        now = time.time()
        with self._lock:
            self.holds[message_key] = now
            os.write(self._fd, f"H {now:.0f} {message_key}\n".encode())

    def dot(self, message_key: str) -> None:
        now = time.time()
        with self._lock:
            self.dots[message_key] = now
            os.write(self._fd, f"D {now:.0f} {message_key}\n".encode())

    def seal(self, message_key: str, reply: str) -> None:
        now = time.time()
        line = f"S {now:.0f} {message_key} {_one_line(reply)}\n".encode("utf-8", "replace")
        with self._lock:
            self.pending[message_key] = (now, reply)
            self.dots.pop(message_key, None)
            self.holds.pop(message_key, None)
            os.write(self._fd, line)

    def answered(self, message_key: str) -> None:
        """The reply reached Postfix's connection, or the smtpd refused the message: nothing left open."""
        with self._lock:
            opened = [book.pop(message_key, None) for book in (self.pending, self.dots, self.holds)]
            if all(at is None for at in opened):
                return
            os.write(self._fd, f"A {message_key}\n".encode())
            if os.fstat(self._fd).st_size > self.compact_bytes:
                old, self._fd = self._fd, self._rewrite()
                os.close(old)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def _rewrite(self) -> int:
        """Replace the file by the open entries (temp file, rename) and return it opened for appending."""
        cutoff = time.time() - self.max_age
        self.pending = {k: v for k, v in self.pending.items() if v[0] >= cutoff}
        self.dots = {k: at for k, at in self.dots.items() if at >= cutoff}
        self.holds = {k: at for k, at in self.holds.items() if at >= cutoff}
        lines = [f"D {at:.0f} {k}\n" for k, at in self.dots.items()]
        lines += [f"H {at:.0f} {k}\n" for k, at in self.holds.items()]
        lines += [f"S {at:.0f} {k} {_one_line(r)}\n" for k, (at, r) in self.pending.items()]
        temp = f"{self.path}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, "".join(lines).encode("utf-8", "replace"))
            os.fsync(fd)
            os.rename(temp, self.path)
        except BaseException:
            os.close(fd)
            raise
        return fd


def _one_line(text: str) -> str:
    return " ".join(text.split())


Books = tuple[dict[str, tuple[float, str]], dict[str, float], dict[str, float]]


def _read(path: str, cutoff: float) -> Books:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return {}, {}, {}
    with os.fdopen(fd, "rb") as fh:
        return _parse(fh, cutoff)


def _parse(lines: Iterable[bytes], cutoff: float) -> Books:
    pending: dict[str, tuple[float, str]] = {}
    dots: dict[str, float] = {}
    holds: dict[str, float] = {}
    for raw in lines:
        fields = raw.decode("utf-8", "replace").rstrip("\n").split(" ", 3)
        if fields[0] == "S" and len(fields) == 4 and fields[1].isdigit():
            dots.pop(fields[2], None)
            holds.pop(fields[2], None)
            if float(fields[1]) >= cutoff:
                pending[fields[2]] = (float(fields[1]), fields[3])
        elif fields[0] in ("D", "H") and len(fields) == 3 and fields[1].isdigit() and float(fields[1]) >= cutoff:
            (dots if fields[0] == "D" else holds)[fields[2]] = float(fields[1])
        elif fields[0] == "A" and len(fields) == 2:
            for book in (pending, dots, holds):
                book.pop(fields[1], None)
        # anything else is a line cut short by a kill: ignored
    return pending, dots, holds
