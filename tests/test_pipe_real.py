"""`mailfilter pipe` end to end against the real spamd and clamd, with a recording sendmail."""

import os
import subprocess

import pytest

import corpus
from conftest import ROOT, mode, quarantined, run_pipe

pytestmark = pytest.mark.daemons
ENVELOPE = ["-f", "alice@example.org", "--", "bob@example.net", "carol@example.net"]


def delivered_head(data: bytes) -> list[bytes]:
    return data.split(b"\n\n", 1)[0].splitlines()


def test_clean_message(real_config, sendmail):
    status, out = run_pipe(real_config(), corpus.clean())
    assert (status, out) == (0, "")
    [(argv, data)] = sendmail.calls
    assert argv == ["-G", "-i", "-f", "alice@example.org", "--", "bob@example.net", "carol@example.net"]
    head = delivered_head(data)
    assert head[0] == b"X-Spam-Flag: NO" and head[4] == b"X-Virus-Status: Clean"
    assert data.endswith(corpus.clean().split(b"\n\n", 1)[1])


def test_gtube_is_tagged(real_config, sendmail):
    status, _ = run_pipe(real_config(), corpus.gtube())
    [(_, data)] = sendmail.calls
    head = delivered_head(data)
    assert status == 0 and head[0] == b"X-Spam-Flag: YES"
    assert head[2].startswith(b"X-Spam-Status: Yes, score=1") and b"GTUBE" in head[2]


def test_gtube_over_quarantine_score_is_held(real_config, sendmail, tmp_path):
    status, out = run_pipe(real_config(quarantine={"spam_score": 20}), corpus.gtube())
    [(meta, raw)] = quarantined(tmp_path / "quarantine")
    assert (status, out) == (0, "") and raw == corpus.gtube()
    assert meta["reason"] == "spam" and meta["spam_score"] >= 1000
    assert sendmail.calls == []


@pytest.mark.parametrize("make", [corpus.eicar_attached, corpus.eicar_in_zip, corpus.testfile_attached])
def test_virus_is_quarantined_and_reported(real_config, sendmail, tmp_path, make):
    raw = make()
    status, out = run_pipe(real_config(), raw)
    assert (status, out) == (0, "")
    [(meta, stored)] = quarantined(tmp_path / "quarantine")
    assert stored == raw and meta["reason"] == "virus"
    assert mode(tmp_path / "quarantine") == 0o700
    assert mode(tmp_path / "quarantine" / f"{meta['id']}.eml") == mode(tmp_path / "quarantine" / f"{meta['id']}.json") == 0o600
    [(argv, report)] = sendmail.calls
    assert argv[-1] == "admin@example.net"
    assert b"Subject: VIRUS FOUND" in report and meta["virus_names"][0].encode() in report
    assert f"Quarantine id:  {meta['id']}".encode() in report
    assert b"Envelope from:  <alice@example.org>" in report


def test_8bit_subject_passes_byte_for_byte(real_config, sendmail):
    raw = corpus.raw_8bit_subject()
    status, _ = run_pipe(real_config(), raw)
    [(_, data)] = sendmail.calls
    assert status == 0 and data.endswith(raw)


def test_spoofed_headers_are_replaced(real_config, sendmail):
    status, _ = run_pipe(real_config(), corpus.spoofed_headers())
    [(_, data)] = sendmail.calls
    head = delivered_head(data)
    assert status == 0
    assert [h for h in head if h.lower().startswith((b"x-spam", b"x-virus"))] == head[:5]
    assert b"-100" not in b"\n".join(head) and b"folded over" not in data


def test_malformed_mime_is_delivered(real_config, sendmail):
    status, _ = run_pipe(real_config(), corpus.malformed_mime())
    assert status == 0 and len(sendmail.calls) == 1


@pytest.mark.parametrize("which", ["spamd", "clamd"])
def test_stopped_daemon_defers(real_config, sendmail, daemons, which):
    """Stop the real daemon, expect 75 and a report; start it again and the same message goes through."""
    import daemons as harness

    config = real_config()
    harness.stop(only=which)
    try:
        status, out = run_pipe(config, corpus.clean())
    finally:
        harness.start(only=which)
    scanner = "spamd" if which == "spamd" else "clamav"
    assert (status, out) == (75, f"4.7.1 mailfilter: {scanner} unavailable, message deferred\n")
    [(argv, report)] = sendmail.calls
    assert argv[-1] == "admin@example.net"
    subject = b"ANTIVIRUS FAILED" if which == "clamd" else b"SPAM SCANNER FAILED"
    assert b"Subject: " + subject in report
    status, out = run_pipe(config, corpus.clean())
    assert (status, out) == (0, "") and len(sendmail.calls) == 2


@pytest.mark.parametrize(("behaviour", "said"), [(("--exit", "75"), "exit status 75"), (("--kill",), "killed by signal 9")])
def test_sendmail_failure_defers(real_config, sendmail, behaviour, said):
    status, out = run_pipe(real_config(delivery={"sendmail": sendmail.argv(*behaviour)}), corpus.clean())
    assert status == 75 and out.startswith("4.3.0 mailfilter: reinjection failed:") and said in out


def test_console_script_end_to_end(real_config, sendmail, tmp_path):
    """The installed `mailfilter` command as Postfix runs it: message on stdin, status by exit code."""
    exe = ROOT / ".venv" / "bin" / "mailfilter"
    env = {"PATH": "/usr/bin:/bin", "MAILFILTER_CONFIG": real_config()}
    for raw, expected in [(corpus.clean(), 0), (corpus.eicar_attached(), 0)]:
        proc = subprocess.run(
            [str(exe), "pipe", "-q", "ABC123", *ENVELOPE], input=raw, capture_output=True, env=env, timeout=120, cwd=tmp_path
        )
        assert (proc.returncode, proc.stdout, proc.stderr) == (expected, b"", b"")
    log = (tmp_path / "mailfilter.log").read_text()
    assert "ABC123: from=<alice@example.org>, nrcpt=2, verdict=clean" in log
    assert "verdict=virus" in log and "action=quarantine" in log
    assert os.path.getsize(tmp_path / "mailfilter.log") < 10000  # summary lines, never bodies
    assert b"lunch" not in (tmp_path / "mailfilter.log").read_bytes().lower()


@pytest.mark.parametrize("name", sorted(corpus.hostile()))
def test_hostile_input_gets_a_verdict_not_a_crash(real_config, sendmail, tmp_path, name):
    raw = corpus.hostile()[name]
    status, out = run_pipe(real_config(), raw)
    assert status == 0 and out == ""
    if name == "deep-mime-nesting":  # 300 levels: deeper than anything looks, so never "Clean"
        [(meta, _)] = quarantined(tmp_path / "quarantine")
        assert meta["reason"] == "unscannable" and sendmail.calls == []
        return
    [(argv, data)] = sendmail.calls
    assert argv[-2:] == ["bob@example.net", "carol@example.net"]
    assert data.count(b"X-Virus-Status: Clean") == 1
    assert "Traceback" not in (tmp_path / "mailfilter.log").read_text()
