"""The quarantine store: each held message is ID.eml (the bytes as received) and ID.json (metadata).

Writers (store, release, delete, purge; in many pipe processes and milter
threads at once) update an entry's metadata only under an exclusive lock on its
.eml, and replace the .json atomically, so no update is lost.

Writes are durable before they are reported: a temporary name in the same
folder (hidden, so never listed), fsync, rename, fsync of the folder. The
message is renamed into place before its metadata, and a listing goes by the
metadata, so a half-written entry is never seen. Files are 0600, the folder 0700.

The admin tools go through one store interface, FolderStore (open_store picks
it from the config), which reads every file once by a checked descriptor
(held.py): a symlink, a FIFO, another user's file or damaged metadata is a
BadEntry, skipped and reported, never followed, waited on or crashed over.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, BinaryIO

from .. import message as msgmod
from ..config import QuarantineConfig
from ..model import Decision, Envelope, ScanResults, SpamReport, Verdict, VirusReport
from ..spool import Spool
from . import held
from .held import ID_PATTERN, BadEntry, Entry, Folder, read_all, validate

if TYPE_CHECKING:
    from .pgstore import PgStore


SWEEP_AGE = timedelta(hours=1)  # a store's temporary file older than this belongs to a writer that was killed


class QuarantineError(Exception):
    """The message could not be stored durably."""


def new_id(now: datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%SZ-") + os.urandom(5).hex()  # what secrets.token_hex does, without its imports


def write_atomic(folder: str, name: str, chunks: Iterable[bytes], mode: int = 0o600, dir_fd: int | None = None) -> None:
    """Write CHUNKS to FOLDER/NAME via a hidden temporary file, fsync, rename, fsync the folder.

    With DIR_FD (FOLDER opened as a descriptor) every name is taken relative to it."""
    tmp = f".{name}.{os.urandom(4).hex()}.tmp"
    if dir_fd is None:
        tmp, name = os.path.join(folder, tmp), os.path.join(folder, name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        raise
    if dir_fd is not None:
        os.fsync(dir_fd)
        return
    dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def ensure_folder(folder: str) -> None:
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise QuarantineError(f"cannot create {folder}: {exc.strerror or exc}") from None


def describe(envelope: Envelope, message: Spool, results: ScanResults, decision: Decision) -> dict[str, Any]:
    """The metadata kept beside a held message."""
    parsed = msgmod.parse(message.read(msgmod.HEAD_LIMIT))
    user = dict(decision.headers).get("X-Spam-User")  # the held group's spamd user, when not the first one asked
    spam = results.spam_for(user) if user else results.spam
    virus, attachments = results.virus, results.attachments
    scored = isinstance(spam, SpamReport)
    return {
        "reason": {Verdict.VIRUS: "virus", Verdict.UNSCANNABLE: "unscannable", Verdict.BANNED: "banned"}.get(decision.verdict, "spam"),
        "verdict": decision.verdict.value,
        "virus_names": list(virus.names) if isinstance(virus, VirusReport) else [],
        "unscannable": list(virus.unscannable) if isinstance(virus, VirusReport) else [],
        "spam_score": spam.score if scored else None,
        "spam_threshold": spam.threshold if scored else None,
        "spam_tests": list(spam.tests) if scored else [],
        "sender": envelope.sender,
        "recipients": list(envelope.recipients),
        "queue_id": envelope.queue_id,
        "subject": msgmod.subject(parsed),
        "message_id": msgmod.message_id(parsed),
        "headers": [list(h) for h in decision.headers],
        "banned": [{"part": b.part, "type": b.type, "reason": b.reason} for b in attachments.banned] if attachments else [],
        "encrypted": list(attachments.encrypted) if attachments else [],
        "sender_rule": decision.sender_rule,
    }


def store(message: Spool, meta: dict[str, Any], folder: str, now: datetime | None = None) -> str:
    """Store MESSAGE with META; return its id once both files are durable."""
    now = now or datetime.now(UTC)
    ensure_folder(folder)
    qid = new_id(now)
    record = {"id": qid, "created": now.isoformat(timespec="seconds"), "size": message.size, **meta, "released": []}
    try:
        write_atomic(folder, f"{qid}.eml", message.chunks())
        write_atomic(folder, f"{qid}.json", [json.dumps(record, indent=1, sort_keys=True).encode("utf-8")])
    except OSError as exc:
        _remove(os.path.join(folder, f"{qid}.eml"))
        raise QuarantineError(f"cannot store in {folder}: {exc.strerror or exc}") from None
    return qid


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# --- the store as the admin tools see it: list, show, release, delete, purge ------------------------


class NotFound(QuarantineError):
    """No such quarantine id."""


class Refused(QuarantineError):
    """The operation needs --force (releasing a virus)."""


class Busy(QuarantineError):
    """Another process holds the entry's lock."""


def _check_id(qid: str) -> str:
    if not ID_PATTERN.match(qid):
        raise NotFound(f"{msgmod.printable(qid, 100)!r} is not a quarantine id (like 20261127T120000Z-0a1b2c3d4e)")
    return qid


class FolderStore:
    """The quarantine as a folder of ID.eml and ID.json: the one store the tools call (see open_store).

    Every read goes through held.Folder: one descriptor per file, no symlink
    followed, only regular files of the folder's owner (see held.py).
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder

    @contextlib.contextmanager
    def _open(self) -> Iterator[Folder]:
        try:
            folder = Folder(self.folder)
        except FileNotFoundError:
            raise
        except OSError as exc:
            why = "a symlink; the quarantine must be a real folder" if exc.errno == errno.ELOOP else exc.strerror or str(exc)
            raise QuarantineError(f"{self.folder}: {why}") from None
        with folder:
            yield folder

    def store(self, message: Spool, meta: dict[str, Any], now: datetime | None = None) -> str:
        return store(message, meta, self.folder, now)

    def entries(self) -> tuple[list[Entry], list[BadEntry]]:
        """Every complete entry, newest first, and every entry skipped as bad. Hidden temporary files are never read."""
        good, bad = [], []
        try:
            with self._open() as folder:
                for name in sorted(folder.names()):
                    if name.startswith(".") or not name.endswith(".json") or not ID_PATTERN.match(name[:-5]):
                        continue
                    try:
                        entry = folder.metadata(name[:-5])
                        folder.check(f"{entry.id}.eml")
                        good.append(entry)
                    except FileNotFoundError:
                        continue  # deleted meanwhile
                    except BadEntry as exc:
                        bad.append(exc)
        except FileNotFoundError:
            return [], []
        return sorted(good, key=lambda entry: entry.created, reverse=True), bad

    def get(self, qid: str) -> Entry:
        try:
            with self._open() as folder:
                return folder.metadata(_check_id(qid))
        except FileNotFoundError:
            raise NotFound(f"no message {qid} in {self.folder}") from None

    @contextlib.contextmanager
    def open_message(self, qid: str) -> Iterator[tuple[Entry, BinaryIO]]:
        """The entry and its message, as a file read through the one checked descriptor."""
        with self._locked(qid, lock=False) as (_folder, fd, entry), os.fdopen(os.dup(fd), "rb") as fh:
            yield entry, fh

    @contextlib.contextmanager
    def _locked(self, qid: str, lock: bool = True) -> Iterator[tuple[Folder, int, Entry]]:
        """Hold the entry's lock; yield the folder, the message's descriptor and the metadata.

        The lock is taken on the .eml, which is never replaced (the .json is, by
        rename), so every writer (release, delete, another process) serialises on
        it; the message is read through that same descriptor, never reopened. A
        lock held longer than held.LOCK_WAIT is Busy, not a wait for ever.
        """
        try:
            with self._open() as folder:
                fd = folder.open(f"{_check_id(qid)}.eml")
                try:
                    if lock and not held.lock(fd):
                        raise Busy(f"{qid}: locked by another process for {held.LOCK_WAIT:g} s; try again")
                    yield folder, fd, folder.metadata(qid)
                finally:
                    os.close(fd)
        except FileNotFoundError:
            raise NotFound(f"no message {qid} in {self.folder}") from None

    def release(
        self,
        qid: str,
        by: str,
        send: Callable[[bytes, str, list[str]], None],
        recipients: list[str] | None = None,
        force: bool = False,
        now: datetime | None = None,
    ) -> Entry:
        """Reinject the original bytes, with one header saying who released it, to the original recipients
        (or RECIPIENTS). A virus, or a message the scan could not see all of, needs FORCE. The entry
        stays, marked released, until purged."""
        now = now or datetime.now(UTC)
        with self._locked(qid) as (folder, fd, entry):
            if entry.reason == "virus" and not force:
                raise Refused(f"{qid} holds {', '.join(entry.virus_names) or 'a virus'}: releasing it needs --force")
            if entry.reason == "unscannable" and not force:
                raise Refused(f"{qid} could not be scanned completely (it may hide a virus): releasing it needs --force")
            if entry.reason == "banned" and not force:
                raise Refused(f"{qid} holds a banned attachment (a program, a script): releasing it needs --force")
            to = list(recipients or entry.recipients)
            at = now.isoformat(timespec="seconds")
            stamp = f"X-Mailfilter-Released: {msgmod.header_value(by, 100)} on {at} (quarantine id {qid})"
            original = read_all(fd)
            eol = b"\r\n" if original[:4096].count(b"\r\n") else b"\n"
            send(stamp.encode("ascii", "replace") + eol + original, entry.sender, to)
            meta = {**entry.meta, "released": [*entry.meta.get("released", []), {"at": at, "by": by, "to": to}]}
            if folder.exists(f"{qid}.json"):
                write_atomic(self.folder, f"{qid}.json", [json.dumps(meta, indent=1, sort_keys=True).encode("utf-8")], dir_fd=folder.fd)
            return validate(meta, qid)

    def delete(self, qid: str) -> None:
        """Remove an entry: metadata first (so it is no longer listed), then the message."""
        with self._locked(qid) as (folder, _fd, _entry):
            folder.unlink(f"{qid}.json")
            folder.unlink(f"{qid}.eml")

    def sweep(self, older_than: timedelta = SWEEP_AGE) -> list[str]:
        """Remove what a writer killed mid-store left (SIGKILL, a power cut): hidden temporary files, and a
        message renamed into place whose metadata never followed. Only files older than OLDER_THAN (no
        writer takes that long); such leftovers are never listed, so nothing visible changes. Their names."""
        cutoff = datetime.now(UTC).timestamp() - older_than.total_seconds()
        gone = []
        try:
            with self._open() as folder:
                names = set(folder.names())
                for name in sorted(names):
                    stray = name.startswith(".") and name.endswith(".tmp")
                    half = name.endswith(".eml") and ID_PATTERN.match(name[:-4]) and f"{name[:-4]}.json" not in names
                    if not (stray or half):
                        continue
                    try:
                        st = os.stat(name, dir_fd=folder.fd, follow_symlinks=False)
                        if st.st_mtime < cutoff:
                            folder.unlink(name)
                            gone.append(name)
                    except FileNotFoundError:
                        continue
        except FileNotFoundError:
            return []
        return gone

    def purge(self, older_than: timedelta, now: datetime | None = None) -> tuple[list[str], list[BadEntry | Busy]]:
        """Delete every entry created more than OLDER_THAN ago; return their ids and the entries skipped (bad, busy).
        What killed writers left behind (sweep) goes too."""
        self.sweep()
        good, skipped = self.entries()
        bad: list[BadEntry | Busy] = list(skipped)
        try:
            limit = (now or datetime.now(UTC)) - older_than
        except OverflowError:
            return [], bad  # longer ago than any date: nothing is that old
        gone = []
        for entry in good:
            if entry.created < limit:
                try:
                    self.delete(entry.id)
                except NotFound:
                    continue  # removed by someone else meanwhile
                except (BadEntry, Busy) as exc:
                    bad.append(exc)  # locked for long, or its message is not ours (a symlink planted since the listing, ...)
                    continue
                gone.append(entry.id)
        return gone, bad


def open_store(config: QuarantineConfig) -> FolderStore | PgStore:
    """The quarantine store the config names: PostgreSQL when [quarantine] store is a DSN, else the folder at dir.
    Both have the same methods (store, entries, get, open_message, release, delete, purge)."""
    if config.store:
        from .pgstore import PgStore

        return PgStore(config.store)
    return FolderStore(config.dir)


# The same as functions of a folder path, for callers that have only the path.


def entries(folder: str) -> list[dict[str, Any]]:
    return [entry.meta for entry in FolderStore(folder).entries()[0]]


def load(folder: str, qid: str) -> dict[str, Any]:
    return FolderStore(folder).get(qid).meta


def release(
    folder: str,
    qid: str,
    by: str,
    send: Callable[[bytes, str, list[str]], None],
    recipients: list[str] | None = None,
    force: bool = False,
    now: datetime | None = None,
) -> dict[str, Any]:
    return FolderStore(folder).release(qid, by, send, recipients, force, now).meta
