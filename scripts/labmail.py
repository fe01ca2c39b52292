"""Driving the lab as its users do: send over SMTP, read over IMAP and POP3 (Python's smtplib, imaplib, poplib).

    .venv/bin/python scripts/labmail.py demo      (after scripts/lab up; what scripts/demo runs)

The demo sends the chapter's test mails (a clean one, GTUBE, a virus built now) to info@ and sales@, waits
until each has arrived or been held, and prints what each user sees in INBOX and Junk (IMAP) and over POP3,
the admin's VIRUS FOUND report, and the quarantine entry.
"""

from __future__ import annotations

import email
import email.policy
import imaplib
import json
import os
import poplib
import smtplib
import sys
import time
from email.message import EmailMessage
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

import corpus  # noqa: E402

LAB = Path(os.environ.get("MAILFILTER_LAB", "/tmp/mailfilter-lab"))
TIMEOUT = 60.0


def lab_state() -> dict:
    try:
        return json.loads((LAB / "lab.json").read_text())
    except FileNotFoundError:
        raise SystemExit("lab: not up (scripts/lab up)") from None


def hostport(spec: str) -> tuple[str, int]:
    host, _, port = spec.rpartition(":")
    return host, int(port)


def send(st: dict, raw: bytes, sender: str, recipients: list[str]) -> dict:
    with smtplib.SMTP(*hostport(st["smtp"]), timeout=30) as smtp:
        smtp.ehlo("client.example.org")
        return smtp.sendmail(sender, recipients, raw)


def message(subject: str, body: str, sender: str = "alice@example.org", to: str = "info@unix.specialist.ru") -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, to, subject
    msg["Message-ID"] = email.utils.make_msgid(domain="example.org")
    msg.set_content(body)
    return msg.as_bytes(policy=email.policy.SMTP)


def imap_folders(st: dict, user: str) -> dict[str, list[bytes]]:
    """INBOX and Junk of USER: every message, as bytes."""
    with imaplib.IMAP4(*hostport(st["imap"]), timeout=30) as imap:
        imap.login(user, st["users"][user])
        out = {}
        for folder in ("INBOX", "Junk"):
            imap.select(folder, readonly=True)
            _, data = imap.search(None, "ALL")
            out[folder] = []
            for num in data[0].split():
                _, parts = imap.fetch(num, "(BODY.PEEK[])")
                out[folder].append(parts[0][1])
        imap.logout()
    return out


def pop3_inbox(st: dict, user: str) -> list[bytes]:
    pop = poplib.POP3(*hostport(st["pop3"]), timeout=30)
    try:
        pop.user(user)
        pop.pass_(st["users"][user])
        count, _size = pop.stat()
        return [b"\r\n".join(pop.retr(n)[1]) + b"\r\n" for n in range(1, count + 1)]
    finally:
        pop.quit()


def wait_for(st: dict, user: str, count: int, timeout: float = TIMEOUT) -> dict[str, list[bytes]]:
    """USER's folders once they hold COUNT messages in all."""
    deadline = time.monotonic() + timeout
    while True:
        folders = imap_folders(st, user)
        if sum(len(v) for v in folders.values()) >= count:
            return folders
        if time.monotonic() > deadline:
            raise SystemExit(f"lab: {user} has {sum(len(v) for v in folders.values())} message(s), expected {count} within {timeout:g} s")
        time.sleep(0.2)


def quarantined() -> list[dict]:
    folder = LAB / "filter" / "quarantine"
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def summary(raw: bytes) -> str:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    flags = ", ".join(f"{k}: {msg[k]}" for k in ("X-Spam-Flag", "X-Virus-Status") if msg[k])
    return f"{msg['Subject']!s:40.40}  {flags}"


def demo() -> int:
    st = lab_state()
    users = ["info@unix.specialist.ru", "sales@unix.specialist.ru"]
    mails = [
        ("clean", message("Lunch on Friday", "Hi,\n\nlunch on Friday at noon?\n\nAlice\n")),
        ("GTUBE", corpus.gtube()),
        ("virus", corpus.eicar_attached()),
    ]
    for name, raw in mails:
        try:
            send(st, raw, "alice@example.org", users)
            print(f"sent {name} to {', '.join(users)}")
        except smtplib.SMTPResponseException as exc:
            print(f"sent {name}: refused at SMTP: {exc.smtp_code} {exc.smtp_error.decode(errors='replace')}")
        except smtplib.SMTPRecipientsRefused as exc:
            print(f"sent {name}: refused at SMTP: {exc.recipients}")
    refused_virus = st["wiring"] == "milter"
    expect = {"info@unix.specialist.ru": 2 + (0 if refused_virus else 1), "sales@unix.specialist.ru": 2}  # + the admin's report
    for user in users:
        folders = wait_for(st, user, expect[user])
        print(f"\n{user} over IMAP:")
        for folder, raws in folders.items():
            for raw in raws:
                print(f"  {folder:5}  {summary(raw)}")
        print(f"{user} over POP3 (INBOX): {len(pop3_inbox(st, user))} message(s)")
    held = quarantined()
    print(f"\nquarantine: {len(held)} entr{'y' if len(held) == 1 else 'ies'}")
    for meta in held:
        print(f"  {meta['id']}  {meta['reason']}  {', '.join(meta.get('virus_names', []))}  to {', '.join(meta['recipients'])}")
    print(f"\nA mail client: IMAP {st['imap']} or POP3 {st['pop3']}, SMTP {st['smtp']}, no TLS (loopback only);")
    print(f"log in with the full address and the password in {LAB / 'lab.json'}.")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["demo"]:
        raise SystemExit(__doc__)
    sys.exit(demo())
