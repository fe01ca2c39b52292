"""Fuzz targets as plain functions: bytes in, AssertionError out when a property breaks.

Each target turns the fuzzer's bytes into inputs for one part of mailfilter and
checks properties beyond "no exception". The same functions serve fuzz/run.py
(under atheris, coverage-guided) and tests/test_fuzz_regressions.py (plain
pytest, replaying the inputs kept in fuzz/regressions/TARGET/ and each target's seeds),
so nothing here imports atheris.

Targets:
  headers  message.parse and message.rewrite on a raw message
  text     message.printable, header_value, decoded, subject, message_id, received_chain
  args     doors.pipe.parse_args on an argv
  report   actions.report.render of a Context built from a fuzzed envelope and message
  mime     mimewalk.walk and decode (the MIME walk behind the deep virus scan), and attachments.inspect, on a raw message
"""

from __future__ import annotations

import base64
import io
import os
import re
import unicodedata
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from mailfilter import attachments, message, mimewalk
from mailfilter.actions import report
from mailfilter.config import ReportConfig
from mailfilter.doors import pipe
from mailfilter.model import (
    SCANNER_CLAMAV,
    SCANNER_SPAMD,
    Action,
    AttachmentReport,
    Cause,
    Decision,
    Envelope,
    ReportKind,
    ScanFailure,
    ScanResults,
    SpamReport,
    Verdict,
    VirusReport,
)
from mailfilter.spool import Spool


class Reader:
    """The fuzzer's bytes as a stream of small values, consumed front to back.

    Like atheris.FuzzedDataProvider, but deterministic without atheris, so a
    kept input replays the same way in the normal test suite.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def chunk(self) -> bytes:
        """A length-prefixed piece (one length byte; 255 means the next two bytes say it)."""
        size = self.byte()
        if size == 255:
            size = self.byte() << 8 | self.byte()
        piece = self.data[self.pos : self.pos + size]
        self.pos += len(piece)
        return piece

    def text(self) -> str:
        """A piece as Python's argv holds it: UTF-8, other bytes as lone surrogates."""
        return os.fsdecode(self.chunk().replace(b"\0", b""))

    def rest(self) -> bytes:
        piece = self.data[self.pos :]
        self.pos = len(self.data)
        return piece


def pack(*values: bytes | int) -> bytes:
    """What Reader reads back: an int as byte(), bytes as chunk(); for writing seeds by hand."""
    out = b""
    for value in values:
        if isinstance(value, int):
            out += bytes([value])
        elif len(value) < 255:
            out += bytes([len(value)]) + value
        else:
            out += b"\xff" + len(value).to_bytes(2, "big") + value
    return out


# --- how Postfix reads a message -------------------------------------------------------------------

_HEADER = re.compile(rb"^([!-9;-~]+)[ \t]*:")  # cleanup's is_header(): a name of printable ASCII, blanks, a colon
_FROM_LINE = re.compile(rb"^>*From ")


def smtp_lines(raw: bytes) -> list[bytes]:
    """RAW as smtpd reads it: a line ends at LF, a CR before the LF goes with it, any other CR is data."""
    lines = raw.split(b"\n")
    last = lines.pop()
    return [line.removesuffix(b"\r") for line in lines] + ([last] if last else [])


def sendmail_lines(raw: bytes) -> list[bytes]:
    """RAW as Postfix's sendmail reads it (sendmail.c, enqueue()): leading From_ and >From_ lines are dropped,
    and a CR before the LF is stripped from every line only if the first line ends in CR."""
    lines = raw.split(b"\n")
    last = lines.pop()
    lines += [last] if last else []
    while lines and _FROM_LINE.match(lines[0]):
        lines.pop(0)
    if lines and lines[0].endswith(b"\r"):
        lines = [line.removesuffix(b"\r") for line in lines]
    return lines


def fields_and_body(lines: list[bytes]) -> tuple[list[tuple[str, bytes]], bytes]:
    """LINES split as cleanup does: (name, value) per header field, then the body with CRLF line ends.

    Continuation lines are joined to their field with LF; the first line that is
    neither a field nor a continuation ends the header and begins the body.
    """
    fields: list[tuple[str, bytes]] = []
    start = len(lines)
    for i, line in enumerate(lines):
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b"\n" + line)
        elif m := _HEADER.match(line):
            fields.append((m.group(1).decode("ascii"), line[m.end() :].lstrip(b" \t")))
        else:
            start = i + 1 if line == b"" else i
            break
    return fields, b"".join(line + b"\r\n" for line in lines[start:])


# --- headers: parse and rewrite -----------------------------------------------------------------

OURS = (
    ("X-Spam-Flag", "NO"),
    ("X-Spam-Score", "0.3"),
    ("X-Spam-Status", "No, score=0.3 required=5.0 tests=NONE"),
    ("X-Virus-Scanned", "ClamAV using mailfilter"),
    ("X-Virus-Status", "Clean"),
)
_OWN = re.compile(rb"^x-(spam|virus)-", re.IGNORECASE)


def _body(parsed: message.Parsed) -> bytes:
    """The body: what follows the header, without the empty line that ends the header, if there is one."""
    for separator in (b"\n", b"\r\n"):  # lines end at LF, as Postfix reads them
        if parsed.rest.startswith(separator):
            return parsed.rest[len(separator) :]
    return parsed.rest


def headers(data: bytes) -> None:
    """parse() splits without losing a byte; rewrite() puts each of our fields once at the top, keeps no
    spoofed copy (as mailfilter and as Postfix read the result), and keeps the body."""
    parsed = message.parse(data)
    assert b"".join(parsed.envelope_lines + parsed.fields) + parsed.rest == data, "parse() lost or invented bytes"
    out = message.rewrite(data, OURS)
    again = message.parse(out)
    lines = [line.rstrip(b"\r\n") for line in again.envelope_lines]  # a last one without a newline gains one
    assert lines == [line.rstrip(b"\r\n") for line in parsed.envelope_lines], "rewrite() moved the leading From_ lines"
    fields = list(again.fields)
    ours = [f"{name}: {value}".encode() + parsed.eol for name, value in OURS]
    assert fields[: len(OURS)] == ours, f"our fields are not at the top: {fields[: len(OURS)]!r}"
    spoofed = [f for f in fields[len(OURS) :] if _OWN.match(f)]
    assert not spoofed, f"spoofed fields survive rewrite(), as mailfilter reads it: {spoofed!r}"
    assert _body(again) == _body(parsed), "rewrite() changed the body"
    names = [name.lower() for name, _ in fields_and_body(sendmail_lines(out))[0]]
    assert names[: len(OURS)] == [name.lower() for name, _ in OURS], f"Postfix does not see our fields first: {names!r}"
    spoofed = [name for name in names[len(OURS) :] if _OWN.match(name.encode())]
    assert not spoofed, f"spoofed fields survive rewrite(), as Postfix reads it: {spoofed!r}"


# --- text: what is made safe to print -------------------------------------------------------------

_UNPRINTABLE = {"Cc", "Zl", "Zp", "Cs"}  # controls, line and paragraph separators, lone surrogates
# Bidi controls (category Cf) reorder a terminal line: printable() escapes them too.
_BIDI = set("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _unprintable(c: str) -> bool:
    return unicodedata.category(c) in _UNPRINTABLE or c in _BIDI


def check_printable(out: str, limit: int, what: str) -> None:
    """OUT is one line of printable text, encodable as UTF-8, at most LIMIT characters plus '...'."""
    bad = [c for c in out if _unprintable(c)]
    assert not bad, f"{what} let through {bad[:5]!r}"
    assert len(out) <= limit + 3, f"{what} is {len(out)} characters long (limit {limit})"


def _as_text(data: bytes) -> str:
    """DATA as text three ways (the first byte chooses), so that every code point can occur."""
    mode, payload = (data[0] % 3, data[1:]) if data else (0, b"")
    if mode == 0:
        return payload.decode("utf-8", "surrogateescape")
    if mode == 1:
        return payload.decode("latin-1")
    return payload[: len(payload) // 2 * 2].decode("utf-16-le", "surrogatepass")


def text(data: bytes) -> None:
    """printable(), header_value() and the field readers give one safe line, whatever the input."""
    value = _as_text(data)
    for limit in (40, 500):
        out = message.printable(value, limit)
        check_printable(out, limit, "printable()")
        if len(value) <= limit and not any(_unprintable(c) for c in value) and "\\" not in value:
            assert out == value, "printable() changed text that was already printable"
    field = message.header_value(value, 100)
    assert re.fullmatch(r"[ -~]{0,100}", field), f"header_value() gave {field!r}"
    assert isinstance(message.decoded(data), str)  # raw text for printable(), but never an exception
    parsed = message.parse(data)
    check_printable(message.subject(parsed), 500, "subject()")
    check_printable(message.message_id(parsed), 200, "message_id()")
    chain = message.received_chain(parsed)
    assert len(chain) <= 30
    for line in chain:
        check_printable(line, 400, "received_chain()")


# --- args: the pipe door's argv -------------------------------------------------------------------


def args(data: bytes) -> None:
    """parse_args() raises nothing but UsageError and HelpRequested, and takes the sender after -f verbatim.

    The first byte chooses: an arbitrary argv (NUL-separated, as the kernel hands it over), or a
    well-formed one built around fuzzed values, which must come back exactly.
    """
    reader = Reader(data)
    if reader.byte() % 2:
        argv = [os.fsdecode(arg) for arg in reader.rest().split(b"\0")]
        try:
            parsed = pipe.parse_args(argv)
        except (pipe.UsageError, pipe.HelpRequested):
            return
        end = len(argv) - len(parsed.envelope.recipients) - 1
        assert argv[end] == "--" and list(parsed.envelope.recipients) == argv[end + 1 :] and parsed.envelope.recipients
        senders = [i for i in range(end - 1) if argv[i] == "-f" and argv[i + 1] == parsed.envelope.sender]
        assert senders, f"sender {parsed.envelope.sender!r} does not follow a -f in {argv!r}"
        return
    sender, queue_id, config = reader.text(), reader.text(), reader.text()
    recipients = [reader.text() for _ in range(1 + reader.byte() % 3)]
    argv = ["--config", config, "pipe", "-q", queue_id, "-f", sender, "--", *recipients]
    parsed = pipe.parse_args(argv)
    assert parsed.config == config
    assert parsed.envelope == Envelope(sender, tuple(recipients), queue_id or None), parsed


# --- report: the admin's mail ---------------------------------------------------------------------

REPORT_CONFIG = ReportConfig(admin="admin@example.net", sender="mailfilter@example.net")
REPORT_FIELDS = [
    b"From",
    b"To",
    b"Subject",
    b"Date",
    b"Message-ID",
    b"Auto-Submitted",
    b"MIME-Version",
    b"Content-Type",
    b"Content-Transfer-Encoding",
]
HOSTNAME = "mx1.example.net"
NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)


def _context(reader: Reader) -> report.Context:
    """A report Context from fuzzed envelope, scanner answers and message bytes."""
    envelope = Envelope(reader.text(), tuple(reader.text() for _ in range(1 + reader.byte() % 3)), reader.text() or None)
    choice = reader.byte()
    detail = reader.text()
    spam = SpamReport(0.5, 5.0, ("NONE",))
    if choice % 2:
        scanner = (SCANNER_CLAMAV, SCANNER_SPAMD)[choice // 2 % 2]
        cause = list(Cause)[choice // 4 % len(Cause)]
        failure = ScanFailure(scanner, cause, detail, code=reader.byte() if choice & 16 else None)
        results = ScanResults(failure if scanner == SCANNER_SPAMD else spam, failure if scanner == SCANNER_CLAMAV else VirusReport())
        action = Action.TEMPFAIL if choice & 32 else Action.DELIVER
        decision = Decision(Verdict.ERROR, action, report=ReportKind.SCANNER_FAILED)
        quarantine_id, suppressed = None, reader.byte()
    else:
        results = ScanResults(spam, VirusReport((detail or "Eicar-Test-Signature",), 1))
        action = Action.QUARANTINE if choice & 2 else Action.REJECT
        decision = Decision(Verdict.VIRUS, action, report=ReportKind.VIRUS_FOUND)
        quarantine_id, suppressed = ("20261127T120000Z-0123456789" if action is Action.QUARANTINE else None), 0
    with Spool.of(reader.rest()) as spool:
        return report.context(envelope, spool, results, decision, quarantine_id, suppressed)


def _expected_labels(ctx: report.Context) -> list[str]:
    """The beginning of each body line, in order, as report.body() writes them."""
    if ctx.decision.report is ReportKind.VIRUS_FOUND:
        top = ["mailfilter on ", "The message was not delivered; ", "", "Virus:          ", "Quarantine id:  "]
    else:
        failure = ctx.results.failures[0]
        top = ["mailfilter on ", "The message was ", "", "Scanner:        ", "Problem:        ", "Error:          "]
        top += ["Exit code:      "] if failure.scanner == SCANNER_CLAMAV else []
        top += ["What to check:  "] + (["Suppressed:     "] if ctx.suppressed else [])
    message_lines = ["Envelope from:  <", "Envelope to:    ", "Queue id:       ", "Subject:        ", "Message-ID:     "]
    tail = ["Size:           ", "", "Received chain (newest first):"] + ["  "] * max(1, len(ctx.received))
    return [*top, "", "The message", *message_lines, *tail]


def report_mail(data: bytes) -> None:
    """render() gives exactly our header fields, and a body whose every line is one report.body() writes:
    nothing from the envelope or the message can add a line, a field or a control character."""
    ctx = _context(Reader(data))
    mail = report.render(ctx, REPORT_CONFIG, HOSTNAME, NOW)
    head, separator, body = mail.partition(b"\n\n")
    assert separator, "no empty line after the header"
    lines = head.split(b"\n")
    assert [line.split(b":", 1)[0] for line in lines] == REPORT_FIELDS, lines
    assert all(re.fullmatch(rb"[!-9;-~]+: [ -~]*", line) for line in lines), lines
    text_lines = body.decode("utf-8").split("\n")
    assert text_lines.pop() == "", "the body does not end with a line feed"
    labels = _expected_labels(ctx)
    assert len(text_lines) == len(labels), f"{len(text_lines)} body lines, expected {len(labels)}: {text_lines!r}"
    for line, label in zip(text_lines, labels, strict=True):
        assert line.startswith(label) and (label or not line), f"body line {line!r} should begin with {label!r}"
        check_printable(line, len(line), "a report line")


def mime(data: bytes) -> None:
    """mimewalk.walk and decode on a raw message: no exception, within its limits, every leaf inside the message;
    attachments.inspect on it: a report, no bug caught inside, its words printable and bounded."""
    reader = Reader(data)
    choice = reader.byte()
    limits = mimewalk.Limits(depth=1 + choice % 16, parts=1 + reader.byte() % 64, bytes=1 + reader.byte() * 64, seconds=5)
    raw = reader.rest()
    if choice & 0x80:
        raw = raw.replace(b"\n", b"\r\n")
    tree = mimewalk.walk(raw, limits)
    assert tree.depth <= limits.depth and tree.parts <= limits.parts + 1, tree
    assert len(set(tree.problems)) == len(tree.problems) and all(p.isprintable() for p in tree.problems), tree.problems
    assert not any(p.startswith("MIME structure not readable") for p in tree.problems), tree.problems  # a bug in the walk
    for leaf in tree.leaves:
        assert 0 <= leaf.start <= leaf.end <= len(leaf.source), leaf
        assert leaf.depth <= limits.depth and leaf.where().isprintable(), leaf.where()
        decoded = b"".join(mimewalk.decode(leaf))
        assert len(decoded) <= leaf.size, (leaf.encoding, len(decoded), leaf.size)
    if leaf_bytes := sum(leaf.size for leaf in tree.leaves if leaf.source is raw and "uuencoded" not in leaf.content_type):
        assert leaf_bytes <= limits.bytes, (leaf_bytes, limits)
    again = mimewalk.walk(raw, limits)
    assert [(leaf.path, leaf.start, leaf.end) for leaf in again.leaves] == [(leaf.path, leaf.start, leaf.end) for leaf in tree.leaves]
    for leaf in tree.leaves:
        assert leaf.start <= leaf.end and leaf.header_start <= leaf.header_end <= leaf.start, leaf
    rules = attachments.Rules(archive_depth=choice % 4, archive_members=1 + choice % 50, limits=limits)
    report = attachments.inspect(raw, rules)
    assert isinstance(report, AttachmentReport), report
    assert not any(p.startswith("attachment check failed") for p in report.uninspected), report.uninspected  # a bug inside
    assert all(p.isprintable() for p in report.uninspected) and len(report.uninspected) <= attachments.MAX_PROBLEMS, report
    assert all(b.part and b.reason.isprintable() and isinstance(b.type, str) for b in report.banned), report.banned
    assert len(report.banned) <= len(tree.leaves) * 2 + rules.archive_members * 2, len(report.banned)


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buf.getvalue()


_ZIPS = _zip({"invoice.pdf.exe": b"MZ" + bytes(62), "inner.zip": _zip({"x.js": b"WScript.Echo(1)"}), "photo.jpg": b"\xff\xd8\xff"})


@dataclass(frozen=True)
class Target:
    """A fuzz target: its check, the largest input libFuzzer makes for it, and where fuzzing starts."""

    check: Callable[[bytes], None]
    max_len: int  # messages need room; an argv does not
    seeds: tuple[bytes, ...]  # real-looking inputs to mutate from, replayed by the tests too


_MAIL = (
    b"Received: from mx.example.org by mail.example.net\nFrom: alice@example.org\nTo: bob@example.net\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\nMessage-ID: <a@example.org>\nX-Spam-Flag: NO\n\nHello\n"
)
TARGETS = {
    "headers": Target(
        headers,
        16384,
        (_MAIL, _MAIL.replace(b"\n", b"\r\n"), b"From a@b Fri Nov 27\nSubject: x\n\nbody\n", b"X-Virus-Status:\n Clean\n\nb"),
    ),
    "text": Target(
        text,
        4096,
        (b"\x00" + _MAIL, b"\x01Subject: caf\xe9\n\n", b"\x02" + "a\u2028b\x1b[2J".encode("utf-16-le"), b"\x00=?utf-8?b?4oCo?="),
    ),
    "args": Target(
        args,
        1024,
        (
            b"\x01pipe\0-q\x004F2A1C\0-f\0alice@example.org\0--\0bob@example.net",
            b"\x01--config=/etc/m.toml\0-f\0-f\0--\0--",
            pack(0, b"-evil", b"4F2A1C", b"/etc/mailfilter.toml", 1, b"bob@example.net", b"--"),
        ),
    ),
    "report": Target(
        report_mail,
        16384,
        (
            # sender, 2 recipients, queue id, a virus quarantined (choice 2), its name, then the message
            pack(b"alice@example.org", 1, b"bob@example.net", b"carol@example.net", b"4F2A1C", 2, b"Eicar-Test-Signature") + _MAIL,
            # clamd failed (choice 1 + 16: with an exit code + 32: deferred), its error text, code 50, 3 reports held back
            pack(b"alice@example.org", 0, b"bob@example.net", b"", 1 + 16 + 32, b"database initialization error", 50, 3) + _MAIL,
        ),
    ),
    "mime": Target(
        mime,
        16384,
        (
            # depth limit 16, 64 parts, 16 KB: a multipart with a base64 part, a forwarded message and uuencode in text
            bytes([15, 63, 255])
            + b'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b"\n\npreamble\n--b\nContent-Type: text/plain\n\n'
            b"hi\nbegin 644 x.com\n#86)C\n`\nend\n--b\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
            b"aGVsbG8=\n--b\nContent-Type: message/rfc822\n\nContent-Type: text/plain\nContent-Transfer-Encoding: quoted-printable\n\n"
            b"caf=C3=A9=\n\n--b--\nepilogue\n",
            # CRLF line ends (bit 7), depth limit 3: nested multiparts deeper than the limit, one never closed
            bytes([0x82, 10, 10])
            + b'Content-Type: multipart/mixed; boundary="1"\n\n--1\nContent-Type: multipart/mixed; boundary="2"\n\n--2\n'
            b'Content-Type: multipart/digest; boundary="3"\n\n--3\n\nSubject: x\n\nbody\n--3--\n--2\n\n--1--\n',
            # depth 3 (archives 3 deep), 64 parts, 16 KB: attachments named in RFC 2231 and RFC 2047, a zip in a zip
            bytes([3, 63, 255])
            + b'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b"\n\n--b\nContent-Type: text/plain\n\nhi\n--b\n'
            b"Content-Type: application/octet-stream\nContent-Disposition: attachment;\n filename*0*=UTF-8''%E2%82%AC.pdf;\n"
            b' filename*1=".exe"\nContent-Transfer-Encoding: base64\n\nTVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAA=\n--b\n'
            b'Content-Type: application/zip; name="=?UTF-8?B?YXJjaGl2ZS56aXA=?="\nContent-Transfer-Encoding: base64\n\n'
            + base64.encodebytes(_ZIPS)
            + b"--b--\n",
        ),
    ),
}
