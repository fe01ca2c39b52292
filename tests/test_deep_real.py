"""A scan that could not see everything is never clean: deep MIME nesting, clamd's limits, big spam.

Against the real spamd and clamd (clamd with AlertExceedsMax, as scripts/daemons.py runs it), through
the pipe door and `mailfilter scan --json`.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mailfilter import config as configmod
from mailfilter import journal
from mailfilter.cli import cli

import corpus
import hostile
from conftest import quarantined, run_bytes, run_pipe

pytestmark = pytest.mark.daemons


def head(data: bytes) -> dict[bytes, bytes]:
    return dict(line.split(b": ", 1) for line in data.split(b"\n\n", 1)[0].splitlines() if b": " in line)


@pytest.mark.parametrize("depth", [5, 17, 18, 30, 60])
@pytest.mark.parametrize("shape", ["multipart", "rfc822-body", "alternating"])
def test_eicar_deep_in_mime_is_a_virus(real_config, sendmail, tmp_path, depth, shape):
    make = {"multipart": hostile._multipart_eicar, "rfc822-body": hostile._rfc822_body_eicar, "alternating": hostile._alternating_eicar}
    raw = make[shape](depth)
    status, out = run_pipe(real_config(), raw)
    assert (status, out) == (0, "")
    [(meta, stored)] = quarantined(tmp_path / "quarantine")
    assert stored == raw and meta["reason"] == "virus" and meta["virus_names"] == ["Eicar-Test-Signature.UNOFFICIAL"]
    [(argv, _)] = sendmail.calls  # the admin's VIRUS FOUND, nothing delivered
    assert argv[-1] == "admin@example.net"


def test_eicar_deeper_than_the_walk_is_unscannable_and_held(real_config, sendmail, tmp_path):
    status, out = run_pipe(real_config(), hostile._multipart_eicar(100))
    assert (status, out) == (0, "")
    [(meta, _)] = quarantined(tmp_path / "quarantine")
    assert meta["reason"] == "unscannable" and meta["verdict"] == "unscannable"
    assert meta["unscannable"] == ["MIME parts nested deeper than 64 levels"]
    assert sendmail.calls == []
    [event] = journal.read(str(tmp_path / "journal"), *_today())
    assert (event["verdict"], event["action"]) == ("unscannable", "quarantine")


def _today():
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    return now - timedelta(days=1), now + timedelta(days=1)


def test_a_clamd_limit_in_a_part_alone_is_unscannable(real_config, tmp_path):
    raw = hostile._nested_zip_eicar(30)  # 30 zips: past MaxRecursion even scanned alone
    status, _ = run_pipe(real_config(), raw)
    [(meta, _)] = quarantined(tmp_path / "quarantine")
    assert status == 0 and meta["reason"] == "unscannable" and meta["virus_names"] == []
    assert meta["unscannable"] == ["clamd: Heuristics.Limits.Exceeded.MaxRecursion in part 2 (application/octet-stream)"]


TOO_DEEP = "MIME parts nested deeper than 64 levels"


@pytest.mark.parametrize(
    ("policy", "status", "out"),
    [
        ("quarantine", 0, ""),
        ("reject", 69, f"5.7.1 message rejected: could not be scanned completely: {TOO_DEEP}\n"),
        ("tempfail", 75, f"4.7.1 mailfilter: message could not be scanned completely, deferred: {TOO_DEEP}\n"),
        ("accept", 0, ""),
    ],
)
def test_each_unscannable_policy_through_the_pipe_door(real_config, sendmail, tmp_path, policy, status, out):
    raw = hostile._nested_multipart(100, True)
    assert run_pipe(real_config(policy={"unscannable": policy}), raw) == (status, out)
    held = quarantined(tmp_path / "quarantine")
    assert [meta["reason"] for meta, _ in held] == (["unscannable"] if policy == "quarantine" else [])
    if policy == "accept":
        [(argv, data)] = sendmail.calls
        assert argv[-2:] == ["bob@example.net", "carol@example.net"]
        assert head(data)[b"X-Virus-Status"] == f"Unscanned ({TOO_DEEP})".encode()
        log = (tmp_path / "mailfilter.log").read_text()
        assert "delivered with an incomplete virus scan ([policy] unscannable = accept)" in log
    else:
        assert sendmail.calls == []


def test_scan_json_says_unscannable(real_config, tmp_path):
    path = tmp_path / "deep.eml"
    path.write_bytes(hostile._nested_multipart(100, True))
    result = CliRunner().invoke(cli, ["--config", real_config(), "scan", "--json", str(path)])
    record = json.loads(result.output)
    assert result.exit_code == 1
    assert (record["verdict"], record["action"]) == ("unscannable", "quarantine")
    assert record["virus"]["unscannable"] == [TOO_DEEP] and record["virus"]["names"] == []
    assert ["X-Virus-Status", f"Unscanned ({TOO_DEEP})"] in record["headers"]


def test_gtube_padded_to_740_kb_is_spam_scored_on_its_first_bytes(real_config, sendmail):
    raw = hostile._padded_spam(740_000, "text")
    assert len(raw) == 740_000
    status, out = run_pipe(real_config(spamd={"timeout": 120}), raw)
    assert (status, out) == (0, "")
    [(_, data)] = sendmail.calls
    fields = head(data)
    assert fields[b"X-Spam-Flag"] == b"YES"
    scored = len(spamd_copy(raw))
    assert fields[b"X-Spam-Status"].endswith(b", truncated to %d of 740000 bytes" % scored) and b"GTUBE" in fields[b"X-Spam-Status"]
    assert 500_000 < scored <= 512_000


def spamd_copy(raw: bytes) -> bytes:
    from mailfilter.scanners import spamd

    return spamd.truncate(raw[:512_000])


def test_ordinary_mail_is_not_walked(live, monkeypatch):
    """The cheap path: a clean message of ordinary shape is scanned once, whole."""
    from mailfilter import deepscan

    def walked(*args):
        raise AssertionError("walked")

    monkeypatch.setattr(deepscan.mimewalk, "walk", walked)
    config = live(attachments={"action": "allow"})  # the attachment check walks every message: not under test here
    outcome = run_bytes(corpus.with_attachment(b"%PDF-1.4 report", "report.pdf"), config)
    assert outcome.decision.verdict.value == "clean"


@pytest.fixture
def live(daemons):
    def make(**sections):
        base = {"spamd": {"host": daemons["spamd_host"], "port": daemons["spamd_port"]}, "clamd": {"socket": daemons["clamd_socket"]}}
        for name, table in sections.items():
            base.setdefault(name, {}).update(table)
        return configmod.from_dict(base)

    return make
