"""Admin reports: VIRUS FOUND and ANTIVIRUS FAILED (or SPAM SCANNER FAILED).

render() is pure and returns the whole message as bytes. Every value taken
from the scanned message (Subject, Received, addresses) goes through
message.printable(), so message content can add neither a header nor a line
to the report. send() delivers it through the same sendmail as reinjection.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from email.utils import format_datetime, make_msgid

from .. import message as msgmod
from ..config import Config, ReportConfig
from ..exitcodes import clamscan_code_text
from ..model import SCANNER_CLAMAV, Action, Cause, Decision, Envelope, ReportKind, ScanFailure, ScanResults
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
    """Reports of the same scanner failure share a key (and a rate limit); virus reports have none."""
    failure = failure_of(ctx)
    if ctx.decision.report is ReportKind.SCANNER_FAILED and failure:
        return f"{failure.scanner}:{failure.cause.value}"
    return None


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
    return "\n".join(lines) + "\n"


def render(ctx: Context, config: ReportConfig, hostname: str, now: datetime) -> bytes:
    """The whole report message. Its header holds only our own values."""
    header = [
        ("From", f"mailfilter <{config.sender}>"),
        ("To", config.admin),
        ("Subject", subject_of(ctx)),
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
    when sendmail fails and OSError when the rate-limit state cannot be kept
    (no state, no report: an outage must never become a mail storm).
    """
    if not config.report.admin:
        return "off"
    key = rate_key(ctx)
    if key is not None:
        allowed, suppressed = ratelimit.admit(config.report.state_dir, key, config.report.interval, now.timestamp())
        if not allowed:
            return "suppressed"
        ctx = replace(ctx, suppressed=suppressed)
    data = render(ctx, config.report, hostname, now)
    reinject.sendmail(data, config.report.sender, [config.report.admin], config.delivery)
    return "sent"
