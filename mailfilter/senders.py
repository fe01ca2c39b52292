"""Envelope-sender lists ([senders] allow and block): addresses, domains and .domains, looked up in sets.

Three forms of entry, matched case-insensitively:
  alerts@monitoring.example   that address
  example.org                 any address at that domain, not at its subdomains
  .example.org                any address at a subdomain of it, at any depth, not at example.org itself
A lookup costs a set probe per form and one per label of the sender's domain,
whatever the size of the list. A list file (one entry a line, "#" comments)
is re-read when it changes; a broken one keeps the last good list.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .log import LOGGER
from .model import SenderHits
from .record import dataclass

if TYPE_CHECKING:
    from .config import SendersConfig

LOG = logging.getLogger(LOGGER)

CHECK_EVERY = 1.0  # seconds between two looks at a list file's metadata
FILE_LIMIT = 64 * 1024 * 1024  # bytes of a list file: about a million entries

# A domain label: anything printable but blanks, the dot, "@", wildcards and what RFC 5322 calls specials.
_LABEL = r"[^\s.@*?<>()\[\]\\,;:\"]+"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_LOCAL = re.compile(r"[^\s@<>()\[\]\\,;:\"]+")
_FORMS = "an address (user@example.org), a domain (example.org) or a .domain (.example.org, its subdomains)"


def parse_entry(text: str) -> str:
    """TEXT as an entry: lower case, blanks around it and a final dot removed. ValueError naming
    TEXT if it is none of the three forms."""
    if not isinstance(text, str):
        raise TypeError(f"{text!r} is not a string: want {_FORMS}")
    entry = text.strip().lower()
    if entry.endswith(".") and not entry.endswith(".."):
        entry = entry[:-1]
    if "*" in entry:
        raise ValueError(f"{text!r}: no wildcards; want {_FORMS}")
    local, at, domain = entry.rpartition("@")
    if at:
        ok = _LOCAL.fullmatch(local) is not None and _DOMAIN.fullmatch(domain) is not None
    else:
        ok = _DOMAIN.fullmatch(entry[1:] if entry.startswith(".") else entry) is not None
    if not ok:
        raise ValueError(f"{text!r} is not {_FORMS}")
    return entry


@dataclass(frozen=True)
class _Entries:
    addresses: frozenset[str] = frozenset()
    domains: frozenset[str] = frozenset()
    subdomains: frozenset[str] = frozenset()  # with their leading dot

    @classmethod
    def of(cls, entries: Iterable[str]) -> _Entries:
        addresses, domains, subdomains = set(), set(), set()
        for entry in entries:
            if "@" in entry:
                addresses.add(entry)
            elif entry.startswith("."):
                subdomains.add(entry)
            else:
                domains.add(entry)
        return cls(frozenset(addresses), frozenset(domains), frozenset(subdomains))

    def __len__(self) -> int:
        return len(self.addresses) + len(self.domains) + len(self.subdomains)

    def __or__(self, other: _Entries) -> _Entries:
        return _Entries(self.addresses | other.addresses, self.domains | other.domains, self.subdomains | other.subdomains)

    def match(self, sender: str) -> str | None:
        local, at, domain = sender.strip().lower().rpartition("@")
        if not at or not local:
            return None
        if domain.endswith("."):
            domain = domain[:-1]
        address = f"{local}@{domain}"
        if address in self.addresses:
            return address
        if domain in self.domains:
            return domain
        dot = domain.find(".")
        while dot >= 0:  # the longest suffix first: the most specific entry
            if domain[dot:] in self.subdomains:
                return domain[dot:]
            dot = domain.find(".", dot + 1)
        return None


class _Broken(Exception):
    """A list file that cannot be used, and why in words."""


def _signature(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_mtime_ns, st.st_size, st.st_ino


def _load(path: str) -> tuple[_Entries, tuple[int, int, int]]:
    """The entries of the file at PATH and the signature of what was read; _Broken if it cannot be used.
    Opened without following a symbolic link and read through the descriptor, never by name again."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise _Broken("missing") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Broken("a symbolic link, refused") from None
        raise _Broken(f"cannot be opened: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Broken("not a regular file")
        if st.st_size > FILE_LIMIT:
            raise _Broken(f"larger than {FILE_LIMIT} bytes")
        chunks, size = [], 0
        while chunk := os.read(fd, 1 << 20):
            size += len(chunk)
            if size > FILE_LIMIT:
                raise _Broken(f"larger than {FILE_LIMIT} bytes")
            chunks.append(chunk)
    except OSError as exc:
        raise _Broken(f"cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)
    try:
        text = b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        line = b"".join(chunks)[: exc.start].count(b"\n") + 1
        raise _Broken(f"line {line}: not UTF-8") from None
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        entry = line.partition("#")[0].strip()
        if entry:
            try:
                entries.append(parse_entry(entry))
            except ValueError as exc:
                raise _Broken(f"line {number}: {exc}") from None
    return _Entries.of(entries), _signature(st)


def check_file(path: str) -> str | None:
    """What is wrong with the list file at PATH, in words (for `mailfilter check`), or None."""
    if not path:
        return None
    try:
        _load(path)
    except _Broken as exc:
        return f"sender list {path}: {exc}"
    return None


class SenderList:
    """Entries given inline plus those of a list FILE ("": none), looked up by matches().

    What it matches changes only when FILE does: matches() looks at FILE's (mtime, size, inode) at
    most once every CHECK_EVERY seconds of CLOCK and re-reads it when they changed. A file that
    cannot be used keeps the last good entries (none, if it never could) and gives one warning per
    change. Safe from any number of threads: a lookup never waits for a re-read done by another.
    """

    def __init__(self, entries: Iterable[str] = (), file: str = "", *, clock: Callable[[], float] = time.monotonic) -> None:
        self.file = file
        self._inline = _Entries.of(parse_entry(e) for e in entries)
        self._current = self._inline
        self._clock = clock
        self._lock = threading.Lock()  # one re-read at a time
        self._seen: object = None  # the signature (or failure) of the file last looked at
        self._from_file: int | None = None  # entries of the last good read of the file (None: none yet)
        self._checked = clock()
        if file:
            self._refresh()

    def __len__(self) -> int:
        return len(self._current)

    def matches(self, sender: str) -> str | None:
        """The entry that SENDER (an envelope sender) matches, or None; the null sender never matches."""
        if self.file and self._clock() - self._checked >= CHECK_EVERY and self._lock.acquire(blocking=False):
            try:
                if self._clock() - self._checked >= CHECK_EVERY:
                    self._refresh()
            finally:
                self._lock.release()
        return self._current.match(sender) if sender else None

    def _refresh(self) -> None:
        """Re-read the file if its metadata changed since last time; called with the lock held (or alone)."""
        self._checked = self._clock()
        try:
            seen: object = _signature(os.lstat(self.file))
        except OSError as exc:
            seen = ("lstat", exc.errno)
        if seen == self._seen:
            return
        self._seen = seen
        try:
            entries, self._seen = _load(self.file)
        except _Broken as exc:
            if self._from_file is None:
                LOG.warning("sender list %s: %s; none of its entries are used", self.file, exc)
            else:
                LOG.warning("sender list %s: %s; keeping its last good list (%d entries)", self.file, exc, self._from_file)
            return
        self._current, self._from_file = self._inline | entries, len(entries)


class Cache:
    """The allow and block SenderLists of the [senders] config in use, kept from one message to the next
    (a list file is then read once, not per message). A config with other lists replaces them; the
    lists of a config no longer in use are dropped. Safe from any thread."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._state: tuple[SendersConfig, tuple[SenderList, SenderList]] | None = None  # one tuple: read at once
        self._by_key: dict[tuple[tuple[str, ...], str], SenderList] = {}

    def hits(self, sender: str, config: SendersConfig) -> SenderHits:
        """The allow and block entries SENDER matches in CONFIG's lists."""
        allow, block = self.lists(config)
        if not sender or not (len(allow) or len(block) or allow.file or block.file):
            return SenderHits()
        return SenderHits(allow.matches(sender), block.matches(sender))

    def lists(self, config: SendersConfig) -> tuple[SenderList, SenderList]:
        """CONFIG's allow and block lists, made (and their files read) the first time CONFIG is seen."""
        state = self._state
        if state is not None and state[0] is config:
            return state[1]
        with self._lock:
            state = self._state
            if state is None or state[0] is not config:
                keys = ((tuple(config.allow), config.allow_file), (tuple(config.block), config.block_file))
                kept = {key: self._by_key.get(key) or SenderList(key[0], key[1], clock=self._clock) for key in keys}
                self._by_key = kept
                state = self._state = (config, (kept[keys[0]], kept[keys[1]]))
            return state[1]
