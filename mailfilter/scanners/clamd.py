"""ClamAV through clamd (pyclamd, the INSTREAM command), run in a worker thread."""

from __future__ import annotations

import socket
import time

from ..config import ClamdConfig
from ..model import SCANNER_CLAMAV, Cause, ScanFailure, VirusOutcome, VirusReport
from ..record import replace
from ..spool import CHUNK, Spool
from . import pool

# What clamd (AlertExceedsMax yes) answers as FOUND when a scan hit one of its limits (MaxRecursion,
# MaxScanSize, MaxFileSize, MaxFiles, MaxScanTime...): not a virus, a scan that did not see everything.
LIMIT_ALERT = "Heuristics.Limits.Exceeded"


def classify(report: VirusReport) -> VirusReport:
    """REPORT with clamd's limit alerts moved from the virus names to what could not be scanned."""
    limits = tuple(name for name in report.names if name.startswith(LIMIT_ALERT))
    if not limits:
        return report
    names = tuple(name for name in report.names if not name.startswith(LIMIT_ALERT))
    reasons = tuple(f"clamd: {name}" for name in limits)
    return VirusReport(names, code=1 if names else 0, unscannable=tuple(dict.fromkeys(report.unscannable + reasons)))


def _client_classes(pyclamd, deadline: float):
    """pyclamd's clients, with a socket that keeps one deadline for the whole exchange.

    pyclamd's INSTREAM loop uses send(), which may write only part of a chunk
    and corrupt the stream, and it retries a timed-out recv() five times; the
    wrapper sends with sendall() and fails every call once the deadline has passed.
    """

    class Deadlined:
        def __init__(self, sock: socket.socket) -> None:
            self._sock = sock
            self.received = b""  # everything clamd said: pyclamd cannot tell "OK" from no answer

        def _arm(self) -> None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("clamd deadline passed")
            self._sock.settimeout(left)

        def send(self, data: bytes) -> None:
            self._arm()
            self._sock.sendall(data)

        def recv(self, size: int) -> bytes:
            self._arm()
            data = self._sock.recv(size)
            self.received += data
            return data

        def close(self) -> None:
            self._sock.close()

    class Closing:
        """pyclamd leaves its socket open when connect() or the exchange fails; close it always."""

        def _init_socket(self) -> None:
            try:
                super()._init_socket()  # type: ignore[misc]
            except BaseException:
                self.close()
                raise
            self.clamd_socket = Deadlined(self.clamd_socket)

        def close(self) -> None:
            sock = getattr(self, "clamd_socket", None)
            if sock is not None:
                sock.close()

    class Unix(Closing, pyclamd.ClamdUnixSocket):
        pass

    class Network(Closing, pyclamd.ClamdNetworkSocket):
        pass

    return Unix, Network


def scan(message: Spool, config: ClamdConfig) -> VirusOutcome:
    """Blocking: call it from a thread (the pipeline does). One deadline ([clamd] timeout) for the whole pool
    ([clamd] servers, else the single socket or host/port), failover included."""
    servers = pool.members(config.servers, config.host, config.port, "" if config.host else config.socket)

    def attempt(server: pool.Server, budget: float) -> VirusOutcome:
        one = replace(config, host=server.host, port=server.port or config.port, socket=server.path, timeout=budget)
        return _scan_one(message, one)

    return pool.POOLS.get(SCANNER_CLAMAV, servers, ping).scan(attempt, config.timeout)


def ping(server: pool.Server, timeout: float) -> bool:
    """clamd's health check: zPING answered by PONG."""
    return pool.ping(server, timeout, b"zPING\0", b"PONG")


def _scan_one(message: Spool, config: ClamdConfig) -> VirusOutcome:
    """MESSAGE on the one clamd of CONFIG, within its timeout."""
    import pyclamd

    unix, network = _client_classes(pyclamd, time.monotonic() + config.timeout)
    client = None
    try:
        # pyclamd's constructors connect at once, so they belong inside the try.
        if config.host:
            client = network(config.host, config.port, timeout=config.timeout)
        else:
            client = unix(config.socket, timeout=config.timeout)
        with message.stream() as stream:  # a reader of its own, closed here (its descriptor too)
            answer = client.scan_stream(stream, chunk_size=CHUNK)
        said = client.clamd_socket.received.decode("utf-8", "replace").strip()
    except pyclamd.BufferTooLongError as exc:
        text = f"clamd refused the message ({message.size} bytes): {exc}; raise clamd's StreamMaxLength"
        return ScanFailure(SCANNER_CLAMAV, Cause.TOO_LARGE, text)
    except (pyclamd.ConnectionError, TimeoutError) as exc:
        # pyclamd wraps socket errors in its own ConnectionError; the original is the context.
        if isinstance(exc, TimeoutError) or isinstance(exc.__context__, TimeoutError):
            return ScanFailure(SCANNER_CLAMAV, Cause.TIMEOUT, f"no answer within {config.timeout:.3g} s")
        return ScanFailure(SCANNER_CLAMAV, Cause.UNAVAILABLE, _describe(exc))
    except OSError as exc:
        return ScanFailure(SCANNER_CLAMAV, Cause.ERROR, f"connection broken: {exc.strerror or exc}")
    finally:
        if client is not None:
            client.close()
    return interpret(answer, said)


def interpret(answer: dict | None, said: str) -> VirusOutcome:
    """pyclamd's result: ('FOUND', name) infected; ('ERROR', text) an error, never clean. pyclamd returns None
    both for clamd's `stream: OK` and for a connection closed without any answer (clamd killed mid-scan):
    only an OK that clamd really said is clean."""
    if not answer:
        if said.endswith("OK"):
            return VirusReport()
        return ScanFailure(SCANNER_CLAMAV, Cause.ERROR, f"clamd closed the connection without an answer ({said[:100]!r})")
    names, errors = [], []
    for status, reason in answer.values():
        (names if status == "FOUND" else errors).append(reason)
    if names:
        return classify(VirusReport(tuple(names), code=1))
    text = "; ".join(errors) or "unreadable answer"
    if "size limit" in text.lower():
        return ScanFailure(SCANNER_CLAMAV, Cause.TOO_LARGE, f"{text}; raise clamd's StreamMaxLength")
    return ScanFailure(SCANNER_CLAMAV, Cause.ERROR, text)


def _describe(exc: BaseException) -> str:
    context = exc.__context__
    if isinstance(context, OSError) and context.strerror:
        return f"{exc} ({context.strerror})"
    return str(exc)
