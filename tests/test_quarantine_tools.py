"""`mailfilter quarantine` over a quarantine written by the real pipeline (real spamd and clamd)."""

import json
import multiprocessing
import re
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from mailfilter.actions import quarantine as store
from mailfilter.cli import cli
from mailfilter.spool import Spool

import corpus
from conftest import quarantined, run_pipe

pytestmark = pytest.mark.daemons


@pytest.fixture
def held(real_config, tmp_path):
    """A quarantine holding, oldest first: an EICAR, a GTUBE spam, an EICAR with a hostile Subject for carol."""
    config = real_config(quarantine={"spam_score": 20}, report={"admin": ""})
    messages = [
        (corpus.eicar_attached(), ["bob@example.net"]),
        (corpus.gtube(), ["bob@example.net", "dave@example.net"]),
        (corpus.injecting_subject().replace(b"\n\nbody\n", b"\n\n") + corpus.eicar_attached().split(b"\n\n", 1)[1], ["carol@example.net"]),
    ]
    for raw, recipients in messages:
        status, _ = run_pipe(config, raw, "-q", "ABC", "-f", "alice@example.org", "--", *recipients)
        assert status == 0
    entries = quarantined(tmp_path / "quarantine")
    assert len(entries) == 3
    ids = [next(meta["id"] for meta, stored in entries if stored == raw) for raw, _ in messages]
    return config, ids, messages


def mf(config, *args):
    return CliRunner().invoke(cli, ["--config", config, "quarantine", *args], catch_exceptions=False)


def test_list_filters_and_escapes(held):
    config, ids, _ = held
    result = mf(config, "list")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert sorted(line.split()[0] for line in lines) == sorted(ids)
    virus_only = mf(config, "list", "--reason", "virus").output
    assert ids[1] not in virus_only and ids[0] in virus_only and "Eicar-Test-Signature" in virus_only
    spam_only = mf(config, "list", "--reason", "spam").output
    assert spam_only.count("\n") == 1 and re.search(r"  spam 1\d{3}\.\d  ", spam_only)
    assert mf(config, "list", "--recipient", "CAROL@example.net").output.split()[0] == ids[2]
    assert mf(config, "list", "--since", "1h").output.count("\n") == 3
    assert mf(config, "list", "--since", "2999-01-01").output == ""
    hostile = next(line for line in lines if line.startswith(ids[2]))
    assert "\\x0d\\x0aBcc: victim@example.com" in hostile and "\r" not in result.output
    records = [json.loads(line) for line in mf(config, "list", "--json").output.splitlines()]
    assert {r["id"] for r in records} == set(ids) and all(r["sender"] == "alice@example.org" for r in records)


def test_show_and_show_raw(held):
    config, ids, messages = held
    shown = mf(config, "show", ids[1]).output
    assert "reason:        spam" in shown and "Subject: Cheap watches, act now" in shown
    raw = CliRunner().invoke(cli, ["--config", config, "quarantine", "show", "--raw", ids[1]])
    assert raw.stdout_bytes == messages[1][0]
    assert mf(config, "show", "20261127T000000Z-0000000000").exit_code == 1
    assert "not a quarantine id" in mf(config, "show", "../../etc/passwd").output


def test_release_sends_the_original_bytes_and_marks_it(held, sendmail):
    config, ids, messages = held
    result = mf(config, "release", ids[1])
    assert result.exit_code == 0, result.output
    [(argv, data)] = sendmail.calls
    assert argv == ["-G", "-i", "-f", "alice@example.org", "--", "bob@example.net", "dave@example.net"]
    first, rest = data.split(b"\n", 1)
    assert first.startswith(b"X-Mailfilter-Released: ") and f"quarantine id {ids[1]}".encode() in first
    assert rest == messages[1][0]  # the original bytes, intact
    released = json.loads(mf(config, "list", "--json", "--reason", "spam").output)["released"]
    assert len(released) == 1 and released[0]["to"] == ["bob@example.net", "dave@example.net"]
    assert "(released)" in mf(config, "list").output  # the entry stays until purged


def test_a_virus_is_refused_without_force(held, sendmail):
    config, ids, _ = held
    refused = mf(config, "release", ids[0])
    assert refused.exit_code == 1 and "needs --force" in refused.output and sendmail.calls == []
    forced = mf(config, "release", ids[0], "--force", "--to", "postmaster@example.net")
    assert forced.exit_code == 0
    [(argv, _)] = sendmail.calls
    assert argv[-2:] == ["--", "postmaster@example.net"]


def test_release_with_failing_sendmail_is_an_error_and_not_marked(held, sendmail, real_config, tmp_path):
    _, ids, _ = held
    config = real_config(quarantine={"spam_score": 20}, delivery={"sendmail": sendmail.argv("--exit", "75")})
    result = mf(config, "release", ids[1])
    assert result.exit_code == 1 and "exit status 75" in result.output
    assert store.load(str(tmp_path / "quarantine"), ids[1])["released"] == []


def test_delete_and_purge(held, tmp_path):
    config, ids, _ = held
    folder = str(tmp_path / "quarantine")
    assert mf(config, "delete", ids[0]).exit_code == 0
    assert not (tmp_path / "quarantine" / f"{ids[0]}.eml").exists()
    with Spool.of(b"Subject: old\n\nold\n") as spool:
        old = store.store(spool, {"reason": "spam", "sender": "a@b", "recipients": ["c@d"]}, folder, datetime.now(UTC) - timedelta(days=40))
    assert mf(config, "purge", "--older-than", "30d").output == "purged 1 message(s) older than 30d\n"
    assert {m["id"] for m in store.entries(folder)} == set(ids[1:]) and old not in mf(config, "list").output
    assert mf(config, "purge", "--older-than", "soon").exit_code == 2


def test_purge_sweeps_what_a_killed_writer_left_and_nothing_in_flight(tmp_path):
    """A writer SIGKILLed mid-store leaves a hidden temporary file, or a message whose metadata never followed:
    never listed, removed by the sweep `purge` runs once they are older than an hour; younger ones (a writer may
    still be at work) and whole entries stay."""
    import os
    import time

    folder = tmp_path / "q"
    with Spool.of(corpus.gtube()) as spool:
        qid = store.store(spool, {"reason": "spam", "sender": "a@b", "recipients": ["c@d"]}, str(folder))
    old, young = time.time() - 7200, time.time()
    leftovers = [f".{qid}.eml.0a1b2c3d.tmp", "20261203T120000Z-0a1b2c3d4e.eml", f".{qid}.json.00000000.tmp"]
    for name in leftovers:
        (folder / name).write_bytes(b"cut short")
        os.utime(folder / name, (old, old))
    (folder / ".20261203T130000Z-1111111111.eml.ffffffff.tmp").write_bytes(b"in flight")
    os.utime(folder / ".20261203T130000Z-1111111111.eml.ffffffff.tmp", (young, young))
    assert sorted(store.FolderStore(str(folder)).sweep()) == sorted(leftovers)
    in_flight = ".20261203T130000Z-1111111111.eml.ffffffff.tmp"
    assert sorted(p.name for p in folder.iterdir()) == sorted([in_flight, f"{qid}.eml", f"{qid}.json"])
    assert [m["id"] for m in store.entries(str(folder))] == [qid]


def _release_in_process(folder, qid, n):
    store.release(folder, qid, f"admin{n}", lambda data, sender, to: None)


def test_concurrent_writers_lose_no_update(tmp_path):
    """Many processes release the same entry at once: every release is recorded."""
    folder = str(tmp_path / "q")
    with Spool.of(corpus.gtube()) as spool:
        qid = store.store(spool, {"reason": "spam", "sender": "a@b", "recipients": ["c@d"]}, folder)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_release_in_process, args=(folder, qid, n)) for n in range(12)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 12
    assert sorted(r["by"] for r in store.load(folder, qid)["released"]) == sorted(f"admin{n}" for n in range(12))


def _store_in_process(folder, n):
    with Spool.of(b"Subject: %d\n\n" % n + b"x" * 200_000) as spool:
        store.store(spool, {"reason": "spam", "sender": "a@b", "recipients": ["c@d"]}, folder)


def test_concurrent_stores_are_all_listed_whole(tmp_path):
    folder = str(tmp_path / "q")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_store_in_process, args=(folder, n)) for n in range(16)]
    for p in procs:
        p.start()
    seen_partial = []
    while any(p.is_alive() for p in procs):  # list while they write: never a half-written entry
        for meta in store.entries(folder):
            if (tmp_path / "q" / f"{meta['id']}.eml").stat().st_size != meta["size"]:
                seen_partial.append(meta["id"])
    for p in procs:
        p.join(60)
    entries = store.entries(folder)
    assert len(entries) == 16 and seen_partial == []
    assert not [p for p in (tmp_path / "q").iterdir() if p.name.startswith(".")]


def test_an_unscannable_message_is_refused_without_force(real_config, sendmail, tmp_path):
    """A message the scan could not see all of may hide a virus: releasing it takes --force, as a virus does."""
    config = real_config(report={"admin": ""})
    assert run_pipe(config, corpus.hostile()["deep-mime-nesting"])[0] == 0  # nested beyond what is inspected
    [(meta, _)] = quarantined(tmp_path / "quarantine")
    assert meta["reason"] == "unscannable"
    refused = mf(config, "release", meta["id"])
    assert refused.exit_code == 1 and "could not be scanned completely" in refused.output and sendmail.calls == []
    assert mf(config, "release", meta["id"], "--force").exit_code == 0 and len(sendmail.calls) == 1
