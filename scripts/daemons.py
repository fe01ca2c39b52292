#!/usr/bin/env python3
"""Private spamd and clamd instances for mailfilter's tests.

Usage: python3 scripts/daemons.py start|stop|status|restart [spamd|clamd] [--run-dir DIR]

Everything lives in one run directory (default /tmp/mailfilter-daemons, or
$MAILFILTER_RUN_DIR, or --run-dir): configs, logs, pidfiles, the clamd socket
and signature database, and state.json with the addresses the tests need.
The system services and /etc configs are never touched.  When run as root,
spamd's children run as debian-spamd and clamd runs as clamav.

Tests import this module (scripts/ on sys.path) and call start(), stop(),
state(), ping_spamd() and ping_clamd(). Test messages (EICAR
included, built at run time) come from tests/corpus.py.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import pwd
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DEFAULT_RUN_DIR = "/tmp/mailfilter-daemons"
SIGNATURES = Path(__file__).resolve().parent.parent / "tests" / "signatures"
HOST = "127.0.0.1"
SPAMD_USER = "debian-spamd"
CLAMD_USER = "clamav"
# Debian ships its rules here; pinning it ignores any sa-update output in
# /var/lib/spamassassin, so scores do not depend on the machine's history.
SPAMD_RULES = "/usr/share/spamassassin"
READY_TIMEOUT = {"spamd": 60.0, "clamd": 120.0}
STOP_TIMEOUT = 30.0
DAEMONS = ("spamd", "clamd")

RunDir = str | os.PathLike[str] | None
State = dict[str, Any]


class DaemonError(RuntimeError):
    """A daemon failed to start, answer or stop."""


def ping_spamd(host: str, port: int, timeout: float = 2.0) -> bool:
    """Return True if a spamd at host:port answers PING with PONG."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING SPAMC/1.5\r\n\r\n")
            return _recv_all(sock).startswith(b"SPAMD/1.5 0 PONG")
    except OSError:
        return False


def ping_clamd(socket_path: str, timeout: float = 2.0) -> bool:
    """Return True if a clamd on the unix socket answers zPING with PONG."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(socket_path)
            sock.sendall(b"zPING\0")
            return _recv_all(sock) == b"PONG\0"
    except OSError:
        return False


def _recv_all(sock: socket.socket) -> bytes:
    """Read until the peer closes the connection."""
    chunks = []
    while chunk := sock.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks)


def _run_dir(run_dir: RunDir) -> Path:
    """Resolve the run directory: argument, then $MAILFILTER_RUN_DIR, then the default."""
    return Path(run_dir or os.environ.get("MAILFILTER_RUN_DIR") or DEFAULT_RUN_DIR).resolve()


def state(run_dir: RunDir = None) -> State:
    """Return the contents of RUN/state.json, or {} if nothing was started there yet."""
    path = _run_dir(run_dir) / "state.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _write_state(run: Path, st: State) -> None:
    """Write RUN/state.json atomically, readable by everyone."""
    tmp = run / "state.json.tmp"
    tmp.write_text(json.dumps(st, indent=2, sort_keys=True) + "\n")
    tmp.chmod(0o644)
    tmp.replace(run / "state.json")


def _free_port(preferred: int | None) -> int:
    """Return preferred if it can be bound on HOST, else a fresh free port."""
    candidates = (preferred, 0) if preferred else (0,)
    for port in candidates:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the daemons do
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise DaemonError("no free port on " + HOST)


def _mkdir(path: Path, owner: str | None = None) -> Path:
    """Create path with mode 0755, owned by owner if given."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)
    if owner:
        shutil.chown(path, owner, pwd.getpwnam(owner).pw_gid)
    return path


def _proc_stat(pid: int) -> tuple[bool, int] | None:
    """Return (alive, process group) of pid, or None if there is no such process.

    A zombie is alive only while threads of it still run: they hold its files
    and sockets until the last one is gone.
    """
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data.rsplit(")", 1)[1].split()
    return fields[0] != "Z" or int(fields[17]) > 1, int(fields[2])


def _alive(pid: int) -> bool:
    """True while pid runs."""
    st = _proc_stat(pid)
    return bool(st and st[0])


def _group_alive(pgid: int) -> bool:
    """True while any process of process group pgid runs."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _proc_stat(int(entry.name))
            if st and st[0] and st[1] == pgid:
                return True
    return False


def _pid(run: Path, name: str) -> int | None:
    """Return the pid from RUN/name.pid if it is a running daemon of this run dir.

    A pidfile whose process is gone, a zombie, or some other program is stale:
    it is removed, and the zombie reaped if it is our child.
    """
    pidfile = run / f"{name}.pid"
    try:
        pid = int(pidfile.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        pid, cmdline = 0, b""
    if _alive(pid) and name.encode() in cmdline and bytes(run) in cmdline:
        return pid
    if pid:
        _reap(pid)
    pidfile.unlink(missing_ok=True)
    return None


def _reap(pid: int) -> None:
    """Collect the exit status of pid if it is a child of this process."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _spawn(cmd: list[str], output: Path) -> int:
    """Start cmd in a new session, stdin from /dev/null, stdout and stderr to output."""
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        return os.posix_spawn(
            cmd[0],
            cmd,
            os.environ,
            setsid=True,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, fd, 1),
                (os.POSIX_SPAWN_DUP2, fd, 2),
            ],
        )
    finally:
        os.close(fd)


def _tail(path: Path, lines: int = 20) -> str:
    """Return the last lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError as exc:
        return f"({exc})"
    return "\n".join(text) or "(empty)"


def _spamd_command(run: Path, st: State) -> list[str]:
    """Build the spamd command line; its children drop to SPAMD_USER when root."""
    owner = SPAMD_USER if os.geteuid() == 0 else None
    home = _mkdir(run / "spamd-home", owner)
    # No Bayes by default: its database and lock are shared by every spamd running as the same
    # user, a killed child leaves the lock behind (10 s per scan for everyone), and scores would
    # depend on what the machine has learnt. A run dir started with bayes=True (scripts/lab)
    # gets a Bayes database of its own, RUN/bayes, learnt only through TELL.
    bayes = (
        ["--cf=use_bayes 1", f"--cf=bayes_path {_mkdir(run / 'bayes', owner) / 'bayes'}", "--cf=lock_method flock"]
        if st.get("spamd_bayes")
        else ["--cf=use_bayes 0"]
    )
    cmd = [
        "/usr/sbin/spamd",
        "--local",  # no network tests: they time out here
        "--nouser-config",
        "--allow-tell",  # `mailfilter learn` (TELL); learns nothing while use_bayes is 0
        *bayes,
        "--cf=bayes_auto_learn 0",
        f"--configpath={SPAMD_RULES}",
        f"--listen={st['spamd_host']}:{st['spamd_port']}",
        f"--allowed-ips={HOST}",
        "--max-children=4",
        f"--helper-home-dir={home}",
        f"--syslog={run / 'spamd.log'}",
    ]
    if os.geteuid() == 0:
        cmd.append(f"--username={SPAMD_USER}")
    return cmd


def _clamd_conf(run: Path, st: State) -> str:
    """The text of RUN/clamd.conf for state ST.

    AlertExceedsMax and HeuristicAlerts make clamd answer `Heuristics.Limits.Exceeded.*
    FOUND` when a scan hits one of its limits (MaxRecursion, MaxScanSize...), instead of
    an OK that would read as clean: mailfilter takes such an answer for unscannable.
    """
    conf = [
        "Foreground yes",
        f"LocalSocket {st['clamd_socket']}",
        "LocalSocketMode 666",
        f"TCPAddr {st['clamd_host']}",
        f"TCPSocket {st['clamd_port']}",
        f"DatabaseDirectory {run / 'db'}",
        "StreamMaxLength 100M",
        "HeuristicAlerts yes",
        "AlertExceedsMax yes",
        f"LogFile {run / 'clamd.log'}",
        "LogTime yes",
    ]
    if os.geteuid() == 0:
        conf.append(f"User {CLAMD_USER}")
    return "\n".join(conf) + "\n"


def _clamd_command(run: Path, st: State) -> list[str]:
    """Write RUN/clamd.conf and the signature database; return the clamd command line.

    As root, clamd drops to CLAMD_USER before it binds its unix socket, so the
    socket lives in its own directory owned by that user.
    """
    root = os.geteuid() == 0
    _mkdir(run / "clamd", CLAMD_USER if root else None)
    db = run / "db"
    shutil.rmtree(db, ignore_errors=True)
    _mkdir(db)
    for sig in SIGNATURES.glob("mailfilter-test.*"):
        shutil.copyfile(sig, db / sig.name)
        (db / sig.name).chmod(0o644)
    log = run / "clamd.log"
    log.touch()
    log.chmod(0o644)  # clamd chowns it to its user but keeps the mode
    config = Path(st["clamd_config"])
    config.write_text(_clamd_conf(run, st))
    config.chmod(0o644)
    return ["/usr/sbin/clamd", f"--config-file={config}"]


def _stale_clamd_conf(run: Path, st: State) -> bool:
    """True when the running clamd was started with another RUN/clamd.conf than this script writes now
    (an older version of it): a reused clamd must behave as the tests expect."""
    try:
        return Path(st["clamd_config"]).read_text() != _clamd_conf(run, st)
    except (OSError, KeyError):
        return True


def _stale_spamd_command(run: Path, st: State, pid: int) -> bool:
    """True when the running spamd was started with other arguments than this script gives it now
    (an older version of it, without --allow-tell; or another Bayes setting)."""
    try:
        running = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True
    args = [a.decode(errors="replace") for a in running if a]  # perl -T -w /usr/sbin/spamd ARGS...
    wanted = _spamd_command(run, st)
    return wanted[0] not in args or args[args.index(wanted[0]) + 1 :] != wanted[1:]


def _ping(name: str, st: State) -> bool:
    """Ask the named daemon of state st whether it is ready."""
    if name == "spamd":
        return "spamd_port" in st and ping_spamd(st["spamd_host"], st["spamd_port"])
    return "clamd_socket" in st and ping_clamd(st["clamd_socket"])


def _wait_ready(name: str, run: Path, st: State, pid: int) -> None:
    """Poll the daemon until it answers; raise with its log tail if it dies or times out."""
    deadline = time.monotonic() + READY_TIMEOUT[name]
    while not _ping(name, st):
        died = not _alive(pid)
        if died or time.monotonic() > deadline:
            why = "exited" if died else f"did not answer within {READY_TIMEOUT[name]:g} s"
            raise DaemonError(
                f"{name} (pid {pid}) {why}\n"
                f"--- {run / (name + '.log')} ---\n{_tail(run / (name + '.log'))}\n"
                f"--- {run / (name + '.out')} ---\n{_tail(run / (name + '.out'))}"
            )
        time.sleep(0.1)


def _start_one(name: str, run: Path, st: State) -> int:
    """Start the named daemon unless one is already running; wait until it answers."""
    pid = _pid(run, name)
    if pid and (_stale_clamd_conf(run, st) if name == "clamd" else _stale_spamd_command(run, st, pid)):
        print(f"{name}: its configuration changed, restarting it", file=sys.stderr)
        _stop_one(name, run)
        pid = None
    if pid:
        _wait_ready(name, run, st, pid)
        print(f"{name}: already running, pid {pid}", file=sys.stderr)
        return pid
    if _ping(name, st):
        raise DaemonError(f"a {name} without a valid pidfile already answers for {run}: stop it")
    if name == "spamd":
        st["spamd_port"] = _free_port(st.get("spamd_port"))
        cmd = _spamd_command(run, st)
    else:
        st["clamd_port"] = _free_port(st.get("clamd_port"))
        cmd = _clamd_command(run, st)
    began = time.monotonic()
    pid = _spawn(cmd, run / f"{name}.out")
    (run / f"{name}.pid").write_text(f"{pid}\n")
    try:
        _wait_ready(name, run, st, pid)
    except DaemonError:
        _stop_one(name, run)
        raise
    print(f"{name}: started pid {pid}, ready in {time.monotonic() - began:.2f} s", file=sys.stderr)
    return pid


def _wait_gone(pgid: int, timeout: float) -> bool:
    """Wait until process group pgid has no live process; return False on timeout."""
    deadline = time.monotonic() + timeout
    while _group_alive(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _stop_one(name: str, run: Path) -> None:
    """Stop the named daemon by its pidfile and wait until its whole process group is gone."""
    pid = _pid(run, name)
    if pid:
        os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, STOP_TIMEOUT):
            os.killpg(pid, signal.SIGKILL)
            if not _wait_gone(pid, STOP_TIMEOUT):
                raise DaemonError(f"{name} (pid {pid}) survived SIGKILL")
        _reap(pid)
        print(f"{name}: stopped pid {pid}", file=sys.stderr)
    (run / f"{name}.pid").unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(run: Path) -> Iterator[None]:
    """Create the run dir and hold its lock, so concurrent start/stop calls serialise."""
    try:
        _mkdir(run)
        lock = os.open(run / ".lock", os.O_WRONLY | os.O_CREAT, 0o644)
    except PermissionError as exc:
        raise DaemonError(f"{exc}: choose another --run-dir or MAILFILTER_RUN_DIR") from exc
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
    finally:
        os.close(lock)


def _selected(only: str | None) -> tuple[str, ...]:
    """Return the daemons named by only (None means both)."""
    if only not in (None, *DAEMONS):
        raise ValueError(f"unknown daemon {only!r}, expected one of {DAEMONS}")
    return DAEMONS if only is None else (only,)


def _base_state(run: Path) -> State:
    """Return the stored state with this run dir's fixed addresses and live pids."""
    st = state(run)
    st.update(
        run_dir=str(run),
        spamd_host=HOST,
        clamd_host=HOST,
        clamd_socket=str(run / "clamd" / "clamd.ctl"),
        clamd_config=str(run / "clamd.conf"),
    )
    st["pids"] = {name: _pid(run, name) for name in DAEMONS}
    return st


def start(run_dir: RunDir = None, only: str | None = None, bayes: bool = False) -> State:
    """Start spamd and clamd (or only one), reusing running ones; return the state dict.

    bayes: spamd keeps a Bayes database of its own in RUN/bayes (for `mailfilter learn`).
    """
    run = _run_dir(run_dir)
    with _locked(run):
        st = _base_state(run)
        st["spamd_bayes"] = bayes
        for name in _selected(only):
            st["pids"][name] = _start_one(name, run, st)
            _write_state(run, st)
    return st


def stop(run_dir: RunDir = None, only: str | None = None) -> None:
    """Stop spamd and clamd (or only one) of the run dir; ports stay reserved in state.json."""
    run = _run_dir(run_dir)
    with _locked(run):
        st = _base_state(run)
        for name in _selected(only):
            _stop_one(name, run)
            st["pids"][name] = None
        _write_state(run, st)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("start", "stop", "status", "restart"))
    parser.add_argument("daemon", nargs="?", choices=DAEMONS)
    parser.add_argument("--run-dir", help=f"default: $MAILFILTER_RUN_DIR or {DEFAULT_RUN_DIR}")
    args = parser.parse_args(argv)
    try:
        if args.command in ("stop", "restart"):
            stop(args.run_dir, args.daemon)
        if args.command in ("start", "restart"):
            print(json.dumps(start(args.run_dir, args.daemon), indent=2, sort_keys=True))
    except DaemonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.command != "status":
        return 0
    st = state(args.run_dir)
    print(json.dumps(st, indent=2, sort_keys=True))
    answering = {name: _ping(name, st) for name in _selected(args.daemon)}
    for name, ok in answering.items():
        print(f"{name}: {'answering' if ok else 'not answering'}")
    return 0 if all(answering.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
