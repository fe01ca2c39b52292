"""ClamAV on the whole message, then on each part it could not reach: a scan that hit a limit is never clean.

clamd parses mail itself but stops at its MaxRecursion (17 by default); past it, it answers
OK, or with AlertExceedsMax `Heuristics.Limits.Exceeded.MaxRecursion FOUND`. So, in the ClamAV
thread, after the whole-message scan:

- a virus: that is the answer;
- clean, with no limit hit and a MIME tree no deeper than REACH: clean;
- otherwise (a limit alert, or deeper nesting than we trust clamd to have seen): our own MIME
  walk (mimewalk) finds the leaf parts, and each is scanned alone, decoded, at depth zero, as
  amavisd-new does. A virus in one is a virus; a limit hit by a part alone, or a part the walk
  could not reach (its own limits), makes the message unscannable (VirusReport.unscannable),
  which the policy never calls clean.

Whether the tree may be deep is first guessed from the bytes (the Content-Type fields of
containers, counted in chunks): ordinary mail is not walked at all. Everything keeps the
ClamAV timeout, counted from the start of the whole-message scan.
"""

from __future__ import annotations

import contextlib
import mmap
import time
from collections.abc import Iterator
from typing import Any

from . import mimewalk
from .config import ClamdConfig
from .model import SCANNER_CLAMAV, Cause, ScanFailure, VirusOutcome, VirusReport
from .record import replace
from .spool import Spool

# MIME levels within which clamd's own parser is trusted to have seen everything: its default MaxRecursion
# is 17 and archives inside a part need levels of their own. `mailfilter check` warns below it.
REACH = 8
# What every container's Content-Type names, in lower case: nesting is at most twice their number (a
# digest's parts are messages). Counted anywhere (text that names them only makes a walk more likely):
# bytes.lower() and count() cost a tenth of a case-blind regular expression.
_CONTAINERS = (b"multipart/", b"message/")
_OVERLAP = max(len(word) for word in _CONTAINERS) - 1
LIMITS = mimewalk.Limits()


def scan(backend: Any, message: Spool, config: ClamdConfig) -> VirusOutcome:
    """Blocking, for the ClamAV thread: BACKEND (scanners.clamd or scanners.clamscan) on MESSAGE, then on the
    parts it could not reach."""
    from .scanners.clamd import classify

    deadline = time.monotonic() + config.timeout
    whole = backend.scan(message, config)
    if not isinstance(whole, VirusReport):
        return whole
    whole = classify(whole)
    if whole.infected or (whole.complete and not may_nest_deeper(message, REACH)):
        return whole
    with _view(message) as data:
        limits = replace(LIMITS, seconds=min(LIMITS.seconds, config.timeout / 2))
        tree = mimewalk.walk(data, limits)
        if whole.complete and tree.complete and tree.depth <= REACH:
            return whole
        if not whole.complete and not tree.leaves and tree.complete:
            return whole  # nothing of ours to scan: clamd's word stands
        return scan_leaves(tree, backend, config, deadline)


def may_nest_deeper(message: Spool, levels: int) -> bool:
    """Whether MESSAGE may hold MIME parts nested deeper than LEVELS: more than LEVELS / 2 containers."""
    found, tail = 0, b""
    for chunk in message.chunks():
        window = tail + chunk.lower()
        # Each word is counted in the window where it ends: one that ends within the tail was counted before.
        found += sum(window.count(word, max(0, len(tail) - len(word) + 1)) for word in _CONTAINERS)
        if 2 * found > levels:
            return True
        tail = window[-_OVERLAP:]
    return 2 * found > levels


def scan_leaves(tree: mimewalk.Tree, backend: Any, config: ClamdConfig, deadline: float) -> VirusOutcome:
    """Each leaf of TREE alone, decoded, within DEADLINE: the first virus, else what could not be scanned."""
    from .scanners.clamd import classify

    unscannable = list(tree.problems)
    for leaf in tree.leaves:
        left = deadline - time.monotonic()
        if left <= 0:
            return ScanFailure(SCANNER_CLAMAV, Cause.TIMEOUT, f"no answer within {config.timeout:g} s (scanning MIME parts one by one)")
        with Spool() as part:
            for chunk in mimewalk.decode(leaf):
                part.write(chunk)
            if not part.size:
                continue
            outcome = backend.scan(part, replace(config, timeout=left))
        if isinstance(outcome, ScanFailure):
            return replace(outcome, text=f"{outcome.text} (scanning {leaf.where()} alone)")
        outcome = classify(outcome)
        if outcome.infected:
            return VirusReport(outcome.names, code=1)
        unscannable += [f"{reason} in {leaf.where()}" for reason in outcome.unscannable]
    return VirusReport(unscannable=tuple(dict.fromkeys(unscannable)))


@contextlib.contextmanager
def _view(message: Spool) -> Iterator[Any]:
    """MESSAGE's bytes for the walk: the bytes themselves while in memory, a read-only map of its file beyond
    (pages the kernel may drop, not a copy on the heap)."""
    if not message.on_disk or not message.size:
        yield message.read()
        return
    reader = message.stream()
    try:
        fd = getattr(reader, "_fd", None)
        if fd is None:
            yield message.read()
            return
        view = mmap.mmap(fd, message.size, access=mmap.ACCESS_READ)
        try:
            yield view
        finally:
            with contextlib.suppress(BufferError):  # a leaf still holds a slice: the map goes with the last one
                view.close()
    finally:
        reader.close()
