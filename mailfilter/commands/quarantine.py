"""`mailfilter quarantine list|show|release|delete|purge`: what was held, and giving it back."""

from __future__ import annotations

import json
import os
import pwd
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from ..actions import quarantine as store
from ..message import printable

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """`30d`, `12h`, `90m`, `3600s`, `2w`."""
    m = _DURATION.match(text.strip())
    if not m:
        raise click.BadParameter(f"{text!r}: use a number and a unit, like 30d, 12h, 90m")
    return timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})


def parse_since(text: str, now: datetime) -> datetime:
    """A duration back from now (`7d`), or a date or time (`2026-11-20`, `2026-11-20T08:00`, taken as UTC)."""
    if _DURATION.match(text.strip()):
        return now - parse_duration(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r}: use a duration (7d) or a date (2026-11-20)") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def who() -> str:
    """The admin releasing: the user behind sudo if any, else the running user."""
    return os.environ.get("SUDO_USER") or pwd.getpwuid(os.getuid()).pw_name


def reason(meta: dict[str, Any]) -> str:
    if meta.get("reason") == "virus":
        return ", ".join(meta.get("virus_names") or ["virus"])
    score = meta.get("spam_score")
    return f"spam {score:.1f}" if isinstance(score, (int, float)) else "spam"


def row(meta: dict[str, Any]) -> str:
    released = " (released)" if meta.get("released") else ""
    return "  ".join(
        [
            meta.get("id", "?"),
            meta.get("created", "?")[:16].replace("T", " "),
            printable(reason(meta), 40) + released,
            "<" + printable(meta.get("sender", ""), 60) + ">",
            printable(",".join(meta.get("recipients", [])), 80),
            printable(meta.get("subject", ""), 60),
            f"{meta.get('size', 0)}B",
        ]
    )


def _folder(obj: Any) -> str:
    return obj.load().quarantine.dir


def _fail(exc: store.QuarantineError) -> None:
    raise click.ClickException(str(exc))


@click.group()
def quarantine() -> None:
    """List, show, release and delete held messages; purge old ones."""


@quarantine.command("list")
@click.option("--since", metavar="WHEN", help="Only entries since a date (2026-11-20) or for a duration back (7d).")
@click.option("--reason", "why", type=click.Choice(["virus", "spam"]), help="Only viruses, or only spam.")
@click.option("--recipient", metavar="ADDR", help="Only entries for this recipient.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per entry and line.")
@click.pass_obj
def list_cmd(obj: Any, since: str | None, why: str | None, recipient: str | None, as_json: bool) -> None:
    """Held messages, newest first: id, date, reason, sender, recipients, subject, size."""
    now = datetime.now(UTC)
    limit = parse_since(since, now).isoformat(timespec="seconds") if since else ""
    for meta in store.entries(_folder(obj)):
        if meta.get("created", "") < limit or (why and meta.get("reason") != why):
            continue
        if recipient and recipient.lower() not in (r.lower() for r in meta.get("recipients", [])):
            continue
        click.echo(json.dumps(meta, sort_keys=True) if as_json else row(meta))


@quarantine.command()
@click.argument("qid", metavar="ID")
@click.option("--raw", is_flag=True, help="Print the whole message as it was received.")
@click.pass_obj
def show(obj: Any, qid: str, raw: bool) -> None:
    """The metadata and the header of a held message (or all of it with --raw)."""
    folder = _folder(obj)
    try:
        meta = store.load(folder, qid)
        with open(store.message_path(folder, qid), "rb") as fh:
            data = fh.read()
    except (store.QuarantineError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    if raw:
        sys.stdout.buffer.write(data)
        return
    for key in ("id", "created", "reason", "virus_names", "spam_score", "spam_tests", "sender", "recipients", "queue_id", "size"):
        click.echo(f"{key + ':':14} {printable(json.dumps(meta.get(key)) if not isinstance(meta.get(key), str) else meta[key], 300)}")
    for release in meta.get("released", []):
        click.echo(
            f"{'released:':14} {printable(release['at'])} by {printable(release['by'])} to {printable(','.join(release['to']), 200)}"
        )
    click.echo("")
    head = data.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
    for line in head.decode("utf-8", "replace").splitlines():
        click.echo(printable(line, 1000))


@quarantine.command()
@click.argument("qid", metavar="ID")
@click.option("--to", "recipients", multiple=True, metavar="RCPT", help="Deliver to these instead of the original recipients.")
@click.option("--force", is_flag=True, help="Release even a virus.")
@click.pass_obj
def release(obj: Any, qid: str, recipients: tuple[str, ...], force: bool) -> None:
    """Reinject a held message through sendmail, as received plus an X-Mailfilter-Released header.

    The entry stays (marked released) until deleted or purged. A virus is refused without --force.
    """
    from ..actions import reinject

    config = obj.load()

    def send(data: bytes, sender: str, to: list[str]) -> None:
        reinject.sendmail(data, sender, to, config.delivery)

    try:
        meta = store.release(config.quarantine.dir, qid, who(), send, list(recipients) or None, force)
    except (store.QuarantineError, reinject.DeliveryError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"released {qid} to {printable(','.join(meta['released'][-1]['to']), 300)}")


@quarantine.command()
@click.argument("qid", metavar="ID")
@click.pass_obj
def delete(obj: Any, qid: str) -> None:
    """Remove a held message for good."""
    try:
        store.delete(_folder(obj), qid)
    except store.QuarantineError as exc:
        _fail(exc)
    click.echo(f"deleted {qid}")


@quarantine.command()
@click.option("--older-than", "age", required=True, metavar="AGE", help="Like 30d, 12h: entries created longer ago go.")
@click.pass_obj
def purge(obj: Any, age: str) -> None:
    """Delete every entry older than AGE (systemd/mailfilter-purge.timer runs this daily)."""
    gone = store.purge(_folder(obj), parse_duration(age))
    click.echo(f"purged {len(gone)} message(s) older than {age}")
