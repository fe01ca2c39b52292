"""`mailfilter worker` as a real process, with real `mailfilter pipe` processes, the real spamd and clamd.

tests/test_pipe_worker.py runs the worker in a thread of the test with scripted
scanners; here it is the daemon the unit runs: the filter venv's console script
(tests/postfix.py filter_venv), started as the unprivileged pipe user, ready
when it says READY=1 on a NOTIFY_SOCKET of ours, and the clients are the same
console script as pipe(8) would start it (PATH=/usr/bin:/bin, MAILFILTER_CONFIG).
What the worker did shows in its log file: each summary line carries the tag
`mailfilter/worker[PID]` of the worker, where a client that filtered its message
itself writes `mailfilter/pipe[ITS PID]`.

Everything the worker writes (socket, quarantine, journal, state, log, the
recording sendmail's folder) lives in a work folder under /tmp owned by the pipe
user: pytest's tmp_path sits in a 0700 folder of root's.
"""

from __future__ import annotations

import os
import pwd
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from email import message_from_bytes
from pathlib import Path

import pytest
from faults.rigs import HoldingSpamd

import corpus
from conftest import Sendmail, mode, quarantined, write_config
from postfix import PIPE_ARGS, PostfixInstance, filter_sections, filter_venv, requires_root

pytestmark = [pytest.mark.daemons, requires_root]

USER = "mailfilter-test"  # created by scripts/setup; the pipe user of tests/postfix.py too
TIMEOUT = 60.0  # generous: a loaded 2-core machine
SENDER, RECIPIENTS, ADMIN = "alice@example.org", ("bob@example.net", "carol@example.net"), "admin@example.net"
SUMMARY = re.compile(r" (mailfilter/\w+)\[(\d+)\]: (\S+): from=<(.*)$", re.MULTILINE)


def eventually(probe, timeout: float = TIMEOUT):
    """PROBE() once it is truthy (the worker writes its report and summary line after its reply), polled."""
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
    return value


def tagged(raw: bytes, queue_id: str) -> bytes:
    """RAW with QUEUE_ID at the start of its Subject, to tell the deliveries apart."""
    return raw.replace(b"\nSubject: ", f"\nSubject: [{queue_id}] ".encode(), 1)


def summaries(log: str, queue_id: str) -> list[tuple[str, int, str]]:
    """The summary lines of QUEUE_ID in LOG: (tag, pid, rest of the line)."""
    return [(tag, int(pid), text) for tag, pid, qid, text in SUMMARY.findall(log) if qid == queue_id]


def as_user(user: str = USER, group: str | None = None) -> dict:
    """Popen arguments that run the child as USER:GROUP (default: USER's own group), with no other group."""
    return {"user": user, "group": group or pwd.getpwnam(user).pw_gid, "extra_groups": []}


def owned_by_user(path: Path, user: str = USER) -> None:
    os.chown(path, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)


class WorkerProcess:
    """`mailfilter --config CONFIG worker`, as USER (or root), with a NOTIFY_SOCKET of its own to hear READY=1 and STOPPING=1.

    Its stdout and stderr go to FOLDER/NAME.out; FOLDER must be USER's (the notify socket is made there).
    """

    def __init__(
        self,
        mailfilter: Path,
        config: str,
        folder: Path,
        name: str,
        *,
        root: bool = False,
        group: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.notify_path = folder / f"{name}.notify"
        self.out_path = folder / f"{name}.out"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        owned_by_user(self.notify_path)  # the worker, as USER, sends to it
        environ = {"PATH": "/usr/bin:/bin", **(env or {}), "NOTIFY_SOCKET": str(self.notify_path)}
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(
                [str(mailfilter), "--config", config, "worker"],
                env=environ,
                cwd=folder,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                **({} if root else as_user(group=group)),
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def _received(self) -> bytes | None:
        """What the worker sent to the notify socket, if anything is waiting there."""
        self.notify.setblocking(False)
        try:
            return self.notify.recv(100)
        except BlockingIOError:
            return None

    def expect(self, state: bytes, timeout: float = TIMEOUT) -> None:
        """Wait for STATE on the notify socket; fail early, with the worker's output, if it exits without saying it."""
        deadline = time.monotonic() + timeout
        while (got := self._received()) is None:
            if self.proc.poll() is not None:
                got = self._received()  # it may have said it just before it exited
                break
            if time.monotonic() > deadline:
                break
            select.select([self.notify], [], [], 0.2)
        if got is None:
            raise AssertionError(f"worker (exit status {self.proc.poll()}) never said {state!r} within {timeout:g} s:\n{self.output()}")
        assert got == state, f"worker said {got!r}, expected {state!r}\n{self.output()}"

    def said_nothing(self) -> bool:
        """True if nothing is waiting on the notify socket (ask once the worker has exited)."""
        return self._received() is None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(TIMEOUT)
        self.notify.close()


@dataclass(frozen=True)
class Run:
    """A finished `mailfilter pipe` process."""

    status: int
    stdout: str
    stderr: str
    pid: int


class Rig:
    """A work folder of USER's with a config that uses the real daemons and a recording sendmail; the processes run on it."""

    def __init__(self, daemons: dict, mailfilter: Path) -> None:
        self.daemons = daemons
        self.mailfilter = mailfilter
        self.folder = Path(tempfile.mkdtemp(prefix="mailfilter-worker-", dir="/tmp"))
        self.folder.chmod(0o755)
        owned_by_user(self.folder)
        (self.folder / "sent").mkdir()
        owned_by_user(self.folder / "sent")
        self.sendmail = Sendmail(self.folder / "sent")
        self.socket = self.folder / "run" / "worker.sock"
        self.log_path = self.folder / "mailfilter.log"
        self.quarantine = self.folder / "quarantine"
        self.config = ""
        self.workers: list[WorkerProcess] = []
        self.clients: list[subprocess.Popen[bytes]] = []
        self.configure()

    def configure(self, spamd_port: int | None = None) -> str:
        """(Re)write the config file; SPAMD_PORT: another spamd port on the same host (a HoldingSpamd)."""
        self.config = write_config(
            self.folder / "mailfilter.toml",
            {
                "spamd": {"host": self.daemons["spamd_host"], "port": spamd_port or self.daemons["spamd_port"], "timeout": 60},
                "clamd": {"socket": self.daemons["clamd_socket"], "timeout": 60},
                "delivery": {"sendmail": self.sendmail.argv(), "timeout": 30},
                "quarantine": {"dir": str(self.quarantine)},
                "report": {
                    "admin": ADMIN,
                    "sender": "mailfilter@example.net",
                    "state_dir": str(self.folder / "state"),
                    "journal_dir": str(self.folder / "journal"),
                },
                "pipe": {"worker": str(self.socket)},
                "log": {"syslog": False, "file": str(self.log_path)},
            },
        )
        return self.config

    def worker(self, *, root: bool = False, ready: bool = True) -> WorkerProcess:
        """Start a worker on this config; unless READY is false, wait until it says READY=1."""
        worker = WorkerProcess(self.mailfilter, self.config, self.folder, f"worker-{len(self.workers) + 1}", root=root)
        self.workers.append(worker)
        if ready:
            worker.expect(b"READY=1")
        return worker

    def start_pipe(self, raw: bytes, queue_id: str, *, root: bool = False, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start `mailfilter pipe -q QUEUE_ID -f SENDER -- RECIPIENTS...` as pipe(8) would, RAW on its stdin (ENV: more variables)."""
        path = self.folder / f"{queue_id}.in"
        path.write_bytes(raw)
        with open(path, "rb") as stdin:
            proc = subprocess.Popen(
                [str(self.mailfilter), "pipe", "-q", queue_id, "-f", SENDER, "--", *RECIPIENTS],
                env={"PATH": "/usr/bin:/bin", "MAILFILTER_CONFIG": self.config, **(env or {})},
                cwd=self.folder,
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                **({} if root else as_user()),
            )
        self.clients.append(proc)
        return proc

    @staticmethod
    def finish(proc: subprocess.Popen[bytes]) -> Run:
        out, err = proc.communicate(timeout=2 * TIMEOUT)  # above the scanners' timeouts
        return Run(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"), proc.pid)

    def pipe(self, raw: bytes, queue_id: str, *, root: bool = False, env: dict[str, str] | None = None) -> Run:
        return self.finish(self.start_pipe(raw, queue_id, root=root, env=env))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def delivered(self, queue_id: str) -> list[tuple[list[str], bytes]]:
        """The recording sendmail's calls for the message tagged with QUEUE_ID."""
        return [(argv, data) for argv, data in self.sendmail.calls if f"Subject: [{queue_id}] ".encode() in data]

    def close(self) -> None:
        for proc in self.clients:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=TIMEOUT)
        for worker in self.workers:
            worker.close()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def mailfilter() -> Path:
    """The filter venv's `mailfilter`, which the pipe user can run."""
    return filter_venv()


@pytest.fixture
def rig(daemons, mailfilter):
    r = Rig(daemons, mailfilter)
    yield r
    r.close()


def head(data: bytes) -> list[bytes]:
    return data.split(b"\n\n", 1)[0].splitlines()


def test_worker_process_filters_for_pipe_processes(rig):
    """Clean delivered, GTUBE tagged, EICAR quarantined and reported: all done by the worker, none by the clients."""
    worker = rig.worker()
    clean, gtube, eicar = tagged(corpus.clean(), "WCLEAN"), tagged(corpus.gtube(), "WGTUBE"), corpus.eicar_attached()
    runs = [rig.pipe(clean, "WCLEAN"), rig.pipe(gtube, "WGTUBE"), rig.pipe(eicar, "WEICAR")]
    assert [(r.status, r.stdout, r.stderr) for r in runs] == [(0, "", "")] * 3, runs

    [(argv, data)] = rig.delivered("WCLEAN")
    assert argv == ["-G", "-i", "-f", SENDER, "--", *RECIPIENTS]
    lines = head(data)
    assert lines[0] == b"X-Spam-Flag: NO" and lines[3:5] == [b"X-Virus-Scanned: ClamAV using mailfilter", b"X-Virus-Status: Clean"]
    assert data.endswith(clean.split(b"\n\n", 1)[1])

    [(argv, data)] = rig.delivered("WGTUBE")
    lines = head(data)
    assert argv[-2:] == list(RECIPIENTS) and lines[0] == b"X-Spam-Flag: YES"
    assert lines[2].startswith(b"X-Spam-Status: Yes, score=") and b"GTUBE" in lines[2]

    user = pwd.getpwnam(USER)
    [(meta, stored)] = quarantined(rig.quarantine)
    assert stored == eicar and meta["reason"] == "virus" and meta["queue_id"] == "WEICAR"
    assert (meta["sender"], meta["recipients"]) == (SENDER, list(RECIPIENTS))
    assert rig.quarantine.stat().st_uid == user.pw_uid and mode(rig.quarantine) == 0o700
    for path in (rig.quarantine / f"{meta['id']}.eml", rig.quarantine / f"{meta['id']}.json"):
        assert (path.stat().st_uid, mode(path)) == (user.pw_uid, 0o600), path
    [(argv, report)] = eventually(lambda: [call for call in rig.sendmail.calls if call[0][-1] == ADMIN])
    assert b"Subject: VIRUS FOUND" in report and f"Quarantine id:  {meta['id']}".encode() in report
    assert len(rig.sendmail.calls) == 3  # clean, GTUBE, the report: nothing twice

    # The summary lines come last, after the report, the journal line and the metrics: wait for all three.
    def all_summaries() -> str | None:
        text = rig.log()
        return text if all(summaries(text, q) for q in ("WCLEAN", "WGTUBE", "WEICAR")) else None

    log = eventually(all_summaries)
    assert f"mailfilter/worker[{worker.pid}]: pipe worker listening on {rig.socket} for {rig.config}" in log
    for queue_id, verdict in (("WCLEAN", "clean"), ("WGTUBE", "spam"), ("WEICAR", "virus")):
        [(tag, pid, text)] = summaries(log, queue_id)
        assert (tag, pid) == ("mailfilter/worker", worker.pid) and f"verdict={verdict}" in text, text
    assert "quarantine=" + meta["id"] in summaries(log, "WEICAR")[0][2]
    assert "mailfilter/pipe" not in log  # no client configured logging: none filtered anything itself
    assert worker.proc.poll() is None


def test_a_pipe_served_by_the_worker_imports_only_what_handing_over_needs(rig):
    """What keeps the client cheap on every message (bench/startup.py measures it): the installed `mailfilter`
    script and the client import no re or enum, only the C halves of socket and signal, no typing, json,
    tomllib or logging, and nothing of the pipeline."""
    rig.worker()
    run = rig.pipe(tagged(corpus.clean(), "WLIGHT"), "WLIGHT", env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert run.status == 0 and run.stdout == "", run
    imported = {
        line.rsplit("|", 1)[1].strip() for line in run.stderr.splitlines() if line.startswith("import time:") and "self [us]" not in line
    }
    assert {"mailfilter.entry", "mailfilter.doors.pipeclient", "_socket"} <= imported, sorted(imported)
    heavy = {"re", "enum", "socket", "signal", "selectors", "typing", "json", "tomllib", "logging", "mailfilter.doors.pipe"}
    assert imported.isdisjoint(heavy), sorted(imported & heavy)
    assert len(rig.delivered("WLIGHT")) == 1


def test_ready_then_sigterm_lets_the_message_in_flight_finish(rig):
    """READY=1 once listening (0600 socket); on SIGTERM: STOPPING=1, the socket goes, new clients filter
    themselves, the message in flight is still delivered once and its client exits 0."""
    user = pwd.getpwnam(USER)
    with HoldingSpamd(rig.daemons["spamd_host"], rig.daemons["spamd_port"]) as held:
        rig.configure(spamd_port=held.port)
        worker = rig.worker()
        info = os.lstat(rig.socket)  # no polling: READY=1 means listening
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
        assert (info.st_uid, info.st_gid) == (user.pw_uid, user.pw_gid) and mode(rig.socket.parent) == 0o700
        in_flight = rig.start_pipe(tagged(corpus.clean(), "WFLIGHT"), "WFLIGHT")
        assert held.arrived.wait(TIMEOUT), f"the message never reached spamd\n{rig.log()}"

        worker.proc.send_signal(signal.SIGTERM)  # while spamd holds the message
        worker.expect(b"STOPPING=1")
        assert not rig.socket.exists()  # removed before it said STOPPING
        assert worker.proc.poll() is None  # still waiting for the message in flight
        meanwhile = rig.start_pipe(tagged(corpus.clean(), "WMEANWHILE"), "WMEANWHILE")
        deadline = time.monotonic() + TIMEOUT
        while len(held.requests) < 2:  # the new client reached spamd itself: it did not wait for the worker
            if meanwhile.poll() is not None:
                raise AssertionError(f"the client started during the stop ended before it scanned: {rig.finish(meanwhile)}\n{rig.log()}")
            assert time.monotonic() < deadline, f"the client started during the stop never reached spamd\n{rig.log()}"
            time.sleep(0.05)
        held.release()

        first, second = rig.finish(in_flight), rig.finish(meanwhile)
        assert worker.proc.wait(TIMEOUT) == 0, worker.output()
        after = rig.pipe(tagged(corpus.clean(), "WAFTER"), "WAFTER")  # the worker is gone
    assert (first.status, first.stdout, first.stderr) == (0, "", ""), first
    assert (second.status, second.stdout, second.stderr) == (0, "", ""), second
    assert (after.status, after.stdout, after.stderr) == (0, "", ""), after

    for queue_id in ("WFLIGHT", "WMEANWHILE", "WAFTER"):
        [(argv, data)] = rig.delivered(queue_id)
        assert argv[-2:] == list(RECIPIENTS) and b"X-Virus-Status: Clean" in head(data), queue_id
    assert len(rig.sendmail.calls) == 3
    log = rig.log()
    assert [s[:2] for s in summaries(log, "WFLIGHT")] == [("mailfilter/worker", worker.pid)]
    assert [s[:2] for s in summaries(log, "WMEANWHILE")] == [("mailfilter/pipe", second.pid)]
    assert [s[:2] for s in summaries(log, "WAFTER")] == [("mailfilter/pipe", after.pid)]
    assert "pipe worker stopping: 1 message(s) in flight" in log and "their clients defer them" not in log
    assert not rig.socket.exists()


def test_worker_refuses_root_a_second_worker_and_replaces_a_stale_socket(rig):
    root = rig.worker(root=True, ready=False)
    assert root.proc.wait(TIMEOUT) == 1
    assert "refusing to run as root" in root.output() and root.said_nothing()
    assert not rig.socket.exists() and not rig.socket.parent.exists()

    first = rig.worker()
    second = rig.worker(ready=False)
    assert second.proc.wait(TIMEOUT) == 1
    assert f"another worker is listening on {rig.socket}" in second.output() and second.said_nothing()
    run = rig.pipe(tagged(corpus.clean(), "WFIRST"), "WFIRST")
    assert run.status == 0
    assert [s[:2] for s in eventually(lambda: summaries(rig.log(), "WFIRST"))] == [("mailfilter/worker", first.pid)]

    first.proc.kill()
    assert first.proc.wait(TIMEOUT) == -signal.SIGKILL
    assert stat.S_ISSOCK(os.lstat(rig.socket).st_mode)  # a killed worker leaves its socket file behind
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(str(rig.socket))  # ... that nobody listens on
    run = rig.pipe(tagged(corpus.clean(), "WSTALE"), "WSTALE")  # nobody listens: the client filters it itself
    assert (run.status, run.stdout, run.stderr) == (0, "", "")
    assert [s[:2] for s in summaries(rig.log(), "WSTALE")] == [("mailfilter/pipe", run.pid)]

    third = rig.worker()
    assert stat.S_IMODE(os.lstat(rig.socket).st_mode) == 0o600  # a new socket (the inode number may well be the same)
    run = rig.pipe(tagged(corpus.clean(), "WTHIRD"), "WTHIRD")
    assert run.status == 0
    assert [s[:2] for s in eventually(lambda: summaries(rig.log(), "WTHIRD"))] == [("mailfilter/worker", third.pid)]
    assert [len(rig.delivered(q)) for q in ("WFIRST", "WSTALE", "WTHIRD")] == [1, 1, 1]


def test_worker_killed_mid_message_defers_it(rig):
    with HoldingSpamd(rig.daemons["spamd_host"], rig.daemons["spamd_port"]) as held:
        rig.configure(spamd_port=held.port)
        worker = rig.worker()
        raw = tagged(corpus.clean(), "WKILLED")
        client = rig.start_pipe(raw, "WKILLED")
        assert held.arrived.wait(TIMEOUT), f"the message never reached spamd\n{rig.log()}"
        worker.proc.kill()
        assert worker.proc.wait(TIMEOUT) == -signal.SIGKILL
        run = rig.finish(client)
        assert run.status == 75 and run.stderr == "", run
        [line] = run.stdout.splitlines()
        assert line.startswith("4.3.0 mailfilter: the pipe worker failed") and line.endswith("message deferred"), line
        assert rig.sendmail.calls == [] and (not rig.quarantine.exists() or quarantined(rig.quarantine) == [])
        assert summaries(rig.log(), "WKILLED") == []
        held.release()
        retry = rig.pipe(raw, "WKILLED")  # Postfix's next try: the socket is stale, the client filters it itself
    assert (retry.status, retry.stdout, retry.stderr) == (0, "", ""), retry
    assert [s[:2] for s in summaries(rig.log(), "WKILLED")] == [("mailfilter/pipe", retry.pid)]
    assert len(rig.sendmail.calls) == 1 and len(rig.delivered("WKILLED")) == 1


def test_refused_root_start_does_not_stop_the_real_worker(rig):
    """Refused as root before it opens anything: the [log] file it would have created as root's stays absent."""
    root = rig.worker(root=True, ready=False)
    assert root.proc.wait(TIMEOUT) == 1 and "refusing to run as root" in root.output()
    assert not rig.log_path.exists()
    rig.worker()  # the unit's worker, as the pipe user, starts and says READY=1


# --- through a real private Postfix ----------------------------------------------------------------------------------


@pytest.fixture
def postfix(daemons, mailfilter):
    """A content_filter Postfix whose pipe(8) runs `mailfilter pipe` as USER:postdrop with a config that names a worker socket."""
    with PostfixInstance() as instance:
        folder = instance.filter_dir
        sections = filter_sections(folder, (daemons["spamd_host"], daemons["spamd_port"]), daemons["clamd_socket"], 30)
        config = write_config(folder / "mailfilter.toml", {**sections, "pipe": {"worker": str(folder / "run" / "worker.sock")}})
        instance.start("content_filter", argv=[str(mailfilter), *PIPE_ARGS], config=config)
        yield instance


@pytest.fixture
def postfix_worker(postfix, mailfilter):
    """A worker as pipe(8) runs the filter: USER:postdrop, the same config and the instance's MAIL_CONFIG and TMPDIR.

    Set up after `postfix`, so torn down before it."""
    folder = postfix.filter_dir
    env = {"MAIL_CONFIG": str(postfix.config_dir), "TMPDIR": str(folder / "tmp")}
    worker = WorkerProcess(mailfilter, str(folder / "mailfilter.toml"), folder, "worker", group="postdrop", env=env)
    try:
        worker.expect(b"READY=1")
        yield worker
    finally:
        worker.close()


@pytest.mark.postfix
def test_postfix_pipe_hands_its_messages_to_the_worker(postfix, postfix_worker):
    eicar = corpus.eicar_attached()  # its MIME boundary differs on every call
    codes = [postfix.send(raw, SENDER, [RECIPIENTS[0]]) for raw in (corpus.clean(), eicar)]
    assert [code for code, _ in codes] == [250, 250], codes
    clean_id, eicar_id = (text.rsplit(" ", 1)[1] for _, text in codes)
    postfix.sink.wait(2)
    postfix.wait_for(lambda: postfix.postqueue_json() == [], what="an empty queue")
    deliveries = postfix.sink.deliveries
    [delivery] = [d for d in deliveries if d.recipients == (RECIPIENTS[0],)]
    [report] = [d for d in deliveries if d.recipients == (ADMIN,)]
    assert len(deliveries) == 2
    message = message_from_bytes(delivery.data)
    assert message.get_all("X-Virus-Status") == ["Clean"] and message["X-Spam-Flag"] == "NO"
    assert delivery.data.endswith(corpus.clean().replace(b"\n", b"\r\n"))
    assert message_from_bytes(report.data)["Subject"] == "VIRUS FOUND"
    [(meta, stored)] = quarantined(postfix.filter_dir / "quarantine")
    assert meta["queue_id"] == eicar_id and stored.endswith(eicar)

    log = (postfix.filter_dir / "mailfilter.log").read_text()
    for queue_id, verdict in ((clean_id, "clean"), (eicar_id, "virus")):
        [(tag, pid, text)] = summaries(log, queue_id)
        assert (tag, pid) == ("mailfilter/worker", postfix_worker.pid) and f"verdict={verdict}" in text, log
    assert "mailfilter/pipe" not in log and "declined" not in log, log
    postfix.wait_logged(rf"{eicar_id}: to=<{RECIPIENTS[0]}>, relay=mailfilter, .* status=sent")
    assert re.search(rf"{clean_id}: to=<{RECIPIENTS[0]}>, relay=mailfilter, .* status=sent", postfix.maillog())
    # The worker's sendmail reached this instance (MAIL_CONFIG), as the pipe user: the reinjected message and the report.
    pickup = rf"postfix/pickup\[\d+\]: \w+: uid={postfix.pipe_user.pw_uid} from=<"
    postfix.wait_for(lambda: len(re.findall(pickup, postfix.maillog())) == 2, what="two messages picked up from the pipe user")


IMPOSTOR = r"""
import socket, sys
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(sys.argv[1])
listener.listen()
print("listening", flush=True)
while True:
    conn, _ = listener.accept()
    with conn:
        data = conn.recv(65536)
        conn.sendall(b"GO\n")
        while not data.endswith(b"0\n"):
            more = conn.recv(65536)
            if not more:
                break
            data += more
        conn.sendall(b"0 0\n")  # "delivered": the message would be gone
"""


def test_a_socket_bound_first_by_another_user_never_gets_the_mail(rig):
    """A worker path in a folder anybody may write (here a sticky /tmp-like one): another local user binds it
    first and answers "delivered" to everything. The pipe process must not hand it the message (the socket
    is not its user's, and SO_PEERCRED says who listens) and filters it itself: delivered once, not lost."""
    shared = rig.folder / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    rig.socket = shared / "worker.sock"
    rig.configure()
    impostor = subprocess.Popen(
        ["/usr/bin/python3", "-c", IMPOSTOR, str(rig.socket)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, user="nobody"
    )
    try:
        assert impostor.stdout.readline() == b"listening\n"
        run = rig.pipe(tagged(corpus.clean(), "WIMPOSTOR"), "WIMPOSTOR")
        assert (run.status, run.stdout) == (0, "")
        assert len(rig.delivered("WIMPOSTOR")) == 1
        [(tag, pid, _)] = summaries(rig.log(), "WIMPOSTOR")
        assert (tag, pid) == ("mailfilter/pipe", run.pid)
        assert f"not using the pipe worker socket: {rig.socket} belongs to uid {pwd.getpwnam('nobody').pw_uid}" in rig.log()
    finally:
        impostor.kill()
        impostor.wait()
        impostor.stdout.close()


def test_a_stale_socket_of_another_user_is_a_clear_refusal(rig):
    """A socket file of another user where the worker would listen: `mailfilter worker` says why and exits 1,
    without a traceback (it used to crash trying to remove it)."""
    shared = rig.folder / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    rig.socket = shared / "worker.sock"
    rig.configure()
    subprocess.run(
        ["/usr/bin/python3", "-c", "import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])", str(rig.socket)],
        check=True,
        user="nobody",
    )
    worker = rig.worker(ready=False)
    assert worker.proc.wait(TIMEOUT) == 1
    assert f"cannot replace the stale socket {rig.socket}" in worker.output() and "Traceback" not in worker.output()
    run = rig.pipe(tagged(corpus.clean(), "WSTALE2"), "WSTALE2")  # mail still flows, filtered by the pipe process
    assert run.status == 0 and len(rig.delivered("WSTALE2")) == 1
