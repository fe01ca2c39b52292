"""A held message as display data: headers, text parts as text, HTML parts sanitized, attachments by name/type/size.

Nothing here opens an attachment or fetches anything. Every string is given to
the templates as text, which Jinja2 escapes; the only markup passed through is
an HTML part after nh3 (ammonia): scripts, styles, event handlers, forms and
style attributes are gone, and so is every src and every link but mailto:, so
the page can load nothing from elsewhere. The Content-Security-Policy (app.py)
forbids scripts and remote loads even if something slipped through.
"""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage, Message

import nh3

from ..message import printable
from ..record import dataclass, field

DISPLAY_LIMIT = 2 << 20  # bytes of a message parsed for display; the rest is said to be cut
TEXT_LIMIT = 200_000  # characters shown of one text part
PARTS_LIMIT = 200

_TAGS = {
    "a", "abbr", "b", "blockquote", "br", "caption", "center", "code", "dd", "div", "dl", "dt", "em", "font",
    "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "li", "ol", "p", "pre", "s", "small", "span",
    "strong", "sub", "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "u", "ul",
}  # fmt: skip
_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"alt", "title", "width", "height"},
    "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan"},
}


@dataclass
class Attachment:
    name: str
    type: str
    size: int


@dataclass
class Shown:
    headers: list[tuple[str, str]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    htmls: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _keep(tag: str, attribute: str, value: str) -> str | None:
    """Only mailto: links survive; every src and every other URL is dropped (nothing remote, nothing of ours)."""
    if attribute == "href":
        return value if value.strip().lower().startswith("mailto:") else None
    return value


def sanitize(html: str) -> str:
    return nh3.clean(
        html,
        tags=_TAGS,
        attributes=_ATTRIBUTES,
        attribute_filter=_keep,
        url_schemes={"mailto"},
        strip_comments=True,
        link_rel="noopener noreferrer nofollow",
    )


def _text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, "replace")
    except LookupError:
        return payload.decode("utf-8", "replace")


def _header(msg: Message, name: str, value: object) -> str:
    try:
        return printable(str(value), 2000)
    except Exception:  # noqa: BLE001  (a header the email package cannot decode is shown raw)
        return printable(repr(value), 2000)


def show(raw: bytes) -> Shown:
    """RAW (at most DISPLAY_LIMIT of it) taken apart for display; whatever cannot be parsed is a problem, not a crash."""
    out = Shown()
    if len(raw) > DISPLAY_LIMIT:
        out.problems.append(f"only the first {DISPLAY_LIMIT} bytes are shown")
        raw = raw[:DISPLAY_LIMIT]
    try:
        msg: Message = email.message_from_bytes(raw, _class=EmailMessage, policy=email.policy.default)
        for name, value in msg.items():
            out.headers.append((printable(name, 200), _header(msg, name, value)))
        for n, part in enumerate(msg.walk()):
            if n >= PARTS_LIMIT:
                out.problems.append(f"more than {PARTS_LIMIT} parts; the rest are not shown")
                break
            _part(part, out)
    except (RecursionError, ValueError, TypeError, LookupError, AttributeError, IndexError) as exc:
        out.problems.append(f"the message could not be taken apart completely ({type(exc).__name__})")
    return out


def _part(part: Message, out: Shown) -> None:
    if part.is_multipart():
        return
    ctype = part.get_content_type()
    try:
        filename = part.get_filename()
    except (ValueError, TypeError, LookupError):
        filename = "(unreadable name)"
    disposition = part.get_content_disposition()
    if filename or disposition == "attachment" or ctype not in ("text/plain", "text/html"):
        payload = part.get_payload(decode=True)
        size = len(payload) if isinstance(payload, bytes) else 0
        out.attachments.append(Attachment(printable(filename or "(no name)", 300), printable(ctype, 100), size))
        return
    text = _text(part)
    if len(text) > TEXT_LIMIT:
        text = text[:TEXT_LIMIT]
        out.problems.append(f"a text part is longer than {TEXT_LIMIT} characters; the rest is not shown")
    if ctype == "text/html":
        out.htmls.append(sanitize(text))
    else:
        out.texts.append(text)
