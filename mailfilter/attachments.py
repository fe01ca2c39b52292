"""Banned attachments: file names and content types that the policy refuses, in MIME parts and in zip files.

inspect() walks the message (mimewalk, within its Limits), reads each leaf's file name from the
leaf's own header block with the stdlib email parser (RFC 2231 and RFC 2047 decoded) and its type
from its first 64 kB with libmagic, and looks at the members of zip files (archives.py). A name
is banned by its last extension, as Windows reads it (trailing dots and spaces dropped); a type
by what libmagic sees in the content, whatever the name says (a PE header that an MZ header
places beyond those 64 kB is not seen: such a file is application/octet-stream). What could not
be inspected is said in words (AttachmentReport.uninspected), never left out. Only zip files are
opened, and not those that are documents (docx, odt, epub: archives.DOCUMENTS); other archives
(rar, 7z, tar, gzip...) are clamd's, and their own names are checked like any.

Pure but for libmagic, which is imported on the first call (a `mailfilter pipe` process does not
load it). Built for hostile input: no exception leaves inspect(); a bug inside is reported.
"""

from __future__ import annotations

import contextlib
import functools
import re
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from . import archives, mimewalk
from .defaults import BANNED_EXTENSIONS, BANNED_TYPES
from .model import AttachmentReport, Banned
from .record import dataclass

if TYPE_CHECKING:
    from email.parser import BytesHeaderParser

    from .config import AttachmentsConfig
    from .spool import Spool

DEFAULT_EXTENSIONS = BANNED_EXTENSIONS
DEFAULT_TYPES = BANNED_TYPES

HEAD = archives.HEAD  # bytes of a part that libmagic sees
COM_GUESS = "application/x-dosexec"  # also what libmagic says of any bytes that start with a jump instruction
MZ = (b"MZ", b"ZM")  # how every DOS and Windows executable (and no COM program) starts
# The email package is quadratic on some fields (1 kB of quotes: 40 ms for the default policy, 8 kB: over a
# second; 8 kB of semicolons: 50 ms for compat32): each reads a bounded field, and only the first two of each kind.
FIELD_BYTES = 4096  # of a field, for compat32: room for a long RFC 2231 name in continuations
DEFAULT_POLICY_BYTES = 1024  # of a field, for the default policy
FIELDS = 2  # of each kind (a second one is a trick: readers differ on which counts)
MAX_PROBLEMS = 20
_FIELD = re.compile(rb"^content-(?:type|disposition)[ \t]*:(?:.*)(?:\r?\n[ \t].*)*", re.M | re.I)
_UUENCODE_BEGIN = re.compile(rb"^begin(?:-base64)? [0-7]{3,4} ([^\r\n]+)", re.M)
_UUENCODED = ("x-uuencode", "uuencode", "x-uue")
_PATH = re.compile(r"[/\\]")
_BIDI = re.compile("[\u200e\u200f\u202a-\u202e\u2066-\u2069]")  # marks that reorder a name as it is shown


@functools.cache
def _parsers() -> tuple[tuple[BytesHeaderParser, int], ...]:
    """The two header parsers, made on first use: the email package costs a `mailfilter pipe` process some
    20 ms to import, and mail without a named part never needs it."""
    import email.policy
    from email.parser import BytesHeaderParser

    return (BytesHeaderParser(policy=email.policy.default), DEFAULT_POLICY_BYTES), (
        BytesHeaderParser(policy=email.policy.compat32),
        FIELD_BYTES,
    )


def preload() -> None:
    """Import libmagic and the email parsers now (a daemon, before it drops privileges); a pipe process does it
    at its first named or binary part."""
    _parsers()
    with contextlib.suppress(Exception):  # a missing libmagic is reported per message, by type_of()
        import magic  # noqa: F401


_LIMITS = mimewalk.Limits()


@dataclass(frozen=True)
class Rules:
    """What inspect() bans and how far it looks."""

    extensions: frozenset[str] = frozenset(DEFAULT_EXTENSIONS)
    types: frozenset[str] = frozenset(DEFAULT_TYPES)
    archives: bool = True  # look inside zip files
    archive_depth: int = 3  # zip in zip in zip
    archive_members: int = 1000  # members read per message, in all
    limits: mimewalk.Limits = _LIMITS  # depth, parts, bytes, seconds for the MIME walk (seconds: the whole inspection)


DEFAULT_RULES = Rules()  # the config's defaults


def inspect(data: mimewalk.Source, rules: Rules = DEFAULT_RULES, clock: Callable[[], float] = time.monotonic) -> AttachmentReport:
    """The banned attachments of DATA (a whole message), its encrypted archives, and what could not be inspected.
    Never raises."""
    check = _Check(rules, clock)
    try:
        tree = mimewalk.walk(data, rules.limits, clock)
        check.problems.extend(tree.problems)
        for leaf in tree.leaves:
            if check.late():
                break
            _leaf(check, leaf)
    except Exception as exc:  # noqa: BLE001 - the promise: a bug here is a problem in the report, never a crash
        check.problem(f"attachment check failed ({type(exc).__name__})")
    return check.report()


def inspect_spool(message: Spool, config: AttachmentsConfig) -> AttachmentReport:
    """inspect() on MESSAGE with the [attachments] rules of CONFIG."""
    from .deepscan import _view  # the spool's bytes, or a read-only map of its file

    rules = Rules(
        extensions=frozenset(str(e).lower().lstrip(".") for e in config.banned_extensions),
        types=frozenset(str(t).lower() for t in config.banned_types),
        archives=config.archives,
    )
    with _view(message) as data:
        return inspect(data, rules)


class _Check:
    """What one inspection found so far, its clock and its budget: the archives.Visitor of its zips."""

    def __init__(self, rules: Rules, clock: Callable[[], float]) -> None:
        self.rules, self.clock = rules, clock
        self.deadline = clock() + rules.limits.seconds
        self.member_limit = self.members_left = rules.archive_members
        self.banned: list[Banned] = []
        self.encrypted_archives: list[str] = []
        self.problems: list[str] = []
        self._magic: Callable[..., str] | None = None

    def report(self) -> AttachmentReport:
        problems = list(dict.fromkeys(self.problems))
        if len(problems) > MAX_PROBLEMS:  # the first ones (the walk's limits among them) and the last (where it stopped)
            problems[MAX_PROBLEMS - 2 : -1] = [f"and {len(problems) - MAX_PROBLEMS + 1} more"]
        return AttachmentReport(tuple(self.banned), tuple(dict.fromkeys(self.encrypted_archives)), tuple(problems))

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def late(self) -> bool:
        if self.clock() <= self.deadline:
            return False
        self.problem(f"attachment check stopped after {self.rules.limits.seconds:g} s")
        return True

    def encrypted(self, archive: str) -> None:
        self.encrypted_archives.append(archive)

    def member(self, path: str, head: bytes | None) -> str:
        return self.file([path], path, head)

    def file(self, names: list[str], label: str, head: bytes | None, text: bool = False) -> str:
        """The ban, if any, of a file known by NAMES (LABEL without one) whose first bytes are HEAD (None: not
        read); its type. TEXT: a message text (a text part with no name, not an attachment), typed only when
        binary (a script pasted into a mail is no attachment)."""
        kind = self.type_of(head, label) if head and (not text or b"\0" in head) else ""
        for name in names:
            if reason := _name_reason(name, self.rules.extensions):
                self.banned.append(Banned(name, kind, reason))
                return kind
        if kind in self.rules.types:
            self.banned.append(Banned(names[0] if names else label, kind, f"banned type {kind}"))
        return kind

    def type_of(self, head: bytes, label: str) -> str:
        if self._magic is None:
            try:
                import magic

                self._magic = magic.from_buffer
            except Exception as exc:  # noqa: BLE001 - ImportError, or python-magic's own when libmagic is missing
                self.problem(f"content types not checked: libmagic not available ({type(exc).__name__})")
                self._magic = _no_magic
        try:
            kind = self._magic(head, mime=True)
        except Exception as exc:  # noqa: BLE001 - libmagic on hostile bytes
            self.problem(f"content type of {archives.shown(label)} not read ({type(exc).__name__})")
            return ""
        if kind == COM_GUESS and not head.startswith(MZ):
            # Without an MZ header libmagic guesses a DOS COM program from a first instruction (a jump, a mov:
            # random binary data often passes). COM programs do not run on 64-bit Windows, are banned by their
            # name (.com), and that guess is no evidence.
            return "application/octet-stream"
        return kind


def _no_magic(head: bytes, mime: bool) -> str:
    return ""


def _leaf(check: _Check, leaf: mimewalk.Leaf) -> None:
    label = leaf.path or "1"
    names, attachment, unread = _names(leaf)
    if unread:
        check.problem(f"file name of {leaf.where()} not read")
    chunks = mimewalk.decode(leaf)
    first = _take(chunks, HEAD)
    head = first[:HEAD]
    if not head and not names:
        return
    kind = check.file(names, label, head, text=leaf.content_type.startswith("text/") and not names and not attachment)
    rules = check.rules
    if not (rules.archives and rules.archive_depth > 0 and archives.is_archive(head, kind)):
        return
    name = names[0] if names else label
    data = first + _take(chunks, archives.MAX_BYTES + 1 - len(first))
    if len(data) > archives.MAX_BYTES:
        check.problem(f"archive {archives.shown(name)} too large to inspect (more than {archives.MAX_BYTES >> 20} MB)")
        return
    archives.walk(data, name, check, rules.archive_depth)


def _take(chunks: Iterator[bytes], size: int) -> bytes:
    """The next chunks of CHUNKS, joined, until they hold SIZE bytes (or CHUNKS ends): at most a chunk more."""
    out: list[bytes] = []
    got = 0
    for chunk in chunks:
        out.append(chunk)
        got += len(chunk)
        if got >= size:
            break
    return b"".join(out)


def _names(leaf: mimewalk.Leaf) -> tuple[list[str], bool, bool]:
    """The file names LEAF gives itself (every one some mail reader may show), whether it says it is an
    attachment, and whether a field with a name in it could not be read (or was too long to read whole).
    Each Content-Type and Content-Disposition field is read alone, by the default policy and by compat32
    (which read broken fields differently); a uuencoded file's name is on its begin line."""
    names: list[str] = []
    attachment = unread = False
    seen = {b"t": 0, b"d": 0}  # Content-Type, Content-Disposition fields read
    header = leaf.source[leaf.header_start : leaf.header_end] if leaf.header_end > leaf.header_start else b""
    for found in _FIELD.finditer(header):
        field = found.group()
        lower = field[:FIELD_BYTES].lower()
        kind = lower[8:9]
        if seen[kind] >= FIELDS:
            continue
        seen[kind] += 1
        attachment = attachment or (kind == b"d" and b"attachment" in lower)
        if b"name" not in lower:
            continue  # no filename or name parameter: nothing to parse
        parsers = _parsers()
        read = [_params(parser, field) if len(field) <= size else None for parser, size in parsers[:1]]
        read.append(_params(parsers[1][0], field[:FIELD_BYTES]))
        names += [name for got in read if got for name in got]
        unread = unread or len(field) > FIELD_BYTES or all(got is None for got in read)  # a name cut short is a name not read
    if leaf.encoding in _UUENCODED or leaf.content_type.endswith(", uuencoded"):
        begin = _UUENCODE_BEGIN.search(bytes(leaf.source[leaf.start : min(leaf.end, leaf.start + 2048)]))
        if begin:
            names.append(begin.group(1)[:1024].decode("utf-8", "replace").strip())
    return [name for name in dict.fromkeys(names) if name], attachment, unread


def _params(parser: BytesHeaderParser, field: bytes) -> list[str] | None:
    """The filename and name parameters of one header FIELD, as PARSER reads them; None when it cannot."""
    import email.utils

    try:
        fields = parser.parsebytes(field + b"\n\n")
        values = [
            fields.get_param(param, None, header) for param, header in (("filename", "content-disposition"), ("name", "content-type"))
        ]
        return [_words(email.utils.collapse_rfc2231_value(value)) for value in values if value is not None]
    except Exception:  # noqa: BLE001 - the email package on a hostile field; the other parser may still read it
        return None


def _words(value: str) -> str:
    """VALUE with its RFC 2047 encoded words decoded (compat32 leaves them, and they are seen in quoted names)."""
    value = value.strip()
    if "=?" not in value:
        return value
    import email.errors
    import email.header

    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (email.errors.MessageError, ValueError, LookupError, UnicodeError, AssertionError, IndexError):
        return value


def _name_reason(name: str, banned: frozenset[str]) -> str:
    """Why NAME is banned ('': it is not): its last extension, as Windows reads it; a "hidden extension" when an
    extension comes before it (1 to 4 letters or digits, not a number, as rspamd reads it) or marks reorder it."""
    base = _PATH.split(name)[-1]
    stem, dot, extension = base.rstrip(" .\t\0").rpartition(".")
    if not dot or extension.lower() not in banned:
        return ""
    before = stem.rstrip(" .\t").rpartition(".")
    if (before[1] and 0 < len(before[2]) <= 4 and before[2].isalnum() and not before[2].isdigit()) or _BIDI.search(base):
        return f"hidden extension: {archives.shown(base)}"
    return f"banned extension .{extension.lower()}"
