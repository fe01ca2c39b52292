"""A private Postfix instance for tests, and the SMTP sink that receives everything it relays.

Everything lives in one work folder made with mkdtemp under /tmp (pytest's
tmp_path sits in a 0700 folder that Postfix's unprivileged processes cannot
reach): config_directory etc/, queue_directory queue/, data_directory data/,
the maillog, and filter/, owned by the pipe user, for the filter's config,
quarantine, state, log and TMPDIR. smtpd listens on a free loopback port;
nothing is delivered locally (`mydestination =`): every accepted message is
relayed to the Sink. The machine's own Postfix and /etc/postfix are never
touched. Needs root, the packages from scripts/setup and its user PIPE_USER.

Two wirings (see /work/shared/POSTFIX-TESTING.md for why each setting is there):
- "milter": `smtpd_milters = MILTER`, `milter_default_action = tempfail`;
  the milter itself is the test's business.
- "content_filter": smtpd gets `-o content_filter=mailfilter:dummy`, and the
  `mailfilter` pipe(8) service runs ARGV as PIPE_USER:postdrop with TMPDIR and
  MAILFILTER_CONFIG exported. The filter reinjects with plain sendmail, which
  reaches this instance through the MAIL_CONFIG that pipe(8) exports.

    with PostfixInstance() as postfix:
        postfix.start("content_filter", argv=[str(filter_venv()), *PIPE_ARGS], config=path)
        code, text = postfix.send(raw, "alice@example.org", ["bob@example.net"])
        [delivery] = postfix.sink.wait(1)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import pytest

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
PIPE_USER = "mailfilter-test"  # created by scripts/setup
# pipe(8) refuses user=X:G when G is the instance's setgid_group, and postdrop
# honours MAIL_CONFIG only for a caller whose real group is postdrop: so the
# filter runs as PIPE_USER:postdrop and the instance's setgid_group is another
# group, PIPE_USER's own.
PIPE_GROUP = "postdrop"
SETGID_GROUP = PIPE_USER
PIPE_ARGS = ("pipe", "-q", "${queue_id}", "-f", "${sender}", "--", "${recipient}")
VENV = Path("/opt/mailfilter-test-venv")
WRAPPER_SOURCE = ROOT / "wrapper" / "mailfilter-pipe.c"
WRAPPER_CFLAGS = ("-O2", "-Wall", "-Wextra", "-Werror")  # as scripts/setup builds it
PAST = time.time() - 3600  # config files this old are not re-read by a starting master
TIMEOUT = 30.0

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="runs a private Postfix instance (postfix -c DIR start): needs root")

Wiring = Literal["milter", "content_filter"]
T = TypeVar("T")


@dataclass(frozen=True)
class Delivery:
    """One message as the sink received it: the envelope, and DATA as sent (CRLF lines), dots unstuffed."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes


class _SinkSession(socketserver.StreamRequestHandler):
    """Just enough ESMTP for Postfix's smtp client: EHLO with 8BITMIME, MAIL, RCPT, DATA, RSET, NOOP, QUIT."""

    timeout = 120

    def reply(self, *lines: str) -> None:
        text = "".join(f"{line[:3]}{'-' if i < len(lines) - 1 else ' '}{line[4:]}\r\n" for i, line in enumerate(lines))
        self.wfile.write(text.encode())

    def handle(self) -> None:
        sender, recipients = "", []
        self.reply("220 sink.example.net ESMTP")
        while line := self.rfile.readline():
            verb, _, arg = line.decode("utf-8", "replace").rstrip("\r\n").partition(" ")
            verb = verb.upper()
            if verb == "EHLO":
                self.reply("250 sink.example.net", "250 8BITMIME")
            elif verb == "RSET":
                sender, recipients = "", []
                self.reply("250 ok")
            elif verb in ("HELO", "NOOP"):
                self.reply("250 ok")
            elif verb in ("MAIL", "RCPT"):
                address = arg.partition("<")[2].partition(">")[0]
                sender, recipients = (address, []) if verb == "MAIL" else (sender, [*recipients, address])
                self.reply("250 ok")
            elif verb == "DATA":
                self.reply("354 go ahead")
                self.server.sink.record(Delivery(sender, tuple(recipients), self.read_data()))
                self.reply("250 ok: delivered")
                sender, recipients = "", []
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("502 not implemented")

    def read_data(self) -> bytes:
        lines = []
        while (line := self.rfile.readline()) not in (b".\r\n", b".\n", b""):
            lines.append(line[1:] if line.startswith(b".") else line)
        return b"".join(lines)


class Sink:
    """An SMTP server on a free loopback port, in threads of this process, that keeps every message it is given.

    diagnostics: what to add to the message of a failed wait (the instance's queue and logs).
    """

    def __init__(self, diagnostics: Callable[[], str] = lambda: "") -> None:
        self._server = socketserver.ThreadingTCPServer((HOST, 0), _SinkSession)
        self._server.daemon_threads = True
        self._server.sink = self  # type: ignore[attr-defined]
        self.port: int = self._server.server_address[1]
        self._diagnostics = diagnostics
        self._deliveries: list[Delivery] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="smtp-sink", daemon=True)
        self._thread.start()

    def record(self, delivery: Delivery) -> None:
        with self._changed:
            self._deliveries.append(delivery)
            self._changed.notify_all()

    @property
    def deliveries(self) -> list[Delivery]:
        """What arrived so far, oldest first."""
        with self._changed:
            return list(self._deliveries)

    def wait(self, count: int, timeout: float = TIMEOUT) -> list[Delivery]:
        """Wait until at least COUNT messages arrived (no longer than TIMEOUT); return them all, oldest first."""
        with self._changed:
            arrived = self._changed.wait_for(lambda: len(self._deliveries) >= count, timeout)
            deliveries = list(self._deliveries)
        if not arrived:
            raise AssertionError(f"the sink got {len(deliveries)} message(s) in {timeout:g} s, expected {count}\n{self._diagnostics()}")
        return deliveries

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def free_port() -> int:
    """A port on HOST that is free now, for a server that binds it right after (smtpd, a milter)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _run(argv: Sequence[str | os.PathLike[str]], check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run argv (files it creates are readable by all); unless check is false, raise with its output if it fails."""
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False, umask=0o022)
    if check and proc.returncode:
        raise RuntimeError(f"{' '.join(map(str, argv))}: exit status {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc


# master.cf's own services, none chrooted: what every private instance runs besides its smtpd and filters.
CORE_SERVICES = [
    "pickup unix n - n 60 1 pickup",
    "cleanup unix n - n - 0 cleanup",
    "qmgr unix n - n 300 1 qmgr",
    "rewrite unix - - n - - trivial-rewrite",
    "bounce unix - - n - 0 bounce",
    "defer unix - - n - 0 bounce",
    "trace unix - - n - 0 bounce",
    "verify unix - - n - 1 verify",
    "flush unix n - n 1000? 0 flush",
    "proxymap unix - - n - - proxymap",
    "showq unix n - n - - showq",
    "smtp unix - - n - - smtp",
    "relay unix - - n - - smtp",
    "error unix - - n - - error",
    "retry unix - - n - - error",
    "discard unix - - n - - discard",
    "anvil unix - - n - 1 anvil",
    "scache unix - - n - 1 scache",
    "postlog unix-dgram n - n - 1 postlogd",
]


class PostfixInstance:
    """A private Postfix in a fresh work folder; start() it with a wiring, close() (or leave the `with`) to remove it all."""

    def __init__(self, pipe_user: str = PIPE_USER) -> None:
        """PIPE_USER: whom pipe(8) runs the filter as (the Debian package's test passes its own `mailfilter`)."""
        try:
            self.pipe_user = pwd.getpwnam(pipe_user)
        except KeyError:
            raise RuntimeError(f"no user {pipe_user!r} (the pipe user of the Postfix tests): run scripts/setup") from None
        self.work = Path(tempfile.mkdtemp(prefix="mailfilter-postfix-", dir="/tmp"))
        self.work.chmod(0o755)  # Postfix's unprivileged processes read etc/ and the pipe user works in filter/
        self.config_dir = self.work / "etc"
        self.queue_dir = self.work / "queue"
        self.filter_dir = self.work / "filter"
        self.maillog_path = self.work / "maillog"
        self.smtp_port = 0
        self.submission_port = 0
        for folder, mode in ((self.filter_dir, 0o755), (self.filter_dir / "tmp", 0o700)):
            folder.mkdir(mode=mode)
            os.chown(folder, self.pipe_user.pw_uid, self.pipe_user.pw_gid)
        self.sink = Sink(self.diagnostics)

    def __enter__(self) -> PostfixInstance:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(
        self,
        wiring: Wiring,
        *,
        milter: str = "",
        argv: Sequence[str] = (),
        config: str | os.PathLike[str] = "",
        submission: Sequence[str] | None = None,
        pipe_maxproc: int = 10,
        **main_cf: str,
    ) -> None:
        """Write main.cf and master.cf for WIRING, start the master and wait until smtpd answers.

        milter: the smtpd_milters address ("milter" wiring), e.g. inet:127.0.0.1:PORT.
        argv: the filter command with its pipe(8) macros ("content_filter" wiring), e.g.
        [mailfilter, *PIPE_ARGS]; config: the path exported to it as MAILFILTER_CONFIG.
        submission: when given, a second smtpd service on submission_port with these master.cf lines
        (`-o name=value`, as master.cf.example's submission service has), and nothing of the first one's.
        pipe_maxproc: the pipe(8) service's process limit ("content_filter" wiring): messages filtered at once.
        main_cf: more main.cf parameters, which win (milter_command_timeout="5s", allow_min_user="yes", ...).
        """
        if (wiring == "milter") != bool(milter) or (wiring == "content_filter") != bool(argv and config):
            raise ValueError("the milter wiring takes milter=ADDRESS, the content_filter wiring argv=COMMAND and config=PATH")
        if any(arg.split() != [arg] for arg in argv):
            raise ValueError(f"master.cf cannot carry empty arguments or whitespace: {argv!r}")
        self.smtp_port = free_port()
        self.submission_port = free_port() if submission is not None else 0
        self.config_dir.mkdir(mode=0o755)
        main = self._main_cf(wiring, milter, str(config)) | main_cf
        self._write("main.cf", "".join(f"{key} = {value}\n" for key, value in main.items()))
        self._write("master.cf", self._master_cf(wiring, argv, submission, pipe_maxproc))
        # Postfix creates the rest; these two carry postdrop, not setgid_group, for the pipe user's sendmail.
        for name, mode in (("maildrop", 0o730), ("public", 0o710)):
            folder = self.queue_dir / name
            folder.mkdir(parents=True)
            shutil.chown(folder, "postfix", PIPE_GROUP)
            folder.chmod(mode)
        try:
            self.postfix("start")
        except RuntimeError as exc:  # postfix prints its fatal errors to a terminal only
            raise RuntimeError(f"{exc}\n{self.postfix('check', check=False).stderr}{self.diagnostics()}") from None
        self.wait_for(self._banner, what="a 220 banner from smtpd")

    def _main_cf(self, wiring: Wiring, milter: str, config: str) -> dict[str, str]:
        params = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.work / "data"),  # created by the master as mail_owner
            "setgid_group": SETGID_GROUP,
            "myhostname": "postfix-test.example.net",
            "mydestination": "",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "relayhost": f"[{HOST}]:{self.sink.port}",
            "alias_maps": "",
            "alias_database": "",
            "maillog_file": str(self.maillog_path),
            "maillog_file_prefixes": str(self.work),
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
        }
        if wiring == "milter":
            params.update(smtpd_milters=milter, milter_default_action="tempfail", milter_protocol="6")
        else:  # pipe(8) passes on only what export_environment names, taken from the master's environment
            imported, exported = _run(["postconf", "-d", "-h", "import_environment", "export_environment"]).stdout.splitlines()
            params["import_environment"] = f"{imported} TMPDIR={self.filter_dir / 'tmp'} MAILFILTER_CONFIG={config}"
            params["export_environment"] = f"{exported} TMPDIR MAILFILTER_CONFIG"
        return params

    def _master_cf(self, wiring: Wiring, argv: Sequence[str], submission: Sequence[str] | None, pipe_maxproc: int = 10) -> str:
        """Only the services this instance needs, none chrooted."""
        smtpd = f"{HOST}:{self.smtp_port} inet n - n - - smtpd"
        services = [smtpd + ("\n  -o content_filter=mailfilter:dummy" if wiring == "content_filter" else "")]
        if submission is not None:
            services.append("\n  ".join([f"{HOST}:{self.submission_port} inet n - n - - smtpd", *submission]))
        services += CORE_SERVICES
        if wiring == "content_filter":
            services.append(
                f"mailfilter unix - n n - {pipe_maxproc} pipe\n  flags=Rq user={self.pipe_user.pw_name}:{PIPE_GROUP} null_sender=\n"
                f"  argv={' '.join(argv)}"
            )
        return "\n".join(services) + "\n"

    def _write(self, name: str, text: str) -> None:
        path = self.config_dir / name
        path.write_text(text)
        path.chmod(0o644)
        os.utime(path, (PAST, PAST))

    def _banner(self) -> bool:
        try:
            with socket.create_connection((HOST, self.smtp_port), timeout=5) as sock:
                return sock.recv(512).startswith(b"220 ")
        except OSError:
            return False

    def postfix(self, command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `postfix -c CONFIG_DIR COMMAND`."""
        return _run(["postfix", "-c", self.config_dir, command], check)

    def master_pid(self) -> int | None:
        """The running master's pid, if any."""
        try:
            pid = int((self.queue_dir / "pid" / "master.pid").read_text())
            return pid if Path(f"/proc/{pid}/comm").read_text().strip() == "master" else None
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        """Stop the master and wait until every process of its process group is gone (no fixed sleep)."""
        pid = self.master_pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)  # the master passes it on to its process group
        try:
            self.wait_for(lambda: not _group_alive(pid), timeout=10, what=f"the master (pid {pid}) and its children to exit")
        except AssertionError:
            os.killpg(pid, signal.SIGKILL)
            self.wait_for(lambda: not _group_alive(pid), timeout=10, what="the master's process group to die of SIGKILL")

    def close(self) -> None:
        """Stop everything (pipe(8) runs each filter in a session of its own: those too) and remove the work folder."""
        try:
            self.stop()
            kill_strays(self.work)
        finally:
            self.sink.close()
            shutil.rmtree(self.work, ignore_errors=True)

    def send(self, raw: bytes, sender: str, recipients: Sequence[str], port: int = 0) -> tuple[int, str]:
        """Submit RAW over SMTP (to PORT, by default smtpd's); return the reply to DATA, or the first 4xx/5xx to MAIL or RCPT."""
        data = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        with smtplib.SMTP(HOST, port or self.smtp_port, local_hostname="client.example.org", timeout=TIMEOUT) as client:
            client.ehlo()
            replies = [client.mail(sender, ["BODY=8BITMIME"])]
            replies += [client.rcpt(rcpt) for rcpt in recipients] if replies[0][0] < 400 else []
            refused = [reply for reply in replies if reply[0] >= 400]
            code, text = refused[0] if refused else client.data(data)
        return code, text.decode("utf-8", "replace")

    def postqueue_json(self) -> list[dict]:
        """`postqueue -j`: one dict per queued message (queue_name, queue_id, sender, recipients with delay_reason...)."""
        out = _run(["postqueue", "-c", self.config_dir, "-j"]).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def deferred(self, queue_id: str) -> dict:
        """QUEUE_ID's queue entry once it has been deferred: still queued, with a delay reason. Not only in the
        deferred queue: with these instances' 1-2 s backoff a retry moves it to incoming and active at once, and a
        loaded machine's polls found it there for 30 s."""
        [entry] = self.wait_for(
            lambda: [m for m in self.postqueue_json() if any(r.get("delay_reason") for r in m["recipients"])],
            what="the message queued again after a deferral",
        )
        assert entry["queue_id"] == queue_id
        return entry

    def flush(self) -> None:
        """`postqueue -f`: deliver deferred mail now."""
        _run(["postqueue", "-c", self.config_dir, "-f"])

    def maillog(self) -> str:
        """The instance's maillog so far (postlogd writes it a little after the fact: see wait_logged)."""
        return self.maillog_path.read_text(errors="replace") if self.maillog_path.exists() else ""

    def wait_for(self, predicate: Callable[[], T], timeout: float = TIMEOUT, what: str = "") -> T:
        """Poll PREDICATE until it returns something true, and return that; on timeout fail with diagnostics()."""
        deadline = time.monotonic() + timeout
        while not (result := predicate()):
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what or predicate!r} within {timeout:g} s\n{self.diagnostics()}")
            time.sleep(0.05)
        return result

    def wait_logged(self, pattern: str, timeout: float = TIMEOUT) -> re.Match[str]:
        """Wait until the maillog has a match for the regular expression PATTERN (postlogd writes a little late)."""
        return self.wait_for(lambda: re.search(pattern, self.maillog()), timeout, f"{pattern!r} in the maillog")

    def diagnostics(self, lines: int = 40) -> str:
        """The queue, and the tails of the maillog and of the *.log files in filter_dir: what a failed test should show."""
        queue = _run(["postqueue", "-c", self.config_dir, "-j"], check=False).stdout if self.master_pid() else "(not running)\n"
        out = [f"--- postqueue -j ---\n{queue}"]
        for path in [self.maillog_path, *sorted(self.filter_dir.glob("*.log"))]:
            text = path.read_text(errors="replace") if path.exists() else ""
            out.append(f"--- {path} ---\n" + "\n".join(text.splitlines()[-lines:]) + "\n")
        return "".join(out)


def kill_strays(folder: Path, timeout: float = 10.0) -> list[int]:
    """SIGKILL every process whose working directory is inside FOLDER, wait until they are gone; return their pids."""

    def strays() -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and entry.name != str(os.getpid()):
                with contextlib.suppress(OSError):
                    if Path(os.readlink(entry / "cwd")).is_relative_to(folder):
                        pids.append(int(entry.name))
        return pids

    killed = strays()
    for pid in killed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while strays() and time.monotonic() < deadline:
        time.sleep(0.05)
    return killed


def _group_alive(pgid: int) -> bool:
    """True while a process of process group PGID runs (zombies excepted)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                return True
    return False


def sources_digest() -> str:
    """A hash of what the package is built from: mailfilter/, bin/mailfilter and pyproject.toml."""
    digest = hashlib.sha256()
    files = sorted(p for p in (ROOT / "mailfilter").rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in [*files, ROOT / "bin" / "mailfilter", ROOT / "pyproject.toml"]:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def filter_sections(
    folder: Path, spamd: tuple[str, int], clamd_socket: str, timeout: float, log_name: str = "mailfilter.log"
) -> dict[str, dict]:
    """The mailfilter config every filter of these tests starts from: the scanners (with TIMEOUT), and the
    quarantine, state, journal and log in FOLDER; admin reports to admin@example.net. Callers add their door's."""
    return {
        "spamd": {"host": spamd[0], "port": spamd[1], "timeout": timeout},
        "clamd": {"socket": clamd_socket, "timeout": timeout},
        "quarantine": {"dir": str(folder / "quarantine")},
        "report": {
            "admin": "admin@example.net",
            "sender": "mailfilter@example.net",
            "state_dir": str(folder / "state"),
            "journal_dir": str(folder / "journal"),
        },
        "log": {"syslog": False, "file": str(folder / log_name)},
    }


def build_wrapper(path: Path) -> Path:
    """Compile wrapper/mailfilter-pipe.c into PATH (mode 0755: the pipe user runs it), warnings being errors; return PATH."""
    _run(["gcc", *WRAPPER_CFLAGS, "-o", path, WRAPPER_SOURCE])
    return path


def filter_venv(venv: Path = VENV) -> Path:
    """A virtualenv with mailfilter installed (copied, not editable) that the pipe user can run; return its `mailfilter`.

    The repository may sit where the pipe user cannot go (a clone under /root in CI),
    so the venv is built outside it, from Debian's /usr/bin/python3, with 0755 folders.
    It is kept between runs and refreshed when mailfilter/ or pyproject.toml change.
    """
    stamp, pip = venv / ".mailfilter-sources", venv / "bin" / "pip"
    digest = sources_digest()
    lock = os.open(f"{venv}.lock", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent test runs build it once
        if stamp.is_file() and stamp.read_text() == digest:
            return venv / "bin" / "mailfilter"
        if not pip.exists():
            _run(["/usr/bin/python3", "-m", "venv", "--clear", venv])
        dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
        _run([pip, "install", "--quiet", *dependencies])
        with tempfile.TemporaryDirectory() as tmp:  # a clean copy: no stale build/ from the repository
            source = Path(tmp) / "src"
            shutil.copytree(ROOT / "mailfilter", source / "mailfilter", ignore=shutil.ignore_patterns("__pycache__"))
            shutil.copytree(ROOT / "bin", source / "bin")
            for name in ("pyproject.toml", "README.md"):
                shutil.copy(ROOT / name, source / name)
            _run([pip, "install", "--quiet", "--no-deps", "--force-reinstall", source])
        stamp.write_text(digest)
        return venv / "bin" / "mailfilter"
    finally:
        os.close(lock)
