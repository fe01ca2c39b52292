"""`mailfilter smtp` with [smtp] protocol = "lmtp": LHLO, and one reply per recipient after DATA (RFC 2033), with
the real spamd and clamd and a fake reinjecting smtpd (tests/smtpdoor.py). What Postfix's lmtp client relies on:
each recipient's line is that recipient's fate, nothing is delivered or held twice when a reply is lost."""

from __future__ import annotations

import json
import smtplib
import threading
import time

import pytest
from smtpdoor import Behaviour, FakeSmtpd, RunningDoor, crlf, door_config, free_port

from mailfilter.commands.smtpcheck import smtp_lines

import corpus

pytestmark = pytest.mark.daemons
SENDER = "alice@example.org"
XFORWARD = "XFORWARD NAME=client.example.org ADDR=192.0.2.7 PORT=40000 HELO=client.example.org PROTO=ESMTP IDENT=4F2A1C SOURCE=REMOTE"
# a rejects spam (reject score 5), b takes the defaults (spam delivered, marked), c holds spam (quarantine score 5)
RECIPIENTS = {"strict.test": {"spam_reject_score": 5}, "held.test": {"spam_score": 5}}
THREE = ("a@strict.test", "b@lax.test", "c@held.test")


@pytest.fixture
def lmtp_door(live, tmp_path, sendmail):
    """lmtp_door(smtpd, **smtp options) -> a started LMTP door reinjecting into SMTPD, with RECIPIENTS' policy."""
    doors = []

    def start(smtpd: FakeSmtpd, **smtp) -> RunningDoor:
        config = door_config(live, tmp_path, sendmail, smtpd, {"recipients": RECIPIENTS}, protocol="lmtp", **smtp)
        doors.append(RunningDoor(config, free_port()).start())
        return doors[-1]

    yield start
    for door in doors:
        door.stop()


def transaction(client: smtplib.LMTP, raw: bytes, rcpts=THREE) -> list[tuple[int, str]]:
    """XFORWARD, MAIL, RCPT..., DATA as Postfix's lmtp client sends them: the reply for each recipient, in order."""
    assert client.docmd(XFORWARD)[0] == 250
    assert client.mail(SENDER, ["BODY=8BITMIME"])[0] == 250
    for rcpt in rcpts:
        assert client.rcpt(rcpt)[0] == 250
    first = client.data(crlf(raw))
    replies = [first] + [client.getreply() for _ in rcpts[1:]]
    return [(code, text.decode()) for code, text in replies]


def entries(tmp_path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((tmp_path / "quarantine").glob("*.json"))]


def journal(tmp_path) -> list[dict]:
    return [json.loads(line) for path in sorted((tmp_path / "journal").glob("*")) for line in path.read_text().splitlines()]


def split_logs(tmp_path) -> list:
    folder = tmp_path / "state" / "split"
    return sorted(folder.iterdir()) if folder.exists() else []


def test_lhlo_offers_xforward_and_ehlo_is_refused(lmtp_door):
    with FakeSmtpd() as smtpd:
        door = lmtp_door(smtpd)
        with door.lmtp_client() as client:
            assert client.has_extn("xforward") and client.has_extn("8bitmime")
        with smtplib.SMTP("127.0.0.1", door.port, timeout=30) as client:
            assert client.ehlo()[0] == 500  # LMTP has no EHLO (RFC 2033 4.1)


def test_clean_mail_gets_a_250_per_recipient_and_one_reinjection(lmtp_door, tmp_path):
    with FakeSmtpd() as smtpd:
        door = lmtp_door(smtpd)
        with door.lmtp_client() as client:
            replies = transaction(client, corpus.clean(), rcpts=("b@lax.test", "d@lax.test"))
        assert [code for code, _ in replies] == [250, 250], replies
        assert all("mailfilter: clean, reinjected: 250 2.0.0 Ok: queued as FAKE1" in text for _, text in replies)
        [taken] = smtpd.wait(1)
        assert taken.rcpts == ["RCPT TO:<b@lax.test>", "RCPT TO:<d@lax.test>"]
        assert taken.xforward and taken.data.endswith(crlf(corpus.clean()))
    assert split_logs(tmp_path) == []


def test_each_recipient_is_told_its_own_fate(lmtp_door, tmp_path):
    """Spam to three policies: a is refused (550: Postfix bounces a's copy only), b's copy is reinjected, c's held."""
    with FakeSmtpd() as smtpd:
        door = lmtp_door(smtpd)
        with door.lmtp_client() as client:
            (a, b, c) = transaction(client, corpus.gtube())
        assert a[0] == 550 and a[1].startswith("5.7.1 mailfilter:"), a
        assert b[0] == 250 and "mailfilter: spam, reinjected" in b[1], b
        assert c[0] == 250 and "mailfilter: spam, quarantined as" in c[1], c
        [taken] = smtpd.wait(1)
        assert taken.rcpts == ["RCPT TO:<b@lax.test>"]
        door.stop()
    [held] = entries(tmp_path)
    assert held["recipients"] == ["c@held.test"] and held["id"] in c[1]
    actions = sorted((e["recipients"], e["action"]) for e in journal(tmp_path))
    assert actions == [(["a@strict.test"], "reject"), (["b@lax.test"], "deliver"), (["c@held.test"], "quarantine")]
    assert split_logs(tmp_path) == []  # every reply was handed over: nothing is left for a retry


def test_a_failed_reinjection_defers_only_its_recipients_and_the_retry_delivers_once(lmtp_door, tmp_path):
    with FakeSmtpd(Behaviour(end_of_data="451 4.3.0 try later")) as smtpd:
        door = lmtp_door(smtpd)
        with door.lmtp_client() as client:
            (a, b, c) = transaction(client, corpus.gtube())
        assert (a[0], b[0], c[0]) == (550, 451, 250), (a, b, c)
        assert "refused by the reinjecting smtpd: 451 4.3.0 try later" in b[1]
        door.stop()
    assert [e["recipients"] for e in entries(tmp_path)] == [["c@held.test"]]
    with FakeSmtpd() as smtpd:
        door = lmtp_door(smtpd)
        with door.lmtp_client() as client:
            [(code, text)] = transaction(client, corpus.gtube(), rcpts=("b@lax.test",))  # Postfix retries b alone
        assert code == 250 and "spam, reinjected" in text, text
        assert [t.rcpts for t in smtpd.wait(1)] == [["RCPT TO:<b@lax.test>"]]
    assert len(entries(tmp_path)) == 1


def test_a_scanner_down_defers_every_recipient(lmtp_door, live, tmp_path, sendmail):
    with FakeSmtpd() as smtpd:
        config = door_config(
            live, tmp_path, sendmail, smtpd, {"clamd": {"socket": str(tmp_path / "no-clamd.sock"), "timeout": 2}}, protocol="lmtp"
        )
        with RunningDoor(config, free_port()) as door, door.lmtp_client() as client:
            replies = transaction(client, corpus.clean(), rcpts=("b@lax.test", "d@lax.test"))
        assert [code for code, _ in replies] == [451, 451], replies
        assert smtpd.taken == []
    assert entries(tmp_path) == []


def test_a_lost_reply_is_answered_done_before_on_the_retry(lmtp_door, tmp_path):
    """The connection cut once b's copy is reinjected, before any reply: Postfix retries all three. b is told
    'done before' (not reinjected again), the others are carried out now, and nothing is held twice."""
    behaviour = Behaviour(hold_answer=threading.Event())
    with FakeSmtpd(behaviour) as smtpd:
        door = lmtp_door(smtpd)
        client = door.lmtp_client()
        assert client.docmd(XFORWARD)[0] == 250 and client.mail(SENDER)[0] == 250
        for rcpt in THREE:
            assert client.rcpt(rcpt)[0] == 250
        client.putcmd("data")
        assert client.getreply()[0] == 354
        client.send(crlf(corpus.gtube()) + b".\r\n")
        assert behaviour.dot_seen.wait(30)
        client.close()  # b's final dot is with the reinjecting smtpd, its answer not yet given
        behaviour.hold_answer.set()
        smtpd.wait(1)
        deadline = time.monotonic() + 20
        while not any("b@lax.test\tdelivered" in p.read_text() for p in split_logs(tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.02)
        with door.lmtp_client() as client:
            (a, b, c) = transaction(client, corpus.gtube())
        assert a[0] == 550, a
        assert b[0] == 250 and "done before, not again (delivered)" in b[1], b
        assert c[0] == 250 and "quarantined" in c[1], c  # now, or "done before" if its group came first
        assert len(smtpd.taken) == 1
    assert [e["recipients"] for e in entries(tmp_path)] == [["c@held.test"]]


def test_check_speaks_lmtp_to_an_lmtp_door(lmtp_door, live, tmp_path, sendmail):
    with FakeSmtpd() as smtpd:
        door = lmtp_door(smtpd)
        config = door_config(live, tmp_path, sendmail, smtpd, protocol="lmtp", listen=f"127.0.0.1:{door.port}")
        lines = [line.render() for line in smtp_lines(config)]
    assert any("OK" in line and f"answers on 127.0.0.1:{door.port}" in line for line in lines), lines
