"""The pipe door with a recording sendmail and scripted scanner answers (no daemons).

What pipe(8) relies on: exit 0, 69 or 75 only; one status line on failure,
nothing on success; sendmail called as `-G -i -f SENDER -- RCPT...`.
"""

import io
import subprocess
import sys
import time

import pytest

from mailfilter import pipeline
from mailfilter.model import Cause, ScanFailure, ScanResults, SpamReport, VirusReport

import corpus
from conftest import ROOT, mode, quarantined, run_pipe

HAM = SpamReport(0.3, 5.0, ("NONE",))
SPAM = SpamReport(1000.0, 5.0, ("GTUBE",))
CLEAN = VirusReport()
EICAR = VirusReport(("Eicar-Test-Signature",), 1)
CLAM_DOWN = ScanFailure("clamav", Cause.UNAVAILABLE, "Could not reach clamd")


@pytest.fixture
def answers(monkeypatch):
    """answers(spam, virus): make the pipeline's scanners say this."""

    def set_answers(spam, virus):
        monkeypatch.setattr(pipeline, "scan", lambda raw, config, *_: ScanResults(spam, virus))

    return set_answers


def test_clean_is_reinjected_with_exact_argv_and_headers(make_config, sendmail, answers):
    answers(HAM, CLEAN)
    status, out = run_pipe(make_config(), corpus.spoofed_headers())
    assert (status, out) == (0, "")
    [(argv, data)] = sendmail.calls
    assert argv == ["-G", "-i", "-f", "alice@example.org", "--", "bob@example.net", "carol@example.net"]
    head = data.split(b"\n\n", 1)[0].splitlines()
    assert head[:5] == [
        b"X-Spam-Flag: NO",
        b"X-Spam-Score: 0.3",
        b"X-Spam-Status: No, score=0.3 required=5.0 tests=NONE",
        b"X-Virus-Scanned: ClamAV using mailfilter",
        b"X-Virus-Status: Clean",
    ]
    assert b"-100" not in data and sum(line.lower().startswith(b"x-virus-status") for line in head) == 1


@pytest.mark.parametrize("sender", ["-oi", "-t", "--", "-bs", ""])
def test_hostile_sender_stays_the_value_of_f(make_config, sendmail, answers, sender):
    answers(HAM, CLEAN)
    status, _ = run_pipe(make_config(), corpus.clean(), "-f", sender, "--", "-t", "--help")
    assert status == 0
    [(argv, _)] = sendmail.calls
    assert argv == ["-G", "-i", "-f", sender, "--", "-t", "--help"]


def test_virus_is_quarantined_durably_and_reported(make_config, sendmail, answers, tmp_path):
    answers(HAM, EICAR)
    raw = corpus.eicar_attached()
    status, out = run_pipe(make_config(), raw)
    assert (status, out) == (0, "")
    [(meta, stored)] = quarantined(tmp_path / "quarantine")
    assert stored == raw
    assert meta["reason"] == "virus" and meta["virus_names"] == ["Eicar-Test-Signature"]
    assert meta["sender"] == "alice@example.org" and meta["queue_id"] == "4F2A1C"
    assert mode(tmp_path / "quarantine") == 0o700
    assert {mode(p) for p in (tmp_path / "quarantine").iterdir()} == {0o600}
    assert not [p for p in (tmp_path / "quarantine").iterdir() if p.name.startswith(".")]
    [(argv, report)] = sendmail.calls  # only the report: the virus is never delivered
    assert argv == ["-G", "-i", "-f", "mailfilter@example.net", "--", "admin@example.net"]
    assert b"Subject: VIRUS FOUND" in report and meta["id"].encode() in report
    assert b"Eicar-Test-Signature" in report and corpus.eicar() not in report


def test_report_failure_does_not_undo_a_durable_quarantine(make_config, sendmail, answers, tmp_path):
    answers(HAM, EICAR)
    status, out = run_pipe(make_config(delivery={"sendmail": sendmail.argv("--exit", "75")}), corpus.eicar_attached())
    assert (status, out) == (0, "")
    assert len(quarantined(tmp_path / "quarantine")) == 1
    assert "admin report not sent" in (tmp_path / "mailfilter.log").read_text()


def test_spam_over_quarantine_score_is_held_without_report(make_config, sendmail, answers, tmp_path):
    answers(SPAM, CLEAN)
    status, out = run_pipe(make_config(quarantine={"spam_score": 10}), corpus.gtube())
    assert (status, out) == (0, "")
    [(meta, _)] = quarantined(tmp_path / "quarantine")
    assert meta["reason"] == "spam" and meta["spam_score"] == 1000.0 and meta["spam_tests"] == ["GTUBE"]
    assert sendmail.calls == []


def test_spam_below_quarantine_score_is_delivered_tagged(make_config, sendmail, answers):
    answers(SPAM, CLEAN)
    status, _ = run_pipe(make_config(), corpus.gtube())
    [(_, data)] = sendmail.calls
    assert status == 0 and data.startswith(b"X-Spam-Flag: YES\n")


def test_explicit_reject_policy_exits_69_with_a_5xx_line(make_config, sendmail, answers, tmp_path):
    answers(HAM, EICAR)
    status, out = run_pipe(make_config(policy={"virus": "reject"}), corpus.eicar_attached())
    assert status == 69 and out == "5.7.1 message rejected: virus found: Eicar-Test-Signature\n"
    assert not (tmp_path / "quarantine").exists()


def test_scanner_failure_defers_and_reports_once(make_config, sendmail, answers):
    answers(HAM, CLAM_DOWN)
    config = make_config()
    for _ in range(3):
        status, out = run_pipe(config, corpus.clean())
        assert (status, out) == (75, "4.7.1 mailfilter: clamav unavailable, message deferred\n")
    [(argv, report)] = sendmail.calls  # nothing delivered; one report for three failures
    assert argv[-1] == "admin@example.net" and b"Subject: ANTIVIRUS FAILED" in report
    assert b"Could not reach clamd" in report and b"Exit code:      2 (an error occurred)" in report


def test_on_error_accept_delivers_unscanned_with_a_warning(make_config, sendmail, answers, tmp_path):
    answers(HAM, CLAM_DOWN)
    status, out = run_pipe(make_config(clamd={"on_error": "accept"}, report={"admin": ""}), corpus.clean())
    assert (status, out) == (0, "")
    [(_, data)] = sendmail.calls
    assert b"X-Virus-Status: Unscanned (clamav unavailable)\n" in data and b"X-Virus-Scanned" not in data
    log = (tmp_path / "mailfilter.log").read_text()
    assert "warning: 4F2A1C: clamav unavailable: Could not reach clamd" in log
    assert "warning: 4F2A1C: delivered unscanned by clamav" in log


@pytest.mark.parametrize(
    ("behaviour", "said"),
    [(("--exit", "75"), "exit status 75"), (("--exit", "1"), "exit status 1"), (("--kill",), "killed by signal 9")],
)
def test_sendmail_failure_defers(make_config, sendmail, answers, behaviour, said):
    answers(HAM, CLEAN)
    status, out = run_pipe(make_config(delivery={"sendmail": sendmail.argv(*behaviour)}), corpus.clean())
    assert status == 75
    assert out.startswith("4.3.0 mailfilter: reinjection failed: ") and said in out and out.count("\n") == 1


def test_missing_sendmail_defers(make_config, answers):
    answers(HAM, CLEAN)
    status, out = run_pipe(make_config(delivery={"sendmail": ["/nonexistent/sendmail"]}), corpus.clean())
    assert status == 75 and "cannot run /nonexistent/sendmail" in out


def test_unwritable_quarantine_defers_and_leaves_nothing(make_config, answers, tmp_path):
    answers(HAM, EICAR)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the folder should be")
    status, out = run_pipe(make_config(quarantine={"dir": str(blocker / "q")}), corpus.eicar_attached())
    assert status == 75 and out.startswith("4.3.0 mailfilter: quarantine failed: ")


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["-f", "a@b"],
        ["-f", "a@b", "--"],
        ["--", "b@c"],
        ["-f"],
        ["-x", "-f", "a@b", "--", "b@c"],
        ["-f", "a@b", "b@c"],
        ["-q"],
    ],
)
def test_bad_arguments_defer(make_config, argv):
    status, out = run_pipe(make_config(), b"", *argv, default=False)
    assert status == 75 and out.startswith("4.3.5 mailfilter: ") and out.count("\n") == 1


@pytest.mark.parametrize("text", ["[spamd]\nport = 'x'\n", "[nope]\n", "garbage ["])
def test_bad_config_defers(tmp_path, text):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    status, out = run_pipe(str(path), corpus.clean())
    assert status == 75 and out.startswith("4.3.5 mailfilter: configuration error: ")


@pytest.mark.parametrize("exc", [RuntimeError("bug"), KeyboardInterrupt(), SystemExit(1), MemoryError()])
def test_any_exception_defers_with_traceback_in_the_log_only(make_config, monkeypatch, tmp_path, exc):
    def explode(raw, config, *_):
        raise exc

    monkeypatch.setattr(pipeline, "scan", explode)
    status, out = run_pipe(make_config(), corpus.clean())
    assert status == 75
    assert out == f"4.3.0 mailfilter: internal error ({type(exc).__name__}), message deferred\n"
    assert "Traceback" not in out
    if isinstance(exc, RuntimeError):
        assert "Traceback" in (tmp_path / "mailfilter.log").read_text()


def test_own_deadline_defers(make_config, monkeypatch, sendmail):
    def hang(raw, config, *_):
        time.sleep(30)

    monkeypatch.setattr(pipeline, "scan", hang)
    started = time.monotonic()
    status, out = run_pipe(make_config(pipe={"deadline": 0.5}), corpus.clean())
    assert status == 75 and out == "4.3.0 mailfilter: filter deadline of 0.5 s exceeded, message deferred\n"
    assert time.monotonic() - started < 10 and sendmail.calls == []


def test_help_exits_0():
    from mailfilter.doors import pipe

    status, out = run_pipe("/unused", b"", "--help")
    assert status == 0 and pipe.USAGE in out


@pytest.mark.parametrize(
    "argv",
    [["pipe"], ["pipe", "--bogus"], ["--config", "/nonexistent.toml", "pipe", "-f", "a", "--", "b"], ["-c", "/x", "pipe", "-f"]],
)
def test_console_script_never_exits_with_a_bouncing_status(argv):
    proc = subprocess.run(
        [sys.executable, "-m", "mailfilter", *argv], input=b"Subject: x\n\nbody\n", capture_output=True, cwd=ROOT, timeout=60
    )
    assert proc.returncode == 75
    assert proc.stdout.decode().startswith("4.3.") and proc.stdout.decode().count("\n") == 1
    assert proc.stderr == b""


def test_unwritable_log_file_does_not_stop_the_mail(make_config, sendmail, answers, tmp_path, capsys):
    answers(HAM, CLEAN)
    status, out = run_pipe(make_config(log={"file": str(tmp_path)}), corpus.clean())  # a folder: cannot be opened as a file
    assert (status, out) == (0, "")
    assert len(sendmail.calls) == 1
    assert capsys.readouterr().err == ""  # nothing that pipe(8) would read


def test_why_no_worker_took_the_message_is_logged_with_its_queue_id(make_config, sendmail, answers, tmp_path):
    from mailfilter.doors import pipe

    answers(HAM, CLEAN)
    argv = ["--config", make_config(), "pipe", "-q", "4F2A1C", "-f", "alice@example.org", "--", "bob@example.net"]
    assert pipe.main(argv, io.BytesIO(corpus.clean()), io.StringIO(), environ={}, note="the pipe worker declined: it is stopping") == 0
    log = (tmp_path / "mailfilter.log").read_text()
    assert "warning: 4F2A1C: the pipe worker declined: it is stopping; filtering in this process" in log
    assert len(sendmail.calls) == 1
