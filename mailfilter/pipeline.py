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
import time
from collections.abc import Callable
from typing import Any

from . import deepscan, policy
from . import recipients as rcpt
from . import senders as senderlists
from .config import Config
from .model import (
    SCANNER_CLAMAV,
    SCANNER_SPAMD,
    Cause,
    Decision,
    Envelope,
    Group,
    ScanFailure,
    ScanResults,
    SenderHits,
    SpamOutcome,
    SpamReport,
    SpamSkipped,
)
from .record import dataclass, replace
from .scanners import pool as scanpool
from .spool import Spool

# Seconds the pipeline waits beyond a scanner's own timeout before it calls the scanner hung.
BACKSTOP = 5.0
# Scans of one scanner a Runner runs at once (threads are started as needed); more wait for a thread.
SCANNER_THREADS = 32


@dataclass(frozen=True)
class Outcome:
    """What the scanners said, and the decision for each group of recipients (one group when they agree)."""

    results: ScanResults
    groups: tuple[Group, ...]
    senders: SenderHits = policy.NO_SENDERS

    @property
    def decision(self) -> Decision:
        """The decision of the first group: the whole message's when there is one group (split() says)."""
        return self.groups[0].decision

    @property
    def split(self) -> bool:
        return len(self.groups) > 1


def scan(message: Spool, config: Config, envelope: Envelope | None = None, door: str = "pipe") -> ScanResults:
    """Both scanners at once for MESSAGE, in a Runner of its own. Blocking."""
    with Runner() as runner:
        return runner.scan(message, config, envelope, door)


def run(message: Spool, config: Config, envelope: Envelope | None = None, door: str = "pipe") -> Outcome:
    """Scan MESSAGE and decide for each recipient of ENVELOPE (none: the global policy). Blocking; for
    callers that scan one message (a pipe process, `scan`, `check`)."""
    results = scan(message, config, envelope, door)
    return decide(results, config, envelope, door, senderlists.Cache())


def decide(results: ScanResults, config: Config, envelope: Envelope | None, door: str, senders: senderlists.Cache) -> Outcome:
    """The policy's groups for RESULTS (SENDERS: the sender lists, kept by a daemon between messages)."""
    hits = senders.hits(envelope.sender if envelope else "", config.senders)
    return Outcome(results, policy.plan(envelope or Envelope("", ()), results, config, door, hits), hits)


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
        self._senders = senderlists.Cache()

    def scan(self, message: Spool, config: Config, envelope: Envelope | None = None, door: str = "pipe") -> ScanResults:
        rules = _rules(config, envelope, door)
        with scanpool.ledger() as book:  # which pool member answered, seen by both threads through the context
            results = self._scan(message, config, rules)
            return replace(results, servers=tuple(book.servers.items()), failovers=tuple(book.failovers.items()))

    def _scan(self, message: Spool, config: Config, rules: list[rcpt.Rule]) -> ScanResults:
        started = time.monotonic()
        context = contextvars.copy_context()  # the caller's (the queue id) in every thread, as to_thread() does
        users = list(dict.fromkeys(rule.spamd_user for rule in rules if not rule.bypass_spam))  # spamd scores once per user
        if config.spamd.user in users:
            users.remove(config.spamd.user)
            users.insert(0, config.spamd.user)
        spam_scans = [(user, self._spam_scan(context.copy(), started, message, config, user)) for user in users]
        virus_scan = self._clamav.submit(context.copy().run, _timed, started, deepscan.scan, _virus_backend(config), message, config.clamd)
        attachments = None
        if any(rule.banned != "allow" for rule in rules):  # here, while the scanners work
            from . import attachments as attachmentsmod

            attachments = attachmentsmod.inspect_spool(message, config.attachments)
        spam: SpamOutcome = SpamSkipped("bypass_spam")
        spam_seconds, others = 0.0, []
        for index, (user, future) in enumerate(spam_scans):
            outcome, seconds = _wait(future, started, config.spamd.timeout, SCANNER_SPAMD)
            if index == 0:
                spam, spam_seconds = outcome, seconds
            else:
                others.append((user, outcome))
        virus, virus_seconds = _wait(virus_scan, started, config.clamd.timeout, SCANNER_CLAMAV)
        first_user = users[0] if users else config.spamd.user
        others_t = tuple(others)
        return ScanResults(spam, virus, spam_seconds, virus_seconds, attachments=attachments, spam_users=others_t, spam_user=first_user)

    def _spam_scan(
        self, context: contextvars.Context, started: float, message: Spool, config: Config, user: str
    ) -> concurrent.futures.Future:
        """spamd's scan as USER. Its copy: all of a message up to [spamd] max_size, else its first max_size
        bytes cut at a line end (as amavisd-new does), and the header says so. Only those bytes are read."""
        from .scanners import spamd

        settings = config.spamd if user == config.spamd.user else replace(config.spamd, user=user)
        if message.size > config.spamd.max_size:
            copy = spamd.truncate(message.read(config.spamd.max_size))
            return self._spamd.submit(context.run, _timed, started, _truncated, copy, message.size, settings)
        return self._spamd.submit(context.run, _timed, started, spamd.scan_blocking, message.read(), settings)

    def run(self, message: Spool, config: Config, envelope: Envelope | None = None, door: str = "pipe") -> Outcome:
        """Scan MESSAGE and decide for each recipient of ENVELOPE (none: the global policy)."""
        return decide(self.scan(message, config, envelope, door), config, envelope, door, self._senders)

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
    # bz2, lzma, tempfile and zipfile: what a large message or a zip needs (a pipe process imports them only then).
    import bz2  # noqa: F401
    import lzma  # noqa: F401
    import tempfile  # noqa: F401
    import zipfile  # noqa: F401

    import pyclamd  # noqa: F401

    from . import attachments
    from .scanners import clamd, clamscan, spamd  # noqa: F401

    attachments.preload()


def _rules(config: Config, envelope: Envelope | None, door: str) -> list[rcpt.Rule]:
    base = rcpt.base_rule(config, door)
    if envelope is None or not envelope.recipients or not config.recipients:
        return [base]
    tables = dict(config.recipients)
    return [rcpt.rule_for(recipient, base, tables) for recipient in envelope.recipients]


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
        return replace(outcome, truncated=(len(copy), size))
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
