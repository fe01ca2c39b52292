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
from datetime import UTC, datetime
from typing import BinaryIO, TextIO

from ..defaults import PIPE_DEADLINE
from ..exitcodes import EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE, PIPE_EXIT_BY_ACTION
from ..model import Dsn, Envelope
from ..record import dataclass
from ..spool import Spool

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..config import Config

USAGE = "usage: mailfilter [--config PATH] pipe [--config PATH] [-q QUEUE_ID] -f SENDER -- RECIPIENT..."
HELP = f"""{USAGE}

Filter one message from standard input for Postfix pipe(8): scan it with spamd
and ClamAV, then reinject it with `sendmail -G -i -f SENDER -- RECIPIENT...`,
quarantine it, or defer it. Exit status: 0 delivered or held, 75 deferred
(Postfix keeps the message queued), 69 rejected (only with a reject policy).
When `mailfilter worker` listens on [pipe] worker, the message is handed to it
(the same filtering, without importing the pipeline in every process).

[pipe] deadline bounds reading and scanning; delivery has [delivery] timeout.
Once sendmail accepted the message or its quarantine entry is durable the
answer is 0, whatever the admin report, journal or metrics meet afterwards.

master.cf (mailfilter-pipe, wrapper/mailfilter-pipe.c, turns any other ending
into a deferral):
  mailfilter unix - n n - 10 pipe flags=Rq user=mailfilter null_sender=
    argv=/usr/local/libexec/mailfilter/mailfilter-pipe -t 900 /usr/local/bin/mailfilter
      pipe -q ${{queue_id}} -f ${{sender}} -- ${{recipient}}
"""
DEFAULT_DEADLINE = PIPE_DEADLINE  # until the config is read
# Seconds a quarantine write (a few fsyncs) is allowed where a delivery budget is counted.
QUARANTINE_ALLOWANCE = 30


def worst_case(config: Config) -> tuple[float, str]:
    """The longest a `pipe` run can take, and how that sum is made: [pipe] deadline for reading and
    scanning, then [delivery] timeout (or a quarantine write), the worker hand-over's margin, and the
    admin report after the fate is sealed. Postfix's command_time_limit must be above it, or pipe(8)
    could kill a filter that has delivered (and a killed filter is a deferral: a second delivery)."""
    from .pipeclient import ACT_MARGIN

    parts = [
        (config.pipe.deadline, "[pipe] deadline"),
        (config.delivery.timeout + QUARANTINE_ALLOWANCE, f"[delivery] timeout + {QUARANTINE_ALLOWANCE} s"),
        (ACT_MARGIN, "hand-over margin"),
        (config.report.timeout, "[report] timeout"),
    ]
    return sum(seconds for seconds, _ in parts), " + ".join(f"{what} {seconds:g}" for seconds, what in parts)


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


@dataclass(frozen=True)
class Answer:
    """What the door answers pipe(8), and the bookkeeping to run once that answer is final.

    AFTER (admin report, journal, metrics, the summary line) runs after the message's fate is
    sealed or its deferral decided; it never raises and never changes STATUS.
    """

    status: int
    line: str | None = None
    after: Callable[[], None] | None = None


def main(argv: list[str], stdin: BinaryIO, stdout: TextIO, environ: Mapping[str, str] | None = None, note: str = "") -> int:
    """Run the pipe door in this process; return 0, 69 or 75, whatever happens inside.

    NOTE says why no worker took the message (logged as a warning when not empty).
    """
    started = time.monotonic()
    try:
        _arm(DEFAULT_DEADLINE)
        from .. import log

        log.configure("mailfilter/pipe", None, stderr=False)
        answer = handle(argv, stdin, started, environ=environ, note=note)
    except BaseException as exc:  # noqa: BLE001 - handle() catches everything; this is for a broken log set-up
        answer = Answer(EX_TEMPFAIL, _failure_dsn(exc, DEFAULT_DEADLINE)[0].line())
    finally:
        _disarm()
    finish(answer)
    if answer.line:
        try:
            stdout.write(answer.line + "\n")
            stdout.flush()
        except (OSError, ValueError):
            pass  # pipe(8) still reads the exit status
    return answer.status


def finish(answer: Answer) -> None:
    """Run ANSWER's bookkeeping. Nothing it raises (not even the deadline's signal) reaches the answer."""
    if answer.after is None:
        return
    try:
        answer.after()
    except BaseException:  # noqa: BLE001 - the answer is final; _bookkeeping logged what it could
        try:
            logging.getLogger("mailfilter").exception("bookkeeping after the answer failed; the answer stands")
        except BaseException:  # noqa: BLE001, S110 - a broken log must not change the exit status
            pass


def handle(
    argv: list[str],
    stdin: BinaryIO,
    started: float,
    config=None,
    environ: Mapping[str, str] | None = None,
    gate: Callable[[Config], None] | None = None,
    runner=None,
    note: str = "",
) -> Answer:
    """Parse the arguments, filter the message on STDIN, act; return the Answer.

    Shared by both halves of `pipe`. In this process (CONFIG None) the config is loaded
    from the arguments, the SIGALRM deadline is re-armed from [pipe] deadline for reading and
    scanning, and disarmed before delivery. The worker passes the config it serves, its
    pipeline.Runner and a GATE that asks its client whether it still waits (raising ClientGone
    if not); the client keeps the deadline. NOTE says why no worker took the message.
    Every exception before the message's fate is sealed becomes a deferral here.
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
        from ..spool import Spool, TooLarge

        with Spool() as spool:
            try:
                spool.fill(stdin, config.pipe.max_size)
            except TooLarge:
                return _too_large(args.envelope, stdin, config, logger, started)
            return filter_message(args.envelope, spool, config, logger, started, gate or _in_process_gate, runner)
    except HelpRequested:
        return Answer(EX_OK, HELP.rstrip("\n"))
    except BaseException as exc:  # noqa: BLE001 - the one boundary: everything before the seal becomes a deferral
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
        return Answer(EX_TEMPFAIL, dsn.line())


def _too_large(envelope: Envelope, stdin: BinaryIO, config: Config, logger: logging.Logger, started: float) -> Answer:
    """Over [pipe] max_size: refused (69, 5.3.4) without scanning, as the milter refuses with 552 5.3.4."""
    from ..spool import CHUNK

    while stdin.read(CHUNK):  # the worker's client sends it all before it reads the answer
        pass
    limit = config.pipe.max_size
    dsn = Dsn((5, 3, 4), f"mailfilter: message larger than {limit} bytes cannot be scanned")

    def after() -> None:
        from .. import journal, log, metrics

        delay = time.monotonic() - started
        metrics.account(journal.event("pipe", envelope, None, None, "reject", limit, delay, datetime.now(UTC)), config, logger)
        logger.info("%s", log.summary(envelope, None, None, delay, action="reject", size=f">{limit}"))

    return Answer(EX_UNAVAILABLE, dsn.line(), after)


def _in_process_gate(config: Config) -> None:
    """In a pipe process: [pipe] deadline covered reading and scanning; delivery is bounded by
    [delivery] timeout instead, so that the deadline can never strike after sendmail accepted."""
    _disarm()


def filter_message(
    envelope: Envelope,
    spool: Spool,
    config: Config,
    logger: logging.Logger,
    started: float,
    gate: Callable[[Config], None] = _in_process_gate,
    runner=None,
) -> Answer:
    """Scan, decide, pass the GATE, act. Returns the Answer; its bookkeeping runs later (finish()).

    The message's fate is sealed when sendmail has accepted it or its quarantine entry is
    durable: from that point on the answer is success, whatever the bookkeeping meets.
    """
    from .. import pipeline, split
    from ..model import Action

    outcome = runner.run(spool, config, envelope) if runner else pipeline.run(spool, config, envelope)
    groups = split.for_one_answer(outcome.groups)
    split.warn(groups, outcome.results.failures, logger, envelope.queue_id or "NOQUEUE")
    if len(groups) > 1:
        return _split(envelope, spool, outcome, groups, config, logger, started, gate)

    decision = groups[0].decision
    quarantine_id = None
    if decision.action in (Action.DELIVER, Action.QUARANTINE):
        gate(config)  # the worker's client must still wait for the answer; raises ClientGone if not
        quarantine_id = _seal(envelope, spool, outcome, decision, config)
        # Sealed: from here on nothing may turn this message into a deferral.

    head = _head(spool)  # the door closes SPOOL before the bookkeeping runs

    def after() -> None:
        with head:
            _bookkeeping(envelope, head, outcome, quarantine_id, config, logger, started)

    status = PIPE_EXIT_BY_ACTION[decision.action]
    return Answer(status, decision.dsn.line() if decision.dsn else None, after)


def _seal(envelope: Envelope, spool: Spool, outcome, decision, config: Config) -> str | None:
    """Deliver ENVELOPE's copy (sendmail) or quarantine it; the quarantine id, or None when delivered."""
    from ..actions import quarantine, reinject
    from ..model import Action

    if decision.action is Action.DELIVER:
        reinject.reinject(_rewritten(spool, decision), envelope, config.delivery)
        return None
    meta = quarantine.describe(envelope, spool, outcome.results, decision)
    return quarantine.open_store(config.quarantine).store(spool, meta)


def _split(envelope: Envelope, spool: Spool, outcome, groups, config: Config, logger, started: float, gate) -> Answer:
    """Recipients split by the policy: each group delivered (one sendmail call) or quarantined (one entry),
    each sealed group written to the split log before the next is tried. A group failing after another
    was sealed defers the message (the exception reaches handle()); the retry skips what the log lists.
    Exit 0 once every group is sealed."""
    from .. import pipeline, split
    from ..actions import splitlog
    from ..doors import smtpledger

    book = splitlog.SplitLog(config.report.state_dir, smtpledger.key(envelope, spool.read()))
    before = book.sealed()
    if before:
        logger.info("%s: a retry of a split message: %d recipient(s) sealed before, skipped", envelope.queue_id or "NOQUEUE", len(before))
    gate(config)

    def seal(part: Envelope, decision) -> str | None:
        return _seal(part, spool, outcome, decision, config)

    carried = split.carry(envelope, groups, before, seal, book.record)
    done = [(part, pipeline.Outcome(outcome.results, (group,), outcome.senders), qid) for part, group, qid in carried]
    # Sealed, every group: from here on nothing may turn this message into a deferral.
    head = _head(spool)

    def after() -> None:
        with head:
            for part, one, quarantine_id in done:
                _bookkeeping(part, head, one, quarantine_id, config, logger, started)

    return Answer(EX_OK, None, after)


def _rewritten(spool: Spool, decision):
    """The message with our headers (and the subject tag), streamed from the spool: the body is never held in memory."""
    from .. import message

    return message.rewritten(spool, decision.headers, subject=_subject_edit(spool, decision))


def _subject_edit(spool: Spool, decision):
    if not decision.subject_tag:
        return None
    from .. import message, subjecttag

    return subjecttag.tag(subjecttag.raw_subject(spool.read(message.HEAD_LIMIT)), decision.subject_tag)


def _head(spool: Spool) -> Spool:
    """A copy of what the bookkeeping reads of SPOOL (its header, for the report), with the message's size."""
    from .. import message
    from ..spool import Spool as SpoolClass

    head = SpoolClass.of(spool.read(message.HEAD_LIMIT))
    head.size = spool.size
    return head


def _bookkeeping(envelope: Envelope, spool: Spool, outcome, quarantine_id: str | None, config: Config, logger, started: float) -> None:
    """Admin report, journal and metrics, summary line (actions/account.py): each failure is logged and never raised."""
    from ..actions import account

    account.sealed("pipe", envelope, spool, outcome, quarantine_id, config, logger, started)
