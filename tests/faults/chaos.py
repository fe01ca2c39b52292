"""Faults on demand: spamd and clamd killed and restarted, the milter killed and restarted, sendmail failing.

The chaos loop picks a fault with a seeded RNG after a random pause, breaks
the thing, leaves it broken for a random outage, and repairs it; the pauses
and outages are the faults' shape, not waits for anything. Every repair waits
for readiness by polling (the daemon answers PING, the milter says READY=1).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import select
import shutil
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import daemons as harness
from milterproc import USER, MilterProcess

HERE = Path(__file__).resolve().parent
FLAKY_SENDMAIL = HERE / "flaky-sendmail"
GONE_TIMEOUT = 30.0


class ChaosError(RuntimeError):
    """A fault could not be injected or repaired."""


def _proc_group(pgid: int) -> set[int]:
    """The live processes of process group PGID (zombies excepted)."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                pids.add(int(stat.parent.name))
    return pids


def _proc_group_alive(pgid: int) -> bool:
    return bool(_proc_group(pgid))


def spamassassin_state_dir() -> Path:
    """Where spamd's children (as daemons.py's SPAMD_USER) keep Bayes and its lock: ~SPAMD_USER/.spamassassin."""
    return Path(pwd.getpwnam(harness.SPAMD_USER).pw_dir) / ".spamassassin"


def remove_orphaned_locks(killed: set[int], folder: Path | None = None) -> list[str]:
    """Remove the SpamAssassin locks that processes KILLED held when they died; return their names.

    A spamd child killed while it holds the Bayes lock leaves `bayes.lock` (and its
    `bayes.lock.HOST.PID` link) behind, and every spamd of this user on the machine,
    other test runs' included, then waits 10 s per message for it until SpamAssassin
    calls it stale, after 10 minutes. Only locks naming a killed pid of this host are removed.
    """
    folder = folder or spamassassin_state_dir()
    host = socket.gethostname()
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for path in folder.iterdir():
            name = path.name
            if ".lock" not in name:
                continue
            if name.endswith(".lock"):  # the lock itself: its content names the holder, HOST.PID
                with contextlib.suppress(OSError), open(path, "rb") as fh:
                    holder_host, _, holder = fh.readline().decode("ascii", "replace").strip().rpartition(".")
                    ours = holder_host == host and holder.isdigit() and int(holder) in killed
                    if ours and os.fstat(fh.fileno()).st_ino == path.lstat().st_ino:  # still that lock
                        path.unlink()
                        removed.append(name)
            else:  # SpamAssassin's temporary link NAME.lock.HOST.PID
                holder_host, _, holder = name.split(".lock.", 1)[1].rpartition(".")
                if holder_host == host and holder.isdigit() and int(holder) in killed:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                        removed.append(name)
    return removed


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise ChaosError(f"no {what} within {timeout:g} s")
        time.sleep(0.02)


def daemon_pid(run_dir: str, name: str) -> int | None:
    """The running daemon's pid, from its pidfile, if its command line is that daemon of RUN_DIR."""
    try:
        pid = int((Path(run_dir) / f"{name}.pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if name.encode() in cmdline and str(run_dir).encode() in cmdline else None


class Daemons:
    """spamd and clamd of one run dir (scripts/daemons.py): killed with SIGKILL, restarted on the same addresses."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self.state = harness.start(run_dir)
        self.addresses = self._addresses(self.state)
        self.locks_removed: list[str] = []

    @staticmethod
    def _addresses(st: dict) -> tuple:
        return st["spamd_host"], st["spamd_port"], st["clamd_socket"]

    def pid(self, name: str) -> int | None:
        return daemon_pid(self.run_dir, name)

    def kill(self, name: str) -> None:
        """SIGKILL the daemon's whole process group (spamd's children serve its socket too) and wait until it is gone."""
        pid = self.pid(name)
        if pid is None:
            raise ChaosError(f"{name} of {self.run_dir} is not running")
        os.killpg(pid, signal.SIGSTOP)  # daemons.py starts each in its own session: pgid == pid
        group = _proc_group(pid)  # stopped, spamd's master forks no new child before the SIGKILL
        os.killpg(pid, signal.SIGKILL)
        _wait(lambda: not _proc_group_alive(pid), GONE_TIMEOUT, f"end of {name} (pid {pid})")
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # ours if this process started it
        if name == "spamd":
            self.locks_removed += remove_orphaned_locks(group)

    def start(self, name: str | None = None) -> None:
        """Start (one or both) and wait until they answer; the addresses the configs name must not change."""
        st = harness.start(self.run_dir, name)
        if self._addresses(st) != self.addresses:
            raise ChaosError(f"{name or 'a daemon'} came back on another address: {self._addresses(st)} != {self.addresses}")


class Milter:
    """`mailfilter milter` (tests/milterproc.py), started, killed with SIGKILL and started again on the same socket and folder."""

    def __init__(self) -> None:
        self.process = MilterProcess()
        self.folder = self.process.folder  # owned by the milter's user: quarantine, journal, state, log
        self.config = ""
        self.env: dict[str, str] = {}

    def start(self, config: str = "", env: dict[str, str] | None = None, timeout: float = 60.0) -> None:
        """Start it and wait for READY=1 (a STOPPING=1 left over from a stopped one is skipped)."""
        self.config, self.env = config or self.config, env if env is not None else self.env
        self.process.start(self.config, env=self.env)
        deadline = time.monotonic() + timeout
        while True:
            if select.select([self.process.notify], [], [], 0.1)[0]:
                if self.process.notify.recv(100) == b"READY=1":
                    return
            elif (status := self.process.proc.poll()) is not None:
                raise ChaosError(f"the milter exited with status {status} while starting\n{self.process.log()[-3000:]}")
            elif time.monotonic() > deadline:
                raise ChaosError(f"the milter did not say READY=1 within {timeout:g} s\n{self.process.log()[-3000:]}")

    @property
    def running(self) -> bool:
        return self.process.proc is not None and self.process.proc.poll() is None

    def kill(self) -> None:
        self.process.proc.kill()
        self.process.proc.wait(GONE_TIMEOUT)

    def log(self) -> str:
        return self.process.log()

    def close(self) -> None:
        self.process.close()


class FlakySendmail:
    """tests/faults/flaky-sendmail, copied into FOLDER (which the pipe or milter user can reach), with its control file.

    argv is what [delivery] sendmail names; fail(permille) sets the chance that a call
    fails with 75; failures() counts the calls that did.
    """

    def __init__(self, folder: Path, owner: str = USER) -> None:
        self.script = folder / "flaky-sendmail"
        self.control = folder / "flaky-sendmail.permille"
        self.logfile = folder / "flaky-sendmail.log"
        shutil.copyfile(FLAKY_SENDMAIL, self.script)
        self.script.chmod(0o755)
        self.logfile.touch()
        shutil.chown(self.logfile, owner)
        self.logfile.chmod(0o644)
        self.fail(0)

    @property
    def argv(self) -> list[str]:
        return [str(self.script), str(self.control), str(self.logfile)]

    def fail(self, permille: int) -> None:
        tmp = self.control.with_suffix(".tmp")
        tmp.write_text(f"{permille}\n")
        tmp.chmod(0o644)
        tmp.replace(self.control)  # atomic: a call reads the old or the new value, never an empty file

    def failures(self) -> int:
        return len(self.logfile.read_text().splitlines())

    def slow(self, seconds: float) -> None:
        """Every call sleeps SECONDS before it hands the message on (0: none)."""
        pause = self.control.with_name(self.control.name + ".sleep")
        tmp = pause.with_suffix(".tmp")
        tmp.write_text(f"{seconds:g}\n" if seconds else "")
        tmp.chmod(0o644)
        tmp.replace(pause)


class ChaosLoop:
    """A thread that injects FAULTS (name -> (break, repair)) one at a time, at random moments, until stopped.

    Each time: a pause drawn from PAUSE, the next fault of a shuffled deck of them all, an outage
    drawn from OUTAGE, then its repair. Stopping cuts the current pause or outage
    short but always repairs; an exception ends the loop and is kept in `error`.
    """

    def __init__(
        self,
        rng: random.Random,
        faults: dict[str, tuple[Callable[[], None], Callable[[], None]]],
        pause: tuple[float, float],
        outage: tuple[float, float],
    ) -> None:
        self.rng = rng
        self.faults = faults
        self.pause = pause
        self.outage = outage
        self.counts: Counter[str] = Counter()
        self.log: list[tuple[float, str, float, float]] = []  # (seconds since start, fault, outage, seconds its repair took)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos", daemon=True)

    def start(self) -> None:
        self.started = time.monotonic()
        self._thread.start()

    def dealt_all(self) -> bool:
        """Every fault has been injected at least once."""
        return set(self.faults) <= set(self.counts)

    def stop(self, timeout: float = 120.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise ChaosError("the chaos loop did not stop (a repair hangs)")
        if self.error is not None:
            raise ChaosError(f"the chaos loop failed: {self.error!r}") from self.error

    def _run(self) -> None:
        deck: list[str] = []
        try:
            while not self._stop.wait(self.rng.uniform(*self.pause)):
                if not deck:  # every fault once per round, in a random order
                    deck = sorted(self.faults)
                    self.rng.shuffle(deck)
                name = deck.pop()
                outage = self.rng.uniform(*self.outage)
                breaker, repair = self.faults[name]
                at = time.monotonic() - self.started
                breaker()
                self.counts[name] += 1
                self._stop.wait(outage)
                repairing = time.monotonic()
                repair()
                self.log.append((round(at, 2), name, round(outage, 2), round(time.monotonic() - repairing, 2)))
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc
