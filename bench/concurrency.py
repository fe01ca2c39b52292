"""spamd and ClamAV at once for one message: the wall time tends to the slower scanner's, not the sum, and the
verdict is the one the two scans give in sequence.

For every message of the corpus that spamd is asked about (up to [spamd] max_size), in alternating order:
the two scanners one after the other (spamd, then ClamAV: each one's own time), and the pipeline as the
worker and the milter run it (pipeline.Runner: both at once). A round's figure per message is the concurrent
wall time over the slower scanner's time and over the sum; the verdict and action of both ways must agree.
"""

from __future__ import annotations

import time
from pathlib import Path

from measure import summary
from messages import Message


def _sequential(data: bytes, config) -> tuple[object, float, float]:
    """(decision, spamd seconds, ClamAV seconds) with the scanners called one after the other."""
    from mailfilter import policy
    from mailfilter.model import ScanResults
    from mailfilter.scanners import clamd, spamd
    from mailfilter.spool import Spool

    started = time.perf_counter()
    spam = spamd.scan_blocking(data, config.spamd)
    spam_s = time.perf_counter() - started
    started = time.perf_counter()
    with Spool.of(data) as spool:
        virus = clamd.scan(spool, config.clamd)
    virus_s = time.perf_counter() - started
    return policy.decide(ScanResults(spam, virus), config), spam_s, virus_s


def _concurrent(runner, data: bytes, config) -> tuple[object, float]:
    from mailfilter.spool import Spool

    started = time.perf_counter()
    with Spool.of(data) as spool:
        outcome = runner.run(spool, config)
    return outcome.decision, time.perf_counter() - started


def measure(config_path: Path, corpus: list[Message], rounds: int) -> dict:
    from mailfilter import config as configmod
    from mailfilter import pipeline

    config = configmod.load(str(config_path))
    sample = [m for m in corpus if m.size <= config.spamd.max_size]
    per_round = []
    disagreements: list[str] = []
    with pipeline.Runner() as runner:
        _concurrent(runner, sample[0].data, config)  # threads and connections warm, as in a running daemon
        for index in range(rounds):
            vs_slower, vs_sum, saved = [], [], []
            for position, message in enumerate(sample):
                first_sequential = (index + position) % 2 == 0
                if first_sequential:
                    decision, spam_s, virus_s = _sequential(message.data, config)
                together, wall = _concurrent(runner, message.data, config)
                if not first_sequential:
                    decision, spam_s, virus_s = _sequential(message.data, config)
                if (decision.verdict, decision.action) != (together.verdict, together.action):
                    disagreements.append(f"{message.name}: {decision.verdict}/{decision.action} vs {together.verdict}/{together.action}")
                vs_slower.append(wall / max(spam_s, virus_s))
                vs_sum.append(wall / (spam_s + virus_s))
                saved.append(spam_s + virus_s - wall)
            per_round.append(
                {
                    "vs_slower": sorted(vs_slower)[len(vs_slower) // 2],
                    "vs_sum": sorted(vs_sum)[len(vs_sum) // 2],
                    "saved_s": sum(saved) / len(saved),
                }
            )
    return {
        "messages": len(sample),
        "vs_slower": summary(r["vs_slower"] for r in per_round),
        "vs_sum": summary(r["vs_sum"] for r in per_round),
        "saved_s": summary(r["saved_s"] for r in per_round),
        "disagreements": disagreements,
        "rounds": per_round,
    }
