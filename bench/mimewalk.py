#!/usr/bin/env python3
"""What the deep virus scan (mailfilter/deepscan.py, mailfilter/mimewalk.py) costs per message.

Every message that clamd calls clean pays the guess (deepscan.may_nest_deeper: the containers'
Content-Type fields counted in chunks); only one that may nest deeper than deepscan.REACH, or that
clamd answered with a limit alert, pays the walk and a clamd scan per part. This measures, on the
bench corpus (bench/messages.py):

- the CPU of the guess and of the walk per message (the walk as if every message were walked);
- with the private daemons running (scripts/daemons.py), the filter's CPU and wall time per message
  of pipeline.run with the deep scan and without it (the whole-message clamd scan only);
- the deep messages of the hostile corpus: a whole scan against the deep scan.

Usage: .venv/bin/python bench/mimewalk.py [--seed N] [--count N] [--rounds N]
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

from mailfilter import config as configmod  # noqa: E402
from mailfilter import deepscan, mimewalk, pipeline  # noqa: E402
from mailfilter.spool import Spool  # noqa: E402


def cpu_per_call(work, rounds: int) -> float:
    """Median CPU seconds of WORK() over ROUNDS calls."""
    samples = []
    for _ in range(rounds):
        started = time.process_time()
        work()
        samples.append(time.process_time() - started)
    return statistics.median(samples)


def walk_costs(corpus: list, rounds: int) -> list[tuple[str, int, float, float, bool]]:
    """(name, size, guess CPU, walk CPU, walked) per message."""
    out = []
    for message in corpus:
        with Spool.of(message.data) as spool:
            guess = cpu_per_call(lambda spool=spool: deepscan.may_nest_deeper(spool, deepscan.REACH), rounds)
            walked = deepscan.may_nest_deeper(spool, deepscan.REACH)
        walk = cpu_per_call(lambda data=message.data: mimewalk.walk(data), rounds)
        out.append((message.name, message.size, guess, walk, walked))
    return out


def live_config():
    import daemons

    state = daemons.state()
    if not (state.get("spamd_port") and daemons.ping_clamd(state.get("clamd_socket", ""))):
        return None
    return configmod.from_dict(
        {
            "spamd": {"host": state["spamd_host"], "port": state["spamd_port"], "timeout": 120},
            "clamd": {"socket": state["clamd_socket"], "timeout": 120},
        }
    )


def whole_only(backend, message, config):
    """The virus scan without the deep scan: clamd on the whole message, as before."""
    from mailfilter.scanners.clamd import classify

    outcome = backend.scan(message, config)
    return classify(outcome) if hasattr(outcome, "names") else outcome


def pipeline_costs(corpus: list, config, rounds: int) -> dict[str, tuple[float, float]]:
    """{'with' | 'without': (median filter CPU per message, median wall per message)} over the corpus."""
    real = deepscan.scan
    results = {}
    with pipeline.Runner() as runner:
        for label, scan in (("without", whole_only), ("with", real), ("without ", whole_only), ("with ", real)):
            deepscan.scan = scan
            cpu, wall = [], []
            try:
                for _ in range(rounds):
                    for message in corpus:
                        with Spool.of(message.data) as spool:
                            c0, w0 = time.process_time(), time.perf_counter()
                            runner.run(spool, config)
                            cpu.append(time.process_time() - c0)
                            wall.append(time.perf_counter() - w0)
            finally:
                deepscan.scan = real
            results.setdefault(label.strip(), []).append((sum(cpu) / len(cpu), sum(wall) / len(wall)))
    return {label: (min(c for c, _ in runs), min(w for _, w in runs)) for label, runs in results.items()}


def deep_costs(config) -> list[tuple[str, float, float, str]]:
    import hostile

    cases = {
        "multipart-30 (EICAR)": hostile._multipart_eicar(30),
        "rfc822-body-60 (EICAR)": hostile._rfc822_body_eicar(60),
        "forwarded-50 (EICAR)": hostile._forwarded_eicar(50),
        "multipart-100 (empty)": hostile._nested_multipart(100, True),
    }
    out = []
    backend = pipeline._virus_backend(config)
    for name, raw in cases.items():
        with Spool.of(raw) as spool:
            w0 = time.perf_counter()
            whole = whole_only(backend, spool, config.clamd)
            w1 = time.perf_counter()
            deep = deepscan.scan(backend, spool, config.clamd)
            w2 = time.perf_counter()
        verdict = "virus" if deep.names else ("unscannable" if deep.unscannable else "clean")
        before = "virus" if getattr(whole, "names", ()) else ("limit" if getattr(whole, "unscannable", ()) else "clean")
        out.append((name, w1 - w0, w2 - w1, f"{before} -> {verdict}"))
    return out


def measure(corpus: list, config, rounds: int) -> dict:
    """For bench.py: the guess and the walk per message (CPU, seconds), and pipeline.run's filter CPU and wall
    per message under 300 kB with and without the deep scan."""
    costs = walk_costs(corpus, rounds)
    everyday = [m for m in corpus if m.size < 300_000]
    pipeline_figures = pipeline_costs(everyday, config, max(1, rounds // 2))
    (cpu_without, wall_without), (cpu_with, wall_with) = pipeline_figures["without"], pipeline_figures["with"]
    return {
        "guess_s": {"median": statistics.median(c[2] for c in costs), "max": max(c[2] for c in costs)},
        "walk_s": {"median": statistics.median(c[3] for c in costs), "max": max(c[3] for c in costs)},
        "walked": sum(c[4] for c in costs),
        "messages": len(costs),
        "pipeline": {
            "messages": len(everyday),
            "cpu_without_s": cpu_without,
            "cpu_with_s": cpu_with,
            "wall_without_s": wall_without,
            "wall_with_s": wall_with,
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    corpus = messages.build(args.seed, args.count)

    costs = walk_costs(corpus, args.rounds)
    guesses, walks = [c[2] for c in costs], [c[3] for c in costs]
    print(f"## The MIME walk on the bench corpus ({len(corpus)} messages, seed {args.seed}; CPU, median of {args.rounds})\n")
    print("| | median | max | walked |")
    print("|---|---|---|---|")
    print(f"| the guess (every clean message) | {statistics.median(guesses) * 1e6:.0f} µs | {max(guesses) * 1e6:.0f} µs | |")
    walked = f"{sum(c[4] for c in costs)} of {len(costs)}"
    print(f"| the walk (if it were walked) | {statistics.median(walks) * 1e6:.0f} µs | {max(walks) * 1e6:.0f} µs | {walked} |")
    biggest = max(costs, key=lambda c: c[1])
    print(f"\nlargest message: {biggest[0]} ({biggest[1]} bytes): guess {biggest[2] * 1e3:.2f} ms, walk {biggest[3] * 1e3:.2f} ms")

    config = live_config()
    if config is None:
        print("\n(the private daemons are not running: `scripts/daemons.py start` for the pipeline figures)")
        return 0
    everyday = [m for m in corpus if m.size < 300_000]
    costs = pipeline_costs(everyday, config, max(1, args.rounds // 2))
    (cpu_without, wall_without), (cpu_with, wall_with) = costs["without"], costs["with"]
    print(f"\n## pipeline.run per message, {len(everyday)} messages under 300 kB (filter CPU and wall, best of 2 runs)\n")
    print("| | filter CPU | wall |")
    print("|---|---|---|")
    print(f"| whole-message clamd scan only | {cpu_without * 1e3:.2f} ms | {wall_without * 1e3:.1f} ms |")
    print(f"| with the deep scan | {cpu_with * 1e3:.2f} ms | {wall_with * 1e3:.1f} ms |")
    print(f"| difference | {(cpu_with - cpu_without) * 1e3:+.2f} ms | {(wall_with / wall_without - 1) * 100:+.1f} % |")

    print("\n## Deep messages: clamd on the whole message, then the deep scan (wall)\n")
    print("| message | whole | deep scan | verdict |")
    print("|---|---|---|---|")
    for name, whole, deep, verdict in deep_costs(config):
        print(f"| {name} | {whole * 1e3:.0f} ms | {deep * 1e3:.0f} ms | {verdict} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
