"""A quarantine entry as the admin tools read it, safe against whatever the filter's user could plant there.

The folder is opened once (O_DIRECTORY | O_NOFOLLOW: a real folder, not a
symlink) and every file relative to that descriptor, once, with O_NOFOLLOW (a
symlink is refused, never followed) and O_NONBLOCK (a FIFO cannot hang the
open). fstat must then show a regular file owned by the folder's owner with a
single link (not a hard link to another user's file), of bounded size for
metadata; the file is read through that descriptor only. Metadata is checked
in one place, `validate`, into an Entry; anything else is a BadEntry, which the
tools skip and report (list, purge) or refuse (show, release, delete).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import stat
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from ..record import dataclass

ID_PATTERN = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{10}$")
META_LIMIT = 1 << 20  # an entry's .json is a few KiB; more is not ours
_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
LOCK_WAIT = 5.0  # seconds an admin command waits for an entry's lock (another release, or a process that never lets go)


class BadEntry(Exception):
    """A quarantine file that is not what the filter writes (a symlink, a FIFO, someone else's, damaged)."""

    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"{name}: {why}")
        self.name = name
        self.why = why


@dataclass(frozen=True)
class Release:
    at: str
    by: str
    to: tuple[str, ...]


@dataclass(frozen=True)
class Entry:
    """An entry's checked metadata; META is all of it as stored (what `list --json` prints)."""

    id: str
    created: datetime
    size: int
    reason: str
    sender: str
    recipients: tuple[str, ...]
    subject: str
    virus_names: tuple[str, ...]
    spam_score: float | None
    released: tuple[Release, ...]
    meta: dict[str, Any]


class Folder:
    """The quarantine folder opened by descriptor (OSError if it cannot be); closed when its `with` ends."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            self.uid = os.fstat(self.fd).st_uid
        except BaseException:
            os.close(self.fd)
            raise

    def __enter__(self) -> Folder:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        os.close(self.fd)

    def names(self) -> list[str]:
        return os.listdir(self.fd)

    def open(self, name: str, limit: int | None = None) -> int:
        """A checked read-only descriptor for NAME. FileNotFoundError if it is gone, BadEntry if it is not ours."""
        try:
            fd = os.open(name, _OPEN, dir_fd=self.fd)
        except FileNotFoundError:
            raise
        except OSError as exc:
            why = "a symlink (never followed)" if exc.errno == errno.ELOOP else f"cannot be opened: {exc.strerror or exc}"
            raise BadEntry(name, why) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise BadEntry(name, "not a regular file")
            if st.st_uid != self.uid:
                raise BadEntry(name, f"belongs to uid {st.st_uid}, not to the quarantine's owner (uid {self.uid})")
            if st.st_nlink != 1:
                raise BadEntry(name, f"has {st.st_nlink} links (a hard link is not an entry)")
            if limit is not None and st.st_size > limit:
                raise BadEntry(name, f"{st.st_size} bytes, more than {limit}")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def metadata(self, qid: str) -> Entry:
        """ID.json read once through a checked descriptor, then validated."""
        name = f"{qid}.json"
        fd = self.open(name, META_LIMIT)
        try:
            data = read_all(fd, META_LIMIT + 1)
        finally:
            os.close(fd)
        if len(data) > META_LIMIT:
            raise BadEntry(name, f"more than {META_LIMIT} bytes")
        try:
            meta = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
        except (ValueError, RecursionError):
            raise BadEntry(name, "not valid JSON") from None
        try:
            return validate(meta, qid)
        except ValueError as exc:
            raise BadEntry(name, str(exc)) from None

    def check(self, name: str) -> None:
        """NAME is one of ours (see open), or BadEntry; FileNotFoundError if it is gone."""
        os.close(self.open(name))

    def exists(self, name: str) -> bool:
        try:
            os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def unlink(self, name: str) -> None:
        os.unlink(name, dir_fd=self.fd)


def lock(fd: int, wait: float = LOCK_WAIT) -> bool:
    """An exclusive flock on FD within WAIT seconds (polled, so a holder that never lets go cannot hang us)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)


def read_all(fd: int, limit: int | None = None) -> bytes:
    """Everything from the start of FD (at most LIMIT bytes), by that descriptor."""
    chunks, offset = [], 0
    while limit is None or offset < limit:
        chunk = os.pread(fd, 1 << 20 if limit is None else min(1 << 20, limit - offset), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


_REQUIRED = object()


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_strs(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _or_none(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


def _is_release(value: Any) -> bool:
    return isinstance(value, dict) and _is_str(value.get("at")) and _is_str(value.get("by")) and _is_strs(value.get("to"))


def _get(meta: dict[str, Any], key: str, check: Callable[[Any], bool], what: str, default: Any = _REQUIRED) -> Any:
    if key not in meta:
        if default is _REQUIRED:
            raise ValueError(f"no {key!r}")
        return default
    if not check(meta[key]):
        raise ValueError(f"{key!r} is not {what}")
    return meta[key]


def validate(meta: Any, qid: str) -> Entry:
    """META as the filter writes it (see quarantine.store and describe), or ValueError saying what is wrong."""
    if not isinstance(meta, dict):
        raise ValueError("not a JSON object")
    if _get(meta, "id", _is_str, "a string") != qid:
        raise ValueError("its 'id' is not its file name")
    try:
        created = datetime.fromisoformat(_get(meta, "created", _is_str, "a date"))
    except ValueError:
        raise ValueError("'created' is not a date") from None
    size = _get(meta, "size", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a byte count")
    released = _get(meta, "released", lambda v: isinstance(v, list) and all(map(_is_release, v)), "a list of releases", [])
    for key, check, what in (
        ("verdict", _is_str, "a string"),
        ("spam_threshold", _or_none(_is_number), "a number"),
        ("spam_tests", _is_strs, "a list of strings"),
        ("queue_id", _or_none(_is_str), "a string"),
        ("message_id", _or_none(_is_str), "a string"),
        ("headers", lambda v: isinstance(v, list) and all(_is_strs(h) and len(h) == 2 for h in v), "a list of headers"),
    ):
        _get(meta, key, check, what, None)
    return Entry(
        id=qid,
        created=created if created.tzinfo else created.replace(tzinfo=UTC),
        size=size,
        reason=_get(meta, "reason", _is_str, "a string"),
        sender=_get(meta, "sender", _is_str, "a string"),
        recipients=tuple(_get(meta, "recipients", _is_strs, "a list of strings")),
        subject=_get(meta, "subject", _or_none(_is_str), "a string", None) or "",
        virus_names=tuple(_get(meta, "virus_names", _is_strs, "a list of strings", [])),
        spam_score=_get(meta, "spam_score", _or_none(_is_number), "a number", None),
        released=tuple(Release(r["at"], r["by"], tuple(r["to"])) for r in released),
        meta=meta,
    )
