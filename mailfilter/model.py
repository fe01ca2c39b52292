"""The values that flow through the pipeline: envelope, scanner outcomes, verdict.

Everything here is a frozen dataclass or an enum, with no I/O, so that every
door (pipe, milter, CLI) and the pure policy speak the same types.
"""

from __future__ import annotations

import enum
from typing import Literal

from .record import dataclass, field


@dataclass(frozen=True)
class Envelope:
    """Who the message is from and for, as the MTA told us."""

    sender: str
    recipients: tuple[str, ...]
    queue_id: str | None = None


class Verdict(enum.StrEnum):
    """What the message is (or that we could not tell)."""

    CLEAN = "clean"
    SPAM = "spam"
    VIRUS = "virus"
    UNSCANNABLE = "unscannable"  # the virus scan could not see all of it: never clean
    BANNED = "banned"  # an attachment of a banned name or type ([attachments]); not a virus
    ERROR = "error"


class Action(enum.StrEnum):
    """What happens to the message."""

    DELIVER = "deliver"
    QUARANTINE = "quarantine"
    REJECT = "reject"
    TEMPFAIL = "tempfail"
    HOLD = "hold"  # the milter only: Postfix's hold queue, with our headers


class Cause(enum.StrEnum):
    """Why a scanner gave no answer."""

    UNAVAILABLE = "unavailable"  # could not connect
    TIMEOUT = "timeout"  # connected, no answer in time
    ERROR = "error"  # answered with an error
    TOO_LARGE = "too-large"  # refused the message because of its size


SCANNER_SPAMD = "spamd"
SCANNER_CLAMAV = "clamav"


@dataclass(frozen=True)
class SpamReport:
    """spamd's answer."""

    score: float
    threshold: float
    tests: tuple[str, ...] = ()
    # (bytes scored, bytes in the message) when spamd was sent only the first [spamd] max_size bytes.
    truncated: tuple[int, int] | None = None

    @property
    def is_spam(self) -> bool:
        return self.score >= self.threshold


@dataclass(frozen=True)
class SpamSkipped:
    """The message was not sent to spamd (for example: over the size limit)."""

    reason: str


@dataclass(frozen=True)
class VirusReport:
    """ClamAV's answer: no names means clean."""

    names: tuple[str, ...] = ()
    code: int = 0  # clamscan-style exit status: 0 clean, 1 found
    # What the scan could not see (a ClamAV limit hit, a part that could not be decoded), in words.
    # Not empty: the message is not clean, whatever else was found.
    unscannable: tuple[str, ...] = ()

    @property
    def infected(self) -> bool:
        return bool(self.names)

    @property
    def complete(self) -> bool:
        return not self.unscannable


@dataclass(frozen=True)
class Banned:
    """One attachment the policy bans."""

    part: str  # its file name as the sender gave it (decoded), "a.zip/b.zip/x.js" for an archive member; else the part number
    type: str  # the MIME type libmagic reports for its content ("" when the content was not read)
    reason: str  # in words: "banned extension .exe", "hidden extension: invoice.pdf.exe", "banned type application/x-dosexec"


@dataclass(frozen=True)
class AttachmentReport:
    """What the attachment check found."""

    banned: tuple[Banned, ...] = ()
    encrypted: tuple[str, ...] = ()  # archives (part names) whose members are encrypted
    uninspected: tuple[str, ...] = ()  # what could not be inspected, in words


@dataclass(frozen=True)
class ScanFailure:
    """A scanner that could not give an answer. Never read as clean."""

    scanner: str
    cause: Cause
    text: str
    code: int | None = None  # clamscan exit status when the clamscan backend failed

    def describe(self) -> str:
        return f"{self.scanner} {self.cause.value}: {self.text}"


SpamOutcome = SpamReport | SpamSkipped | ScanFailure
VirusOutcome = VirusReport | ScanFailure


@dataclass(frozen=True)
class ScanResults:
    """What the scanners said about one message."""

    spam: SpamOutcome
    virus: VirusOutcome
    spam_seconds: float = 0.0  # how long each scanner took
    virus_seconds: float = 0.0
    servers: tuple[tuple[str, str], ...] = ()  # (scanner, server that answered) for the pooled scanners
    failovers: tuple[tuple[str, int], ...] = ()  # (scanner, servers that failed before one answered or all failed)
    attachments: AttachmentReport | None = None  # None: not checked (every recipient's banned = "allow")
    # spamd's answers for the other spamd users some recipients have ([recipients] spamd_user): (user, outcome)
    spam_users: tuple[tuple[str, SpamOutcome], ...] = ()
    spam_user: str = ""  # whose answer SPAM is ([spamd] user, or the first user some recipient has)

    @property
    def failures(self) -> tuple[ScanFailure, ...]:
        others = tuple(o for _, o in self.spam_users if isinstance(o, ScanFailure))
        return tuple(o for o in (self.spam, self.virus) if isinstance(o, ScanFailure)) + others

    def spam_for(self, user: str) -> SpamOutcome:
        """spamd's answer as USER (its preferences and Bayes data)."""
        return next((outcome for name, outcome in self.spam_users if name == user), self.spam)


@dataclass(frozen=True)
class Dsn:
    """An enhanced status code with its text, as Postfix reads it from us.

    The class digit decides between defer (4) and bounce (5); the type
    checks it so a tempfail can never be written with a 5.
    """

    status: tuple[Literal[4, 5], int, int]
    text: str

    def __post_init__(self) -> None:
        klass, subject, detail = self.status
        if klass not in (4, 5) or not (0 <= subject <= 999 and 0 <= detail <= 999):
            raise ValueError(f"bad DSN status {self.status!r}")
        if "\n" in self.text or "\r" in self.text:
            raise ValueError("DSN text must be one line")

    @property
    def temporary(self) -> bool:
        return self.status[0] == 4

    def line(self) -> str:
        return "{}.{}.{} {}".format(*self.status, self.text)


class ReportKind(enum.StrEnum):
    VIRUS_FOUND = "virus-found"
    SCANNER_FAILED = "scanner-failed"


@dataclass(frozen=True)
class Decision:
    """The policy's answer for one message."""

    verdict: Verdict
    action: Action
    headers: tuple[tuple[str, str], ...] = ()
    dsn: Dsn | None = None
    report: ReportKind | None = None
    warnings: tuple[str, ...] = field(default=())
    subject_tag: str = ""  # delivered spam: put this before its Subject (subjecttag.tag)
    sender_rule: str = ""  # the [senders] entry that decided: "allow ENTRY" or "block ENTRY"


@dataclass(frozen=True)
class SenderHits:
    """The [senders] entries the envelope sender matched (None: no match)."""

    allow: str | None = None
    block: str | None = None


@dataclass(frozen=True)
class Group:
    """Recipients of one message whose policy gives the same decision: one action carries it out."""

    recipients: tuple[str, ...]
    decision: Decision
