"""Scanner pools ([spamd] servers, [clamd] servers) against the real spamd and clamd: failover, on_error, load spread.

A refused member is a loopback port nobody listens on; a member that accepts and never answers is a
listening socket that is never read (the kernel completes the handshake). The second live spamd is a
private one in a run dir of this module's own; clamd's two live members are the one clamd's TCP and
unix listeners.
"""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from mailfilter import config as configmod
from mailfilter import metrics
from mailfilter.model import Action, Cause, ScanFailure, SpamReport, Verdict
from mailfilter.scanners import pool

import corpus
from conftest import free_tcp_port, run_bytes, run_pipe

pytestmark = pytest.mark.daemons


@pytest.fixture(scope="module")
def second_spamd(tmp_path_factory, daemons):
    """A second private spamd (its own run dir), stopped at the end of the module."""
    import daemons as harness

    run = tmp_path_factory.mktemp("spamd2")
    state = harness.start(run_dir=run, only="spamd")
    yield f"{state['spamd_host']}:{state['spamd_port']}"
    harness.stop(run_dir=run, only="spamd")


@pytest.fixture
def spamd1(daemons):
    return f"{daemons['spamd_host']}:{daemons['spamd_port']}"


@pytest.fixture
def clamd_unix(daemons):
    return f"unix:{daemons['clamd_socket']}"


@pytest.fixture
def mute():
    """A loopback server that accepts connections and never answers; its HOST:PORT."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def refused() -> str:
    return f"127.0.0.1:{free_tcp_port()}"


def pooled(spamd: list[str], clamd: list[str], timeout: float = 30, on_error: str = "tempfail") -> configmod.Config:
    return configmod.from_dict(
        {
            "spamd": {"servers": spamd, "timeout": timeout, "on_error": on_error},
            "clamd": {"servers": clamd, "timeout": timeout, "on_error": on_error},
        }
    )


def test_a_refused_member_costs_no_more_than_the_refusal(spamd1, clamd_unix):
    config = pooled([refused(), spamd1], [refused(), clamd_unix])
    failovers = {"spamd": 0, "clamav": 0}
    for _ in range(3):  # the members are taken in turn: the refused one comes first at least once
        started = time.monotonic()
        outcome = run_bytes(corpus.gtube(), config)
        assert time.monotonic() - started < 2.0  # a GTUBE scan here takes about 0.1 s; no timeout was waited for
        assert outcome.decision.verdict is Verdict.SPAM
        assert dict(outcome.results.servers) == {"spamd": spamd1, "clamav": clamd_unix}
        for scanner, n in outcome.results.failovers:
            failovers[scanner] += n
    # Once refused, a member is left out (down) for the next messages: exactly one failover per scanner.
    assert failovers == {"spamd": 1, "clamav": 1}


def test_eicar_found_after_a_refused_clamd(spamd1, clamd_unix):
    config = pooled([spamd1], [refused(), clamd_unix])
    for _ in range(2):
        outcome = run_bytes(corpus.eicar_attached(), config)
        assert outcome.decision.verdict is Verdict.VIRUS
        assert outcome.results.virus.names[0].startswith("Eicar-Test-Signature")


def test_a_member_that_never_answers_fails_over_within_the_timeout(spamd1, clamd_unix, mute):
    timeout = 4.0
    config = pooled([mute, spamd1], [clamd_unix], timeout=timeout)
    slow = []
    for _ in range(2):  # in turn: one of the two messages goes to the mute member first
        started = time.monotonic()
        outcome = run_bytes(corpus.gtube(), config)
        took = time.monotonic() - started
        assert outcome.decision.verdict is Verdict.SPAM, outcome
        assert took < timeout
        if dict(outcome.results.failovers).get("spamd"):
            slow.append(took)
    # The mute member had its fair share of the timeout (half, with two members), not all of it.
    assert len(slow) == 1 and timeout / 2 - 0.2 < slow[0] < timeout


@pytest.mark.parametrize(("on_error", "action"), [("tempfail", Action.TEMPFAIL), ("accept", Action.DELIVER)])
def test_a_pool_whose_every_member_is_down_applies_on_error(clamd_unix, mute, on_error, action):
    config = pooled([refused(), mute], [clamd_unix], timeout=2, on_error=on_error)
    started = time.monotonic()
    outcome = run_bytes(corpus.gtube(), config)
    assert time.monotonic() - started < 2 + 0.5
    assert outcome.decision.action is action
    spam = outcome.results.spam
    assert isinstance(spam, ScanFailure) and spam.cause in (Cause.UNAVAILABLE, Cause.TIMEOUT)
    assert "every server of the pool failed" in spam.text
    assert dict(outcome.results.failovers) == {"spamd": 1}


def test_all_clamd_down_is_never_clean(spamd1):
    outcome = run_bytes(corpus.clean(), pooled([spamd1], [refused(), f"unix:/nonexistent/{free_tcp_port()}.ctl"]))
    assert outcome.decision.action is Action.TEMPFAIL
    assert isinstance(outcome.results.virus, ScanFailure)


def test_load_spreads_over_two_live_spamd_and_two_clamd_listeners(spamd1, second_spamd, clamd_unix, daemons):
    clamd_tcp = f"{daemons['clamd_host']}:{daemons['clamd_port']}"
    config = pooled([spamd1, second_spamd], [clamd_unix, clamd_tcp])
    seen: dict[str, int] = {}
    with ThreadPoolExecutor(4) as threads:
        for outcome in threads.map(lambda _: run_bytes(corpus.gtube(), config), range(16)):
            assert outcome.decision.verdict is Verdict.SPAM
            for scanner, server in outcome.results.servers:
                seen[f"{scanner} {server}"] = seen.get(f"{scanner} {server}", 0) + 1
            assert not outcome.results.failovers
    for member in (f"spamd {spamd1}", f"spamd {second_spamd}", f"clamav {clamd_unix}", f"clamav {clamd_tcp}"):
        assert seen.get(member, 0) >= 4, seen  # 16 messages over 2 members: none gets (almost) all


def test_the_journal_and_metrics_say_which_member_scanned(make_config, tmp_path, spamd1, clamd_unix):
    path = make_config(spamd={"servers": [refused(), spamd1]}, clamd={"servers": [clamd_unix]})
    events = []
    for _ in range(2):
        status, _ = run_pipe(path, corpus.clean())
        assert status == 0
    for day in (tmp_path / "journal").glob("*.jsonl"):
        events += [json.loads(line) for line in day.read_text().splitlines()]
    assert [e["servers"] for e in events] == [{"spamd": spamd1, "clamav": clamd_unix}] * 2
    assert sum(e["failovers"].get("spamd", 0) for e in events) == 1
    tally = metrics.Tally()
    for event in events:
        tally.observe(event)
    assert tally.counters["scans"][("spamd", spamd1)] == 2
    assert tally.counters["failovers"][("spamd",)] == 1


# --- the pool's rules with stand-in servers (no daemon) ----------------------------------------------


def _fake_pool(answers: dict[str, list], pings: dict[str, bool], calls: list[str]):
    servers = tuple(pool.parse(f"127.0.0.1:{port}") for port in (1001, 1002))

    def ping(server, timeout):
        calls.append(f"ping {server.port}")
        return pings.get(str(server.port), True)

    def attempt(server, budget):
        calls.append(f"scan {server.port}")
        return answers[str(server.port)].pop(0)

    return pool.Pool("spamd", servers, ping), attempt


def test_a_member_marked_down_gets_mail_again_only_after_a_pong():
    calls: list[str] = []
    down = ScanFailure("spamd", Cause.UNAVAILABLE, "refused")
    ok = SpamReport(1.0, 5.0)
    p, attempt = _fake_pool({"1001": [down, ok], "1002": [ok, ok, ok]}, {"1001": False}, calls)
    p._turn = 1  # 1001 first
    assert p.scan(attempt, 5) == ok
    assert calls == ["scan 1001", "scan 1002"]
    calls.clear()
    assert p.scan(attempt, 5) == ok  # 1001 is down: not asked, not even pinged
    assert calls == ["scan 1002"]
    p._members[0].down_until = time.monotonic() - 0.001  # its time out is over
    calls.clear()
    p._turn = 1
    assert p.scan(attempt, 5) == ok
    assert calls == ["ping 1001", "scan 1002"]  # no PONG: still left out
    p._members[0].down_until = time.monotonic() - 0.001
    calls.clear()
    p._turn = 1
    p._ping = lambda server, timeout: calls.append(f"ping {server.port}") or True
    assert p.scan(attempt, 5) == ok
    assert calls == ["ping 1001", "scan 1001"]  # PONG: back in the pool


def test_an_answer_is_never_asked_again_and_too_large_is_no_failover():
    calls: list[str] = []
    big = ScanFailure("spamd", Cause.TOO_LARGE, "too large")
    p, attempt = _fake_pool({"1001": [big], "1002": []}, {}, calls)
    p._turn = 1
    assert p.scan(attempt, 5) == big
    assert calls == ["scan 1001"]
    assert p.status()[0]["up"]


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ({"servers": ["127.0.0.1:783"], "host": "10.0.0.1"}, "[spamd] servers and host: set one or the other"),
        ({"servers": ["127.0.0.1:783"], "port": 783, "socket": "/run/s"}, "[spamd] servers and port, socket"),
        ({"servers": ["127.0.0.1"]}, "must be HOST:PORT"),
        ({"servers": ["unix:run/spamd.sock"]}, "absolute path"),
        ({"servers": ["127.0.0.1:783", "127.0.0.1:783"]}, "names a server twice"),
    ],
)
def test_servers_and_single_keys_are_exclusive(given, problem):
    with pytest.raises(configmod.ConfigError, match=None) as caught:
        configmod.from_dict({"spamd": given})
    assert problem in str(caught.value)


def test_servers_parse():
    assert configmod.from_dict({"clamd": {"servers": ["unix:/run/c.ctl", "[::1]:3310"]}}).clamd.servers == ("unix:/run/c.ctl", "[::1]:3310")
    assert pool.members((), "127.0.0.1", 783, "") == (pool.Server("127.0.0.1", 783),)
    assert pool.members(("unix:/x", "h:1"), "", 0, "") == (pool.Server(path="/x"), pool.Server("h", 1))


def test_check_probes_every_member(spamd1, clamd_unix, daemons):
    from datetime import datetime

    from mailfilter.commands import check as chk

    dead = refused()
    clamd_tcp = f"{daemons['clamd_host']}:{daemons['clamd_port']}"
    lines = [line.render() for line in chk.scanner_lines(pooled([spamd1, dead], [clamd_unix, clamd_tcp]), datetime.now())]
    assert any(line.startswith("OK") and f"{spamd1} scored GTUBE" in line for line in lines), lines
    assert any(line.startswith("FAIL") and f"spamd: {dead}:" in line for line in lines), lines
    assert any(line.startswith("OK") and f"{clamd_unix} found EICAR" in line for line in lines), lines
    assert any(line.startswith("OK") and f"{clamd_tcp} found EICAR" in line for line in lines), lines
    assert len([line for line in lines if "spamd" in line.split(":")[0]]) == 2
