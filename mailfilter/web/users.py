"""Console users ([web] users_file): one `NAME:ARGON2ID-HASH` line each, file 0600, replaced atomically."""

from __future__ import annotations

import os
import re

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ..actions.quarantine import write_atomic

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_HASHER = PasswordHasher()  # argon2id with argon2-cffi's recommended cost
# Verified when the name is unknown, so that a wrong name costs as long as a wrong password.
_DUMMY = _HASHER.hash("not a password of anyone")


class UserError(Exception):
    """A bad user name or password, or an unusable users file."""


def read(path: str) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        return {}
    users = {}
    for line in lines:
        name, sep, digest = line.partition(":")
        if sep and NAME.match(name) and digest.startswith("$argon2id$"):
            users[name] = digest
    return users


def _write(path: str, users: dict[str, str]) -> None:
    folder, name = os.path.split(path)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    write_atomic(folder, name, ["".join(f"{n}:{h}\n" for n, h in sorted(users.items())).encode("utf-8")], mode=0o600)


def add(path: str, name: str, password: str) -> bool:
    """Add NAME or change its password; True if NAME is new."""
    if not NAME.match(name):
        raise UserError(f"{name!r}: a user name is letters, digits and . _ @ - (at most 64)")
    if len(password) < 8:
        raise UserError("a password has at least 8 characters")
    users = read(path)
    new = name not in users
    users[name] = _HASHER.hash(password)
    _write(path, users)
    return new


def delete(path: str, name: str) -> bool:
    """Remove NAME; False if there was no such user."""
    users = read(path)
    if users.pop(name, None) is None:
        return False
    _write(path, users)
    return True


def verify(path: str, name: str, password: str) -> bool:
    digest = read(path).get(name)
    try:
        return _HASHER.verify(digest or _DUMMY, password) and digest is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
