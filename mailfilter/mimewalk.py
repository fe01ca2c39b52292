"""The MIME tree of a message, walked by us: its leaf parts, decoded, for a scanner that could not reach them.

clamd parses mail itself, but stops at its MaxRecursion (17 by default) and, unless told
otherwise, then answers OK. walk() finds every leaf part (and the uuencoded files in plain
text) of a message however deep it nests, within Limits on depth, number of parts, bytes and
time; decode() gives a leaf's content in chunks, so that each leaf can be scanned on its own,
at depth zero, as amavisd-new does. What the walk could not reach is said in words
(Tree.problems): the message is then not completely scanned.

Pure, and built for hostile input: no recursion (a stack), regular expressions that are linear
in the input, decoders that never raise, and no exception ever leaves walk() or decode().
Only what scanning needs is parsed: Content-Type (type and boundary) and
Content-Transfer-Encoding; headers are never decoded (a leaf says where its header block
lies, for a reader of its file name: attachments.py).
"""

from __future__ import annotations

import binascii
import re
import time
from collections.abc import Callable, Iterator
from mmap import mmap

from .record import dataclass

Source = bytes | mmap  # what walk() reads: both have find() and work with re

CHUNK = 64 * 1024
BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_NOT_BASE64 = bytes(c for c in range(256) if c not in BASE64_ALPHABET)
# A header line's start: a field name and a colon; a continuation starts with a blank.
_NOT_HEADER = re.compile(rb"^(?![ \t]|[\x21-\x39\x3b-\x7e]+[ \t]*:)", re.M)
_HEADER_END = re.compile(rb"\n\r?\n")
_CONTENT_TYPE = re.compile(rb"^content-type[ \t]*:((?:.*)(?:\n[ \t].*)*)", re.M | re.I)
_ENCODING = re.compile(rb"^content-transfer-encoding[ \t]*:((?:.*)(?:\n[ \t].*)*)", re.M | re.I)
_TYPE = re.compile(rb"\s*([!#-'*+.0-9A-Z^-~-]+)\s*/\s*([!#-'*+.0-9A-Z^-~-]+)", re.I)
_BOUNDARY = re.compile(rb'(?:^|;)\s*boundary\s*=\s*(?:"([^"\r\n]*)"|([^\s;"]+))', re.I)
_UUENCODE_BEGIN = re.compile(rb"^begin(?:-base64)? [0-7]{3,4} [^\r\n]", re.M)
_UUENCODE_END = re.compile(rb"^end[ \t]*\r?$", re.M)
CONTAINERS = (b"message/rfc822", b"message/global")
DECODED = ("base64", "quoted-printable", "x-uuencode", "uuencode", "x-uue")


@dataclass(frozen=True)
class Limits:
    """How far walk() goes: nesting depth, parts (containers and leaves), bytes of leaves in all, seconds."""

    depth: int = 64
    parts: int = 1000
    bytes: int = 256 << 20
    seconds: float = 5.0


@dataclass(frozen=True, eq=False)
class Leaf:
    """A part that holds content: where its (encoded) body lies in SOURCE, and how to decode it."""

    path: str  # the part number, IMAP style: "2.1"; "" for a message that is not multipart
    depth: int  # containers above it
    content_type: str
    encoding: str
    source: Source
    start: int
    end: int
    header_start: int = 0  # where its own header block lies in SOURCE (for its file name); empty for a uuencoded file
    header_end: int = 0

    @property
    def size(self) -> int:
        return self.end - self.start

    def where(self) -> str:
        return f"part {_short(self.path or '1')} ({self.content_type})"


@dataclass(frozen=True)
class Tree:
    """What walk() found: the leaves in message order, the deepest level, the parts, and what it could not reach."""

    leaves: tuple[Leaf, ...]
    depth: int
    parts: int
    problems: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return not self.problems


DEFAULT_LIMITS = Limits()


def walk(data: Source, limits: Limits = DEFAULT_LIMITS, clock: Callable[[], float] = time.monotonic) -> Tree:
    """The MIME tree of DATA (a whole message, LF or CRLF line ends). Never raises."""
    try:
        return _walk(data, limits, clock)
    except Exception as exc:  # noqa: BLE001 - the walk's promise; a bug here is a problem, never a crash
        return Tree((), 0, 0, (f"MIME structure not readable ({type(exc).__name__})",))


def decode(leaf: Leaf) -> Iterator[bytes]:
    """LEAF's content in chunks of at most about CHUNK bytes: base64, quoted-printable and uuencode decoded
    leniently (as mail clients do: junk is skipped), anything else as it is. Never raises."""
    try:
        if leaf.encoding == "base64":
            yield from _base64(leaf.source, leaf.start, leaf.end)
        elif leaf.encoding == "quoted-printable":
            yield from _quoted_printable(leaf.source, leaf.start, leaf.end)
        elif leaf.encoding in ("x-uuencode", "uuencode", "x-uue"):
            yield from _uudecode(leaf.source, leaf.start, leaf.end)
        else:
            for at in range(leaf.start, leaf.end, CHUNK):
                yield bytes(leaf.source[at : min(at + CHUNK, leaf.end)])
    except Exception:  # noqa: BLE001 - what was yielded stands; the rest of a broken leaf is skipped
        return


# --- the walk ----------------------------------------------------------------------------------


def _walk(data: Source, limits: Limits, clock: Callable[[], float]) -> Tree:
    started = clock()
    leaves: list[Leaf] = []
    problems: list[str] = []
    deepest = parts = leaf_bytes = 0
    # (source, start, end, depth, path, default content type); popped last first, so children go on reversed.
    stack: list[tuple[Source, int, int, int, str, bytes]] = [(data, 0, len(data), 0, "", b"text/plain")]
    while stack:
        if clock() - started > limits.seconds:
            problems.append(f"MIME walk stopped after {limits.seconds:g} s")
            break
        source, start, end, depth, path, default = stack.pop()
        if depth > limits.depth:
            problems.append(f"MIME parts nested deeper than {limits.depth} levels")
            continue  # and its siblings, if any, are reported once more: bounded by the part limit
        parts += 1
        if parts > limits.parts:
            problems.append(f"more than {limits.parts} MIME parts")
            break
        deepest = max(deepest, depth)
        ctype, boundary, encoding, body = _entity(source, start, end, default)
        if ctype.startswith(b"multipart/"):
            children = _split(source, body, end, boundary)
            if children is not None:
                child_default = b"message/rfc822" if ctype == b"multipart/digest" else b"text/plain"
                prefix = path + "." if path else ""
                stack.extend(
                    (source, s, e, depth + 1, f"{prefix}{n}" if n else f"{prefix}preamble", child_default if n else b"text/plain")
                    for n, s, e in reversed(children)
                )
                continue
        elif ctype in CONTAINERS:
            inner, inner_start, inner_end = source, body, end
            if encoding in DECODED:  # not allowed for message/*, but seen: decode it, within the byte limit
                if leaf_bytes + (end - body) > limits.bytes:
                    problems.append(f"MIME parts larger than {limits.bytes} bytes in all")
                    continue
                leaf_bytes += end - body
                inner = b"".join(decode(Leaf(path, depth, "", encoding, source, body, end)))
                inner_start, inner_end = 0, len(inner)
            stack.append((inner, inner_start, inner_end, depth + 1, path + ".1" if path else "1", b"text/plain"))
            continue
        if _blank(source, body, end):
            continue
        if leaf_bytes + (end - body) > limits.bytes:
            problems.append(f"MIME parts larger than {limits.bytes} bytes in all")
            break
        leaf_bytes += end - body
        name = _printable(ctype)
        leaves.append(Leaf(path, depth, name, encoding, source, body, end, start, body))
        if encoding not in DECODED:
            leaves.extend(_uuencoded(source, body, end, depth, path, name))
    return Tree(tuple(leaves), deepest, parts, tuple(dict.fromkeys(problems)))


def _entity(source: Source, start: int, end: int, default: bytes) -> tuple[bytes, bytes | None, str, int]:
    """(content type, boundary, transfer encoding, where the body starts) of the entity at START..END."""
    first = bytes(source[start : start + 2])
    if first[:1] == b"\n" or first == b"\r\n":
        header_end, body = start, start + len(first.rstrip(b"\r\n")) + (1 if first[:1] == b"\n" else 2)
    else:
        found = _HEADER_END.search(source, start, end)
        header_end, body = (found.start() + 1, found.end()) if found else (end, end)
        odd = _NOT_HEADER.search(source, start, header_end)
        if odd is not None and odd.start() < header_end:
            header_end = body = odd.start()  # a line that is no header field: the body starts there
    ctype, boundary, encoding = default, None, "7bit"
    match = _CONTENT_TYPE.search(source, start, header_end)
    if match:
        value = bytes(match.group(1))
        parsed = _TYPE.match(value)
        if parsed:
            ctype = (parsed.group(1) + b"/" + parsed.group(2)).lower()
        param = _BOUNDARY.search(value, parsed.end() if parsed else 0)
        if param:
            boundary = param.group(1) if param.group(1) is not None else param.group(2)
    match = _ENCODING.search(source, start, header_end)
    if match:
        encoding = bytes(match.group(1)).strip().lower().decode("ascii", "replace")
    return ctype, boundary, encoding, min(body, end)


def _split(source: Source, start: int, end: int, boundary: bytes | None) -> list[tuple[int, int, int]] | None:
    """The parts of a multipart body at START..END as (number, start, end): the preamble as number 0 (when it
    holds more than blanks), then each part from 1; None when there is no delimiter line at all. Without a
    boundary parameter, or when it delimits nothing, the first line that looks like a delimiter gives it,
    as clamd and mail clients do."""
    regions = _regions(source, start, end, boundary) if boundary else None
    if regions is None:
        guess = _guess_boundary(source, start, end)
        if guess is None or guess == boundary:
            return None
        regions = _regions(source, start, end, guess)
        if regions is None:
            return None
    if _blank(source, regions[0][1], regions[0][2]):
        del regions[0]
    return regions


def _delimiters(source: Source, start: int, end: int, boundary: bytes) -> Iterator[tuple[int, int, bool]]:
    """(start, end, closing) of each delimiter line `--BOUNDARY` or `--BOUNDARY--` (then blanks) in START..END.
    bytes.find, not a regular expression anchored at line starts: that would be tried at every byte."""
    marker = b"\n--" + boundary
    first_line = bytes(source[start : start + 2 + len(boundary)]) == marker[1:]
    at = start - 1 if first_line else source.find(marker, start, end)  # START - 1: a delimiter on the first line
    while at != -1 and at < end:
        line_start = at + 1
        tail = line_start + len(marker) - 1
        line_end = source.find(b"\n", tail, end)
        line_end = end if line_end == -1 else line_end
        rest = bytes(source[tail : min(line_end, tail + 300)])
        closing = rest.startswith(b"--")
        if not rest[2 if closing else 0 :].strip(b" \t\r"):
            yield line_start, line_end, closing
        at = source.find(marker, line_end, end)


def _regions(source: Source, start: int, end: int, boundary: bytes) -> list[tuple[int, int, int]] | None:
    regions: list[tuple[int, int, int]] = []
    opened = start  # where the region before the next delimiter starts
    closed = False
    for line_start, line_end, closing in _delimiters(source, start, end, boundary):
        cut = line_start - 1 if line_start > opened else line_start  # the line end before a delimiter is its own
        if cut > opened and source[cut - 1 : cut] == b"\r":
            cut -= 1
        regions.append((len(regions), opened, max(opened, cut)))
        opened = min(line_end + 1, end)
        if closing:
            closed = True
            break
    if not regions:
        return None
    if not closed:
        regions.append((len(regions), opened, end))  # never closed: the last part runs to the end
    return regions


def _guess_boundary(source: Source, start: int, end: int) -> bytes | None:
    """The boundary of the first line in START..END that starts with `--`."""
    if bytes(source[start : start + 2]) == b"--":
        at = start
    else:
        found = source.find(b"\n--", start, end)
        if found == -1:
            return None
        at = found + 1
    stop = min(end, at + 300)
    line_end = source.find(b"\n", at, stop)
    line = bytes(source[at + 2 : stop if line_end == -1 else line_end]).rstrip(b" \t\r")
    line = line.removesuffix(b"--")
    return line if 0 < len(line) <= 200 else None


def _blank(source: Source, start: int, end: int) -> bool:
    return not any(bytes(source[at : min(at + CHUNK, end)]).strip() for at in range(start, end, CHUNK))


def _uuencoded(source: Source, start: int, end: int, depth: int, path: str, ctype: str) -> Iterator[Leaf]:
    """The uuencoded files inside a plain part (clamd finds them in a mail body, not in a part scanned alone)."""
    at = start
    while (found := source.find(b"begin", at, end)) != -1:
        begin = _UUENCODE_BEGIN.match(source, found, end) if found == start or source[found - 1 : found] == b"\n" else None
        if begin is None:
            at = found + 5
            continue
        closing = _UUENCODE_END.search(source, begin.end(), end)
        stop = closing.start() if closing else end
        yield Leaf(path, depth, f"{ctype}, uuencoded", "x-uuencode", source, begin.start(), stop)
        at = closing.end() if closing else end


# --- decoders ------------------------------------------------------------------------------------


def _base64(source: Source, start: int, end: int) -> Iterator[bytes]:
    """Only the alphabet counts (line ends and junk are skipped, padding ends nothing); a tail of one
    character is dropped, of two or three padded."""
    carry = b""
    for at in range(start, end, CHUNK):
        text = carry + bytes(source[at : min(at + CHUNK, end)]).translate(None, _NOT_BASE64)
        whole = len(text) - len(text) % 4
        carry = text[whole:]
        if whole:
            yield binascii.a2b_base64(text[:whole])
    if len(carry) >= 2:
        yield binascii.a2b_base64(carry + b"=" * (4 - len(carry)))


def _quoted_printable(source: Source, start: int, end: int) -> Iterator[bytes]:
    at = start
    while at < end:
        stop = min(at + CHUNK, end)
        if stop < end:
            newline = bytes(source[at:stop]).rfind(b"\n")
            stop = at + newline + 1 if newline >= 0 else stop
        yield binascii.a2b_qp(bytes(source[at:stop]))
        at = stop


def _uudecode(source: Source, start: int, end: int) -> Iterator[bytes]:
    """The lines after `begin ...` up to `end` (or all of them, when there is no begin line)."""
    text = bytes(source[start:end])
    begin = _UUENCODE_BEGIN.search(text)
    lines = text[begin.end() :].split(b"\n")[1:] if begin else text.split(b"\n")
    out: list[bytes] = []
    size = 0
    for raw in lines:
        line = raw.rstrip(b"\r")
        if line.strip() == b"end":
            break
        if not line:
            continue
        try:
            decoded = binascii.a2b_uu(line)
        except binascii.Error:
            try:  # trailing junk (some encoders pad): only the characters its length character counts
                decoded = binascii.a2b_uu(line[: 1 + (((line[0] - 32) & 63) * 4 + 2) // 3])
            except binascii.Error:
                continue
        decoded = decoded[: (len(line) - 1) * 3 // 4]  # a length character that promises more than the line holds: no zeros
        out.append(decoded)
        size += len(decoded)
        if size >= CHUNK:
            yield b"".join(out)
            out, size = [], 0
    if out:
        yield b"".join(out)


# --- words ---------------------------------------------------------------------------------------


def _printable(value: bytes) -> str:
    return value[:60].decode("ascii", "replace").translate({c: "?" for c in range(32)} | {127: "?"})


def _short(path: str) -> str:
    """A part number fit for a log line: at most 8 levels shown."""
    numbers = path.split(".")
    if len(numbers) <= 8:
        return path
    return f"{'.'.join(numbers[:3])}...{'.'.join(numbers[-3:])} ({len(numbers)} levels)"
