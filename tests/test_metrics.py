"""Metrics: the same families from the pipe's textfile and the milter's endpoint, counts that add up."""

import multiprocessing
import os
import urllib.request
from datetime import UTC, datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mailfilter import journal, metrics
from mailfilter.model import Action, Cause, Decision, Envelope, ScanFailure, ScanResults, SpamReport, Verdict, VirusReport

import corpus
from conftest import run_pipe

ENV = Envelope("a@example.org", ("b@example.net",), "Q1")


def event(verdict=Verdict.CLEAN, action=Action.DELIVER, virus=None, spam_seconds=0.2, virus_seconds=0.01):
    results = ScanResults(SpamReport(1.0, 5.0), virus or VirusReport(), spam_seconds, virus_seconds)
    return journal.event("pipe", ENV, results, Decision(verdict, action), action.value, 100, 0.3, datetime.now(UTC))


def samples(text):
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_tally_counts_and_renders():
    tally = metrics.Tally()
    tally.observe(event())
    tally.observe(event())
    tally.observe(event(Verdict.VIRUS, Action.QUARANTINE, VirusReport(("EICAR",), 1)))
    down = ScanFailure("clamav", Cause.UNAVAILABLE, "x")
    results = ScanResults(SpamReport(1, 5), down, 0.2, 0.0)
    failed = journal.event("pipe", ENV, results, Decision(Verdict.ERROR, Action.DELIVER), "deliver", 1, 0.1, datetime.now(UTC))
    tally.observe(failed)
    got = samples(metrics.render(tally, {"quarantine_messages": ("held", 3)}))
    assert got[("mailfilter_messages_total", (("action", "deliver"), ("door", "pipe"), ("verdict", "clean")))] == 2
    assert got[("mailfilter_messages_total", (("action", "quarantine"), ("door", "pipe"), ("verdict", "virus")))] == 1
    assert got[("mailfilter_scanner_errors_total", (("cause", "unavailable"), ("scanner", "clamav")))] == 1
    assert got[("mailfilter_unscanned_total", (("scanner", "clamav"),))] == 1
    assert got[("mailfilter_scan_duration_seconds_count", (("scanner", "spamd"),))] == 4
    assert got[("mailfilter_scan_duration_seconds_bucket", (("le", "0.25"), ("scanner", "spamd")))] == 4
    assert got[("mailfilter_scan_duration_seconds_bucket", (("le", "0.1"), ("scanner", "spamd")))] == 0
    assert got[("mailfilter_quarantine_messages", ())] == 3
    assert metrics.Tally(tally.to_json()).to_json() == tally.to_json()


def _add(path, state, n):
    metrics.add_to_textfile(path, state, event(spam_seconds=n / 100), state + "/q")


def test_textfile_is_safe_with_concurrent_pipe_processes(tmp_path):
    path, state = str(tmp_path / "prom" / "mailfilter.prom"), str(tmp_path / "state")
    os.makedirs(tmp_path / "prom")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_add, args=(path, state, n)) for n in range(20)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    got = samples((tmp_path / "prom" / "mailfilter.prom").read_text())
    assert got[("mailfilter_messages_total", (("action", "deliver"), ("door", "pipe"), ("verdict", "clean")))] == 20
    assert got[("mailfilter_scan_duration_seconds_count", (("scanner", "spamd"),))] == 20
    assert os.stat(path).st_mode & 0o777 == 0o644
    assert [p.name for p in (tmp_path / "prom").iterdir()] == ["mailfilter.prom"]  # no temporary file left


@pytest.mark.daemons
def test_pipe_writes_journal_and_textfile(real_config, tmp_path):
    prom = tmp_path / "mailfilter.prom"
    config = real_config(metrics={"textfile": str(prom)}, report={"admin": ""})
    for raw in (corpus.clean(), corpus.gtube(), corpus.eicar_attached()):
        assert run_pipe(config, raw)[0] == 0
    broken = real_config(metrics={"textfile": str(prom)}, report={"admin": ""}, spamd={"port": 1})
    assert run_pipe(broken, corpus.clean())[0] == 75
    got = samples(prom.read_text())
    count = lambda verdict, action: got[("mailfilter_messages_total", (("action", action), ("door", "pipe"), ("verdict", verdict)))]  # noqa: E731
    assert (count("clean", "deliver"), count("spam", "deliver"), count("virus", "quarantine"), count("error", "tempfail")) == (1, 1, 1, 1)
    assert got[("mailfilter_scanner_errors_total", (("cause", "unavailable"), ("scanner", "spamd")))] == 1
    assert got[("mailfilter_quarantine_messages", ())] == 1
    events = list(journal.read(str(tmp_path / "journal"), datetime(2000, 1, 1, tzinfo=UTC), datetime(3000, 1, 1, tzinfo=UTC)))
    assert [e["verdict"] for e in events] == ["clean", "spam", "virus", "error"]
    assert events[2]["quarantine_id"] and events[0]["queue_id"] == "4F2A1C" and events[3]["failures"] == ["spamd:unavailable"]


def test_milter_endpoint_serves_the_same_families(tmp_path):
    from conftest import free_tcp_port

    tally = metrics.Tally()
    tally.observe(event())
    port = free_tcp_port()
    server = metrics.serve(f"127.0.0.1:{port}", tally, lambda: 2, str(tmp_path))
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        server.shutdown()
        server.server_close()
    got = samples(text)
    assert got[("mailfilter_messages_total", (("action", "deliver"), ("door", "pipe"), ("verdict", "clean")))] == 1
    assert got[("mailfilter_in_flight", ())] == 2 and got[("mailfilter_quarantine_messages", ())] == 0
    assert {k[0] for k in samples(metrics.render(tally, metrics.quarantine_gauges(str(tmp_path))))} <= {k[0] for k in got}
