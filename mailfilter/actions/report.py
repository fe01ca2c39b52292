"""Admin reports: VIRUS FOUND and ANTIVIRUS FAILED (or SPAM SCANNER FAILED).

render() is pure and returns the whole message as bytes. Every value taken
from the scanned message (Subject, Received, addresses) goes through
message.printable(), so message content can add neither a header nor a line
to the report. send() delivers it through the same sendmail as reinjection,
with [report] timeout.

Rate limits: reports of one scanner failure share a key, and so do all VIRUS
FOUND reports ("virus"). The first goes at once; within [report] interval the
others are held back and counted (a held-back virus leaves a note: quarantine
id, virus names, envelope, Subject); the next one after the interval says how
many were held back, and a VIRUS FOUND lists their notes.
"""

from __future__ import annotations

from datetime import datetime
from email.utils import format_datetime, make_msgid
from typing import Any

from .. import message as msgmod
from ..config import Config, DeliveryConfig, ReportConfig
from ..exitcodes import clamscan_code_text
from ..model import SCANNER_CLAMAV, Action, Cause, Decision, Envelope, ReportKind, ScanFailure, ScanResults
from ..record import dataclass, replace
from ..spool import Spool
from . import ratelimit, reinject

SUBJECTS = {
    (ReportKind.VIRUS_FOUND, SCANNER_CLAMAV): "VIRUS FOUND",
    (ReportKind.SCANNER_FAILED, SCANNER_CLAMAV): "ANTIVIRUS FAILED",
    (ReportKind.SCANNER_FAILED, "spamd"): "SPAM SCANNER FAILED",
}

HINTS = {
    Cause.UNAVAILABLE: "The scanner did not accept a connection. Is the daemon running, and is its socket where the configuration says?",
    Cause.TIMEOUT: "The scanner accepted the message but did not answer in time. Is it overloaded, or is"
    " the timeout too short for large messages?",
    Cause.ERROR: "The scanner answered with an error (see above). Its own log says more.",
    Cause.TOO_LARGE: "The message is larger than the scanner accepts. Raise clamd's StreamMaxLength, or lower"
    " Postfix's message_size_limit to match.",
}

CLAMDSCAN_ERROR = 2  # the clamscan-style status for a clamd failure: "an error occurred"
VIRUS_KEY = "virus"  # every VIRUS FOUND report shares one rate limit


@dataclass(frozen=True)
class Context:
    """What a report says about the message that caused it."""

    envelope: Envelope
    results: ScanResults
    decision: Decision
    subject: str
    message_id: str
    received: tuple[str, ...]
    size: int
    quarantine_id: str | None = None
    suppressed: int = 0
    held: tuple[dict[str, Any], ...] = ()  # notes of the viruses held back since the last report, oldest first


def context(
    envelope: Envelope,
    message: Spool,
    results: ScanResults,
    decision: Decision,
    quarantine_id: str | None = None,
    suppressed: int = 0,
) -> Context:
    parsed = msgmod.parse(message.read(msgmod.HEAD_LIMIT))
    return Context(
        envelope=envelope,
        results=results,
        decision=decision,
        subject=msgmod.subject(parsed),
        message_id=msgmod.message_id(parsed),
        received=tuple(msgmod.received_chain(parsed)),
        size=message.size,
        quarantine_id=quarantine_id,
        suppressed=suppressed,
    )


def failure_of(ctx: Context) -> ScanFailure | None:
    failures = ctx.results.failures
    return failures[0] if failures else None


def subject_of(ctx: Context) -> str:
    failure = failure_of(ctx)
    scanner = failure.scanner if ctx.decision.report is ReportKind.SCANNER_FAILED and failure else SCANNER_CLAMAV
    return SUBJECTS[(ctx.decision.report, scanner)]


def rate_key(ctx: Context) -> str | None:
    """Reports of the same scanner failure share a key (and a rate limit); so do all virus reports."""
    failure = failure_of(ctx)
    if ctx.decision.report is ReportKind.SCANNER_FAILED and failure:
        return f"{failure.scanner}:{failure.cause.value}"
    if ctx.decision.report is ReportKind.VIRUS_FOUND:
        return VIRUS_KEY
    return None


def note(ctx: Context) -> dict[str, Any] | None:
    """What a held-back VIRUS FOUND leaves for the next report: escaped, bounded values only."""
    if ctx.decision.report is not ReportKind.VIRUS_FOUND:
        return None
    p = msgmod.printable
    return {
        "quarantine_id": ctx.quarantine_id or "",
        "viruses": [p(name, 200) for name in _virus_names(ctx)][:10],
        "sender": p(ctx.envelope.sender, 300),
        "recipients": [p(r, 300) for r in ctx.envelope.recipients[:10]],
        "nrcpt": len(ctx.envelope.recipients),
        "subject": p(ctx.subject, 200),
    }


def _virus_names(ctx: Context) -> tuple[str, ...]:
    return tuple(getattr(ctx.results.virus, "names", ()) or ())


def _addr(address: str) -> str:
    return "<" + msgmod.printable(address, 300) + ">"


def body(ctx: Context, hostname: str) -> str:
    p = msgmod.printable
    env = ctx.envelope
    lines: list[str] = []
    failure = failure_of(ctx)
    if ctx.decision.report is ReportKind.VIRUS_FOUND:
        names = ctx.results.virus.names  # type: ignore[union-attr]
        lines.append(f"mailfilter on {p(hostname)} found a virus in a message.")
        if ctx.decision.action is Action.QUARANTINE:
            lines.append("The message was not delivered; it is held in the quarantine.")
        else:
            lines.append("The message was not delivered; it was rejected.")
        lines.append("")
        lines.append(f"Virus:          {p(', '.join(names))}")
        lines.append(f"Quarantine id:  {ctx.quarantine_id or '(not quarantined)'}")
        if _summary(ctx):
            lines.append(f"Held back:      {ctx.suppressed} more virus(es) since the last report (listed below)")
    elif failure is not None:
        code = failure.code if failure.code is not None else CLAMDSCAN_ERROR
        if ctx.decision.action is Action.TEMPFAIL:
            fate = "The message was not delivered: Postfix keeps it in its queue and retries later."
        else:
            fate = 'The message was delivered UNSCANNED by this scanner (on_error = "accept").'
        lines.append(f"mailfilter on {p(hostname)} could not scan a message.")
        lines.append(fate)
        lines.append("")
        lines.append(f"Scanner:        {failure.scanner}")
        lines.append(f"Problem:        {failure.cause.value}")
        lines.append(f"Error:          {p(failure.text)}")
        if failure.scanner == SCANNER_CLAMAV:
            lines.append(f"Exit code:      {code} ({clamscan_code_text(code)})")
        lines.append(f"What to check:  {HINTS[failure.cause]}")
        if ctx.suppressed:
            lines.append(f"Suppressed:     {ctx.suppressed} more report(s) of this failure since the last one")
    lines.append("")
    lines.append("The message")
    lines.append(f"Envelope from:  {_addr(env.sender)}")
    lines.append(f"Envelope to:    {', '.join(_addr(r) for r in env.recipients)}")
    lines.append(f"Queue id:       {p(env.queue_id or 'unknown')}")
    lines.append(f"Subject:        {ctx.subject}")
    lines.append(f"Message-ID:     {ctx.message_id}")
    lines.append(f"Size:           {ctx.size} bytes")
    lines.append("")
    lines.append("Received chain (newest first):")
    lines.extend(f"  {r}" for r in ctx.received or ["(none)"])
    if _summary(ctx):
        lines.append("")
        lines.extend(_held_lines(ctx))
    return "\n".join(lines) + "\n"


def _summary(ctx: Context) -> bool:
    """A VIRUS FOUND that also tells of the viruses held back since the last one."""
    return ctx.decision.report is ReportKind.VIRUS_FOUND and ctx.suppressed > 0


def _held_lines(ctx: Context) -> list[str]:
    """The viruses held back since the last report. The notes come from the rate-limit state, a file:
    every value is escaped again here, so that render() stays safe whatever that file holds."""
    p = msgmod.printable
    listed = ctx.held[: ctx.suppressed]
    which = f"the first {len(listed)} of {ctx.suppressed}" if len(listed) < ctx.suppressed else f"all {ctx.suppressed}"
    lines = [f"Viruses held back since the last report ({which}), oldest first:"]
    for n in listed:
        recipients = n.get("recipients") if isinstance(n.get("recipients"), list) else []
        rcpt = ", ".join(_addr(str(r)) for r in recipients)
        nrcpt = n.get("nrcpt")
        if isinstance(nrcpt, int) and nrcpt > len(recipients):
            rcpt += f" and {nrcpt - len(recipients)} more"
        viruses = n.get("viruses") if isinstance(n.get("viruses"), list) else []
        lines.append(f"  {p(str(n.get('quarantine_id') or '(not quarantined)'), 100)}  {p(', '.join(str(v) for v in viruses), 300)}")
        lines.append(f"      from {_addr(str(n.get('sender', '')))} to {rcpt or '(none)'}")
        lines.append(f"      Subject: {p(str(n.get('subject', '')), 200)}")
    return lines


def render(ctx: Context, config: ReportConfig, hostname: str, now: datetime) -> bytes:
    """The whole report message. Its header holds only our own values."""
    header = [
        ("From", f"mailfilter <{config.sender}>"),
        ("To", config.admin),
        ("Subject", subject_of(ctx) + (f" (and {ctx.suppressed} more)" if _summary(ctx) else "")),
        ("Date", format_datetime(now)),
        ("Message-ID", make_msgid("mailfilter", domain=msgmod.header_value(hostname, 200))),
        ("Auto-Submitted", "auto-generated"),
        ("MIME-Version", "1.0"),
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Transfer-Encoding", "8bit"),
    ]
    head = "".join(f"{k}: {msgmod.header_value(v)}\n" for k, v in header)
    return (head + "\n" + body(ctx, hostname)).encode("utf-8", "replace")


def send(ctx: Context, config: Config, hostname: str, now: datetime) -> str:
    """Mail the report to the admin, unless reports are off or the rate limit holds it back.

    Returns what happened: "sent", "suppressed" or "off". Raises DeliveryError
    when sendmail fails or takes longer than [report] timeout, and OSError when
    the rate-limit state cannot be kept or stays locked (ratelimit.LockTimeout):
    no state, no report, as an outage must never become a mail storm.
    """
    if not config.report.admin:
        return "off"
    key = rate_key(ctx)
    if key is not None:
        admission = ratelimit.admit(config.report.state_dir, key, config.report.interval, now.timestamp(), note(ctx))
        if not admission.allowed:
            return "suppressed"
        ctx = replace(ctx, suppressed=admission.suppressed, held=admission.notes)
    data = render(ctx, config.report, hostname, now)
    delivery = DeliveryConfig(sendmail=config.delivery.sendmail, timeout=config.report.timeout)
    reinject.sendmail(data, config.report.sender, [config.report.admin], delivery)
    return "sent"
