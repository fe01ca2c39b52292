"""Scan one message with spamd and ClamAV at the same time, then ask the policy.

Both scanners run concurrently (spamd on the event loop, ClamAV in a worker
thread), so a message costs about the slower of the two, not their sum. Each
scanner has its own timeout; a scanner that overruns it is a ScanFailure, never
a hang and never a clean result.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from . import policy
from .config import Config
from .model import SCANNER_CLAMAV, SCANNER_SPAMD, Cause, Decision, ScanFailure, ScanResults, SpamSkipped, VirusOutcome
from .spool import Spool

# Seconds the pipeline waits beyond a scanner's own timeout before it calls the scanner hung.
BACKSTOP = 5.0


@dataclass(frozen=True)
class Outcome:
    results: ScanResults
    decision: Decision


async def _virus(message: Spool, config: Config) -> VirusOutcome:
    if config.clamd.backend == "clamscan":
        from .scanners import clamscan as backend
    else:
        from .scanners import clamd as backend
    return await asyncio.to_thread(backend.scan, message, config.clamd)


async def _bounded(coro, timeout: float, scanner: str):
    """(outcome, seconds). The scanners enforce their own timeouts; this is the backstop for one that does not."""
    started = time.monotonic()
    try:
        outcome = await asyncio.wait_for(coro, timeout + BACKSTOP)
    except TimeoutError:
        outcome = ScanFailure(scanner, Cause.TIMEOUT, f"no answer within {timeout:g} s")
    return outcome, time.monotonic() - started


async def _skipped(reason: str) -> SpamSkipped:
    return SpamSkipped(reason)


async def scan_async(message: Spool, config: Config) -> ScanResults:
    from .scanners import spamd

    if message.size > config.spamd.max_size:  # as spamc does: big messages are rarely spam
        spam_scan = _skipped(f"message larger than {config.spamd.max_size} bytes")
    else:
        # Read spamd's copy now, before the ClamAV thread starts streaming the same spool.
        spam_scan = spamd.scan(message.read(), config.spamd)
    (spam, spam_seconds), (virus, virus_seconds) = await asyncio.gather(
        _bounded(spam_scan, config.spamd.timeout, SCANNER_SPAMD),
        _bounded(_virus(message, config), config.clamd.timeout, SCANNER_CLAMAV),
    )
    return ScanResults(spam, virus, spam_seconds, virus_seconds)


def scan(message: Spool, config: Config) -> ScanResults:
    return asyncio.run(scan_async(message, config))


def run(message: Spool, config: Config) -> Outcome:
    """Scan MESSAGE and decide. Blocking; for callers without an event loop."""
    results = scan(message, config)
    return Outcome(results, policy.decide(results, config))
