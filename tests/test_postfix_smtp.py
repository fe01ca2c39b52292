"""FILTER_README's advanced wiring end to end: a private Postfix hands each queued message over SMTP to
`mailfilter smtp` (a real process, the real spamd and clamd), which reinjects it into the instance's second
smtpd; Postfix relays what comes out to the sink. What Postfix relies on: 250 only once reinjected or
quarantined, 4xx (queued, retried, delivered once) for every failure, nothing lost, nothing doubled."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
from email import message_from_bytes

import pytest
from smtpwiring import DoorProcess, Gate, SmtpPostfix

import corpus
from postfix import HOST, requires_root

pytestmark = [pytest.mark.postfix, pytest.mark.daemons, requires_root]
SENDER, RECIPIENT, ADMIN = "alice@example.org", "bob@example.net", "admin@example.net"


@pytest.fixture
def wiring(daemons):
    """(postfix, door, spamd gate, reinjection gate): the door reaches spamd and the 10028 smtpd through gates."""
    with SmtpPostfix() as postfix:
        postfix.start_smtp()
        spamd = Gate((daemons["spamd_host"], daemons["spamd_port"]))
        reinject = Gate((HOST, postfix.reinject_port))
        door = DoorProcess(postfix, spamd.address, daemons["clamd_socket"], reinject=reinject.address)
        door.start()
        try:
            yield postfix, door, spamd, reinject
        finally:
            door.kill()
            spamd.close()
            reinject.close()


def send(postfix: SmtpPostfix, raw: bytes, sender: str = SENDER, recipients=(RECIPIENT,)) -> str:
    code, text = postfix.send(raw, sender, list(recipients))
    assert code == 250, text
    return text.rsplit(" ", 1)[1]


def settle(postfix: SmtpPostfix):
    postfix.wait_for(lambda: postfix.postqueue_json() == [], what="an empty queue")
    return postfix.sink.deliveries


def crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def test_clean_mail_is_filtered_once_and_the_reinjection_names_the_original_client(wiring):
    postfix, _door, _, _ = wiring
    queue_id = send(postfix, corpus.clean())
    postfix.sink.wait(1)
    [delivery] = settle(postfix)
    assert (delivery.sender, delivery.recipients) == (SENDER, (RECIPIENT,))
    message = message_from_bytes(delivery.data)
    assert message.get_all("X-Virus-Status") == ["Clean"] and message["X-Spam-Flag"] == "NO"
    assert delivery.data.endswith(crlf(corpus.clean()))
    # XFORWARD: the reinjecting smtpd logs the original client and queue id (Postfix puts XFORWARD's values in a
    # Received line only behind smtpd_proxy_filter; here that line names the filter's hop, as with amavisd-new).
    assert message.get_all("Received")[0].startswith("from mailfilter.localhost (localhost [127.0.0.1])")
    door_line = rf"{queue_id}: to=<{RECIPIENT}>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:{postfix.door_port}, .*status=sent .*"
    assert "mailfilter: clean, reinjected: 250 2.0.0 Ok: queued as" in postfix.wait_logged(door_line).group(0)
    reinjected = rf"postfix/reinject/smtpd\[\d+\]: \w+: client=localhost\[127\.0\.0\.1\], orig_queue_id={queue_id}, orig_client=(\S+)"
    assert postfix.wait_logged(reinjected).group(1) == "localhost[127.0.0.1]"
    postfix.wait_logged(rf"to=<{RECIPIENT}>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:{postfix.sink.port}.* status=sent")
    assert postfix.maillog().count(f"relay=127.0.0.1[127.0.0.1]:{postfix.door_port}") == 1


def test_spam_is_marked_and_a_virus_is_quarantined_and_reported(wiring):
    postfix, _door, _, _ = wiring
    virus = corpus.eicar_attached()
    send(postfix, corpus.gtube())
    queue_id = send(postfix, virus)
    postfix.sink.wait(2)  # the spam, and the report (the virus goes nowhere)
    deliveries = settle(postfix)
    [spam] = [d for d in deliveries if d.recipients == (RECIPIENT,)]
    [report] = [d for d in deliveries if d.recipients == (ADMIN,)]
    assert message_from_bytes(spam.data)["X-Spam-Flag"] == "YES"
    assert message_from_bytes(report.data)["Subject"] == "VIRUS FOUND"
    [meta_path] = (postfix.filter_dir / "quarantine").glob("*.json")
    meta = json.loads(meta_path.read_text())
    assert meta["reason"] == "virus" and meta["queue_id"] == queue_id and (meta["sender"], meta["recipients"]) == (SENDER, [RECIPIENT])
    assert meta_path.with_suffix(".eml").read_bytes().endswith(crlf(virus))  # as received
    assert len(deliveries) == 2


def test_spamd_down_defers_then_delivers_once_after_it_returns(wiring):
    postfix, _door, spamd, _ = wiring
    spamd.down()
    queue_id = send(postfix, corpus.clean())
    entry = postfix.deferred(queue_id)
    assert "spamd unavailable" in entry["recipients"][0]["delay_reason"] and "451 4.7.1" in entry["recipients"][0]["delay_reason"]
    [report] = postfix.sink.wait(1)
    assert report.recipients == (ADMIN,)
    spamd.up()
    postfix.flush()
    postfix.sink.wait(2)
    [delivery] = [d for d in settle(postfix) if d.recipients == (RECIPIENT,)]
    assert message_from_bytes(delivery.data).get_all("X-Virus-Status") == ["Clean"]


def test_the_reinjection_smtpd_down_defers_and_nothing_is_lost_or_doubled(wiring):
    postfix, _door, _, reinject = wiring
    reinject.down()
    queue_id = send(postfix, corpus.clean())
    entry = postfix.deferred(queue_id)
    assert "451 4.3.0 mailfilter: reinjection failed: cannot reach the reinjecting smtpd" in entry["recipients"][0]["delay_reason"]
    assert postfix.sink.deliveries == []
    reinject.up()
    postfix.flush()
    postfix.sink.wait(1)
    [delivery] = settle(postfix)
    assert delivery.recipients == (RECIPIENT,) and message_from_bytes(delivery.data).get_all("X-Virus-Status") == ["Clean"]


def test_the_door_killed_mid_message_is_retried_and_delivered_once(wiring):
    postfix, door, spamd, _ = wiring
    spamd.hold = 30.0  # the scan hangs: the door is killed while it has the message
    spamd.connected.clear()
    queue_id = send(postfix, corpus.clean())
    assert spamd.connected.wait(30)
    door.kill()
    postfix.deferred(queue_id)
    spamd.hold = 0.0
    door.start()
    postfix.flush()
    postfix.sink.wait(1)
    [delivery] = settle(postfix)
    assert delivery.recipients == (RECIPIENT,) and message_from_bytes(delivery.data).get_all("X-Virus-Status") == ["Clean"]


def test_8bit_and_smtputf8_mail_passes_unchanged(wiring):
    postfix, _door, _, _ = wiring
    head = "From: Jörg <jörg@exämple.org>\nTo: bøb@exämple.net\nSubject: Grüße\nDate: Wed, 2 Dec 2026 10:00:00 +0000\n"
    raw = crlf((head + "Message-ID: <1@exämple.org>\n\nÄpfel.\n.leading dot\n").encode())
    with smtplib.SMTP(HOST, postfix.smtp_port, local_hostname="client.example.org", timeout=30) as client:
        client.ehlo()
        assert client.mail("jörg@exämple.org", ["BODY=8BITMIME", "SMTPUTF8"])[0] == 250
        assert client.rcpt("bøb@exämple.net")[0] == 250
        code, text = client.data(raw)
    assert code == 250, text
    postfix.sink.wait(1)
    [delivery] = settle(postfix)
    assert (delivery.sender, delivery.recipients) == ("jörg@exämple.org", ("bøb@exämple.net",))
    assert delivery.data.endswith(raw)
    assert message_from_bytes(delivery.data).get_all("X-Virus-Status") == ["Clean"]


def test_sigterm_lets_the_message_in_flight_finish_and_systemd_is_told(wiring):
    postfix, door, spamd, _ = wiring
    door.kill()
    path = postfix.filter_dir / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(path))
        os.chown(path, postfix.pipe_user.pw_uid, -1)  # the door runs as the pipe user
        notify.settimeout(30)
        door.environ = {"NOTIFY_SOCKET": str(path)}
        door.start()
        assert notify.recv(100) == b"READY=1"
        spamd.hold = 2.0  # the scan takes a while: SIGTERM comes while the door has the message
        spamd.connected.clear()
        queue_id = send(postfix, corpus.clean())
        assert spamd.connected.wait(30)
        os.kill(door.proc.pid, signal.SIGTERM)
        assert notify.recv(100) == b"STOPPING=1"
        assert door.proc.wait(30) == 0
    postfix.sink.wait(1)
    [delivery] = settle(postfix)  # finished within the grace, answered 250: delivered once, not deferred
    assert delivery.recipients == (RECIPIENT,)
    assert f"{queue_id}: to=<{RECIPIENT}>, relay=127.0.0.1[127.0.0.1]:{postfix.door_port}" in postfix.maillog()


def test_over_lmtp_each_recipient_gets_its_own_fate_from_postfix(daemons):
    """[smtp] protocol = "lmtp" behind Postfix's lmtp client: spam to a strict recipient (rejected: Postfix
    bounces that copy alone), a default one (delivered, marked) and a holding one (quarantined), in one message."""
    recipients = ("a@strict.test", "b@lax.test", "c@held.test")
    policy = {"recipients": {"strict.test": {"spam_reject_score": 5}, "held.test": {"spam_score": 5}}}
    with SmtpPostfix() as postfix:
        postfix.start_smtp(transport="lmtp-mailfilter", client="lmtp")
        door = DoorProcess(postfix, f"{daemons['spamd_host']}:{daemons['spamd_port']}", daemons["clamd_socket"], policy, protocol="lmtp")
        door.start()
        try:
            queue_id = send(postfix, corpus.gtube(), recipients=recipients)
            postfix.sink.wait(2)  # b's copy, and the bounce for a to the sender
            deliveries = settle(postfix)
        finally:
            door.kill()
        [spam] = [d for d in deliveries if d.recipients == ("b@lax.test",)]
        assert message_from_bytes(spam.data)["X-Spam-Flag"] == "YES"
        [bounce] = [d for d in deliveries if d.recipients == (SENDER,)]
        assert b"a@strict.test" in bounce.data and b"c@held.test" not in bounce.data
        assert len(deliveries) == 2
        log = postfix.maillog()
        assert f"{queue_id}: to=<a@strict.test>, relay=127.0.0.1[127.0.0.1]:{postfix.door_port}" in log
        assert "status=bounced (host 127.0.0.1[127.0.0.1] said: 550 5.7.1 mailfilter:" in log
        [meta_path] = (postfix.filter_dir / "quarantine").glob("*.json")
        assert json.loads(meta_path.read_text())["recipients"] == ["c@held.test"]
