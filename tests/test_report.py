"""Admin report text, pinned by golden files (regenerate with MAILFILTER_REGOLD=1), and its rate limit."""

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailfilter import config as configmod
from mailfilter.actions import ratelimit, report
from mailfilter.model import Action, Cause, Decision, Envelope, ReportKind, ScanFailure, ScanResults, SpamReport, Verdict, VirusReport
from mailfilter.spool import Spool

import corpus

GOLDEN = Path(__file__).parent / "golden"
NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
ENV = Envelope("alice@example.org", ("bob@example.net", "carol@example.net"), "4F2A1C")
HAM = SpamReport(0.5, 5.0, ("NONE",))


def ctx(raw, virus, decision, **kw):
    with Spool.of(raw) as spool:
        return report.context(ENV, spool, ScanResults(HAM, virus), decision, **kw)


VIRUS_CTX = ctx(
    corpus.eicar_attached(),
    VirusReport(("Eicar-Test-Signature",), 1),
    Decision(Verdict.VIRUS, Action.QUARANTINE, report=ReportKind.VIRUS_FOUND),
    quarantine_id="20261127T120000Z-0123456789",
)
FAILED_CTX = ctx(
    corpus.clean(),
    ScanFailure("clamav", Cause.ERROR, "clamscan exit status 50: database initialization error", code=50),
    Decision(Verdict.ERROR, Action.TEMPFAIL, report=ReportKind.SCANNER_FAILED),
    suppressed=7,
)


def body_of(data: bytes) -> str:
    return data.decode("utf-8").split("\n\n", 1)[1]


@pytest.mark.parametrize(("name", "context"), [("virus-found", VIRUS_CTX), ("antivirus-failed", FAILED_CTX)])
def test_report_body_matches_golden(name, context):
    text = body_of(report.render(context, configmod.ReportConfig(), "mx1.example.net", NOW))
    path = GOLDEN / f"report-{name}.txt"
    if os.environ.get("MAILFILTER_REGOLD"):
        path.write_text(text)
    assert text == path.read_text()


def test_report_header_holds_only_our_values():
    data = report.render(VIRUS_CTX, configmod.ReportConfig(admin="root@example.net", sender="mf@example.net"), "mx1", NOW)
    head = data.split(b"\n\n", 1)[0].decode().splitlines()
    names = [line.split(":", 1)[0] for line in head]
    assert names == [
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "Auto-Submitted",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
    ]
    assert "Subject: VIRUS FOUND" in head and "To: root@example.net" in head


def test_unknown_exit_code_is_said_so():
    c = ctx(
        corpus.clean(),
        ScanFailure("clamav", Cause.ERROR, "boom", code=99),
        Decision(Verdict.ERROR, Action.TEMPFAIL, report=ReportKind.SCANNER_FAILED),
    )
    text = body_of(report.render(c, configmod.ReportConfig(), "h", NOW))
    assert "Exit code:      99 (unknown error (exit status 99 is not a known clamscan code))" in text


def test_spamd_failure_subject_and_delivered_unscanned_wording():
    with Spool.of(corpus.clean()) as spool:
        c = report.context(
            ENV,
            spool,
            ScanResults(ScanFailure("spamd", Cause.UNAVAILABLE, "refused"), VirusReport()),
            Decision(Verdict.ERROR, Action.DELIVER, report=ReportKind.SCANNER_FAILED),
        )
    data = report.render(c, configmod.ReportConfig(), "h", NOW).decode()
    assert "Subject: SPAM SCANNER FAILED" in data and "delivered UNSCANNED" in data and "Exit code" not in data


def test_hostile_subject_and_received_cannot_add_lines():
    c = ctx(corpus.injecting_subject(), VirusReport(("X",), 1), Decision(Verdict.VIRUS, Action.QUARANTINE, report=ReportKind.VIRUS_FOUND))
    data = report.render(c, configmod.ReportConfig(), "h", NOW).decode()
    head, text = data.split("\n\n", 1)
    assert "Bcc" not in head
    assert not any(line.startswith(("Bcc:", "X-Injected", "forged body")) for line in data.splitlines())
    assert "Subject:        hello\\x0d\\x0aBcc: victim@example.com" in text


def test_rate_limit_counts_suppressed_reports(tmp_path):
    state = str(tmp_path / "state")
    assert ratelimit.admit(state, "clamav:unavailable", 60, 1000.0) == (True, 0)
    assert ratelimit.admit(state, "clamav:unavailable", 60, 1010.0) == (False, 0)
    assert ratelimit.admit(state, "clamav:unavailable", 60, 1020.0) == (False, 0)
    assert ratelimit.admit(state, "spamd:timeout", 60, 1020.0) == (True, 0)  # another failure, its own limit
    assert ratelimit.admit(state, "clamav:unavailable", 60, 1061.0) == (True, 2)
    assert ratelimit.admit(state, "clamav:unavailable", 60, 1062.0) == (False, 0)
    assert oct(os.stat(os.path.join(state, ratelimit.STATE_FILE)).st_mode & 0o777) == "0o600"


def test_damaged_state_file_costs_one_report(tmp_path):
    (tmp_path / ratelimit.STATE_FILE).write_text("{not json")
    assert ratelimit.admit(str(tmp_path), "k", 60, 1.0) == (True, 0)
    assert ratelimit.admit(str(tmp_path), "k", 60, 2.0) == (False, 0)
