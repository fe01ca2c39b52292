"""The journal in PostgreSQL ([report] journal_store): every host's events in one table, for a fleet's report.

record() adds one event with the host that filtered it; read() gives a day's events of every host, each
with its "host". Like the folder journal, a failure here is the caller's to log (metrics.account): it
never changes a message's fate. The connection attempt is kept short, since the bookkeeping of a `pipe`
process waits for it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from . import pg

CONNECT_TIMEOUT = 2  # seconds; the journal is never worth holding a pipe process for long


def record(dsn: str, entry: dict[str, Any], host: str | None = None) -> None:
    """Add ENTRY (see journal.event) for HOST (this host's name by default). DatabaseError when it cannot."""
    from psycopg.types.json import Jsonb

    host = host or os.uname().nodename
    with pg.CONNECTIONS.connection(dsn, CONNECT_TIMEOUT) as conn:
        conn.execute(
            "INSERT INTO mailfilter_journal (time, host, event) VALUES (%s, %s, %s)",
            (datetime.fromisoformat(entry["time"]), host, Jsonb({**entry, "host": host})),
        )


def read(dsn: str, since: datetime, until: datetime) -> Iterator[dict[str, Any]]:
    """Events with since <= time < until, oldest first, each with its "host"."""
    with pg.CONNECTIONS.connection(dsn) as conn:
        rows = conn.execute(
            "SELECT host, event FROM mailfilter_journal WHERE time >= %s AND time < %s ORDER BY time, serial", (since, until)
        ).fetchall()
    for host, event in rows:
        if isinstance(event, dict):
            yield {**event, "host": host}
