"""Reinjection over SMTP for `mailfilter smtp`: the filtered message goes to Postfix's second smtpd
([smtp] reinject, the one without a content_filter), with the envelope Postfix gave us.

One delivery is one SMTP transaction on a connection from a small pool: XFORWARD (when the server
offers it, with the attributes Postfix forwarded to us), MAIL FROM (the null sender as <>, BODY=8BITMIME
and SMTPUTF8 when the message came with them and the server offers them), RCPT per recipient, DATA with
the bytes streamed and dot-stuffed, nothing else changed. It succeeds only on the server's 2xx to
end-of-data; anything else raises ReinjectError, and the door defers the message (4xx to Postfix).

The whole transaction is bounded by one deadline ([smtp] timeout): every read and write gets the time
that is left, and a connection that runs out is closed. Closed before our final dot, the server discards
the message; closed while it answers the dot, the message may have been taken: the error says so.
Connections are kept for reuse (RSET between messages); a broken one is dropped, with every other idle one
(the server closes them all after its smtpd_timeout), and a fresh one is tried once, but only when nothing of
the message can have been taken yet (the RSET failed).
"""

from __future__ import annotations

import smtplib
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from ..record import dataclass

POOL_SIZE = 4  # idle connections kept
HELO_NAME = "mailfilter.localhost"
XFORWARD_LIMIT = 500  # bytes of one XFORWARD command line (Postfix's smtpd takes 512 at most)


class ReinjectError(Exception):
    """The reinjecting smtpd did not take the message. MAYBE_TAKEN: the answer to our final dot was lost."""

    def __init__(self, text: str, maybe_taken: bool = False) -> None:
        super().__init__(text)
        self.maybe_taken = maybe_taken


class _Retry(Exception):
    """A reused connection broke before the message was sent: worth one fresh connection."""


@dataclass(frozen=True)
class Transaction:
    """What one reinjection sends. XFORWARD: attribute -> value (xtext, as Postfix sent it to us)."""

    sender: str
    recipients: tuple[str, ...]
    xforward: Mapping[str, str]
    eight_bit: bool = False
    smtputf8: bool = False


def split_address(spec: str) -> tuple[str, int]:
    host, _, port = spec.rpartition(":")
    return host.strip("[]"), int(port)


class Pool:
    """Connections to HOST:PORT, at most POOL_SIZE idle ones kept. Thread-safe; one connection per delivery."""

    def __init__(self, address: str, timeout: float, size: int = POOL_SIZE) -> None:
        self.host, self.port = split_address(address)
        self.timeout, self.size = timeout, size
        self._idle: list[smtplib.SMTP] = []
        self._lock = threading.Lock()

    def deliver(self, transaction: Transaction, message: Iterable[bytes], gate: Callable[[], None] | None = None) -> str:
        """Send one message; return the server's reply to end-of-data. ReinjectError otherwise.

        GATE runs right before the final dot, the point of no return: when it raises (the door's client
        gave up), the connection is dropped without the dot, the server discards the message, and
        GATE's exception is raised here."""
        deadline = time.monotonic() + self.timeout
        chunks = iter(message)
        for attempt in (0, 1):
            client, reused = self._take(deadline)
            try:
                reply = _transaction(client, transaction, chunks, deadline, reused and attempt == 0, gate)
            except _Retry:
                _drop(client)
                self.close()  # the other idle connections are as old as this one: the second try takes a fresh one
                continue
            except ReinjectError:
                _drop(client)
                raise
            except (OSError, smtplib.SMTPException) as exc:  # a timeout is an OSError too
                _drop(client)
                raise ReinjectError(f"reinjection to {self.host}:{self.port} failed: {exc or type(exc).__name__}") from None
            except BaseException:  # the gate's refusal, or a failure reading the message: never the final dot
                _drop(client)
                raise
            self._give_back(client)
            return reply
        raise ReinjectError(f"reinjection to {self.host}:{self.port} failed: the connection broke twice")

    def _take(self, deadline: float) -> tuple[smtplib.SMTP, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        try:
            client = smtplib.SMTP(timeout=_left(deadline))
            code, text = client.connect(self.host, self.port)
            if client.sock is not None and client.sock.family in (socket.AF_INET, socket.AF_INET6):
                # Commands go out one at a time and the message's last bytes in a small write: without this,
                # Nagle holds that write until the server's delayed ACK, some 40 ms per message.
                client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if code != 220:
                _drop(client)
                raise ReinjectError(f"{self.host}:{self.port} greeted with {code} {_text(text)}")
            code, text = client.ehlo(HELO_NAME)
            if code != 250:
                _drop(client)
                raise ReinjectError(f"{self.host}:{self.port} refused EHLO: {code} {_text(text)}")
        except (OSError, smtplib.SMTPException) as exc:
            raise ReinjectError(f"cannot reach the reinjecting smtpd at {self.host}:{self.port}: {exc or type(exc).__name__}") from None
        return client, False

    def _give_back(self, client: smtplib.SMTP) -> None:
        with self._lock:
            if len(self._idle) < self.size:
                self._idle.append(client)
                return
        _quit(client)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for client in idle:
            _quit(client)


def _transaction(
    client: smtplib.SMTP, tx: Transaction, chunks: Iterator[bytes], deadline: float, may_retry: bool, gate: Callable[[], None] | None
) -> str:
    def command(line: bytes, retry: bool = False) -> tuple[int, str]:
        _budget(client, deadline)
        try:
            client.send(line + b"\r\n")
            code, text = client.getreply()
        except (OSError, smtplib.SMTPServerDisconnected):
            if retry:
                raise _Retry from None
            raise
        if code == 421 and retry:  # a cached connection the server is closing
            raise _Retry
        return code, _text(text)

    def expect(what: str, reply: tuple[int, str], ok: int = 250) -> None:
        if reply[0] != ok:
            raise ReinjectError(f"{what} refused by the reinjecting smtpd: {reply[0]} {reply[1]}")

    if may_retry:
        expect("RSET", command(b"RSET", retry=True))
    for line in xforward_lines(tx.xforward, _offered(client, "xforward")):
        expect("XFORWARD", command(line))
    params = []
    if tx.eight_bit and client.has_extn("8bitmime"):
        params.append("BODY=8BITMIME")
    if tx.smtputf8:
        if not client.has_extn("smtputf8"):
            raise ReinjectError("the message needs SMTPUTF8 and the reinjecting smtpd does not offer it")
        params.append("SMTPUTF8")
    expect("MAIL FROM", command(_encode(f"MAIL FROM:<{tx.sender}>" + "".join(" " + p for p in params))))
    for recipient in tx.recipients:  # one refusal defers the whole message: nothing is sent for a part of it
        expect(f"RCPT TO:<{recipient}>", command(_encode(f"RCPT TO:<{recipient}>")))
    expect("DATA", command(b"DATA"), 354)
    at_line_start = True
    for chunk in chunks:
        if not chunk:
            continue
        stuffed = chunk.replace(b"\n.", b"\n..")
        if at_line_start and stuffed.startswith(b"."):
            stuffed = b"." + stuffed
        _budget(client, deadline)
        client.sock.sendall(stuffed)  # type: ignore[union-attr]
        at_line_start = chunk.endswith(b"\n")
    if gate is not None:
        gate()
    _budget(client, deadline)
    client.sock.sendall(b".\r\n" if at_line_start else b"\r\n.\r\n")  # type: ignore[union-attr]
    try:
        code, text = client.getreply()
    except (OSError, smtplib.SMTPServerDisconnected) as exc:
        raise ReinjectError(f"no answer to the end of the message from the reinjecting smtpd ({exc}): it may have taken it", True) from None
    if code // 100 != 2:
        raise ReinjectError(f"message refused by the reinjecting smtpd: {code} {_text(text)}")
    return f"{code} {_text(text)}"


def xforward_lines(attributes: Mapping[str, str], offered: Sequence[str]) -> list[bytes]:
    """XFORWARD commands for the ATTRIBUTES the server OFFERED, each line under XFORWARD_LIMIT bytes."""
    lines: list[bytes] = []
    line = b""
    for name in offered:
        value = attributes.get(name)
        if value is None:
            continue
        item = _encode(f"{name}={value}")
        if line and len(line) + 1 + len(item) > XFORWARD_LIMIT:
            lines.append(line)
            line = b""
        line = (line + b" " + item) if line else b"XFORWARD " + item
    return [*lines, line] if line else lines


def _offered(client: smtplib.SMTP, keyword: str) -> list[str]:
    return client.esmtp_features.get(keyword, "").upper().split() if client.has_extn(keyword) else []


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")  # what came in as bytes goes out as the same bytes


def _text(text: bytes | str) -> str:
    raw = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    return " ".join(raw.split())[:300]


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("[smtp] timeout reached")
    return left


def _budget(client: smtplib.SMTP, deadline: float) -> None:
    if client.sock is None:
        raise smtplib.SMTPServerDisconnected("connection closed")
    client.sock.settimeout(_left(deadline))


def _drop(client: smtplib.SMTP) -> None:
    try:
        client.close()
    except OSError:
        pass


def _quit(client: smtplib.SMTP) -> None:
    try:
        if client.sock is not None:
            client.sock.settimeout(2)
            client.quit()
    except (OSError, smtplib.SMTPException):
        pass
    finally:
        _drop(client)
