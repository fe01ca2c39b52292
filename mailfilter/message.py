"""Raw message bytes: split the header, drop spoofed fields, add ours, read a few fields safely.

We never re-serialize a message through the `email` package: what we deliver
is the bytes we received, minus the fields we remove, plus the fields we add.
Values we read for logs and reports are made safe to print: no control
characters, no line breaks, bounded length.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Enough of a message to hold any sane header section; only fields from it are read.
HEAD_LIMIT = 256 * 1024

# Fields a scanner adds. Any copy that arrives with the message is spoofed.
OWN_FIELD = re.compile(rb"^x-(spam|virus)-[!-9;-~]*$", re.IGNORECASE)
_FIELD_NAME = re.compile(rb"^([!-9;-~]+)[ \t]*:")
# C0, DEL and C1 controls, line/paragraph separators, bidi controls (which reorder a terminal
# line), and lone surrogates (undecodable bytes smuggled through argv or surrogateescape).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True)
class Parsed:
    """A message split the way Postfix reads it: leading mbox "From " lines, header fields
    (each with its folded lines), and the rest."""

    fields: tuple[bytes, ...]
    rest: bytes  # the empty separator line and the body, as received
    eol: bytes
    envelope_lines: tuple[bytes, ...] = ()  # leading "From " lines (pipe flag F, mbox files)

    def field_name(self, raw_field: bytes) -> bytes | None:
        m = _FIELD_NAME.match(raw_field)
        return m.group(1).lower() if m else None

    def values(self, name: str) -> list[bytes]:
        """Unfolded raw values of every field called NAME, in order."""
        wanted = name.lower().encode("ascii")
        out = []
        for f in self.fields:
            if self.field_name(f) == wanted:
                value = f.split(b":", 1)[1]
                out.append(re.sub(rb"\r?\n[ \t]", b" ", value).strip())
        return out


def parse(raw: bytes) -> Parsed:
    """Split RAW at the first empty line; fold continuation lines into their field.

    Lines end at LF (a CR before it belongs to the line end; any other CR is
    data), as Postfix reads them. A line in the header that is neither a field
    nor a continuation (malformed input) ends the header: the rest is body.
    """
    eol = b"\r\n" if b"\r\n" in raw[:4096] else b"\n"
    lines = raw.split(b"\n")
    lines = [line + b"\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
    envelope_lines: list[bytes] = []
    fields: list[bytes] = []
    pos = 0
    for line in lines:
        if line in (b"\n", b"\r\n"):
            break
        if line.startswith(b"From ") and not fields:  # only before the first field, as Postfix's sendmail
            envelope_lines.append(line)
        elif line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        elif _FIELD_NAME.match(line):
            fields.append(line)
        else:
            break
        pos += len(line)
    return Parsed(tuple(fields), raw[pos:], eol, tuple(envelope_lines))


def rewrite(raw: bytes, add: tuple[tuple[str, str], ...]) -> bytes:
    """RAW without spoofed X-Spam-*/X-Virus-* fields, with ADD prepended (after any leading "From " lines)."""
    msg = parse(raw)
    kept = [f for f in msg.fields if not _is_own(msg, f)]
    if kept and not kept[-1].endswith(b"\n"):
        kept[-1] += msg.eol  # a header-only message without a final newline
    new = [f"{name}: {header_value(value)}".encode("ascii", "replace") + msg.eol for name, value in add]
    rest = msg.rest
    if not msg.fields and not rest.startswith((b"\n", b"\r\n")) and rest:
        rest = msg.eol + rest  # no header at all: keep the body a body
    envelope = list(msg.envelope_lines)
    if envelope and not envelope[-1].endswith(b"\n"):
        envelope[-1] += msg.eol  # a lone "From " line without a final newline
    return b"".join([*envelope, *new, *kept]) + rest


def _is_own(msg: Parsed, raw_field: bytes) -> bool:
    name = msg.field_name(raw_field)
    return name is not None and OWN_FIELD.match(name) is not None


def header_value(value: str, limit: int = 900) -> str:
    """A value safe to put in a header we write: printable ASCII, one line, bounded."""
    value = _ASCII_CONTROL.sub(" ", value.replace("\t", " "))
    value = value.encode("ascii", "replace").decode("ascii")
    return value[:limit]


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 256 else f"\\u{code:04x}"


def printable(text: str, limit: int = 500) -> str:
    """TEXT safe to print on a terminal or in a report: control characters escaped, one line."""
    out = _CONTROL.sub(_escape, text)
    if len(out) > limit:
        out = out[:limit] + "..."
    return out


def decoded(value: bytes) -> str:
    """A raw header value as text: RFC 2047 words decoded where valid, raw 8-bit as UTF-8 or Latin-1."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        text = value.decode("latin-1")
    if "=?" not in text:
        return text
    from email.errors import MessageError
    from email.header import decode_header, make_header

    try:
        return str(make_header(decode_header(text)))
    except (MessageError, ValueError, LookupError, UnicodeError, AssertionError, IndexError):
        return text


def subject(msg: Parsed) -> str:
    values = msg.values("subject")
    return printable(decoded(values[0])) if values else ""


def message_id(msg: Parsed) -> str:
    values = msg.values("message-id")
    return printable(decoded(values[0]), 200) if values else ""


def received_chain(msg: Parsed, limit: int = 30) -> list[str]:
    return [printable(decoded(v), 400) for v in msg.values("received")[:limit]]
