"""The members of a zip file, zips inside it included: their names and first bytes, for attachments.py.

Read in memory and bounded: the stdlib zipfile reads only the central directory (where Windows
Explorer and 7-Zip take the names from); each member's bytes are read here, from its local
header, with decompressors that are told how much to give. zipfile's own reader is not used for
them: it inflates bzip2 and LZMA members without a bound (538 bytes of bzip2 in a zip gave 1 GB
of zeros for a read of 64 kB). Nothing is written to disk. Nested zips are walked with a stack,
depth first, at most DEPTH levels and MEMBERS members in all; whatever could not be read is said
in words to the Visitor, which also hears each member and each encrypted archive.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import zipfile  # imported by the first zip opened: most mail has none, and a `mailfilter pipe` process pays for each import

HEAD = 64 * 1024  # first bytes of a member: enough for libmagic
MAX_BYTES = 32 << 20  # a zip (a MIME part, or a member holding a zip) larger than this is not opened
SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")  # a local header, an empty zip, a spanned zip
# Zips that are documents (libmagic's types): their members are the format's own, not files someone packed, and a
# large presentation holds thousands (rspamd does not open them either: "not really archives").
DOCUMENTS = (
    "application/vnd.openxmlformats-officedocument.",
    "application/vnd.oasis.opendocument.",
    "application/vnd.sun.xml.",
    "application/vnd.ms-visio.",
    "application/epub+zip",
)
_CENTRAL = b"PK\x01\x02"  # every central directory entry starts with it: their count bounds the members
_LOCAL = struct.Struct("<4s2xH18x2H")  # a local header (30 bytes): signature, flags, name length, extra length


class Visitor(Protocol):
    member_limit: int  # members read per message, in all archives
    members_left: int

    def member(self, path: str, head: bytes | None) -> str:
        """A member (PATH: "a.zip/b.zip/x.js") and its first bytes (None when they could not be read): its type."""

    def encrypted(self, archive: str) -> None: ...

    def problem(self, text: str) -> None: ...

    def late(self) -> bool:
        """Whether the time is up (and said so)."""


def shown(text: str, limit: int = 200) -> str:
    """TEXT (a name from a message) fit for words: each character str.isprintable() refuses escaped, at most LIMIT
    characters. Stricter than message.printable: format characters such as U+206C are escaped too."""
    out = "".join(c if c.isprintable() else _escape(ord(c)) for c in text[: limit + 1])
    return out[:limit] + "..." if len(out) > limit else out


def _escape(code: int) -> str:
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def is_archive(head: bytes, kind: str) -> bool:
    """Whether a file whose first bytes are HEAD, of libmagic type KIND, is a zip file to open."""
    return head[:4] in SIGNATURES and not kind.startswith(DOCUMENTS)


def walk(data: bytes, name: str, visitor: Visitor, depth: int) -> None:
    """Every member of the zip DATA (named NAME), and of the zips inside it up to DEPTH levels, to VISITOR."""
    top = _open(data, name, visitor)
    if top is None:
        return
    stack: list[tuple[Iterator[zipfile.ZipInfo], bytes, str]] = [top]
    while stack:
        infos, data, name = stack[-1]
        info = next(infos, None)
        if info is None:
            stack.pop()
            continue
        if visitor.late():
            return
        if visitor.members_left <= 0:
            visitor.problem(f"more than {visitor.member_limit} archive members: the rest of {shown(name)} not inspected")
            return
        visitor.members_left -= 1
        path = f"{name}/{info.filename}"
        if info.filename.endswith("/"):  # a folder (zipfile's is_dir() fails on an empty name)
            continue
        local_name, encrypted, start = _local(data, info)
        if local_name not in (None, info.filename):
            visitor.member(f"{name}/{local_name}", None)  # another name in the local header: what some tools show
        if encrypted:
            visitor.encrypted(name)
            visitor.member(path, None)
            continue
        try:
            head = _read(data, info, start, HEAD)
        except Exception as exc:  # noqa: BLE001 - decompressors on hostile bytes: any failure is "could not be read"
            visitor.problem(f"archive member {shown(path)} could not be read: {_why(exc)}")
            visitor.member(path, None)
            continue
        if not is_archive(head, visitor.member(path, head)):
            continue
        if len(stack) >= depth:
            visitor.problem(f"archives nested deeper than {depth} levels: {shown(path)}")
            continue
        try:
            inner = _read(data, info, start, MAX_BYTES + 1)
        except Exception as exc:  # noqa: BLE001 - as above
            visitor.problem(f"archive {shown(path)} could not be read: {_why(exc)}")
            continue
        if len(inner) > MAX_BYTES:
            visitor.problem(f"archive {shown(path)} too large to inspect (more than {MAX_BYTES >> 20} MB)")
            continue
        nested = _open(inner, path, visitor)
        if nested is not None:
            stack.append(nested)


def _open(data: bytes, name: str, visitor: Visitor) -> tuple[Iterator[zipfile.ZipInfo], bytes, str] | None:
    """The central directory of DATA, unless it holds more members than may still be read, or is broken."""
    if data.count(_CENTRAL) > visitor.members_left:  # before zipfile holds an object for each
        visitor.problem(f"more than {visitor.member_limit} archive members: {shown(name)} not inspected")
        return None
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
    except Exception as exc:  # noqa: BLE001 - zipfile on hostile bytes raises many kinds: each is "could not be read"
        visitor.problem(f"archive {shown(name)} could not be read: {_why(exc)}")
        return None
    return iter(infos), data, name


def _local(data: bytes, info: zipfile.ZipInfo) -> tuple[str | None, bool, int]:
    """The member's name in its local header (None: no local header there), whether it is encrypted (in
    either header), and where its data starts."""
    encrypted = bool(info.flag_bits & 0x1)
    offset = info.header_offset
    if offset < 0 or len(data) < offset + _LOCAL.size:
        return None, encrypted, len(data)
    signature, flags, name_length, extra_length = _LOCAL.unpack_from(data, offset)
    if signature != b"PK\x03\x04":
        return None, encrypted, len(data)
    raw = data[offset + _LOCAL.size : offset + _LOCAL.size + name_length]
    name = raw.decode("utf-8", "replace") if flags & 0x800 else raw.decode("cp437")
    name = name.split("\0", 1)[0]  # as zipfile reads the central name
    return name, encrypted or bool(flags & 0x1), offset + _LOCAL.size + name_length + extra_length


def _read(data: bytes, info: zipfile.ZipInfo, start: int, limit: int) -> bytes:
    """At most LIMIT bytes of the member INFO, whose compressed bytes start at START in DATA."""
    import zipfile  # already imported by _open()

    if start >= len(data):
        raise zipfile.BadZipFile("no local header where the directory says")
    raw = memoryview(data)[start : start + info.compress_size]
    method = info.compress_type
    if method == zipfile.ZIP_STORED:
        return bytes(raw[:limit])
    if method == zipfile.ZIP_DEFLATED:
        return zlib.decompressobj(-15).decompress(raw, limit)
    if method == zipfile.ZIP_BZIP2:
        import bz2

        return bz2.BZ2Decompressor().decompress(raw, limit)
    if method == zipfile.ZIP_LZMA:  # zipfile's layout: version (2 bytes), size of the properties (2), properties, raw LZMA1
        import lzma

        (size,) = struct.unpack_from("<H", raw, 2)
        props = bytes(raw[4 : 4 + size])
        if size != 5 or len(props) != 5:
            raise ValueError("bad LZMA properties")
        lc, rest = props[0] % 9, props[0] // 9
        (dict_size,) = struct.unpack_from("<I", props, 1)
        dict_size = max(4096, min(dict_size, 1 << 26))  # what LIMIT bytes can refer to, not the 4 GB a header may claim
        lzma1 = {"id": lzma.FILTER_LZMA1, "dict_size": dict_size, "lc": lc, "lp": rest % 5, "pb": rest // 5}
        return lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[lzma1]).decompress(raw[4 + size :], limit)
    raise NotImplementedError(f"compression method {method}")


def _why(exc: BaseException) -> str:
    return shown(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, 120)
