"""The keys of the config file: how each is declared (_key: default, description, check), the checks of
values, and the conversion of a TOML value to a field's type. config.py declares the sections with them."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

from .record import field


class ConfigError(Exception):
    """The configuration cannot be used; the text names the file and key."""


def _key(default: Any, doc: str, check: Callable[[Any], str | None] | None = None, octal: bool = False) -> Any:
    metadata = {"doc": doc, "check": check, "octal": octal}
    if isinstance(default, list):
        return field(default_factory=lambda: tuple(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in choices else "must be one of " + ", ".join(repr(c) for c in choices)

    return check


# Upper bounds: what passes here must also work at mail time (socket timeouts, timers and
# sizes overflow on absurd values, and would then defer every message).
MAX_SECONDS = 86400.0  # one day
MAX_INTERVAL = 366 * 86400.0
MAX_BYTES = 1 << 40


def _seconds(limit: float = MAX_SECONDS) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not (math.isfinite(value) and 0 < value <= limit):
            return f"must be a number of seconds above 0 and at most {limit:g}"
        return None

    return check


def _bytes(value: Any) -> str | None:
    return None if 0 < value <= MAX_BYTES else f"must be a number of bytes above 0 and at most {MAX_BYTES}"


def _absolute(value: Any) -> str | None:
    return None if os.path.isabs(value) else "must be an absolute path"


def _port(value: Any) -> str | None:
    return None if 0 < value < 65536 else "must be a port number (1-65535)"


def _score(value: Any) -> str | None:
    return None if not math.isnan(value) and value != -math.inf else "must be a number (inf disables)"


def _argv(value: Any) -> str | None:
    if not value or not all(isinstance(v, str) and v for v in value):
        return "must be a non-empty list of non-empty strings (a command and its arguments)"
    if not os.path.isabs(value[0]):
        return "the command must be an absolute path (no shell, no PATH search)"
    return None


def _milter_socket(value: Any) -> str | None:
    if value.startswith("unix:/") or (value.startswith("inet:") and "@" in value) or value.startswith("inet6:"):
        return None
    return "must be unix:/PATH or inet:PORT@HOST"


def _socket_path(value: Any) -> str | None:
    return None if value == "" or os.path.isabs(value) else "must be an absolute path of a unix socket (or '')"


def _absolute_or_empty(value: Any) -> str | None:
    return None if value == "" or os.path.isabs(value) else "must be an absolute path (or '' to turn it off)"


def _listen(value: Any) -> str | None:
    host, _, port = value.rpartition(":")
    if value == "" or (host and port.isdigit() and 0 < int(port) < 65536):
        return None
    return "must be HOST:PORT (or '' to turn it off)"


def _dsn(value: Any) -> str | None:
    if value == "" or value.startswith(("postgresql://", "postgres://")):
        return None
    return "must be a PostgreSQL URI, postgresql://USER@HOST[:PORT]/DBNAME (or '' for the folder)"


def _mode(value: Any) -> str | None:
    return None if 0 <= value <= 0o777 else "must be a file mode such as 0o660"


ON_ERROR = _one_of("tempfail", "accept")
BANNED_ACTIONS = _one_of("quarantine", "reject", "allow")


def _servers(value: Any) -> str | None:
    from .scanners.pool import check_servers

    return check_servers(value)


def _user(value: Any) -> str | None:
    ok = value == "" or (len(value) <= 64 and all(c.isascii() and (c.isalnum() or c in "._-@+") for c in value))
    return None if ok else "must be a user name (letters, digits and ._-@+, at most 64)"


def _header_text(value: Any) -> str | None:
    ok = len(value) <= 100 and all(c.isprintable() for c in value)
    return None if ok else "must be printable text of at most 100 characters"


def _extensions(value: Any) -> str | None:
    ok = all(isinstance(v, str) and v and v.isprintable() and "." not in v and "/" not in v for v in value)
    return None if ok else "must be a list of extensions without the dot, such as \"exe\""


def _types(value: Any) -> str | None:
    ok = all(isinstance(v, str) and v.count("/") == 1 and v.isprintable() and " " not in v for v in value)
    return None if ok else "must be a list of MIME types, such as \"application/x-dosexec\""


def _entries(value: Any) -> str | None:
    from .senders import parse_entry

    for entry in value:
        try:
            parse_entry(entry)
        except (ValueError, TypeError) as exc:
            return str(exc)
    return None


def _count(limit: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if 0 < value <= limit else f"must be a whole number from 1 to {limit}"

    return check


def _url_or_empty(value: Any) -> str | None:
    return None if value == "" or value.startswith(("https://", "http://")) else "must be an http(s):// URL (or '')"


def _convert(where: str, value: Any, annotation: str) -> Any:
    """Check one TOML value against the field's type; ints are accepted for floats."""
    ok = {
        "str": isinstance(value, str),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "list": isinstance(value, list),
    }[annotation]
    if not ok:
        raise ConfigError(f"{where}: expected {annotation_words(annotation)}, got {value!r}")
    if annotation == "float":
        return float(value)
    if annotation == "list":
        return tuple(value)
    return value


def annotation_words(annotation: str) -> str:
    return {
        "str": "a string",
        "int": "an integer",
        "float": "a number",
        "bool": "true or false",
        "list": "a list of strings",
    }[annotation]
