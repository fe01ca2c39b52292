"""The policy, table-driven: pure, no daemons."""

import math

import pytest

from mailfilter import config as configmod
from mailfilter.model import (
    Action,
    Cause,
    ReportKind,
    ScanFailure,
    ScanResults,
    SpamReport,
    SpamSkipped,
    Verdict,
    VirusReport,
)
from mailfilter.policy import decide
from mailfilter.record import replace

HAM = SpamReport(1.2, 5.0, ("BAYES_00",))
SPAM = SpamReport(7.5, 5.0, ("GTUBE",))
BIG_SPAM = SpamReport(1000.0, 5.0, ("GTUBE",))
CLEAN = VirusReport()
EICAR = VirusReport(("Eicar-Test-Signature",), code=1)
SPAMD_DOWN = ScanFailure("spamd", Cause.UNAVAILABLE, "connection refused")
CLAM_DOWN = ScanFailure("clamav", Cause.UNAVAILABLE, "no socket")
CLAM_SLOW = ScanFailure("clamav", Cause.TIMEOUT, "no answer")
SKIPPED = SpamSkipped("message larger than 512000 bytes")
DEEP = VirusReport(unscannable=("clamd: Heuristics.Limits.Exceeded.MaxRecursion in part 2 (application/zip)",))
EICAR_AND_DEEP = VirusReport(("Eicar-Test-Signature",), code=1, unscannable=DEEP.unscannable)


def cfg(**sections):
    return configmod.from_dict(sections)


DEFAULT = cfg()
ACCEPT_BOTH = cfg(spamd={"on_error": "accept"}, clamd={"on_error": "accept"})
QUARANTINE_10 = cfg(quarantine={"spam_score": 10})
REJECT_VIRUS = cfg(policy={"virus": "reject"})
REJECT_SPAM_20 = cfg(policy={"spam_reject_score": 20}, quarantine={"spam_score": 10})
UNSCANNABLE = {value: cfg(policy={"unscannable": value}) for value in ("quarantine", "reject", "tempfail", "accept")}

CASES = [
    # spam, virus, config, verdict, action, dsn status, report
    (HAM, CLEAN, DEFAULT, Verdict.CLEAN, Action.DELIVER, None, None),
    (SPAM, CLEAN, DEFAULT, Verdict.SPAM, Action.DELIVER, None, None),
    (SKIPPED, CLEAN, DEFAULT, Verdict.CLEAN, Action.DELIVER, None, None),
    (HAM, EICAR, DEFAULT, Verdict.VIRUS, Action.QUARANTINE, None, ReportKind.VIRUS_FOUND),
    (SPAMD_DOWN, EICAR, DEFAULT, Verdict.VIRUS, Action.QUARANTINE, None, ReportKind.VIRUS_FOUND),
    (HAM, EICAR, REJECT_VIRUS, Verdict.VIRUS, Action.REJECT, (5, 7, 1), ReportKind.VIRUS_FOUND),
    (SPAMD_DOWN, CLEAN, DEFAULT, Verdict.ERROR, Action.TEMPFAIL, (4, 7, 1), ReportKind.SCANNER_FAILED),
    (HAM, CLAM_DOWN, DEFAULT, Verdict.ERROR, Action.TEMPFAIL, (4, 7, 1), ReportKind.SCANNER_FAILED),
    (HAM, CLAM_SLOW, DEFAULT, Verdict.ERROR, Action.TEMPFAIL, (4, 7, 1), ReportKind.SCANNER_FAILED),
    (BIG_SPAM, CLAM_DOWN, REJECT_SPAM_20, Verdict.ERROR, Action.TEMPFAIL, (4, 7, 1), ReportKind.SCANNER_FAILED),
    (HAM, CLAM_DOWN, ACCEPT_BOTH, Verdict.ERROR, Action.DELIVER, None, ReportKind.SCANNER_FAILED),
    (SPAMD_DOWN, CLEAN, ACCEPT_BOTH, Verdict.ERROR, Action.DELIVER, None, ReportKind.SCANNER_FAILED),
    (SPAM, CLEAN, QUARANTINE_10, Verdict.SPAM, Action.DELIVER, None, None),
    (SpamReport(10.0, 5.0), CLEAN, QUARANTINE_10, Verdict.SPAM, Action.QUARANTINE, None, None),
    (BIG_SPAM, CLEAN, REJECT_SPAM_20, Verdict.SPAM, Action.REJECT, (5, 7, 1), None),
    (SpamReport(15.0, 5.0), CLEAN, REJECT_SPAM_20, Verdict.SPAM, Action.QUARANTINE, None, None),
    # A virus scan that could not see everything: [policy] unscannable, never clean; a virus beats it,
    # it beats a spamd failure and spam.
    (HAM, DEEP, DEFAULT, Verdict.UNSCANNABLE, Action.QUARANTINE, None, None),
    (HAM, DEEP, UNSCANNABLE["quarantine"], Verdict.UNSCANNABLE, Action.QUARANTINE, None, None),
    (HAM, DEEP, UNSCANNABLE["reject"], Verdict.UNSCANNABLE, Action.REJECT, (5, 7, 1), None),
    (HAM, DEEP, UNSCANNABLE["tempfail"], Verdict.UNSCANNABLE, Action.TEMPFAIL, (4, 7, 1), None),
    (HAM, DEEP, UNSCANNABLE["accept"], Verdict.UNSCANNABLE, Action.DELIVER, None, None),
    (HAM, EICAR_AND_DEEP, DEFAULT, Verdict.VIRUS, Action.QUARANTINE, None, ReportKind.VIRUS_FOUND),
    (HAM, EICAR_AND_DEEP, UNSCANNABLE["accept"], Verdict.VIRUS, Action.QUARANTINE, None, ReportKind.VIRUS_FOUND),
    (SPAMD_DOWN, DEEP, DEFAULT, Verdict.UNSCANNABLE, Action.QUARANTINE, None, None),
    (BIG_SPAM, DEEP, REJECT_SPAM_20, Verdict.UNSCANNABLE, Action.QUARANTINE, None, None),
    (SKIPPED, DEEP, UNSCANNABLE["accept"], Verdict.UNSCANNABLE, Action.DELIVER, None, None),
]


@pytest.mark.parametrize(("spam", "virus", "config", "verdict", "action", "status", "report"), CASES)
def test_decide(spam, virus, config, verdict, action, status, report):
    d = decide(ScanResults(spam, virus), config)
    assert (d.verdict, d.action, d.report) == (verdict, action, report)
    assert (d.dsn.status if d.dsn else None) == status


def test_one_scanner_accepting_does_not_excuse_the_other():
    config = cfg(spamd={"on_error": "accept"})
    d = decide(ScanResults(SPAMD_DOWN, CLAM_DOWN), config)
    assert d.action is Action.TEMPFAIL and "clamav" in d.dsn.text


def test_accepted_failure_is_marked_and_warned():
    d = decide(ScanResults(HAM, CLAM_DOWN), ACCEPT_BOTH)
    headers = dict(d.headers)
    assert headers["X-Virus-Status"] == "Unscanned (clamav unavailable)"
    assert "X-Virus-Scanned" not in headers
    assert len(d.warnings) == 1 and "clamav" in d.warnings[0] and "no socket" in d.warnings[0]


def test_headers_for_spam():
    headers = dict(decide(ScanResults(SPAM, CLEAN), DEFAULT).headers)
    assert headers == {
        "X-Spam-Flag": "YES",
        "X-Spam-Score": "7.5",
        "X-Spam-Status": "Yes, score=7.5 required=5.0 tests=GTUBE",
        "X-Virus-Scanned": "ClamAV using mailfilter",
        "X-Virus-Status": "Clean",
    }


def test_headers_for_ham_and_virus_and_skip():
    ham = dict(decide(ScanResults(HAM, CLEAN), DEFAULT).headers)
    assert ham["X-Spam-Flag"] == "NO" and ham["X-Spam-Status"].startswith("No, score=1.2 required=5.0")
    virus = dict(decide(ScanResults(HAM, EICAR), DEFAULT).headers)
    assert virus["X-Virus-Status"] == "Infected (Eicar-Test-Signature)"
    skipped = dict(decide(ScanResults(SKIPPED, CLEAN), DEFAULT).headers)
    assert skipped["X-Spam-Status"] == "No, skipped (message larger than 512000 bytes)"


def test_tempfail_dsn_is_class_4_and_one_line():
    d = decide(ScanResults(SPAMD_DOWN, CLEAN), DEFAULT)
    assert d.dsn.temporary and d.dsn.line().startswith("4.7.1 ") and "\n" not in d.dsn.line()


def test_defaults_never_quarantine_or_reject_spam():
    assert math.isinf(DEFAULT.quarantine.spam_score) and math.isinf(DEFAULT.policy.spam_reject_score)
    d = decide(ScanResults(replace(BIG_SPAM, score=1e9), CLEAN), DEFAULT)
    assert d.action is Action.DELIVER


@pytest.mark.parametrize("value", ["quarantine", "reject", "tempfail", "accept"])
def test_an_incomplete_scan_is_never_marked_clean(value):
    d = decide(ScanResults(HAM, DEEP), UNSCANNABLE[value])
    status = dict(d.headers)["X-Virus-Status"]
    assert status == "Unscanned (clamd: Heuristics.Limits.Exceeded.MaxRecursion in part 2 (application/zip))"


def test_unscannable_texts():
    rejected = decide(ScanResults(HAM, DEEP), UNSCANNABLE["reject"]).dsn
    assert rejected.line() == "5.7.1 message rejected: could not be scanned completely: " + DEEP.unscannable[0]
    deferred = decide(ScanResults(HAM, DEEP), UNSCANNABLE["tempfail"]).dsn
    assert deferred.line().startswith("4.7.1 mailfilter: message could not be scanned completely, deferred: clamd: ")
    accepted = decide(ScanResults(HAM, DEEP), UNSCANNABLE["accept"])
    assert len(accepted.warnings) == 1 and "[policy] unscannable = accept" in accepted.warnings[0]
    many = VirusReport(unscannable=("reason 0", "reason 1", "reason 2"))
    assert dict(decide(ScanResults(HAM, many), DEFAULT).headers)["X-Virus-Status"] == "Unscanned (reason 0; and 2 more)"
    long = VirusReport(unscannable=("x" * 1000,))
    status = dict(decide(ScanResults(HAM, long), DEFAULT).headers)["X-Virus-Status"]
    assert status.endswith("...)") and len(status) == len("Unscanned ()") + 200


def test_a_truncated_spam_scan_says_so():
    truncated = replace(BIG_SPAM, truncated=(511_990, 740_123))
    headers = dict(decide(ScanResults(truncated, CLEAN), DEFAULT).headers)
    assert headers["X-Spam-Status"] == "Yes, score=1000.0 required=5.0 tests=GTUBE, truncated to 511990 of 740123 bytes"
