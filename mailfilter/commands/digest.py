"""`mailfilter digest [--dry-run] [--json]`: mail each recipient the list of what was held for them.

Run daily (systemd/mailfilter-digest.timer). Each recipient of a held entry gets one plain-text message
listing the entries held for them since their last digest (date, sender, subject) and, for spam, a release
link ([web] public_url + a signed token, good for [web] link_days, web/links.py) that releases that copy to
that recipient only, once. Viruses, unscannable and banned messages are listed as held, without a link.
No public_url: the list goes out without links. Entries already released to the recipient are left out.

State: [report] state_dir/digest-state.json, recipient -> the creation time of the newest entry their last
digest listed (and the ids listed of that second); written (atomically) after each digest sent, so a failed
send is listed again next time.
--dry-run and --json send nothing and keep the state as it was. Works on either quarantine store.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

import click

from .. import message as msgmod
from ..actions.held import Entry
from ..actions.quarantine import write_atomic
from ..config import Config

STATE_FILE = "digest-state.json"
RELEASABLE = ("spam",)  # web/public.py releases these by link, nothing else
SUBJECT_TEXT = 120


def load_state(state_dir: str) -> dict[str, dict[str, Any]]:
    """Recipient -> {"until": ISO time of the newest entry listed, "ids": the ids listed that were created then}."""
    try:
        with open(os.path.join(state_dir, STATE_FILE), encoding="utf-8") as fh:
            state = json.load(fh)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot read {os.path.join(state_dir, STATE_FILE)}: {exc}") from None
    if not isinstance(state, dict):
        return {}
    return {k: v for k, v in state.items() if isinstance(v, dict) and isinstance(v.get("until"), str) and isinstance(v.get("ids"), list)}


def save_state(state_dir: str, state: dict[str, dict[str, Any]]) -> None:
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    write_atomic(state_dir, STATE_FILE, [json.dumps(state, indent=1, sort_keys=True).encode("utf-8")])


def listed_until(held: list[Entry]) -> dict[str, Any]:
    """The state after a digest listing HELD: entries are created to the second, so the ids of the last second count."""
    until = max(e.created for e in held)
    return {"until": until.isoformat(), "ids": sorted(e.id for e in held if e.created == until)}


def pending(entries: Iterable[Entry], state: dict[str, dict[str, Any]]) -> dict[str, list[Entry]]:
    """Recipient (lower case) -> entries held for them since their last digest, oldest first."""
    by_recipient: dict[str, list[Entry]] = {}
    for entry in entries:
        released_to = {r.lower() for release in entry.released for r in release.to}
        created = entry.created.isoformat()
        for recipient in {r.lower() for r in entry.recipients} - released_to:
            last = state.get(recipient)
            if last is None or created > last["until"] or (created == last["until"] and entry.id not in last["ids"]):
                by_recipient.setdefault(recipient, []).append(entry)
    return {r: sorted(es, key=lambda e: (e.created, e.id)) for r, es in sorted(by_recipient.items())}


def link_for(config: Config, key: bytes | None, entry: Entry, recipient: str, now: datetime) -> str | None:
    if key is None or not config.web.public_url or entry.reason not in RELEASABLE:
        return None
    from ..web import links

    expires = int((now + timedelta(days=config.web.link_days)).timestamp())
    return links.url(config.web.public_url, links.make(key, entry.id, recipient, expires))


def compose(config: Config, recipient: str, listed: list[tuple[Entry, str | None]], now: datetime) -> bytes:
    lines = [f"{len(listed)} message(s) addressed to you were held by the mail filter since your last digest.", ""]
    for entry, link in listed:
        lines.append(f"{entry.created:%Y-%m-%d %H:%M} UTC  from {msgmod.printable(entry.sender or '<>', 100)}")
        lines.append(f"  Subject: {msgmod.printable(entry.subject, SUBJECT_TEXT)}")
        if link:
            lines.append(f"  Release it to your mailbox: {link}")
        else:
            lines.append(f"  Held as {entry.reason}: it cannot be released by link; ask your mail administrator.")
        lines.append("")
    if any(link for _, link in listed):
        lines.append(f"Each link works once, for {config.web.link_days} days, and releases the message to you only.")
    mail = EmailMessage()
    mail["From"] = config.report.sender
    mail["To"] = recipient
    mail["Subject"] = f"Quarantine digest: {len(listed)} message(s) held for you"
    mail["Date"] = format_datetime(now)
    mail["Message-ID"] = make_msgid(domain="mailfilter.localhost")
    mail["Auto-Submitted"] = "auto-generated"
    mail.set_content("\n".join(lines) + "\n", charset="utf-8", cte="8bit")  # lines stay whole: the links can be copied
    return mail.as_bytes()


@click.command()
@click.option("--dry-run", is_flag=True, help="Say who would get a digest and how many entries; send nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print what would be sent, one JSON object per recipient; send nothing.")
@click.pass_obj
def digest(obj: Any, dry_run: bool, as_json: bool) -> None:
    """Mail each recipient the list of messages held for them since their last digest, with release links.

    \b
    Spam gets a link ([web] public_url + a signed token, good for [web] link_days) that releases
    that message to that recipient only, once; viruses and other held mail are listed without one.
    --json prints {"recipient": ADDRESS, "entries": [{"id", "subject", "link"}, ...]} per line.
    """
    from ..actions import reinject
    from ..actions.quarantine import QuarantineError, open_store

    config = obj.load()
    if not config.quarantine.store:
        from .quarantine import become_owner

        become_owner(config.quarantine.dir)  # as root: the state it writes stays the filter's, as the quarantine tools do
    now = datetime.now(UTC)
    try:
        entries, _bad = open_store(config.quarantine).entries()
    except (OSError, QuarantineError) as exc:
        raise click.ClickException(f"cannot read the quarantine: {exc}") from None
    state = load_state(config.report.state_dir)
    key = None
    if config.web.public_url:
        from ..web import secret

        try:
            key = secret.load(config.web.secret_file)
        except secret.SecretError as exc:
            raise click.ClickException(f"the key of release links: {exc}") from None
    failed = 0
    for recipient, held in pending(entries, state).items():
        listed = [(entry, link_for(config, key, entry, recipient, now)) for entry in held]
        if as_json:
            out = [{"id": e.id, "subject": e.subject, "link": link} for e, link in listed]
            click.echo(json.dumps({"recipient": recipient, "entries": out}, ensure_ascii=False))
            continue
        if dry_run:
            click.echo(f"{recipient}: {len(listed)} entr{'y' if len(listed) == 1 else 'ies'}, {sum(1 for _, k in listed if k)} with a link")
            continue
        try:
            reinject.sendmail(compose(config, recipient, listed, now), config.report.sender, [recipient], config.delivery)
        except (reinject.DeliveryError, ValueError) as exc:  # ValueError: an address the email package refuses
            failed += 1
            click.echo(f"{recipient}: digest not sent: {exc}", err=True)
            continue
        state[recipient] = listed_until(held)
        save_state(config.report.state_dir, state)
        click.echo(f"{recipient}: digest sent, {len(listed)} entr{'y' if len(listed) == 1 else 'ies'}")
    sys.exit(1 if failed else 0)
