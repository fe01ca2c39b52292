"""pipeline.Runner, what the milter daemon scans with: the same results and the same contract as pipeline.run.

Each scanner within its own timeout (a hung one is a ScanFailure, never a hang), the same failure
texts whether the Runner is kept (the daemons) or made for one message (pipeline.scan), safe from
many threads at once, and any exception in the milter still a 451 tempfail.
"""

import socket
import threading
import time

import Milter
import pytest

from mailfilter import config as configmod
from mailfilter import pipeline
from mailfilter.doors import milter
from mailfilter.model import Cause, ScanFailure, SpamReport, Verdict, VirusReport
from mailfilter.scanners import spamd
from mailfilter.spool import Spool

import corpus


@pytest.fixture
def runner():
    with pipeline.Runner() as scans:
        yield scans


def scan_both(runner, raw, config):
    """(a kept Runner's results, pipeline.scan's with a Runner of its own) for RAW."""
    with Spool.of(raw) as spool:
        threaded = runner.scan(spool, config)
    with Spool.of(raw) as spool:
        looped = pipeline.scan(spool, config)
    return threaded, looped


class FakeSpamd:
    """A TCP server on loopback that reads a request to its end, then answers ANSWER (None: never answers)."""

    def __init__(self, answer: bytes | None) -> None:
        self.answer = answer
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.1)
        self.port = self.server.getsockname()[1]
        self.held: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn = self.server.accept()[0]
            except TimeoutError:
                continue
            self.held.append(conn)
            if self.answer is not None:
                conn.settimeout(5)
                while conn.recv(65536):
                    pass
                conn.sendall(self.answer)
                conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for conn in self.held:
            conn.close()
        self.server.close()


@pytest.fixture
def fake_spamd():
    made = []

    def make(answer):
        made.append(FakeSpamd(answer))
        return made[-1]

    yield make
    for server in made:
        server.close()


def config_for(**sections):
    base = {"spamd": {"host": "127.0.0.1", "port": 1, "timeout": 5}, "clamd": {"socket": "/nonexistent/clamd.ctl", "timeout": 5}}
    for name, table in sections.items():
        base.setdefault(name, {}).update(table)
    return configmod.from_dict(base)


# --- without the real daemons ---------------------------------------------------------------------


@pytest.mark.parametrize("spamd_at", [{"port": 1}, {"socket": "spamd.sock"}])
def test_nothing_listening_gives_the_same_failures_as_pipeline_scan(runner, tmp_path, spamd_at):
    if "socket" in spamd_at:
        spamd_at = {"socket": str(tmp_path / spamd_at["socket"])}
    config = config_for(spamd=spamd_at, clamd={"socket": str(tmp_path / "none.ctl")})
    threaded, looped = scan_both(runner, corpus.clean(), config)
    assert threaded.spam == looped.spam and threaded.virus == looped.virus
    assert threaded.spam.cause is Cause.UNAVAILABLE and threaded.virus.cause is Cause.UNAVAILABLE


@pytest.mark.parametrize(
    "answer",
    [
        b"SPAMD/1.1 76 Bad header line: (EOF)\r\n\r\n",  # spamd's own error status
        b"garbage that is no SPAMD answer\r\n",
        b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\n\r\n",  # no Spam header
        b"",  # closed without a word
    ],
)
def test_spamd_answers_read_the_same_both_ways(runner, fake_spamd, answer):
    server = fake_spamd(answer)
    config = config_for(spamd={"port": server.port})
    threaded, looped = scan_both(runner, corpus.clean(), config)
    assert isinstance(threaded.spam, ScanFailure) and threaded.spam.cause is Cause.ERROR
    assert threaded.spam == looped.spam


def test_a_good_answer_reads_the_same_both_ways(runner, fake_spamd):
    body = b"BAYES_00,HTML_MESSAGE"
    server = fake_spamd(b"SPAMD/1.1 0 EX_OK\r\nContent-length: %d\r\nSpam: True ; 7.5 / 5.0\r\n\r\n%s" % (len(body), body))
    threaded, looped = scan_both(runner, corpus.clean(), config_for(spamd={"port": server.port}))
    assert threaded.spam == looped.spam == SpamReport(7.5, 5.0, ("BAYES_00", "HTML_MESSAGE"))


def test_hung_spamd_is_a_timeout_not_a_hang(runner, fake_spamd, tmp_path):
    server = fake_spamd(None)
    config = config_for(spamd={"port": server.port, "timeout": 1}, clamd={"socket": str(tmp_path / "none.ctl")})
    started = time.monotonic()
    with Spool.of(corpus.clean()) as spool:
        results = runner.scan(spool, config)
    assert results.spam == ScanFailure("spamd", Cause.TIMEOUT, "no answer within 1 s")
    assert time.monotonic() - started < 1 + pipeline.BACKSTOP


def test_a_scanner_that_ignores_its_timeout_meets_the_backstop(runner, monkeypatch, tmp_path):
    release = threading.Event()

    def stuck(message, config):
        release.wait(30)
        return VirusReport()

    from mailfilter.scanners import clamd

    monkeypatch.setattr(clamd, "scan", stuck)
    monkeypatch.setattr(pipeline, "BACKSTOP", 0.2)
    config = config_for(clamd={"socket": str(tmp_path / "none.ctl"), "timeout": 0.3})
    try:
        with Spool.of(corpus.clean()) as spool:
            results = runner.scan(spool, config)
    finally:
        release.set()
    assert results.virus == ScanFailure("clamav", Cause.TIMEOUT, "no answer within 0.3 s")
    assert results.virus_seconds < 5


def test_big_messages_go_to_spamd_cut_at_a_line_end(runner, fake_spamd, tmp_path):
    server = fake_spamd(b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1000.0 / 5.0\r\nContent-length: 5\r\n\r\nGTUBE")
    config = config_for(spamd={"port": server.port, "max_size": 100}, clamd={"socket": str(tmp_path / "none.ctl")})
    raw = corpus.clean() + b"x" * 200
    with Spool.of(raw) as spool:
        results = runner.scan(spool, config)
    assert results.spam == SpamReport(1000.0, 5.0, ("GTUBE",), truncated=(raw[:100].rfind(b"\n") + 1, len(raw)))


def test_scanner_threads_see_the_callers_context(runner, monkeypatch, fake_spamd):
    seen = {}
    from mailfilter.scanners import clamd

    def record(message, config):
        seen["queue_id"] = milter.QUEUE_ID.get()
        return VirusReport()

    monkeypatch.setattr(clamd, "scan", record)
    token = milter.QUEUE_ID.set("4F2A1C")
    try:
        body = b"NONE"
        server = fake_spamd(b"SPAMD/1.1 0 EX_OK\r\nContent-length: 4\r\nSpam: False ; 0.1 / 5.0\r\n\r\n%s" % body)
        with Spool.of(corpus.clean()) as spool:
            runner.scan(spool, config_for(spamd={"port": server.port}))
    finally:
        milter.QUEUE_ID.reset(token)
    assert seen == {"queue_id": "4F2A1C"}


def test_a_closed_runner_refuses_instead_of_answering(tmp_path):
    runner = pipeline.Runner()
    runner.close()
    with Spool.of(corpus.clean()) as spool, pytest.raises(RuntimeError):
        runner.run(spool, config_for(clamd={"socket": str(tmp_path / "none.ctl")}))


def test_spamd_blocking_closes_its_socket_on_a_timeout(fake_spamd):
    import gc
    import warnings

    server = fake_spamd(None)
    config = config_for(spamd={"port": server.port, "timeout": 0.3})
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        outcome = spamd.scan_blocking(corpus.clean(), config.spamd)
        gc.collect()
    assert outcome.cause is Cause.TIMEOUT


# --- the milter with a Runner ---------------------------------------------------------------------


@pytest.fixture
def milter_runner(runner):
    return runner


@pytest.mark.parametrize("exc", [RuntimeError("bug"), MemoryError(), TimeoutError("stuck")])
def test_any_exception_in_the_runner_is_a_tempfail(run_milter, monkeypatch, exc):
    def explode(self, spool, config, *_):
        raise exc

    monkeypatch.setattr(pipeline.Runner, "scan", explode)
    status, ctx, in_flight = run_milter(corpus.clean())
    assert status == Milter.TEMPFAIL and ctx._reply[:2] == ("451", "4.7.1")
    assert in_flight.count == 0


def test_scanners_down_through_the_runner_is_451(run_milter, tmp_path):
    status, ctx, _ = run_milter(corpus.clean(), spamd={"port": 1}, clamd={"socket": str(tmp_path / "none.ctl")})
    assert status == Milter.TEMPFAIL and ctx._reply[:2] == ("451", "4.7.1")


# --- against the real daemons ----------------------------------------------------------------------


@pytest.mark.daemons
@pytest.mark.parametrize(("name", "verdict"), [("clean", Verdict.CLEAN), ("gtube", Verdict.SPAM), ("eicar-zip", Verdict.VIRUS)])
def test_real_verdicts_match_pipeline_run(runner, live, name, verdict):
    raw = corpus.ALL[name]()
    config = live()
    with Spool.of(raw) as spool:
        threaded = runner.run(spool, config)
    with Spool.of(raw) as spool:
        looped = pipeline.run(spool, config)
    assert threaded.decision.verdict is looped.decision.verdict is verdict
    assert threaded.results.spam == looped.results.spam and threaded.results.virus == looped.results.virus


@pytest.mark.daemons
def test_many_threads_at_once(runner, live):
    config = live()
    messages = [corpus.clean(), corpus.gtube(), corpus.eicar_attached()] * 4
    verdicts: dict[int, Verdict] = {}

    def scan(index, raw):
        with Spool.of(raw) as spool:
            verdicts[index] = runner.run(spool, config).decision.verdict

    threads = [threading.Thread(target=scan, args=(i, raw)) for i, raw in enumerate(messages)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    expected = [Verdict.CLEAN, Verdict.SPAM, Verdict.VIRUS] * 4
    assert [verdicts.get(i) for i in range(len(messages))] == expected


@pytest.mark.daemons
def test_real_scanners_through_the_milter_with_a_runner(run_milter, daemons):
    real = {"spamd": {"host": daemons["spamd_host"], "port": daemons["spamd_port"]}, "clamd": {"socket": daemons["clamd_socket"]}}
    status, ctx, _ = run_milter(corpus.clean(), **real)
    assert status == Milter.CONTINUE and ctx._msg["X-Virus-Status"] == "Clean"
    status, ctx, _ = run_milter(corpus.eicar_in_zip(), **real)
    assert status == Milter.REJECT and ctx._reply[0] == "554"
