"""What `mailfilter pipe` costs before it scans anything: the interpreter and its imports.

`python -X importtime` (PYTHONPROFILEIMPORTTIME=1 for the console script) on a real
`mailfilter pipe` run names every module the run imports, with its own and cumulative
cost. The start-up figure is then the wall time of a process that imports exactly the
top-level modules of that run and exits (no -X importtime, whose bookkeeping costs time
of its own), next to `python -c pass` for the bare interpreter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from measure import BenchError, run_process, summary

RUNS_PER_ROUND = 5


@dataclass(frozen=True)
class Import:
    """One line of -X importtime: microseconds of its own, cumulative (its imports included), nesting depth."""

    module: str
    self_us: int
    cumulative_us: int
    depth: int


def parse_importtime(text: str) -> list[Import]:
    """The `import time: SELF | CUMULATIVE | NAME` lines of -X importtime output, in order."""
    imports = []
    for line in text.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, cumulative, name = line[len("import time:") :].split("|")
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
        imports.append(Import(name.strip(), int(own), int(cumulative), depth))
    return imports


def profile_pipe(argv: list[str], stdin: Path, env: dict[str, str]) -> list[Import]:
    """Run `mailfilter pipe` once with PYTHONPROFILEIMPORTTIME=1; return every import it made."""
    run = run_process(argv, stdin, {**env, "PYTHONPROFILEIMPORTTIME": "1"}, timeout=60)
    if run.status != 0:
        raise BenchError(f"mailfilter pipe exited {run.status} under -X importtime: {run.output[-2000:]!r}")
    return parse_importtime(run.output.decode("utf-8", "replace"))


def measure(python: Path, argv: list[str], stdin: Path, env: dict[str, str], rounds: int) -> dict:
    """Start-up wall and CPU of the pipe run's imports, and the bare interpreter's wall, per round the fastest
    of RUNS_PER_ROUND runs (as timeit does: the slower runs measure the machine's other work); and the
    import costs that -X importtime reports for a real run."""
    imports = profile_pipe(argv, stdin, env)
    top_level = [i.module for i in imports if i.depth == 0]
    commands = {"load": [str(python), "-c", "import " + ", ".join(top_level)], "bare": [str(python), "-c", "pass"]}
    figures: dict[str, list[float]] = {"startup": [], "startup_cpu": [], "interpreter": []}
    for _ in range(rounds):
        runs: dict[str, list] = {"load": [], "bare": []}
        for _ in range(RUNS_PER_ROUND):
            for name, command in commands.items():
                run = run_process(command, Path("/dev/null"), env, timeout=30)
                if run.status != 0:
                    raise BenchError(f"{' '.join(command)[:200]} exited {run.status}: {run.output[-2000:]!r}")
                runs[name].append(run)
        figures["startup"].append(min(r.wall for r in runs["load"]))
        figures["startup_cpu"].append(min(r.cpu for r in runs["load"]))
        figures["interpreter"].append(min(r.wall for r in runs["bare"]))
    by_cumulative = sorted((i for i in imports if i.depth == 0), key=lambda i: -i.cumulative_us)
    by_self = sorted(imports, key=lambda i: -i.self_us)
    return {
        "startup_s": summary(figures["startup"]),
        "startup_cpu_s": summary(figures["startup_cpu"]),
        "interpreter_s": summary(figures["interpreter"]),
        "runs_per_round": RUNS_PER_ROUND,
        "modules": len(imports),
        "import_total_us": sum(i.cumulative_us for i in imports if i.depth == 0),
        "top_cumulative": [vars(i) for i in by_cumulative[:10]],
        "top_self": [vars(i) for i in by_self[:10]],
        "top_level_modules": top_level,
    }
