"""Two MX hosts sharing a scanner pool and one PostgreSQL quarantine, under failures (issue 13), sized small.

MX 1 is a private Postfix with the content_filter wiring (`mailfilter pipe` under pipe(8)), MX 2 one with
the milter wiring (`mailfilter milter`, virus = "quarantine"). Both scan with a pool of two spamd (the
suite's and a private one) and two clamd (the suite's and a private one), and keep held mail and the
journal in one private PostgreSQL cluster. MESSAGES messages (ham, GTUBE, EICAR, in turn) go half to each
MX while the private spamd and clamd are killed (SIGKILL) and restarted and PostgreSQL is restarted once.
A client that gets a 4xx sends again, as an MTA would; deferred mail is flushed until both queues are empty.

Then: every ham and spam message delivered exactly once, no virus delivered, every virus in the one
quarantine exactly once; and a virus quarantined through MX 1 and released from MX 2 arrives once with
its original bytes. 500 messages, as the issue asks (about two minutes on two cores: the pipe wiring
starts a Python process per message).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from pathlib import Path

import pgcluster
import pytest

import corpus
import daemons as harness
from conftest import ROOT, write_config
from milterproc import USER, MilterProcess
from postfix import PIPE_ARGS, PostfixInstance, filter_sections, filter_venv, free_port, requires_root

pytestmark = [
    pytest.mark.postfix,
    pytest.mark.daemons,
    requires_root,
    pytest.mark.skipif(not pgcluster.available(), reason="needs Debian's postgresql (scripts/setup)"),
]
MESSAGES = 500
KINDS = ("ham", "spam", "virus")
SENDER, RECIPIENT = "alice@example.org", "bob@example.net"
SETTLE = 240.0  # seconds for both queues to drain after the last message was accepted


def message(i: int) -> bytes:
    kind = KINDS[i % 3]
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = SENDER, RECIPIENT, f"fleet {i} {kind}"
    msg["Message-ID"] = f"<fleet-{i}@client.example.org>"
    msg.set_content(f"Message {i} of the fleet test.\n" + (f"\n{corpus.GTUBE}\n" if kind == "spam" else ""))
    if kind == "virus":
        msg.add_attachment(corpus.eicar(), maintype="application", subtype="octet-stream", filename="eicar.com")
    return msg.as_bytes()


def kill_and_restart(run, name: str) -> None:
    """SIGKILL the daemon's whole process group, wait until it is gone, start it again (same address)."""
    pid = harness.state(run)["pids"][name]
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while harness._group_alive(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} (pid {pid}) survived SIGKILL")
        time.sleep(0.05)
    harness._reap(pid)
    harness.start(run_dir=run, only=name)


@pytest.fixture
def fleet(daemons):
    started = []
    run = Path(tempfile.mkdtemp(prefix="mailfilter-fleet-", dir="/tmp"))  # clamd's user must reach it (pytest's tmp is 0700)
    run.chmod(0o755)
    cluster = pgcluster.start(free_port())
    try:
        dsn = cluster.create_database("fleet")
        subprocess.run(
            [sys.executable, "-m", "mailfilter", "-c", write_config(run / "db.toml", {"quarantine": {"store": dsn}}), "db", "init"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        second = harness.start(run_dir=run)
        spamd = [f"{daemons['spamd_host']}:{daemons['spamd_port']}", f"{second['spamd_host']}:{second['spamd_port']}"]
        clamd = [f"unix:{daemons['clamd_socket']}", f"{second['clamd_host']}:{second['clamd_port']}"]

        def sections(folder, log_name):
            base = filter_sections(folder, ("", 0), "", 20, log_name)
            base["spamd"] = {"servers": spamd, "timeout": 20}
            base["clamd"] = {"servers": clamd, "timeout": 20}
            base["quarantine"] = {"store": dsn, "dir": str(folder / "unused-quarantine")}
            base["report"] |= {"admin": "", "journal_store": dsn}
            return base

        mx1 = PostfixInstance()
        started.append(mx1)
        config1 = write_config(mx1.filter_dir / "mailfilter.toml", {**sections(mx1.filter_dir, "mailfilter.log"), "pipe": {"worker": ""}})
        mx1.start("content_filter", argv=[str(filter_venv()), *PIPE_ARGS], config=config1, allow_min_user="yes")

        mx2, milter = PostfixInstance(), MilterProcess()
        started += [mx2, milter]
        port = free_port()
        config2 = write_config(
            milter.folder / "milter.toml",
            {
                **sections(milter.folder, "milter.log"),
                "metrics": {"listen": ""},
                "milter": {
                    "socket": f"inet:{port}@127.0.0.1",
                    "tmpdir": str(milter.folder),
                    "user": f"{USER}:postdrop",
                    "virus": "quarantine",
                },
            },
        )
        milter.start(config2, env={"MAIL_CONFIG": str(mx2.config_dir)})
        milter.expect(b"READY=1")
        mx2.start("milter", milter=f"inet:127.0.0.1:{port}", milter_content_timeout="120s")
        yield {"mx": (mx1, mx2), "milter": milter, "cluster": cluster, "dsn": dsn, "run": run, "config2": config2}
    finally:
        for thing in reversed(started):
            thing.close()
        harness.stop(run_dir=run)
        pgcluster.remove(cluster)
        shutil.rmtree(run, ignore_errors=True)


def test_two_mx_hosts_share_a_pool_and_a_quarantine_through_failures(fleet):
    from mailfilter.actions.pgstore import PgStore

    mx1, mx2 = fleet["mx"]
    raws = [message(i) for i in range(MESSAGES)]
    retries = [0]
    sent = [0]
    lock = threading.Lock()
    problems: list[str] = []

    def send_all(mx: PostfixInstance, numbers: list[int]) -> None:
        for i in numbers:
            deadline = time.monotonic() + 120
            while True:
                try:
                    code, text = mx.send(raws[i], SENDER, [RECIPIENT])
                except OSError as exc:  # smtpd busy, a dropped connection: an MTA tries again
                    code, text = 421, str(exc)
                if code == 250:
                    break
                if code < 400 or code >= 500 or time.monotonic() > deadline:
                    problems.append(f"message {i}: {code} {text}")
                    break
                with lock:
                    retries[0] += 1
                time.sleep(0.2)  # the client's retry after a 4xx (PostgreSQL restarting under the milter)
            with lock:
                sent[0] += 1

    def chaos() -> None:
        steps = [
            (MESSAGES // 6, lambda: kill_and_restart(fleet["run"], "spamd")),
            (MESSAGES * 2 // 6, lambda: kill_and_restart(fleet["run"], "clamd")),
            (MESSAGES * 3 // 6, lambda: (fleet["cluster"].stop("immediate"), fleet["cluster"].start())),
        ]
        for at, step in steps:
            while sent[0] < at and not problems:
                time.sleep(0.05)
            step()

    senders = [
        threading.Thread(target=send_all, args=(mx1, list(range(0, MESSAGES, 2)))),
        threading.Thread(target=send_all, args=(mx2, list(range(1, MESSAGES, 2)))),
    ]
    breaker = threading.Thread(target=chaos)
    for thread in [*senders, breaker]:
        thread.start()
    for thread in [*senders, breaker]:
        thread.join(600)
    assert not problems, problems

    deadline = time.monotonic() + SETTLE
    while any(mx.postqueue_json() for mx in (mx1, mx2)):
        assert time.monotonic() < deadline, mx1.diagnostics() + mx2.diagnostics()
        for mx in (mx1, mx2):
            mx.flush()
        time.sleep(0.5)

    delivered: dict[int, int] = {}
    for mx in (mx1, mx2):
        for delivery in mx.sink.deliveries:
            subject = BytesHeaderParser().parsebytes(delivery.data)["Subject"]
            number, kind = int(subject.split()[1]), subject.split()[2]
            delivered[number] = delivered.get(number, 0) + 1
            assert kind != "virus", f"virus {number} delivered"
    expected = {i for i in range(MESSAGES) if KINDS[i % 3] != "virus"}
    assert set(delivered) == expected, f"lost: {sorted(expected - set(delivered))}"
    assert [i for i, n in delivered.items() if n > 1] == [], "delivered twice"

    store = PgStore(fleet["dsn"])
    entries, bad = store.entries()
    assert bad == []
    held = sorted(int(entry.meta["message_id"].split("-")[1].split("@")[0]) for entry in entries)
    assert held == [i for i in range(MESSAGES) if KINDS[i % 3] == "virus"], "a virus missing from the quarantine, or held twice"

    # A virus that came in through MX 1 (even numbers), released from MX 2's host: once, with its bytes.
    number = next(i for i in range(0, MESSAGES, 2) if KINDS[i % 3] == "virus")
    (entry,) = [e for e in entries if e.meta["message_id"] == f"<fleet-{number}@client.example.org>"]
    before = len(mx2.sink.deliveries)
    released = subprocess.run(
        [sys.executable, "-m", "mailfilter", "-c", fleet["config2"], "quarantine", "release", "--force", entry.id],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "MAIL_CONFIG": str(mx2.config_dir)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert released.returncode == 0, released.stderr
    arrived = mx2.sink.wait(before + 1)[before:]
    mx2.wait_for(lambda: mx2.postqueue_json() == [], what="MX 2's queue empty after the release")
    assert len(mx2.sink.deliveries) == before + 1 and len(arrived) == 1
    with store.open_message(entry.id) as (_, fh):
        held_bytes = fh.read()  # as MX 1's Postfix handed it to the filter: its Received, Return-Path and Date added
    assert held_bytes.endswith(raws[number].split(b"\n\n", 1)[1]) and b"Subject: fleet %d virus\n" % number in held_bytes
    # Released: those bytes, below our header; the Return-Path line is one Postfix's cleanup drops from all mail it takes in.
    assert held_bytes.startswith(b"Return-Path: <alice@example.org>\n")
    assert arrived[0].data.endswith(held_bytes.split(b"\n", 1)[1].replace(b"\n", b"\r\n"))
    assert b"X-Mailfilter-Released: " in arrived[0].data
    assert len(store.get(entry.id).released) == 1

    # What the failures did, for the record (pytest -s): failovers from the fleet's journal, the client's retries.
    from mailfilter import pgjournal

    events = list(pgjournal.read(fleet["dsn"], datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC) + timedelta(hours=1)))
    failovers = sum(sum(event.get("failovers", {}).values()) for event in events)
    deferred = sum(1 for event in events if event["action"] == "tempfail")
    counts = f"{len(events)} journal events, {failovers} failovers, {deferred} tempfails, {retries[0]} client retries"
    print(f"\nfleet: {MESSAGES} messages, {counts}")
    assert failovers > 0  # the killed members were failed over
