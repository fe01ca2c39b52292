"""The quarantine store: each held message is ID.eml (the bytes as received) and ID.json (metadata).

Writes are durable before they are reported: a temporary name in the same
folder (hidden, so never listed), fsync, rename, fsync of the folder. The
message is renamed into place before its metadata, and a listing goes by the
metadata, so a half-written entry is never seen. Files are 0600, the folder 0700.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
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
