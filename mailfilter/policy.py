"""What to do with one scanned message, for each of its recipients.

plan(envelope, results, config, door, senders) -> groups: the recipients whose policy
(recipients.rule_for: global keys, their domain's table, their address's) gives the same decision
share a Group; each door carries out a group's decision (pipe: a sendmail call or a quarantine entry
per group; milter: delrcpt; smtp: a reinjection per group). decide(results, config, rule, door,
senders) is the decision for one recipient's rule. Pure: no I/O, no clock, no imports of any door.

The order of precedence, strongest first:

1. a virus found: the rule's virus ("quarantine", "reject"; "hold" in the milter), report to the admin;
   the virus scan failed (on_error = "tempfail"): defer, before anything else is decided (a virus must
   never be held as something less, such as a banned attachment an admin may release);
2. a banned attachment ([attachments]: a name, a type, an encrypted archive): the rule's banned
   ("quarantine", "reject", "allow"); verdict banned. What the attachment check could not see is
   said in X-Mailfilter-Uninspected and a warning; with [attachments] uninspected = "quarantine"
   it is unscannable (3). Neither where banned = "allow";
3. a virus scan that could not see all of the message (a ClamAV limit, a MIME part out of reach):
   [policy] unscannable, quarantine by default; "accept" delivers it marked Unscanned and warns.
   Never clean, whatever spamd said;
4. a scanner that failed, with on_error = "tempfail": defer, and report;
   with on_error = "accept": go on, mark the message Unscanned, warn;
5. a sender on [senders] block (and not on allow): spam at the reject score: rejected where the rule
   has a reject score, else quarantined;
6. spam at or above the rule's spam_reject_score: reject; at or above its spam_score: quarantine;
   spam delivered gets the rule's subject_tag. A sender on [senders] allow is never spam (5 and 6);
7. otherwise deliver, with our headers.
"""

from __future__ import annotations

import math

from . import recipients as rcpt
from .config import Config
from .model import (
    SCANNER_SPAMD,
    Action,
    AttachmentReport,
    Decision,
    Dsn,
    Envelope,
    Group,
    ReportKind,
    ScanFailure,
    ScanResults,
    SenderHits,
    SpamOutcome,
    SpamReport,
    SpamSkipped,
    Verdict,
    VirusOutcome,
    VirusReport,
)
from .record import replace

PRODUCT = "mailfilter"

# 4.7.1 for a deferred scan, the same status the milter answers with (451 4.7.1).
TEMPFAIL_STATUS = (4, 7, 1)
NO_SENDERS = SenderHits()
REASON_TEXT = 200  # characters of the unscannable reasons in a header field or a DSN


def unscannable_reason(report: VirusReport) -> str:
    """What the virus scan could not see, in one short line."""
    first, more = report.unscannable[0], len(report.unscannable) - 1
    text = first + (f"; and {more} more" if more else "")
    return text if len(text) <= REASON_TEXT else text[: REASON_TEXT - 3] + "..."


def on_error(failure: ScanFailure, config: Config) -> str:
    return config.spamd.on_error if failure.scanner == SCANNER_SPAMD else config.clamd.on_error


def spam_headers(outcome: SpamOutcome) -> list[tuple[str, str]]:
    if isinstance(outcome, SpamReport):
        flag = "YES" if outcome.is_spam else "NO"
        tests = ",".join(outcome.tests) or "none"
        status = "{}, score={:.1f} required={:.1f} tests={}".format(
            "Yes" if outcome.is_spam else "No", outcome.score, outcome.threshold, tests
        )
        if outcome.truncated:
            status += ", truncated to {} of {} bytes".format(*outcome.truncated)
        return [("X-Spam-Flag", flag), ("X-Spam-Score", f"{outcome.score:.1f}"), ("X-Spam-Status", status)]
    if isinstance(outcome, SpamSkipped):
        return [("X-Spam-Status", f"No, skipped ({outcome.reason})")]
    return [("X-Spam-Status", f"Unscanned ({outcome.scanner} {outcome.cause.value})")]


def virus_headers(outcome: VirusOutcome) -> list[tuple[str, str]]:
    scanned = ("X-Virus-Scanned", f"ClamAV using {PRODUCT}")
    if isinstance(outcome, VirusReport):
        if outcome.infected:
            status = "Infected ({})".format(", ".join(outcome.names))
        elif not outcome.complete:
            status = f"Unscanned ({unscannable_reason(outcome)})"
        else:
            status = "Clean"
        return [scanned, ("X-Virus-Status", status)]
    return [("X-Virus-Status", f"Unscanned ({outcome.scanner} {outcome.cause.value})")]


def plan(
    envelope: Envelope, results: ScanResults, config: Config, door: str = "pipe", senders: SenderHits = NO_SENDERS
) -> tuple[Group, ...]:
    """The decision for every recipient, grouped: recipients with the same decision share a group, in
    the order of their first recipient."""
    base, tables = rcpt.base_rule(config, door), dict(config.recipients)
    if not envelope.recipients:  # `scan`, `check`: the global policy
        return (Group((), decide(results, config, base, door, senders)),)
    groups: dict[Decision, list[str]] = {}
    for recipient in envelope.recipients:
        decision = decide(results, config, rcpt.rule_for(recipient, base, tables), door, senders)
        groups.setdefault(decision, []).append(recipient)
    return tuple(Group(tuple(members), decision) for decision, members in groups.items())


def decide(
    results: ScanResults, config: Config, rule: rcpt.Rule | None = None, door: str = "pipe", senders: SenderHits = NO_SENDERS
) -> Decision:
    """The decision for one recipient whose policy is RULE (the global one when None)."""
    rule = rule or rcpt.base_rule(config, door)
    spam = SpamSkipped("bypass_spam") if rule.bypass_spam else results.spam_for(rule.spamd_user)
    scored_as = [("X-Spam-User", rule.spamd_user)] if rule.spamd_user and isinstance(spam, SpamReport) else []
    headers = tuple(spam_headers(spam) + scored_as + virus_headers(results.virus) + attachment_headers(results.attachments, rule))

    if isinstance(results.virus, VirusReport) and results.virus.infected:
        names = ", ".join(results.virus.names)
        if rule.virus == "reject":
            dsn = Dsn((5, 7, 1), f"message rejected: virus found: {names}")
            return Decision(Verdict.VIRUS, Action.REJECT, headers, dsn, ReportKind.VIRUS_FOUND)
        action = Action.HOLD if rule.virus == "hold" and door == "milter" else Action.QUARANTINE
        return Decision(Verdict.VIRUS, action, headers, None, ReportKind.VIRUS_FOUND)

    if isinstance(results.virus, ScanFailure) and on_error(results.virus, config) == "tempfail":
        return _deferred(results.virus, headers)  # no virus verdict: before any other, or a virus could be held as banned

    attachments = results.attachments if rule.banned != "allow" else None
    refused = banned_reasons(attachments, config)
    if refused:
        if rule.banned == "reject":
            return Decision(Verdict.BANNED, Action.REJECT, headers, Dsn((5, 7, 1), f"message rejected: {refused}"))
        return Decision(Verdict.BANNED, Action.QUARANTINE, headers)

    if isinstance(results.virus, VirusReport) and not results.virus.complete:
        return _unscannable(unscannable_reason(results.virus), headers, config)
    if attachments is not None and attachments.uninspected:
        unseen = _short("attachments: " + "; ".join(attachments.uninspected))
        if config.attachments.uninspected == "quarantine":
            return _unscannable(unseen, headers, config)
        note = f"attachments not all inspected ([attachments] uninspected = accept): {unseen}"
        decision = _after_attachments(results, config, rule, spam, headers, senders)
        return replace(decision, warnings=(*decision.warnings, note))
    return _after_attachments(results, config, rule, spam, headers, senders)


def _after_attachments(
    results: ScanResults, config: Config, rule: rcpt.Rule, spam: SpamOutcome, headers: tuple[tuple[str, str], ...], senders: SenderHits
) -> Decision:
    """decide() from its scanner failures on: the sender lists, then spam."""
    warnings = []
    for failure in (o for o in (spam, results.virus) if isinstance(o, ScanFailure)):
        if on_error(failure, config) == "tempfail":
            return _deferred(failure, headers)
        warnings.append(f"delivered unscanned by {failure.scanner} (on_error=accept): {failure.describe()}")

    if senders.allow is not None:
        verdict = Verdict.ERROR if warnings else Verdict.CLEAN
        return Decision(
            verdict,
            Action.DELIVER,
            headers,
            None,
            ReportKind.SCANNER_FAILED if warnings else None,
            tuple(warnings),
            sender_rule=f"allow {senders.allow}",
        )
    if senders.block is not None:
        rule_text = f"block {senders.block}"
        if not math.isinf(rule.spam_reject_score):
            dsn = Dsn((5, 7, 1), "message rejected as spam (sender blocked)")
            return Decision(Verdict.SPAM, Action.REJECT, headers, dsn, sender_rule=rule_text)
        return Decision(Verdict.SPAM, Action.QUARANTINE, headers, sender_rule=rule_text)
    if warnings:
        return Decision(Verdict.ERROR, Action.DELIVER, headers, None, ReportKind.SCANNER_FAILED, tuple(warnings))

    if isinstance(spam, SpamReport):
        if spam.score >= rule.spam_reject_score:
            dsn = Dsn((5, 7, 1), f"message rejected as spam (score {spam.score:.1f})")
            return Decision(Verdict.SPAM, Action.REJECT, headers, dsn)
        if spam.score >= rule.spam_score:
            return Decision(Verdict.SPAM, Action.QUARANTINE, headers)
        if spam.is_spam:
            return Decision(Verdict.SPAM, Action.DELIVER, headers, subject_tag=rule.subject_tag)
    return Decision(Verdict.CLEAN, Action.DELIVER, headers)


def _deferred(failure: ScanFailure, headers: tuple[tuple[str, str], ...]) -> Decision:
    dsn = Dsn(TEMPFAIL_STATUS, f"{PRODUCT}: {failure.scanner} {failure.cause.value}, message deferred")
    return Decision(Verdict.ERROR, Action.TEMPFAIL, headers, dsn, ReportKind.SCANNER_FAILED)


def banned_reasons(report: AttachmentReport | None, config: Config) -> str:
    """Why the attachments ban the message, in one short line ('' : they do not)."""
    if report is None:
        return ""
    reasons = [f"{b.part}: {b.reason}" for b in report.banned]
    if config.attachments.encrypted == "quarantine":
        reasons += [f"{name}: encrypted archive" for name in report.encrypted]
    if not reasons:
        return ""
    return _short("banned attachment: " + "; ".join(reasons))


def attachment_headers(report: AttachmentReport | None, rule: rcpt.Rule) -> list[tuple[str, str]]:
    """X-Mailfilter-Uninspected when the attachment check could not see everything (it is never silent)."""
    if report is None or rule.banned == "allow" or not report.uninspected:
        return []
    return [("X-Mailfilter-Uninspected", _short("; ".join(report.uninspected)))]


def _short(text: str) -> str:
    return text if len(text) <= REASON_TEXT else text[: REASON_TEXT - 3] + "..."


def _unscannable(reason: str, headers: tuple[tuple[str, str], ...], config: Config) -> Decision:
    policy = config.policy.unscannable
    if policy == "reject":
        dsn = Dsn((5, 7, 1), f"message rejected: could not be scanned completely: {reason}")
        return Decision(Verdict.UNSCANNABLE, Action.REJECT, headers, dsn)
    if policy == "tempfail":
        dsn = Dsn(TEMPFAIL_STATUS, f"{PRODUCT}: message could not be scanned completely, deferred: {reason}")
        return Decision(Verdict.UNSCANNABLE, Action.TEMPFAIL, headers, dsn)
    if policy == "accept":
        warning = f"delivered with an incomplete virus scan ([policy] unscannable = accept): {reason}"
        return Decision(Verdict.UNSCANNABLE, Action.DELIVER, headers, warnings=(warning,))
    return Decision(Verdict.UNSCANNABLE, Action.QUARANTINE, headers)
