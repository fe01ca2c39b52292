"""The subject tag of spam that is delivered, as SpamAssassin's rewrite_header Subject: "[SPAM] original".

Pure: bytes in, bytes out. The original value keeps its bytes (8-bit, RFC 2047
encoded words, folds); the tag goes before it, followed by a space, so that an
encoded word that starts the original stays separated from the tag by a blank
(RFC 2047, section 5). A tag that is not ASCII is itself written as encoded
words (then, before an encoded word, with the space inside: readers drop the
blanks between two encoded words, section 6.2). message.rewrite() and rewritten() write the edit; milter_values() gives
it as pymilter takes it.
"""

from __future__ import annotations

import base64
import re

from . import message
from .record import dataclass

# Bytes of UTF-8 per encoded word: "=?UTF-8?B?" + base64 of 45 bytes (60 characters) + "?=" is 72 of
# the 75 characters RFC 2047 allows.
_WORD_BYTES = 45
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Blanks and folds before a value (a value may start on the line after its name).
_LEADING = re.compile(rb"(?:[ \t]|\r?\n(?=[ \t]))*")
# An RFC 2047 encoded word at the start of a value, as readers take it: followed by a blank or the end.
_ENCODED_WORD = re.compile(rb"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=(?:[ \t\r\n]|\Z)")


@dataclass(frozen=True)
class SubjectEdit:
    """What to write instead of the message's Subject fields."""

    subject: bytes  # the new raw Subject value: no "Subject:", no final line end; folds as found
    previous: bytes | None  # the original raw value, for X-Spam-Prev-Subject (None: the message had no Subject)


def tag(raw_subject: bytes | None, tag: str) -> SubjectEdit | None:
    """RAW_SUBJECT (the first Subject's raw value, raw_subject(); None: no Subject) with TAG before it,
    or None when there is nothing to do: TAG is blank, or the subject starts with it already (raw or
    decoded: a message is never tagged twice). A message without Subject gets TAG as its Subject."""
    text = _CONTROLS.sub(" ", tag).strip(" \t")
    if not text:
        return None
    if text.isascii():
        word = text.encode("ascii")
    elif raw_subject and _ENCODED_WORD.match(raw_subject):
        # Readers drop the blanks between two encoded words: the space after the tag goes inside it.
        word = _encoded_words(text + " ")
    else:
        word = _encoded_words(text)
    if raw_subject is None:
        return SubjectEdit(word, None)
    if _tagged(raw_subject, text, word):
        return None
    return SubjectEdit(word + b" " + raw_subject if raw_subject else word, raw_subject)


def raw_subject(head: bytes) -> bytes | None:
    """The raw value of HEAD's first Subject field: what follows "Subject:", without the blanks (and
    folds) before it and the line end after it; None when HEAD has no Subject field. HEAD is the start of
    a message (message.HEAD_LIMIT bytes are enough): read the way message.parse() reads a header."""
    for field in message.parse(head).fields:
        if message.is_subject(field):
            value = field.partition(b":")[2]
            value = value[_LEADING.match(value).end() :]
            if value.endswith(b"\n"):
                value = value[:-2] if value.endswith(b"\r\n") else value[:-1]
            return value
    return None


def milter_values(edit: SubjectEdit) -> tuple[str, str | None]:
    """EDIT's Subject and X-Spam-Prev-Subject values for pymilter's chgheader() and addheader().

    pymilter takes str only (its C arguments are "s" and "z": bytes are refused, and a str is
    encoded as strict UTF-8, so surrogateescape'd bytes would raise UnicodeEncodeError; a NUL
    raises ValueError). libmilter wants folds as a bare LF then a blank; Postfix adds the CR. So:
    the value made safe as message.raw_value() makes it, folds as LF, NUL and any other CR as a
    space, and bytes that are not UTF-8 read as Latin-1 (message.decoded()'s rule for raw 8-bit):
    a UTF-8 or ASCII value reaches the message unchanged, other 8-bit bytes cannot."""
    previous = None if edit.previous is None else _milter_text(edit.previous)
    return _milter_text(edit.subject), previous


def _milter_text(value: bytes) -> str:
    value = message.raw_value(value).replace(b"\r\n", b"\n").replace(b"\r", b" ").replace(b"\x00", b" ")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _encoded_words(text: str) -> bytes:
    """TEXT as RFC 2047 "B" encoded words in UTF-8, each within 75 characters and whole characters,
    separated by a space (which readers drop between two encoded words)."""
    words, chunk = [], b""
    for char in text:
        data = char.encode("utf-8")
        if len(chunk) + len(data) > _WORD_BYTES:
            words.append(chunk)
            chunk = b""
        chunk += data
    words.append(chunk)
    return b" ".join(b"=?UTF-8?B?" + base64.b64encode(w) + b"?=" for w in words)


def _tagged(raw: bytes, text: str, word: bytes) -> bool:
    """Whether the subject RAW starts with the tag: as our bytes, as raw UTF-8, or once decoded."""
    flat = raw.replace(b"\r\n", b"\n").replace(b"\n ", b" ").replace(b"\n\t", b" ").lstrip(b" \t")
    if flat.startswith(word) or flat.startswith(text.encode("utf-8")):
        return True
    return message.decoded(flat).lstrip(" \t").startswith(text)
