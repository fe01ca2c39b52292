"""The sealed-message ledger of `mailfilter smtp` (mailfilter/doors/smtpledger.py): what survives a kill."""

from __future__ import annotations

import os
import stat
import time

import pytest

from mailfilter.doors.smtpledger import FILE, Ledger, LedgerError, key
from mailfilter.model import Envelope

ENVELOPE = Envelope("alice@example.org", ("bob@example.net",), "4F2A1C")


def test_the_key_is_the_queued_message_queue_id_envelope_and_bytes():
    first = key(ENVELOPE, b"Subject: x\r\n\r\nbody\r\n")
    assert first == key(Envelope("alice@example.org", ("bob@example.net",), "4F2A1C"), b"Subject: x\r\n\r\nbody\r\n")
    others = [
        key(ENVELOPE, b"Subject: y\r\n\r\nbody\r\n"),
        key(Envelope("alice@example.org", ("bob@example.net",), "4F2A1D"), b"Subject: x\r\n\r\nbody\r\n"),
        key(Envelope("alice@example.org", ("bob@example.net", "carol@example.net"), "4F2A1C"), b"Subject: x\r\n\r\nbody\r\n"),
        key(Envelope("", ("bob@example.net",), "4F2A1C"), b"Subject: x\r\n\r\nbody\r\n"),
    ]
    assert first not in others and len(set(others)) == len(others)


def test_a_sealed_unanswered_message_survives_the_process_and_an_answered_one_does_not(tmp_path):
    ledger = Ledger(str(tmp_path))
    ledger.seal("k1", "250 2.0.0 mailfilter: clean, reinjected: 250 2.0.0 Ok: queued as A1")
    ledger.seal("k2", "250 2.0.0 mailfilter: virus, quarantined as Q2")
    ledger.answered("k2")
    ledger.answered("k-never-sealed")  # nothing written for it
    assert ledger.sealed("k1").endswith("queued as A1") and ledger.sealed("k2") is None
    # no close(): as after SIGKILL, only what write() gave the kernel
    again = Ledger(str(tmp_path))
    assert again.recovered == 1 and again.sealed("k1").endswith("queued as A1") and again.sealed("k2") is None
    lines = (tmp_path / FILE).read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("S ") and " k1 250 2.0.0" in lines[0]  # rewritten: only what is pending
    assert stat.S_IMODE(os.stat(tmp_path / FILE).st_mode) == 0o600


def test_lines_cut_short_by_a_kill_and_entries_older_than_max_age_are_dropped(tmp_path):
    now = time.time()
    (tmp_path / FILE).write_bytes(
        f"S {now - 10:.0f} fresh 250 2.0.0 ok\nS {now - 7 * 86400:.0f} old 250 2.0.0 ok\nS 17\nA\nS {now:.0f} cut".encode()
    )
    ledger = Ledger(str(tmp_path))
    assert list(ledger.pending) == ["fresh"]


def test_the_file_is_compacted_when_it_grows(tmp_path):
    ledger = Ledger(str(tmp_path), compact_bytes=2000)
    ledger.seal("kept", "250 2.0.0 held")
    for n in range(100):
        ledger.seal(f"k{n}", "250 2.0.0 mailfilter: clean, reinjected")
        ledger.answered(f"k{n}")
    assert (tmp_path / FILE).stat().st_size < 2000
    assert Ledger(str(tmp_path)).pending.keys() == {"kept"}


def test_a_folder_that_cannot_be_used_is_an_error_at_start(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(LedgerError, match="cannot open the sealed-message ledger"):
        Ledger(str(tmp_path / "file"))


def test_a_final_dot_with_no_answer_read_stays_unsure_until_sealed_or_answered(tmp_path):
    ledger = Ledger(str(tmp_path))
    for name in ("lost", "sealed", "refused"):
        ledger.dot(name)
    ledger.seal("sealed", "250 2.0.0 mailfilter: clean, reinjected: 250 2.0.0 Ok")
    ledger.answered("refused")  # the smtpd said 5xx/4xx to the dot: nothing was taken
    assert [ledger.dot_unanswered(k) for k in ("lost", "sealed", "refused")] == [True, False, False]
    again = Ledger(str(tmp_path))  # after a kill
    assert again.unsure == 1 and again.dot_unanswered("lost") and not again.dot_unanswered("sealed")
    assert again.recovered == 1 and again.sealed("sealed")
    again.answered("lost")  # its retry was answered: nothing open about it any more
    assert Ledger(str(tmp_path)).unsure == 0


def test_a_quarantine_entry_being_stored_stays_open_until_sealed_or_answered(tmp_path):
    ledger = Ledger(str(tmp_path))
    for name in ("killed", "sealed", "answered"):
        ledger.hold(name)
    ledger.seal("sealed", "250 2.0.0 mailfilter: virus, quarantined as Q1")
    ledger.answered("answered")
    assert [ledger.hold_unsealed(k) for k in ("killed", "sealed", "answered")] == [True, False, False]
    again = Ledger(str(tmp_path))  # after a kill: only the entry whose store was cut short is open
    assert again.hold_unsealed("killed") and not again.hold_unsealed("sealed") and again.sealed("sealed")
    again.answered("killed")
    assert not Ledger(str(tmp_path)).hold_unsealed("killed")
