"""SpamAssassin through spamd: the SYMBOLS command of the SPAMC protocol, our own connection and reader.

scan_blocking() runs in a scanner thread of pipeline.Runner. aiospamc is not used here: its Client
wraps every request in three nested wait_for() (a task each), logs through loguru and builds objects
per request, which cost more CPU than the exchange itself, and importing it (asyncio, loguru, ssl)
cost a `mailfilter pipe` process some 70 ms before any mail was read. SYMBOLS is one request line,
one header and the message; the answer a status line, two headers and the names of the tests hit.
(`mailfilter learn` still uses aiospamc for TELL: nothing in a mail path imports it.)
"""

from __future__ import annotations

import re
import socket
import time

from ..config import SpamdConfig
from ..model import SCANNER_SPAMD, Cause, ScanFailure, SpamOutcome, SpamReport
from ..record import replace
from . import pool

CHUNK = 64 * 1024


STATUS = re.compile(rb"^SPAMD/(\d+)\.(\d+) +(\d+) *(.*)$")
SPAM = re.compile(r"^\s*(true|false|yes|no)\s*;\s*(-?\d+(?:\.\d+)?)\s*/\s*(-?\d+(?:\.\d+)?)\s*$", re.I)
ANSWER_TEXT = 200  # characters of an unreadable answer quoted in its failure


class ConnectFailed(Exception):
    """No connection to spamd (its cause is the OSError)."""


class BadAnswer(Exception):
    """spamd's answer could not be read, or spamd answered with an error status."""


def truncate(head: bytes) -> bytes:
    """The first bytes of a message too large for spamd (HEAD: its first [spamd] max_size bytes), cut where
    spamd reads the least nonsense: before the last line that starts a MIME delimiter (`--`) in the second
    half, else after the last line end; HEAD itself when it holds no line end at all."""
    line_end = head.rfind(b"\n")
    if line_end < 0:
        return head
    delimiter = head.rfind(b"\n--", len(head) // 2, line_end + 1)
    if delimiter > 0:
        return head[: delimiter + 1]
    return head[: line_end + 1]


def scan_blocking(message: bytes, config: SpamdConfig) -> SpamOutcome:
    """Blocking, for a thread: one deadline ([spamd] timeout) for the whole pool ([spamd] servers, else the
    single host/port or socket): connecting, sending and reading the answer, failover included."""
    request = _request(message, config.user)
    servers = pool.members(config.servers, config.host, config.port, config.socket)

    def attempt(server: pool.Server, budget: float) -> SpamOutcome:
        one = replace(config, host=server.host, port=server.port or config.port, socket=server.path, timeout=budget)
        return _scan_one(request, one)

    return pool.POOLS.get(SCANNER_SPAMD, servers, ping).scan(attempt, config.timeout)


def ping(server: pool.Server, timeout: float) -> bool:
    """spamd's health check: PING answered by PONG."""
    return pool.ping(server, timeout, b"PING SPAMC/1.5\r\n\r\n", b"SPAMD/1.5 0 PONG")


def _scan_one(request: bytes, config: SpamdConfig) -> SpamOutcome:
    """REQUEST on the one server of CONFIG, within its timeout."""
    try:
        return _report(_exchange_blocking(request, config, time.monotonic() + config.timeout))
    except _errors() as exc:
        return _failure(exc, config)


def _exchange_blocking(request: bytes, config: SpamdConfig, deadline: float) -> bytes:
    """Send REQUEST on a new connection and read the answer to its end; every call on the socket fails once
    DEADLINE has passed, and the socket is closed on every path."""
    try:
        sock = _connect_blocking(config, deadline)
    except TimeoutError:
        raise
    except OSError as error:
        raise _connection_failed() from error
    with sock:
        _arm(sock, deadline)
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            _arm(sock, deadline)
            chunk = sock.recv(CHUNK)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def _connect_blocking(config: SpamdConfig, deadline: float) -> socket.socket:
    """A connected socket, tried address by address as asyncio's open_connection() does, with its error texts."""
    if config.socket:
        targets = [(socket.AF_UNIX, config.socket)]
    else:
        targets = [
            (family, address) for family, _, _, _, address in socket.getaddrinfo(_ascii(config.host), config.port, type=socket.SOCK_STREAM)
        ]
    errors: list[OSError] = []
    for family, address in targets:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            _arm(sock, deadline)
            sock.connect(address)
            return sock
        except TimeoutError:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            errors.append(exc if family == socket.AF_UNIX else OSError(exc.errno, f"Connect call failed {address}"))
        except BaseException:
            sock.close()
            raise
    if not errors:
        raise OSError("getaddrinfo() returned empty list")
    if len({str(exc) for exc in errors}) == 1:
        raise errors[0]
    raise OSError("Multiple exceptions: {}".format(", ".join(str(exc) for exc in errors)))


def _ascii(host: str) -> str | bytes:
    """HOST as getaddrinfo() takes it without the idna codec: bytes when ASCII (a host name given as str is
    encoded with idna, whose import costs a `mailfilter pipe` process some 2 ms)."""
    return host.encode("ascii") if host.isascii() else host


def _arm(sock: socket.socket, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("spamd deadline passed")
    sock.settimeout(left)


def _connection_failed() -> Exception:
    return ConnectFailed()


def _request(message: bytes, user: str = "") -> bytes:
    """The SYMBOLS request, with the message's CRLF line ends as LF; USER (spamc -u) as its User header.

    A milter gets the message in SMTP's CRLF form; SpamAssassin turns CRLF into LF
    itself, which cost spamd some 3 ms of CPU per 22 kB message here (4% of its
    scan), and scores both forms the same (tests/test_scanners_real.py). A bare CR
    is left as it is.
    """
    body = message.replace(b"\r\n", b"\n")
    who = b"User: %s\r\n" % user.encode("ascii") if user else b""
    return b"SYMBOLS SPAMC/1.5\r\nContent-length: %d\r\n%s\r\n" % (len(body), who) + body


def _report(answer: bytes) -> SpamOutcome:
    """spamd's ANSWER: a SpamReport; BadAnswer when it cannot be read or its status is not 0 (EX_OK)."""
    if not answer:
        raise BadAnswer("spamd closed the connection without an answer")
    head, sep, rest = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = STATUS.match(lines[0])
    if status is None:
        raise BadAnswer(f"not a spamd answer: {_quote(answer)}")
    code, said = int(status.group(3)), status.group(4).decode("ascii", "replace").strip()
    if code != 0:
        raise BadAnswer(f"spamd answered {code} {said}".rstrip())
    if not sep:
        raise BadAnswer(f"spamd's answer ends inside its headers: {_quote(answer)}")
    headers = {}
    for line in lines[1:]:
        name, colon, value = line.decode("ascii", "replace").partition(":")
        if not colon:
            raise BadAnswer(f"a header line of spamd's answer without a colon: {_quote(line)}")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit() or int(length) > len(rest):
            raise BadAnswer(f"spamd's answer is cut short (Content-length {length}, {len(rest)} bytes)")
        rest = rest[: int(length)]
    spam = headers.get("spam")
    if spam is None:
        return ScanFailure(SCANNER_SPAMD, Cause.ERROR, "answer without a Spam header")
    found = SPAM.match(spam)
    if found is None:
        raise BadAnswer(f"spamd's Spam header cannot be read: {spam[:ANSWER_TEXT]!r}")
    tests = tuple(t for t in rest.decode("ascii", "replace").strip().split(",") if t)
    return SpamReport(score=float(found.group(2)), threshold=float(found.group(3)), tests=tests)


def _quote(data: bytes) -> str:
    return repr(data[:ANSWER_TEXT])


def _errors() -> tuple[type[BaseException], ...]:
    """What talking to spamd can raise: our two exceptions and OSError (timeouts included)."""
    return ConnectFailed, BadAnswer, OSError


def _failure(exc: BaseException, config: SpamdConfig) -> ScanFailure:
    if isinstance(exc, ConnectFailed):
        return ScanFailure(SCANNER_SPAMD, Cause.UNAVAILABLE, _text(exc) or "cannot connect")
    if isinstance(exc, TimeoutError):
        return ScanFailure(SCANNER_SPAMD, Cause.TIMEOUT, f"no answer within {config.timeout:.3g} s")
    if isinstance(exc, OSError):
        return ScanFailure(SCANNER_SPAMD, Cause.UNAVAILABLE, exc.strerror or str(exc))
    return ScanFailure(SCANNER_SPAMD, Cause.ERROR, _text(exc) or type(exc).__name__)


def _text(exc: BaseException) -> str:
    text = str(exc)
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text}: {cause}" if text else str(cause)
    return text
