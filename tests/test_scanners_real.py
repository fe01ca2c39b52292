"""The pipeline against the real spamd and clamd (and the real clamscan)."""

import os
import re
import socket
import threading

import pytest

from mailfilter.model import Action, Cause, ScanFailure, SpamReport, Verdict

import corpus
from conftest import ROOT, run_bytes

pytestmark = pytest.mark.daemons
SIGNATURES = str(ROOT / "tests" / "signatures")


EXPECTED = [
    ("clean", Verdict.CLEAN, None),
    ("gtube", Verdict.SPAM, None),
    ("eicar-base64", Verdict.VIRUS, "Eicar-Test-Signature"),
    ("eicar-zip", Verdict.VIRUS, "Eicar-Test-Signature"),
    ("clam-exe", Verdict.VIRUS, "ClamAV-Test-File"),
    ("8bit-subject", Verdict.CLEAN, None),
    ("spoofed-headers", Verdict.CLEAN, None),
    ("malformed-mime", Verdict.CLEAN, None),
]


@pytest.mark.parametrize(("name", "verdict", "virus"), EXPECTED)
@pytest.mark.parametrize("backend", ["clamd", "clamscan"])
def test_corpus_verdicts(live, name, verdict, virus, backend):
    config = live(clamd={"backend": backend, "clamscan": ["/usr/bin/clamscan", f"--database={SIGNATURES}"]})
    outcome = run_bytes(corpus.ALL[name](), config)
    assert outcome.decision.verdict is verdict, outcome
    assert isinstance(outcome.results.spam, SpamReport)
    if virus:
        assert outcome.results.virus.names[0].startswith(virus)
    if name == "gtube":
        assert outcome.results.spam.score >= 1000 and "GTUBE" in outcome.results.spam.tests


@pytest.mark.parametrize("sample", ["clam.zip", "clam.exe.mbox.base64", "clam.mail", "clam.tar.gz", "clam.exe.mbox.uu"])
def test_clamav_testfiles_samples_are_viruses(live, sample):
    with open(f"{corpus.TESTFILES}/{sample}", "rb") as fh:
        outcome = run_bytes(fh.read(), live())
    assert outcome.decision.verdict is Verdict.VIRUS
    assert outcome.results.virus.names[0].startswith("ClamAV-Test-File")


def test_large_message_is_scored_on_its_first_bytes_and_all_of_it_goes_to_clamav(live):
    raw = corpus.eicar_attached() + b"x" * 2000
    outcome = run_bytes(raw, live(spamd={"max_size": 1000}))
    spam = outcome.results.spam
    cut = raw[:1000].rfind(b"\n--") + 1  # before the attachment's closing delimiter: spamd reads whole parts
    assert isinstance(spam, SpamReport) and spam.truncated == (cut, len(raw))
    assert outcome.decision.verdict is Verdict.VIRUS


def test_clamscan_with_a_broken_database_is_an_error_with_its_code(live, tmp_path):
    config = live(clamd={"backend": "clamscan", "clamscan": ["/usr/bin/clamscan", f"--database={tmp_path}"]})
    outcome = run_bytes(corpus.clean(), config)
    failure = outcome.results.virus
    assert isinstance(failure, ScanFailure) and failure.code == 2 and "an error occurred" in failure.text
    assert outcome.decision.action is Action.TEMPFAIL


@pytest.fixture
def mute_server():
    """A TCP server on loopback that accepts and never answers, like a hung daemon."""
    server = socket.create_server(("127.0.0.1", 0))
    held = []
    stop = threading.Event()

    def serve():
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_hung_spamd_is_a_timeout_not_a_hang(live, mute_server):
    outcome = run_bytes(corpus.clean(), live(spamd={"host": "127.0.0.1", "port": mute_server, "timeout": 1}))
    assert isinstance(outcome.results.spam, ScanFailure) and outcome.results.spam.cause is Cause.TIMEOUT
    assert outcome.decision.action is Action.TEMPFAIL


def test_hung_clamd_is_a_timeout_not_a_hang(live, mute_server):
    outcome = run_bytes(corpus.clean(), live(clamd={"host": "127.0.0.1", "port": mute_server, "timeout": 1}))
    assert isinstance(outcome.results.virus, ScanFailure) and outcome.results.virus.cause is Cause.TIMEOUT
    assert outcome.decision.action is Action.TEMPFAIL


def test_clamd_over_tcp(live, daemons):
    outcome = run_bytes(corpus.eicar_attached(), live(clamd={"host": daemons["clamd_host"], "port": daemons["clamd_port"]}))
    assert outcome.decision.verdict is Verdict.VIRUS


def test_nothing_listening_is_unavailable(live, tmp_path):
    outcome = run_bytes(corpus.clean(), live(spamd={"port": 1}, clamd={"socket": str(tmp_path / "none.ctl")}))
    assert outcome.results.spam.cause is Cause.UNAVAILABLE and outcome.results.virus.cause is Cause.UNAVAILABLE


def test_a_message_spooled_to_disk_is_streamed_to_clamd(live, tmp_path):
    from mailfilter import pipeline
    from mailfilter.spool import Spool

    raw = corpus.with_attachment(os.urandom(3_000_000) + corpus.eicar(), "big.bin")
    with Spool(memory_limit=64 * 1024, tmpdir=str(tmp_path)) as spool:
        spool.write(raw)
        assert spool.on_disk
        outcome = pipeline.run(spool, live())
    assert isinstance(outcome.results.spam, SpamReport) and outcome.results.spam.truncated[1] == len(raw)
    assert outcome.decision.verdict is Verdict.VIRUS


@pytest.mark.parametrize("name", ["clean", "gtube", "spoofed_headers", "eicar_attached"])
def test_spamassassin_scores_crlf_and_lf_alike(daemons, name):
    """Why the spamd scanner may send a milter's CRLF message with LF line ends: spamd's own answer
    (score and rule names, through spamc -R) is the same for both forms."""
    import subprocess

    def answer(data: bytes) -> tuple[bytes, set[bytes]]:
        spamc = ["/usr/bin/spamc", "-R", "-d", daemons["spamd_host"], "-p", str(daemons["spamd_port"])]
        report = subprocess.run(spamc, input=data, capture_output=True, timeout=60, check=True).stdout
        return report.split(b"\n", 1)[0], set(re.findall(rb"\b[A-Z][A-Z0-9_]{2,}\b", report))

    raw = getattr(corpus, name)().replace(b"\r\n", b"\n")
    assert answer(raw) == answer(raw.replace(b"\n", b"\r\n"))


def test_spamd_request_sends_lf_line_ends():
    from mailfilter.scanners import spamd

    request = spamd._request(b"Subject: x\r\n\r\nbody\r\nbare\rcr\n")
    assert request.endswith(b"\r\n\r\nSubject: x\n\nbody\nbare\rcr\n")


def test_spamd_scores_as_the_configured_user_and_as_each_recipients_user(live, daemons):
    """[spamd] user goes to spamd as its User header (spamc -u); a recipient with another spamd_user is scored
    again as that user, once, and the delivered copy says whose answer it got (X-Spam-User, for learn)."""
    from pathlib import Path

    from mailfilter import pipeline
    from mailfilter.model import Envelope
    from mailfilter.spool import Spool

    config = live(spamd={"user": "siteuser"}, recipients={"shop.test": {"spamd_user": "shopuser"}})
    envelope = Envelope("alice@example.org", ("a@shop.test", "b@other.test", "c@shop.test"))
    with Spool.of(corpus.gtube()) as spool:
        outcome = pipeline.run(spool, config, envelope)
    assert isinstance(outcome.results.spam, SpamReport) and outcome.results.spam_user == "siteuser"
    [(user, shop)] = outcome.results.spam_users
    assert user == "shopuser" and isinstance(shop, SpamReport) and shop.is_spam
    users = {g.recipients: dict(g.decision.headers).get("X-Spam-User") for g in outcome.groups}
    assert users == {("a@shop.test", "c@shop.test"): "shopuser", ("b@other.test",): "siteuser"}
    log = (Path(daemons["run_dir"]) / "spamd.log").read_text()
    assert " for siteuser:" in log and " for shopuser:" in log
