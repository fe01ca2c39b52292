"""Recipients the policy splits into groups, as `mailfilter smtp` carries them out.

Over SMTP (one reply after DATA, act_split): split.for_one_answer's groups, a reinjection per delivered
group and a quarantine entry per held one, each sealed group in the split log (actions/splitlog.py) before
the next; a later failure is a 451 for the whole message, and Postfix's retry skips what the log lists.

Over LMTP (RFC 2033: one reply per accepted recipient, in RCPT order, act_per_recipient): every group of
policy.plan() gets its own answer, so nothing is reduced: a group whose policy rejects is refused (550/554
for its recipients alone, Postfix bounces their copy and delivers the rest), one that defers is told 451
(only its recipients are retried), and a failure carrying out one group (the reinjecting smtpd, the store)
is a 451 for that group's recipients while the others keep what they got. Sealed groups are written to the
split log as they are sealed, so that if the connection is lost before the replies reach Postfix (which
then retries every recipient) the retry answers them 250 "done before" instead of delivering twice; once
the replies are handed over the log is removed (a retry then only has the recipients told 4xx: another key).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from .. import log, pipeline, split
from ..actions import quarantine, splitlog
from ..model import Action, Decision, Envelope, Group, Verdict
from ..record import replace
from ..spool import Spool
from . import smtpfilter, smtpledger

LOG = logging.getLogger(log.LOGGER)


def act_split(
    received: smtpfilter.Received,
    spool: Spool,
    deps: smtpfilter.Dependencies,
    waiting: Callable[[], None],
    started: float,
    outcome: pipeline.Outcome,
    groups: tuple[Group, ...],
    message_key: str | None,
) -> smtpfilter.Answer:
    """Recipients split by the policy (split.py), one reply: a reinjection per delivered group, an entry per
    quarantined one, each sealed group in the split log before the next; a later failure is a 451 and
    the retry skips what the log lists. The 250 names what was done."""
    envelope, config = received.envelope, deps.config
    book = splitlog.SplitLog(config.report.state_dir, message_key or smtpledger.key(envelope, spool.read()))
    before = book.sealed()
    waiting()

    def seal(part: Envelope, decision: Decision) -> str | None:
        if decision.action is Action.DELIVER:
            smtpfilter.reinject(received, part, spool, decision, deps, waiting, message_key)
            return None
        meta = quarantine.describe(part, spool, outcome.results, decision)
        return quarantine.open_store(config.quarantine).store(spool, meta)

    carried = split.carry(envelope, groups, before, seal, book.record)
    done = [(part, pipeline.Outcome(outcome.results, (group,), outcome.senders), qid) for part, group, qid in carried]
    delivered = sum(len(p.recipients) for p, _, qid in done if qid is None)
    held = [qid for _, _, qid in done if qid]
    text = f"mailfilter: split: {delivered} recipient(s) reinjected, quarantined as {', '.join(held) or 'none'}"
    if before:
        text += f", {len(before)} done before"
    answer = smtpfilter.reply(250, (2, 0, 0), text)
    smtpfilter.note(deps, "seal", message_key, answer)
    return smtpfilter.Answer(answer, _bookkeeping(received, spool, done, deps, started), message_key)


def act_per_recipient(
    received: smtpfilter.Received,
    spool: Spool,
    deps: smtpfilter.Dependencies,
    waiting: Callable[[], None],
    started: float,
    outcome: pipeline.Outcome,
    message_key: str | None,
) -> smtpfilter.Answer:
    """LMTP: each group of the plan carried out on its own, a reply line per recipient (see the module's text)."""
    envelope, config = received.envelope, deps.config
    queue_id = envelope.queue_id or "NOQUEUE"
    book = splitlog.SplitLog(config.report.state_dir, message_key or smtpledger.key(envelope, spool.read()))
    before = book.sealed()
    replies = {r: smtpfilter.reply(250, (2, 0, 0), f"mailfilter: done before, not again ({what})") for r, what in before.items()}
    done = []
    for group in outcome.groups:
        todo = tuple(r for r in group.recipients if r not in before)
        if not todo:
            continue
        part, decision = replace(envelope, recipients=todo), group.decision
        try:
            text, quarantine_id = _carry_one(received, part, spool, decision, outcome, deps, waiting, message_key)
        except BaseException as exc:  # this group only: the others keep their answers
            text, unexpected = smtpfilter.failure_reply(exc)
            LOG.log(
                logging.ERROR if unexpected else logging.WARNING,
                "%s: %s: %s",
                queue_id,
                ", ".join(todo),
                text,
                exc_info=exc if unexpected else None,
            )
            replies.update(dict.fromkeys(todo, text))
            continue
        if decision.action in split.SEALING:
            try:
                book.record(todo, f"quarantined {quarantine_id}" if quarantine_id else "delivered")
                smtpfilter.note(deps, "answered", message_key)  # its final dot's answer is read and its fate recorded
            except OSError as exc:  # sealed all the same: only a lost reply would now mean a duplicate
                LOG.error("%s: the split log cannot be written (a lost reply would mean a duplicate): %s", queue_id, exc)
        replies.update(dict.fromkeys(todo, text))
        done.append((part, pipeline.Outcome(outcome.results, (Group(todo, decision),), outcome.senders), quarantine_id))
    missing = smtpfilter.reply(451, (4, 3, 0), "mailfilter: no decision for this recipient, try again later")
    lines = [replies.get(r, missing) for r in envelope.recipients]

    def forget() -> None:  # the replies are handed over: no retry will list these recipients again
        with contextlib.suppress(OSError):
            book.remove()

    after = _bookkeeping(received, spool, done, deps, started)
    return smtpfilter.Answer("\r\n".join(lines), after, sealed=message_key, answered=forget)


def _carry_one(received, part: Envelope, spool: Spool, decision: Decision, outcome, deps, waiting, message_key) -> tuple[str, str | None]:
    """One group's decision carried out: (its reply line, the quarantine id when held)."""
    if decision.action is Action.DELIVER:
        reinjected = smtpfilter.reinject(received, part, spool, decision, deps, waiting, message_key)
        return smtpfilter.reply(250, (2, 0, 0), f"mailfilter: {decision.verdict.value}, reinjected: {reinjected}"), None
    if decision.action is Action.QUARANTINE:
        waiting()
        meta = quarantine.describe(part, spool, outcome.results, decision)
        quarantine_id = quarantine.open_store(deps.config.quarantine).store(spool, meta)
        return smtpfilter.reply(250, (2, 0, 0), f"mailfilter: {decision.verdict.value}, quarantined as {quarantine_id}"), quarantine_id
    if decision.action is Action.REJECT:
        text = decision.dsn.text if decision.dsn else f"message rejected ({decision.verdict.value})"
        return smtpfilter.reply(554 if decision.verdict is Verdict.VIRUS else 550, (5, 7, 1), f"mailfilter: {text}"), None
    text = decision.dsn.text if decision.dsn else "message deferred"
    return smtpfilter.reply(451, (4, 7, 1), text), None


def _bookkeeping(received: smtpfilter.Received, spool: Spool, done: list, deps, started: float) -> Callable[[], None]:
    """Admin report, journal and metrics for each part carried out, then the spool closed (after the reply)."""

    def after() -> None:
        try:
            for part, one, quarantine_id in done:
                smtpfilter.bookkeeping(replace(received, envelope=part), spool, one, quarantine_id, deps, started)
        finally:
            spool.close()

    return after
