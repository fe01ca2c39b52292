"""`mailfilter quarantine list|show|release|delete|purge`: what was held, and giving it back.

Started as root, every subcommand first becomes the quarantine folder's owner
(become_owner), so root never reads through a file the filter's user planted
and every file written (a release's .json) stays readable by the purge timer.
Everything printed is escaped; a bad entry is skipped with a warning (list,
purge) or refused (show, release, delete), never a traceback or a hang.
"""

from __future__ import annotations

import functools
import json
import os
import pwd
import re
import shutil
import stat
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import click

from ..actions import quarantine as store
from ..config import Config
from ..message import HEAD_LIMIT, printable
from ..record import dataclass

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
F = TypeVar("F", bound=Callable[..., None])


def parse_duration(text: str) -> timedelta:
    """`30d`, `12h`, `90m`, `3600s`, `2w`."""
    m = _DURATION.match(text.strip())
    if not m:
        raise click.BadParameter(f"{printable(text, 100)!r}: use a number and a unit, like 30d, 12h, 90m")
    try:
        return timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    except OverflowError:
        raise click.BadParameter(f"{printable(text, 100)!r}: too long ago") from None


def parse_since(text: str, now: datetime) -> datetime:
    """A duration back from now (`7d`), or a date or time (`2026-11-20`, `2026-11-20T08:00`, taken as UTC)."""
    if _DURATION.match(text.strip()):
        try:
            return now - parse_duration(text)
        except OverflowError:
            raise click.BadParameter(f"{printable(text, 100)!r}: too long ago") from None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{printable(text, 100)!r}: use a duration (7d) or a date (2026-11-20)") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def who() -> str:
    """The admin releasing: the user behind sudo if any, else the running user."""
    if os.environ.get("SUDO_USER"):
        return os.environ["SUDO_USER"]
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid {os.getuid()}"


def become_owner(folder: str) -> None:
    """Started as root: switch to the owner of FOLDER (groups, gid, then uid) before touching any entry.

    A folder owned by root needs no switch: only root can put files in it, and
    only root's files are read from it. A missing folder, a symlink or a file is refused.
    """
    if os.geteuid() != 0:
        return
    try:
        st = os.lstat(folder)
    except OSError as exc:
        raise click.ClickException(f"quarantine {folder}: {exc.strerror or exc}") from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise click.ClickException(f"quarantine {folder} is not a folder (a symlink is refused); fix [quarantine] dir")
    if st.st_uid == 0:
        return
    try:
        owner = pwd.getpwuid(st.st_uid)
    except KeyError:
        raise click.ClickException(f"quarantine {folder} belongs to uid {st.st_uid}, who has no account to run as") from None
    os.initgroups(owner.pw_name, owner.pw_gid)
    os.setgid(owner.pw_gid)
    os.setuid(owner.pw_uid)
    if os.geteuid() != owner.pw_uid or os.getuid() != owner.pw_uid:
        raise click.ClickException(f"could not become {owner.pw_name}, the owner of {folder}")


@dataclass(frozen=True)
class Tools:
    config: Config
    store: store.FolderStore | store.PgStore
    admin: str  # who runs the command (the sudo user), taken before any switch


def _tools(obj: Any) -> Tools:
    """What every subcommand starts with: the config, then the owner's rights, then the store."""
    config = obj.load()
    admin = who()
    if not config.quarantine.store:  # PostgreSQL: no folder to become the owner of
        become_owner(config.quarantine.dir)
    return Tools(config, store.open_store(config.quarantine), admin)


def _errors(command: F) -> F:
    """The CLI's one boundary: a store, entry or delivery error is one escaped line and exit 1."""
    from ..actions.reinject import DeliveryError

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except (store.QuarantineError, store.BadEntry, DeliveryError) as exc:
            raise click.ClickException(printable(str(exc), 1000)) from None
        except OSError as exc:
            text = f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc)
            raise click.ClickException(printable(text, 1000)) from None

    return run  # type: ignore[return-value]


def _warn(skipped: list[store.BadEntry] | list[store.BadEntry | store.Busy]) -> None:
    for exc in skipped:
        click.echo(f"warning: skipped {printable(str(exc), 500)}", err=True)


def reason(entry: store.Entry) -> str:
    if entry.reason == "virus":
        return ", ".join(entry.virus_names or ("virus",))
    if entry.reason == "spam":
        return f"spam {entry.spam_score:.1f}" if entry.spam_score is not None else "spam"
    return entry.reason


def row(entry: store.Entry) -> str:
    released = " (released)" if entry.released else ""
    return "  ".join(
        [
            printable(entry.id, 40),
            entry.created.astimezone(UTC).strftime("%Y-%m-%d %H:%M"),
            printable(reason(entry), 40) + released,
            "<" + printable(entry.sender, 60) + ">",
            printable(",".join(entry.recipients), 80),
            printable(entry.subject, 60),
            printable(f"{entry.size}B", 30),
        ]
    )


@click.group()
def quarantine() -> None:
    """List, show, release and delete held messages; purge old ones."""


@quarantine.command("list")
@click.option("--since", metavar="WHEN", help="Only entries since a date (2026-11-20) or for a duration back (7d).")
@click.option("--reason", "why", type=click.Choice(["virus", "spam", "unscannable"]), help="Only entries held for this reason.")
@click.option("--recipient", metavar="ADDR", help="Only entries for this recipient.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per entry and line.")
@click.pass_obj
@_errors
def list_cmd(obj: Any, since: str | None, why: str | None, recipient: str | None, as_json: bool) -> None:
    """Held messages, newest first: id, date, reason, sender, recipients, subject, size.

    A bad entry (a symlink, a FIFO, another user's file, damaged metadata) is skipped with a warning on stderr.
    """
    limit = parse_since(since, datetime.now(UTC)) if since else None
    good, bad = _tools(obj).store.entries()
    _warn(bad)
    for entry in good:
        if (limit and entry.created < limit) or (why and entry.reason != why):
            continue
        if recipient and recipient.lower() not in (r.lower() for r in entry.recipients):
            continue
        click.echo(json.dumps(entry.meta, sort_keys=True) if as_json else row(entry))


@quarantine.command()
@click.argument("qid", metavar="ID")
@click.option("--raw", is_flag=True, help="Print the whole message as it was received.")
@click.pass_obj
@_errors
def show(obj: Any, qid: str, raw: bool) -> None:
    """The metadata and the header of a held message (or all of it with --raw)."""
    with _tools(obj).store.open_message(qid) as (entry, fh):
        if raw:
            shutil.copyfileobj(fh, sys.stdout.buffer)
            sys.stdout.buffer.flush()
            return
        head = fh.read(HEAD_LIMIT)
    meta = entry.meta
    keys = ("id", "created", "reason", "virus_names", "spam_score", "spam_tests", "sender", "recipients", "queue_id", "size", "host")
    for key in keys:
        if key == "host" and "host" not in meta:
            continue  # the folder store keeps no host: it is this one
        value = meta.get(key)
        click.echo(f"{key + ':':14} {printable(value if isinstance(value, str) else json.dumps(value), 300)}")
    for done in entry.released:
        click.echo(f"{'released:':14} {printable(done.at, 40)} by {printable(done.by, 100)} to {printable(','.join(done.to), 200)}")
    click.echo("")
    for line in head.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace").splitlines():
        click.echo(printable(line, 1000))


@quarantine.command()
@click.argument("qid", metavar="ID")
@click.option("--to", "recipients", multiple=True, metavar="RCPT", help="Deliver to these instead of the original recipients.")
@click.option("--force", is_flag=True, help="Release even a virus, or a message that could not be scanned completely.")
@click.pass_obj
@_errors
def release(obj: Any, qid: str, recipients: tuple[str, ...], force: bool) -> None:
    """Reinject a held message through sendmail, as received plus an X-Mailfilter-Released header.

    The entry stays (marked released) until deleted or purged. A virus, or a message that could not be
    scanned completely, is refused without --force.
    """
    from ..actions import reinject

    tools = _tools(obj)

    def send(data: bytes, sender: str, to: list[str]) -> None:
        reinject.sendmail(data, sender, to, tools.config.delivery)

    entry = tools.store.release(qid, tools.admin, send, list(recipients) or None, force)
    click.echo(f"released {printable(qid, 40)} to {printable(','.join(entry.released[-1].to), 300)}")


@quarantine.command()
@click.argument("qid", metavar="ID")
@click.pass_obj
@_errors
def delete(obj: Any, qid: str) -> None:
    """Remove a held message for good."""
    _tools(obj).store.delete(qid)
    click.echo(f"deleted {printable(qid, 40)}")


@quarantine.command()
@click.option("--older-than", "age", required=True, metavar="AGE", help="Like 30d, 12h: entries created longer ago go.")
@click.pass_obj
@_errors
def purge(obj: Any, age: str) -> None:
    """Delete every entry older than AGE (systemd/mailfilter-purge.timer runs this daily).

    A bad entry is left alone with a warning on stderr.
    """
    older_than = parse_duration(age)
    gone, bad = _tools(obj).store.purge(older_than)
    _warn(bad)
    click.echo(f"purged {len(gone)} message(s) older than {printable(age, 40)}")
