"""`mailfilter smtp` with the real spamd and clamd and a fake reinjecting smtpd (tests/smtpdoor.py): the replies
Postfix relies on, what reaches the reinjecting smtpd, and what never does."""

from __future__ import annotations

import json
import smtplib
import socket
import threading
import time
from email import message_from_bytes

import pytest
from smtpdoor import Behaviour, FakeSmtpd, RunningDoor, crlf, door_config, free_port

import corpus

pytestmark = pytest.mark.daemons
SENDER, RECIPIENT = "alice@example.org", "bob@example.net"
XFORWARD = "XFORWARD NAME=client.example.org ADDR=192.0.2.7 PORT=40000 HELO=client.example.org PROTO=ESMTP IDENT=4F2A1C SOURCE=REMOTE"


@pytest.fixture
def door_for(live, tmp_path, sendmail):
    """door_for(smtpd, **smtp options) -> a started RunningDoor that reinjects into SMTPD; stopped at the end."""
    doors = []

    def start(smtpd: FakeSmtpd, sections=None, **smtp) -> RunningDoor:
        doors.append(RunningDoor(door_config(live, tmp_path, sendmail, smtpd, sections, **smtp), free_port()).start())
        return doors[-1]

    yield start
    for door in doors:
        door.stop()


def transaction(client: smtplib.SMTP, raw: bytes, sender: str = SENDER, rcpts=(RECIPIENT,), options=("BODY=8BITMIME",)) -> tuple[int, str]:
    """XFORWARD, MAIL, RCPT, DATA as Postfix's smtp client sends them; the reply to end-of-data."""
    assert client.docmd(XFORWARD)[0] == 250
    assert client.mail(sender, list(options))[0] == 250
    for rcpt in rcpts:
        assert client.rcpt(rcpt)[0] == 250
    code, text = client.data(crlf(raw))
    return code, text.decode()


def journal(tmp_path) -> list[dict]:
    return [json.loads(line) for path in sorted((tmp_path / "journal").glob("*")) for line in path.read_text().splitlines()]


def test_clean_mail_is_reinjected_with_its_envelope_and_xforward_then_250(door_for, tmp_path):
    with FakeSmtpd() as smtpd:
        door = door_for(smtpd)
        with door.client() as client:
            assert b"XFORWARD" in client.ehlo_resp and client.has_extn("8bitmime") and client.has_extn("smtputf8")
            code, text = transaction(client, corpus.clean(), rcpts=(RECIPIENT, "-carol@example.net"))
        assert code == 250 and text.startswith("2.0.0 mailfilter: clean, reinjected: 250 2.0.0 Ok: queued as FAKE1"), text
        [taken] = smtpd.wait(1)
        assert taken.mail == f"MAIL FROM:<{SENDER}> BODY=8BITMIME"
        assert taken.rcpts == [f"RCPT TO:<{RECIPIENT}>", "RCPT TO:<-carol@example.net>"]
        attributes = sorted(" ".join(line.split(" ", 1)[1] for line in taken.xforward).split())
        assert attributes == sorted(XFORWARD.split()[1:])  # every attribute, as Postfix sent it, in the server's order
        message = message_from_bytes(taken.data)
        assert message.get_all("X-Virus-Status") == ["Clean"] and message["X-Spam-Flag"] == "NO"
        assert taken.data.endswith(crlf(corpus.clean()))  # our fields on top, the message unchanged below
        door.stop()
        [entry] = journal(tmp_path)
        assert (entry["door"], entry["action"], entry["queue_id"]) == ("smtp", "deliver", "4F2A1C")


def test_null_sender_8bit_and_smtputf8_pass_through_unchanged(door_for):
    raw = "From: Jörg <jörg@exämple.org>\nTo: bob@example.net\nSubject: Grüße\n\nÄpfel. Birnen.\n.leading dot\n".encode()
    with FakeSmtpd() as smtpd:
        door = door_for(smtpd)
        with door.client() as client:
            code, text = transaction(client, raw, sender="", rcpts=("bøb@exämple.net",), options=("BODY=8BITMIME", "SMTPUTF8"))
        assert code == 250, text
        [taken] = smtpd.wait(1)
        assert taken.mail == "MAIL FROM:<> BODY=8BITMIME SMTPUTF8"
        assert taken.rcpts == ["RCPT TO:<bøb@exämple.net>"]
        assert taken.data.endswith(crlf(raw))


def test_spam_is_marked_and_reinjected(door_for):
    with FakeSmtpd() as smtpd:
        door = door_for(smtpd)
        with door.client() as client:
            code, text = transaction(client, corpus.gtube())
        assert code == 250 and "mailfilter: spam, reinjected" in text
        assert message_from_bytes(smtpd.wait(1)[0].data)["X-Spam-Flag"] == "YES"


def test_virus_is_quarantined_and_reported_never_reinjected(door_for, tmp_path, sendmail):
    with FakeSmtpd() as smtpd:
        door = door_for(smtpd)
        with door.client() as client:
            code, text = transaction(client, corpus.eicar_attached())
        assert code == 250 and "mailfilter: virus, quarantined as " in text, text
        door.stop()  # the report is sent after the reply
        assert smtpd.taken == []
        [meta] = [json.loads(p.read_text()) for p in (tmp_path / "quarantine").glob("*.json")]
        assert meta["reason"] == "virus" and meta["queue_id"] == "4F2A1C" and meta["id"] in text
        [(argv, report)] = sendmail.calls
        assert b"Subject: VIRUS FOUND" in report and argv[-1] == "admin@example.net"


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [(Behaviour(end_of_data="554 5.7.1 no thanks"), "refused by the reinjecting smtpd: 554 5.7.1 no thanks"),
     (Behaviour(end_of_data="451 4.3.0 try later"), "refused by the reinjecting smtpd: 451 4.3.0 try later")],
    ids=["5xx", "4xx"],
)
def test_a_refused_reinjection_is_a_451(door_for, behaviour, reason):
    with FakeSmtpd(behaviour) as smtpd:
        door = door_for(smtpd)
        with door.client() as client:
            code, text = transaction(client, corpus.clean())
        assert code == 451 and text.startswith("4.3.0 mailfilter: reinjection failed: ") and reason in text, text


def test_the_reinjecting_smtpd_down_is_a_451(door_for):
    smtpd = FakeSmtpd()
    smtpd.close()  # nothing listens on its port now
    door = door_for(smtpd)
    with door.client() as client:
        code, text = transaction(client, corpus.clean())
        assert code == 451 and "cannot reach the reinjecting smtpd" in text, text
        with FakeSmtpd() as again:  # another port: a door whose reinjection returns is tested by the Postfix tests
            assert again.taken == []


def test_a_client_that_hangs_up_gets_nothing_reinjected(door_for):
    """The gate before the final dot: Postfix gave up (no 250 for it), so the message must not go out."""
    behaviour = Behaviour(hold_dot=3.0)
    with FakeSmtpd(behaviour) as smtpd:
        door = door_for(smtpd)
        client = door.client()
        assert client.docmd(XFORWARD)[0] == 250 and client.mail(SENDER)[0] == 250 and client.rcpt(RECIPIENT)[0] == 250
        client.putcmd("data")
        assert client.getreply()[0] == 354
        client.send(crlf(corpus.clean()) + b".\r\n")
        client.close()  # while the door waits for the reinjecting smtpd's 354
        deadline = time.monotonic() + 20
        while not behaviour.lost and time.monotonic() < deadline:
            time.sleep(0.05)
        assert behaviour.lost == [f"MAIL FROM:<{SENDER}>"] and smtpd.taken == []


def hang_up_after_the_dot(door, raw: bytes, behaviour: Behaviour) -> None:
    """Send RAW, and hang up once the reinjecting smtpd has our final dot but not yet answered it: the moment where
    the message is reinjected and Postfix never hears so (the door killed or the connection cut right there)."""
    client = door.client()
    assert client.docmd(XFORWARD)[0] == 250 and client.mail(SENDER)[0] == 250 and client.rcpt(RECIPIENT)[0] == 250
    client.putcmd("data")
    assert client.getreply()[0] == 354
    client.send(crlf(raw) + b".\r\n")
    assert behaviour.dot_seen.wait(30)
    client.close()


def sealed_lines(tmp_path) -> list[str]:
    return (tmp_path / "state" / "smtp-sealed.log").read_text().splitlines()


@pytest.mark.parametrize("restart", [False, True], ids=["same-door", "door-restarted"])
def test_a_retry_of_a_reinjected_message_whose_answer_was_lost_is_not_reinjected_again(door_for, tmp_path, restart):
    """RFC 1047's window: Postfix retries what the reinjecting smtpd already took. The door answers 250 from its
    ledger, and the message goes out once, also when the door was restarted (killed) in between."""
    behaviour = Behaviour(hold_answer=threading.Event())
    with FakeSmtpd(behaviour) as smtpd:
        door = door_for(smtpd)
        hang_up_after_the_dot(door, corpus.clean(), behaviour)
        behaviour.hold_answer.set()
        smtpd.wait(1)
        deadline = time.monotonic() + 20
        while not any(line.startswith("S ") for line in sealed_lines(tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.02)
        if restart:
            door.stop()
            door = door_for(smtpd)
        with door.client() as client:
            code, text = transaction(client, corpus.clean())  # Postfix's retry: the same bytes, envelope and queue id
            assert code == 250 and "already done, not again (250 2.0.0 mailfilter: clean, reinjected: 250 2.0.0 Ok" in text, text
            code, text = transaction(client, corpus.clean(), rcpts=("carol@example.net",))  # another message: delivered
            assert code == 250 and "mailfilter: clean, reinjected" in text, text
        assert len(smtpd.wait(2)) == 2 and smtpd.taken[1].rcpts == ["RCPT TO:<carol@example.net>"]
        door.stop()
        [sealed] = [line.split()[2] for line in sealed_lines(tmp_path) if line.startswith("S ")][:1]
        assert f"A {sealed}" in sealed_lines(tmp_path)  # answered at last: a third try would be scanned anew


def quarantined_once(door_for, smtpd, tmp_path, raw):
    """RAW (a virus) through a door that is stopped afterwards: (its one quarantine entry's .json, the 250's text)."""
    door = door_for(smtpd)
    with door.client() as client:
        code, text = transaction(client, raw)
    assert code == 250 and "virus, quarantined as" in text, text
    door.stop()
    [held] = list((tmp_path / "quarantine").glob("*.json"))
    return held, text


def test_a_quarantined_message_whose_answer_was_lost_is_held_once(door_for, tmp_path):
    """The quarantine entry durable is a sealed fate too: killed before the 250, the retry is not held twice."""
    raw = corpus.eicar_attached()
    with FakeSmtpd() as smtpd:
        held, text = quarantined_once(door_for, smtpd, tmp_path, raw)
        [sealed] = [line for line in sealed_lines(tmp_path) if line.startswith("S ")]
        assert sealed.endswith(f"250 {text}") and held.stem in text
        answered = f"A {sealed.split()[2]}"
        assert answered in sealed_lines(tmp_path)
        # As if the door had been killed between the entry being durable and its 250: the answered line is missing.
        (tmp_path / "state" / "smtp-sealed.log").write_text(sealed + "\n")
        door = door_for(smtpd)
        with door.client() as client:
            code, text = transaction(client, raw)
        assert code == 250 and "already done, not again" in text and held.stem in text, text
        assert list((tmp_path / "quarantine").glob("*.json")) == [held] and smtpd.taken == []


@pytest.mark.parametrize("stored", [True, False], ids=["entry-stored", "entry-not-stored"])
def test_a_door_killed_while_storing_a_quarantine_entry_holds_the_retry_once(door_for, tmp_path, stored):
    """Killed after the entry was renamed into place but before its seal was written (the store still fsyncs
    its folder): the ledger has only the H line. The retry is answered from the entry carrying its key, or,
    if the entry never became whole, stored now: one entry either way."""
    raw = corpus.eicar_attached()
    with FakeSmtpd() as smtpd:
        held, _text = quarantined_once(door_for, smtpd, tmp_path, raw)
        [hold] = [line for line in sealed_lines(tmp_path) if line.startswith("H ")]
        assert json.loads(held.read_text())["ledger_key"] == hold.split()[2]
        (tmp_path / "state" / "smtp-sealed.log").write_text(hold + "\n")  # the S and A lines never written
        if not stored:
            held.unlink()  # as if killed before the metadata's rename: no entry (its .eml alone is never listed)
        door = door_for(smtpd)
        with door.client() as client:
            code, again = transaction(client, raw)
        [entry] = list((tmp_path / "quarantine").glob("*.json"))
        if stored:
            assert code == 250 and "already done, not again" in again and held.stem in again, again
            assert entry == held
        else:
            assert code == 250 and "virus, quarantined as" in again and "not again" not in again, again
            assert entry.stem in again
        assert smtpd.taken == []


def test_recipients_split_by_policy_get_a_reinjection_and_an_entry_and_one_250(door_for, tmp_path):
    with FakeSmtpd() as smtpd:
        door = door_for(smtpd, sections={"recipients": {"strict.test": {"spam_score": 5}}})
        with door.client() as client:
            code, text = transaction(client, corpus.gtube(), rcpts=("a@strict.test", "b@lax.test"))
        assert code == 250 and "split: 1 recipient(s) reinjected, quarantined as" in text, text
        [taken] = smtpd.wait(1)
        assert taken.rcpts == ["RCPT TO:<b@lax.test>"]
        [held] = list((tmp_path / "quarantine").glob("*.json"))
        assert json.loads(held.read_text())["recipients"] == ["a@strict.test"] and held.stem in text


def test_a_split_whose_reinjection_fails_is_451_and_the_retry_holds_nothing_twice(door_for, tmp_path):
    recipients = {"strict.test": {"spam_score": 5}}
    with FakeSmtpd(Behaviour(end_of_data="451 4.3.0 try later")) as smtpd:
        door = door_for(smtpd, sections={"recipients": recipients})
        with door.client() as client:
            code, text = transaction(client, corpus.gtube(), rcpts=("a@strict.test", "b@lax.test"))
        assert code == 451, text
        door.stop()
    assert len(list((tmp_path / "quarantine").glob("*.json"))) == 1  # the held group was sealed first
    with FakeSmtpd() as smtpd:
        door = door_for(smtpd, sections={"recipients": recipients})
        with door.client() as client:
            code, text = transaction(client, corpus.gtube(), rcpts=("a@strict.test", "b@lax.test"))  # Postfix's retry
        assert code == 250 and "1 done before" in text, text
        assert [t.rcpts for t in smtpd.wait(1)] == [["RCPT TO:<b@lax.test>"]]
    assert len(list((tmp_path / "quarantine").glob("*.json"))) == 1


def test_one_session_more_than_max_clients_is_told_421(door_for):
    with FakeSmtpd() as smtpd:
        door = door_for(smtpd, max_clients=1)
        with door.client():
            with socket.create_connection(("127.0.0.1", door.port), timeout=10) as extra:
                assert extra.recv(200).startswith(b"421 4.3.2 mailfilter: too many sessions")


def test_xforward_is_refused_inside_a_transaction_and_for_unknown_attributes(door_for):
    with FakeSmtpd() as smtpd:
        door = door_for(smtpd)
        with door.client() as client:
            assert client.docmd("XFORWARD FOO=bar")[0] == 501
            assert client.mail(SENDER)[0] == 250
            assert client.docmd("XFORWARD NAME=x")[0] == 503


def test_stop_lets_the_message_in_flight_finish_and_refuses_new_ones(door_for):
    behaviour = Behaviour(hold_dot=1.5)
    with FakeSmtpd(behaviour) as smtpd:
        door = door_for(smtpd)
        client = door.client()
        replies = []
        thread = threading.Thread(target=lambda: replies.append(transaction(client, corpus.clean())))
        thread.start()
        assert behaviour.data_started.wait(30)  # the message is being reinjected (the fake holds its 354 for 1.5 s)
        stopper = threading.Thread(target=door.stop)
        stopper.start()
        thread.join(30)
        client.close()
        assert replies and replies[0][0] == 250, replies
        stopper.join(30)
        assert door.states == ["READY=1", "STOPPING=1"] and door.status == 0
        assert len(smtpd.taken) == 1
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", door.port), timeout=5).close()


# --- the reinjection pool alone (doors/smtpreinject.py) ---------------------------------------------------------


def test_the_pool_replaces_connections_the_server_closed_while_idle():
    from mailfilter.doors.smtpreinject import Pool, Transaction

    behaviour = Behaviour(hang_up_after=True)
    with FakeSmtpd(behaviour) as smtpd:
        pool = Pool(smtpd.address, timeout=10)
        tx = Transaction(SENDER, (RECIPIENT,), {})
        try:
            for _ in range(3):
                assert pool.deliver(tx, [b"Subject: x\r\n\r\nhi\r\n"]).startswith("250 ")
        finally:
            pool.close()
        assert len(smtpd.wait(3)) == 3 and behaviour.connections == 3


def test_the_pool_never_sends_the_final_dot_when_the_gate_refuses():
    from mailfilter.doors.smtpreinject import Pool, Transaction

    class Gone(Exception):
        pass

    def gate() -> None:
        raise Gone

    behaviour = Behaviour()
    with FakeSmtpd(behaviour) as smtpd:
        pool = Pool(smtpd.address, timeout=10)
        with pytest.raises(Gone):
            pool.deliver(Transaction(SENDER, (RECIPIENT,), {}), [b"Subject: x\r\n\r\n.hi\r\n"], gate=gate)
        pool.close()
        deadline = time.monotonic() + 10
        while not behaviour.lost and time.monotonic() < deadline:
            time.sleep(0.05)
        assert behaviour.lost == [f"MAIL FROM:<{SENDER}>"] and smtpd.taken == []
