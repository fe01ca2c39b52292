"""`mailfilter report`: the daily summary of the journal, as text (golden file) and as a mail with a PNG chart.

Regenerate the golden file with MAILFILTER_REGOLD=1.
"""

import email
import email.policy
import io
import os
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from mailfilter import config as configmod
from mailfilter import journal, policy
from mailfilter.cli import Context
from mailfilter.commands import daily
from mailfilter.model import AttachmentReport, Banned, Cause, Envelope, ScanFailure, ScanResults, SenderHits, SpamReport, VirusReport

GOLDEN = Path(__file__).parent / "golden"
DAY = date(2026, 11, 26)
HOST = "mx1.example.net"
HOSTILE = "evil\r\nBcc: x@y"
HAM = SpamReport(0.5, 5.0)
SPAM = SpamReport(12.0, 5.0)
NO_VIRUS = VirusReport()
EICAR = VirusReport(("Eicar-Test-Signature",), 1)
TROJAN = VirusReport(("Win.Trojan.Agent-1", "Eicar-Test-Signature"), 1)
CLAMD_DOWN = ScanFailure("clamav", Cause.UNAVAILABLE, "connection refused")
SPAMD_SLOW = ScanFailure("spamd", Cause.TIMEOUT, "no answer in 60 s")
# spamd's failures are accepted (delivered unscanned), ClamAV's defer; spam of 10 or more is quarantined.
CONFIG = configmod.from_dict({"spamd": {"on_error": "accept"}, "quarantine": {"spam_score": 10.0}})


def event(
    hour, minute=0, sender="alice@example.org", spam=HAM, virus=NO_VIRUS, door="pipe", action=None, day=DAY, attachments=None, hits=None
):
    """One journal event, decided by the real policy; a quarantine id when the message was quarantined."""
    results = ScanResults(spam, virus, 0.2, 0.05, attachments=attachments)
    decision = policy.decide(results, CONFIG, senders=hits or SenderHits())
    action = action or decision.action.value
    quarantine_id = f"q{hour:02d}{minute:02d}" if action == "quarantine" else None
    when = datetime.combine(day, time(hour, minute), UTC)
    envelope = Envelope(sender, ("bob@example.net",), f"Q{hour:02d}{minute:02d}")
    return journal.event(door, envelope, results, decision, action, 2000 + minute, 0.3, when, quarantine_id)


def day_of_mail() -> list[dict]:
    """A small, realistic day: clean mail through the day, spam (one from a hostile sender), viruses, an outage."""
    events = [event(hour, 5 + i) for i, hour in enumerate((8, 9, 9, 10, 11, 14, 14, 14, 16, 23))]
    events += [event(9, m, "spammer@example.com", SPAM) for m in (10, 20, 30)]
    events += [event(10, 40, "bulk@example.biz", SpamReport(6.0, 5.0)), event(14, 50, HOSTILE, SpamReport(7.5, 5.0))]
    events += [event(3, 15, "x@example.ru", virus=EICAR), event(3, 16, "x@example.ru", virus=EICAR)]
    events += [event(3, 17, "", virus=TROJAN, door="milter", action="reject")]
    events += [event(5, 0, "carol@example.org", virus=CLAMD_DOWN), event(5, 1, "carol@example.org", virus=CLAMD_DOWN)]
    events += [event(12, 30, "dave@example.org", spam=SPAMD_SLOW)]
    exe = AttachmentReport(banned=(Banned("invoice.pdf.exe", "application/x-dosexec", "hidden extension: invoice.pdf.exe"),))
    events += [
        event(15, 0, "eve@example.com", attachments=exe),
        event(15, 1, "x@partner.example", SPAM, hits=SenderHits(allow="partner.example")),
    ]
    return sorted(events, key=lambda e: e["time"])


def summary(events=None, usage=(7, 123456)):
    return daily.summarize(day_of_mail() if events is None else events, DAY, HOST, usage)


def test_text_matches_golden():
    text = daily.text(summary())
    path = GOLDEN / "daily-report.txt"
    if os.environ.get("MAILFILTER_REGOLD"):
        path.write_text(text)
    assert text == path.read_text()


def test_counts_tops_and_bars():
    lines = daily.text(summary()).splitlines()
    for expected in [
        "Messages filtered: 23 (a deferred message counts once per attempt)",
        "  clean            11",  # one of them spam from a sender on [senders] allow
        "  spam              5",
        "  virus             3",
        "  error             3",  # 2 deferred (ClamAV down) + 1 delivered without spamd's verdict
        "  banned            1",
        "  deliver          14",
        "  quarantine        6",  # 3 spam of 12.0 + 2 EICAR + invoice.pdf.exe
        "  hold              0",
        "  reject            1",
        "  tempfail          2",
        "        3  Eicar-Test-Signature",
        "        1  Win.Trojan.Agent-1",
        "        3  <spammer@example.com>",
        "        2  clamav:unavailable",
        "        1  spamd:timeout",
        "        1  spamd",
        "        1  invoice.pdf.exe: hidden extension: invoice.pdf.exe",
        "        1  allow partner.example",
        "  added:     6 message(s), 12.1 kB",
        "  held now:  7 message(s), 123.5 kB",
        "  03      3 VVV",
        "  09      5 ##sss",
        "  14      4 ###s",
        "  05      2 !!",
        "  00      0",
    ]:
        assert expected in lines
    legend = "# clean  s spam  V virus  u unscannable  b banned  ! error"
    chart = lines[lines.index(f"Messages per hour (UTC), one mark = 1 message(s): {legend}") + 1 :]
    assert [int(line.split()[0]) for line in chart] == list(range(24))


def test_hostile_sender_is_escaped():
    text = daily.text(summary())
    assert "        1  <evil\\x0d\\x0aBcc: x@y>" in text.splitlines()
    assert not any(line.startswith("Bcc") for line in text.splitlines())


def test_top_lists_are_cut_and_counted():
    events = [event(1, m, f"s{m:02d}@example.com", SPAM) for m in range(13)] + [event(2, 0, "s05@example.com", SPAM)]
    lines = daily.text(summary(events)).splitlines()
    top = lines[lines.index("Top spam senders") + 1 :][: daily.TOP + 1]
    assert top[0] == "        2  <s05@example.com>" and top[1] == "        1  <s00@example.com>"
    assert top[-1] == "  (3 more with 3 in all)"


def test_busy_hours_are_scaled_and_every_verdict_shows():
    events = [{"time": f"{DAY}T07:{i % 60:02d}:00+00:00", "verdict": "clean", "action": "deliver"} for i in range(499)]
    events.append({"time": f"{DAY}T07:30:00+00:00", "verdict": "virus", "action": "quarantine"})
    lines = daily.text(summary(events)).splitlines()
    assert "Messages per hour (UTC), one mark = 10 message(s): # clean  s spam  V virus  u unscannable  b banned  ! error" in lines
    assert "  07    500 " + "#" * 50 + "V" in lines


def test_a_day_without_mail_says_so():
    text = daily.text(summary([], usage=(0, 0)))
    assert "No messages were filtered on 2026-11-26." in text
    assert "  held now:  0 message(s), 0 bytes" in text
    assert "Messages per hour" not in text


def test_mail_has_our_header_a_text_part_and_an_inline_png():
    data = daily.mail(summary(), configmod.ReportConfig(admin="root@example.net", sender="mf@example.net"), datetime.now(UTC))
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert msg["From"] == "mailfilter <mf@example.net>" and msg["To"] == "root@example.net"
    assert msg["Subject"] == f"mailfilter daily report for 2026-11-26 on {HOST}"
    assert msg["Auto-Submitted"] == "auto-generated" and msg["Bcc"] is None
    assert msg.get_content_type() == "multipart/mixed"
    text_part, png_part = msg.iter_parts()
    assert text_part.get_content_type() == "text/plain"
    assert "<evil\\x0d\\x0aBcc: x@y>" in text_part.get_content()
    assert "Messages per hour: see the chart." in text_part.get_content()
    assert png_part.get_content_type() == "image/png" and png_part.get_content_disposition() == "inline"
    assert png_part.get_filename() == "mailfilter-2026-11-26.png"
    check_chart(png_part.get_content())


def check_chart(png: bytes) -> None:
    """A real PNG, 800x360, where every verdict's colour is drawn (bars and legend)."""
    import matplotlib.image

    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    pixels = matplotlib.image.imread(io.BytesIO(png), format="png")
    assert pixels.shape[:2] == (360, 800)
    rgb = {tuple(round(c * 255) for c in p[:3]) for p in pixels.reshape(-1, pixels.shape[2])}
    for colour in daily.COLOURS.values():
        assert tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5)) in rgb


def test_mail_of_a_day_without_mail_is_text_only():
    data = daily.mail(summary([]), configmod.ReportConfig(), datetime.now(UTC))
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert msg.get_content_type() == "text/plain" and "No messages were filtered" in msg.get_content()


# The command, through click.


@pytest.fixture
def report_cli():
    """invoke(config path, *args): the report command with the CLI's context object, as cli.py registers it."""

    @click.group()
    @click.option("--config", "config_path")
    @click.pass_context
    def cli(ctx, config_path):
        ctx.obj = Context(config_path)

    cli.add_command(daily.report)

    def invoke(config_path, *args):
        return CliRunner().invoke(cli, ["--config", config_path, "report", *args])

    return invoke


def write_journal(folder: Path, events) -> None:
    for entry in events:
        journal.record(str(folder), entry)


def test_command_prints_the_day_and_only_that_day(tmp_path, make_config, report_cli):
    before, after = event(23, 59, day=DAY - timedelta(days=1)), event(0, 0, day=DAY + timedelta(days=1))
    write_journal(tmp_path / "journal", [before, *day_of_mail(), after])
    result = report_cli(make_config(), "--date", "2026-11-26")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"mailfilter daily report for 2026-11-26 on {os.uname().nodename} (UTC)\n")
    assert "Messages filtered: 23 " in result.output
    assert "  held now:  0 message(s), 0 bytes" in result.output  # the quarantine folder does not exist


def test_command_reports_yesterday_by_default(tmp_path, make_config, report_cli):
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    write_journal(tmp_path / "journal", [event(12, 0, day=yesterday)])
    result = report_cli(make_config())
    assert result.exit_code == 0 and f"report for {yesterday} on" in result.output
    assert "Messages filtered: 1 " in result.output


def test_command_on_a_day_without_journal(make_config, report_cli):
    result = report_cli(make_config(), "--date", "2026-11-26")
    assert result.exit_code == 0 and "No messages were filtered on 2026-11-26." in result.output


def test_command_rejects_a_bad_date(make_config, report_cli):
    result = report_cli(make_config(), "--date", "26/11/2026")
    assert result.exit_code == 2 and "Invalid value for '--date'" in result.output


def test_send_hands_sendmail_the_mail(tmp_path, make_config, sendmail, report_cli):
    write_journal(tmp_path / "journal", day_of_mail())
    result = report_cli(make_config(), "--date", "2026-11-26", "--send")
    assert result.exit_code == 0 and result.output == ""
    [(argv, data)] = sendmail.calls
    assert argv == ["-G", "-i", "-f", "mailfilter@example.net", "--", "admin@example.net"]
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert msg["To"] == "admin@example.net" and msg["Subject"].startswith("mailfilter daily report for 2026-11-26 on ")
    assert [part.get_content_type() for part in msg.iter_parts()] == ["text/plain", "image/png"]
    check_chart(msg.get_payload(1).get_content())


def test_send_failure_is_exit_1_with_the_reason(tmp_path, make_config, sendmail, report_cli):
    write_journal(tmp_path / "journal", day_of_mail())
    config = make_config(delivery={"sendmail": sendmail.argv("--exit", "75")})
    result = report_cli(config, "--date", "2026-11-26", "--send")
    assert result.exit_code == 1
    assert "Error: report not sent: " in result.output and "exit status 75: fake_sendmail: failing with 75 as told" in result.output


def test_send_without_admin_is_exit_1(make_config, sendmail, report_cli):
    result = report_cli(make_config(report={"admin": ""}), "--date", "2026-11-26", "--send")
    assert result.exit_code == 1 and '[report] admin is "": nobody to send the report to' in result.output
    assert sendmail.calls == []


def test_no_journal_is_exit_1(make_config, report_cli):
    result = report_cli(make_config(report={"journal_dir": ""}), "--date", "2026-11-26")
    assert result.exit_code == 1 and "no journal is kept" in result.output
