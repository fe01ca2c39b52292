"""scripts/lab: the chapter's mail system (Postfix virtual mailboxes + Dovecot) with mailfilter in it, for both
wirings and both deliveries, read back with real clients (imaplib, poplib) from the real Dovecot."""

from __future__ import annotations

import email
import email.policy
import imaplib
import json
import os
import poplib
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import bayes  # noqa: E402
import labmail  # noqa: E402

import daemons  # noqa: E402

LAB = Path("/tmp/mailfilter-lab-test")
INFO, SALES = "info@unix.specialist.ru", "sales@unix.specialist.ru"
pytestmark = [
    pytest.mark.postfix,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab starts Postfix and Dovecot and makes users: needs root"),
    pytest.mark.skipif(not Path("/usr/sbin/dovecot").exists(), reason="needs Debian's dovecot packages (scripts/setup)"),
]


def lab(*args: str, stdin: str = "", folder: Path = LAB) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MAILFILTER_LAB": str(folder)}
    return subprocess.run([str(ROOT / "scripts" / "lab"), *args], env=env, input=stdin, capture_output=True, text=True, timeout=300)


COMBINATIONS = [("content_filter", "lmtp"), ("content_filter", "virtual"), ("milter", "lmtp"), ("milter", "virtual")]


@pytest.fixture(scope="module", params=COMBINATIONS, ids=lambda p: f"{p[0]}-{p[1]}")
def up(request):
    wiring, delivery = request.param
    args = ["up", "--json", "--delivery", delivery, *(["--milter"] if wiring == "milter" else [])]
    proc = lab(*args)
    assert proc.returncode == 0, proc.stderr
    st = json.loads(proc.stdout)  # exactly one JSON object on stdout
    assert (st["wiring"], st["delivery"], st["admin"]) == (wiring, delivery, INFO) and sorted(st["users"]) == [INFO, SALES]
    again = lab(*args)  # up twice: harmless, the same lab
    assert again.returncode == 0 and json.loads(again.stdout) == st and "already up" in again.stderr
    yield st
    assert lab("down").returncode == 0
    assert lab("down").returncode == 0 and not LAB.exists()  # down twice: harmless


def body_of(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[1]


def test_clean_mail_reaches_both_users_byte_identical_over_imap_and_pop3(up):
    raw = labmail.message("Lunch on Friday", "Hi,\n\nlunch on Friday at noon?\n\n.leading dot\nAlice\n", to=SALES)
    before = {user: len(labmail.imap_folders(up, user)["INBOX"]) for user in (INFO, SALES)}
    labmail.send(up, raw, "alice@example.org", [INFO, SALES])
    for user in (INFO, SALES):
        deadline = time.monotonic() + 60
        while len(inbox := labmail.imap_folders(up, user)["INBOX"]) <= before[user]:
            assert time.monotonic() < deadline, f"nothing arrived for {user}"
            time.sleep(0.2)
        fetched = next(m for m in inbox if b"Lunch on Friday" in m)
        message = email.message_from_bytes(fetched, policy=email.policy.default)
        assert message["X-Virus-Status"] == "Clean" and message["X-Spam-Flag"] == "NO"
        assert body_of(fetched) == body_of(raw)
        retrieved = next(m for m in labmail.pop3_inbox(up, user) if b"Lunch on Friday" in m)
        assert body_of(retrieved) == body_of(raw)


def test_a_wrong_password_and_an_unknown_user_are_refused(up):
    with imaplib.IMAP4(*labmail.hostport(up["imap"]), timeout=30) as imap, pytest.raises(imaplib.IMAP4.error):
        imap.login(INFO, "not the password")
    with imaplib.IMAP4(*labmail.hostport(up["imap"]), timeout=30) as imap, pytest.raises(imaplib.IMAP4.error):
        imap.login("nobody@unix.specialist.ru", up["users"][INFO])
    pop = poplib.POP3(*labmail.hostport(up["pop3"]), timeout=30)
    try:
        pop.user(INFO)
        with pytest.raises(poplib.error_proto, match="Authentication failed"):
            pop.pass_("not the password")
    finally:
        pop.close()


def test_spam_goes_to_junk_or_is_flagged_and_a_virus_never_reaches_a_mailbox(up):
    import corpus

    gtube, virus = corpus.gtube(), corpus.eicar_attached()
    labmail.send(up, gtube, "alice@example.org", [SALES])
    if up["wiring"] == "milter":
        with pytest.raises(labmail.smtplib.SMTPDataError, match="554"):
            labmail.send(up, virus, "alice@example.org", [SALES])
    else:
        labmail.send(up, virus, "alice@example.org", [SALES])
    folder = "Junk" if up["delivery"] == "lmtp" else "INBOX"
    deadline = time.monotonic() + 60
    while not any(b"Cheap watches" in m for m in labmail.imap_folders(up, SALES)[folder]):
        assert time.monotonic() < deadline, f"GTUBE is not in {folder}"
        time.sleep(0.2)
    if up["wiring"] == "content_filter":  # quarantined, and the admin (info@, the chapter's VIRUSADMIN) told
        deadline = time.monotonic() + 60
        while not any(b"VIRUS FOUND" in m for m in labmail.imap_folders(up, INFO)["INBOX"]):
            assert time.monotonic() < deadline, "no VIRUS FOUND report for info@"
            time.sleep(0.2)
        assert any(meta["reason"] == "virus" for meta in quarantined())
    for user in (INFO, SALES):
        for raws in labmail.imap_folders(up, user).values():
            assert not any(b"eicar" in m.lower() and b"VIRUS FOUND" not in m for m in raws)


def quarantined() -> list[dict]:
    return [json.loads(p.read_text()) for p in (LAB / "filter" / "quarantine").glob("*.json")]


def bayes_counts() -> dict[str, int]:
    return bayes.counts(LAB / "spamd" / "bayes" / "bayes")


def test_moving_into_junk_teaches_spam_and_out_of_it_ham(up):
    if up["delivery"] != "lmtp":
        pytest.skip("IMAPSieve learning comes with the lmtp delivery (Dovecot's own)")
    raw = labmail.message("Numbers for the quarter", "Hi,\n\nthe numbers went up again this quarter.\n", to=SALES)
    labmail.send(up, raw, "alice@example.org", [SALES])
    deadline = time.monotonic() + 60
    while not any(b"Numbers for the quarter" in m for m in labmail.imap_folders(up, SALES)["INBOX"]):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    before = bayes_counts()
    with imaplib.IMAP4(*labmail.hostport(up["imap"]), timeout=30) as imap:
        imap.login(SALES, up["users"][SALES])
        imap.select("INBOX")
        _, found = imap.search(None, "SUBJECT", '"Numbers for the quarter"')
        assert imap.copy(found[0].split()[-1], "Junk")[0] == "OK"
        wait_until(lambda: bayes_counts()["nspam"] == before["nspam"] + 1, "a move into Junk to teach spam")
        imap.select("Junk")
        _, found = imap.search(None, "SUBJECT", '"Numbers for the quarter"')
        assert imap.copy(found[0].split()[-1], "INBOX")[0] == "OK"
        wait_until(lambda: bayes_counts()["nham"] == before["nham"] + 1, "a move out of Junk to teach ham")


def wait_until(predicate, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"waited in vain for {what}"
        time.sleep(0.2)


def test_adduser_refuses_a_bad_address_and_writes_nothing_then_adds_one(up):
    users = LAB / "dovecot" / "users"
    before = users.read_text()
    refused = [("not-an-address", "is not an address"), ("x@other.example", "serves only"), ("a;b@unix.specialist.ru", "is not an address")]
    for bad, why in refused:
        proc = lab("adduser", bad, stdin="a good password\n")
        assert proc.returncode == 1 and why in proc.stderr, proc.stderr
    assert users.read_text() == before
    proc = lab("adduser", "support@unix.specialist.ru", stdin="a good password\n")
    assert proc.returncode == 0, proc.stderr
    st = {**up, "users": {**up["users"], "support@unix.specialist.ru": "a good password"}}
    labmail.send(st, labmail.message("Welcome", "Hello support.\n"), "alice@example.org", ["support@unix.specialist.ru"])
    wait_until(lambda: len(labmail.imap_folders(st, "support@unix.specialist.ru")["INBOX"]) == 1, "mail for the new user")


def test_a_scanner_down_defers_and_the_mail_arrives_once_when_it_returns(up):
    raw = labmail.message("While spamd was away", "Hello.\n", to=INFO)
    mid = email.message_from_bytes(raw)["Message-ID"].encode()

    def copies() -> int:  # of this message itself (the admin's ANTIVIRUS FAILED report quotes its Subject)
        return sum(1 for m in labmail.imap_folders(up, INFO)["INBOX"] if b"Message-ID: " + mid in m.split(b"\r\n\r\n", 1)[0])
    run_dir = LAB / "spamd"
    daemons.stop(run_dir, only="spamd")
    try:
        if up["wiring"] == "milter":  # refused 451 at the SMTP level: the sending server keeps it
            with pytest.raises(labmail.smtplib.SMTPDataError, match="451"):
                labmail.send(up, raw, "alice@example.org", [INFO])
        else:
            labmail.send(up, raw, "alice@example.org", [INFO])
            etc = str(LAB / "postfix" / "etc")
            wait_until(lambda: "deferred" in subprocess.run(["postqueue", "-c", etc, "-j"], capture_output=True, text=True).stdout,
                       "the message deferred")  # fmt: skip
            assert copies() == 0
    finally:
        daemons.start(run_dir, only="spamd", bayes=True)
    if up["wiring"] == "milter":
        labmail.send(up, raw, "alice@example.org", [INFO])
    else:
        subprocess.run(["postqueue", "-c", str(LAB / "postfix" / "etc"), "-f"], check=True, capture_output=True, timeout=60)
    wait_until(lambda: copies() >= 1, "the deferred mail")
    etc = str(LAB / "postfix" / "etc")
    wait_until(lambda: not subprocess.run(["postqueue", "-c", etc, "-j"], capture_output=True, text=True).stdout.strip(), "an empty queue")
    assert copies() == 1


def test_status_says_what_runs(up):
    proc = lab("status")
    assert proc.returncode == 0, proc.stdout
    shown = json.loads(proc.stdout)
    assert shown["running"]["postfix"] and shown["running"]["dovecot"] and shown["running"]["spamd"]
    assert shown["running"]["milter"] == (up["wiring"] == "milter")


BAD_ARGUMENTS = [(["frobnicate"], "invalid choice"), (["up", "--delivery", "mbox"], "invalid choice"), ([], "required")]


@pytest.mark.parametrize("args,says", BAD_ARGUMENTS)
def test_bad_arguments_get_a_clear_error_and_start_nothing(args, says):
    proc = lab(*args)
    assert proc.returncode == 2 and says in proc.stderr and "usage: scripts/lab" in proc.stderr


def test_adduser_without_a_lab_says_so(tmp_path):
    folder = tmp_path / "no-lab"
    proc = lab("adduser", "new@unix.specialist.ru", stdin="a good password\n", folder=folder)
    assert proc.returncode == 1 and "the lab is not up" in proc.stderr and not folder.exists()
