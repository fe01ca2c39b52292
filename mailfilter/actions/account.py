"""What follows a sealed fate in the doors that answer first (pipe, worker, smtp): the admin report, the journal
line and metrics, the summary line. Each failure is logged, never raised: the answer already stands.
(The milter prepares its report before its reply, while the message is still at hand: milter.py.)"""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import Config
    from ..metrics import Tally
    from ..model import Envelope
    from ..pipeline import Outcome
    from ..spool import Spool


def sealed(
    door: str,
    envelope: Envelope,
    spool: Spool,
    outcome: Outcome,
    quarantine_id: str | None,
    config: Config,
    logger: logging.Logger,
    started: float,
    tally: Tally | None = None,
) -> None:
    """The bookkeeping of one message (or one group of its recipients) whose fate is sealed. SPOOL: the
    message, or a copy of its head with its size (all the report reads)."""
    from .. import journal, metrics
    from ..log import summary

    decision = outcome.decision
    report = _report(envelope, spool, outcome, quarantine_id, config, logger) if decision.report else None
    delay = time.monotonic() - started
    try:
        now = datetime.now(UTC)
        entry = journal.event(door, envelope, outcome.results, decision, decision.action.value, spool.size, delay, now, quarantine_id)
        metrics.account(entry, config, logger, tally)
    except Exception as exc:  # noqa: BLE001 - bookkeeping never changes the message's fate
        logger.error("%s: journal/metrics not written: %s", envelope.queue_id or "NOQUEUE", exc)
    logger.info("%s", summary(envelope, outcome.results, decision, delay, quarantine=quarantine_id, report=report))


def _report(envelope: Envelope, spool: Spool, outcome: Any, quarantine_id: str | None, config: Config, logger: logging.Logger) -> str:
    """Send the admin report; its failure is logged as "failed" and never changes the message's fate."""
    from . import report

    try:
        ctx = report.context(envelope, spool, outcome.results, outcome.decision, quarantine_id)
        return report.send(ctx, config, os.uname().nodename, datetime.now(UTC))
    except Exception as exc:  # noqa: BLE001 - see the docstring
        logger.error("%s: admin report not sent: %s", envelope.queue_id or "NOQUEUE", exc)
        return "failed"
