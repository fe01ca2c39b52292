"""Release links of the digests: `public_url/r/TOKEN`, TOKEN = id, expiry, recipient and an HMAC-SHA256 over them.

A link names one quarantine entry and one of its recipients, and is good until
its expiry (a Unix time). Anything altered fails the HMAC check (Forged: 403);
a link past its expiry, or already used, is Gone (410). A use is claimed before
anything is sent, by creating a file named after the link's MAC with O_EXCL in
the state folder, so two clicks at once deliver once; a send that fails gives
the claim back.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from datetime import datetime

from ..actions.held import ID_PATTERN
from ..record import dataclass

USED_FOLDER = "web-links-used"


class Forged(Exception):
    """Not a link we made (or altered since)."""


class Gone(Exception):
    """A link we made, but expired or already used."""


@dataclass(frozen=True)
class Link:
    qid: str
    recipient: str
    expires: int  # Unix time
    mac: str


def _mac(key: bytes, qid: str, recipient: str, expires: int) -> str:
    data = f"release\n{qid}\n{recipient}\n{expires}".encode()
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode("utf-8")).decode("ascii").rstrip("=")


def make(key: bytes, qid: str, recipient: str, expires: int) -> str:
    """The token for releasing QID to RECIPIENT until EXPIRES."""
    return f"{qid}.{expires}.{_b64(recipient)}.{_mac(key, qid, recipient, expires)}"


def url(public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}/r/{token}"


def check(key: bytes, token: str, now: datetime) -> Link:
    """The link TOKEN stands for; Forged if we did not make it, Gone if it has expired."""
    parts = token.split(".")
    if len(parts) != 4 or not ID_PATTERN.match(parts[0]) or not parts[1].isdigit() or len(parts[1]) > 12:
        raise Forged("not a release link")
    qid, expires, encoded, mac = parts[0], int(parts[1]), parts[2], parts[3]
    try:
        recipient = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise Forged("not a release link") from None
    if _b64(recipient) != encoded or not hmac.compare_digest(mac, _mac(key, qid, recipient, expires)):
        raise Forged("this link was not made here, or was altered")
    if now.timestamp() >= expires:
        raise Gone("this link has expired")
    return Link(qid, recipient, expires, mac)


def csrf(key: bytes, link: Link) -> str:
    """The form token of the link's page (the link is the capability; this binds the POST to our own form)."""
    return hmac.new(key, f"link-form\n{link.mac}".encode(), hashlib.sha256).hexdigest()


def _path(state_dir: str, link: Link) -> str:
    return os.path.join(state_dir, USED_FOLDER, link.mac)


def used(state_dir: str, link: Link) -> bool:
    return os.path.lexists(_path(state_dir, link))


def claim(state_dir: str, link: Link) -> None:
    """Mark LINK used, once: Gone if it already was."""
    os.makedirs(os.path.join(state_dir, USED_FOLDER), mode=0o700, exist_ok=True)
    try:
        fd = os.open(_path(state_dir, link), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise Gone("this link was already used") from None
    try:
        os.write(fd, f"{link.qid} {link.recipient} {link.expires}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def unclaim(state_dir: str, link: Link) -> None:
    """Give the claim back (the release failed: nothing was delivered)."""
    try:
        os.unlink(_path(state_dir, link))
    except FileNotFoundError:
        pass
