"""The milter door through pymilter's TestCtx (no socket, no MTA): the translation from verdict to milter actions."""

import Milter
import pytest

from mailfilter import config as configmod
from mailfilter import pipeline
from mailfilter.model import Cause, ScanFailure, ScanResults, SpamReport, VirusReport

import corpus
from conftest import quarantined

HAM = SpamReport(0.3, 5.0, ("NONE",))
SPAM = SpamReport(1000.0, 5.0, ("GTUBE",))
EICAR = VirusReport(("Eicar-Test-Signature",), 1)
CLAM_DOWN = ScanFailure("clamav", Cause.UNAVAILABLE, "Could not reach clamd")


@pytest.fixture
def answers(monkeypatch):
    def set_answers(spam, virus):
        monkeypatch.setattr(pipeline, "scan", lambda spool, config, *_: ScanResults(spam, virus))

    return set_answers


def added_headers(ctx):
    return {k: v for k, v in ctx._msg.items() if k.lower().startswith(("x-spam", "x-virus"))}


def test_clean_is_accepted_with_our_headers_and_spoofed_ones_removed(run_milter, answers):
    answers(HAM, VirusReport())
    status, ctx, in_flight = run_milter(corpus.spoofed_headers())
    assert status == Milter.CONTINUE and ctx._reply is None
    assert added_headers(ctx) == {
        "X-Spam-Flag": "NO",
        "X-Spam-Score": "0.3",
        "X-Spam-Status": "No, score=0.3 required=5.0 tests=NONE",
        "X-Virus-Scanned": "ClamAV using mailfilter",
        "X-Virus-Status": "Clean",
    }
    assert in_flight.count == 0


def test_virus_is_rejected_554_by_default(run_milter, answers, sendmail):
    answers(HAM, EICAR)
    status, ctx, _ = run_milter(corpus.eicar_attached())
    assert status == Milter.REJECT
    assert ctx._reply == ("554", "5.7.1", "message rejected: virus found: Eicar-Test-Signature")
    assert sendmail.calls == []  # no report for a virus the sender was told about


def test_virus_quarantine_stores_discards_and_reports(run_milter, answers, sendmail, tmp_path):
    answers(HAM, EICAR)
    raw = corpus.eicar_attached()
    status, _, _ = run_milter(raw, milter={"virus": "quarantine"})
    assert status == Milter.DISCARD
    [(meta, stored)] = quarantined(tmp_path / "quarantine")
    assert meta["queue_id"] == "4F2A1C" and meta["sender"] == "alice@example.org" and meta["recipients"] == ["bob@example.net"]
    assert b"Eicar-Test-Signature" not in stored or stored.count(b"\n") > 3  # the message, not a summary
    [(argv, report)] = sendmail.calls
    assert argv[-1] == "admin@example.net" and b"Subject: VIRUS FOUND" in report


def test_virus_hold_uses_postfix_hold_queue(run_milter, answers):
    answers(HAM, EICAR)
    status, ctx, _ = run_milter(corpus.eicar_attached(), milter={"virus": "hold"})
    assert status == Milter.CONTINUE and ctx.held == "mailfilter: virus"


def test_spam_reject_and_quarantine_scores(run_milter, answers, tmp_path):
    answers(SPAM, VirusReport())
    status, ctx, _ = run_milter(corpus.gtube(), policy={"spam_reject_score": 500})
    assert status == Milter.REJECT and ctx._reply == ("550", "5.7.1", "message rejected as spam (score 1000.0)")
    status, _, _ = run_milter(corpus.gtube(), quarantine={"spam_score": 500})
    assert status == Milter.DISCARD and len(quarantined(tmp_path / "quarantine")) == 1


def test_spam_below_scores_is_tagged(run_milter, answers):
    answers(SPAM, VirusReport())
    status, ctx, _ = run_milter(corpus.gtube())
    assert status == Milter.CONTINUE and added_headers(ctx)["X-Spam-Flag"] == "YES"


def test_scanner_down_is_451(run_milter, answers, sendmail):
    answers(HAM, CLAM_DOWN)
    status, ctx, _ = run_milter(corpus.clean())
    assert status == Milter.TEMPFAIL
    assert ctx._reply == ("451", "4.7.1", "mailfilter: clamav unavailable, message deferred")
    [(_, report)] = sendmail.calls
    assert b"Subject: ANTIVIRUS FAILED" in report


def test_on_error_accept_marks_unscanned(run_milter, answers):
    answers(HAM, CLAM_DOWN)
    status, ctx, _ = run_milter(corpus.clean(), clamd={"on_error": "accept"}, report={"admin": ""})
    assert status == Milter.CONTINUE and added_headers(ctx)["X-Virus-Status"] == "Unscanned (clamav unavailable)"


@pytest.mark.parametrize("exc", [RuntimeError("bug"), MemoryError(), OSError(28, "No space left on device")])
def test_any_exception_is_a_tempfail_never_an_accept(run_milter, monkeypatch, exc):
    def explode(spool, config, *_):
        raise exc

    monkeypatch.setattr(pipeline, "scan", explode)
    status, ctx, in_flight = run_milter(corpus.clean())
    assert status == Milter.TEMPFAIL and ctx._reply[:2] == ("451", "4.7.1")
    assert in_flight.count == 0


def test_unwritable_quarantine_is_a_tempfail(run_milter, answers, tmp_path):
    answers(HAM, EICAR)
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    status, ctx, _ = run_milter(corpus.eicar_attached(), milter={"virus": "quarantine"}, quarantine={"dir": str(blocker / "q")})
    assert status == Milter.TEMPFAIL and ctx._reply[:2] == ("451", "4.7.1")


def test_oversized_message_is_refused_552(run_milter, answers):
    answers(HAM, VirusReport())
    status, ctx, in_flight = run_milter(corpus.with_attachment(b"x" * 200_000, "big.bin"), milter={"max_size": 100_000})
    assert status == Milter.REJECT and ctx._reply == ("552", "5.3.4", "message larger than 100000 bytes cannot be scanned")
    assert in_flight.count == 0


def test_large_message_is_spooled_to_a_file_then_removed(run_milter, monkeypatch, tmp_path):
    seen = {}

    def scan(spool, config, *_):
        seen["on_disk"], seen["size"] = spool.on_disk, spool.size
        return ScanResults(HAM, VirusReport())

    monkeypatch.setattr(pipeline, "scan", scan)
    status, _, _ = run_milter(corpus.with_attachment(b"y" * 3_000_000, "big.bin"), milter={"spool_memory": 65536})
    assert status == Milter.CONTINUE and seen["on_disk"] and seen["size"] > 3_000_000
    assert [p.name for p in tmp_path.iterdir() if p.is_file() and p.name.startswith("tmp")] == []


def test_queue_id_is_on_every_line(run_milter, answers, tmp_path):
    answers(HAM, CLAM_DOWN)
    logfile = tmp_path / "milter.log"
    from mailfilter import log

    log.configure("mailfilter/milter", configmod.LogConfig(syslog=False, file=str(logfile)), stderr=False)
    run_milter(corpus.clean(), report={"admin": ""})
    lines = logfile.read_text().splitlines()
    assert len(lines) >= 2 and all(": 4F2A1C: " in line for line in lines), lines
    assert any("4F2A1C: from=<alice@example.org>, nrcpt=1, verdict=error" in line for line in lines)


@pytest.mark.daemons
@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (corpus.raw_8bit_subject(), Milter.CONTINUE),
        (b"Subject: no trailing newline\n\nbody without newline", Milter.CONTINUE),
        (corpus.gtube(), Milter.CONTINUE),
        (corpus.eicar_in_zip(), Milter.REJECT),
        (corpus.malformed_mime(), Milter.CONTINUE),
    ],
)
def test_real_scanners_through_the_milter(run_milter, daemons, raw, status):
    real = {
        "spamd": {"host": daemons["spamd_host"], "port": daemons["spamd_port"]},
        "clamd": {"socket": daemons["clamd_socket"]},
    }
    got, ctx, _ = run_milter(raw, **real)
    assert got == status, ctx._reply
    if status == Milter.CONTINUE:
        assert added_headers(ctx)["X-Virus-Status"] == "Clean"
