"""decide(results, config) -> Decision: what to do with one scanned message.

Pure: no I/O, no clock, no imports of any door. The order of precedence:

1. a virus found: quarantine (or reject, by policy), and report to the admin;
2. a virus scan that could not see all of the message (a ClamAV limit, a MIME part out of reach):
   [policy] unscannable, quarantine by default; "accept" delivers it marked Unscanned and warns.
   Never clean, whatever spamd said;
3. a scanner that failed, with on_error = "tempfail": defer, and report;
   with on_error = "accept": go on, mark the message Unscanned, warn;
4. spam at or above spam_reject_score: reject; at or above the quarantine score: quarantine;
5. otherwise deliver, with our headers.
"""

from __future__ import annotations

from .config import Config
from .model import (
    SCANNER_SPAMD,
    Action,
    Decision,
    Dsn,
    ReportKind,
    ScanFailure,
    ScanResults,
    SpamOutcome,
    SpamReport,
    SpamSkipped,
    Verdict,
    VirusOutcome,
    VirusReport,
)

PRODUCT = "mailfilter"

# 4.7.1 for a deferred scan, the same status the milter answers with (451 4.7.1).
TEMPFAIL_STATUS = (4, 7, 1)
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


def decide(results: ScanResults, config: Config) -> Decision:
    headers = tuple(spam_headers(results.spam) + virus_headers(results.virus))

    if isinstance(results.virus, VirusReport) and results.virus.infected:
        names = ", ".join(results.virus.names)
        if config.policy.virus == "reject":
            dsn = Dsn((5, 7, 1), f"message rejected: virus found: {names}")
            return Decision(Verdict.VIRUS, Action.REJECT, headers, dsn, ReportKind.VIRUS_FOUND)
        return Decision(Verdict.VIRUS, Action.QUARANTINE, headers, None, ReportKind.VIRUS_FOUND)

    if isinstance(results.virus, VirusReport) and not results.virus.complete:
        return _unscannable(results.virus, headers, config)

    warnings = []
    for failure in results.failures:
        if on_error(failure, config) == "tempfail":
            dsn = Dsn(TEMPFAIL_STATUS, f"{PRODUCT}: {failure.scanner} {failure.cause.value}, message deferred")
            return Decision(Verdict.ERROR, Action.TEMPFAIL, headers, dsn, ReportKind.SCANNER_FAILED)
        warnings.append(f"delivered unscanned by {failure.scanner} (on_error=accept): {failure.describe()}")
    if warnings:
        return Decision(Verdict.ERROR, Action.DELIVER, headers, None, ReportKind.SCANNER_FAILED, tuple(warnings))

    spam = results.spam
    if isinstance(spam, SpamReport):
        if spam.score >= config.policy.spam_reject_score:
            dsn = Dsn((5, 7, 1), f"message rejected as spam (score {spam.score:.1f})")
            return Decision(Verdict.SPAM, Action.REJECT, headers, dsn)
        if spam.score >= config.quarantine.spam_score:
            return Decision(Verdict.SPAM, Action.QUARANTINE, headers)
        if spam.is_spam:
            return Decision(Verdict.SPAM, Action.DELIVER, headers)
    return Decision(Verdict.CLEAN, Action.DELIVER, headers)


def _unscannable(report: VirusReport, headers: tuple[tuple[str, str], ...], config: Config) -> Decision:
    reason = unscannable_reason(report)
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
