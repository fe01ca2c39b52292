"""The per-recipient policy through the doors with the real spamd and clamd: banned attachments (verdict,
quarantine reason, `scan --json`), the subject tag on what is delivered, and the sender lists."""

from __future__ import annotations

import email
import email.policy
import json
from email.message import EmailMessage

import Milter
import pytest
from click.testing import CliRunner
from test_attachments import pe

import corpus
from conftest import quarantined, run_pipe

pytestmark = pytest.mark.daemons
ARGS = ("-q", "4F2A1C", "-f", "alice@example.org", "--", "bob@example.net")


def with_attachment(name: str, data: bytes, subject: str = "Your invoice") -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "alice@example.org", "bob@example.net", subject
    msg["Message-ID"] = "<banned@example.org>"
    msg.set_content("Please see the attachment.\n")
    msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return msg.as_bytes(policy=email.policy.SMTP).replace(b"\r\n", b"\n")


def test_a_banned_attachment_is_held_as_banned_not_as_a_virus(real_config, sendmail, tmp_path):
    raw = with_attachment("invoice.pdf.exe", b"not even a program\n")
    status, out = run_pipe(real_config(), raw, *ARGS)
    assert (status, out) == (0, "") and sendmail.calls == []
    [(meta, stored)] = quarantined(tmp_path / "quarantine")
    assert stored == raw and meta["reason"] == "banned" and meta["virus_names"] == []
    assert meta["banned"] == [{"part": "invoice.pdf.exe", "type": "text/plain", "reason": "hidden extension: invoice.pdf.exe"}]
    assert ["X-Virus-Status", "Clean"] in meta["headers"]


def test_a_banned_attachment_is_refused_where_the_recipients_policy_says_so(real_config, sendmail):
    config = real_config(recipients={"example.net": {"banned": "reject"}})
    status, out = run_pipe(config, with_attachment("report.pdf", pe()), *ARGS)  # an executable by its content
    assert status == 69 and out.startswith("5.7.1 message rejected: banned attachment: report.pdf: banned type")
    assert sendmail.calls == []


def test_scan_json_lists_the_banned_parts(real_config, tmp_path):
    from mailfilter.cli import cli

    path = tmp_path / "mail.eml"
    path.write_bytes(with_attachment("invoice.pdf.exe", b"x\n"))
    result = CliRunner().invoke(cli, ["--config", real_config(), "scan", "--json", str(path)])
    record = json.loads(result.output)
    record = record[0] if isinstance(record, list) else record
    assert result.exit_code == 1 and record["verdict"] == "banned"
    assert record["banned"] == [{"part": "invoice.pdf.exe", "type": "text/plain", "reason": "hidden extension: invoice.pdf.exe"}]


def test_delivered_spam_gets_the_subject_tag_once_and_keeps_the_old_subject(real_config, sendmail):
    config = real_config(policy={"subject_tag": "[SPAM] "})
    status, _ = run_pipe(config, corpus.gtube(), *ARGS)
    [(_, data)] = sendmail.calls
    delivered = email.message_from_bytes(data, policy=email.policy.default)
    assert status == 0 and delivered["Subject"] == "[SPAM] Cheap watches, act now"
    assert delivered["X-Spam-Prev-Subject"] == "Cheap watches, act now" and len(delivered.get_all("Subject")) == 1
    status, _ = run_pipe(config, data, *ARGS)  # filtered again (a forward): not tagged twice
    again = email.message_from_bytes(sendmail.calls[1][1], policy=email.policy.default)
    assert again["Subject"] == "[SPAM] Cheap watches, act now"
    status, _ = run_pipe(config, corpus.clean(), *ARGS)
    assert not email.message_from_bytes(sendmail.calls[2][1])["Subject"].startswith("[SPAM]")


def test_a_blocked_sender_is_refused_and_an_allowed_one_is_never_spam(real_config, sendmail, tmp_path):
    lists = tmp_path / "allow.txt"
    lists.write_text("# partners\nexample.org   # alice's domain\n")
    blocked = real_config(senders={"block": ["alice@example.org"]}, policy={"spam_reject_score": 50})
    status, out = run_pipe(blocked, corpus.clean(), *ARGS)
    assert status == 69 and out == "5.7.1 message rejected as spam (sender blocked)\n"
    allowed = real_config(senders={"allow_file": str(lists)}, quarantine={"spam_score": 5}, policy={"subject_tag": "[SPAM] "})
    status, out = run_pipe(allowed, corpus.gtube(), *ARGS)
    [(_, data)] = sendmail.calls
    assert (status, out) == (0, "") and not email.message_from_bytes(data)["Subject"].startswith("[SPAM]")
    virus = run_pipe(allowed, corpus.eicar_attached(), *ARGS)
    assert virus == (0, "") and [m["reason"] for m, _ in quarantined(tmp_path / "quarantine")] == ["virus"]
    events = [json.loads(line) for path in (tmp_path / "journal").glob("*") for line in path.read_text().splitlines()]
    assert [e["sender_rule"] for e in events] == ["block alice@example.org", "allow example.org", ""]


def test_the_milter_tags_the_subject_with_chgheader(run_milter, daemons):
    scanners = {"spamd": {"host": daemons["spamd_host"], "port": daemons["spamd_port"]}, "clamd": {"socket": daemons["clamd_socket"]}}
    status, ctx, _ = run_milter(corpus.gtube(), policy={"subject_tag": "[SPAM] "}, **scanners)
    assert status == Milter.CONTINUE
    assert "[SPAM] Cheap watches, act now" in ctx._msg.get_all("Subject")  # TestCtx adds where libmilter replaces
    assert ctx._msg["X-Spam-Prev-Subject"] == "Cheap watches, act now"


def test_a_banned_attachment_is_released_only_with_force(real_config, sendmail, tmp_path):
    from mailfilter.cli import cli

    config = real_config()
    assert run_pipe(config, with_attachment("invoice.pdf.exe", b"x\n"), *ARGS) == (0, "")
    [(meta, _)] = quarantined(tmp_path / "quarantine")
    refused = CliRunner().invoke(cli, ["--config", config, "quarantine", "release", meta["id"]])
    assert refused.exit_code == 1 and "banned attachment" in refused.output and sendmail.calls == []
    released = CliRunner().invoke(cli, ["--config", config, "quarantine", "release", "--force", meta["id"]])
    assert released.exit_code == 0 and [argv[-1] for argv, _ in sendmail.calls] == ["bob@example.net"]


def test_the_milter_removes_the_held_recipients_and_discards_when_none_is_left(run_milter, daemons, tmp_path):
    scanners = {"spamd": {"host": daemons["spamd_host"], "port": daemons["spamd_port"]}, "clamd": {"socket": daemons["clamd_socket"]}}
    policy = {"recipients": {"strict.test": {"spam_score": 5}}}
    status, ctx, _ = run_milter(corpus.gtube(), rcpts=("a@strict.test", "b@lax.test"), **policy, **scanners)
    assert status == Milter.CONTINUE and ctx._delrcpt == ["<a@strict.test>"]
    assert ctx._msg["X-Spam-Flag"] == "YES"  # the delivered copy is marked
    assert [meta["recipients"] for meta, _ in quarantined(tmp_path / "quarantine")] == [["a@strict.test"]]
    status, ctx, _ = run_milter(corpus.gtube(), rcpts=("a@strict.test", "c@strict.test"), **policy, **scanners)
    assert status == Milter.DISCARD  # every recipient's copy held: one entry, nothing delivered
    held = sorted(meta["recipients"] for meta, _ in quarantined(tmp_path / "quarantine"))
    assert held == [["a@strict.test"], ["a@strict.test", "c@strict.test"]]
