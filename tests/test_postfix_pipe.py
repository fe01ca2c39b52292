"""The content_filter wiring end to end, over real SMTP.

A private Postfix (tests/postfix.py) hands every message that smtpd accepts to
`mailfilter pipe` under pipe(8), run as the unprivileged pipe user from a
copy of the package; the filter scans with the real spamd and clamd and
reinjects with plain sendmail, which reaches this instance through
MAIL_CONFIG. Postfix relays whatever comes out to a sink that the tests read.
"""

import json
import re
from email import message_from_bytes
from email.message import Message

import pytest

import corpus
import daemons as harness
from conftest import mode, write_config
from postfix import PIPE_ARGS, Delivery, PostfixInstance, filter_sections, filter_venv, requires_root

pytestmark = [pytest.mark.postfix, pytest.mark.daemons, requires_root]
SENDER, RECIPIENT, ADMIN = "alice@example.org", "bob@example.net", "admin@example.net"


@pytest.fixture
def postfix(daemons):
    """A started content_filter instance whose filter talks to the real daemons."""
    with PostfixInstance() as instance:
        folder = instance.filter_dir  # the pipe user's: it creates the quarantine, state and log in it
        # Timeouts well below the harness's waits (30 s), so that a scanner that hangs shows in the maillog as a deferral.
        sections = filter_sections(folder, (daemons["spamd_host"], daemons["spamd_port"]), daemons["clamd_socket"], timeout=10)
        config = write_config(folder / "mailfilter.toml", sections)
        # allow_min_user: smtpd refuses addresses that begin with '-' unless told otherwise.
        instance.start("content_filter", argv=[str(filter_venv()), *PIPE_ARGS], config=config, allow_min_user="yes")
        yield instance


def send(postfix: PostfixInstance, raw: bytes, sender: str = SENDER, recipients: tuple[str, ...] = (RECIPIENT,)) -> str:
    """Submit RAW, expect it queued, and return its queue id."""
    code, text = postfix.send(raw, sender, recipients)
    assert code == 250, text
    return text.rsplit(" ", 1)[1]


def settle(postfix: PostfixInstance) -> list[Delivery]:
    """Wait until the queue is empty, so that nothing more can reach the sink; return what did."""
    postfix.wait_for(lambda: postfix.postqueue_json() == [], what="an empty queue")
    return postfix.sink.deliveries


def headers(delivery: Delivery) -> Message:
    return message_from_bytes(delivery.data)


def crlf(raw: bytes) -> bytes:
    return raw.replace(b"\n", b"\r\n")


def test_clean_message_is_filtered_once_and_delivered(postfix):
    queue_id = send(postfix, corpus.clean())
    postfix.sink.wait(1)
    [delivery] = settle(postfix)
    assert (delivery.sender, delivery.recipients) == (SENDER, (RECIPIENT,))
    message = headers(delivery)
    assert message["X-Spam-Flag"] == "NO" and message["X-Spam-Score"]
    assert message["X-Spam-Status"].startswith(f"No, score={message['X-Spam-Score']} ")
    assert message["X-Virus-Scanned"] == "ClamAV using mailfilter"
    assert message.get_all("X-Virus-Status") == ["Clean"]  # filtered exactly once
    assert delivery.data.endswith(crlf(corpus.clean()))
    postfix.wait_logged(rf"to=<{RECIPIENT}>, relay=127\.0\.0\.1.* status=sent")  # the last line: the rest is logged too
    log = postfix.maillog()
    assert re.search(rf"{queue_id}: to=<{RECIPIENT}>, relay=mailfilter, .* status=sent", log)
    assert log.count("relay=mailfilter") == 1
    # The filter's sendmail ran as the pipe user and reached this instance (MAIL_CONFIG), not the machine's.
    assert re.search(rf"postfix/pickup\[\d+\]: \w+: uid={postfix.pipe_user.pw_uid} from=<{SENDER}>", log)


def test_virus_is_quarantined_and_reported(postfix):
    raw = corpus.eicar_attached()
    queue_id = send(postfix, raw)
    postfix.sink.wait(1)
    [report] = settle(postfix)  # and nothing for bob
    assert report.recipients == (ADMIN,) and headers(report)["Subject"] == "VIRUS FOUND"
    quarantine = postfix.filter_dir / "quarantine"
    [meta_path] = quarantine.glob("*.json")
    meta = json.loads(meta_path.read_text())
    assert meta["reason"] == "virus" and meta["queue_id"] == queue_id
    assert (meta["sender"], meta["recipients"]) == (SENDER, [RECIPIENT])
    assert meta_path.with_suffix(".eml").read_bytes().endswith(raw)  # as received, after Postfix's own headers
    assert f"Quarantine id:  {meta['id']}".encode() in report.data
    assert quarantine.stat().st_uid == postfix.pipe_user.pw_uid and mode(quarantine) == 0o700


def test_clamd_down_defers_then_delivers_once_flushed(postfix):
    harness.stop(only="clamd")
    try:
        queue_id = send(postfix, corpus.clean())
        [entry] = postfix.wait_for(
            lambda: [m for m in postfix.postqueue_json() if m["queue_name"] == "deferred"], what="the message in the deferred queue"
        )
        assert entry["queue_id"] == queue_id and "clamav unavailable" in entry["recipients"][0]["delay_reason"]
        postfix.wait_logged(rf"{queue_id}: to=<{RECIPIENT}>, relay=mailfilter, .* dsn=4\.7\.1, status=deferred")
        [report] = postfix.sink.wait(1)
        assert report.recipients == (ADMIN,) and headers(report)["Subject"] == "ANTIVIRUS FAILED"
    finally:
        harness.start(only="clamd")
    postfix.flush()
    postfix.sink.wait(2)  # the report, then the message
    [delivery] = [d for d in settle(postfix) if d.recipients == (RECIPIENT,)]
    assert headers(delivery).get_all("X-Virus-Status") == ["Clean"]
    assert delivery.data.endswith(crlf(corpus.clean()))


def test_addresses_that_look_like_options_stay_addresses(postfix):
    """`-bob@...` after sendmail's -f or without `--` would read as options (`-b ob@...`)."""
    recipients = ("-bob@example.net", "carol@example.net")
    send(postfix, corpus.clean(), "-alice@example.org", recipients)
    postfix.sink.wait(1)
    [delivery] = settle(postfix)
    assert (delivery.sender, delivery.recipients) == ("-alice@example.org", recipients)
    assert headers(delivery).get_all("X-Virus-Status") == ["Clean"]
