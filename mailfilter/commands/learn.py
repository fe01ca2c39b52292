"""`mailfilter learn spam|ham [FILE...]`: teach spamd's Bayes database from messages a user sorted.

Dovecot's IMAPSieve runs it (scripts/lab) when a user moves a message into Junk (spam) or out of it
(ham), with the message on stdin. Each FILE (stdin when none) is read whole and told to spamd with
TELL; nothing is written anywhere, so a failure never loses or changes a message. Exit 0 when every
message was told, 2 with one line per failure otherwise (a file that cannot be read, spamd down or
refusing TELL). What was learnt goes to stdout, failures to stderr (Dovecot logs a program's stderr as errors).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, BinaryIO

import click

from ..scanners import learn as learner

if TYPE_CHECKING:
    from ..cli import Context

MAX_SIZE = 64 * 1024 * 1024  # a larger "message" is not mail (a disk image given by mistake)


def read(path: str, stdin: BinaryIO) -> bytes:
    """The bytes of PATH ('-': stdin); LearnError when it cannot be read, is empty or too large."""
    try:
        if path == "-":
            data = stdin.read(MAX_SIZE + 1)
        else:
            with open(path, "rb") as handle:
                data = handle.read(MAX_SIZE + 1)
    except OSError as exc:
        raise learner.LearnError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    if not data.strip():
        raise learner.LearnError(f"{path}: empty, not a message")
    if len(data) > MAX_SIZE:
        raise learner.LearnError(f"{path}: larger than {MAX_SIZE} bytes, not a message")
    return data


def scored_as(data: bytes, default: str) -> str:
    """The spamd user named by the message's first X-Spam-User field (ours: copies that arrived with it are
    removed when it is filtered), else DEFAULT."""
    from .. import message

    values = message.parse(data[: message.HEAD_LIMIT]).values("x-spam-user")
    user = values[0].decode("ascii", "replace").strip() if values else ""
    ok = user and len(user) <= 64 and all(c.isascii() and (c.isalnum() or c in "._-@+") for c in user)
    return user if ok else default


@click.command()
@click.argument("message_class", metavar="spam|ham", type=click.Choice(learner.CLASSES))
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--user", default=None, help="spamd user to teach (default: the one the message was scored as, else [spamd] user)")
@click.pass_obj
def learn(obj: Context, message_class: str, files: tuple[str, ...], user: str | None) -> None:
    """Teach spamd that messages are spam or ham (TELL; spamd needs --allow-tell and Bayes).

    \b
    mailfilter learn spam FILE...    each FILE is one message (RFC 5322, as stored in a Maildir)
    mailfilter learn ham < MESSAGE   no FILE: the message on stdin (what IMAPSieve gives)
    The spamd user taught is the one the message was scored as (our X-Spam-User field, set when
    [spamd] user or a [recipients] spamd_user applied), unless --user names one.
    Exit status: 0 every message told, 2 an error (a file unreadable, spamd down or refusing TELL).
    """
    config = obj.load()
    failed = 0
    for path in files or ("-",):
        try:
            data = read(path, sys.stdin.buffer)
            who = user if user is not None else scored_as(data, config.spamd.user)
            learnt = learner.learn(data, message_class, config.spamd, who)
        except learner.LearnError as exc:
            click.echo(f"mailfilter learn: {exc}", err=True)
            failed += 1
            continue
        news = "learnt" if learnt.did_set else "nothing new (learnt before, or spamd's Bayes is off)"
        click.echo(f"{path}: {message_class}: {news}")  # stdout: Dovecot logs a pipe program's stderr as errors
    if failed:
        sys.exit(2)
