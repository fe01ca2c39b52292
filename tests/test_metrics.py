"""Metrics: the same families from the pipe's textfile and the milter's endpoint, counts that add up."""

import json
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


# Cost and robustness of the pipe's textfile (issue "Keep the promise", item 13).

DAMAGED = [
    b"[1]",
    b'{"counters": 5}',
    b'"a string"',
    b"null",
    b'{"counters": {"messages": {"pipe\\u001fclean\\u001fdeliver": "7"}}}',
    b'{"counters": {"messages": {"pipe": 1}}}',
    b'{"counters": {"messages": {"pipe\\u001fclean\\u001fdeliver": true}}}',
    b'{"counters": {"messages": {"pipe\\u001fclean\\u001fdeliver": -1}}}',
    b'{"histograms": {"spamd": [1, 2]}}',
    b'{"histograms": {"spamd": ["x", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]}}',
    b'{"histograms": []}',
    b'{"counters": ',
    b"\xff\xfe not json",
]


@pytest.mark.parametrize("content", DAMAGED)
def test_a_damaged_state_is_replaced_by_a_fresh_tally_and_reported_once(tmp_path, content):
    state, prom = tmp_path / "state", tmp_path / "m.prom"
    state.mkdir()
    (state / "metrics-state.json").write_bytes(content)
    try:
        data = json.loads(content)
    except ValueError:
        pass
    else:
        tally = metrics.Tally(data)
        assert (tally.damaged or data is None) and tally.to_json() == metrics.Tally().to_json()
    warning = metrics.add_to_textfile(str(prom), str(state), event(), str(tmp_path / "q"))
    assert "metrics-state.json was" in warning and "counting starts afresh" in warning
    assert metrics.add_to_textfile(str(prom), str(state), event(), str(tmp_path / "q")) is None  # logged once
    got = samples(prom.read_text())
    assert got[("mailfilter_messages_total", (("action", "deliver"), ("door", "pipe"), ("verdict", "clean")))] == 2


class BrokenLog:
    def __getattr__(self, name):
        def log(*args):
            raise RuntimeError("syslog is gone")

        return log


def test_account_never_raises(make_config, tmp_path):
    from mailfilter import config as configmod

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = configmod.load(make_config(metrics={"textfile": str(blocker / "m.prom")}, report={"journal_dir": str(blocker / "j")}))
    metrics.account(event(), config, BrokenLog())  # neither the journal, nor the textfile, nor the log can be written
    metrics.account({"no": "keys"}, config, BrokenLog(), metrics.Tally())
    records = []
    logger = type("Logger", (), {"error": lambda self, *a: records.append(a[0] % a[1:]), "warning": lambda self, *a: None})()
    metrics.account(event(), config, logger)
    assert [r.split(":")[0] for r in records] == ["journal not written", "metrics not counted"]


def test_the_quarantine_is_counted_once_a_minute_outside_the_lock_not_on_every_message(tmp_path, monkeypatch):
    """Before, every message stat'ed every quarantined file under the global lock (230 ms a message with 10,000
    of them, here). Now the gauges live in the state: counted again at most every GAUGE_REFRESH seconds, by
    one process, without the lock; each quarantined message adds itself in between."""
    import fcntl

    state, prom, folder = tmp_path / "state", tmp_path / "m.prom", tmp_path / "q"
    folder.mkdir()
    for i in range(3):
        (folder / f"20261127T120000Z-{i:010x}.eml").write_bytes(b"x" * 100)
    scans = []

    def usage(path):
        lock = os.open(state / ".metrics.lock", os.O_RDWR)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if the lock were held
        finally:
            os.close(lock)
        scans.append(path)
        return real_usage(path)

    real_usage = metrics.quarantine_usage
    monkeypatch.setattr(metrics, "quarantine_usage", usage)
    add = lambda ev, now: metrics.add_to_textfile(str(prom), str(state), ev, str(folder), now=now)  # noqa: E731
    gauges = lambda: tuple(samples(prom.read_text())[(f"mailfilter_quarantine_{n}", ())] for n in ("messages", "bytes"))  # noqa: E731
    add(event(), 1000.0)
    assert len(scans) == 1 and gauges() == (3, 300)
    virus = Decision(Verdict.VIRUS, Action.QUARANTINE)
    quarantined = journal.event("pipe", ENV, None, virus, "quarantine", 250, 0.1, datetime.now(UTC), "Q")
    for second in range(1, 60):
        add(quarantined if second == 30 else event(), 1000.0 + second)
    assert len(scans) == 1 and gauges() == (4, 550)  # no scan; the quarantined message counted itself
    (folder / "20261127T120000Z-0000000000.eml").unlink()  # released by the admin: seen at the next count
    add(event(), 1060.0)
    assert len(scans) == 2 and gauges() == (2, 200)
    add(event(), 900.0)  # the clock went back: count again rather than trust a time stamp from the future
    assert len(scans) == 3


def test_metrics_are_not_synced(tmp_path, monkeypatch):
    """State and .prom are not mail: no fsync (a lost increment after a power cut is acceptable); a torn file
    is not, so they are still written under a temporary name and renamed."""

    def no_fsync(fd):
        raise AssertionError("fsync for metrics")

    monkeypatch.setattr(os, "fsync", no_fsync)
    prom = tmp_path / "prom" / "m.prom"
    prom.parent.mkdir()
    metrics.add_to_textfile(str(prom), str(tmp_path / "state"), event(), str(tmp_path / "q"))
    assert samples(prom.read_text())[("mailfilter_quarantine_messages", ())] == 0
    assert sorted(p.name for p in prom.parent.iterdir()) == ["m.prom"]
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == [".metrics.lock", "metrics-state.json"]
