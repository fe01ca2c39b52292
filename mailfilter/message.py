"""Raw message bytes: split the header, drop spoofed fields, add ours, read a few fields safely.

We never re-serialize a message through the `email` package: what we deliver
is the bytes we received, minus the fields we remove, plus the fields we add.
Values we read for logs and reports are made safe to print: no control
characters, no line breaks, bounded length.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from .record import dataclass
from .spool import CHUNK

if TYPE_CHECKING:
    from .spool import Spool
    from .subjecttag import SubjectEdit

# Enough of a message to hold any sane header section; only fields from it are read.
HEAD_LIMIT = 256 * 1024

# Fields a scanner adds. Any copy that arrives with the message is spoofed.
# Our fields: X-Spam-*, X-Virus-* and X-Mailfilter-Uninspected (not X-Mailfilter-Released, which a release adds).
OWN_FIELD = re.compile(rb"^(?:x-(?:spam|virus)-[!-9;-~]*|x-mailfilter-uninspected)$", re.IGNORECASE)
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
            m = _FIELD_NAME.match(f)
            if m and m.group(1).lower() == wanted:
                out.append(_unfolded(f[m.end() :]).strip())
        return out


def _unfolded(value: bytes) -> bytes:
    """re.sub(rb"\r?\n[ \t]", b" ", VALUE) for a field's value, without a call per fold: in a field every
    line end but the last is followed by a blank, and every CRLF is a line end."""
    return value.replace(b"\r\n", b"\n").replace(b"\n ", b" ").replace(b"\n\t", b" ")


# The same test as _FIELD_NAME, for pattern.match(text, pos, endpos) (where ^ would not match).
_FIELD_AT = re.compile(rb"[!-9;-~]+[ \t]*:")
# Where a run of continuation lines ends: the first line end not followed by a blank. Found by the C regex
# engine in one search, never joined in a loop.
_FOLD_END = re.compile(rb"\n(?![ \t])")


def _eol(head: bytes) -> bytes:
    return b"\r\n" if b"\r\n" in head[:4096] else b"\n"


def _split(raw: bytes) -> tuple[list[bytes], list[bytes], int]:
    """(leading "From " lines, header fields, offset of the rest) of RAW, in time linear in the header:
    each line is found with bytes.find, each field with its folded lines is one slice."""
    envelope: list[bytes] = []
    fields: list[bytes] = []
    pos, size = 0, len(raw)
    while pos < size:
        nl = raw.find(b"\n", pos)
        end = size if nl < 0 else nl + 1
        if end - pos <= 2 and raw[pos:end] in (b"\n", b"\r\n"):
            break
        if not fields and raw.startswith(b"From ", pos):  # only before the first field, as Postfix's sendmail
            envelope.append(raw[pos:end])
        elif _FIELD_AT.match(raw, pos, end):
            if nl >= 0:
                m = _FOLD_END.search(raw, nl)
                end = m.end() if m else size  # no match: the last line is a continuation without a newline
            fields.append(raw[pos:end])
        else:
            break
        pos = end
    return envelope, fields, pos


def parse(raw: bytes) -> Parsed:
    """Split RAW at the first empty line; fold continuation lines into their field.

    Lines end at LF (a CR before it belongs to the line end; any other CR is
    data), as Postfix reads them. A line in the header that is neither a field
    nor a continuation (malformed input) ends the header: the rest is body.
    """
    envelope, fields, pos = _split(raw)
    return Parsed(tuple(fields), raw[pos:], _eol(raw), tuple(envelope))


def _ours(add: tuple[tuple[str, str], ...], eol: bytes, subject: SubjectEdit | None) -> bytes:
    out = b"".join(f"{name}: {header_value(value)}".encode("ascii", "replace") + eol for name, value in add)
    if subject is not None:
        out += _raw_field(b"Subject", subject.subject, eol)
        if subject.previous is not None:
            out += _raw_field(b"X-Spam-Prev-Subject", subject.previous, eol)
    return out


def _raw_field(name: bytes, value: bytes, eol: bytes) -> bytes:
    value = raw_value(value)
    return name + (b": " + value if value else b":") + eol


# A line end that does not fold (CR LF or LF not followed by a blank), or a CR that is not part of a fold.
_BREAK = re.compile(rb"\r?\n(?![ \t])|\r(?!\n[ \t])")
# A fold that starts a line of blanks only (which some readers take for the end of the header).
_BLANK_LINE = re.compile(rb"\r?\n(?=[ \t]*(?:\r?\n|\Z))")


def raw_value(value: bytes) -> bytes:
    """VALUE, raw bytes of a field we write (8-bit kept), made unable to end its field: folds (CR LF or LF,
    then a blank) are kept, any other CR or LF becomes a space, and a fold that would start a line of blanks
    only is dropped."""
    if b"\r" in value or b"\n" in value:
        value = _BLANK_LINE.sub(b"", _BREAK.sub(b" ", value))
    return value


def is_subject(raw_field: bytes) -> bool:
    m = _FIELD_NAME.match(raw_field)
    return m is not None and m.group(1).lower() == b"subject"


def rewrite(raw: bytes, add: tuple[tuple[str, str], ...], *, subject: SubjectEdit | None = None) -> bytes:
    """RAW without spoofed X-Spam-*/X-Virus-* fields, with ADD prepended (after any leading "From " lines).

    With SUBJECT, every Subject field of RAW is dropped too, and SUBJECT's Subject and X-Spam-Prev-Subject
    are written as raw bytes after ADD. For a message in a Spool, rewritten() gives the same bytes without
    holding the body in memory."""
    envelope, fields, pos = _split(raw)
    eol = _eol(raw)
    kept = [f for f in fields if not _own(f) and not (subject is not None and is_subject(f))]
    if kept and not kept[-1].endswith(b"\n"):
        kept[-1] += eol  # a header-only message without a final newline
    rest = memoryview(raw)[pos:]
    if not fields and rest and raw[pos : pos + 1] != b"\n" and raw[pos : pos + 2] != b"\r\n":
        kept.append(eol)  # no header at all: keep the body a body
    if envelope and not envelope[-1].endswith(b"\n"):
        envelope[-1] += eol  # a lone "From " line without a final newline
    return b"".join([*envelope, _ours(add, eol, subject), *kept, rest])


# What _head() says about a line (or a run of continuation lines).
_BLANK, _FROM, _FOLDED, _FIELD, _OWN, _OPEN, _SUBJECT = 1, 2, 4, 8, 16, 32, 64  # _OPEN: the message ends without a newline
_OWN_AT = re.compile(rb"x-(?:spam|virus)-|x-mailfilter-uninspected[ \t:]", re.IGNORECASE)  # OWN_FIELD, at a field line start
_SUBJECT_AT = re.compile(rb"subject[ \t:]", re.IGNORECASE)  # a field line whose name is Subject (8 bytes: one window)
_NAME_RUN = re.compile(rb"[!-9;-~]*")
_BLANK_RUN = re.compile(rb"[ \t]*")


def rewritten(
    spool: Spool, add: tuple[tuple[str, str], ...], window: int = CHUNK, *, subject: SubjectEdit | None = None
) -> Iterator[bytes]:
    """rewrite() of the message in SPOOL, as chunks of about CHUNK bytes, never holding more than a few.

    The header is read a WINDOW at a time (a line longer than that is scanned,
    not held) and what we keep of it is copied from the spool, as is the body.
    """
    pieces, size = [], 0  # small pieces are joined: fewer, larger writes to sendmail
    for piece in _pieces(spool, add, window, subject):
        pieces.append(piece)
        size += len(piece)
        if size >= CHUNK:
            yield b"".join(pieces)
            pieces, size = [], 0
    if pieces:
        yield b"".join(pieces)


def _pieces(spool: Spool, add: tuple[tuple[str, str], ...], window: int, subject: SubjectEdit | None) -> Iterator[bytes]:
    eol = _eol(spool.read(4096))
    drop = _OWN | (_SUBJECT if subject is not None else 0)
    copied = 0  # the spool's bytes before this offset are written or dropped
    fields = ours = dropping = is_open = False
    for start, end, kind, base, data in _head(spool, window):
        if kind & _FROM and not fields:
            is_open = bool(kind & _OPEN)
            continue
        if not ours:
            yield from _copy(spool, copied, start, base, data)
            yield _ours(add, eol, subject)
            copied, ours = start, True
        if kind & _FOLDED and fields:
            if dropping:
                copied = end
            is_open = not dropping and bool(kind & _OPEN)
            continue
        if kind & _FIELD:
            fields, dropping = True, bool(kind & drop)
            if dropping:
                yield from _copy(spool, copied, start, base, data)
                copied = end
            is_open = not dropping and bool(kind & _OPEN)
            continue
        if not fields and not kind & _BLANK:
            yield from _copy(spool, copied, start, base, data)
            yield eol  # no header at all: keep the body a body
            copied = start
        is_open = False
        break
    yield from spool.chunks(copied)
    if is_open:
        yield eol  # a last header line without a final newline
    if not ours:
        yield _ours(add, eol, subject)  # nothing but "From " lines, or nothing at all


def _copy(spool: Spool, start: int, end: int, base: int, data: bytes) -> Iterable[bytes]:
    """The spool's bytes from START to END: from DATA (the spool's bytes at BASE) if it holds them."""
    if base <= start and end <= base + len(data):
        return (data[start - base : end - base],) if start < end else ()
    return spool.chunks(start, end)


def _head(spool: Spool, window: int) -> Iterator[tuple[int, int, int, int, bytes]]:
    """(start, end, kind, base, data) of each header line of SPOOL, until the caller stops; consecutive
    continuation lines come as one; DATA is the window read at BASE. Lines are classified as _split()
    does; only WINDOW bytes are held at a time."""
    pos, size, window = 0, spool.size, max(window, 32)  # 32: enough to tell "From " and "X-Mailfilter-Uninspected:" lines
    while pos < size:
        data = spool.read_at(pos, window)
        if not data:
            raise OSError(errno.EIO, f"the spool ends at {pos} bytes, not {size}")
        last = pos + len(data) >= size
        i = 0
        while i < len(data):
            nl = data.find(b"\n", i)
            if nl < 0 and not last:
                if i == 0:  # a line longer than the window
                    end, kind = _long_line(spool, pos, data)
                    yield pos, end, kind, pos, data
                    i = end - pos
                break
            end = len(data) if nl < 0 else nl + 1
            if data[i] in b" \t":
                if nl >= 0:  # on to the end of the run, or of the last complete line in DATA
                    m = _FOLD_END.search(data, nl)
                    end = m.end() if m else (len(data) if last else data.rfind(b"\n") + 1)
                kind = _FOLDED
            elif end - i <= 2 and data[i:end] in (b"\n", b"\r\n"):
                kind = _BLANK
            else:
                kind = _FROM if data.startswith(b"From ", i) else 0
                if _FIELD_AT.match(data, i, end):
                    kind |= _FIELD | (_OWN if _OWN_AT.match(data, i) else 0) | (_SUBJECT if _SUBJECT_AT.match(data, i) else 0)
            if last and end == len(data) and not data.endswith(b"\n"):
                kind |= _OPEN
            yield pos + i, pos + end, kind, pos, data
            i = end
        pos += i


def _long_line(spool: Spool, start: int, data: bytes) -> tuple[int, int]:
    """(end, kind) of the line at START that fills DATA and goes on: read on to its end, a chunk at a time."""
    if data[0] in b" \t":
        kind, is_field = _FOLDED, False
    else:
        kind, is_field = (_FROM if data.startswith(b"From ") else 0), None
    own = (_OWN if _OWN_AT.match(data) else 0) | (_SUBJECT if _SUBJECT_AT.match(data) else 0)  # a window holds 32 bytes
    state, offset = 0, start  # state: 0 no name byte yet, 1 in the name, 2 in the blanks before the colon
    while True:
        if is_field is None:
            is_field, state = _field_step(data, state)
        nl = data.find(b"\n")
        if nl >= 0:
            end = offset + nl + 1
            break
        offset += len(data)
        data = spool.read_at(offset, CHUNK)
        if not data:
            end, kind = offset, kind | _OPEN
            break
    return end, kind | (_FIELD | own if is_field else 0)


def _field_step(data: bytes, state: int) -> tuple[bool | None, int]:
    """_FIELD_AT, one piece of a line at a time: True or False once decided, None while it may still match."""
    i = 0
    if state < 2:
        i = _NAME_RUN.match(data).end()
        state = 1 if i or state else 0
        if i == len(data):
            return None, state
        if state == 0:
            return False, state
        state = 2
    i = _BLANK_RUN.match(data, i).end()
    if i == len(data):
        return None, state
    return data[i] == 0x3A, state


def _own(raw_field: bytes) -> bool:
    m = _FIELD_NAME.match(raw_field)
    return m is not None and OWN_FIELD.match(m.group(1).lower()) is not None


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
    out = _CONTROL.sub(_escape, text[: limit + 1])  # each character gives one or more: the rest is cut anyway
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
