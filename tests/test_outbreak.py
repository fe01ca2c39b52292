"""An outbreak through the pipe door: one VIRUS FOUND at once, then one summary per [report] interval, not a mail per virus.

Scanners scripted (every message a virus), the recording sendmail, the real rate-limit state. The interval is a
few seconds: the test waits for it by polling the clock against the state's own timestamp, not by a fixed sleep.
"""

import json
import time

from mailfilter import pipeline
from mailfilter.actions import ratelimit
from mailfilter.model import ScanResults, SpamReport, VirusReport

import corpus
from conftest import quarantined, run_pipe

INTERVAL = 5.0  # seconds; the 20 messages take well under one


def send(config, n):
    return run_pipe(config, corpus.eicar_attached(), "-q", f"Q{n:02d}", "-f", f"sender{n}@example.org", "--", "bob@example.net")


def test_an_outbreak_sends_one_virus_found_then_one_summary(make_config, sendmail, monkeypatch, tmp_path):
    monkeypatch.setattr(
        pipeline, "scan", lambda spool, config, *_: ScanResults(SpamReport(0.1, 5.0), VirusReport((f"Worm.{time.time_ns()}",), 1))
    )
    config = make_config(report={"interval": INTERVAL})
    started = time.monotonic()
    assert [send(config, n) for n in range(1, 21)] == [(0, "")] * 20
    entries = quarantined(tmp_path / "quarantine")
    assert len(entries) == 20  # every virus is held, reported or not
    reports = [data for argv, data in sendmail.calls if argv[-1] == "admin@example.net"]
    assert len(reports) == 1 and b"Queue id:       Q01" in reports[0]  # before: 20 VIRUS FOUND mails
    log = (tmp_path / "mailfilter.log").read_text()
    assert log.count("report=sent") == 1 and log.count("report=suppressed") == 19
    assert time.monotonic() - started < INTERVAL, "the outbreak took longer than the interval: the test would prove nothing"

    state = json.loads((tmp_path / "state" / ratelimit.STATE_FILE).read_text())["virus"]
    while time.time() < state["last_sent"] + INTERVAL:  # the interval since the first report, by the state's clock
        time.sleep(0.05)
    assert send(config, 21) == (0, "")
    [_, summary] = [data.decode() for argv, data in sendmail.calls if argv[-1] == "admin@example.net"]
    assert "\nSubject: VIRUS FOUND (and 19 more)\n" in summary and "Queue id:       Q21" in summary
    assert "Held back:      19 more virus(es) since the last report (listed below)" in summary
    by_queue_id = {meta["queue_id"]: meta["id"] for meta, _ in quarantined(tmp_path / "quarantine")}
    listed = [line.split()[0] for line in summary.splitlines() if line.startswith("  ") and line.split()[0] in by_queue_id.values()]
    assert listed == [by_queue_id[f"Q{n:02d}"] for n in range(2, 21)]  # the 19 held back, oldest first
    assert "      from <sender2@example.org> to <bob@example.net>" in summary
