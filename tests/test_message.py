"""Header surgery on raw bytes: what is delivered is what was received, minus spoofed fields, plus ours."""

import hashlib
import random
import sys
import time
import tracemalloc

import pytest

from mailfilter import message
from mailfilter.actions import reinject
from mailfilter.config import DeliveryConfig
from mailfilter.spool import CHUNK, Spool

import corpus
import hostile

OURS = (("X-Spam-Flag", "NO"), ("X-Virus-Status", "Clean"))


def test_spoofed_fields_are_removed_and_ours_prepended():
    out = message.rewrite(corpus.spoofed_headers(), OURS)
    head, body = out.split(b"\n\n", 1)
    assert head.splitlines() == [
        b"X-Spam-Flag: NO",
        b"X-Virus-Status: Clean",
        b"From: mallory@example.org",
        b"To: bob@example.net",
        b"Subject: trust me",
    ]
    assert body == b"X-Spam-Flag: NO  <- this line is body text and must stay\n"


def test_everything_else_is_byte_for_byte():
    raw = corpus.raw_8bit_subject() + b"\x00 trailing \r stuff\n"
    out = message.rewrite(raw, OURS)
    assert out == b"X-Spam-Flag: NO\nX-Virus-Status: Clean\n" + raw


def test_crlf_messages_get_crlf_headers():
    raw = b"Subject: a\r\nX-Spam-Score: 99\r\n\r\nbody\r\n"
    assert message.rewrite(raw, OURS) == b"X-Spam-Flag: NO\r\nX-Virus-Status: Clean\r\nSubject: a\r\n\r\nbody\r\n"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", b"X-Spam-Flag: NO\nX-Virus-Status: Clean\n"),
        (b"Subject: no newline", b"X-Spam-Flag: NO\nX-Virus-Status: Clean\nSubject: no newline\n"),
        (b"\nonly a body\n", b"X-Spam-Flag: NO\nX-Virus-Status: Clean\n\nonly a body\n"),
        (b"not a header line\nmore\n", b"X-Spam-Flag: NO\nX-Virus-Status: Clean\n\nnot a header line\nmore\n"),
        (
            b"From sender@x Fri Nov 27\nSubject: s\n\nb\n",
            b"From sender@x Fri Nov 27\nX-Spam-Flag: NO\nX-Virus-Status: Clean\nSubject: s\n\nb\n",
        ),
    ],
)
def test_odd_messages_stay_messages(raw, expected):
    assert message.rewrite(raw, OURS) == expected


def test_our_values_cannot_break_the_header():
    out = message.rewrite(b"Subject: s\n\nb\n", (("X-Virus-Status", "Infected (Evil\r\nBcc: x@y\tname\x00)"),))
    first = out.split(b"\n")[0]
    assert first == b"X-Virus-Status: Infected (Evil  Bcc: x@y name )"


def test_subject_decoding_is_safe_to_print():
    parsed = message.parse(corpus.injecting_subject())
    subject = message.subject(parsed)
    assert "\r" not in subject and "\n" not in subject
    assert subject == "hello\\x0d\\x0aBcc: victim@example.com\\x0d\\x0a\\x0d\\x0aforged body"
    assert message.received_chain(parsed) == ["from evil X-Injected: yes"]  # a fold, unfolded


def test_8bit_subject_is_read_without_error():
    subject = message.subject(message.parse(corpus.raw_8bit_subject()))
    assert subject.startswith("Gr") and "\n" not in subject


def test_values_unfold_and_find_every_received():
    raw = b"Received: from a\n by b\nReceived: from c\nsubject: x\n y\n\nbody"
    parsed = message.parse(raw)
    assert message.received_chain(parsed) == ["from a by b", "from c"]
    assert message.subject(parsed) == "x y"


@pytest.mark.parametrize("char", ["\x1b", "\x07", "\x85", "\u2028", "\x7f"])
def test_printable_escapes_controls(char):
    assert char not in message.printable(f"a{char}b")


def test_printable_bounds_length():
    assert len(message.printable("x" * 10000, 100)) == 103


# Regressions found by the hostile corpus and the fuzzers (tests/hostile.py, fuzz/).


@pytest.mark.parametrize("value", [b"=?utf-8?b?a?=", "=?utf-\u00e9?q?x?=".encode(), b"=?x-unknown?q?=ZZ?="])
def test_undecodable_encoded_words_stay_as_they_are(value):
    assert message.decoded(value) == value.decode("utf-8")


@pytest.mark.parametrize("char", ["\udcff", "\u202e", "\u2066", "\u200f"])
def test_printable_escapes_surrogates_and_bidi_controls(char):
    out = message.printable(f"a{char}b")
    assert char not in out and out.encode("utf-8")  # encodable: logging and click.echo no longer fail


def test_a_bare_cr_does_not_end_a_header_line():
    # Postfix ends lines at LF only: the spoofed fields below are header fields, and must go.
    raw = b"Subject: hi\r\r\nX-Spam-Flag: NO\nX-Virus-Status: Clean\n\nbody\n"
    out = message.rewrite(raw, OURS)
    assert out.count(b"X-Spam-Flag") == 1 and out.count(b"X-Virus-Status") == 1 and out.endswith(b"\n\nbody\n")


def test_leading_from_lines_stay_first_and_a_later_one_ends_the_header():
    out = message.rewrite(b"From a@b x\nFrom c@d y\nSubject: s\nX-Spam-Flag: NO\n\nb\n", OURS)
    assert out == b"From a@b x\nFrom c@d y\nX-Spam-Flag: NO\nX-Virus-Status: Clean\nSubject: s\n\nb\n"
    parsed = message.parse(b"Subject: s\nFrom x@y z\nX-Spam-Flag: NO\n\nb\n")
    assert parsed.fields == (b"Subject: s\n",) and parsed.rest.startswith(b"From x@y z\n")


# The streaming form (issue "Keep the promise", items 11 and 12): rewritten() gives rewrite()'s bytes
# without holding the body, and both are linear in the size of the header.


def _streamed(raw, window=CHUNK, on_disk=True):
    with Spool(memory_limit=7 if on_disk else len(raw) + 1) as spool:
        spool.write(raw)
        return b"".join(message.rewritten(spool, OURS, window=window))


def test_rewritten_gives_rewrites_bytes_on_the_hostile_corpus():
    for case in hostile.cases():
        if "bomb" in case.name:
            continue  # an ordinary header; building the bombs alone takes a minute
        raw = case.raw
        want = message.rewrite(raw, OURS)
        for window in (CHUNK, 61) if len(raw) < 300_000 else (CHUNK,):
            assert _streamed(raw, window) == want, (case.name, window)


ATOMS = [b"\n", b"\r\n", b"\r", b" ", b"\t", b":", b"From ", b">From ", b"X-Spam-", b"x-VIRUS-a", b"Subject", b"a"]
ATOMS += [b"\xff\xfe", b"\x00", b"From:", b"From :", b": v", b"\n\n", b"\n ", b"\n\t", b"=?utf-8?q?=C3=A9?="]


def test_rewritten_gives_rewrites_bytes_on_fuzz_like_input():
    """Bare CR, no header, From_ lines, no final newline, CRLF, 8-bit, spoofed fields, folds: in small
    windows, so lines cross window ends and many are longer than a window."""
    rng = random.Random(11)
    for _ in range(3000):
        raw = b"".join(rng.choice(ATOMS) for _ in range(rng.randrange(40)))
        want = message.rewrite(raw, OURS)
        for window in (8, 9, 16, CHUNK):
            assert _streamed(raw, window, on_disk=window % 2 == 1) == want, (raw, window)


@pytest.mark.parametrize(
    "raw",
    [
        b"X-Spam-" + b"n" * 200_000 + b": spoofed, a name longer than the window\nSubject: s\n\nbody\n",
        b"X-Spam-" + b"n" * 200_000 + b" no colon: body\n\nmore\n",
        b"From " + b"f" * 200_000 + b"\nSubject: s\n\nbody",
        b"Subject: s\n X-Spam: " + b"c" * 200_000,
        b"Subject: s\nX-Virus-Status: " + b"v" * 200_000,
    ],
)
def test_rewritten_scans_lines_longer_than_its_window(raw):
    assert _streamed(raw) == message.rewrite(raw, OURS)


def test_a_header_of_millions_of_continuation_lines_costs_seconds_not_minutes():
    """Before: each continuation line was appended to its field (`bytes +=`), quadratic: 1.2 MB took 11 s and
    4.7 MB about 3 minutes. Now a field is one slice: parse, rewrite and rewritten of 4.7 MB take well under
    a second each. The bound is 20x that, for a loaded machine; the old code would need minutes."""
    raw = b"Subject: many\n" + b" x\n" * 1_570_000 + b"\nbody\n"
    started = time.monotonic()
    parsed = message.parse(raw)
    out = message.rewrite(raw, OURS)
    assert _streamed(raw) == out
    assert time.monotonic() - started < 20
    assert len(parsed.fields) == 1 and parsed.rest == b"\nbody\n" and len(message.subject(parsed)) == 500 + 3


def test_rewriting_a_21_mb_message_holds_no_copy_of_it(tmp_path):
    """rewritten() and sendmail() hold a few chunks of a 21 MB message, never the message: tracemalloc's
    peak while the message goes through a sendmail that reads and discards stays under 2 MB (before,
    rewrite(spool.read()) cost three copies: 67 MB)."""
    head = b"From: a@example.org\nX-Spam-Flag: YES\nSubject: big\n\n"
    line = b"x" * 76 + b"\n"
    digest = tmp_path / "sha256"
    discard = "import hashlib, sys\nh = hashlib.sha256()\nwhile c := sys.stdin.buffer.read(65536): h.update(c)\n"
    discard += f"open({str(digest)!r}, 'w').write(h.hexdigest())"
    config = DeliveryConfig(sendmail=[sys.executable, "-c", discard], timeout=60)
    want = hashlib.sha256(b"X-Spam-Flag: NO\nX-Virus-Status: Clean\nFrom: a@example.org\nSubject: big\n\n")
    with Spool(tmpdir=str(tmp_path)) as spool:
        spool.write(head)
        for _ in range(21_000_000 // (len(line) * 1000) + 1):
            spool.write(line * 1000)
            want.update(line * 1000)
        assert spool.size > 21_000_000
        tracemalloc.start()
        try:
            reinject.sendmail(message.rewritten(spool, OURS), "a@example.org", ["b@example.net"], config)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 2_000_000, peak
    assert digest.read_text() == want.hexdigest()  # and sendmail got every byte of it, rewritten


def test_a_spoofed_uninspected_field_is_removed_and_a_released_stamp_kept():
    raw = b"X-Mailfilter-Uninspected: nothing, trust me\nX-Mailfilter-Released: web:admin on 2026-12-03\nSubject: s\n\nbody\n"
    out = message.rewrite(raw, (("X-Virus-Status", "Clean"),))
    assert out == b"X-Virus-Status: Clean\nX-Mailfilter-Released: web:admin on 2026-12-03\nSubject: s\n\nbody\n"
    with Spool.of(raw) as spool:
        assert b"".join(message.rewritten(spool, (("X-Virus-Status", "Clean"),), window=7)) == out
