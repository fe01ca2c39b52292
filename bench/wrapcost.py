"""What mailfilter-pipe (wrapper/mailfilter-pipe.c) adds to each message: a fork, an exec and a pipe.

Each pair runs one command bare and behind `mailfilter-pipe -t 900`, as master.cf.example wires it,
alternating (bare, wrapped, wrapped, bare, ...); a round's figure is the fastest of RUNS_PER_ROUND
runs of each (as timeit does), and the extra is wrapped minus bare within the round. Wall is exec to
exit; CPU is user+system of the process and all it waited for (the wrapper's child included).

  true    /bin/true: the wrapper's own cost, with nothing else in the way
  pipe    `mailfilter pipe` handing a short message to a running `mailfilter worker`, with the private
          spamd and clamd of scripts/daemons.py (CPU: the client's, not the worker's)

Alone: `.venv/bin/python bench/wrapcost.py [--rounds N]` (root: the worker runs as mailfilter-test);
the wrapper is the one scripts/setup builds into the venv.
"""

from __future__ import annotations

import argparse
import json
import pwd
import shutil
import sys
import tempfile
from pathlib import Path

from measure import BenchError, alternated, run_process, summary

RUNS_PER_ROUND = 5
WRAPPER = Path(sys.executable).parent / "mailfilter-pipe"  # scripts/setup builds it there
TIME_LIMIT = ("-t", "900")


def wrapper_path() -> Path:
    if not WRAPPER.is_file():
        raise BenchError(f"no {WRAPPER}: run scripts/setup (it builds wrapper/mailfilter-pipe.c)")
    return WRAPPER


def measure(wrapper: Path, commands: dict[str, list[str]], stdin: Path, env: dict[str, str], rounds: int) -> dict:
    """For each named command: bare and wrapped wall and CPU (summaries of the rounds) and the wrapper's extra."""
    results = {}
    for name, argv in commands.items():
        variants = {"bare": list(argv), "wrapped": [str(wrapper), *TIME_LIMIT, *argv]}
        figures: dict[str, list[float]] = {f"{v}_{k}": [] for v in variants for k in ("wall", "cpu")}
        for index in range(rounds):
            best: dict[str, list] = {v: [] for v in variants}
            for run in range(RUNS_PER_ROUND):
                for variant in alternated(list(variants), index * RUNS_PER_ROUND + run):
                    done = run_process(variants[variant], stdin, env, timeout=120)
                    if done.status != 0:
                        raise BenchError(f"{name} ({variant}) exited {done.status}: {done.output[-2000:]!r}")
                    best[variant].append(done)
            for variant, runs in best.items():
                figures[f"{variant}_wall"].append(min(r.wall for r in runs))
                figures[f"{variant}_cpu"].append(min(r.cpu for r in runs))
        extra = {k: summary(w - b for w, b in zip(figures[f"wrapped_{k}"], figures[f"bare_{k}"], strict=True)) for k in ("wall", "cpu")}
        results[name] = {
            **{f"{key}_s": summary(values) for key, values in figures.items()},
            "extra_wall_s": extra["wall"],
            "extra_cpu_s": extra["cpu"],
            "runs_per_round": RUNS_PER_ROUND,
        }
    return results


def lines(results: dict) -> list[str]:
    """A markdown table of measure()'s results, in milliseconds (median, min-max of the rounds)."""

    def ms(stat: dict) -> str:
        return f"{stat['median'] * 1000:.2f} ({stat['min'] * 1000:.2f}-{stat['max'] * 1000:.2f})"

    out = ["| command | bare wall | wrapped wall | extra wall | bare CPU | wrapped CPU | extra CPU |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        out.append(
            f"| {name} | {ms(r['bare_wall_s'])} | {ms(r['wrapped_wall_s'])} | {ms(r['extra_wall_s'])} | "
            f"{ms(r['bare_cpu_s'])} | {ms(r['wrapped_cpu_s'])} | {ms(r['extra_cpu_s'])} |"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the cost of mailfilter-pipe per message")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args(argv)
    import pipepath

    import bench  # base_config and the daemons module

    from conftest import write_config
    from postfix import filter_venv

    work = Path(tempfile.mkdtemp(prefix="mailfilter-bench-wrapper-", dir="/tmp"))
    work.chmod(0o755)
    try:
        state = bench.daemons.start()
        sections = {**bench.base_config(work, state), "pipe": {"worker": ""}}
        worker_sections = pipepath.prepare_worker(work / "worker", sections)
        worker_config = Path(write_config(work / "worker" / "pipe.toml", worker_sections))
        message = work / "message.eml"
        message.write_bytes(b"From: alice@example.org\nTo: bob@example.net\nSubject: hello\n\n" + b"A short message.\n" * 40)
        mailfilter = filter_venv()
        worker = pipepath.start_worker(mailfilter, worker_config, Path(worker_sections["pipe"]["worker"]))
        try:
            # As the worker's user (a worker declines a client of another user), through setpriv in both variants.
            user = pwd.getpwnam(pipepath.WORKER_USER)
            as_user = ["/usr/bin/setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--"]
            pipe = [*as_user, str(mailfilter), "pipe", "-q", "BENCH0", "-f", pipepath.SENDER, "--", pipepath.RECIPIENT]
            env = {**pipepath.PIPE_ENV, "MAILFILTER_CONFIG": str(worker_config), "TMPDIR": str(work)}
            results = measure(wrapper_path(), {"true": ["/bin/true"], "pipe": pipe}, message, env, args.rounds)
        finally:
            pipepath.stop_worker(worker)
    except BenchError as exc:
        print(f"bench/wrapcost.py: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n".join(lines(results)))
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    ROOT = Path(__file__).resolve().parent.parent
    sys.path[1:1] = [str(ROOT / "tests"), str(ROOT / "scripts")]  # as bench.py does
    sys.exit(main())
