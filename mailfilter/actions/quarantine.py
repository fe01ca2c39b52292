"""The quarantine store: each held message is ID.eml (the bytes as received) and ID.json (metadata).

Writers (store, release, delete, purge; in many pipe processes and milter
threads at once) update an entry's metadata only under an exclusive lock on its
.eml, and replace the .json atomically, so no update is lost.

Writes are durable before they are reported: a temporary name in the same
folder (hidden, so never listed), fsync, rename, fsync of the folder. The
message is renamed into place before its metadata, and a listing goes by the
metadata, so a half-written entry is never seen. Files are 0600, the folder 0700.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from .. import message as msgmod
from ..model import Decision, Envelope, ScanResults, SpamReport, Verdict, VirusReport
from ..spool import Spool


class QuarantineError(Exception):
    """The message could not be stored durably."""


def new_id(now: datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(5)


def write_atomic(folder: str, name: str, chunks: Iterable[bytes], mode: int = 0o600) -> None:
    """Write CHUNKS to FOLDER/NAME via a hidden temporary file, fsync, rename, fsync the folder."""
    tmp = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(folder, name))
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
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
    spam, virus = results.spam, results.virus
    scored = isinstance(spam, SpamReport)
    return {
        "reason": "virus" if decision.verdict is Verdict.VIRUS else "spam",
        "verdict": decision.verdict.value,
        "virus_names": list(virus.names) if isinstance(virus, VirusReport) else [],
        "spam_score": spam.score if scored else None,
        "spam_threshold": spam.threshold if scored else None,
        "spam_tests": list(spam.tests) if scored else [],
        "sender": envelope.sender,
        "recipients": list(envelope.recipients),
        "queue_id": envelope.queue_id,
        "subject": msgmod.subject(parsed),
        "message_id": msgmod.message_id(parsed),
        "headers": [list(h) for h in decision.headers],
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


# --- the store as an admin sees it: list, show, release, delete, purge -----------------------------

ID_PATTERN = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{10}$")


class NotFound(QuarantineError):
    """No such quarantine id."""


class Refused(QuarantineError):
    """The operation needs --force (releasing a virus)."""


def _check_id(qid: str) -> str:
    if not ID_PATTERN.match(qid):
        raise NotFound(f"{qid!r} is not a quarantine id (like 20261127T120000Z-0a1b2c3d4e)")
    return qid


def entries(folder: str) -> list[dict[str, Any]]:
    """Every complete entry's metadata, newest first. Hidden temporary files are never read."""
    out = []
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    for name in names:
        if name.startswith(".") or not name.endswith(".json") or not ID_PATTERN.match(name[:-5]):
            continue
        try:
            with open(os.path.join(folder, name), encoding="utf-8") as fh:
                out.append(json.load(fh))
        except (OSError, ValueError):
            continue  # deleted meanwhile, or damaged: not an entry to show
    return sorted(out, key=lambda meta: meta.get("created", ""), reverse=True)


def load(folder: str, qid: str) -> dict[str, Any]:
    try:
        with open(os.path.join(folder, f"{_check_id(qid)}.json"), encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise NotFound(f"no message {qid} in {folder}") from None


def message_path(folder: str, qid: str) -> str:
    return os.path.join(folder, f"{_check_id(qid)}.eml")


@contextlib.contextmanager
def locked(folder: str, qid: str) -> Iterator[dict[str, Any]]:
    """Hold the entry's lock and yield its metadata; what the block changes in it is written back atomically.

    The lock is taken on the .eml file, which is never replaced (the .json is,
    by rename), so every writer (release, delete, another process) serialises on it.
    """
    try:
        fd = os.open(message_path(folder, qid), os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise NotFound(f"no message {qid} in {folder}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        meta = load(folder, qid)
        before = json.dumps(meta, sort_keys=True)
        yield meta
        after = json.dumps(meta, indent=1, sort_keys=True)
        if after != before and os.path.exists(os.path.join(folder, f"{qid}.json")):
            write_atomic(folder, f"{qid}.json", [after.encode("utf-8")])
    finally:
        os.close(fd)


def release(
    folder: str,
    qid: str,
    by: str,
    send: Callable[[bytes, str, list[str]], None],
    recipients: list[str] | None = None,
    force: bool = False,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Reinject the original bytes, with one header saying who released it, to the original recipients
    (or RECIPIENTS). A virus needs FORCE. The entry stays, marked released, until purged."""
    now = now or datetime.now(UTC)
    with locked(folder, qid) as meta:
        if meta.get("reason") == "virus" and not force:
            names = ", ".join(meta.get("virus_names", [])) or "a virus"
            raise Refused(f"{qid} holds {names}: releasing it needs --force")
        to = recipients or meta["recipients"]
        stamp = f"X-Mailfilter-Released: {msgmod.header_value(by, 100)} on {now.isoformat(timespec='seconds')} (quarantine id {qid})"
        with open(message_path(folder, qid), "rb") as fh:
            original = fh.read()
        eol = b"\r\n" if original[:4096].count(b"\r\n") else b"\n"
        send(stamp.encode("ascii", "replace") + eol + original, meta["sender"], list(to))
        meta.setdefault("released", []).append({"at": now.isoformat(timespec="seconds"), "by": by, "to": list(to)})
        return meta


def delete(folder: str, qid: str) -> None:
    """Remove an entry: metadata first (so it is no longer listed), then the message."""
    with locked(folder, qid):
        os.unlink(os.path.join(folder, f"{qid}.json"))
        os.unlink(message_path(folder, qid))


def purge(folder: str, older_than: timedelta, now: datetime | None = None) -> list[str]:
    """Delete every entry created more than OLDER_THAN ago; return their ids."""
    limit = ((now or datetime.now(UTC)) - older_than).isoformat(timespec="seconds")
    gone = []
    for meta in entries(folder):
        if meta.get("created", "") < limit:
            try:
                delete(folder, meta["id"])
            except NotFound:
                continue  # removed by someone else meanwhile
            gone.append(meta["id"])
    return gone
