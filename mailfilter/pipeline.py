"""Scan one message with spamd and ClamAV at the same time, then ask the policy.

Both scanners run at once, each in a thread of a Runner, so a message costs
about the slower of the two, not their sum. Each scanner has its own timeout; a
scanner that overruns it is a ScanFailure, never a hang and never a clean
result. A daemon (the milter, the pipe worker) keeps one Runner for every
message; run() and scan() make one for a single message.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import deepscan, policy
from .config import Config
from .model import SCANNER_CLAMAV, SCANNER_SPAMD, Cause, Decision, ScanFailure, ScanResults, SpamOutcome, SpamReport
from .scanners import pool as scanpool
from .spool import Spool

# Seconds the pipeline waits beyond a scanner's own timeout before it calls the scanner hung.
BACKSTOP = 5.0
# Scans of one scanner a Runner runs at once (threads are started as needed); more wait for a thread.
SCANNER_THREADS = 32


@dataclass(frozen=True)
class Outcome:
    results: ScanResults
    decision: Decision


def scan(message: Spool, config: Config) -> ScanResults:
    """Both scanners at once for MESSAGE, in a Runner of its own. Blocking."""
    with Runner() as runner:
        return runner.scan(message, config)


def run(message: Spool, config: Config) -> Outcome:
    """Scan MESSAGE and decide. Blocking; for callers that scan one message (a pipe process, `scan`, `check`)."""
    results = scan(message, config)
    return Outcome(results, policy.decide(results, config))


class Runner:
    """Scans in threads: a bounded pool per scanner, so a hung spamd cannot starve ClamAV or the other
    way round.

    Both scanners at once, each within its own timeout from the start of the scan; one that overruns
    it by BACKSTOP is a ScanFailure, never a hang. A daemon keeps one Runner for every message: an
    event loop and its executor per message (asyncio.run) cost over 1 ms of CPU each. Threads are
    started as needed, in the signal mask of the thread that needs them. run() is safe from any thread.
    """

    def __init__(self, threads: int = SCANNER_THREADS) -> None:
        self._spamd = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="mailfilter-spamd")
        self._clamav = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="mailfilter-clamav")

    def scan(self, message: Spool, config: Config) -> ScanResults:
        with scanpool.ledger() as book:  # which pool member answered, seen by both threads through the context
            results = self._scan(message, config)
            return dataclasses.replace(results, servers=tuple(book.servers.items()), failovers=tuple(book.failovers.items()))

    def _scan(self, message: Spool, config: Config) -> ScanResults:
        from .scanners import spamd

        started = time.monotonic()
        context = contextvars.copy_context()  # the caller's (the queue id) in both threads, as to_thread() does
        # spamd's copy: all of a message up to [spamd] max_size, else its first max_size bytes cut at a line
        # end (as amavisd-new does), and the header says so. Only those bytes are read.
        if message.size > config.spamd.max_size:
            copy = spamd.truncate(message.read(config.spamd.max_size))
            spam_scan = self._spamd.submit(context.run, _timed, started, _truncated, copy, message.size, config.spamd)
        else:
            spam_scan = self._spamd.submit(context.run, _timed, started, spamd.scan_blocking, message.read(), config.spamd)
        virus_scan = self._clamav.submit(context.copy().run, _timed, started, deepscan.scan, _virus_backend(config), message, config.clamd)
        spam, spam_seconds = _wait(spam_scan, started, config.spamd.timeout, SCANNER_SPAMD)
        virus, virus_seconds = _wait(virus_scan, started, config.clamd.timeout, SCANNER_CLAMAV)
        return ScanResults(spam, virus, spam_seconds, virus_seconds)

    def run(self, message: Spool, config: Config) -> Outcome:
        results = self.scan(message, config)
        return Outcome(results, policy.decide(results, config))

    def close(self) -> None:
        """No new scans; scans not started yet are cancelled (their callers get an exception), running ones
        end within their timeouts."""
        for pool in (self._spamd, self._clamav):
            pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def preload() -> None:
    """Import now what scanning needs, so that a daemon imports nothing per message (nor after it
    has dropped privileges)."""
    import pyclamd  # noqa: F401

    from .scanners import clamd, clamscan, spamd  # noqa: F401


def _virus_backend(config: Config) -> Any:
    if config.clamd.backend == "clamscan":
        from .scanners import clamscan as backend
    else:
        from .scanners import clamd as backend
    return backend


def _truncated(copy: bytes, size: int, config: Any) -> SpamOutcome:
    from .scanners import spamd

    outcome = spamd.scan_blocking(copy, config)
    if isinstance(outcome, SpamReport):
        return dataclasses.replace(outcome, truncated=(len(copy), size))
    return outcome


def _timed(started: float, scan: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """(outcome, seconds since STARTED)."""
    return scan(*args), time.monotonic() - started


def _done(outcome: Any) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()
    future.set_result((outcome, 0.0))
    return future


def _wait(future: concurrent.futures.Future, started: float, timeout: float, scanner: str) -> tuple[Any, float]:
    """A scan's (outcome, seconds), or a timeout once it overruns its timeout by BACKSTOP."""
    try:
        return future.result(max(0.0, started + timeout + BACKSTOP - time.monotonic()))
    except concurrent.futures.TimeoutError:
        future.cancel()  # never started (all threads busy): it never will; running: it ends at its own deadline
        return ScanFailure(scanner, Cause.TIMEOUT, f"no answer within {timeout:g} s"), time.monotonic() - started
