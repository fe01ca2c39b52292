"""Logging: syslog facility mail for the daemons, stderr for the CLI, optionally a file.

One summary line per message, in Postfix's key=value style with the queue id
first. Message bodies are never logged.
"""

from __future__ import annotations

import logging
import os
import time

from .config import LogConfig
from .message import printable
from .model import Decision, Envelope, ScanResults, SpamOutcome, SpamReport, SpamSkipped, VirusOutcome, VirusReport

LOGGER = "mailfilter"
_PREFIX = {logging.WARNING: "warning: ", logging.ERROR: "error: ", logging.CRITICAL: "fatal: "}


class PostfixFormatter(logging.Formatter):
    """`warning: text` the way Postfix writes its own lines; stamp and tag only for files."""

    def __init__(self, tag: str | None = None) -> None:
        super().__init__()
        self.tag = tag

    def format(self, record: logging.LogRecord) -> str:
        text = _PREFIX.get(record.levelno, "") + printable(record.getMessage(), 4000)
        if record.exc_info:
            text += " | " + " | ".join(self.formatException(record.exc_info).splitlines())
        if self.tag is None:
            return text
        stamp = time.strftime("%b %d %H:%M:%S", time.localtime(record.created))
        return f"{stamp} {os.uname().nodename} {self.tag}[{record.process}]: {text}"


class SyslogHandler(logging.Handler):
    """Through the C syslog module: no socket of our own, nothing raised if syslogd is absent."""

    def __init__(self, ident: str) -> None:
        super().__init__()
        import syslog

        self._syslog = syslog
        syslog.openlog(ident, syslog.LOG_PID, syslog.LOG_MAIL)

    def emit(self, record: logging.LogRecord) -> None:
        s = self._syslog
        priority = {logging.DEBUG: s.LOG_DEBUG, logging.INFO: s.LOG_INFO, logging.WARNING: s.LOG_WARNING}.get(record.levelno, s.LOG_ERR)
        try:
            s.syslog(priority, self.format(record))
        except Exception:  # noqa: BLE001 - logging must never take a message down
            self.handleError(record)


def configure(tag: str, config: LogConfig | None, stderr: bool) -> logging.Logger:
    """Set up the `mailfilter` logger for one door; calling it again replaces the handlers."""
    logger = logging.getLogger(LOGGER)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = False
    logger.setLevel((config.level if config else "info").upper())
    handlers: list[logging.Handler] = []
    unwritable = None
    if config and config.file:
        from logging.handlers import WatchedFileHandler  # here: syslog alone (the default) needs none of it

        try:
            # Watched: a daemon reopens the file after logrotate moves it.
            handlers.append(WatchedFileHandler(config.file, encoding="utf-8"))
            handlers[-1].setFormatter(PostfixFormatter(tag))
        except OSError as exc:  # a log file must never keep mail from flowing: log to syslog instead
            unwritable = f"cannot open [log] file {config.file}: {exc.strerror or exc}; logging to syslog"
    if stderr:
        handlers.append(logging.StreamHandler())
        handlers[-1].setFormatter(PostfixFormatter())
    elif config is None or config.syslog or unwritable:
        handlers.append(SyslogHandler(tag))
        handlers[-1].setFormatter(PostfixFormatter())
    for handler in handlers:
        logger.addHandler(handler)
    if unwritable:
        logger.warning("%s", unwritable)
    logging.captureWarnings(True)  # a library warning must not reach stderr under pipe(8)
    warnings_logger = logging.getLogger("py.warnings")
    warnings_logger.handlers = list(handlers)
    warnings_logger.propagate = False
    return logger


def _spam(outcome: SpamOutcome) -> str:
    if isinstance(outcome, SpamReport):
        return f"{outcome.score:.1f}/{outcome.threshold:.1f}"
    if isinstance(outcome, SpamSkipped):
        return "skipped"
    return f"error({outcome.cause.value})"


def _virus(outcome: VirusOutcome) -> str:
    if isinstance(outcome, VirusReport):
        return ",".join(outcome.names) if outcome.infected else "none"
    return f"error({outcome.cause.value})"


def summary(envelope: Envelope, results: ScanResults | None, decision: Decision | None, delay: float, **extra: object) -> str:
    """`QUEUEID: from=<a@x>, nrcpt=2, verdict=spam, spam=7.1/5.0, virus=none, action=quarantine, id=..., delay=0.84`"""
    parts = [f"from=<{envelope.sender}>", f"nrcpt={len(envelope.recipients)}"]
    if decision is not None:
        parts.append(f"verdict={decision.verdict.value}")
    if results is not None:
        parts += [f"spam={_spam(results.spam)}", f"virus={_virus(results.virus)}"]
    if decision is not None:
        parts.append(f"action={decision.action.value}")
    parts += [f"{key}={value}" for key, value in extra.items() if value is not None]
    parts.append(f"delay={delay:.2f}")
    return printable(f"{envelope.queue_id or 'NOQUEUE'}: " + ", ".join(parts), 2000)
