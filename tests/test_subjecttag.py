"""The subject tag ([policy] subject_tag): prepended the way SpamAssassin's rewrite_header Subject does,
written by message.rewrite() and rewritten() as raw bytes, never twice, never a way to add a field."""

import email
import email.policy
import random
from email.header import decode_header, make_header

import pytest

from mailfilter import message, subjecttag
from mailfilter.spool import CHUNK, Spool
from mailfilter.subjecttag import SubjectEdit

OURS = (("X-Spam-Flag", "YES"), ("X-Spam-Score", "9.9"))
TAG = "[SPAM]"


def _read(value: bytes) -> str:
    """VALUE as a reader shows it: encoded words decoded, folds unfolded."""
    msg = email.message_from_bytes(b"Subject: " + value + b"\n\n", policy=email.policy.default)
    return str(msg["Subject"])


def _streamed(raw: bytes, subject: SubjectEdit | None, window: int = CHUNK, on_disk: bool = True) -> bytes:
    with Spool(memory_limit=7 if on_disk else len(raw) + 1) as spool:
        spool.write(raw)
        return b"".join(message.rewritten(spool, OURS, window=window, subject=subject))


def _both(raw: bytes, subject: SubjectEdit | None) -> bytes:
    want = message.rewrite(raw, OURS, subject=subject)
    for window in (7, 8, 9, 16, CHUNK):
        assert _streamed(raw, subject, window, on_disk=window % 2 == 1) == want, (raw, window)
    return want


def test_a_plain_subject():
    edit = subjecttag.tag(b"Cheap watches", TAG)
    assert edit == SubjectEdit(b"[SPAM] Cheap watches", b"Cheap watches")
    raw = b"From: a@example.org\nSubject: Cheap watches\nTo: b@example.net\n\nbody\n"
    out = _both(raw, edit)
    assert out == (
        b"X-Spam-Flag: YES\nX-Spam-Score: 9.9\nSubject: [SPAM] Cheap watches\nX-Spam-Prev-Subject: Cheap watches\n"
        b"From: a@example.org\nTo: b@example.net\n\nbody\n"
    )


@pytest.mark.parametrize("tag", ["[SPAM] ", "  [SPAM]\t", "[SPAM]"])
def test_blanks_around_the_tag_do_not_count(tag):
    assert subjecttag.tag(b"hi", tag).subject == b"[SPAM] hi"


@pytest.mark.parametrize("tag", ["", "   ", "\t"])
def test_an_empty_tag_does_nothing(tag):
    assert subjecttag.tag(b"hi", tag) is None and subjecttag.tag(None, tag) is None


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"=?UTF-8?B?0J/RgNC40LLQtdGCLCDQvNC40YAh?=", "Привет, мир!"),
        (b"=?utf-8?q?Gr=C3=BC=C3=9Fe?= aus =?iso-8859-1?q?K=F6ln?=", "Grüße aus Köln"),
        (b"=?koi8-r?B?8NLJ18XU?=", "Привет"),
    ],
)
def test_an_encoded_subject_stays_valid(raw, text):
    edit = subjecttag.tag(raw, TAG)
    assert edit.subject == b"[SPAM] " + raw and edit.previous == raw
    assert _read(edit.subject) == f"[SPAM] {text}"
    assert str(make_header(decode_header(edit.subject.decode("ascii")))) == f"[SPAM] {text}"
    out = _both(b"Subject: " + raw + b"\r\nFrom: a@example.org\r\n\r\nbody\r\n", edit)
    msg = email.message_from_bytes(out, policy=email.policy.default)
    assert msg["Subject"] == f"[SPAM] {text}" and msg["X-Spam-Prev-Subject"] == text


def test_a_folded_subject_keeps_its_folds():
    raw = b"Subject: a long subject\r\n\tthat goes on\r\n and on\r\nFrom: a@example.org\r\n\r\nbody\r\n"
    value = subjecttag.raw_subject(raw)
    assert value == b"a long subject\r\n\tthat goes on\r\n and on"
    edit = subjecttag.tag(value, TAG)
    out = _both(raw, edit)
    assert out.startswith(
        b"X-Spam-Flag: YES\r\nX-Spam-Score: 9.9\r\nSubject: [SPAM] a long subject\r\n\tthat goes on\r\n and on\r\n"
        b"X-Spam-Prev-Subject: a long subject\r\n\tthat goes on\r\n and on\r\nFrom: a@example.org\r\n\r\n"
    )
    assert message.subject(message.parse(out)) == "[SPAM] a long subject that goes on and on"


@pytest.mark.parametrize("subject", [b"Gr\xfc\xdfe aus K\xf6ln", "Привет".encode("koi8-r"), "Привет".encode()])
def test_8bit_subject_bytes_are_kept(subject):
    edit = subjecttag.tag(subject, TAG)
    assert edit.subject == b"[SPAM] " + subject and edit.previous == subject
    out = _both(b"Subject: " + subject + b"\n\nbody\n", edit)
    assert b"\nSubject: [SPAM] " + subject + b"\nX-Spam-Prev-Subject: " + subject + b"\n\nbody\n" in out


def test_a_message_without_subject_gets_one():
    edit = subjecttag.tag(subjecttag.raw_subject(b"From: a@example.org\n\nSubject: in the body\n"), "[SPAM] ")
    assert edit == SubjectEdit(b"[SPAM]", None)
    out = _both(b"From: a@example.org\n\nSubject: in the body\n", edit)
    assert out == b"X-Spam-Flag: YES\nX-Spam-Score: 9.9\nSubject: [SPAM]\nFrom: a@example.org\n\nSubject: in the body\n"


@pytest.mark.parametrize(
    "raw",
    [
        b"[SPAM] hi",
        b"  [SPAM] hi",
        b"[SPAM]hi",
        b"[SPAM]",
        b"=?UTF-8?B?W1NQQU1dIGhp?=",  # "[SPAM] hi", encoded
        b"=?utf-8?q?=5BSPAM=5D?= hi",
        b"\r\n [SPAM] folded",
    ],
)
def test_a_subject_is_never_tagged_twice(raw):
    assert subjecttag.tag(raw, TAG) is None
    assert subjecttag.tag(raw, "[SPAM] ") is None


def test_tagging_the_tagged_does_nothing():
    first = subjecttag.tag(b"=?UTF-8?B?0J/RgNC40LLQtdGC?=", TAG)
    assert subjecttag.tag(first.subject, TAG) is None
    other = subjecttag.tag(b"hi", "Спам:")
    assert subjecttag.tag(other.subject, "Спам:") is None
    assert subjecttag.tag("Спам: hi".encode(), "Спам:") is None  # raw UTF-8, as another filter wrote it


def test_a_tag_that_is_not_ascii_is_an_encoded_word():
    edit = subjecttag.tag(b"Cheap watches", "[СПАМ]")
    assert edit.subject.isascii() and edit.subject.startswith(b"=?UTF-8?B?") and edit.subject.endswith(b"?= Cheap watches")
    assert _read(edit.subject) == "[СПАМ] Cheap watches"
    encoded = subjecttag.tag(b"=?UTF-8?B?0J/RgNC40LLQtdGC?=", "[СПАМ]")  # two encoded words: the space inside the first
    assert _read(encoded.subject) == "[СПАМ] Привет"
    assert str(make_header(decode_header(encoded.subject.decode()))) == "[СПАМ] Привет"
    assert subjecttag.tag(encoded.subject, "[СПАМ]") is None
    assert _read(subjecttag.tag(b"=?bogus x", "[СПАМ]").subject) == "[СПАМ] =?bogus x"  # not an encoded word: one space
    assert subjecttag.tag(None, "[СПАМ]").subject == edit.subject.removesuffix(b" Cheap watches")


def test_a_long_non_ascii_tag_is_several_words_within_75_characters():
    tag = "Ж" * 60 + "€"  # 123 bytes of UTF-8
    edit = subjecttag.tag(b"x", tag)
    words = edit.subject.split(b" ")[:-1]
    assert len(words) == 3 and all(len(w) <= 75 for w in words)
    assert _read(edit.subject) == tag + " x"


def test_raw_subject_reads_the_first_subject_field():
    head = b"From x@y Mon\nReceived: a\nSUBJECT :\t first\nSubject: second\n\nSubject: body\n"
    assert subjecttag.raw_subject(head) == b"first"
    assert subjecttag.raw_subject(b"Subject:\n\nbody") == b""
    assert subjecttag.raw_subject(b"Subject: no newline") == b"no newline"
    assert subjecttag.raw_subject(b"Subject: x\r\r\n\r\n") == b"x\r"  # a bare CR is data
    assert subjecttag.raw_subject(b"To: b\n\n") is None
    assert subjecttag.raw_subject(b"") is None


def test_every_subject_and_every_prev_subject_is_replaced():
    raw = (
        b"Subject: first\n continued\nX-Spam-Prev-Subject: spoofed\n folded\nFrom: a@example.org\n"
        b"subject  : second\nx-spam-prev-subject: spoofed too\nTo: b@example.net\n\nSubject: body\n"
    )
    edit = subjecttag.tag(subjecttag.raw_subject(raw), TAG)
    out = _both(raw, edit)
    assert out == (
        b"X-Spam-Flag: YES\nX-Spam-Score: 9.9\nSubject: [SPAM] first\n continued\nX-Spam-Prev-Subject: first\n continued\n"
        b"From: a@example.org\nTo: b@example.net\n\nSubject: body\n"
    )


def test_without_an_edit_the_subject_stays_where_it_was():
    raw = b"From: a@example.org\nSubject: hi\nX-Spam-Prev-Subject: spoofed\n\nbody\n"
    assert _both(raw, None) == b"X-Spam-Flag: YES\nX-Spam-Score: 9.9\nFrom: a@example.org\nSubject: hi\n\nbody\n"
    assert message.rewrite(raw, OURS) == message.rewrite(raw, OURS, subject=None)


@pytest.mark.parametrize(
    "value",
    [
        b"x\r\nBcc: victim@example.com",
        b"x\nBcc: victim@example.com",
        b"x\rBcc: victim@example.com",
        b"x\r\n\r\nforged body",
        b"x\n \nBcc: victim@example.com",
        b"x\r\n \r\nBcc: victim@example.com",
        b"x\r\n\t\r\n",
        b"x\n",
    ],
)
def test_an_injected_line_end_cannot_add_a_field(value):
    raw = b"From: a@example.org\nSubject: hi\n\nbody\n"
    for edit in (SubjectEdit(value, None), SubjectEdit(b"[SPAM] hi", value), subjecttag.tag(value, TAG)):
        out = _both(raw, edit)
        parsed = message.parse(out)
        names = [parsed.field_name(f) for f in parsed.fields]
        assert b"bcc" not in names and parsed.rest == b"\nbody\n", out
        lines = out.split(b"\n\nbody\n")[0].split(b"\n")
        assert all(line.strip(b" \t\r") for line in lines), out  # no line of blanks only in the header
        subject, previous = subjecttag.milter_values(edit)
        for text in (subject, previous or ""):
            assert "\r" not in text and "\x00" not in text
            assert all(part[:1] in (" ", "\t") and part.strip(" \t") for part in text.split("\n")[1:]), text


def test_milter_values_are_str_that_pymilter_takes():
    folded = subjecttag.tag(b"a\r\n b", TAG)
    assert subjecttag.milter_values(folded) == ("[SPAM] a\n b", "a\n b")  # libmilter's folds: LF then a blank
    assert subjecttag.milter_values(subjecttag.tag(None, TAG)) == ("[SPAM]", None)
    utf8 = subjecttag.tag("Привет".encode(), TAG)
    assert subjecttag.milter_values(utf8) == ("[SPAM] Привет", "Привет")  # UTF-8: the same bytes again
    latin1 = subjecttag.tag(b"Gr\xfc\xdfe\x00", TAG)
    subject, previous = subjecttag.milter_values(latin1)
    assert subject == "[SPAM] Grüße " and previous == "Grüße "
    for text in (subject, previous):
        text.encode("utf-8")  # what pymilter's "s" does; surrogates would raise here


ATOMS = [b"\n", b"\r\n", b"\r", b" ", b"\t", b":", b"From ", b"X-Spam-", b"x-spam-prev-subject", b"Subject", b"subject :"]
ATOMS += [b"SUBJECT:", b"Subject-x:", b"a", b"\xff", b"\n\n", b"\n ", b"=?utf-8?q?=C3=A9?=", b"[SPAM]"]


def test_rewrite_and_rewritten_agree_on_fuzz_like_input():
    """Subject fields folded, unfinished, longer than the window, after a From_ line, without a header:
    rewritten() gives rewrite()'s bytes in windows of 7 (8, the least it reads), 8, 9, 16 and CHUNK."""
    rng = random.Random(23)
    for _ in range(1500):
        raw = b"".join(rng.choice(ATOMS) for _ in range(rng.randrange(40)))
        edit = subjecttag.tag(subjecttag.raw_subject(raw), rng.choice([TAG, "Спам", "[SPAM] "]))
        _both(raw, edit)
        _both(raw, SubjectEdit(b"x\r\ny\n z", b"\r\n"))


@pytest.mark.parametrize(
    "raw",
    [
        b"Subject: " + b"s" * 200_000 + b"\nFrom: a\n\nbody\n",
        b"Subject" + b" " * 100_000 + b": spaced\n\nbody\n",
        b"From: a\nSubject: s\n" + b" c\n" * 50_000 + b"To: b\n\nbody",
        b"From: a\nSubject: " + b"v" * 200_000,
        b"Subjectx" + b"n" * 100_000 + b": not a subject\nSubject: s\n\nbody\n",
    ],
)
def test_subject_lines_longer_than_the_window(raw):
    edit = subjecttag.tag(subjecttag.raw_subject(raw), TAG)
    want = message.rewrite(raw, OURS, subject=edit)
    assert _streamed(raw, edit) == want and _streamed(raw, edit, 61) == want
    assert [f[:16] for f in message.parse(want).fields if message.is_subject(f)] == [b"Subject: [SPAM] "]
