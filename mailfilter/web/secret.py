"""The console's key ([web] secret_file): signs release links and CSRF tokens. Made 0600 with 32 random bytes when missing."""

from __future__ import annotations

import os
import secrets
import stat

from ..actions.quarantine import write_atomic

SIZE = 32


class SecretError(Exception):
    """The key file is unusable (not a regular file, readable by others, too short)."""


def load(path: str, create: bool = True) -> bytes:
    """The key in PATH; with CREATE, a new random key is written (0600, atomically) when PATH does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        if not create:
            raise SecretError(f"{path}: missing") from None
        folder, name = os.path.split(path)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        key = secrets.token_hex(SIZE).encode("ascii")
        try:
            write_atomic(folder, name, [key + b"\n"], mode=0o600)
        except FileExistsError:
            pass
        return load(path, create=False)
    except OSError as exc:
        raise SecretError(f"{path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SecretError(f"{path}: not a regular file")
        if st.st_mode & 0o077:
            raise SecretError(f"{path}: readable by others (mode {stat.S_IMODE(st.st_mode):o}); chmod 600 it")
        data = os.read(fd, 4096).strip()
    finally:
        os.close(fd)
    if len(data) < SIZE:
        raise SecretError(f"{path}: shorter than {SIZE} bytes")
    return data
