"""What comes after the milter's reply (admin report, journal, metrics, summary line) never delays or changes it;
what must come before it (the quarantine store) is bounded. Through pymilter's TestCtx, scanners scripted."""

import threading
import time

import Milter
import pytest

from mailfilter import journal, metrics, pipeline
from mailfilter.actions import quarantine
from mailfilter.doors import milter, milterreply
from mailfilter.model import ScanResults, SpamReport, VirusReport

import corpus
from conftest import quarantined

HAM = SpamReport(0.3, 5.0, ("NONE",))
EICAR = VirusReport(("Eicar-Test-Signature",), 1)


@pytest.fixture
def virus(monkeypatch):
    monkeypatch.setattr(pipeline, "scan", lambda spool, config, *_: ScanResults(HAM, EICAR))


def logged(tmp_path, monkeypatch):
    from mailfilter import config as configmod
    from mailfilter import log

    path = tmp_path / "milter.log"
    log.configure("mailfilter/milter", configmod.LogConfig(syslog=False, file=str(path)), stderr=False)
    return path


def test_a_hanging_report_sendmail_does_not_delay_the_reply(run_milter, virus, sendmail, tmp_path, monkeypatch):
    log_path = logged(tmp_path, monkeypatch)
    started = time.monotonic()
    status, _, in_flight = run_milter(
        corpus.eicar_attached(), drain=False, milter={"virus": "quarantine"}, delivery={"sendmail": sendmail.argv("--sleep", "3")}
    )
    took = time.monotonic() - started
    assert status == Milter.DISCARD and took < 1.5, took  # before: the reply waited for the report's sendmail
    assert len(quarantined(tmp_path / "quarantine")) == 1 and in_flight.count == 0
    assert sendmail.calls == []  # the report is still on its way
    assert run_milter.after.drain(30)
    [(argv, data)] = sendmail.calls  # sent afterwards, by the after-reply thread
    assert argv[-1] == "admin@example.net" and b"Subject: VIRUS FOUND" in data
    summary = [line for line in log_path.read_text().splitlines() if ": 4F2A1C: from=<alice@example.org>" in line]
    assert len(summary) == 1 and "milter=quarantine" in summary[0] and "report=sent" in summary[0], summary


@pytest.mark.parametrize(
    ("target", "name"),
    [(journal, "record"), (metrics.Tally, "observe"), (metrics, "account")],
    ids=["journal-write", "metrics-count", "bookkeeping"],
)
@pytest.mark.parametrize(("verdict", "expected"), [("clean", Milter.CONTINUE), ("virus", Milter.DISCARD)])
def test_bookkeeping_failing_after_the_reply_never_changes_it(run_milter, monkeypatch, tmp_path, target, name, verdict, expected):
    answer = ScanResults(HAM, EICAR if verdict == "virus" else VirusReport())
    monkeypatch.setattr(pipeline, "scan", lambda spool, config, *_: answer)

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(target, name, broken)
    log_path = logged(tmp_path, monkeypatch)
    status, ctx, _ = run_milter(corpus.eicar_attached(), milter={"virus": "quarantine"}, report={"admin": ""})
    assert status == expected and ctx._reply is None  # before: a 451 tempfail, after the message was quarantined
    if verdict == "virus":
        assert len(quarantined(tmp_path / "quarantine")) == 1
    text = log_path.read_text()
    assert "disk on fire" in text and "callback failed" not in text
    assert f"verdict={verdict}" in text  # the summary line is still written


def test_a_full_after_reply_queue_drops_the_bookkeeping_not_the_reply(run_milter, virus, monkeypatch, tmp_path, sendmail):
    monkeypatch.setattr(milter.AfterReply, "submit", lambda self, job: False)
    log_path = logged(tmp_path, monkeypatch)
    status, _, _ = run_milter(corpus.eicar_attached(), milter={"virus": "quarantine"})
    assert status == Milter.DISCARD and len(quarantined(tmp_path / "quarantine")) == 1
    assert sendmail.calls == []
    [line] = [line for line in log_path.read_text().splitlines() if "after-reply queue full" in line]
    assert "4F2A1C: after-reply queue full" in line and "report=dropped" in line and "quarantine=" in line


def test_after_reply_queue_is_bounded_and_never_blocks():
    after = milterreply.AfterReply(size=1)
    gate, running, ran = threading.Event(), threading.Event(), []
    assert after.submit(lambda: (running.set(), gate.wait(30)))
    assert running.wait(10)
    assert after.submit(lambda: ran.append(2))  # the one waiting place
    started = time.monotonic()
    assert not after.submit(lambda: ran.append(3))  # full: refused at once
    assert time.monotonic() - started < 0.5 and after.dropped == 1
    assert not after.drain(0.1) and after.waiting == 2
    gate.set()
    assert after.close(10) and ran == [2]


def test_a_job_that_raises_does_not_stop_the_thread(caplog):
    after = milterreply.AfterReply()
    ran = []
    after.submit(lambda: 1 / 0)
    after.submit(lambda: ran.append("next"))
    assert after.close(10) and ran == ["next"]
    assert "after-reply work failed" in caplog.text


def test_a_quarantine_store_past_its_allowance_is_a_tempfail_not_a_late_reply(run_milter, virus, monkeypatch):
    real_store, release = quarantine.store, threading.Event()

    def slow_store(*args, **kwargs):
        release.wait(30)
        return real_store(*args, **kwargs)

    monkeypatch.setattr(quarantine, "store", slow_store)
    monkeypatch.setattr(milter, "STORE_ALLOWANCE", 0.3)
    started = time.monotonic()
    status, ctx, _ = run_milter(corpus.eicar_attached(), milter={"virus": "quarantine"})
    release.set()
    assert status == Milter.TEMPFAIL and ctx._reply == ("451", "4.7.1", "mailfilter: quarantine busy, try again later")
    assert time.monotonic() - started < 5


def test_worst_case_is_the_slower_scanner_the_backstop_and_the_store():
    from mailfilter import config as configmod

    config = configmod.from_dict({"spamd": {"timeout": 10}, "clamd": {"timeout": 40}})
    assert milterreply.worst_case(config) == 40 + pipeline.BACKSTOP + milterreply.STORE_ALLOWANCE
