"""Measuring: a process's wall time and CPU, a process group's CPU, a daemon's peak RSS, and the statistics of rounds."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import statistics
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """Something the benchmark relies on did not work; the message says what."""


@dataclass(frozen=True)
class Run:
    """One finished process: wall seconds, CPU seconds (user + system, its waited-for descendants included),
    the exit status and its output (stdout and stderr)."""

    wall: float
    cpu: float
    status: int
    output: bytes


def run_process(argv: Sequence[str], stdin: Path, env: dict[str, str], timeout: float) -> Run:
    """Run ARGV with the file STDIN as standard input, the way pipe(8) runs a filter: one process, our clock around it.

    wait4() gives the CPU of the process and of every descendant it waited for (spamc, clamscan,
    sendmail). (Not its ru_maxrss: Linux counts the spawning process's memory in it.) The process
    runs in its own session; past TIMEOUT its group is killed.
    """
    with tempfile.TemporaryFile() as out:
        fd = os.open(stdin, os.O_RDONLY)
        try:
            actions = [(os.POSIX_SPAWN_DUP2, fd, 0), (os.POSIX_SPAWN_DUP2, out.fileno(), 1), (os.POSIX_SPAWN_DUP2, out.fileno(), 2)]
            started = time.perf_counter()
            pid = os.posix_spawn(argv[0], list(argv), env, file_actions=actions, setsid=True)
        finally:
            os.close(fd)
        pidfd = os.pidfd_open(pid)
        try:
            finished = bool(select.select([pidfd], [], [], timeout)[0])
            if not finished:
                os.killpg(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            wall = time.perf_counter() - started
        except BaseException:  # interrupted (Ctrl-C): leave no filter running behind us
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.killpg(pid, signal.SIGKILL)
                os.wait4(pid, 0)
            raise
        finally:
            os.close(pidfd)
        out.seek(0)
        output = out.read()
    if not finished:
        raise BenchError(f"{argv[0]} ran longer than {timeout:g} s and was killed")
    return Run(wall, usage.ru_utime + usage.ru_stime, os.waitstatus_to_exitcode(status), output)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def group_cpu(*pgids: int) -> dict[int, float]:
    """CPU seconds used so far by each process group in PGIDS: every live member's user and system time,
    plus what it collected from children it reaped (a spamd child that was replaced, Postfix's smtpd
    processes). Clock-tick resolution; one pass over /proc."""
    ticks = dict.fromkeys(pgids, 0)
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and int(fields[2]) in ticks:
                ticks[int(fields[2])] += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return {pgid: count / CLOCK_TICKS for pgid, count in ticks.items()}


def reaped_cpu(pgid: int, name: str) -> dict[int, float]:
    """By pid, the CPU seconds that each live process called NAME in process group PGID collected from the children
    it reaped: what Postfix's pipe(8) processes ran (each command in a session of its own, so outside PGID while it runs)."""
    ticks = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                head, _, tail = Path(entry.path, "stat").read_text().rpartition(")")
                fields = tail.split()
                if int(fields[2]) == pgid and head.partition("(")[2] == name:
                    ticks[int(entry.name)] = int(fields[13]) + int(fields[14])  # cutime, cstime
    return {pid: count / CLOCK_TICKS for pid, count in ticks.items()}


def process_cpu(pid: int) -> float:
    """CPU seconds used so far by process PID (all its threads) and the children it reaped."""
    fields = _stat_fields(pid)
    if fields is None:
        raise BenchError(f"no process {pid}")
    return sum(int(f) for f in fields[11:15]) / CLOCK_TICKS


def peak_rss_kib(pid: int) -> int:
    """VmHWM of a running process: the most resident memory it has had, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise BenchError(f"no VmHWM for pid {pid}")


def summary(values: Iterable[float]) -> dict[str, float]:
    """The median of per-round figures, with their min and max."""
    data = list(values)
    return {"median": statistics.median(data), "min": min(data), "max": max(data), "rounds": len(data)}


def percentile(values: Sequence[float], fraction: float) -> float:
    """The FRACTION quantile of VALUES, by linear interpolation between closest ranks."""
    data = sorted(values)
    position = fraction * (len(data) - 1)
    low = int(position)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (position - low)


def alternated(items: Sequence, index: int) -> list:
    """ITEMS in order for an even INDEX, reversed for an odd one (A B C, C B A, ...): neighbours stay
    neighbours, and a machine that gets slower or faster over time favours none of them."""
    return list(items) if index % 2 == 0 else list(reversed(items))


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages: how busy the machine was with other work too."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
