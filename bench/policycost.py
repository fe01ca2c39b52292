#!/usr/bin/env python3
"""What the per-recipient policy, the sender lists and the attachment check cost the filter per message.

The milter (like every door) pays, per message and besides the scanners: the attachment check
(attachments.inspect_spool: the MIME walk, file names, libmagic on binary parts, zip members) and
the decision (pipeline.decide: the sender lists, a rule per recipient, policy.plan). This measures
both on the bench corpus (bench/messages.py), with the policy a site of the course chapter's kind
would write: two recipient tables, one of them for the message's first recipient, a second
recipient under the global rule, and allow and block lists of 10,000 entries each. The scanners'
answers are real (pipeline.scan against the private daemons), taken once per message, so that only
the policy's own CPU is counted.

Usage: .venv/bin/python bench/policycost.py [--seed N] [--count N] [--rounds N]   (scripts/daemons.py start first)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[1:1] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "scripts"), str(ROOT / "bench")]

import messages  # noqa: E402

from mailfilter import attachments, pipeline  # noqa: E402
from mailfilter import config as configmod  # noqa: E402
from mailfilter import senders as senderlists  # noqa: E402
from mailfilter.model import Envelope  # noqa: E402
from mailfilter.spool import Spool  # noqa: E402

LIST_ENTRIES = 10_000
ENVELOPE = Envelope("alerts@partner.example", ("boss@example.org", "carol@example.net"))


def policy_sections(daemon_sections: dict) -> dict:
    """DAEMON_SECTIONS ([spamd], [clamd]) with the policy of a small multi-domain site."""
    return {
        **daemon_sections,
        "recipients": {
            "example.org": {"spam_score": 6.0, "subject_tag": "[SPAM] ", "banned": "quarantine"},
            "boss@example.org": {"spam_score": 4.0, "virus": "quarantine"},  # the milter's own default rejects
        },
        "senders": {
            "allow": [f"user{n}@allowed{n % 97}.example" for n in range(LIST_ENTRIES - 1)] + ["partner.example"],
            "block": [f"spam{n}.example" for n in range(LIST_ENTRIES)],
        },
        "policy": {"subject_tag": ""},
    }


def _cpu(work, rounds: int) -> float:
    """Median CPU seconds of WORK() over ROUNDS calls."""
    samples = []
    for _ in range(rounds):
        started = time.process_time()
        work()
        samples.append(time.process_time() - started)
    return statistics.median(samples)


def measure(corpus: list, daemon_sections: dict, rounds: int) -> dict:
    """For bench.py: per message (CPU seconds, median over ROUNDS), the attachment check, the decision and both;
    and how many messages were split or had banned parts (the work was real)."""
    config = configmod.from_dict(policy_sections(daemon_sections))
    cache = senderlists.Cache()
    rows = []
    with pipeline.Runner() as runner:
        for message in corpus:
            with Spool.of(message.data) as spool:
                results = runner.scan(spool, config, ENVELOPE, "milter")
                check = _cpu(lambda spool=spool: attachments.inspect_spool(spool, config.attachments), rounds)
            decide = _cpu(lambda results=results: pipeline.decide(results, config, ENVELOPE, "milter", cache), rounds)
            outcome = pipeline.decide(results, config, ENVELOPE, "milter", cache)
            banned = bool(results.attachments and results.attachments.banned)
            rows.append((message.name, message.size, check, decide, outcome.split, banned))
    totals = [r[2] + r[3] for r in rows]
    return {
        "messages": len(rows),
        "check_s": {
            "median": statistics.median(r[2] for r in rows),
            "mean": statistics.fmean(r[2] for r in rows),
            "max": max(r[2] for r in rows),
        },
        "decide_s": {
            "median": statistics.median(r[3] for r in rows),
            "mean": statistics.fmean(r[3] for r in rows),
            "max": max(r[3] for r in rows),
        },
        "total_s": {"median": statistics.median(totals), "mean": statistics.fmean(totals), "max": max(totals)},
        "slowest": max(rows, key=lambda r: r[2] + r[3])[:2],
        "split": sum(r[4] for r in rows),
        "banned": sum(r[5] for r in rows),
        "list_entries": LIST_ENTRIES,
    }


def main() -> int:
    import daemons

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    state = daemons.state()
    if not (state.get("spamd_port") and daemons.ping_clamd(state.get("clamd_socket", ""))):
        print("the private daemons are not running: `scripts/daemons.py start` first", file=sys.stderr)
        return 1
    sections = {
        "spamd": {"host": state["spamd_host"], "port": state["spamd_port"], "timeout": 120},
        "clamd": {"socket": state["clamd_socket"], "timeout": 120},
    }
    got = measure(messages.build(args.seed, args.count), sections, args.rounds)
    print(f"## Policy cost per message, {got['messages']} bench messages (CPU, median of {args.rounds} calls each)\n")
    print("| | median | mean | max |")
    print("|---|---|---|---|")
    for key, label in (("check_s", "attachment check"), ("decide_s", "decision (senders, rules, plan)"), ("total_s", "both")):
        stat = got[key]
        print(f"| {label} | {stat['median'] * 1e3:.2f} ms | {stat['mean'] * 1e3:.2f} ms | {stat['max'] * 1e3:.2f} ms |")
    print(f"\nslowest: {got['slowest'][0]} ({got['slowest'][1]} bytes); split: {got['split']}, banned: {got['banned']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
