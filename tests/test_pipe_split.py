"""Recipients split by their policy through `mailfilter pipe`, with the real spamd and clamd and a recording
sendmail: one sendmail call per delivered group, one quarantine entry per held group, and a retry after a
failure halfway delivers each recipient exactly once."""

from __future__ import annotations

import json

import pytest

import corpus
from conftest import quarantined, run_pipe

pytestmark = pytest.mark.daemons
RECIPIENTS = {"strict.test": {"spam_score": 5}, "reject.test": {"spam_score": 5, "spam_reject_score": 5}}
ARGS = ("-q", "4F2A1C", "-f", "alice@example.org", "--", "a@strict.test", "b@lax.test")


def test_gtube_to_a_strict_and_a_lax_recipient_is_held_for_one_and_delivered_to_the_other(real_config, sendmail, tmp_path):
    status, out = run_pipe(real_config(recipients=RECIPIENTS), corpus.gtube(), *ARGS)
    assert (status, out) == (0, "")
    [(argv, data)] = sendmail.calls
    assert argv == ["-G", "-i", "-f", "alice@example.org", "--", "b@lax.test"]
    assert b"X-Spam-Flag: YES" in data.split(b"\n\n", 1)[0]
    [(meta, raw)] = quarantined(tmp_path / "quarantine")
    assert meta["recipients"] == ["a@strict.test"] and meta["reason"] == "spam" and raw == corpus.gtube()
    events = [json.loads(line) for path in (tmp_path / "journal").glob("*") for line in path.read_text().splitlines()]
    assert sorted((e["recipients"], e["action"]) for e in events) == [(["a@strict.test"], "quarantine"), (["b@lax.test"], "deliver")]


def test_a_group_whose_policy_rejects_is_held_when_another_is_delivered_and_69_only_when_all_reject(real_config, sendmail, tmp_path):
    config = real_config(recipients=RECIPIENTS)
    status, out = run_pipe(config, corpus.gtube(), "-q", "4F2A1D", "-f", "alice@example.org", "--", "a@reject.test", "b@lax.test")
    assert (status, out) == (0, "")
    assert [argv[-1] for argv, _ in sendmail.calls] == ["b@lax.test"]
    assert [meta["recipients"] for meta, _ in quarantined(tmp_path / "quarantine")] == [["a@reject.test"]]
    status, out = run_pipe(config, corpus.gtube(), "-q", "4F2A1E", "-f", "alice@example.org", "--", "a@reject.test", "b@reject.test")
    assert status == 69 and out.startswith("5.7.1 ") and len(sendmail.calls) == 1


def test_a_sendmail_failure_on_the_second_group_then_a_retry_delivers_each_recipient_once(real_config, sendmail, tmp_path):
    failing = real_config(recipients=RECIPIENTS, delivery={"sendmail": sendmail.argv("--exit", "1")})
    status, out = run_pipe(failing, corpus.gtube(), *ARGS)
    assert status == 75 and out.startswith("4.") and out.count("\n") == 1  # deferred: one line, Postfix keeps it
    assert len(quarantined(tmp_path / "quarantine")) == 1  # the first group was sealed before the second failed
    status, out = run_pipe(real_config(recipients=RECIPIENTS), corpus.gtube(), *ARGS)  # Postfix's retry
    assert (status, out) == (0, "")
    assert len(quarantined(tmp_path / "quarantine")) == 1  # a@strict.test is not held twice
    delivered = [argv for argv, _ in sendmail.calls if argv[-1] == "b@lax.test"]
    assert len(delivered) == 2  # the failed attempt (recorded by the fake, exit 1) and the retry
    [split_log] = (tmp_path / "state" / "split").iterdir()
    assert split_log.read_text().splitlines()[0].startswith("a@strict.test\tquarantined ")
