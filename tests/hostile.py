"""The hostile corpus: malformed or abusive messages, generated at run time from a fixed seed.

Every case must get a verdict or a deferral from both doors, never a crash, a
bounce or a hang (tests/test_hostile.py). Families, crossed with each other to
reach a few hundred messages:

- broken MIME: missing, empty, unclosed, overlong and mismatched boundaries, under four line-ending styles;
- deep nesting: hundreds of multipart and message/rfc822 levels;
- charsets and transfer encodings that are unknown, wrong or lie about the bytes, in bodies and encoded-words;
- raw 8-bit, NUL, C0/C1 control and escape bytes in header fields;
- spoofed X-Spam-*/X-Virus-* fields hidden behind odd line ends, spacing and case;
- bare CR, bare LF and mixed line ends; a 1 MB header line, 10,000 header fields, empty and header-only messages;
- archives: a zip bomb (1 GB of zeros, built here), a gzip bomb, nested and damaged archives;
- EICAR hidden in message/rfc822, uuencode, archives inside archives, broken MIME (`virus=True`),
  and in places ClamAV does not look (`virus=False` with the reason in `unseen`);
- EICAR at the bottom of 5 to 60 levels of multiparts and messages (found: clamd stops at its
  MaxRecursion, our MIME walk goes on), deeper than our walk goes, and in bombs and archives past
  clamd's limits (`unscannable`: quarantined as such, never delivered clean); spam padded past
  [spamd] max_size (scored on its first bytes, `spam=True`);
- encoded-words, raw controls and envelope addresses that try to inject lines and header fields
  into the admin report and the quarantine listing, and header fields Python cannot decode
  (all carry EICAR, so they are quarantined and reported).

EICAR comes from corpus.eicar() at run time; nothing here holds it in plain form.
Building a case is cheap except the bombs, which are built once per process and cached.
"""

from __future__ import annotations

import base64
import binascii
import bz2
import functools
import gzip
import io
import itertools
import lzma
import os
import quopri
import random
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from corpus import GTUBE, eicar, zipped

SEED = 6  # issue 6: the same corpus on every run and every machine
SENDER = "alice@example.org"
RECIPIENT = "bob@example.net"

# clamd's default MaxRecursion is 17: past it clamd stops unpacking and answers OK, or with AlertExceedsMax
# (the test clamd has it) `Heuristics.Limits.Exceeded.MaxRecursion FOUND`. Measured with ClamAV 1.4.6
# (Debian 12) and tests/signatures, the deepest EICAR clamd finds in a whole message:
ZIP_DEPTH_SEEN = 15  # zips inside zips, in a base64 attachment (the mail and the attachment count too)
RFC822_BODY_DEPTH_SEEN = 17  # messages whose whole body is the next message/rfc822
MULTIPART_DEPTH_SEEN = 18  # multiparts inside multiparts
# A message/rfc822 *part* of a multipart does not count: a forward of a forward, 300 deep, is still found.
RFC822_PART_DEPTH = 300
# Past those, mailfilter scans each MIME part alone (its own walk goes 64 levels deep: mimewalk.Limits),
# so EICAR is found at any of these depths; a zip scanned alone has clamd's levels to itself (16 zips).
DEEP_LEVELS = (5, 17, 18, 19, 30, 60)
WALK_DEPTH = 64


@dataclass(frozen=True)
class Case:
    """One hostile message and what the real clamd must say about it."""

    name: str
    make: Callable[[], bytes]
    virus: bool = False  # the real clamd with the test signatures finds EICAR in it
    unseen: str = ""  # it holds EICAR that clamd does not find: why
    unscannable: str = ""  # the virus scan cannot see all of it (a limit): why; held as unscannable, never delivered
    banned: str = ""  # not a virus clamd finds, but an attachment [attachments] bans: why; held as banned, never delivered
    spam: bool = False  # spamd scores it as spam (on the first [spamd] max_size bytes when it is larger)
    sender: str = SENDER
    recipients: tuple[str, ...] = (RECIPIENT,)
    queue_id: str = "4F2A1C"

    @property
    def raw(self) -> bytes:
        return self.make()


def _const(data: bytes) -> Callable[[], bytes]:
    return functools.partial(bytes, data)


# --- building blocks ---------------------------------------------------------------------------

HEAD = (
    b"From: Alice <alice@example.org>\n"
    b"To: bob@example.net\n"
    b"Date: Fri, 27 Nov 2026 10:00:00 +0000\n"
    b"Received: from mx.example.org (mx.example.org [192.0.2.1]) by mail.example.net with ESMTP id 4F2A1C\n"
)


def _mail(subject: bytes, extra: bytes, body: bytes) -> bytes:
    """A message with LF line ends: our usual header, SUBJECT, EXTRA header lines, BODY."""
    return HEAD + b"Subject: " + subject + b"\nMessage-ID: <hostile@example.org>\n" + extra + b"\n" + body


def _wrap64(data: bytes, width: int = 76) -> bytes:
    text = base64.b64encode(data)
    return b"".join(text[i : i + width] + b"\n" for i in range(0, len(text), width))


def _attachment(data: bytes, filename: str, subject: bytes = b"attached", head: bytes = b"") -> bytes:
    """A multipart/mixed message with a text part and DATA as a base64 attachment."""
    body = (
        b"--b1\nContent-Type: text/plain\n\nSee the attachment.\n"
        b"--b1\nContent-Type: application/octet-stream; name=" + filename.encode() + b"\n"
        b"Content-Transfer-Encoding: base64\nContent-Disposition: attachment\n\n" + _wrap64(data) + b"--b1--\n"
    )
    mime = b'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b1"\n'
    if head:
        return head + mime + b"\n" + body
    return _mail(subject, mime, body)


def _rfc822(inner: bytes, subject: bytes = b"forwarded") -> bytes:
    """INNER forwarded as a message/rfc822 part."""
    body = b"--f1\nContent-Type: text/plain\n\nForwarded message below.\n--f1\nContent-Type: message/rfc822\n\n" + inner + b"\n--f1--\n"
    return _mail(subject, b'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="f1"\n', body)


def _uuencode(data: bytes, filename: str = "file.com") -> bytes:
    lines = [binascii.b2a_uu(data[i : i + 45]) for i in range(0, len(data), 45)]
    return b"begin 644 " + filename.encode() + b"\n" + b"".join(lines) + b"`\nend\n"


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_800_000_000
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _eols(raw: bytes, style: str) -> bytes:
    """RAW (written with LF) with other line ends; 'mixed' alternates them from the seed."""
    if style == "lf":
        return raw
    if style == "mixed":
        rng = random.Random(SEED)
        lines = raw.split(b"\n")
        return b"".join(line + rng.choice((b"\n", b"\r\n", b"\r")) for line in lines[:-1]) + lines[-1]
    return raw.replace(b"\n", {"crlf": b"\r\n", "cr": b"\r", "crcrlf": b"\r\r\n", "lfcr": b"\n\r"}[style])


EOLS = ("lf", "crlf", "cr", "mixed")


# --- zip and gzip bombs ------------------------------------------------------------------------

BOMB_SIZE = 1 << 30  # 1 GB of zeros, about 1 MB compressed


@functools.cache
def zip_bomb() -> bytes:
    """A zip holding one 1 GB file of zeros (deflated to about 1 MB): built once per process, in about 2 s."""
    buf = io.BytesIO()
    chunk = bytes(1 << 20)
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("zeros.bin", "w", force_zip64=True) as fh:
            for _ in range(BOMB_SIZE // len(chunk)):
                fh.write(chunk)
    return buf.getvalue()


@functools.cache
def gzip_bomb() -> bytes:
    """1 GB of zeros as gzip: one deflate stream, built from a compressor fed in 1 MB chunks."""
    buf = io.BytesIO()
    chunk = bytes(1 << 20)
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0) as gz:
        for _ in range(BOMB_SIZE // len(chunk)):
            gz.write(chunk)
    return buf.getvalue()


def _bomb_then_eicar() -> bytes:
    """The zip bomb's 1 GB member first, then EICAR: clamd must get past the bomb."""
    buf = io.BytesIO(zip_bomb())
    with zipfile.ZipFile(buf, "a", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("after-the-bomb.com", eicar())
    return buf.getvalue()


# --- the families ------------------------------------------------------------------------------


def broken_boundaries() -> Iterator[Case]:
    """Ten ways to break multipart boundaries, under four line-ending styles."""
    rng = random.Random(SEED)
    payload = _wrap64(rng.randbytes(600))
    part = b"Content-Type: text/plain; charset=us-ascii\n\nhello\n"
    blob = b"Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n" + payload
    long_boundary = bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz0123456789'()+_,-./:=?") for _ in range(2000))
    defects = {
        "missing-param": (b"multipart/mixed", b"--b\n" + part + b"--b\n" + blob + b"--b--\n"),
        "never-closed": (b'multipart/mixed; boundary="b"', b"--b\n" + part + b"--b\n" + blob),
        "wrong-close": (b'multipart/mixed; boundary="b"', b"--b\n" + part + b"--b\n" + blob + b"--other--\n"),
        "empty": (b'multipart/mixed; boundary=""', b"--\n" + part + b"--\n" + blob + b"----\n"),
        "unbalanced-quote": (b'multipart/mixed; boundary="b', b'--"b\n' + part + b"--b\n" + blob + b"--b--\n"),
        "2000-chars": (
            b'multipart/mixed; boundary="' + long_boundary + b'"',
            b"--" + long_boundary + b"\n" + part + b"--" + long_boundary + b"--\n",
        ),
        "nul-in-boundary": (b'multipart/mixed; boundary="a\x00b"', b"--a\x00b\n" + part + b"--a\x00b\n" + blob + b"--a\x00b--\n"),
        "close-before-open": (b'multipart/mixed; boundary="b"', b"--b--\n" + part + b"--b\n" + blob),
        "no-parts": (b'multipart/mixed; boundary="b"', b"only a preamble, no delimiter at all\n"),
        "same-boundary-nested": (
            b'multipart/mixed; boundary="b"',
            b'--b\nContent-Type: multipart/alternative; boundary="b"\n\n--b\n' + part + b"--b--\n" + blob + b"--b--\n",
        ),
    }
    for (defect, (ctype, body)), eol in itertools.product(defects.items(), EOLS):
        raw = _mail(b"broken boundary: " + defect.encode(), b"MIME-Version: 1.0\nContent-Type: " + ctype + b"\n", body)
        yield Case(f"boundary-{defect}-{eol}", _const(_eols(raw, eol)))


def _nested_multipart(depth: int, closed: bool) -> bytes:
    opening = b"".join(b'Content-Type: multipart/mixed; boundary="n%d"\n\n--n%d\n' % (i, i) for i in range(depth))
    closing = b"".join(b"\n--n%d--\n" % i for i in reversed(range(depth))) if closed else b""
    return HEAD + b"Subject: nested\nMIME-Version: 1.0\n" + opening + b"Content-Type: text/plain\n\ndeep\n" + closing


def _nested_rfc822(depth: int) -> bytes:
    raw = b"Subject: the innermost\n\ndeep\n"
    for _ in range(depth):
        raw = b"Subject: wrapper\nMIME-Version: 1.0\nContent-Type: message/rfc822\n\n" + raw
    return HEAD + raw


def _nested_alternating(depth: int) -> bytes:
    raw = b"Subject: the innermost\n\ndeep\n"
    for i in range(depth):
        if i % 2:
            raw = b"Subject: wrapper\nMIME-Version: 1.0\nContent-Type: message/rfc822\n\n" + raw
        else:
            raw = b'Content-Type: multipart/mixed; boundary="a%d"\n\n--a%d\n' % (i, i) + raw + b"\n--a%d--\n" % i
    return HEAD + b"Subject: alternating\nMIME-Version: 1.0\n" + raw


def nesting() -> Iterator[Case]:
    """Hundreds (and a thousand) levels of multipart and message/rfc822: deeper than anything looks."""
    too_deep = f"MIME parts nested deeper than {WALK_DEPTH} levels"
    for depth, closed in itertools.product((100, 300, 1000), (True, False)):
        name = f"nested-multipart-{depth}-{'closed' if closed else 'unclosed'}"
        yield Case(name, functools.partial(_nested_multipart, depth, closed), unscannable=too_deep)
    for depth in (100, 300):
        yield Case(f"nested-rfc822-{depth}", functools.partial(_nested_rfc822, depth), unscannable=too_deep)
    yield Case("nested-alternating-300", functools.partial(_nested_alternating, 300), unscannable=too_deep)
    same = b'Content-Type: multipart/mixed; boundary="same"\n\n--same\n' * 500
    yield Case("nested-500-same-boundary", _const(HEAD + b"Subject: same\nMIME-Version: 1.0\n" + same + b"\ndeep\n"))


CHARSETS = {
    "unknown": b"x-no-such-charset",
    "utf-7": b"utf-7",
    "utf-16": b"utf-16",
    "iso-2022-jp": b"iso-2022-jp",
    "empty": b'""',
    "overlong-name": b"x-" + b"a" * 300,
    "path": b"../../../etc/passwd",
    "unknown-8bit": b"unknown-8bit",
}


def _text_lying_about(charset: str, rng: random.Random) -> bytes:
    """Bytes that are not valid in CHARSET (or in anything)."""
    junk = {
        "utf-7": b"+AGEAYgBj-+ZZZ-+-+\xff",
        "utf-16": b"\xff\xfe\x00\xd8a",  # a lone surrogate after a BOM
        "iso-2022-jp": b"\x1b$B\x30\x21\x1b(Q\x1b$\x1b",  # invalid escape sequences
    }
    return junk.get(charset, rng.randbytes(40))


def charsets_and_encodings() -> Iterator[Case]:
    """Body parts whose charset and transfer encoding are unknown, wrong or lie about the bytes."""
    rng = random.Random(SEED)
    encodings = {
        "bad-base64": (b"base64", lambda text: b"!!!" + base64.b64encode(text)[:-1] + b"\n===\n"),
        "bad-qp": (b"quoted-printable", lambda text: b"=ZZ=\n=4=" + quopri.encodestring(text) + b"=\n"),
        "x-uuencode-garbage": (b"x-uuencode", lambda text: b"begin 644 x\n" + text + b"\nend\n"),
        "unknown-encoding": (b"x-rot13", lambda text: text + b"\n"),
        "7bit-with-8bit-and-nul": (b"7bit", lambda text: text + b"\x00\x80\xff\n"),
    }
    for (cs, charset), (enc, (cte, encode)) in itertools.product(CHARSETS.items(), encodings.items()):
        extra = b"MIME-Version: 1.0\nContent-Type: text/plain; charset=" + charset + b"\nContent-Transfer-Encoding: " + cte + b"\n"
        raw = _mail(b"charset " + cs.encode() + b", " + enc.encode(), extra, encode(_text_lying_about(cs, rng)))
        yield Case(f"charset-{cs}-{enc}", _const(raw))


def encoded_words() -> Iterator[Case]:
    """RFC 2047 encoded-words in Subject and From with bad charsets, encodings and syntax."""
    rng = random.Random(SEED)
    for (cs, charset), letter in itertools.product(CHARSETS.items(), (b"B", b"Q", b"X")):
        text = _text_lying_about(cs, rng)
        payload = base64.b64encode(text) if letter == b"B" else quopri.encodestring(text, header=True).replace(b"\n", b"")
        word = b"=?" + charset.strip(b'"') + b"?" + letter + b"?" + payload + b"?="
        raw = HEAD.replace(b"From: Alice", b"From: " + word) + b"Subject: " + word + b" and " + word + b"\n\nbody\n"
        yield Case(f"encoded-word-{cs}-{letter.decode()}", _const(raw))
    malformed = {
        "unterminated": b"=?utf-8?b?SGVsbG8",
        "nested-markers": b"=?=?=?utf-8?q?=3D=3F?=?=?=",
        "bad-padding": b"=?utf-8?b?SGVsbG8===?= =?utf-8?b?=?=",
        "thousand-words": b" ".join([b"=?utf-8?q?a=C3=A9?="] * 1000),
        "rfc2231-language": b"=?utf-8*en?Q?Hello=20world?=",
        "no-charset": b"=??Q?abc?=",
        "split-utf8-sequence": b"=?utf-8?b?4oI=?= =?utf-8?b?rA==?=",
        "huge-word": b"=?utf-8?b?" + base64.b64encode(rng.randbytes(30_000)) + b"?=",
    }
    for name, value in malformed.items():
        yield Case(f"encoded-word-{name}", _const(HEAD + b"Subject: " + value + b"\n\nbody\n"))


RAW_BYTES = {
    "nul": b"a\x00b\x00",
    "c0": bytes(range(1, 9)) + b"\x0b\x0c\x0e\x1f",
    "del": b"x\x7fy",
    "latin1": b"Gr\xfc\xdfe \xe9t\xe9 \xff",
    "invalid-utf8": b"\xc3\x28 \xa0\xa1 \xe2\x28\xa1 \xf0\x28\x8c\x28 \xed\xa0\x80",
    "escape": b"\x1b[2J\x1b]0;pwned\x07\x1b[31mred",
    "c1-utf8": b"\xc2\x85next line \xc2\x9b31m",
    "line-separators": b"one\xe2\x80\xa8two\xe2\x80\xa9three",
}
RAW_PLACES = ("Subject", "From", "Message-ID", "Received", "field-name")


def raw_header_bytes() -> Iterator[Case]:
    """8-bit, NUL and control bytes inside header fields (and in a field's name)."""
    for (kind, data), place in itertools.product(RAW_BYTES.items(), RAW_PLACES):
        if place == "field-name":
            extra = b"X-Bad" + data + b"Name: value\n"
            raw = _mail(b"raw bytes in a field name", extra, b"body\n")
        elif place == "Subject":
            raw = _mail(b"raw " + data, b"", b"body\n")
        else:
            raw = HEAD + b"Subject: raw bytes\n" + place.encode() + b": <" + data + b"@example.org>\n\nbody\n"
        yield Case(f"raw-{kind}-in-{place.lower()}", _const(raw))


SPOOF = b"X-Spam-Flag: NO\nX-Spam-Score: -100\nX-Virus-Status: Clean\n"


def spoofed_fields() -> Iterator[Case]:
    """Copies of our X-Spam-*/X-Virus-* fields hidden where a filter might not look for them.

    Postfix (and what reads the mailbox later) ends a line at LF only; a filter that
    splits lines elsewhere can end the header too early and leave a spoofed field in it.
    """
    hiding = {
        "after-cr-cr-lf": b"Subject: extra CRs\r\r\n" + SPOOF,
        "after-bare-cr-in-field": b"Subject: a bare CR\rX-Spam-Flag: NO\n" + SPOOF,
        "space-before-colon": b"X-Spam-Flag : NO\nX-Virus-Status\t: Clean\n",
        "no-space-after-colon": b"X-Spam-Flag:NO\nX-Virus-Status:Clean\n",
        "mixed-case": b"x-SPAM-flag: NO\nX-VIRUS-status: Clean\n",
        "folded-value": b"X-Virus-Status:\n Clean,\n\tfolded\n",
        "empty-value": b"X-Spam-Flag:\nX-Virus-Status:\n",
        "after-a-megabyte-field": b"X-Long: " + b"L" * 1_000_000 + b"\n" + SPOOF,
        "after-mid-header-from-line": b"From mallory Fri Nov 27 10:00:00 2026\n" + SPOOF,
        "crlf-after-lf": b"Subject: mixed\n" + SPOOF.replace(b"\n", b"\r\n"),
        "nul-in-name": b"X-Spam\x00-Flag: NO\n" + SPOOF,
    }
    for name, fields in hiding.items():
        yield Case(f"spoof-{name}", _const(HEAD + fields + b"Subject: spoofed\n\nX-Spam-Flag: NO <- body text\n"))
    # Removing the field after a bare CR can join that CR to the LF of the empty line below: the body's first lines move up.
    yield Case("spoof-from-the-body", _const(HEAD + b"Subject: x\rX-Virus-Status: Clean\n\n" + SPOOF + b"\nbody\n"))


def line_endings() -> Iterator[Case]:
    """Bare CR, bare LF, CRLF and mixtures, in a plain, a folded and a multipart message."""
    shapes = {
        "plain": _mail(b"line ends", b"", b"first line\nsecond line\n.\n..\nlast\n"),
        "folded": HEAD + b"Subject: folded\n over\n\tthree lines\nX-Spam-Flag:\n YES\nX-Virus-Status:\n\tClean\n\nbody\n",
        "multipart": _attachment(b"attachment bytes", "a.bin", b"line ends, multipart"),
    }
    for (shape, raw), style in itertools.product(shapes.items(), ("lf", "crlf", "cr", "mixed", "crcrlf", "lfcr")):
        yield Case(f"eol-{style}-{shape}", _const(_eols(raw, style)))


def sizes_and_shapes() -> Iterator[Case]:
    """Empty, header-only and body-only messages; a 1 MB line; 10,000 fields; and more of the kind."""
    megabyte = b"A" * 1_000_000
    cases = {
        "empty": b"",
        "one-newline": b"\n",
        "one-crlf": b"\r\n",
        "headers-only-no-newline": b"Subject: x\nFrom: a@b",
        "headers-only-with-newline": HEAD + b"Subject: headers only\n",
        "body-only": b"there is no header here at all\n\nonly text\n",
        "starts-with-continuation": b" folded: first\nSubject: x\n\nbody\n",
        "megabyte-subject": b"Subject: " + megabyte + b"\n\nbody\n",
        "megabyte-field": HEAD + b"X-Long: " + megabyte + b"\nSubject: long field\n\nbody\n",
        "megabyte-folded-subject": b"Subject: start\n" + b" " + b"\n ".join([b"B" * 99] * 10_000) + b"\n\nbody\n",
        "megabyte-header-line-without-colon": HEAD + megabyte + b"\n\nbody\n",
        "ten-thousand-fields": b"".join(b"X-H%d: v\n" % i for i in range(10_000)) + b"\nbody\n",
        "ten-thousand-received": b"".join(b"Received: from h%d by h%d\n" % (i, i + 1) for i in range(10_000)) + b"Subject: hops\n\nbody\n",
        "ten-thousand-subjects": b"Subject: again\n" * 10_000 + b"\nbody\n",
        "ten-thousand-spoofed": b"X-Virus-Status: Clean\nX-Spam-Flag: NO\n" * 5_000 + b"Subject: spoofed\n\nbody\n",
        "hundred-thousand-continuations": b"Subject: many\n" + b" x\n" * 100_000 + b"\nbody\n",
        "five-megabyte-body-line": _mail(b"a long body line", b"", b"C" * 5_000_000 + b"\n"),
        "binary-garbage": random.Random(SEED).randbytes(64 * 1024),
        "mbox-from-lines": b"From a@b Fri Nov 27 10:00:00 2026\nFrom b@c Fri Nov 27 10:00:00 2026\nSubject: mbox\n\nFrom me\n>From you\n",
        "mbox-from-line-continued": b"From a@b Fri Nov 27 10:00:00 2026\n continued\nSubject: mbox\n\nbody\n",
    }
    for name, raw in cases.items():
        yield Case(f"shape-{name}", _const(raw))


def archives() -> Iterator[Case]:
    """Bombs and nested or damaged archives, without EICAR: clamd must answer, and answer clean."""
    rng = random.Random(SEED)

    def nested_zip(depth: int) -> bytes:
        data = rng.randbytes(100)
        for level in range(depth):
            data = zipped({f"level{level}.zip": data})
        return _attachment(data, "nested.zip", b"nested zip %d" % depth)

    def damaged(data: bytes) -> bytes:
        return _attachment(data[: len(data) // 2] + b"\x00" * 64 + data[len(data) // 2 + 64 :], "damaged.zip", b"damaged zip")

    hostile_names = {f"../../{i}/\x1b[2J\r\nname{i}.txt": b"x" for i in range(20)}
    yield Case("archive-zip-bomb", lambda: _attachment(zip_bomb(), "bomb.zip", b"zip bomb"))
    past_max_file_size = "1 GB of zeros: past clamd's MaxFileSize (Heuristics.Limits.Exceeded.MaxFileSize)"
    yield Case("archive-gzip-bomb", lambda: _attachment(gzip_bomb(), "bomb.gz", b"gzip bomb"), unscannable=past_max_file_size)
    yield Case(
        "archive-zip-of-four-bombs", lambda: _attachment(zipped({f"bomb{i}.zip": zip_bomb() for i in range(4)}), "bombs.zip", b"bombs")
    )
    too_deep = "zips inside zips past clamd's MaxRecursion (Heuristics.Limits.Exceeded.MaxRecursion)"
    for depth in (5, 20, 50):
        yield Case(f"archive-nested-zip-{depth}", _const(nested_zip(depth)), unscannable=too_deep if depth > ZIP_DEPTH_SEEN + 1 else "")
    yield Case("archive-damaged-zip", _const(damaged(zipped({f"f{i}.txt": rng.randbytes(200) for i in range(10)}))))
    yield Case("archive-zip-5000-entries", _const(_attachment(zipped({f"e{i}": b"" for i in range(5000)}), "many.zip", b"many entries")))
    yield Case("archive-zip-hostile-names", _const(_attachment(zipped(hostile_names), "names.zip", b"hostile names")))
    yield Case("archive-tar-hostile-names", _const(_attachment(_tar(hostile_names), "names.tar", b"hostile names in tar")))


ARCHIVERS: dict[str, Callable[[bytes], bytes]] = {
    "zip": lambda data: zipped({"inner.com": data}),
    "gzip": lambda data: gzip.compress(data, mtime=0),
    "bz2": bz2.compress,
    "xz": lzma.compress,
    "tar": lambda data: _tar({"inner.com": data}),
}


def _in_chain(chain: tuple[str, ...]) -> bytes:
    data = eicar()
    for archiver in chain:
        data = ARCHIVERS[archiver](data)
    return _attachment(data, "file." + ".".join(reversed(chain)), b"EICAR in " + "/".join(chain).encode())


def _mime_part(cte: bytes, encoded: bytes) -> bytes:
    return _mail(
        b"EICAR as " + cte, b"MIME-Version: 1.0\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: " + cte + b"\n", encoded
    )


def _nested_zip_eicar(depth: int) -> bytes:
    data = eicar()
    for level in range(depth):
        data = zipped({f"level{level}.zip" if level else "eicar.com": data})
    return _attachment(data, "nested.zip", b"EICAR %d zips deep" % depth)


def _forwarded_eicar(depth: int) -> bytes:
    """EICAR attached to a message forwarded (as a message/rfc822 part) DEPTH - 1 times."""
    raw = _attachment(eicar(), "eicar.com", b"the innermost")
    for _ in range(depth - 1):
        raw = _rfc822(raw)
    return raw


def _rfc822_body_eicar(depth: int) -> bytes:
    """EICAR attached to a message that is the whole body of DEPTH messages/rfc822, one in the other."""
    raw = _attachment(eicar(), "eicar.com", b"the innermost")
    for _ in range(depth):
        raw = HEAD + b"Subject: wrapper\nMIME-Version: 1.0\nContent-Type: message/rfc822\n\n" + raw
    return raw


def _multipart_eicar(depth: int) -> bytes:
    opening = b"".join(b'Content-Type: multipart/mixed; boundary="m%d"\n\n--m%d\n' % (i, i) for i in range(depth))
    part = b"Content-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n" + _wrap64(eicar())
    return HEAD + b"Subject: EICAR deep in multiparts\nMIME-Version: 1.0\n" + opening + part


def hidden_eicar() -> Iterator[Case]:
    """EICAR in the places a filter must look into, and in a few where ClamAV does not look."""
    seen: dict[str, Callable[[], bytes]] = {}
    for archiver in ARCHIVERS:
        seen[f"in-{archiver}"] = functools.partial(_in_chain, (archiver,))
    for outer, inner in itertools.product(("zip", "gzip", "tar"), ARCHIVERS):
        seen[f"in-{inner}-in-{outer}"] = functools.partial(_in_chain, (inner, outer))
    seen["in-zip-in-zip-in-zip"] = functools.partial(_in_chain, ("zip", "zip", "zip"))
    seen[f"in-zip-{ZIP_DEPTH_SEEN}-deep"] = functools.partial(_nested_zip_eicar, ZIP_DEPTH_SEEN)
    seen["after-a-zip-bomb"] = lambda: _attachment(_bomb_then_eicar(), "bomb.zip", b"EICAR after a bomb")
    seen["in-rfc822"] = functools.partial(_forwarded_eicar, 2)
    seen[f"in-rfc822-part-{RFC822_PART_DEPTH}-deep"] = functools.partial(_forwarded_eicar, RFC822_PART_DEPTH)
    seen[f"in-rfc822-body-{RFC822_BODY_DEPTH_SEEN}-deep"] = functools.partial(_rfc822_body_eicar, RFC822_BODY_DEPTH_SEEN)
    seen["in-zip-in-rfc822"] = lambda: _rfc822(_in_chain(("zip",)))
    seen["in-rfc822-in-zip"] = lambda: _attachment(zipped({"forwarded.eml": _forwarded_eicar(1)}), "mail.zip", b"a mail in a zip")
    seen["uuencoded-in-body"] = lambda: _mail(b"uuencoded", b"", b"Hello,\n\n" + _uuencode(eicar()))
    seen["uuencoded-crlf"] = lambda: _mail(b"uuencoded", b"", _uuencode(eicar())).replace(b"\n", b"\r\n")
    seen["uuencoded-x-uuencode-part"] = lambda: _mime_part(b"x-uuencode", _uuencode(eicar()))
    seen["uuencoded-in-rfc822"] = lambda: _rfc822(_mail(b"inner uuencoded", b"", _uuencode(eicar())))
    seen["uuencoded-zip"] = lambda: _mail(b"uuencoded zip", b"", _uuencode(zipped({"e.com": eicar()}), "e.zip"))
    seen["quoted-printable-every-byte"] = lambda: _mime_part(b"quoted-printable", b"".join(b"=%02X" % c for c in eicar()) + b"\n")
    seen["base64-one-char-lines"] = lambda: _mime_part(b"base64", b"\n".join(bytes([c]) for c in base64.b64encode(eicar())) + b"\n")
    seen["base64-with-junk"] = lambda: _mime_part(b"base64", b"!!".join(_wrap64(eicar(), 4).split(b"\n")))
    seen["plain-text-body"] = lambda: _mail(b"plain", b"", eicar() + b"\n")
    seen["boundary-never-closed"] = lambda: _attachment(eicar(), "e.com").replace(b"--b1--\n", b"")
    seen["boundary-param-missing"] = lambda: _attachment(eicar(), "e.com").replace(b'; boundary="b1"', b"")
    seen["boundary-mismatched"] = lambda: _attachment(eicar(), "e.com").replace(b'boundary="b1"', b'boundary="zz"')
    seen[f"in-multipart-{MULTIPART_DEPTH_SEEN}-deep"] = functools.partial(_multipart_eicar, MULTIPART_DEPTH_SEEN)
    seen["attachment-crlf"] = lambda: _attachment(eicar(), "e.com").replace(b"\n", b"\r\n")
    # Deeper than clamd goes in a whole message: found in the part scanned alone.
    seen[f"in-zip-{ZIP_DEPTH_SEEN + 1}-deep"] = functools.partial(_nested_zip_eicar, ZIP_DEPTH_SEEN + 1)
    seen[f"in-rfc822-body-{RFC822_BODY_DEPTH_SEEN + 1}-deep"] = functools.partial(_rfc822_body_eicar, RFC822_BODY_DEPTH_SEEN + 1)
    seen[f"in-multipart-{MULTIPART_DEPTH_SEEN + 1}-deep"] = functools.partial(_multipart_eicar, MULTIPART_DEPTH_SEEN + 1)
    for name, make in seen.items():
        yield Case(f"eicar-{name}", make, virus=True)
    walk_too_deep = f"MIME parts nested deeper than {WALK_DEPTH} levels"
    yield Case("eicar-in-multipart-300-deep", functools.partial(_multipart_eicar, 300), unscannable=walk_too_deep)
    yield Case(
        "eicar-in-zip-30-deep",
        functools.partial(_nested_zip_eicar, 30),
        unscannable="zips inside zips past clamd's MaxRecursion even in the part alone",
    )

    unseen = {
        "base64-without-transfer-encoding": (
            lambda: _mime_part(b"7bit", _wrap64(eicar())),
            "a part without Content-Transfer-Encoding: base64 is not decoded, as MIME says",
        ),
        "base64-encoded-word-subject": (
            lambda: HEAD + b"Subject: =?us-ascii?b?" + base64.b64encode(eicar()) + b"?=\n\nbody\n",
            "clamd does not decode RFC 2047 encoded-words in header fields",
        ),
        "uuencoded-under-subject-only": (
            lambda: b"Subject: x\n\n" + _uuencode(eicar()),
            "with only a Subject field clamd does not take the file for mail, so it does not look for uuencode",
        ),
        "attachment-bare-cr": (
            lambda: _attachment(eicar(), "e.com").replace(b"\n", b"\r"),
            "with bare CR line ends clamd's mail parser sees one long line: no header, no parts, no base64 to decode",
        ),
    }
    banned = {"uuencoded-under-subject-only": "the uuencoded file is called file.com: a banned extension"}
    for name, (make, why) in unseen.items():
        yield Case(f"eicar-unseen-{name}", make, unseen=why, banned=banned.get(name, ""))


INJECTIONS = {
    "b-crlf-bcc": b"=?utf-8?b?" + base64.b64encode(b"hello\r\nBcc: victim@example.com\r\n\r\nforged body") + b"?=",
    "q-crlf-bcc": b"=?utf-8?q?hello=0D=0ABcc:=20victim@example.com=0D=0A=0D=0Aforged?=",
    "split-cr-lf": b"=?utf-8?q?hello=0D?= =?utf-8?q?=0AX-Injected:=20yes?=",
    "latin1-nel": b"=?iso-8859-1?q?hello=85X-Injected:=20yes?=",
    "utf8-c1-csi": b"=?utf-8?b?" + base64.b64encode("a\u009b31mred\u0085X-Injected: yes".encode()) + b"?=",
    "escape-sequences": b"=?utf-8?q?=1B]0;pwned=07=1B[2J=1B[31mred?=",
    "line-separators": b"=?utf-8?b?" + base64.b64encode("a\u2028X-Injected: yes\u2029b".encode()) + b"?=",
    "vt-ff-fs-gs-rs": b"=?utf-8?q?a=0BX-A:=201=0CX-B:=202=1CX-C:=203=1D=1E?=",
    "nul-and-del": b"=?utf-8?q?a=00b=7Fc=00X-Injected:=20yes?=",
    "unknown-charset-crlf": b"=?x-evil?q?a=0D=0AX-Injected:=20yes?=",
    "raw-escape-and-c1": b"\x1b[2J\xc2\x9b31m\xc2\x85X-Injected: yes",
    "raw-cr-in-value": b"hello\rX-Injected: yes",
}
INJECTION_FIELDS = ("Subject", "Message-ID", "Received")

ENVELOPE_INJECTIONS = {
    "crlf-bcc": "alice@example.org\r\nBcc: victim@example.com",
    "lf-header": "alice@example.org\nX-Injected: yes",
    "escape": "\x1b]0;pwned\x07\x1b[2Jalice@example.org",
    "c1": "alice\x85X-Injected: yes\x9b31m@example.org",
    "line-separator": "alice\u2028X-Injected: yes@example.org",
    "tab-and-vt": "alice\t\x0bX-Injected: yes@example.org",
    # Postfix passes ${sender} as the bytes it got; Python's argv holds bytes that are not UTF-8 as lone surrogates.
    "not-utf8": os.fsdecode(b"al\xffice\xc3(@example.org"),
}


def _eicar_attached() -> bytes:
    return _attachment(eicar(), "eicar.com", b"EICAR attached")


def _virus_with(field: str, value: bytes) -> bytes:
    """EICAR attached under a header whose FIELD is VALUE (raw, as it would arrive)."""
    fields = {
        "From": b"alice@example.org",
        "To": b"bob@example.net",
        "Subject": b"injection",
        "Message-ID": b"<injection@example.org>",
        "Received": b"from mx.example.org by mail.example.net",
    }
    fields[field] = value
    head = b"".join(name.encode() + b": " + text + b"\n" for name, text in fields.items())
    return _attachment(eicar(), "eicar.com", head=head)


UNDECODABLE = {
    "base64-one-char": b"=?utf-8?b?a?=",  # email.header: HeaderParseError
    "charset-not-ascii": b"=?utf-\xc3\xa9?q?x?=",  # email.charset: CharsetError
}


def undecodable() -> Iterator[Case]:
    """EICAR under header fields that Python's email.header cannot decode: still quarantined and reported."""
    for (kind, value), field in itertools.product(UNDECODABLE.items(), INJECTION_FIELDS):
        yield Case(f"undecodable-{field.lower()}-{kind}", functools.partial(_virus_with, field, value), virus=True)


def injections() -> Iterator[Case]:
    """Values that try to add lines or header fields to the admin report and the quarantine listing.

    Each carries EICAR, so that both doors quarantine it and mail the admin a VIRUS FOUND report.
    """
    for (kind, value), field in itertools.product(INJECTIONS.items(), INJECTION_FIELDS):
        yield Case(f"inject-{field.lower()}-{kind}", functools.partial(_virus_with, field, value), virus=True)
    for kind, address in ENVELOPE_INJECTIONS.items():
        yield Case(f"inject-sender-{kind}", _eicar_attached, virus=True, sender=address)
        yield Case(f"inject-recipient-{kind}", _eicar_attached, virus=True, recipients=(RECIPIENT, address))
    yield Case("inject-queue-id", _eicar_attached, virus=True, queue_id="4F2A1C\r\nX-Injected: yes")


def _alternating_eicar(depth: int) -> bytes:
    """EICAR attached at the bottom of DEPTH levels that alternate multipart/mixed and message/rfc822."""
    raw = _attachment(eicar(), "eicar.com", b"the innermost")[len(HEAD) :]
    for i in range(depth - 1):
        if i % 2:
            raw = b"Subject: wrapper\nMIME-Version: 1.0\nContent-Type: message/rfc822\n\n" + raw
        else:
            raw = b'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="x%d"\n\n--x%d\n' % (i, i) + raw + b"\n--x%d--\n" % i
    return HEAD + b"Subject: alternating\n" + raw


def _padded_spam(size: int, where: str) -> bytes:
    """GTUBE near the top of a message padded to SIZE bytes: with text lines, or with a base64 attachment."""
    text = b"Cheap watches, act now.\n\n" + GTUBE.encode() + b"\n\n"
    rng = random.Random(SEED)
    if where == "text":
        line = b"Our catalogue has many more offers, every one of them better than the last one.\n"
        body = text + line * (size // len(line))
        return _mail(b"padded spam", b"", body)[:size]
    body = (
        b"--p1\nContent-Type: text/plain\n\n" + text + b"--p1\nContent-Type: application/octet-stream; name=catalogue.bin\n"
        b"Content-Transfer-Encoding: base64\n\n" + _wrap64(rng.randbytes(size * 3 // 4)) + b"--p1--\n"
    )
    return _mail(b"padded spam", b'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="p1"\n', body)


def deep_eicar() -> Iterator[Case]:
    """EICAR at the bottom of 5 to 60 levels of MIME, in three shapes; deeper than the walk goes; padded spam."""
    for depth in DEEP_LEVELS:
        yield Case(f"deep-eicar-multipart-{depth}", functools.partial(_multipart_eicar, depth), virus=True)
        yield Case(f"deep-eicar-rfc822-body-{depth}", functools.partial(_rfc822_body_eicar, depth), virus=True)
        yield Case(f"deep-eicar-alternating-{depth}", functools.partial(_alternating_eicar, depth), virus=True)
    too_deep = f"MIME parts nested deeper than {WALK_DEPTH} levels"
    yield Case(f"deep-eicar-multipart-{WALK_DEPTH + 1}", functools.partial(_multipart_eicar, WALK_DEPTH + 1), unscannable=too_deep)
    # Padded with an attachment: SpamAssassin reads 500 KB of plain text for some 10 s on 2 cores, past this
    # corpus's scanner timeout (tests/test_pipe_real.py scores that shape with a longer one).
    for size in (600_000, 740_000):
        yield Case(f"padded-spam-{size // 1000}k", functools.partial(_padded_spam, size, "attachment"), spam=True)


FAMILIES = (
    broken_boundaries,
    nesting,
    charsets_and_encodings,
    encoded_words,
    raw_header_bytes,
    spoofed_fields,
    line_endings,
    sizes_and_shapes,
    archives,
    hidden_eicar,
    deep_eicar,
    injections,
    undecodable,
)


def cases() -> list[Case]:
    """The whole corpus, in a fixed order. Names are unique."""
    out = [case for family in FAMILIES for case in family()]
    names = [case.name for case in out]
    assert len(set(names)) == len(names), "duplicate case names"
    return out
