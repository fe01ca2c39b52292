"""The PostgreSQL quarantine and journal ([quarantine] store, [report] journal_store) against a private cluster.

One cluster per module (pgcluster.py: initdb as postgres in a temporary folder, a loopback port chosen at
run time); each test gets a database of its own. The scanners are the real spamd and clamd.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pgcluster
import pytest
from click.testing import CliRunner

from mailfilter import config as configmod
from mailfilter import metrics, pg, pgjournal
from mailfilter.actions import pgstore
from mailfilter.actions import quarantine as qstore
from mailfilter.cli import cli
from mailfilter.commands import check as chk
from mailfilter.spool import Spool

import corpus
from conftest import free_tcp_port, run_pipe

pytestmark = [pytest.mark.daemons, pytest.mark.skipif(not pgcluster.available(), reason="needs Debian's postgresql (scripts/setup)")]


@pytest.fixture(scope="module")
def cluster():
    c = pgcluster.start(free_tcp_port())
    yield c
    pgcluster.remove(c)


@pytest.fixture
def dsn(cluster):
    return cluster.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def ready(dsn):
    """A database with the schema (`db init`)."""
    pg.upgrade(dsn, create=True)
    return dsn


def dead_dsn() -> str:
    return f"postgresql://postgres@127.0.0.1:{free_tcp_port()}/mailfilter"


def cli_run(path: str, *args: str):
    return CliRunner().invoke(cli, ["-c", path, *args], catch_exceptions=False)


def tables(dsn: str) -> list[str]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return [row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]


def test_db_init_and_upgrade_are_versioned_and_idempotent(make_config, dsn):
    path = make_config(quarantine={"store": dsn}, report={"journal_store": dsn})
    result = cli_run(path, "db", "upgrade")
    assert result.exit_code == 1 and "run `mailfilter db init`" in result.output
    assert tables(dsn) == []
    result = cli_run(path, "db", "init")
    assert result.exit_code == 0 and "schema version 0 -> 1" in result.output, result.output
    for command in ("init", "upgrade"):
        result = cli_run(path, "db", command)
        assert result.exit_code == 0 and "schema version 1, nothing to do" in result.output
    assert tables(dsn) == ["mailfilter_journal", "mailfilter_quarantine", "mailfilter_release", "mailfilter_schema"]


def test_two_hosts_initialising_at_once_both_succeed(dsn):
    results = []
    threads = [threading.Thread(target=lambda: results.append(pg.upgrade(dsn, create=True))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(results) == [(0, 1), (1, 1)]


def test_mail_never_creates_the_schema_a_virus_is_deferred(real_config, dsn, sendmail):
    path = real_config(quarantine={"store": dsn})
    status, out = run_pipe(path, corpus.eicar_attached())
    assert status == 75 and "quarantine failed" in out and "mailfilter db init" in out
    assert tables(dsn) == [] and sendmail.calls == []


def test_a_virus_through_the_pipe_is_in_the_store_and_the_tools_work_on_it(real_config, ready, sendmail, tmp_path):
    path = real_config(quarantine={"store": ready, "dir": str(tmp_path / "never")}, report={"admin": ""})
    raw = corpus.eicar_attached()
    status, _ = run_pipe(path, raw)
    assert status == 0 and sendmail.calls == []
    assert not (tmp_path / "never").exists()
    listed = cli_run(path, "quarantine", "list", "--json")
    assert listed.exit_code == 0, listed.output
    (meta,) = [json.loads(line) for line in listed.output.splitlines()]
    assert meta["reason"] == "virus" and meta["virus_names"][0].startswith("Eicar") and meta["queue_id"] == "4F2A1C"
    assert meta["recipients"] == ["bob@example.net", "carol@example.net"] and meta["host"] and meta["size"] == len(raw)
    qid = meta["id"]
    shown = CliRunner().invoke(cli, ["-c", path, "quarantine", "show", "--raw", qid], catch_exceptions=False)
    assert shown.stdout_bytes == raw  # the message exactly as received
    refused = cli_run(path, "quarantine", "release", qid)
    assert refused.exit_code == 1 and "--force" in refused.output
    released = cli_run(path, "quarantine", "release", "--force", "--to", "admin@example.net", qid)
    assert released.exit_code == 0, released.output
    ((argv, data),) = sendmail.calls
    assert argv[-1] == "admin@example.net" and data.endswith(raw) and data.startswith(b"X-Mailfilter-Released: ")
    shown = cli_run(path, "quarantine", "show", qid).output
    assert "released:" in shown and f"host:          {meta['host']}" in shown
    assert cli_run(path, "quarantine", "purge", "--older-than", "1d").output.startswith("purged 0")
    assert cli_run(path, "quarantine", "delete", qid).exit_code == 0
    assert cli_run(path, "quarantine", "show", qid).exit_code == 1
    assert cli_run(path, "quarantine", "list").output == ""


def test_the_quarantine_gauges_count_the_store(real_config, ready, tmp_path):
    """The textfile's quarantine gauges (and the milter's) count the PostgreSQL store, not the unused folder."""
    prom = tmp_path / "mailfilter.prom"
    path = real_config(quarantine={"store": ready, "dir": str(tmp_path / "never")}, report={"admin": ""}, metrics={"textfile": str(prom)})
    raws = [corpus.eicar_attached(), corpus.eicar_attached()]
    for raw in raws:
        assert run_pipe(path, raw)[0] == 0
    config = configmod.load(path)
    assert metrics.quarantine_usage(metrics.held_at(config.quarantine)) == (2, sum(len(raw) for raw in raws))
    text = prom.read_text()
    assert "mailfilter_quarantine_messages 2" in text and f"mailfilter_quarantine_bytes {sum(len(r) for r in raws)}" in text
    assert metrics.quarantine_usage(dead_dsn()) == (0, 0)  # unreachable: counted as an unreadable folder is


def test_store_unreachable_defers_what_must_be_held_and_delivers_the_rest(real_config, sendmail):
    path = real_config(quarantine={"store": dead_dsn()}, report={"admin": ""})
    started = time.monotonic()
    status, out = run_pipe(path, corpus.eicar_attached())
    assert status == 75 and "quarantine failed" in out and "PostgreSQL 127.0.0.1:" in out
    assert "postgresql://" not in out  # the DSN (which may hold a password) is never shown
    status, _ = run_pipe(path, corpus.clean())
    assert status == 0 and len(sendmail.calls) == 1
    assert time.monotonic() - started < 10


def test_the_milter_tempfails_when_the_store_is_unreachable(run_milter, daemons):
    import Milter

    status, _ctx, _ = run_milter(
        corpus.eicar_attached(),
        spamd={"host": daemons["spamd_host"], "port": daemons["spamd_port"]},
        clamd={"socket": daemons["clamd_socket"]},
        quarantine={"store": dead_dsn()},
        milter={"virus": "quarantine"},
    )
    assert status == Milter.TEMPFAIL


def test_the_milter_quarantines_into_the_store(run_milter, daemons, ready):
    import Milter

    status, _ctx, _ = run_milter(
        corpus.eicar_attached(),
        spamd={"host": daemons["spamd_host"], "port": daemons["spamd_port"]},
        clamd={"socket": daemons["clamd_socket"]},
        quarantine={"store": ready},
        milter={"virus": "quarantine"},
    )
    assert status == Milter.DISCARD
    (entry,) = pgstore.PgStore(ready).entries()[0]
    assert entry.reason == "virus"


def _held(dsn: str, raw: bytes = b"Subject: held\n\nbody\n", reason: str = "spam") -> str:
    meta = {"reason": reason, "verdict": reason, "sender": "a@example.org", "recipients": ["b@example.net"], "subject": "held"}
    with Spool.of(raw) as spool:
        return pgstore.PgStore(dsn, host="mx1").store(spool, meta)


def test_concurrent_releases_from_two_hosts_deliver_once_per_request_and_record_both(ready):
    qid = _held(ready)
    sent, inside, overlap = [], [0], [False]
    lock = threading.Lock()

    def send(data, sender, to):
        with lock:
            inside[0] += 1
            overlap[0] = overlap[0] or inside[0] > 1
        time.sleep(0.3)  # a slow sendmail: the two releases would overlap if nothing serialised them
        with lock:
            inside[0] -= 1
            sent.append(data)

    def release(host):
        pgstore.PgStore(ready, host=host).release(qid, f"admin@{host}", send)

    threads = [threading.Thread(target=release, args=(host,)) for host in ("mx1", "mx2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(sent) == 2 and not overlap[0]
    assert all(data.endswith(b"Subject: held\n\nbody\n") for data in sent)
    entry = pgstore.PgStore(ready).get(qid)
    assert sorted(r.by for r in entry.released) == ["admin@mx1", "admin@mx2"]


def test_a_failed_delivery_records_no_release_and_a_locked_entry_is_busy(ready):
    from mailfilter.actions.reinject import DeliveryError

    qid = _held(ready)

    def fail(data, sender, to):
        raise DeliveryError("sendmail exit status 75")

    with pytest.raises(DeliveryError):
        pgstore.PgStore(ready).release(qid, "admin", fail)
    assert pgstore.PgStore(ready).get(qid).released == ()
    held, started = threading.Event(), threading.Event()

    def hold(data, sender, to):
        started.set()
        held.wait(30)

    worker = threading.Thread(target=lambda: pgstore.PgStore(ready).release(qid, "slow", hold))
    worker.start()
    assert started.wait(30)
    with pytest.raises(qstore.Busy):
        pgstore.PgStore(ready).delete(qid)
    held.set()
    worker.join(30)
    pgstore.PgStore(ready).delete(qid)
    with pytest.raises(qstore.NotFound):
        pgstore.PgStore(ready).get(qid)


def test_purge_removes_old_entries_only(ready):
    old = _held(ready)
    new = _held(ready)
    store = pgstore.PgStore(ready)
    gone, skipped = store.purge(timedelta(days=1), now=datetime.now(UTC) + timedelta(days=2))
    assert sorted(gone) == sorted([old, new]) and skipped == []
    assert store.entries() == ([], [])


def test_a_restarted_postgresql_is_used_again_without_a_deferral(cluster, ready):
    _held(ready)  # a connection is now kept idle
    cluster.stop("fast")
    try:
        with pytest.raises(qstore.QuarantineError):
            _held(ready)
    finally:
        cluster.start()
    _held(ready)  # the dead idle connection is noticed and replaced: no deferral
    assert len(pgstore.PgStore(ready).entries()[0]) == 2


def test_the_journal_store_and_a_fleet_report(real_config, ready):
    path = real_config(report={"journal_store": ready})
    for raw in (corpus.clean(), corpus.gtube()):
        assert run_pipe(path, raw)[0] == 0
    (event,) = [e for e in pgjournal.read(ready, datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC) + timedelta(hours=1))][:1]
    pgjournal.record(ready, {**event, "queue_id": "MX2"}, host="mx2")
    day = datetime.now(UTC).date().isoformat()
    report = cli_run(path, "report", "--date", day)
    assert report.exit_code == 0, report.output
    assert "on the fleet (2 hosts)" in report.output and "By host" in report.output
    assert "  mx2               1" in report.output
    assert "Messages filtered: 3" in report.output


def test_a_journal_store_down_never_holds_mail_up(real_config, tmp_path, sendmail):
    path = real_config(report={"journal_store": dead_dsn(), "admin": ""})
    status, _ = run_pipe(path, corpus.clean())
    assert status == 0 and len(sendmail.calls) == 1
    assert "journal not written to PostgreSQL" in (tmp_path / "mailfilter.log").read_text()
    assert list((tmp_path / "journal").glob("*.jsonl"))  # the folder journal is still written
    tally = metrics.Tally()
    metrics.account(
        {**json.loads(next((tmp_path / "journal").glob("*.jsonl")).read_text().splitlines()[0])}, configmod.load(path), None, tally
    )
    assert tally.counters["journal_errors"] == {("postgresql",): 1}


def test_check_reports_the_stores(ready):
    assert chk.store_line("quarantine store", ready).status is chk.Status.OK
    assert chk.store_line("quarantine store", dead_dsn()).status is chk.Status.FAIL
    config = configmod.from_dict({"quarantine": {"store": ready}, "report": {"journal_store": dead_dsn()}})
    lines = {line.subject: line for line in chk.checks(config, {}, datetime.now()) if "store" in line.subject}
    assert lines["quarantine store"].status is chk.Status.OK
    assert lines["journal store"].status is chk.Status.FAIL


def test_check_says_to_run_db_init(dsn):
    line = chk.store_line("quarantine store", dsn)
    assert line.status is chk.Status.FAIL and "mailfilter db init" in line.fix


def test_config_refuses_a_store_that_is_not_a_postgresql_uri():
    with pytest.raises(configmod.ConfigError, match=r"\[quarantine\] store: must be a PostgreSQL URI"):
        configmod.from_dict({"quarantine": {"store": "mysql://x"}})


def test_the_console_and_a_digest_link_work_over_the_postgresql_store(real_config, ready, sendmail, tmp_path):
    import json
    import re
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from starlette.testclient import TestClient

    from mailfilter import config as configmod
    from mailfilter.web import app as webapp
    from mailfilter.web import users

    web = {"users_file": str(tmp_path / "users"), "secret_file": str(tmp_path / "state" / "secret"), "public_url": "https://mx.example.net"}
    path = real_config(quarantine={"store": ready, "spam_score": 5.0}, web=web)
    for raw in (corpus.gtube(), corpus.eicar_attached()):
        status, out = run_pipe(path, raw)
        assert status == 0, out
    config = configmod.load(path)
    users.add(config.web.users_file, "admin", "correct horse")
    client = TestClient(webapp.create(config, secure=False), base_url="http://127.0.0.1", follow_redirects=False)
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text).group(1)
    assert client.post("/login", data={"username": "admin", "password": "correct horse", "csrf": token}).status_code == 303
    good, _bad = qstore.open_store(config.quarantine).entries()
    by_reason = {e.reason: e.id for e in good}
    assert sorted(by_reason) == ["spam", "virus"]
    listing = client.get("/quarantine?reason=virus").text
    assert by_reason["virus"] in listing and by_reason["spam"] not in listing
    page = client.get(f"/quarantine/{by_reason['spam']}")
    assert page.status_code == 200 and "Cheap watches" in page.text
    before = len(sendmail.calls)
    result = cli_run(path, "digest", "--json")
    digests = {d["recipient"]: d["entries"] for d in map(json.loads, result.output.splitlines())}
    [link] = [e["link"] for e in digests["carol@example.net"] if e["link"]]
    local = link.replace("https://mx.example.net", "")
    form = client.get(local)
    assert form.status_code == 200
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    assert client.post(local, data={"csrf": csrf}).status_code == 200
    assert client.post(local, data={"csrf": csrf}).status_code == 410
    [(argv, data)] = sendmail.calls[before:]
    assert argv[-2:] == ["--", "carol@example.net"] and b"X-Mailfilter-Released: link:carol@example.net" in data
    [entry] = [e for e in qstore.open_store(config.quarantine).entries()[0] if e.id == by_reason["spam"]]
    assert [r.to for r in entry.released] == [("carol@example.net",)]  # recorded in PostgreSQL, seen by every host
