#!/usr/bin/env python3
"""Run one coverage-guided fuzz target (fuzz/properties.py) under atheris for a bounded time.

Usage: fuzz/run.py TARGET --seconds N [--keep-going] [--timeout S]
       fuzz/run.py --list

An input that breaks a property (an exception, a timeout, too much memory) is
kept in fuzz/regressions/TARGET/ under libFuzzer's name (crash-SHA1,
timeout-SHA1...); tests/test_fuzz_regressions.py replays every kept input in
the normal suite. Inputs that fail the way a kept one already does (same
exception type raised at the same line) are known bugs: they do not stop the
run, so that it looks for new ones. The corpus grows in fuzz/.corpus/TARGET/
(not kept in git) and is reused by the next run.

Exit status: 0 nothing new found, 1 a new input was kept, 2 a usage error or the fuzzer itself failed.
With --keep-going the run goes on after a new find until the time is up.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

HERE = Path(__file__).resolve().parent
REGRESSIONS = HERE / "regressions"
CORPUS = HERE / ".corpus"
Signature = tuple[str, str, int]


def signature(exc: BaseException) -> Signature:
    """Where a failure comes from: exception type, and the file and line that raised it."""
    tb: TracebackType | None = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return type(exc).__name__, "", 0
    return type(exc).__name__, tb.tb_frame.f_code.co_filename, tb.tb_lineno


def known_signatures(check: Callable[[bytes], None], folder: Path) -> set[Signature]:
    """The failures the kept inputs of a target still cause."""
    known = set()
    for path in sorted(folder.glob("*")):
        try:
            check(path.read_bytes())
        except Exception as exc:  # noqa: BLE001 - any failure of a kept input is a known bug
            known.add(signature(exc))
    return known


def fuzz(target: str, seconds: int, timeout: int) -> None:
    """The child: run atheris in this process until the time is up or a new failure is found (never returns)."""
    import atheris

    with atheris.instrument_imports(include=["mailfilter", "email"]):  # what properties imports, not properties itself
        import email.header  # noqa: F401 - message.decoded() imports it lazily: instrument it now

        import properties

    check = properties.TARGETS[target].check
    kept = REGRESSIONS / target
    kept.mkdir(parents=True, exist_ok=True)
    known = known_signatures(check, kept)
    for sig in sorted(known):
        print(f"fuzz/run.py: known failure, not reported again: {sig[0]} at {sig[1]}:{sig[2]}", file=sys.stderr)
    corpus = CORPUS / target
    corpus.mkdir(parents=True, exist_ok=True)
    for seed in properties.TARGETS[target].seeds:
        (corpus / f"seed-{hashlib.sha1(seed).hexdigest()}").write_bytes(seed)  # noqa: S324 - a file name, not security

    def one_input(data: bytes) -> None:
        try:
            check(data)
        except Exception as exc:
            if signature(exc) not in known:
                raise

    argv = [
        sys.argv[0],
        str(corpus),
        f"-max_total_time={seconds}",
        f"-timeout={timeout}",
        f"-max_len={properties.TARGETS[target].max_len}",
        "-rss_limit_mb=2048",
        f"-artifact_prefix={kept}/",
        "-print_final_stats=1",
    ]
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


def supervise(target: str, seconds: int, timeout: int, keep_going: bool) -> int:
    """The parent: run the child until the time is up; with KEEP_GOING, again after each new find."""
    deadline = time.monotonic() + seconds
    kept = REGRESSIONS / target
    before = set(kept.glob("*")) if kept.exists() else set()
    failed = False
    while (left := int(deadline - time.monotonic())) > 0:
        found = set(kept.glob("*")) if kept.exists() else set()
        child = [sys.executable, str(Path(__file__).resolve()), target, "--seconds", str(left), "--timeout", str(timeout), "--child"]
        proc = subprocess.run(child, check=False, cwd=HERE)
        if proc.returncode == 0:
            break
        if set(kept.glob("*")) == found:  # it failed without keeping an input: the fuzzer itself is broken
            failed = True
            break
        if not keep_going:
            break
    new = sorted(set(kept.glob("*")) - before)
    for path in new:
        print(f"fuzz/run.py: kept {path.relative_to(HERE.parent)}", file=sys.stderr)
    return 1 if new else 2 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", nargs="?", help="what to fuzz (see --list)")
    parser.add_argument("--seconds", type=int, default=60, help="how long to fuzz (libFuzzer's -max_total_time)")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take before it counts as a failure")
    parser.add_argument("--keep-going", action="store_true", help="after a new find, go on fuzzing until the time is up")
    parser.add_argument("--list", action="store_true", help="list the targets")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    if args.child:  # before anything imports mailfilter: atheris instruments it as it is imported
        fuzz(args.target, args.seconds, args.timeout)
    import properties

    if args.list:
        for name, target in properties.TARGETS.items():
            print(f"{name:8} {(target.check.__doc__ or '').splitlines()[0]}")
        return 0
    if args.target not in properties.TARGETS:
        parser.error(f"TARGET must be one of: {', '.join(properties.TARGETS)}")
    return supervise(args.target, args.seconds, args.timeout, args.keep_going)


if __name__ == "__main__":
    sys.exit(main())
