"""The quarantine in PostgreSQL ([quarantine] store = "postgresql://..."): one store for a fleet of MX hosts.

The same methods as FolderStore (store, entries, get, open_message, release, delete, purge), so the
doors, the tools and the web console do not know which one they talk to. An entry is one row: the
message exactly as received (bytea), the metadata the folder keeps in ID.json (jsonb, plus the host that
stored it), and its releases in a table of their own. store() returns only after COMMIT, so the entry is
durable before the filter reports success; any failure is a QuarantineError (the message is deferred).

A release locks the entry's row (SELECT ... FOR UPDATE) for as long as it delivers and records: two
admins releasing the same entry from two hosts are served one after the other, each request delivers
once and both are recorded. A lock held longer than held.LOCK_WAIT is Busy, as with the folder.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

from .. import message as msgmod
from .. import pg
from ..spool import Spool
from . import quarantine as q
from .held import LOCK_WAIT, BadEntry, Entry, validate

_ENTRY = """SELECT q.id, q.meta, coalesce((SELECT json_agg(json_build_object('at', r.at_text, 'by', r.by_whom, 'to', r.recipients)
              ORDER BY r.serial) FROM (SELECT serial, by_whom, recipients,
              to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"+00:00"') AS at_text
              FROM mailfilter_release WHERE qid = q.id) r), '[]'::json) AS released
            FROM mailfilter_quarantine q"""

_WITH_MESSAGE = _ENTRY.replace("SELECT q.id", "SELECT q.message, q.id", 1) + " WHERE q.id = %s"


class PgStore:
    """The quarantine as rows of mailfilter_quarantine (see pg.MIGRATIONS)."""

    def __init__(self, dsn: str, host: str | None = None) -> None:
        self.dsn = dsn
        self.where = pg.where(dsn)
        self.host = host or os.uname().nodename

    @contextlib.contextmanager
    def _db(self) -> Iterator[Any]:
        try:
            with pg.CONNECTIONS.connection(self.dsn) as conn:
                yield conn
        except pg.DatabaseError as exc:
            raise q.QuarantineError(str(exc)) from None

    def store(self, message: Spool, meta: dict[str, Any], now: datetime | None = None) -> str:
        """Store MESSAGE with META; return its id once the row is committed."""
        from psycopg.types.json import Jsonb

        now = now or datetime.now(UTC)
        qid = q.new_id(now)
        record = {"id": qid, "created": now.isoformat(timespec="seconds"), "size": message.size, **meta, "host": self.host}
        data = message.read()
        with self._db() as conn:
            conn.execute(
                "INSERT INTO mailfilter_quarantine (id, created, host, size, reason, meta, message) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (qid, now, self.host, message.size, str(meta.get("reason", "")), Jsonb(record), data),
            )
        return qid

    @staticmethod
    def _entry(qid: str, meta: Any, released: Any) -> Entry:
        if not isinstance(meta, dict):
            raise BadEntry(qid, "damaged metadata: not a JSON object")
        try:
            return validate({**meta, "released": released}, qid)
        except ValueError as exc:
            raise BadEntry(qid, f"damaged metadata: {exc}") from None

    def entries(self) -> tuple[list[Entry], list[BadEntry]]:
        """Every entry, newest first, and every entry skipped as bad."""
        good, bad = [], []
        with self._db() as conn:
            rows = conn.execute(f"{_ENTRY} ORDER BY q.created DESC, q.id DESC").fetchall()
        for qid, meta, released in rows:
            try:
                good.append(self._entry(qid, meta, released))
            except BadEntry as exc:
                bad.append(exc)
        return good, bad

    def get(self, qid: str) -> Entry:
        q._check_id(qid)
        with self._db() as conn:
            row = conn.execute(f"{_ENTRY} WHERE q.id = %s", (qid,)).fetchone()
        if row is None:
            raise q.NotFound(f"no message {qid} in {self.where}")
        return self._entry(*row)

    @contextlib.contextmanager
    def open_message(self, qid: str) -> Iterator[tuple[Entry, BinaryIO]]:
        """The entry and its message (read in one statement with its metadata)."""
        q._check_id(qid)
        with self._db() as conn:
            row = conn.execute(_WITH_MESSAGE, (qid,)).fetchone()
        if row is None:
            raise q.NotFound(f"no message {qid} in {self.where}")
        data, rid, meta, released = row
        entry = self._entry(rid, meta, released)
        with io.BytesIO(bytes(data)) as fh:
            yield entry, fh

    @contextlib.contextmanager
    def _locked(self, conn: Any, qid: str) -> Iterator[tuple[bytes, Entry]]:
        """Lock the entry's row for this transaction: Busy after LOCK_WAIT, NotFound when it is gone."""
        import psycopg

        q._check_id(qid)
        conn.execute(f"SET LOCAL lock_timeout = {int(LOCK_WAIT * 1000)}")
        try:
            row = conn.execute("SELECT message FROM mailfilter_quarantine WHERE id = %s FOR UPDATE", (qid,)).fetchone()
        except psycopg.errors.LockNotAvailable:
            raise q.Busy(f"{qid}: locked by another release or delete for {LOCK_WAIT:g} s; try again") from None
        if row is None:
            raise q.NotFound(f"no message {qid} in {self.where}")
        meta, released = conn.execute(f"{_ENTRY} WHERE q.id = %s", (qid,)).fetchone()[1:]
        yield bytes(row[0]), self._entry(qid, meta, released)

    def release(
        self,
        qid: str,
        by: str,
        send: Callable[[bytes, str, list[str]], None],
        recipients: list[str] | None = None,
        force: bool = False,
        now: datetime | None = None,
    ) -> Entry:
        """As FolderStore.release: the original bytes plus one X-Mailfilter-Released header, recorded in the same
        transaction that holds the row's lock (a failed delivery records nothing)."""
        from psycopg.types.json import Jsonb

        now = now or datetime.now(UTC)
        with self._db() as conn, self._locked(conn, qid) as (original, entry):
            if entry.reason == "virus" and not force:
                raise q.Refused(f"{qid} holds {', '.join(entry.virus_names) or 'a virus'}: releasing it needs --force")
            if entry.reason == "unscannable" and not force:
                raise q.Refused(f"{qid} could not be scanned completely (it may hide a virus): releasing it needs --force")
            if entry.reason == "banned" and not force:
                raise q.Refused(f"{qid} holds a banned attachment (a program, a script): releasing it needs --force")
            to = list(recipients or entry.recipients)
            at = now.isoformat(timespec="seconds")
            stamp = f"X-Mailfilter-Released: {msgmod.header_value(by, 100)} on {at} (quarantine id {qid})"
            eol = b"\r\n" if original[:4096].count(b"\r\n") else b"\n"
            send(stamp.encode("ascii", "replace") + eol + original, entry.sender, to)
            conn.execute(
                "INSERT INTO mailfilter_release (qid, at, by_whom, recipients, host) VALUES (%s, %s, %s, %s, %s)",
                (qid, now.replace(microsecond=0), by, Jsonb(to), self.host),
            )
        return self.get(qid)

    def delete(self, qid: str) -> None:
        with self._db() as conn, self._locked(conn, qid):
            conn.execute("DELETE FROM mailfilter_quarantine WHERE id = %s", (qid,))

    def sweep(self, older_than: timedelta | None = None) -> list[str]:
        """Nothing to sweep: a row is written in one transaction, whole or not at all."""
        return []

    def purge(self, older_than: timedelta, now: datetime | None = None) -> tuple[list[str], list[BadEntry | q.Busy]]:
        """Delete every entry created more than OLDER_THAN ago; an entry being released now is left for the next purge."""
        try:
            limit = (now or datetime.now(UTC)) - older_than
        except OverflowError:
            return [], []
        with self._db() as conn:
            rows = conn.execute(
                "DELETE FROM mailfilter_quarantine WHERE id IN"
                " (SELECT id FROM mailfilter_quarantine WHERE created < %s FOR UPDATE SKIP LOCKED) RETURNING id",
                (limit,),
            ).fetchall()
        return sorted(row[0] for row in rows), []

    def usage(self) -> tuple[int, int]:
        """(messages, bytes) held."""
        with self._db() as conn:
            count, size = conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM mailfilter_quarantine").fetchone()
        return int(count), int(size)
