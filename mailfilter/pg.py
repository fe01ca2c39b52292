"""PostgreSQL for a fleet: connections kept per DSN, and the versioned schema `mailfilter db init|upgrade` applies.

psycopg 3 is imported only when a DSN is configured ([quarantine] store, [report] journal_store), so a
host with folders never needs it. A connection is taken by one caller at a time (milter threads each take
their own) and given back only when its transaction ended cleanly; a broken one is closed. The schema is
never created or changed at mail time: a missing table is an error that names `mailfilter db init`.
Text shown to people names the server and database, never the DSN (it may hold a password).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

CONNECT_TIMEOUT = 5  # seconds to reach PostgreSQL (libpq's connect_timeout)
STATEMENT_TIMEOUT_MS = 30000  # no statement of ours takes long; a stuck one is an error, not a hang
IDLE = 4  # connections kept open per DSN
# A server or link that dies mid-statement is noticed in seconds, not hours: unacknowledged data for 10 s
# (tcp_user_timeout), or a silent peer after 5 s idle and 3 probes 2 s apart (keepalives), end the connection.
LINK = {
    "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10000,
}
LOCK_NAMESPACE = 0x6D66  # pg_advisory_xact_lock key of `db init|upgrade` ("mf")

# Version N is what MIGRATIONS[:N] creates; never edit a released step, add one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE mailfilter_quarantine (
            id text PRIMARY KEY,
            created timestamptz NOT NULL,
            host text NOT NULL,
            size bigint NOT NULL,
            reason text NOT NULL,
            meta jsonb NOT NULL,
            message bytea NOT NULL)""",
        "CREATE INDEX mailfilter_quarantine_created ON mailfilter_quarantine (created)",
        """CREATE TABLE mailfilter_release (
            serial bigserial PRIMARY KEY,
            qid text NOT NULL REFERENCES mailfilter_quarantine (id) ON DELETE CASCADE,
            at timestamptz NOT NULL,
            by_whom text NOT NULL,
            recipients jsonb NOT NULL,
            host text NOT NULL)""",
        "CREATE INDEX mailfilter_release_qid ON mailfilter_release (qid)",
        """CREATE TABLE mailfilter_journal (
            serial bigserial PRIMARY KEY,
            time timestamptz NOT NULL,
            host text NOT NULL,
            event jsonb NOT NULL)""",
        "CREATE INDEX mailfilter_journal_time ON mailfilter_journal (time)",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


class DatabaseError(Exception):
    """PostgreSQL cannot be reached or used; the text names the server, never the DSN."""


def where(dsn: str) -> str:
    """HOST:PORT/DBNAME of DSN, for people and logs."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(dsn)
    except Exception:  # noqa: BLE001 - an unreadable DSN is shown as such, never echoed
        return "PostgreSQL (unreadable DSN)"
    return f"PostgreSQL {parts.get('host', 'localhost')}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"


def describe(exc: BaseException) -> str:
    """The first line of a psycopg error (libpq's are long and multi-line)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class Connections:
    """Open connections by DSN, each lent to one caller at a time."""

    def __init__(self) -> None:
        self._idle: dict[str, list[Any]] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def connection(self, dsn: str, connect_timeout: int = CONNECT_TIMEOUT) -> Iterator[Any]:
        """A connection in a transaction: committed when the block ends, rolled back (and closed) when it raises.
        Every failure to reach or use the database is a DatabaseError; other exceptions pass unchanged."""
        import psycopg

        conn = self._take(dsn)
        try:
            if conn is None:
                conn = psycopg.connect(dsn, connect_timeout=connect_timeout, autocommit=True, **LINK)
            with conn.transaction():
                yield conn
        except psycopg.errors.UndefinedTable as exc:
            self._discard(conn)
            raise DatabaseError(f"{where(dsn)}: no mailfilter schema ({describe(exc)}); run `mailfilter db init`") from None
        except psycopg.Error as exc:
            self._discard(conn)
            raise DatabaseError(f"{where(dsn)}: {describe(exc)}") from exc
        except BaseException:
            if conn is not None and not conn.broken and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                self._give(dsn, conn)  # the caller's own exception: the transaction was rolled back, the connection is sound
            else:
                self._discard(conn)
            raise
        self._give(dsn, conn)

    def _take(self, dsn: str) -> Any:
        """An idle connection that still answers (a restarted server leaves dead ones), else None."""
        while True:
            with self._lock:
                idle = self._idle.get(dsn) or []
                conn = idle.pop() if idle else None
            if conn is None:
                return None
            try:
                conn.execute("SELECT 1")  # one round trip, so that a message is never deferred for a dead connection
                return conn
            except Exception:  # noqa: BLE001 - any failure: this connection is gone, try the next or a new one
                self._discard(conn)

    def _give(self, dsn: str, conn: Any) -> None:
        with self._lock:
            idle = self._idle.setdefault(dsn, [])
            if len(idle) < IDLE and not conn.closed:
                idle.append(conn)
                return
        conn.close()

    @staticmethod
    def _discard(conn: Any) -> None:
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


CONNECTIONS = Connections()


def version(conn: Any) -> int:
    """The schema version of the database CONN is connected to (0: none)."""
    exists = conn.execute("SELECT to_regclass('mailfilter_schema') IS NOT NULL").fetchone()[0]
    if not exists:
        return 0
    return conn.execute("SELECT coalesce(max(version), 0) FROM mailfilter_schema").fetchone()[0]


def upgrade(dsn: str, create: bool) -> tuple[int, int]:
    """Apply the missing migrations in one transaction under an advisory lock (two hosts at once: one
    waits, then finds nothing to do). CREATE: a database without the schema gets it (`db init`); without
    CREATE such a database is an error (`db upgrade` never creates). Returns (version before, after)."""
    with CONNECTIONS.connection(dsn) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_NAMESPACE,))
        before = version(conn)
        if before > SCHEMA_VERSION:
            newer = f"schema version {before} is newer than this mailfilter's ({SCHEMA_VERSION})"
            raise DatabaseError(f"{where(dsn)}: {newer}; upgrade mailfilter")
        if before == 0 and not create:
            raise DatabaseError(f"{where(dsn)}: no mailfilter schema; run `mailfilter db init`")
        if before == 0:
            conn.execute("CREATE TABLE mailfilter_schema (version integer PRIMARY KEY, applied timestamptz NOT NULL DEFAULT now())")
        for number in range(before + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[number - 1]:
                conn.execute(statement)
            conn.execute("INSERT INTO mailfilter_schema (version) VALUES (%s)", (number,))
        return before, SCHEMA_VERSION


def check(dsn: str) -> int:
    """The schema version of DSN's database; DatabaseError when it cannot be reached."""
    with CONNECTIONS.connection(dsn) as conn:
        return version(conn)
