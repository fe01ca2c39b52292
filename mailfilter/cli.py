"""The click CLI: `mailfilter scan`, `mailfilter milter`, `mailfilter worker`, `mailfilter config`, and help for `mailfilter pipe`.

`pipe` itself never runs through click (see entry.py); its command here only
documents it, so `mailfilter --help` lists every door.
"""

from __future__ import annotations

import sys

import click

from . import __version__
from . import config as configmod
from .commands.check import check
from .commands.daily import report
from .commands.db import db
from .commands.digest import digest
from .commands.learn import learn
from .commands.quarantine import quarantine
from .commands.web import web


class Context:
    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path

    def load(self) -> configmod.Config:
        try:
            return configmod.load(self.config_path)
        except configmod.ConfigError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-c",
    "--config",
    "config_path",
    metavar="PATH",
    help=f"TOML config file (default: ${configmod.ENV_VAR} or {configmod.DEFAULT_PATH}).",
)
@click.version_option(__version__, prog_name="mailfilter")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """SpamAssassin and ClamAV for Postfix: one scan pipeline behind a pipe(8) filter and a terminal scanner."""
    ctx.obj = Context(config_path)


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file, one per line.")
@click.pass_obj
def scan(obj: Context, files: tuple[str, ...], as_json: bool) -> None:
    """Scan message files with spamd and ClamAV; deliver or hold nothing.

    Exit status: 0 all clean, 1 spam, a virus or unscannable, 2 an error (a scanner down, a file unreadable).
    """
    from . import log
    from .doors import scan as door

    config = obj.load()
    log.configure("mailfilter/scan", config.log, stderr=True)
    sys.exit(door.run(list(files), config, as_json, click.echo))


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
def pipe() -> None:
    """Filter one message from stdin for Postfix pipe(8).

    \b
    mailfilter pipe [-q QUEUE_ID] -f SENDER -- RECIPIENT...
    Exit 0 delivered or held, 75 deferred, 69 rejected (reject policy only).
    See `mailfilter pipe --help`.
    """
    # Reached only when entry.py did not dispatch (for example: called as a library).
    from .doors import pipe as door

    sys.exit(door.main(sys.argv[1:], sys.stdin.buffer, sys.stdout))


@cli.command()
@click.option("--socket", "socket_spec", metavar="SPEC", help="unix:/PATH or inet:PORT@HOST (default: [milter] socket).")
@click.pass_obj
def milter(obj: Context, socket_spec: str | None) -> None:
    """Run the milter daemon for Postfix's smtpd_milters.

    \b
    main.cf:  smtpd_milters = unix:/run/mailfilter/milter.sock
              milter_default_action = tempfail
    Logs to syslog (facility mail). Tells systemd it is ready (Type=notify) once the
    socket listens; on SIGTERM it stops accepting and lets messages in flight finish.
    """
    from . import log
    from .doors import milter as door

    config = obj.load()
    log.configure("mailfilter/milter", config.log, stderr=False)
    try:
        status = door.serve(config, socket_spec)
    except door.ServeError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(status)


@cli.command()
@click.option("--socket", "socket_path", metavar="PATH", help="unix socket to listen on (default: [pipe] worker).")
@click.pass_obj
def worker(obj: Context, socket_path: str | None) -> None:
    """Keep the pipeline loaded for `mailfilter pipe` (faster pipe(8) filtering).

    \b
    Each `mailfilter pipe` process hands its message to the worker over [pipe] worker
    (/run/mailfilter-pipe/worker.sock) and prints the answer; with no worker listening
    it filters the message itself. Run it as the user of pipe(8)'s user= and with the
    same config file (systemd/mailfilter-worker.service). Logs to syslog (facility
    mail); on SIGTERM it stops accepting and lets messages in flight finish.
    """
    from . import log
    from .doors import worker as door

    config = obj.load()
    try:
        door.refuse_root()  # before the log file is opened: as root it would become root's
        log.configure("mailfilter/worker", config.log, stderr=False)
        status = door.serve(config, socket_path)
    except door.WorkerError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(status)


@cli.command()
@click.option("--listen", metavar="HOST:PORT", help="where to listen (default: [smtp] listen, 127.0.0.1:10027).")
@click.pass_obj
def smtp(obj: Context, listen: str | None) -> None:
    """Run the after-queue SMTP door for Postfix's content_filter (FILTER_README's advanced method).

    \b
    main.cf:  content_filter = smtp-mailfilter:[127.0.0.1]:10027
    master.cf: the smtp-mailfilter transport and the 127.0.0.1:10028 smtpd (master.cf.example, C)
    Replies 250 only once the message is reinjected into [smtp] reinject (or quarantined, or
    refused on purpose); any failure is a 4xx and Postfix keeps the message queued. Run it as
    its own user (systemd/mailfilter-smtp.service). Logs to syslog (facility mail); tells systemd
    it is ready (Type=notify); on SIGTERM it stops accepting and lets messages in flight finish.
    [smtp] protocol = "lmtp": LMTP to Postfix's lmtp client instead, one reply per recipient
    (the lmtp-mailfilter transport in master.cf.example, C).
    """
    from . import log
    from .doors import smtp as door

    config = obj.load()
    try:
        door.refuse_root()  # before the log file is opened: as root it would become root's
        log.configure("mailfilter/smtp", config.log, stderr=False)
        status = door.serve(config, listen)
    except door.ServeError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(status)


cli.add_command(check)
cli.add_command(quarantine)
cli.add_command(report)
cli.add_command(db)
cli.add_command(learn)
cli.add_command(web)
cli.add_command(digest)


@cli.command("config")
@click.option("--defaults", is_flag=True, help="Print every key with its default and description.")
@click.pass_obj
def config_cmd(obj: Context, defaults: bool) -> None:
    """Check the configuration file and print where it came from, or the documented defaults."""
    if defaults:
        click.echo(configmod.describe(), nl=False)
        return
    config = obj.load()
    click.echo(f"configuration OK: {config.source}")
