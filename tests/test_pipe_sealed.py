"""Once a message's fate is sealed, `mailfilter pipe` answers success whatever follows.

Sealed: sendmail accepted the message, or its quarantine entry is durable. What follows (the
admin report, the journal, metrics, the summary line) may fail, raise or outlast [pipe]
deadline: it is logged, and the exit status stays 0. A 75 there would make Postfix deliver
the message again on every retry. The console script runs as pipe(8) runs it, against the real
spamd and clamd, filtering in its own process ([pipe] worker = "").
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

import corpus
from conftest import ROOT, quarantined

pytestmark = pytest.mark.daemons
MAILFILTER = ROOT / ".venv" / "bin" / "mailfilter"
ARGS = ["-q", "5EA1ED", "-f", "alice@example.org", "--", "bob@example.net"]


def pipe(config: str, raw: bytes) -> tuple[int, str, float]:
    started = time.monotonic()
    proc = subprocess.run(
        [str(MAILFILTER), "--config", config, "pipe", *ARGS], input=raw, capture_output=True, timeout=120, env={"PATH": "/usr/bin:/bin"}
    )
    assert proc.stderr == b""
    return proc.returncode, proc.stdout.decode(), time.monotonic() - started


def test_a_corrupt_metrics_state_never_turns_a_delivery_into_a_deferral(real_config, sendmail, tmp_path):
    """metrics-state.json holding `[1]` used to raise after sendmail had accepted the message: exit 75, and
    Postfix delivered it again on every retry."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "metrics-state.json").write_text("[1]")
    config = real_config(pipe={"worker": ""}, metrics={"textfile": str(tmp_path / "mailfilter.prom")})
    for _ in range(2):
        assert pipe(config, corpus.clean())[:2] == (0, "")
    assert len(sendmail.calls) == 2  # one per run: nothing deferred, so nothing would come again


def test_the_deadline_striking_during_the_report_keeps_the_quarantine_entry_final(real_config, sendmail, tmp_path):
    """A virus is quarantined, then the VIRUS FOUND report's sendmail outlasts [pipe] deadline. The deadline
    covers reading and scanning only: the answer is 0 and there is one entry (a 75 used to make Postfix
    quarantine and report it again on every retry)."""
    config = real_config(
        pipe={"worker": "", "deadline": 3},
        delivery={"sendmail": sendmail.argv("--sleep", "5")},
        report={"timeout": 30},
    )
    status, out, took = pipe(config, corpus.eicar_attached())
    assert (status, out) == (0, "") and took >= 5
    [(meta, _)] = quarantined(tmp_path / "quarantine")
    assert meta["reason"] == "virus"
    [(argv, report)] = sendmail.calls
    assert argv[-1] == "admin@example.net" and b"Subject: VIRUS FOUND" in report


def test_a_delivery_slower_than_the_deadline_is_not_deferred(real_config, sendmail, tmp_path):
    """[pipe] deadline bounds the scan; the delivery has [delivery] timeout. A sendmail that takes longer
    than the deadline delivers once and the answer is 0 (it used to be killed by the deadline)."""
    config = real_config(pipe={"worker": "", "deadline": 3}, delivery={"sendmail": sendmail.argv("--sleep", "4"), "timeout": 30})
    status, out, _ = pipe(config, corpus.clean())
    assert (status, out) == (0, "")
    assert len(sendmail.calls) == 1


def test_a_report_that_cannot_be_sent_is_logged_and_the_answer_stands(real_config, sendmail, tmp_path):
    """The admin report's sendmail fails, and the journal cannot be written: the virus stays quarantined, exit 0,
    and the log says what was not done."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    config = real_config(
        pipe={"worker": ""},
        delivery={"sendmail": sendmail.argv("--exit", "1")},
        report={"journal_dir": str(blocker / "journal")},
    )
    status, out, _ = pipe(config, corpus.eicar_attached())
    assert (status, out) == (0, "")
    assert len(quarantined(tmp_path / "quarantine")) == 1
    log = (tmp_path / "mailfilter.log").read_text()
    assert "5EA1ED: admin report not sent:" in log and "journal not written" in log
    assert "5EA1ED: from=<alice@example.org>, nrcpt=1, verdict=virus" in log and "action=quarantine" in log


def test_the_journal_records_what_was_done_after_the_answer(real_config, sendmail, tmp_path):
    config = real_config(pipe={"worker": ""})
    assert pipe(config, corpus.clean())[:2] == (0, "")
    [day] = (tmp_path / "journal").glob("*.jsonl")
    [entry] = [json.loads(line) for line in day.read_text().splitlines()]
    assert (entry["queue_id"], entry["verdict"], entry["action"]) == ("5EA1ED", "clean", "deliver")
