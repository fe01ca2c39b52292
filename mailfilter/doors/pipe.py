"""`mailfilter pipe -f SENDER -- RECIPIENT...`: the door for Postfix pipe(8).

The contract with pipe(8): exit 0 when the message was delivered or held, 75
(EX_TEMPFAIL) to keep it queued, 69 only for an explicit reject policy. Every
other status, a traceback included, would bounce the mail, so main() is the one
place that catches everything and turns it into 75. On failure exactly one line
`4.x.x text` (or `5.x.x text`) goes to stdout, which pipe(8) reads as the
status; on success nothing is printed.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import BinaryIO, TextIO

from ..defaults import PIPE_DEADLINE
from ..exitcodes import EX_OK, EX_TEMPFAIL, PIPE_EXIT_BY_ACTION
from ..model import Dsn, Envelope
from ..spool import Spool

USAGE = "usage: mailfilter [--config PATH] pipe [--config PATH] [-q QUEUE_ID] -f SENDER -- RECIPIENT..."
HELP = f"""{USAGE}

Filter one message from standard input for Postfix pipe(8): scan it with spamd
and ClamAV, then reinject it with `sendmail -G -i -f SENDER -- RECIPIENT...`,
quarantine it, or defer it. Exit status: 0 delivered or held, 75 deferred
(Postfix keeps the message queued), 69 rejected (only with a reject policy).
When `mailfilter worker` listens on [pipe] worker, the message is handed to it
(the same filtering, without importing the pipeline in every process).

master.cf:
  mailfilter unix - n n - 10 pipe flags=Rq user=mailfilter null_sender=
    argv=/usr/local/bin/mailfilter pipe -q ${{queue_id}} -f ${{sender}} -- ${{recipient}}
"""
DEFAULT_DEADLINE = PIPE_DEADLINE  # until the config is read


class UsageError(Exception):
    pass


class HelpRequested(Exception):
    pass


class ClientGone(Exception):
    """(In the worker) the pipe client hung up before the verdict was applied: it has deferred the
    message already, or died, and Postfix keeps it and retries. Nothing may be delivered for it."""


class DeadlineExceeded(BaseException):
    """Raised from SIGALRM; a BaseException so that no library `except Exception` swallows it."""


@dataclass(frozen=True)
class Args:
    config: str | None
    envelope: Envelope


def parse_args(argv: list[str]) -> Args:
    """Parse `[--config PATH] [pipe] [--config PATH] [-q ID] -f SENDER -- RCPT...` by hand.

    No option parser library: every mistake must become a deferral, and the
    value after -f is taken as it is, even when it begins with '-'.
    """
    config = sender = queue_id = None
    recipients: list[str] | None = None
    seen_pipe = False
    i = 0

    def value(option: str) -> str:
        if i + 1 >= len(argv):
            raise UsageError(f"option {option} needs a value")
        return argv[i + 1]

    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            recipients = argv[i + 1 :]
            break
        if arg in ("-h", "--help"):
            raise HelpRequested
        if arg == "pipe" and not seen_pipe:
            seen_pipe, i = True, i + 1
        elif arg in ("-c", "--config"):
            config, i = value(arg), i + 2
        elif arg.startswith("--config="):
            config, i = arg.split("=", 1)[1], i + 1
        elif arg == "-f":
            sender, i = value(arg), i + 2
        elif arg in ("-q", "--queue-id"):
            queue_id, i = value(arg), i + 2
        else:
            raise UsageError(f"unexpected argument {arg!r}")
    if sender is None:
        raise UsageError("missing -f SENDER")
    if not recipients:
        raise UsageError("missing '-- RECIPIENT...'")
    return Args(config, Envelope(sender, tuple(recipients), queue_id or None))


def _failure_dsn(exc: BaseException, deadline: float) -> tuple[Dsn, bool]:
    """The deferral line for an exception, and whether it is unexpected (log the traceback)."""
    from ..actions.quarantine import QuarantineError
    from ..actions.reinject import DeliveryError
    from ..config import ConfigError
    from ..message import printable

    def dsn(status: tuple, text: str) -> Dsn:
        return Dsn(status, "mailfilter: " + printable(text, 300))

    if isinstance(exc, UsageError):
        return dsn((4, 3, 5), f"{exc}; {USAGE}"), False
    if isinstance(exc, ConfigError):
        return dsn((4, 3, 5), f"configuration error: {exc}"), False
    if isinstance(exc, DeliveryError):
        return dsn((4, 3, 0), f"reinjection failed: {exc}"), False
    if isinstance(exc, QuarantineError):
        return dsn((4, 3, 0), f"quarantine failed: {exc}"), False
    if isinstance(exc, ClientGone):
        return dsn((4, 3, 0), str(exc) or "the pipe client hung up before the verdict was applied; nothing delivered"), False
    if isinstance(exc, DeadlineExceeded):
        return dsn((4, 3, 0), f"filter deadline of {deadline:g} s exceeded, message deferred"), False
    return dsn((4, 3, 0), f"internal error ({type(exc).__name__}), message deferred"), True


def _arm(seconds: float) -> None:
    def expire(signum: int, frame: object) -> None:
        raise DeadlineExceeded

    signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))  # 0 would disarm it


def _disarm() -> None:
    signal.setitimer(signal.ITIMER_REAL, 0)


def main(argv: list[str], stdin: BinaryIO, stdout: TextIO, environ: Mapping[str, str] | None = None, note: str = "") -> int:
    """Run the pipe door in this process; return 0, 69 or 75, whatever happens inside.

    NOTE says why no worker took the message (logged as a warning when not empty).
    """
    started = time.monotonic()
    try:
        _arm(DEFAULT_DEADLINE)
        from .. import log

        log.configure("mailfilter/pipe", None, stderr=False)
        status, line = handle(argv, stdin, started, environ=environ, note=note)
    except BaseException as exc:  # noqa: BLE001 - handle() catches everything; this is for a broken log set-up
        status, line = EX_TEMPFAIL, _failure_dsn(exc, DEFAULT_DEADLINE)[0].line()
    finally:
        _disarm()
    if line:
        try:
            stdout.write(line + "\n")
            stdout.flush()
        except (OSError, ValueError):
            pass  # pipe(8) still reads the exit status
    return status


def handle(
    argv: list[str],
    stdin: BinaryIO,
    started: float,
    config=None,
    environ: Mapping[str, str] | None = None,
    still_wanted: Callable[[], bool] | None = None,
    runner=None,
    note: str = "",
) -> tuple[int, str | None]:
    """Parse the arguments, filter the message on STDIN, act; return the exit status and the line to print.

    Shared by both halves of `pipe`. In this process (CONFIG None) the config is loaded
    from the arguments and the SIGALRM deadline is re-armed from [pipe] deadline; the
    worker passes the config it serves and its pipeline.Runner, and the client keeps
    the deadline. NOTE says why no worker took the message (a warning when not empty).
    Every exception becomes a deferral here.
    """
    in_process = config is None
    deadline = DEFAULT_DEADLINE if config is None else config.pipe.deadline
    logger = logging.getLogger("mailfilter")
    queue_id = "NOQUEUE"
    try:
        args = parse_args(argv)
        queue_id = args.envelope.queue_id or queue_id
        if config is None:
            from .. import config as configmod
            from .. import log

            config = configmod.load(args.config, os.environ if environ is None else environ)
            logger = log.configure("mailfilter/pipe", config.log, stderr=False)
            deadline = config.pipe.deadline
            _arm(deadline - (time.monotonic() - started))
        if note:
            logger.warning("%s: %s; filtering in this process", queue_id, note)
        from ..spool import Spool

        with Spool() as spool:
            spool.fill(stdin)
            return filter_message(args.envelope, spool, config, logger, started, still_wanted, runner)
    except HelpRequested:
        return EX_OK, HELP.rstrip("\n")
    except BaseException as exc:  # noqa: BLE001 - the one boundary: everything becomes a deferral
        if in_process:
            _disarm()
        dsn, unexpected = _failure_dsn(exc, deadline)
        try:
            if unexpected:
                logger.error("%s: %s", queue_id, dsn.text, exc_info=exc)
            else:
                logger.warning("%s: %s", queue_id, dsn.text)
        except BaseException:  # noqa: BLE001, S110 - a broken log must not change the exit status
            pass
        return EX_TEMPFAIL, dsn.line()


def filter_message(
    envelope: Envelope,
    spool: Spool,
    config,
    logger: logging.Logger,
    started: float,
    still_wanted: Callable[[], bool] | None = None,
    runner=None,
) -> tuple[int, str | None]:
    """Scan, decide, act. Returns the exit status and the status line to print (None on success).

    STILL_WANTED (the worker's) says whether the client is still waiting: one that gave up
    (its deadline) has already deferred the message, so nothing is delivered or stored for it.
    """
    from .. import journal, message, metrics, pipeline
    from ..actions import quarantine, reinject
    from ..log import summary
    from ..model import Action

    outcome = runner.run(spool, config) if runner else pipeline.run(spool, config)
    if still_wanted is not None and not still_wanted():
        raise ClientGone
    decision = outcome.decision
    queue_id = envelope.queue_id or "NOQUEUE"
    for failure in outcome.results.failures:
        logger.warning("%s: %s", queue_id, failure.describe())
    for warning in decision.warnings:
        logger.warning("%s: %s", queue_id, warning)

    quarantine_id = None
    if decision.action is Action.DELIVER:
        reinject.reinject(message.rewrite(spool.read(), decision.headers), envelope, config.delivery)
    elif decision.action is Action.QUARANTINE:
        quarantine_id = quarantine.store(spool, quarantine.describe(envelope, spool, outcome.results, decision), config.quarantine.dir)

    report = _report(envelope, spool, outcome, quarantine_id, config, logger) if decision.report else None
    delay = time.monotonic() - started
    now = datetime.now(UTC)
    metrics.account(
        journal.event("pipe", envelope, outcome.results, decision, decision.action.value, spool.size, delay, now, quarantine_id),
        config,
        logger,
    )
    logger.info("%s", summary(envelope, outcome.results, decision, delay, quarantine=quarantine_id, report=report))
    return PIPE_EXIT_BY_ACTION[decision.action], decision.dsn.line() if decision.dsn else None


def _report(envelope: Envelope, spool: Spool, outcome, quarantine_id: str | None, config, logger: logging.Logger) -> str:
    """Send the admin report. Its failure is logged and never changes the message's fate,
    which is already sealed (delivered, durably quarantined, or about to be deferred)."""
    from ..actions import report

    try:
        ctx = report.context(envelope, spool, outcome.results, outcome.decision, quarantine_id)
        return report.send(ctx, config, os.uname().nodename, datetime.now(UTC))
    except Exception as exc:  # noqa: BLE001 - see docstring
        logger.error("%s: admin report not sent: %s", envelope.queue_id or "NOQUEUE", exc)
        return "failed"
