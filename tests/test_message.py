"""Header surgery on raw bytes: what is delivered is what was received, minus spoofed fields, plus ours."""

import pytest

from mailfilter import message

import corpus

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
