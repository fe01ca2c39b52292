"""The worker started by systemd's socket unit (systemd/mailfilter-worker.socket), as systemd does it.

The test plays systemd: it binds and listens on [pipe] worker itself (socket 0600 of
the pipe user, folder root's 0755, as SocketUser=/SocketMode=/DirectoryMode= make
it), keeps that socket open for the whole test, and starts each worker with the
socket as fd 3 and LISTEN_FDS=1, LISTEN_PID=<the worker's own pid> (a tiny Python
launcher that sets its own pid and execs the worker: the pid does not change across exec). When the
worker exits idle, the socket stays; a client that connects meanwhile waits in its
queue until the test starts the next worker, as systemd does on the socket's POLLIN.
"""

from __future__ import annotations

import os
import pwd
import re
import select
import socket
import subprocess
import time

import pytest
from test_worker_real import RECIPIENTS, TIMEOUT, USER, Rig, WorkerProcess, as_user, eventually, head, owned_by_user, summaries, tagged

import corpus
from conftest import ROOT
from postfix import filter_venv, requires_root

pytestmark = [pytest.mark.daemons, requires_root]

IDLE = 2.0  # [pipe] worker_idle in these tests
# fd 3 is the socket (the fd it came as is closed), LISTEN_PID this process's own pid, then exec: the pid stays.
LAUNCHER = """
import os, sys
fd = int(os.environ.pop("FD"))
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ["LISTEN_PID"] = sys.argv[1] or str(os.getpid())
os.execv(sys.argv[2], sys.argv[2:])
"""


class ActivatedWorker(WorkerProcess):
    """WorkerProcess, started the way systemd starts a socket-activated service: LISTENER as fd 3,
    LISTEN_FDS=1 and LISTEN_PID (the worker's own pid unless LISTEN_PID says otherwise)."""

    def __init__(self, rig: Rig, listener: socket.socket, name: str, *, listen_pid: str = "") -> None:
        self.notify_path = rig.folder / f"{name}.notify"
        self.out_path = rig.folder / f"{name}.out"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        owned_by_user(self.notify_path)
        fd = listener.fileno()
        environ = {"PATH": "/usr/bin:/bin", "NOTIFY_SOCKET": str(self.notify_path), "LISTEN_FDS": "1", "FD": str(fd)}
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(
                ["/usr/bin/python3", "-c", LAUNCHER, listen_pid, str(rig.mailfilter), "--config", rig.config, "worker"],
                env=environ,
                cwd=rig.folder,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                pass_fds=(fd,),
                **as_user(),
            )


def start_activated(rig: Rig, listener: socket.socket, name: str, *, listen_pid: str = "") -> WorkerProcess:
    worker = ActivatedWorker(rig, listener, name, listen_pid=listen_pid)
    rig.workers.append(worker)
    return worker


def systemd_socket(rig: Rig) -> socket.socket:
    """What mailfilter-worker.socket makes: the folder root's 0755, the socket 0600 of the pipe user, listening."""
    user = pwd.getpwnam(USER)
    rig.socket.parent.mkdir(mode=0o755)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(rig.socket))
    os.chown(rig.socket, user.pw_uid, user.pw_gid)
    os.chmod(rig.socket, 0o600)
    listener.listen(128)
    return listener


def set_idle(rig: Rig, seconds: float) -> None:
    path = rig.folder / "mailfilter.toml"
    text = re.sub(r"(?m)^worker_idle = .*\n", "", path.read_text())
    path.write_text(text.replace("[pipe]\n", f"[pipe]\nworker_idle = {seconds}\n", 1))


@pytest.fixture
def rig(daemons):
    r = Rig(daemons, filter_venv())
    set_idle(r, IDLE)
    yield r
    r.close()


def test_socket_from_systemd_is_served_and_left_in_place_at_the_idle_exit(rig):
    with systemd_socket(rig) as listener:
        worker = start_activated(rig, listener, "activated")
        worker.expect(b"READY=1")
        run = rig.pipe(tagged(corpus.clean(), "ACLEAN"), "ACLEAN")
        assert (run.status, run.stdout, run.stderr) == (0, "", ""), run
        [(argv, data)] = rig.delivered("ACLEAN")
        assert argv[-2:] == list(RECIPIENTS) and b"X-Virus-Status: Clean" in head(data)
        assert [s[:2] for s in eventually(lambda: summaries(rig.log(), "ACLEAN"))] == [("mailfilter/worker", worker.pid)]

        started = time.monotonic()
        worker.expect(b"STOPPING=1")  # idle: no message for IDLE seconds
        assert worker.proc.wait(TIMEOUT) == 0, worker.output()
        assert time.monotonic() - started < IDLE + 30
        log = rig.log()
        assert f"pipe worker listening on {rig.socket} (from systemd) for {rig.config}" in log
        assert f"pipe worker exiting: no message for {IDLE:g} s" in log
        assert rig.socket.exists()  # the socket unit's, not the worker's to remove
        listener.getsockname()  # and still ours, listening


def test_a_client_that_connects_while_no_worker_runs_is_served_by_the_next(rig):
    with systemd_socket(rig) as listener:
        first = start_activated(rig, listener, "first")
        first.expect(b"READY=1")
        first.expect(b"STOPPING=1")
        assert first.proc.wait(TIMEOUT) == 0
        client = rig.start_pipe(tagged(corpus.clean(), "AQUEUED"), "AQUEUED")
        assert select.select([listener], [], [], TIMEOUT)[0], "the client never connected"  # systemd's cue
        second = start_activated(rig, listener, "second")
        run = rig.finish(client)
        assert (run.status, run.stdout, run.stderr) == (0, "", ""), run
        assert len(rig.delivered("AQUEUED")) == 1
        assert [s[:2] for s in eventually(lambda: summaries(rig.log(), "AQUEUED"))] == [("mailfilter/worker", second.pid)]


def test_clients_racing_the_idle_exit_are_each_delivered_once(rig):
    """Clients start around the moment the worker gives up; the test restarts a worker whenever the socket has a
    client and none runs (systemd's part). Each message: exit 0, delivered once, by a worker or by its own client."""
    set_idle(rig, 0.5)
    with systemd_socket(rig) as listener:
        workers = [start_activated(rig, listener, "race-0")]
        workers[0].expect(b"READY=1")
        clients = {}
        for n, pause in enumerate((0.3, 0.45, 0.5, 0.55, 0.7, 0.5)):
            time.sleep(pause)
            queue_id = f"ARACE{n}"
            clients[queue_id] = rig.start_pipe(tagged(corpus.clean(), queue_id), queue_id)
            deadline = time.monotonic() + TIMEOUT
            while clients[queue_id].poll() is None:
                assert time.monotonic() < deadline, "a client never finished"
                if workers[-1].proc.poll() is not None and select.select([listener], [], [], 0)[0]:
                    workers.append(start_activated(rig, listener, f"race-{len(workers)}"))
                time.sleep(0.02)
        runs = {queue_id: rig.finish(proc) for queue_id, proc in clients.items()}
    assert all((r.status, r.stdout, r.stderr) == (0, "", "") for r in runs.values()), runs
    eventually(lambda: all(summaries(rig.log(), queue_id) for queue_id in clients))
    log = rig.log()
    pids = {w.pid for w in workers} | {r.pid for r in runs.values()}
    for queue_id in clients:
        assert len(rig.delivered(queue_id)) == 1, queue_id
        [(tag, pid, _)] = summaries(log, queue_id)
        assert pid in pids, (queue_id, tag, pid)
    assert len(workers) > 1  # the race happened: at least one worker exited idle between clients


def test_systemd_socket_that_is_not_what_clients_use_is_refused(rig, tmp_path):
    """A datagram socket, or one bound elsewhere than [pipe] worker: the worker says so and exits 1."""
    elsewhere = rig.folder / "elsewhere.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(str(elsewhere))
        os.chown(elsewhere, pwd.getpwnam(USER).pw_uid, -1)
        other.listen(1)
        worker = start_activated(rig, other, "elsewhere")
        assert worker.proc.wait(TIMEOUT) == 1
        assert f"bound to '{elsewhere}', but clients connect to {rig.socket}" in worker.output()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as datagram:
        worker = start_activated(rig, datagram, "datagram")
        assert worker.proc.wait(TIMEOUT) == 1
        assert "not a listening unix stream socket" in worker.output()


def test_listen_pid_of_another_process_is_not_ours(rig):
    """LISTEN_PID names another process (systemd's variables inherited by a child): the worker binds its own socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as datagram:
        worker = start_activated(rig, datagram, "notours", listen_pid="1")
        worker.expect(b"READY=1")
        assert f"pipe worker listening on {rig.socket} for" in rig.log()
        assert os.stat(rig.socket).st_uid == pwd.getpwnam(USER).pw_uid


def test_the_socket_unit_matches_the_default_and_the_clients_checks():
    text = (ROOT / "systemd" / "mailfilter-worker.socket").read_text()
    settings = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    from mailfilter.defaults import WORKER_SOCKET

    assert settings["ListenStream"] == WORKER_SOCKET
    assert (settings["SocketUser"], settings["SocketMode"], settings["DirectoryMode"]) == ("mailfilter", "0600", "0755")
    service = (ROOT / "systemd" / "mailfilter-worker.service").read_text()
    assert "Requires=mailfilter-worker.socket" in service and "\nRuntimeDirectory=" not in service


def test_worker_idle_keeps_the_clients_fast_reader():
    """An admin who sets worker_idle still has every `mailfilter pipe` read its two keys without tomllib."""
    from mailfilter.doors import pipeclient

    text = b'[pipe]\nworker = "/x/w.sock"\nworker_idle = 600\n'
    assert pipeclient.simple_pipe_keys(text) == {"worker": "/x/w.sock"}
    assert pipeclient.simple_pipe_keys(b"[milter]\nworker_idle = 600\n") == {}
