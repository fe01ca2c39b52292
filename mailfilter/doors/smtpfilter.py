"""One message of `mailfilter smtp`: scan, decide, act, and the SMTP reply to end-of-data.

The same pipeline and policy as the other doors (pipeline.Runner.run, policy.decide inside it), the same
quarantine store, admin report, journal and metrics; only the translation is this door's own:

  deliver     reinject over SMTP (smtpreinject.Pool), then 250 with the reinjecting smtpd's reply
  quarantine  store durably, then 250
  reject      554 5.7.1 (virus) or 550 5.7.1 (spam, unscannable): Postfix bounces, as pipe's exit 69 does
  tempfail    451 4.7.1: Postfix keeps the message queued and retries

Where the fate is sealed: the reinjecting smtpd's 2xx to our final dot, or the quarantine entry being
durable. Before that point every failure is a 451 4.3.0 (filter()'s one catch); after it the answer is 250,
whatever the bookkeeping meets (it runs after the reply, on the AfterReply thread, and never raises).
The sealed fate is written to the ledger (smtpledger) at once, so that Postfix's retry of a message whose
250 it never got is answered from there, not reinjected or quarantined again.
Recipients the policy splits (split.py) get a reinjection or an entry per group, and over LMTP a reply
per recipient (smtpgroups).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from .. import journal, log, message, metrics, pipeline, split, subjecttag
from ..actions import account, quarantine
from ..config import Config
from ..model import Action, Decision, Envelope, Verdict
from ..record import dataclass, field
from ..spool import Spool
from . import smtpgroups, smtpledger
from .smtpledger import Ledger
from .smtpreinject import Pool, ReinjectError, Transaction

LOG = logging.getLogger(log.LOGGER)
DOOR = "smtp"
REPLY_TEXT = 400  # characters of one reply line's text


class ClientGone(Exception):
    """Postfix hung up (or the door stopped waiting for it) before the message's fate was sealed:
    nothing was reinjected or stored, and Postfix, which got no 250, keeps the message."""


@dataclass(frozen=True)
class Received:
    """One message as Postfix's smtp client gave it to the door."""

    envelope: Envelope
    data: bytes
    xforward: Mapping[str, str] = field(default_factory=dict)
    eight_bit: bool = False
    smtputf8: bool = False


@dataclass(frozen=True)
class Answer:
    """The reply to end-of-data (LMTP: a line per recipient, CRLF between them), and the bookkeeping to run
    once it is given (never raises). SEALED: the ledger key of a message whose fate is sealed: marked answered
    once the reply is handed over."""

    reply: str
    after: Callable[[], None] | None = None
    sealed: str | None = None
    answered: Callable[[], None] | None = None  # to run once the reply is handed over (never raises)


@dataclass(frozen=True)
class Dependencies:
    """What every session of the door shares."""

    config: Config
    runner: pipeline.Runner
    pool: Pool
    tally: metrics.Tally | None = None
    ledger: Ledger | None = None


def reply(code: int, status: tuple[int, int, int], text: str) -> str:
    """`CODE X.Y.Z text`, one printable line (the table of this door's replies is the callers below)."""
    return "{} {}.{}.{} {}".format(code, *status, message.printable(text, REPLY_TEXT))


def too_large(limit: int) -> str:
    return reply(552, (5, 3, 4), f"mailfilter: message larger than {limit} bytes cannot be scanned")


def failure_reply(exc: BaseException) -> tuple[str, bool]:
    """The 4xx reply for an exception before the seal, and whether it is unexpected (log its traceback)."""
    if isinstance(exc, ReinjectError):
        return reply(451, (4, 3, 0), f"mailfilter: reinjection failed: {exc}"), False
    if isinstance(exc, quarantine.QuarantineError):
        return reply(451, (4, 3, 0), f"mailfilter: quarantine failed: {exc}"), False
    if isinstance(exc, ClientGone):
        return reply(451, (4, 3, 0), f"mailfilter: {exc}"), False
    return reply(451, (4, 3, 0), f"mailfilter: internal error ({type(exc).__name__}), message deferred"), True


def filter_message(
    received: Received, deps: Dependencies, waiting: Callable[[], None], started: float, per_recipient: bool = False
) -> Answer:
    """The one catch of the door: scan, decide, act. WAITING raises ClientGone once Postfix no longer waits.
    PER_RECIPIENT (LMTP): the answer has a reply line per recipient (a failure here: the same line for each).

    Blocking (a thread of the door's executor); the spool is closed by the bookkeeping, or here on failure."""
    queue_id = received.envelope.queue_id or "NOQUEUE"
    message_key = smtpledger.key(received.envelope, received.data) if deps.ledger else None  # None: no ledger
    first = deps.ledger.sealed(message_key) if deps.ledger and message_key else None
    if first is not None:  # Postfix retries a message whose first answer it never got: it is not reinjected again
        LOG.warning("%s: a retry of a message sealed before (its answer was lost), not delivered again: %s", queue_id, first)
        return Answer(reply(250, (2, 0, 0), f"mailfilter: already done, not again ({first})"), sealed=message_key)
    if deps.ledger and message_key and deps.ledger.dot_unanswered(message_key):
        LOG.warning("%s: a retry of a message whose reinjection got no answer: delivered again, perhaps a duplicate", queue_id)
    if deps.ledger and message_key and deps.ledger.hold_unsealed(message_key):
        stored = stored_before(deps, message_key, queue_id)
        if stored is not None:
            return stored
    spool = Spool.of(received.data)
    try:
        return act(received, spool, deps, waiting, started, message_key, per_recipient)
    except BaseException as exc:  # before the seal every failure is a deferral, never a 250
        spool.close()
        text, unexpected = failure_reply(exc)
        if unexpected:
            LOG.error("%s: %s", queue_id, text, exc_info=exc)
        else:
            LOG.warning("%s: %s", queue_id, text)
        return Answer(text)


def act(
    received: Received,
    spool: Spool,
    deps: Dependencies,
    waiting: Callable[[], None],
    started: float,
    message_key: str | None = None,
    per_recipient: bool = False,
) -> Answer:
    config, envelope = deps.config, received.envelope
    queue_id = envelope.queue_id or "NOQUEUE"
    outcome = deps.runner.run(spool, config, envelope, DOOR)
    if per_recipient:  # LMTP: one reply per recipient, each group carried out on its own
        split.warn(outcome.groups, outcome.results.failures, LOG, queue_id)
        return smtpgroups.act_per_recipient(received, spool, deps, waiting, started, outcome, message_key)
    groups = split.for_one_answer(outcome.groups)
    split.warn(groups, outcome.results.failures, LOG, queue_id)
    if len(groups) > 1:
        return smtpgroups.act_split(received, spool, deps, waiting, started, outcome, groups, message_key)
    decision = groups[0].decision
    quarantine_id = reinjected = None
    if decision.action is Action.DELIVER:
        try:
            reinjected = reinject(received, envelope, spool, decision, deps, waiting, message_key)
        except ReinjectError as exc:
            if not exc.maybe_taken:
                note(deps, "answered", message_key)  # refused outright (or never sent): nothing of it was taken
            raise
        answer = reply(250, (2, 0, 0), f"mailfilter: {decision.verdict.value}, reinjected: {reinjected}")
        note(deps, "seal", message_key, answer)
    elif decision.action is Action.QUARANTINE:
        waiting()
        meta = quarantine.describe(envelope, spool, outcome.results, decision)
        if message_key:  # killed between the store and the seal, the retry finds this entry by its key
            meta["ledger_key"] = message_key
            note(deps, "hold", message_key)
        quarantine_id = quarantine.open_store(config.quarantine).store(spool, meta)
        answer = reply(250, (2, 0, 0), f"mailfilter: {decision.verdict.value}, quarantined as {quarantine_id}")
        note(deps, "seal", message_key, answer)
    elif decision.action is Action.REJECT:
        text = decision.dsn.text if decision.dsn else f"message rejected ({decision.verdict.value})"
        answer = reply(554 if decision.verdict is Verdict.VIRUS else 550, (5, 7, 1), f"mailfilter: {text}")
    else:
        text = decision.dsn.text if decision.dsn else "message deferred"
        answer = reply(451, (4, 7, 1), text)
    # Sealed (delivered, quarantined, or refused or deferred on purpose): from here on the answer stands.

    def after() -> None:
        try:
            bookkeeping(received, spool, outcome, quarantine_id, deps, started)
        finally:
            spool.close()

    sealed = message_key if decision.action in (Action.DELIVER, Action.QUARANTINE) else None
    return Answer(answer, after, sealed)


def reinject(
    received: Received,
    part: Envelope,
    spool: Spool,
    decision: Decision,
    deps: Dependencies,
    waiting: Callable[[], None],
    message_key: str | None,
) -> str:
    """Reinject PART's copy (its recipients) with our headers; the reinjecting smtpd's reply. Right before the
    final dot, the point of no return, WAITING is asked again and the dot noted in the ledger."""
    envelope = received.envelope
    transaction = Transaction(envelope.sender, part.recipients, received.xforward, received.eight_bit, received.smtputf8)

    def gate() -> None:
        waiting()
        note(deps, "dot", message_key)

    return deps.pool.deliver(transaction, rewritten(spool, decision), gate=gate)


def rewritten(spool: Spool, decision: Decision):
    """The message with our headers and the subject tag, streamed from the spool."""
    edit = None
    if decision.subject_tag:
        edit = subjecttag.tag(subjecttag.raw_subject(spool.read(message.HEAD_LIMIT)), decision.subject_tag)
    return message.rewritten(spool, decision.headers, subject=edit)


def stored_before(deps: Dependencies, message_key: str, queue_id: str) -> Answer | None:
    """The answer to the retry of a message whose quarantine entry was being stored when the door ended:
    250 if the entry carrying its ledger key is in the store (it is not stored twice), else None (store it).
    A store that cannot be read is a 451, as a store that cannot be written would be."""
    try:
        good, _bad = quarantine.open_store(deps.config.quarantine).entries()
    except (OSError, quarantine.QuarantineError) as exc:
        LOG.warning("%s: the quarantine cannot be searched for an earlier attempt: %s", queue_id, exc)
        return Answer(reply(451, (4, 3, 0), f"mailfilter: quarantine failed: {exc}"))
    found = next((entry for entry in good if entry.meta.get("ledger_key") == message_key), None)
    if found is None:
        return None
    text = reply(250, (2, 0, 0), f"mailfilter: {found.meta.get('verdict', found.reason)}, quarantined as {found.id}")
    LOG.warning("%s: a retry of a message quarantined before (its answer was lost), not stored again: %s", queue_id, found.id)
    note(deps, "seal", message_key, text)
    return Answer(reply(250, (2, 0, 0), f"mailfilter: already done, not again ({text})"), sealed=message_key)


def note(deps: Dependencies, what: str, message_key: str | None, *args: str) -> None:
    """One ledger line (dot, hold, seal, answered). A ledger that cannot be written is logged, never raised: the
    message goes on (a lost answer could then mean a duplicate, never a loss)."""
    if deps.ledger is None or message_key is None:
        return
    try:
        getattr(deps.ledger, what)(message_key, *args)
    except OSError as exc:
        LOG.error("the sealed-message ledger cannot be written (a lost answer could mean a duplicate): %s", exc)


def bookkeeping(
    received: Received, spool: Spool, outcome: pipeline.Outcome, quarantine_id: str | None, deps: Dependencies, started: float
) -> None:
    """Admin report, journal and metrics, the summary line (actions/account.py): each failure is logged, never raised."""
    account.sealed(DOOR, received.envelope, spool, outcome, quarantine_id, deps.config, LOG, started, deps.tally)


def refused_too_large(envelope: Envelope, size: int, deps: Dependencies, started: float) -> Callable[[], None]:
    """The bookkeeping of a message refused for its size (552 5.3.4, not scanned)."""

    def after() -> None:
        limit, delay = deps.config.smtp.max_size, time.monotonic() - started
        entry = journal.event(DOOR, envelope, None, None, "reject", size, delay, datetime.now(UTC))
        metrics.account(entry, deps.config, LOG, deps.tally)
        LOG.info("%s", log.summary(envelope, None, None, delay, action="reject", size=f">{limit}"))

    return after
