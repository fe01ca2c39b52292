"""The smtpd_milters wiring end to end, over real SMTP: Postfix -> `mailfilter milter` -> sink.

The milter is the real `mailfilter milter` process on a loopback port, ready
when it says so (sd_notify), scanning with the real spamd and clamd. The
SMTP client sees the verdict; the sink sees what was delivered.
"""

import os
import re
import signal
import threading
import time
from email import message_from_bytes

import pytest
from faults.rigs import HoldingSpamd

import corpus
import daemons as harness
from conftest import Sendmail, quarantined, write_config
from milterproc import USER, MilterProcess
from postfix import PostfixInstance, filter_sections, free_port, requires_root

pytestmark = [pytest.mark.postfix, pytest.mark.daemons, requires_root]
SENDER, RECIPIENT, ADMIN = "alice@example.org", "bob@example.net", "admin@example.net"


@pytest.fixture
def wiring(daemons):
    """start(**milter config) -> (postfix, milter); both stopped afterwards.

    The milter runs as USER (it drops root), so its files live in milter.folder.
    """
    started = []

    def start(spamd_port=None, metrics_port=None, content_timeout="120s", sections=None, **milter_config):
        postfix = PostfixInstance()
        started.append(postfix)
        milter = MilterProcess()
        started.append(milter)
        port, folder = free_port(), milter.folder
        config = write_config(
            folder / "milter.toml",
            {
                **filter_sections(
                    folder, (daemons["spamd_host"], spamd_port or daemons["spamd_port"]), daemons["clamd_socket"], 30, "milter.log"
                ),
                "metrics": {"listen": f"127.0.0.1:{metrics_port}" if metrics_port else ""},
                "milter": {"socket": f"inet:{port}@127.0.0.1", "tmpdir": str(folder), "user": f"{USER}:postdrop", **milter_config},
                **(sections or {}),
            },
        )
        # MAIL_CONFIG: the milter's admin reports go through this instance's sendmail, whose
        # postdrop trusts MAIL_CONFIG only from group postdrop (POSTFIX-TESTING.md).
        milter.start(config, env={"MAIL_CONFIG": str(postfix.config_dir)})
        milter.expect(b"READY=1")
        postfix.start("milter", milter=f"inet:127.0.0.1:{port}", milter_content_timeout=content_timeout)
        return postfix, milter

    yield start
    for thing in reversed(started):
        thing.close()


def test_clean_and_spam_are_delivered_with_our_headers(wiring):
    postfix, milter = wiring()
    assert postfix.send(corpus.spoofed_headers(), SENDER, [RECIPIENT])[0] == 250
    assert postfix.send(corpus.gtube(), SENDER, [RECIPIENT])[0] == 250
    ham, spam = (message_from_bytes(d.data) for d in postfix.sink.wait(2))
    assert ham.get_all("X-Virus-Status") == ["Clean"] and ham.get_all("X-Spam-Flag") == ["NO"]
    assert ham.get_all("X-Spam-Score") != ["-100.0"] and "folded over" not in str(ham)
    assert spam["X-Spam-Flag"] == "YES" and "GTUBE" in spam["X-Spam-Status"]
    log = milter.log()
    assert re.search(r"\b[0-9A-F]{6,}: from=<alice@example.org>, nrcpt=1, verdict=clean", log)
    assert "callback failed" not in log


def test_virus_is_rejected_554_and_not_delivered(wiring):
    postfix, _ = wiring()
    code, text = postfix.send(corpus.eicar_attached(), SENDER, [RECIPIENT])
    assert code == 554 and text.startswith("5.7.1 message rejected: virus found: Eicar-Test-Signature")
    assert postfix.send(corpus.clean(), SENDER, [RECIPIENT])[0] == 250
    [delivery] = postfix.sink.wait(1)  # only the clean one
    assert b"EICAR" not in delivery.data


def test_virus_quarantined_and_reported(wiring):
    postfix, milter = wiring(virus="quarantine")
    assert postfix.send(corpus.eicar_in_zip(), SENDER, [RECIPIENT])[0] == 250
    [report] = postfix.sink.wait(1)
    assert report.recipients == (ADMIN,) and message_from_bytes(report.data)["Subject"] == "VIRUS FOUND"
    [(meta, _)] = quarantined(milter.folder / "quarantine")
    assert meta["reason"] == "virus" and meta["recipients"] == [RECIPIENT] and meta["queue_id"]


@pytest.fixture
def user_folder():
    """An empty folder under /tmp that the milter's USER may write to."""
    import pwd
    import shutil
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp(prefix="mailfilter-sent-", dir="/tmp"))
    folder.chmod(0o755)
    user = pwd.getpwnam(USER)
    os.chown(folder, user.pw_uid, user.pw_gid)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_hanging_report_sendmail_neither_delays_the_reply_nor_duplicates_the_entry(wiring, user_folder):
    """The admin report's sendmail hangs 30 s, Postfix waits 10 s for the milter's reply: the virus is quarantined
    once and discarded. Before, the report sat between verdict and reply: Postfix gave up, applied
    milter_default_action (451), and the client's retry stored the message a second time."""
    hanging = Sendmail(user_folder).argv("--sleep", "30")
    postfix, milter = wiring(virus="quarantine", content_timeout="10s", sections={"delivery": {"sendmail": hanging}})
    started = time.monotonic()
    replies = [postfix.send(corpus.eicar_in_zip(), SENDER, [RECIPIENT])]
    if replies[0][0] >= 400:  # as an SMTP client does after a 4xx: try again
        replies.append(postfix.send(corpus.eicar_in_zip(), SENDER, [RECIPIENT]))
    took = time.monotonic() - started
    assert [code for code, _ in replies] == [250], (replies, postfix.diagnostics())
    assert took < 10, took
    [(meta, _)] = quarantined(milter.folder / "quarantine")
    assert meta["reason"] == "virus" and meta["recipients"] == [RECIPIENT]
    assert postfix.sink.deliveries == [] and not re.search(r"milter .* timeout", postfix.maillog())
    assert "milter=quarantine" not in milter.log()  # the summary line waits for the report, after the reply


def test_sigterm_sends_the_reports_still_waiting_after_the_reply(wiring, user_folder):
    """The reply went, the report is still on its way when SIGTERM comes: the stop waits for it (within [milter] grace)."""
    slow = Sendmail(user_folder).argv("--sleep", "2")
    postfix, milter = wiring(virus="quarantine", grace=20, sections={"delivery": {"sendmail": slow}})
    assert postfix.send(corpus.eicar_attached(), SENDER, [RECIPIENT])[0] == 250
    milter.proc.send_signal(signal.SIGTERM)  # the report's sendmail is still sleeping
    milter.expect(b"STOPPING=1")
    assert milter.proc.wait(timeout=60) == 0
    [(argv, report)] = Sendmail(user_folder).calls
    assert argv[-1] == ADMIN and b"Subject: VIRUS FOUND" in report
    log = milter.log()
    assert "milter=quarantine" in log and "report=sent" in log and "not done within [milter] grace" not in log


def test_spamd_stopped_is_451_and_nothing_delivered(wiring):
    postfix, _ = wiring()
    harness.stop(only="spamd")
    try:
        code, text = postfix.send(corpus.clean(), SENDER, [RECIPIENT])
    finally:
        harness.start(only="spamd")
    assert code == 451 and text.startswith("4.7.1 mailfilter: spamd unavailable")
    assert postfix.postqueue_json() == [] or all(m["recipients"][0]["address"] == ADMIN for m in postfix.postqueue_json())
    assert not [d for d in postfix.sink.deliveries if d.recipients == (RECIPIENT,)]


def test_milter_stopped_means_milter_default_action_tempfail(wiring):
    postfix, milter = wiring()
    assert milter.terminate() == 0
    code, text = postfix.send(corpus.clean(), SENDER, [RECIPIENT])
    assert code == 451 and text.startswith("4.7.1")
    assert postfix.postqueue_json() == [] and postfix.sink.deliveries == []


@pytest.mark.parametrize(
    "raw",
    [corpus.raw_8bit_subject(), b"From: a@example.org\nSubject: no newline at the end\n\nlast line without newline"],
    ids=["8bit-header", "no-trailing-newline"],
)
def test_odd_messages_pass_without_exception(wiring, raw):
    postfix, milter = wiring()
    assert postfix.send(raw, SENDER, [RECIPIENT])[0] == 250
    [delivery] = postfix.sink.wait(1)
    assert message_from_bytes(delivery.data)["X-Virus-Status"] == "Clean"
    assert "callback failed" not in milter.log()


def test_sigterm_lets_the_message_in_flight_finish(wiring, daemons):
    with HoldingSpamd(daemons["spamd_host"], daemons["spamd_port"]) as held:
        postfix, milter = wiring(spamd_port=held.port)
        result = {}
        client = threading.Thread(target=lambda: result.update(reply=postfix.send(corpus.clean(), SENDER, [RECIPIENT])))
        client.start()
        assert held.arrived.wait(30), "the message never reached spamd"
        milter.proc.send_signal(signal.SIGTERM)  # while the message is being scanned
        milter.expect(b"STOPPING=1")
        held.release()  # the scan finishes only now, after the stop began
        client.join(60)
        assert milter.proc.wait(timeout=60) == 0
    assert result["reply"][0] == 250, result  # finished: neither cut off nor accepted unscanned
    [delivery] = postfix.sink.wait(1)
    assert message_from_bytes(delivery.data)["X-Virus-Status"] == "Clean"
    log = milter.log()
    assert "stopping: 1 message(s) in flight" in log and "verdict=clean" in log and "still in flight" not in log


def test_metrics_endpoint_counts_what_went_through(wiring):
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from conftest import free_tcp_port

    port = free_tcp_port()
    postfix, _ = wiring(metrics_port=port)
    replies = [
        postfix.send(raw, SENDER, [RECIPIENT])[0] for raw in (corpus.clean(), corpus.clean(), corpus.gtube(), corpus.eicar_attached())
    ]
    assert replies == [250, 250, 250, 554]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    counts = {
        (s.labels.get("verdict"), s.labels.get("action")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "mailfilter_messages_total"
    }
    assert counts == {("clean", "deliver"): 2, ("spam", "deliver"): 1, ("virus", "reject"): 1}
    assert "mailfilter_in_flight 0.0" in text and 'mailfilter_scan_duration_seconds_count{scanner="clamav"} 4.0' in text


def test_oversized_message_is_refused_552_while_it_arrives(wiring):
    postfix, milter = wiring(max_size=100_000)
    code, text = postfix.send(corpus.with_attachment(b"z" * 300_000, "big.bin"), SENDER, [RECIPIENT])
    assert code == 552 and text.startswith("5.3.4 message larger than 100000 bytes cannot be scanned")
    assert postfix.send(corpus.clean(), SENDER, [RECIPIENT])[0] == 250  # the next message on a new connection is fine
    [delivery] = postfix.sink.wait(1)
    assert b"big.bin" not in delivery.data and "action=reject, size=>100000" in milter.log()


def test_recipients_split_by_policy_lose_the_held_recipient_and_keep_the_rest(wiring):
    """GTUBE to a recipient whose domain quarantines at 5 and to one with the default policy: one SMTP answer
    (250), the strict recipient removed from the message (delrcpt) and its copy held, the other delivered."""
    recipients = {"strict.test": {"spam_score": 5}}
    postfix, milter = wiring(sections={"recipients": recipients})
    code, text = postfix.send(corpus.gtube(), SENDER, ["a@strict.test", "b@lax.test"])
    assert code == 250, (text, postfix.diagnostics())
    [delivery] = postfix.sink.wait(1)
    assert delivery.recipients == ("b@lax.test",) and b"X-Spam-Flag: YES" in delivery.data
    [(meta, raw)] = postfix.wait_for(lambda: quarantined(milter.folder / "quarantine") or None, what="the quarantine entry")
    assert meta["recipients"] == ["a@strict.test"] and meta["reason"] == "spam"
    assert raw.replace(b"\r\n", b"\n").endswith(corpus.gtube().split(b"\n\n", 1)[1])
    code, _ = postfix.send(corpus.gtube(), SENDER, ["a@strict.test", "c@strict.test"])  # every recipient held: discarded
    assert code == 250
    postfix.wait_for(lambda: len(quarantined(milter.folder / "quarantine")) == 2 or None, what="a second entry")
    assert len(postfix.sink.deliveries) == 1
