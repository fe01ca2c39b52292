"""The benchmark's messages: a deterministic mix built at run time from a seed.

Mostly ham of realistic sizes (2 KB to 200 KB: a text part of up to 12 KB, the rest in an
attachment; and a few with attachments that bring the message up to Postfix's default
10 MB message_size_limit), some spam (GTUBE, and SpamAssassin's sample-spam.txt where
Debian ships it) and a few viruses (EICAR, built at run time by tests/corpus.py and never
stored in plain form, and clam.exe from clamav-testfiles). Messages have LF line endings,
as Postfix pipe(8) hands them over; SMTP clients convert them to CRLF.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import corpus  # tests/corpus.py

SPAMASSASSIN_EXAMPLES = Path("/usr/share/doc/spamassassin/examples")
HAM_SIZES = (2_000, 200_000)  # whole messages, log-uniform
TEXT_SIZES = (500, 12_000)  # their text part, log-uniform: what SpamAssassin's body rules read
ATTACHMENT_TYPES = (("report.pdf", "application", "pdf"), ("photo.jpg", "image", "jpeg"), ("notes.docx", "application", "msword"))
# Raw attachment sizes; base64 makes the largest message just under 10 MB.
ATTACHMENT_SIZES = (150_000, 1_000_000, 3_000_000, 7_300_000)
WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an they you were "
    "her she there been one all we their has would when if so no will more about can said up out what some into them "
    "time only could new than other people may first like over also two any these years after most very state well "
    "report meeting budget quarter project team customer invoice schedule review release draft please attached thanks "
    "regards tomorrow monday friday office proposal contract update status numbers agenda minutes deadline server"
).split()
PEOPLE = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "oscar")
DOMAINS = ("example.org", "example.net", "example.com", "mail.example.org")


@dataclass(frozen=True)
class Message:
    """One test message: a name that says what it is, its kind (ham, spam, virus) and its bytes."""

    name: str
    kind: str
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


def _text(rng: random.Random, size: int) -> str:
    """Plain-text paragraphs of about SIZE characters, in lines of at most 76 characters."""
    lines, line, total = [], [], 0
    while total < size:
        word = rng.choice(WORDS)
        if sum(len(w) + 1 for w in line) + len(word) > 72:
            lines.append(" ".join(line))
            total += len(lines[-1]) + 1
            line = []
            if rng.random() < 0.15:
                lines.append("")
        line.append(word)
    return "\n".join(lines) + "\n"


def _headers(rng: random.Random, index: int, subject: str) -> EmailMessage:
    sender, recipient = rng.sample(PEOPLE, 2)
    msg = EmailMessage(policy=SMTP)
    msg["Received"] = f"from mx{index % 7}.{rng.choice(DOMAINS)} (mx.example.org [192.0.2.{1 + index % 250}]) by mail.example.net"
    msg["From"] = f"{sender.title()} <{sender}@{rng.choice(DOMAINS)}>"
    msg["To"] = f"{recipient}@example.net"
    msg["Subject"] = subject
    msg["Date"] = f"Fri, 27 Nov 2026 {8 + index % 10:02d}:{index % 60:02d}:00 +0000"
    msg["Message-ID"] = f"<bench-{index:04d}-{rng.getrandbits(48):012x}@example.org>"
    return msg


def _lf(msg: EmailMessage) -> bytes:
    return msg.as_bytes().replace(b"\r\n", b"\n")


def ham(rng: random.Random, index: int, size: int) -> bytes:
    """A message of about SIZE bytes: a text part of what people type (with an HTML alternative, as
    mail clients send it, for every third one) and, when SIZE is larger, an attachment for the rest."""
    subject = " ".join(rng.choice(WORDS) for _ in range(5)).capitalize()
    msg = _headers(rng, index, subject)
    text = min(size, int(math.exp(rng.uniform(*(math.log(s) for s in TEXT_SIZES)))))
    html = index % 3 == 0
    body = _text(rng, text // 2 if html else text)
    msg.set_content(body)
    if html:
        paragraphs = "".join(f"<p>{p}</p>\n" for p in body.split("\n\n"))
        msg.add_alternative(f"<html><body>\n{paragraphs}</body></html>\n", subtype="html")
    rest = size - len(msg.as_bytes())
    if rest > 1_000:
        filename, maintype, subtype = rng.choice(ATTACHMENT_TYPES)
        msg.add_attachment(rng.randbytes(rest * 3 // 4), maintype=maintype, subtype=subtype, filename=filename)
    return _lf(msg)


def with_attachment(rng: random.Random, index: int, size: int) -> bytes:
    """A short note with an incompressible attachment of SIZE bytes (a photo, an archive)."""
    subject = f"Photos from the {rng.choice(WORDS)} meeting ({index})"
    return corpus.with_attachment(rng.randbytes(size), f"photo-{index}.jpg", subject)


@contextlib.contextmanager
def _fixed_boundaries(seed: int) -> Iterator[None]:
    """The email package draws MIME boundaries from the global random generator: seed it while building."""
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def build(seed: int, count: int = 40) -> list[Message]:
    """COUNT messages, about 80 % ham, 10 % spam and 10 % viruses, in a shuffled order: the same for the same SEED."""
    with _fixed_boundaries(seed):
        return _build(random.Random(seed), count)


def _build(rng: random.Random, count: int) -> list[Message]:
    messages: list[Message] = []
    spam = [("gtube", corpus.gtube())]
    sample = SPAMASSASSIN_EXAMPLES / "sample-spam.txt"
    if sample.exists():
        spam.append(("sample-spam", sample.read_bytes()))
    viruses = [
        ("eicar-base64", corpus.eicar_attached()),
        ("eicar-zip", corpus.eicar_in_zip()),
        ("clam-exe", corpus.testfile_attached("clam.exe")),
        ("clam-exe-zip", corpus.with_attachment(corpus.zipped({"setup.exe": _testfile("clam.exe")}), "setup.zip", "Your setup")),
    ]
    n_spam = n_virus = max(1, count // 10)
    for i in range(n_spam):
        name, data = spam[i % len(spam)]
        messages.append(Message(f"spam-{name}-{i}", "spam", data))
    for i in range(n_virus):
        name, data = viruses[i % len(viruses)]
        messages.append(Message(f"virus-{name}-{i}", "virus", data))
    nonspam = SPAMASSASSIN_EXAMPLES / "sample-nonspam.txt"
    if nonspam.exists():
        messages.append(Message("ham-sample-nonspam", "ham", nonspam.read_bytes()))
    for i, size in enumerate(ATTACHMENT_SIZES):
        messages.append(Message(f"ham-attachment-{size // 1000}k", "ham", with_attachment(rng, 1000 + i, size)))
    low, high = (math.log(s) for s in HAM_SIZES)
    index = 0
    while len(messages) < count:
        size = int(math.exp(rng.uniform(low, high)))
        messages.append(Message(f"ham-{index}", "ham", ham(rng, index, size)))
        index += 1
    rng.shuffle(messages)
    return messages


def _testfile(name: str) -> bytes:
    return (Path(corpus.TESTFILES) / name).read_bytes()


def _everyday_ham(messages: list[Message]) -> list[Message]:
    """The ham of 2 KB to 200 KB (not the few large attachments), smallest first."""
    return sorted((m for m in messages if m.kind == "ham" and "attachment" not in m.name), key=lambda m: m.size)


def pipe_sample(messages: list[Message], count: int) -> list[Message]:
    """COUNT messages for the pipe path, in about the corpus's proportions: everyday ham spread over its
    size range, spam and a virus (one of each), and from 8 messages on one attachment of about 1 MB."""
    spam = next(m for m in messages if m.kind == "spam")
    virus = next(m for m in messages if m.kind == "virus")
    picked = [spam, virus]
    if count >= 8:
        picked.append(min((m for m in messages if "attachment" in m.name), key=lambda m: abs(m.size - 1_400_000)))
    everyday = _everyday_ham(messages)
    n_ham = max(1, count - len(picked))
    picked += [everyday[round(i * (len(everyday) - 1) / max(1, n_ham - 1))] for i in range(n_ham)]
    return picked


def typical_ham(messages: list[Message]) -> Message:
    """The everyday ham of median size: what smtp-source sends, and the spamd ceiling scans."""
    everyday = _everyday_ham(messages)
    return everyday[len(everyday) // 2]


def sized(seed: int, size: int) -> bytes:
    """A ham of about SIZE bytes (for the [spamd] max_size check)."""
    with _fixed_boundaries(seed):
        return ham(random.Random(seed), 9000 + size % 1000, size)


def large(seed: int, size: int) -> bytes:
    """A message of about SIZE bytes as sent over SMTP (base64 lines of 76 characters and CRLF carry 57 bytes
    in 78): a note with an incompressible attachment, for the milter's peak RSS."""
    with _fixed_boundaries(seed):
        return with_attachment(random.Random(seed), 2000, size * 57 // 78)
