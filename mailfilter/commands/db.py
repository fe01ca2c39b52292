"""`mailfilter db init|upgrade`: the PostgreSQL schema of [quarantine] store and [report] journal_store.

The schema is versioned (pg.MIGRATIONS) and both commands are idempotent: run them again and they say
there is nothing to do. They are the only code that creates or changes tables; the filter never does.
Run one of them once per database, from any host, before pointing the fleet at it (two at once: one waits
for the other, then finds nothing to do).
"""

from __future__ import annotations

from typing import Any

import click

from ..config import Config


def _dsns(config: Config) -> list[str]:
    """The databases the config names, each once."""
    dsns = [dsn for dsn in (config.quarantine.store, config.report.journal_store) if dsn]
    if not dsns:
        raise click.ClickException(
            'no database configured: set [quarantine] store or [report] journal_store to "postgresql://USER@HOST/DB"'
        )
    return list(dict.fromkeys(dsns))


def _apply(obj: Any, create: bool) -> None:
    from .. import pg

    for dsn in _dsns(obj.load()):
        try:
            before, after = pg.upgrade(dsn, create)
        except ImportError:
            raise click.ClickException("psycopg is not installed: install mailfilter with its dependencies") from None
        except pg.DatabaseError as exc:
            raise click.ClickException(str(exc)) from None
        if before == after:
            click.echo(f"{pg.where(dsn)}: schema version {after}, nothing to do")
        else:
            click.echo(f"{pg.where(dsn)}: schema version {before} -> {after}")


@click.group()
def db() -> None:
    """Create or upgrade the PostgreSQL schema of [quarantine] store and [report] journal_store."""


@db.command()
@click.pass_obj
def init(obj: Any) -> None:
    """Create the schema in each configured database (nothing to do when it is there; upgrades an older one)."""
    _apply(obj, create=True)


@db.command()
@click.pass_obj
def upgrade(obj: Any) -> None:
    """Bring an existing schema to this mailfilter's version; a database without one is an error (use init)."""
    _apply(obj, create=False)
