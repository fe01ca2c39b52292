"""Load for the fault tests: numbered messages, an SMTP client loop, and the accounting afterwards.

Every message carries one token (`FLT-RUN-WIRING-NNNNN`) in its Message-ID,
its Subject and its body, so that each one can be found at the sink and in the
quarantine whatever happened on the way. The client loop submits them with a
few concurrent smtplib threads (several messages per connection, as MTAs do),
records the reply each one got, and stops at its deadline.
"""

from __future__ import annotations

import heapq
import random
import re
import smtplib
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP

import corpus
from postfix import HOST, Delivery

SENDER = "alice@example.org"
RECIPIENTS = ("bob@example.net", "carol@example.net")
ADMIN = "admin@example.net"
TOKEN = re.compile(rb"FLT-[0-9a-f]{8}-(?:pipe|milter|worker|smtp)-\d{5}")
CONNECT_TIMEOUT = 60.0  # smtplib's timeout for every command; the milter answers within its scanners' timeouts


@dataclass(frozen=True)
class Message:
    """One message to send: its token, kind (ham, gtube, eicar), recipients and bytes."""

    token: str
    kind: str
    recipients: tuple[str, ...]
    raw: bytes


def messages(count: int, wiring: str, rng: random.Random, mix: dict[str, float], two_recipients: float) -> list[Message]:
    """COUNT messages of kinds drawn with weights MIX; a fraction TWO_RECIPIENTS has two recipients."""
    run = f"{rng.getrandbits(32):08x}"
    out = []
    for n in range(count):
        kind = rng.choices(list(mix), weights=list(mix.values()))[0]
        recipients = RECIPIENTS if rng.random() < two_recipients else RECIPIENTS[:1]
        token = f"FLT-{run}-{wiring}-{n:05d}"
        out.append(Message(token, kind, recipients, build(token, kind, recipients, zipped=n % 2 == 1)))
    return out


def build(token: str, kind: str, recipients: tuple[str, ...], zipped: bool = False) -> bytes:
    """A message of KIND with TOKEN in its Message-ID, Subject and body; EICAR is made now (tests/corpus.py)."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = SENDER
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = f"{kind} {token}"
    msg["Date"] = "Fri, 27 Nov 2026 10:00:00 +0000"
    msg["Message-ID"] = f"<{token}@faults.example.org>"
    text = f"Message {token} of the fault tests.\n"
    if kind == "gtube":
        text += f"\n{corpus.GTUBE}\n"
    msg.set_content(text)
    if kind == "eicar":
        if zipped:
            msg.add_attachment(corpus.zipped({"readme.com": corpus.eicar()}), maintype="application", subtype="zip", filename="docs.zip")
        else:
            msg.add_attachment(corpus.eicar(), maintype="application", subtype="octet-stream", filename="eicar.com")
    return msg.as_bytes()


@dataclass
class Result:
    """What the SMTP client saw for one message: the reply that decided it, and the queue id of a 250."""

    message: Message
    code: int = 0  # 0: no reply (the connection broke before one came)
    text: str = ""
    stage: str = ""  # mail, rcpt, data, end (the reply to the final dot)
    queue_id: str = ""
    error: str = ""
    at: float = field(default_factory=time.time)  # when the reply came, to compare with the logs

    def record(self) -> dict:
        """The attempt as one JSON-able dict (for the evidence of a failed run)."""
        return {
            "token": self.message.token,
            "kind": self.message.kind,
            "at": round(self.at, 3),
            "code": self.code,
            "text": self.text,
            "stage": self.stage,
            "queue_id": self.queue_id,
            "error": self.error,
        }

    @property
    def accepted(self) -> bool:
        return self.code == 250 and self.stage == "end"


def _reply(code: int, text: bytes | str) -> tuple[int, str]:
    return code, text.decode("utf-8", "replace") if isinstance(text, bytes) else text


def submit(client: smtplib.SMTP, message: Message) -> Result:
    """One transaction on an open connection. A refusal at any step resets the transaction (all recipients or none)."""
    result = Result(message)

    def refused(stage: str, code: int, text: bytes | str) -> Result:
        result.stage, (result.code, result.text) = stage, _reply(code, text)
        client.rset()
        return result

    code, text = client.mail(SENDER, ["BODY=8BITMIME"])
    if code != 250:
        return refused("mail", code, text)
    for rcpt in message.recipients:
        code, text = client.rcpt(rcpt)
        if code not in (250, 251):
            return refused("rcpt", code, text)
    try:
        code, text = client.data(message.raw)
    except smtplib.SMTPDataError as exc:  # DATA itself refused (no 354)
        return refused("data", exc.smtp_code, exc.smtp_error)
    result.stage, (result.code, result.text) = "end", _reply(code, text)
    if code == 250:
        result.queue_id = result.text.rsplit(" ", 1)[-1]
    return result


class ClientLoop:
    """THREADS smtplib clients sending MESSAGES to PORT until done or DEADLINE, as MTAs would.

    Up to PER_CONNECTION messages go over one connection. A message refused with a 4xx
    for the Nth time is tried again no sooner than N x RETRY_AFTER seconds later, up to ATTEMPTS times in all,
    and the client that got the 4xx holds off BACKOFF seconds before its next message (as an MTA
    throttles a destination that answers 4xx, instead of running its whole queue into the outage)
    (the modelled retry schedule of a sending MTA). `attempts` maps each token to the
    results of its attempts, oldest first.
    """

    def __init__(
        self,
        port: int,
        messages: list[Message],
        threads: int,
        per_connection: int,
        deadline: float,
        attempts: int,
        retry_after: float,
        backoff: float,
    ) -> None:
        self.port = port
        self.todo: list[tuple[float, int, Message]] = [(0.0, n, m) for n, m in enumerate(messages)]  # a heap: (not before, order, message)
        self.count = len(messages)
        self.attempts: dict[str, list[Result]] = {}
        self.per_connection = per_connection
        self.deadline = deadline
        self.max_attempts = attempts
        self.retry_after = retry_after
        self.backoff = backoff
        self._order = len(messages)
        self._busy = 0  # messages taken and not yet settled
        self._lock = threading.Condition()
        self._threads = [threading.Thread(target=self._run, name=f"smtp-client-{i}", daemon=True) for i in range(threads)]

    @property
    def results(self) -> list[Result]:
        """The last attempt of every message tried."""
        return [tries[-1] for tries in self.attempts.values()]

    @property
    def all_attempts(self) -> list[Result]:
        return [r for tries in self.attempts.values() for r in tries]

    @property
    def unfinished(self) -> int:
        """Messages waiting for a (re)try when the loop stopped."""
        return len(self.todo) + self._busy

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self) -> None:
        """Wait for the clients (each stops at the deadline, or when nothing is left)."""
        for thread in self._threads:
            thread.join(max(0.0, self.deadline - time.monotonic()) + CONNECT_TIMEOUT * 2)
        if any(thread.is_alive() for thread in self._threads):
            raise AssertionError("an SMTP client thread did not stop: a Postfix reply never came")

    def _take(self) -> Message | None:
        """The next message due, waiting for a retry to fall due; None when all are settled or at the deadline."""
        with self._lock:
            while time.monotonic() < self.deadline:
                if self.todo and self.todo[0][0] <= time.monotonic():
                    self._busy += 1
                    return heapq.heappop(self.todo)[2]
                if not self.todo and not self._busy:
                    return None
                due = self.todo[0][0] if self.todo else self.deadline
                self._lock.wait(min(due, self.deadline) - time.monotonic())  # a retry not yet due, or one still in flight
            return None

    def _settle(self, result: Result) -> None:
        with self._lock:
            tries = self.attempts.setdefault(result.message.token, [])
            tries.append(result)
            if 400 <= result.code < 500 and len(tries) < self.max_attempts:
                self._order += 1
                heapq.heappush(self.todo, (time.monotonic() + self.retry_after * len(tries), self._order, result.message))
            self._busy -= 1
            self._lock.notify_all()

    def _run(self) -> None:
        client: smtplib.SMTP | None = None
        sent = 0
        while (message := self._take()) is not None:
            try:
                if client is None or sent >= self.per_connection:
                    _close(client)
                    client, sent = smtplib.SMTP(HOST, self.port, local_hostname="client.example.org", timeout=CONNECT_TIMEOUT), 0
                    client.ehlo()
                sent += 1
                result = submit(client, message)
                if result.code == 421:  # Postfix is closing this session
                    _close(client)
                    client = None
            except (smtplib.SMTPException, OSError) as exc:
                # smtplib raises on a 421 greeting or a dropped connection; the message may have been
                # refused (code known) or its fate is unknown (no reply to the final dot: code 0).
                code = getattr(exc, "smtp_code", 0) or 0
                result = Result(message, code=code, text=str(exc), stage="connect" if code else "", error=type(exc).__name__)
                _close(client)
                client = None
            self._settle(result)
            if 400 <= result.code < 500:
                self._hold_off()
        _close(client)

    def _hold_off(self) -> None:
        """The modelled pause of a sending MTA after a 4xx (not a wait for anything)."""
        threading.Event().wait(max(0.0, min(self.backoff, self.deadline - time.monotonic())))


def _close(client: smtplib.SMTP | None) -> None:
    if client is None:
        return
    try:
        client.quit()
    except (smtplib.SMTPException, OSError):
        client.close()


# --- the accounting ------------------------------------------------------------------------------


@dataclass
class Accounting:
    """Every message's fate, checked against what the client saw. `problems` lists every violation.

    ATTEMPTS: token -> the results of its attempts, oldest first (only the last can be a 250).
    VIRUS_REJECTED: the milter's default, a virus refused with 554 5.7.1; else (pipe) it is accepted and quarantined.
    """

    attempts: dict[str, list[Result]]
    deliveries: list[Delivery]
    quarantine: list[dict]
    virus_rejected: bool
    problems: list[str] = field(default_factory=list)
    figures: dict = field(default_factory=dict)

    def _delivered(self) -> tuple[dict[tuple[str, str], list[Delivery]], int]:
        """Our deliveries by (token, recipient), and the number of admin reports; bounces and strays are problems."""
        delivered: dict[tuple[str, str], list[Delivery]] = {}
        admin = 0
        for d in self.deliveries:
            if d.sender == "" or d.sender.lower().startswith("mailer-daemon"):
                self.problems.append(f"a bounce reached the sink: {d.recipients} {d.data[:300]!r}")
            elif d.recipients == (ADMIN,):
                admin += 1
            elif len(tokens := {t.decode() for t in TOKEN.findall(d.data)}) != 1:
                self.problems.append(f"a delivery to {d.recipients} holds tokens {sorted(tokens)}: {d.data[:300]!r}")
            else:
                for rcpt in d.recipients:
                    delivered.setdefault((next(iter(tokens)), rcpt), []).append(d)
        return delivered, admin

    def _quarantined(self) -> Counter[str]:
        held: Counter[str] = Counter()
        for meta in self.quarantine:
            found = TOKEN.search((meta.get("message_id") or "").encode())
            if found:
                held[found.group().decode()] += 1
            else:
                self.problems.append(f"a quarantine entry without our token: {meta.get('id')} {meta.get('message_id')!r}")
        return held

    def check(self) -> Accounting:
        delivered, admin = self._delivered()
        copies = sum(len(ds) for ds in delivered.values())
        quarantined = self._quarantined()
        bad: Counter[str] = Counter()
        for token, tries in self.attempts.items():
            last, msg = tries[-1], tries[-1].message
            got = {rcpt: delivered.pop((token, rcpt), []) for rcpt in msg.recipients}
            held = quarantined.pop(token, 0)
            reply = f"{last.code} {last.text[:100]!r}"
            where = f"{token} ({msg.kind}, {len(tries)} attempt(s), queue id {last.queue_id or '-'}, last reply {reply})"

            def problem(kind: str, text: str) -> None:
                bad[kind] += 1
                self.problems.append(f"{where}: {text}")  # noqa: B023 - used at once

            if held > 1:
                problem("duplicated", f"quarantined {held} times: DUPLICATED")
            if msg.kind == "eicar" and any(got.values()):
                problem("viruses_delivered", f"VIRUS DELIVERED to {[r for r, ds in got.items() if ds]}")
            if not last.accepted:
                if any(got.values()) or held:
                    problem("duplicated", "refused, yet delivered or quarantined (the sender will send it again): DUPLICATED")
                continue
            if msg.kind == "eicar":
                if self.virus_rejected:
                    problem("wrong_verdict", "a virus accepted (250) where the milter refuses viruses with 554")
                elif held == 0:
                    problem("lost", "an accepted virus neither quarantined nor delivered: LOST")
                continue
            if held:
                problem("wrong_verdict", f"a {msg.kind} message in the quarantine")
            for rcpt, ds in got.items():
                if not ds:
                    problem("lost", f"accepted, never delivered to {rcpt}: LOST")
                elif len(ds) > 1:
                    problem("duplicated", f"delivered {len(ds)} times to {rcpt}: DUPLICATED")
                for d in ds:
                    if text := scanned_problem(d, msg.kind):
                        problem("unscanned_or_mislabelled", text)
        for (token, rcpt), ds in delivered.items():
            bad["strays"] += 1
            self.problems.append(f"{token}: {len(ds)} delivery(ies) to {rcpt} that no message explains")
        for token, count in quarantined.items():
            bad["strays"] += 1
            self.problems.append(f"{token}: {count} quarantine entry(ies) that no message explains")
        every = [r for tries in self.attempts.values() for r in tries]
        self.problems += refusal_problems(every, self.virus_rejected)
        finals = [tries[-1] for tries in self.attempts.values()]
        self.figures = {
            "sent": len(self.attempts),
            "by_kind": dict(Counter(r.message.kind for r in finals)),
            "attempts": len(every),
            "accepted": sum(r.accepted for r in finals),
            "refused_4xx": sum(400 <= r.code < 500 for r in every),  # attempts
            "refused_5xx": sum(500 <= r.code < 600 for r in every),
            "given_up_after_4xx": sum(400 <= r.code < 500 for r in finals),
            "no_reply": sum(r.code == 0 for r in every),
            "refusals": dict(Counter(reply_key(r) for r in every if not r.accepted).most_common()),
            "delivered": copies,  # one per recipient
            "quarantined": len(self.quarantine),
            "admin_reports": admin,
            **{k: bad[k] for k in ("lost", "duplicated", "viruses_delivered", "wrong_verdict", "unscanned_or_mislabelled", "strays")},
        }
        return self


def reply_key(result: Result) -> str:
    """A refusal as `CODE X.Y.Z first words`, for the summary."""
    if result.code == 0:
        return f"no reply ({result.error})"
    words = result.text.split()
    return " ".join([str(result.code), *words[:4]])


def refusal_problems(results: list[Result], virus_rejected: bool) -> list[str]:
    """A refusal must be a 4xx, or a 5xx that fits the content: 554 5.7.1 only for a virus, only where the milter rejects."""
    problems = []
    for r in results:
        where = f"{r.message.token} ({r.message.kind})"
        if r.accepted or 400 <= r.code < 500:
            continue
        if r.code == 0:
            problems.append(f"{where}: no reply from Postfix ({r.error}: {r.text[:200]})")
        elif r.code == 554 and r.text.startswith("5.7.1") and r.message.kind == "eicar" and virus_rejected and r.stage == "end":
            continue
        else:
            problems.append(f"{where}: refused {r.code} {r.text[:200]!r} at {r.stage or 'connect'}")
    return problems


def scanned_problem(delivery: Delivery, kind: str) -> str:
    """Why a delivered message does not look filtered exactly once with the right verdict ('' when it does)."""
    head = delivery.data.split(b"\r\n\r\n", 1)[0].lower()
    clean = head.count(b"\r\nx-virus-status: clean") + head.startswith(b"x-virus-status: clean")
    flags = re.findall(rb"(?:^|\r\n)x-spam-flag: (\w+)", head)
    want = b"yes" if kind == "gtube" else b"no"
    if clean != 1 or flags != [want]:
        return f"delivered with X-Virus-Status: Clean x{clean} and X-Spam-Flag {flags}, expected one Clean and [{want!r}]"
    return ""
