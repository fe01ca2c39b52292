"""A pool of scanner servers ([spamd] servers, [clamd] servers): one server per message, failover within its deadline.

Each message goes to one server: the healthy one with the fewest scans in flight (ties in turn, round
robin). A server that refuses the connection, times out or answers an error is marked down for DOWN_FOR
seconds and the message goes to the next server, with what is left of the message's own timeout shared
fairly among the servers not yet tried (a server that accepts and never answers cannot eat the time of
the others). A server that answered is never asked again for the same message. A server marked down
gets mail again only after it answered a cheap health check (PING); when every server is marked down,
each is pinged before it is tried. A pool of one (host/port or socket, no servers) is the single server as
it always was: tried for every message, never pinged, its failures in its own words.
Only when no server could answer does the caller's on_error apply (its outcome is the last failure).

Pools live for the process (the milter and the worker keep theirs across messages; a `pipe` process has
one message): POOLS holds them by scanner and server list, behind a lock. A Ledger, set for the calling
context by ledger(), learns which server answered each scanner and how many failovers it took, for the
journal and the metrics.
"""

from __future__ import annotations

import contextlib
import contextvars
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..model import Cause, ScanFailure
from ..record import dataclass, replace

DOWN_FOR = 10.0  # seconds a failed server is left out before it is pinged again
PING_TIMEOUT = 1.0  # at most this long (and never past the message's deadline) for a health check
FAILOVER_CAUSES = (Cause.UNAVAILABLE, Cause.TIMEOUT, Cause.ERROR)  # TOO_LARGE is the message's, not the server's


@dataclass(frozen=True)
class Server:
    """One member: a TCP HOST:PORT or a unix socket PATH."""

    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def label(self) -> str:
        return f"unix:{self.path}" if self.path else f"{self.host}:{self.port}"

    def connect(self, timeout: float) -> socket.socket:
        if self.path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(self.path)
            except BaseException:
                sock.close()
                raise
            return sock
        return socket.create_connection((self.host, self.port), timeout=timeout)


def parse(spec: str) -> Server:
    """ "HOST:PORT", "[V6ADDR]:PORT" or "unix:/PATH"; ValueError saying what is wrong."""
    if spec.startswith("unix:"):
        path = spec[5:]
        if not path.startswith("/"):
            raise ValueError(f"{spec!r}: a unix socket must be an absolute path (unix:/run/spamd.sock)")
        return Server(path=path)
    host, _, port = spec.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{spec!r}: must be HOST:PORT (port 1-65535) or unix:/PATH")
    return Server(host=host, port=int(port))


def check_servers(value: Any) -> str | None:
    """The config check of a servers list."""
    for spec in value:
        if not isinstance(spec, str):
            return "must be a list of 'HOST:PORT' or 'unix:/PATH' strings"
        try:
            parse(spec)
        except ValueError as exc:
            return str(exc)
    if len(set(value)) != len(value):
        return "names a server twice"
    return None


def members(servers: tuple[str, ...], host: str, port: int, path: str) -> tuple[Server, ...]:
    """The pool a scanner's config names: its servers, else its single host/port or socket as a pool of one."""
    if servers:
        return tuple(parse(spec) for spec in servers)
    return (Server(path=path) if path else Server(host=host, port=port),)


@dataclass
class _Member:
    server: Server
    in_flight: int = 0
    down_until: float = 0.0  # monotonic; 0: healthy
    scans: int = 0
    failures: int = 0


class Ledger:
    """Which server answered each scanner for one message, and the failovers it took."""

    def __init__(self) -> None:
        self.servers: dict[str, str] = {}
        self.failovers: dict[str, int] = {}
        self._lock = threading.Lock()

    def note(self, scanner: str, server: str | None, failovers: int) -> None:
        with self._lock:
            if server:
                self.servers[scanner] = server
            if failovers:
                self.failovers[scanner] = self.failovers.get(scanner, 0) + failovers


_LEDGER: contextvars.ContextVar[Ledger | None] = contextvars.ContextVar("mailfilter_scan_ledger", default=None)


@contextlib.contextmanager
def ledger() -> Iterator[Ledger]:
    """A Ledger for the scans started in this context (and copies of it made inside the with)."""
    book = Ledger()
    token = _LEDGER.set(book)
    try:
        yield book
    finally:
        _LEDGER.reset(token)


Attempt = Callable[[Server, float], Any]  # (server, seconds it may take) -> an outcome; a ScanFailure when it failed
Ping = Callable[[Server, float], bool]


class Pool:
    def __init__(self, scanner: str, servers: tuple[Server, ...], ping: Ping, down_for: float = DOWN_FOR) -> None:
        self.scanner = scanner
        self._members = [_Member(server) for server in servers]
        self._ping = ping
        self._down_for = down_for
        self._turn = 0
        self._lock = threading.Lock()

    def _order(self, now: float) -> list[_Member]:
        """Healthy members, fewest in flight first (ties from the next in turn), then the down ones, soonest up first."""
        with self._lock:
            self._turn = (self._turn + 1) % len(self._members)
            count = len(self._members)
            ranked = [(m.in_flight, (i - self._turn) % count, m) for i, m in enumerate(self._members) if m.down_until <= now]
            healthy = [m for *_, m in sorted(ranked, key=lambda r: r[:2])]
            down = sorted((m for m in self._members if m.down_until > now), key=lambda m: m.down_until)
            return healthy + down

    def scan(self, attempt: Attempt, timeout: float) -> Any:
        """ATTEMPT on one server after another until one answers, all within TIMEOUT seconds from now."""
        deadline = time.monotonic() + timeout
        order = self._order(time.monotonic())
        failure: Any = None
        failovers = 0
        for index, member in enumerate(order):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if member.down_until and len(order) > 1 and not self._healthy(member, min(left, PING_TIMEOUT)):
                failure = failure or ScanFailure(self.scanner, Cause.UNAVAILABLE, f"{member.server.label} is down (no answer to PING)")
                continue
            budget = (deadline - time.monotonic()) / (len(order) - index)
            if failure is not None:
                failovers += 1
            outcome = self._try(member, attempt, budget)
            if isinstance(outcome, ScanFailure) and outcome.cause in FAILOVER_CAUSES:
                failure = replace(outcome, text=f"{member.server.label}: {outcome.text}") if len(order) > 1 else outcome
                continue
            self._note(member.server.label, failovers)
            return outcome
        self._note(None, failovers)
        if failure is None:
            return ScanFailure(self.scanner, Cause.TIMEOUT, f"no answer within {timeout:g} s")
        if len(order) > 1:
            failure = replace(failure, text=f"every server of the pool failed; last: {failure.text}")
        return failure

    def _try(self, member: _Member, attempt: Attempt, budget: float) -> Any:
        with self._lock:
            member.in_flight += 1
        try:
            outcome = attempt(member.server, budget)
        finally:
            with self._lock:
                member.in_flight -= 1
        failed = isinstance(outcome, ScanFailure) and outcome.cause in FAILOVER_CAUSES
        with self._lock:
            if failed:
                member.failures += 1
                member.down_until = time.monotonic() + self._down_for
            else:
                member.scans += 1
                member.down_until = 0.0
        return outcome

    def _healthy(self, member: _Member, timeout: float) -> bool:
        """A down member's health check: PONG puts it back in the pool, anything else keeps it out for DOWN_FOR."""
        ok = self._ping(member.server, timeout)
        with self._lock:
            member.down_until = 0.0 if ok else time.monotonic() + self._down_for
        return ok

    def _note(self, server: str | None, failovers: int) -> None:
        book = _LEDGER.get()
        if book is not None:
            book.note(self.scanner, server, failovers)

    def status(self) -> list[dict[str, Any]]:
        """Each member's label, whether it is up, scans in flight, answered scans and failures (this process)."""
        now = time.monotonic()
        with self._lock:
            return [
                {"server": m.server.label, "up": m.down_until <= now, "in_flight": m.in_flight, "scans": m.scans, "failures": m.failures}
                for m in self._members
            ]


class Pools:
    """The process's pools, one per scanner and server list."""

    def __init__(self) -> None:
        self._pools: dict[tuple[str, tuple[Server, ...]], Pool] = {}
        self._lock = threading.Lock()

    def get(self, scanner: str, servers: tuple[Server, ...], ping: Ping) -> Pool:
        key = (scanner, servers)
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                pool = self._pools[key] = Pool(scanner, servers, ping)
            return pool


POOLS = Pools()


def ping(server: Server, timeout: float, request: bytes, pong: bytes) -> bool:
    """Send REQUEST, read to the end of the answer (at most 4 kB): True when it starts with PONG."""
    try:
        with server.connect(timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(request)
            answer = b""
            while len(answer) < 4096 and (chunk := sock.recv(4096)):
                answer += chunk
                if answer.startswith(pong):
                    return True
            return answer.startswith(pong)
    except OSError:
        return False
