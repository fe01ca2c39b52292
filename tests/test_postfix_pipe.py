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
from pathlib import Path

import pytest

import corpus
import daemons as harness
from conftest import mode, write_config
from postfix import PIPE_ARGS, ROOT, Delivery, PostfixInstance, build_wrapper, filter_sections, filter_venv, requires_root

pytestmark = [pytest.mark.postfix, pytest.mark.daemons, requires_root]
SENDER, RECIPIENT, ADMIN = "alice@example.org", "bob@example.net", "admin@example.net"


def start_filter(instance: PostfixInstance, daemons: dict, argv: list[str], **options) -> PostfixInstance:
    """Start INSTANCE with the content_filter wiring running ARGV under pipe(8), its filter talking to the real daemons."""
    folder = instance.filter_dir  # the pipe user's: it creates the quarantine, state and log in it
    # Timeouts well below the harness's waits (30 s), so that a scanner that hangs shows in the maillog as a deferral.
    sections = filter_sections(folder, (daemons["spamd_host"], daemons["spamd_port"]), daemons["clamd_socket"], timeout=10)
    config = write_config(folder / "mailfilter.toml", sections)
    # allow_min_user: smtpd refuses addresses that begin with '-' unless told otherwise.
    instance.start("content_filter", argv=argv, config=config, allow_min_user="yes", **options)
    return instance


@pytest.fixture
def postfix(daemons):
    """A started content_filter instance whose filter talks to the real daemons."""
    with PostfixInstance() as instance:
        yield start_filter(instance, daemons, [str(filter_venv()), *PIPE_ARGS])


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


# --- mailfilter-pipe (wrapper/mailfilter-pipe.c) between pipe(8) and the filter ---------------------------------


def broken_install(folder: Path, kind: str) -> Path:
    """A `mailfilter` as a failed upgrade leaves it: "import", the console script of a package whose module is
    gone (Python starts, prints an ImportError traceback and exits 1); "interpreter", a script whose python is gone."""
    script = folder / "broken" / "mailfilter"
    script.parent.mkdir(mode=0o755)
    text = filter_venv().read_text()
    if kind == "import":
        assert "from mailfilter.entry import main" in text
        text = text.replace("from mailfilter.entry import main", "from mailfilter.entry_upgraded_away import main")
    else:
        text = "#!/nonexistent/venv/bin/python3\n" + text.split("\n", 1)[1]
    script.write_text(text)
    script.chmod(0o755)
    return script


def wrapped(instance: PostfixInstance, filter_path: Path) -> list[str]:
    """The pipe(8) argv of master.cf.example: the wrapper (built now, into the instance's folder), -t, the filter, its arguments."""
    return [str(build_wrapper(instance.work / "mailfilter-pipe")), "-t", "900", str(filter_path), *PIPE_ARGS]


def test_through_the_wrapper_mail_is_delivered_as_before(daemons):
    with PostfixInstance() as postfix:
        start_filter(postfix, daemons, wrapped(postfix, filter_venv()))
        queue_id = send(postfix, corpus.clean())
        postfix.sink.wait(1)
        [delivery] = settle(postfix)
        assert (delivery.sender, delivery.recipients) == (SENDER, (RECIPIENT,))
        assert headers(delivery).get_all("X-Virus-Status") == ["Clean"]
        assert delivery.data.endswith(crlf(corpus.clean()))
        postfix.wait_logged(rf"to=<{RECIPIENT}>, relay=127\.0\.0\.1.* status=sent")
        assert re.search(rf"{queue_id}: to=<{RECIPIENT}>, relay=mailfilter, .* status=sent", postfix.maillog())


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("import", r"exit status 1"), ("interpreter", r"cannot run /\S+/broken/mailfilter: No such file or directory")],
    ids=["import", "interpreter"],
)
def test_a_broken_install_behind_the_wrapper_defers(daemons, kind, reason):
    with PostfixInstance() as postfix:
        start_filter(postfix, daemons, wrapped(postfix, broken_install(postfix.work, kind)))
        queue_id = send(postfix, corpus.clean())
        entry = postfix.deferred(queue_id)
        assert re.fullmatch(rf"mailfilter: filter failed \({reason}\), message deferred", entry["recipients"][0]["delay_reason"])
        line = postfix.wait_logged(rf"{queue_id}: to=<{RECIPIENT}>, relay=mailfilter, .*").group(0)
        assert "dsn=4.3.0, status=deferred" in line and "Traceback" not in line
        assert "status=bounced" not in postfix.maillog() and postfix.sink.deliveries == []


@pytest.mark.parametrize(("kind", "status"), [("import", "bounced"), ("interpreter", "deferred")])
def test_without_the_wrapper_a_failed_import_bounces(daemons, kind, status):
    """The proof that the wrapper is what makes the difference: pipe(8) alone bounces a filter that exits 1 (and
    defers only one that it cannot exec at all: its own child then exits 75)."""
    with PostfixInstance() as postfix:
        start_filter(postfix, daemons, [str(broken_install(postfix.work, kind)), *PIPE_ARGS])
        queue_id = send(postfix, corpus.clean())
        line = postfix.wait_logged(rf"{queue_id}: to=<{RECIPIENT}>, relay=mailfilter, .* status=(sent|deferred|bounced).*").group(0)
        assert f"status={status}" in line
        if status == "bounced":
            assert "dsn=5.3.0" in line and "ModuleNotFoundError" in line  # the traceback, in the bounce to the sender
            [bounce] = postfix.sink.wait(1)
            assert (bounce.sender, bounce.recipients) == ("", (SENDER,))


# --- the submission service of master.cf.example ----------------------------------------------------------------


def example_service_options(name: str) -> list[str]:
    """The `-o` lines of the uncommented service NAME in master.cf.example, less what a test instance has no
    certificates, SASL or restrictions for (TLS, authentication, the SASL-only recipient rule)."""
    lines = (ROOT / "master.cf.example").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"{re.escape(name)}\s+inet\s", line))
    options = []
    for line in lines[start + 1 :]:
        if not line.startswith((" ", "\t")):
            break
        options.append(line.strip())
    assert options and all(option.startswith("-o ") for option in options)
    skipped = ("-o smtpd_tls_", "-o smtpd_sasl_", "-o smtpd_recipient_restrictions=")
    return [option for option in options if not option.startswith(skipped)]


def test_mail_submitted_on_the_submission_service_is_filtered(daemons):
    options = example_service_options("submission")
    assert "-o content_filter=mailfilter:dummy" in options
    with PostfixInstance() as postfix:
        start_filter(postfix, daemons, [str(filter_venv()), *PIPE_ARGS], submission=options)
        code, text = postfix.send(corpus.gtube(), SENDER, [RECIPIENT], port=postfix.submission_port)
        assert code == 250, text
        postfix.sink.wait(1)
        [delivery] = settle(postfix)
        message = headers(delivery)
        assert message["X-Spam-Flag"] == "YES" and message.get_all("X-Virus-Status") == ["Clean"]
        assert re.search(r"postfix/submission/smtpd\[\d+\]: \w+: client=", postfix.maillog())
