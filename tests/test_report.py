"""Admin report text, pinned by golden files (regenerate with MAILFILTER_REGOLD=1), and its rate limit."""

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailfilter import config as configmod
from mailfilter.actions import ratelimit, reinject, report
from mailfilter.model import Action, Cause, Decision, Envelope, ReportKind, ScanFailure, ScanResults, SpamReport, Verdict, VirusReport
from mailfilter.record import replace
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
    assert ratelimit.admit(state, "clamav:unavailable", 60, 1000.0)[:2] == (True, 0)
    assert ratelimit.admit(state, "clamav:unavailable", 60, 1010.0)[:2] == (False, 0)
    assert ratelimit.admit(state, "clamav:unavailable", 60, 1020.0)[:2] == (False, 0)
    assert ratelimit.admit(state, "spamd:timeout", 60, 1020.0)[:2] == (True, 0)  # another failure, its own limit
    assert ratelimit.admit(state, "clamav:unavailable", 60, 1061.0)[:2] == (True, 2)
    assert ratelimit.admit(state, "clamav:unavailable", 60, 1062.0)[:2] == (False, 0)
    assert oct(os.stat(os.path.join(state, ratelimit.STATE_FILE)).st_mode & 0o777) == "0o600"


def test_damaged_state_file_costs_one_report(tmp_path):
    (tmp_path / ratelimit.STATE_FILE).write_text("{not json")
    assert ratelimit.admit(str(tmp_path), "k", 60, 1.0)[:2] == (True, 0)
    assert ratelimit.admit(str(tmp_path), "k", 60, 2.0)[:2] == (False, 0)


# --- VIRUS FOUND in an outbreak: the first at once, then one summary per interval --------------

HELD = (
    {
        "quarantine_id": "20261127T120001Z-aaaaaaaaaa",
        "viruses": ["Win.Test.A", "Win.Test.B"],
        "sender": "mallory@example.com",
        "recipients": ["bob@example.net"],
        "nrcpt": 1,
        "subject": "invoice",
    },
    {  # as a damaged or hostile state file could hold it: render escapes every value again
        "quarantine_id": "20261127T120002Z-bbbbbbbbbb\nBcc: x@example.com",
        "viruses": ["Eicar\r\nX-Injected: yes"],
        "sender": "eve@example.com\n",
        "recipients": ["r1@example.net", "r2@example.net"],
        "nrcpt": 12,
        "subject": "hello\nforged line",
    },
)
SUMMARY_CTX = replace(VIRUS_CTX, suppressed=3, held=HELD)  # 3 held back, 2 notes kept


def test_virus_summary_matches_golden():
    data = report.render(SUMMARY_CTX, configmod.ReportConfig(), "mx1.example.net", NOW).decode()
    head, text = data.split("\n\n", 1)
    assert "\nSubject: VIRUS FOUND (and 3 more)\n" in head
    assert not any(line.startswith(("Bcc:", "X-Injected", "forged line")) for line in text.splitlines())
    path = GOLDEN / "report-virus-summary.txt"
    if os.environ.get("MAILFILTER_REGOLD"):
        path.write_text(text)
    assert text == path.read_text()


def config_for(tmp_path, sendmail_argv, **report_keys):
    return configmod.from_dict(
        {
            "delivery": {"sendmail": sendmail_argv, "timeout": 30},
            "report": {"admin": "admin@example.net", "state_dir": str(tmp_path / "state"), "interval": 60, **report_keys},
        }
    )


def virus_ctx(n):
    env = Envelope(f"sender{n}@example.org", ("bob@example.net",), f"Q{n}")
    with Spool.of(corpus.eicar_attached()) as spool:
        return report.context(
            env,
            spool,
            ScanResults(HAM, VirusReport((f"Virus-{n}",), 1)),
            Decision(Verdict.VIRUS, Action.QUARANTINE, report=ReportKind.VIRUS_FOUND),
            quarantine_id=f"ID-{n}",
        )


def test_virus_reports_share_one_rate_limit_and_the_next_one_lists_the_held_back(tmp_path, sendmail):
    config = config_for(tmp_path, sendmail.argv())
    t0 = NOW.timestamp()
    sent = [report.send(virus_ctx(n), config, "mx1", datetime.fromtimestamp(t0 + n, UTC)) for n in range(5)]
    assert sent == ["sent", "suppressed", "suppressed", "suppressed", "suppressed"]
    assert report.send(virus_ctx(5), config, "mx1", datetime.fromtimestamp(t0 + 61, UTC)) == "sent"
    [(_, first), (_, summary)] = sendmail.calls
    assert b"Virus:          Virus-0" in first and b"more virus" not in first
    text = summary.decode()
    assert "Subject: VIRUS FOUND (and 4 more)" in text and "Virus:          Virus-5" in text
    assert "Held back:      4 more virus(es) since the last report (listed below)" in text
    assert "Viruses held back since the last report (all 4), oldest first:" in text
    assert [line.split()[0] for line in text.splitlines() if line.startswith("  ID-")] == ["ID-1", "ID-2", "ID-3", "ID-4"]
    assert "      from <sender3@example.org> to <bob@example.net>" in text
    # the summary starts a new interval, with nothing held back
    assert report.send(virus_ctx(6), config, "mx1", datetime.fromtimestamp(t0 + 62, UTC)) == "suppressed"


def test_held_back_notes_are_bounded_but_all_counted(tmp_path):
    state = str(tmp_path)
    assert ratelimit.admit(state, "virus", 60, 0.0, {"n": 0}).allowed
    for n in range(1, ratelimit.MAX_NOTES + 21):
        assert not ratelimit.admit(state, "virus", 60, 1.0, {"n": n}).allowed
    admission = ratelimit.admit(state, "virus", 60, 61.0, {"n": -1})
    assert admission.allowed and admission.suppressed == ratelimit.MAX_NOTES + 20
    assert [n["n"] for n in admission.notes] == list(range(1, ratelimit.MAX_NOTES + 1))
    ctx = replace(VIRUS_CTX, suppressed=admission.suppressed, held=admission.notes)
    assert f"(the first {ratelimit.MAX_NOTES} of {ratelimit.MAX_NOTES + 20}), oldest first:" in report.body(ctx, "h")


def test_failure_reports_keep_their_count_and_list_nothing(tmp_path, sendmail):
    config = config_for(tmp_path, sendmail.argv())
    ctx = replace(FAILED_CTX, suppressed=0)
    t0 = NOW.timestamp()
    assert [report.send(ctx, config, "h", datetime.fromtimestamp(t0 + n, UTC)) for n in (0, 1, 2)] == ["sent", "suppressed", "suppressed"]
    assert report.send(ctx, config, "h", datetime.fromtimestamp(t0 + 70, UTC)) == "sent"
    text = sendmail.calls[-1][1].decode()
    assert "Suppressed:     2 more report(s) of this failure since the last one" in text and "Held back" not in text
    assert "Subject: ANTIVIRUS FAILED\n" in text


# --- bounded waits: the rate-limit lock and the report's sendmail ------------------------------


@pytest.fixture
def held_lock(tmp_path):
    """Another process holding the rate-limit state's lock until the test ends."""
    state = tmp_path / "state"
    state.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "time.sleep(20)\n",
            str(state / ratelimit.LOCK_FILE),
        ],
        stdout=subprocess.PIPE,
    )
    assert holder.stdout.readline() == b"locked\n"
    yield state
    holder.kill()
    holder.wait()
    holder.stdout.close()


def test_a_lock_held_by_another_process_costs_the_report_not_a_hang(tmp_path, sendmail, held_lock, monkeypatch):
    started = time.monotonic()
    with pytest.raises(ratelimit.LockTimeout, match=r"still locked after 0\.3 s"):
        ratelimit.admit(str(held_lock), "clamav:unavailable", 60, 1000.0, timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 3
    monkeypatch.setattr(ratelimit, "LOCK_TIMEOUT", 0.3)
    started = time.monotonic()
    with pytest.raises(OSError, match="still locked"):
        report.send(VIRUS_CTX, config_for(tmp_path, sendmail.argv()), "h", NOW)
    assert time.monotonic() - started < 3 and sendmail.calls == []


def test_the_report_s_sendmail_has_report_timeout_not_delivery_timeout(tmp_path, sendmail):
    config = config_for(tmp_path, sendmail.argv("--sleep", "20"), timeout=0.5)  # [delivery] timeout stays 30 s
    started = time.monotonic()
    with pytest.raises(reinject.DeliveryError, match=r"did not finish within 0\.5 s"):
        report.send(VIRUS_CTX, config, "h", NOW)
    assert time.monotonic() - started < 5
