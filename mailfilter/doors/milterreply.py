"""The milter's time between end of message and reply: its bound, and the work that waits until after the reply.

Postfix waits milter_content_timeout for the reply to end-of-message; past it
it applies milter_default_action, after we may have stored the message (a
duplicate quarantine entry when the client retries; with `accept`, a stored
virus delivered). So only what the reply depends on runs before it: the scan
(each scanner bounded by its timeout, the pipeline by BACKSTOP) and, for a
DISCARD, the quarantine store (bounded by STORE_ALLOWANCE). Everything else
(admin report, journal line, metrics, the summary log line) goes to AfterReply:
one long-lived thread fed by a bounded queue, which never blocks the reply.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from .. import log, pipeline
from ..config import Config

STORE_ALLOWANCE = 10.0  # seconds a quarantine store (fsync-bound) may take before the milter tempfails instead
QUEUE_SIZE = 1000  # after-reply jobs waiting; each holds a report's context (header values), never the message
LOG = logging.getLogger(log.LOGGER)
T = TypeVar("T")


def worst_case(config: Config) -> float:
    """The longest the milter takes from end of message to its reply: the slower scanner's timeout,
    the pipeline's backstop, and the quarantine store's allowance. Keep it below milter_content_timeout."""
    return max(config.spamd.timeout, config.clamd.timeout) + pipeline.BACKSTOP + STORE_ALLOWANCE


class StoreTimeout(Exception):
    """The quarantine store did not finish within its allowance (it may still finish)."""


def bounded(work: Callable[[], T], timeout: float, what: str) -> T:
    """WORK's result, run on a thread of its own and waited for at most TIMEOUT seconds; StoreTimeout
    after that (the thread goes on: an fsync cannot be interrupted). WORK's exception is raised here."""
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, raised there
            failure.append(exc)

    thread = threading.Thread(target=contextvars.copy_context().run, args=(run,), name=what, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise StoreTimeout(f"{what} did not finish within {timeout:g} s")
    if failure:
        raise failure[0]
    return result[0]


class AfterReply:
    """One thread that runs, in order and in the context they were submitted from (the queue id of
    their log lines), the jobs a reply need not wait for. A job that raises is logged, nothing else."""

    def __init__(self, size: int = QUEUE_SIZE) -> None:
        self._queue: queue.Queue[tuple[contextvars.Context, Callable[[], None]] | None] = queue.Queue(maxsize=size)
        self.dropped = 0  # jobs refused because the queue was full
        self._thread = threading.Thread(target=self._run, name="after-reply", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> bool:
        """Queue JOB; False (and counted) when the queue is full: never blocks."""
        try:
            self._queue.put_nowait((contextvars.copy_context(), job))
        except queue.Full:
            self.dropped += 1
            return False
        return True

    @property
    def waiting(self) -> int:
        """Jobs queued or running."""
        return self._queue.unfinished_tasks

    def drain(self, timeout: float) -> bool:
        """Wait until every job submitted so far has run; False when some are still waiting after TIMEOUT."""
        with self._queue.all_tasks_done:
            return self._queue.all_tasks_done.wait_for(lambda: self._queue.unfinished_tasks == 0, max(0.0, timeout))

    def close(self, timeout: float) -> bool:
        """Drain (up to TIMEOUT) and end the thread. False when jobs were left undone."""
        deadline = time.monotonic() + timeout
        drained = self.drain(timeout)
        try:
            self._queue.put((contextvars.copy_context(), None), timeout=max(0.0, deadline - time.monotonic()))  # type: ignore[arg-type]
        except queue.Full:
            return False
        self._thread.join(max(0.0, deadline - time.monotonic()))
        return drained and not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                context, job = item
                if job is None:
                    return
                try:
                    context.run(job)
                except Exception:
                    LOG.exception("after-reply work failed (the reply was already given)")
            finally:
                self._queue.task_done()
