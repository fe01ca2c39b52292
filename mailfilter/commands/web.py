"""`mailfilter web [serve]`, `mailfilter web adduser NAME`, `mailfilter web deluser NAME`: the quarantine console."""

from __future__ import annotations

import os
import sys
from typing import Any

import click


@click.group(invoke_without_command=True)
@click.pass_context
def web(ctx: click.Context) -> None:
    """The quarantine console: list, read, release and delete held mail in a browser.

    \b
    mailfilter web                 serve it on [web] listen (127.0.0.1:8026), as the quarantine's owner
    mailfilter web adduser NAME    add a console user or change its password (read from stdin)
    mailfilter web deluser NAME    remove a console user
    Users live in [web] users_file (argon2id hashes); sessions and release links are keyed by
    [web] secret_file (created 0600 with a random key when missing). Runs under uvicorn; refuses root.
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(serve)


@web.command()
@click.pass_obj
def serve(obj: Any) -> None:
    """Serve the console on [web] listen (the default when no subcommand is given)."""
    from .. import log
    from ..web import serve as server

    config = obj.load()
    try:
        server.refuse_root()
        log.configure("mailfilter/web", config.log, stderr=True)
        status = server.serve(config)
    except server.ServeError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(status)


def _password() -> str:
    if sys.stdin.isatty():
        first = click.prompt("Password", hide_input=True)
        if click.prompt("Again", hide_input=True) != first:
            raise click.ClickException("the two passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def _hand_over(config: Any) -> str:
    """Run as root, the users file would be root's: give it to the quarantine's owner, who runs the console."""
    if os.geteuid() != 0:
        return ""
    try:
        st = os.stat(config.quarantine.dir)
        os.chown(config.web.users_file, st.st_uid, st.st_gid)
    except OSError as exc:
        return f" (not given to the quarantine's owner: {exc.strerror or exc}; the console must be able to read it)"
    return f" (owner uid {st.st_uid}, as {config.quarantine.dir})"


@web.command()
@click.argument("name")
@click.pass_obj
def adduser(obj: Any, name: str) -> None:
    """Add console user NAME, or set a new password for it (stdin: one line; a terminal asks twice)."""
    from ..web import users

    config = obj.load()
    try:
        new = users.add(config.web.users_file, name, _password())
    except users.UserError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {config.web.users_file}: {exc.strerror or exc}") from None
    click.echo(f"{name}: {'added' if new else 'password changed'} in {config.web.users_file}{_hand_over(config)}")


@web.command()
@click.argument("name")
@click.pass_obj
def deluser(obj: Any, name: str) -> None:
    """Remove console user NAME (it can no longer log in; a session it has open lasts until it expires)."""
    from ..web import users

    config = obj.load()
    try:
        removed = users.delete(config.web.users_file, name)
    except OSError as exc:
        raise click.ClickException(f"cannot write {config.web.users_file}: {exc.strerror or exc}") from None
    if not removed:
        raise click.ClickException(f"{name}: no such user in {config.web.users_file}")
    click.echo(f"{name}: removed from {config.web.users_file}{_hand_over(config)}")
