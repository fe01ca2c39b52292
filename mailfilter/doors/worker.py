"""`mailfilter worker`: the resident half of `mailfilter pipe`.

pipe(8) starts one `mailfilter pipe` process per message; most of such a
process's CPU would go to importing the pipeline. A running worker imports it
once: the pipe process (doors/pipeclient.py) only streams the message here over
a unix socket and prints what comes back. Each message runs, in its own thread,
the same code as in a pipe process (doors/pipe.py: handle, filter_message), with
the worker's config: same verdicts, same reinjection, same quarantine, same log
lines, same exit statuses. Reinjection uses the worker's environment, so it only
takes clients whose $MAIL_CONFIG (set by pipe(8)) names the Postfix instance its
own does.

The worker only speeds things up; it is never needed for mail to flow. A pipe
process that finds no worker, or one that declines (it serves another config
file or another Postfix instance, the client runs as another user, it is
stopping), filters the message itself. A worker that fails once it has the
message makes the client defer it (75): Postfix keeps every message until a
filter has finished with it.

Protocol: see doors/pipeclient.py.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import stat
import threading
import time
from typing import BinaryIO

from .. import pipeline
from ..config import Config
from ..daemon import InFlight, notify
from ..defaults import CONFIG_PATH
from . import pipe
from .activation import ActivationError, inherited_socket
from .pipeclient import CHUNK, PROTOCOL, PROTOCOL_NAME, peer_uid, unsafe_folder, unsafe_socket

LOG = logging.getLogger("mailfilter")
HEADER_LIMIT = 1 << 20  # the greeting carries the recipients; pipe(8) passes at most a few thousand
BACKLOG = 128
POSTFIX_CONFIG = "/etc/postfix"  # sendmail's config_directory without $MAIL_CONFIG
ACT_TIMEOUT = 10.0  # a client answers READY at once (ACT) or has given up


class WorkerError(Exception):
    """The worker cannot start."""


class _Probe(Exception):
    """A connection closed without a word."""


class _OtherVersion(Exception):
    """A client of another release (a half-done upgrade): it filters its message itself."""


class _Stop(BaseException):
    """Raised in the main thread by SIGTERM/SIGINT."""


class ChunkReader:
    """The message as the client streams it (`<n>\\n<n bytes>`... `0\\n`), for Spool.fill.

    A connection that ends or stalls before the 0 chunk is ClientGone, never a
    shorter message."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._done = False

    def read(self, size: int = -1) -> bytes:
        if self._done:
            return b""
        try:
            header = self._stream.readline(24)
            if not header.endswith(b"\n") or not header[:-1].isdigit():
                raise pipe.ClientGone("the pipe client's message ended early or was garbled; nothing delivered")
            length = int(header)
            if length > CHUNK:
                raise pipe.ClientGone(f"the pipe client sent a chunk of {length} bytes (at most {CHUNK}); nothing delivered")
            if length == 0:
                self._done = True
                return b""
            data = self._stream.read(length)
        except OSError as exc:
            raise pipe.ClientGone(f"reading the message from the pipe client failed ({exc}); nothing delivered") from None
        if len(data) != length:
            raise pipe.ClientGone("the pipe client's message ended early; nothing delivered")
        return data

    def drain(self) -> None:
        """Read the rest (a usage error answers before the message was read): the client
        sends it all before it reads the reply."""
        while self.read():
            pass


def postfix_instance(mail_config: str) -> str:
    """The Postfix config directory that sendmail reinjects into with this $MAIL_CONFIG (pipe(8) always sets it)."""
    return os.path.realpath(mail_config or POSTFIX_CONFIG)


class Worker:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.serves = os.path.realpath(CONFIG_PATH if config.source == "(defaults)" else config.source)
        self.postfix = postfix_instance(os.environ.get("MAIL_CONFIG", ""))
        self.in_flight = InFlight()
        self.runner = pipeline.Runner()  # scanner threads kept for every message, not started per message
        self.stopping = False
        self._clients = 0  # accepted and not yet finished with, counted from accept() on (the idle exit)
        self._clients_lock = threading.Lock()
        self._last_busy = time.monotonic()

    def _greeting(self, stream: BinaryIO) -> tuple[list[str], str, str]:
        line = stream.readline(64)
        if not line:
            raise _Probe
        size = line[len(PROTOCOL) + 1 : -1]
        if line.startswith(PROTOCOL_NAME) and not line.startswith(PROTOCOL + b" "):
            raise _OtherVersion(line[: line.find(b" ")].decode("ascii", "replace"))
        if not line.startswith(PROTOCOL + b" ") or not line.endswith(b"\n") or not size.isdigit() or int(size) > HEADER_LIMIT:
            raise ValueError(f"not a {PROTOCOL.decode()} greeting: {line[:60]!r}")
        fields = stream.read(int(size))
        if len(fields) != int(size):
            raise ValueError("greeting cut short")
        config, mail_config, *argv = (os.fsdecode(field) for field in fields.split(b"\0"))
        return argv, config, mail_config

    def _declines(self, conn: socket.socket, config: str, mail_config: str) -> str | None:
        """Why this client should filter its message itself, or None."""
        if self.stopping:
            return "it is stopping"
        uid = peer_uid(conn)
        if uid not in (os.geteuid(), 0):
            return f"it runs as uid {os.geteuid()}, the client as uid {uid}"
        if os.path.realpath(config) != self.serves:
            return f"it serves {self.serves}, not {config}"
        if postfix_instance(mail_config) != self.postfix:
            return f"it reinjects into the Postfix of {self.postfix}, not MAIL_CONFIG={mail_config}"
        return None

    def handle(self, conn: socket.socket) -> None:
        """One client, from greeting to reply, then the message's bookkeeping. Never raises: a thread's
        traceback would reach stderr."""
        started = time.monotonic()
        with conn, self.in_flight:
            try:
                conn.settimeout(self.config.pipe.deadline)
                stream = conn.makefile("rb")
                try:
                    argv, config, mail_config = self._greeting(stream)
                    reason = self._declines(conn, config, mail_config)
                except _OtherVersion as other:
                    reason = f"it speaks {PROTOCOL.decode()}, the client {other}"
                if reason:
                    LOG.info("pipe client sent back to filter in its own process: %s", reason)
                    conn.sendall(b"DECLINE " + reason.encode("ascii", "replace") + b"\n")
                    return
                conn.sendall(b"GO\n")
            except _Probe:
                return  # connected and hung up: a worker starting on this socket checks that it is taken
            except (OSError, ValueError, KeyError, TypeError) as exc:
                LOG.warning("pipe client dropped before its message: %s", exc)
                return
            message = ChunkReader(stream)
            gate = lambda config: self.gate(conn, stream)  # noqa: E731
            answer = pipe.handle(argv, message, started, config=self.config, gate=gate, runner=self.runner)
            text = (answer.line or "").encode("utf-8", "replace")
            try:
                message.drain()
                conn.settimeout(ACT_TIMEOUT)
                conn.sendall(b"%d %d\n" % (answer.status, len(text)) + text)
            except (OSError, pipe.ClientGone) as exc:
                LOG.warning("pipe client gone before its reply (exit status %d): %s", answer.status, exc)
            pipe.finish(answer)  # after the reply: the client does not wait for the bookkeeping

    def gate(self, conn: socket.socket, stream: BinaryIO) -> None:
        """Before delivering or quarantining: READY with the budget, then the client's ACT, or nothing is done.

        A client that gave up at its deadline has deferred the message already (Postfix retries it);
        delivering now would be a second delivery on that retry. So the worker acts only on ACT, which
        the client sends only while its deadline holds and after which it waits the budget."""
        budget = int(self.config.delivery.timeout) + pipe.QUARANTINE_ALLOWANCE
        try:
            conn.settimeout(ACT_TIMEOUT)
            conn.sendall(b"READY %d\n" % budget)
            said = stream.readline(8)
        except OSError as exc:
            raise pipe.ClientGone(f"the pipe client gave up before delivery ({exc}); nothing delivered") from None
        if said != b"ACT\n":
            raise pipe.ClientGone("the pipe client gave up before delivery; nothing delivered")

    def _handle_guarded(self, conn: socket.socket) -> None:
        try:
            self.handle(conn)
        except BaseException:  # handle() should not raise; a bug must not print to stderr
            LOG.exception("pipe worker: unexpected failure with one client (the client defers its message)")
        finally:
            with self._clients_lock:
                self._clients -= 1
                self._last_busy = time.monotonic()

    def run(self, listener: socket.socket, idle: float = 0.0) -> bool:
        """Accept clients until _Stop is raised (by a signal) or the listener is closed; False then.

        With IDLE > 0, return True once no client has been connected for IDLE seconds: the
        worker then accepts nobody more, so a client that connects from then on waits in the
        listener's queue (systemd's socket, which starts the next worker for it) or, once the
        listener is closed, finds nobody and filters its message itself. None is declined for it."""
        poller = select.poll()
        poller.register(listener, select.POLLIN)
        while not self.stopping:
            if idle > 0:
                with self._clients_lock:
                    left = idle - (time.monotonic() - self._last_busy)
                    if self._clients == 0 and left <= 0:
                        self.stopping = True
                        return True
                if not poller.poll(max(left, 0.05) * 1000 if self._clients == 0 else idle * 1000):
                    continue
            try:
                conn, _ = listener.accept()
            except OSError:
                if self.stopping or listener.fileno() == -1:
                    return False
                raise
            with self._clients_lock:
                self._clients += 1
                self._last_busy = time.monotonic()
            threading.Thread(target=self._handle_guarded, args=(conn,), name="pipe-client", daemon=True).start()
        return False


def open_socket(path: str) -> socket.socket:
    """Listen on PATH, mode 0600 (pipe(8) runs `mailfilter pipe` as the worker's own user), in a folder
    that nobody else can write (the clients check the same: pipeclient.unsafe_socket).

    A socket file nobody listens on (a worker that was killed) is replaced; one that
    answers belongs to a running worker, and this one does not start."""
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise WorkerError(f"cannot create {folder}: {exc.strerror or exc}") from None
    problem = unsafe_folder(folder, os.geteuid())
    if problem:
        raise WorkerError(f"refusing to listen on {path}: {problem}; clients would not use it")
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # stale
            else:
                raise WorkerError(f"another worker is listening on {path}")
            finally:
                probe.close()
        else:
            raise WorkerError(f"{path} exists and is not a socket")
    except FileNotFoundError:
        pass
    except OSError as exc:  # a stale socket we may not remove (another user's, in a folder not ours)
        raise WorkerError(f"cannot replace the stale socket {path}: {exc.strerror or exc}") from None
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        # The folder is checked below to be ours alone, so nobody can reach the socket before this chmod.
        os.chmod(path, 0o600)
    except OSError as exc:
        listener.close()
        raise WorkerError(f"cannot listen on {path}: {exc.strerror or exc}") from None
    problem = unsafe_socket(path, os.geteuid())
    if problem:
        listener.close()
        os.unlink(path)
        raise WorkerError(f"refusing to listen on {path}: {problem}; clients would not use it")
    listener.listen(BACKLOG)
    return listener


def preload() -> None:
    """Import now what messages need, so that no client pays for it."""
    pipeline.preload()
    from .. import journal, message, metrics  # noqa: F401
    from ..actions import quarantine, reinject, report  # noqa: F401


def refuse_root() -> None:
    if os.geteuid() == 0:
        raise WorkerError("refusing to run as root: run it as the user in pipe(8)'s user= (systemd/mailfilter-worker.service)")


def serve(config: Config, path: str | None = None) -> int:
    """Run until SIGTERM/SIGINT, then let messages in flight finish (up to [pipe] deadline).

    Socket-activated (systemd/mailfilter-worker.socket), it also exits after [pipe] worker_idle
    seconds without a client; the socket unit keeps listening and starts it again. A worker that
    bound its own socket never exits idle: nothing would start it again."""
    path = path or config.pipe.worker
    if not path:
        raise WorkerError("no socket: [pipe] worker is '' (set it, or pass --socket)")
    refuse_root()
    try:
        inherited = inherited_socket(path)
    except ActivationError as exc:
        raise WorkerError(str(exc)) from None
    preload()
    worker = Worker(config)

    def stop(signum: int, frame: object) -> None:
        raise _Stop

    listener = inherited or open_socket(path)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    idled = False
    try:
        LOG.info("pipe worker listening on %s%s for %s", path, " (from systemd)" if inherited else "", worker.serves)
        notify("READY=1")
        idled = worker.run(listener, config.pipe.worker_idle if inherited else 0.0)
    except _Stop:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        worker.stopping = True
        listener.close()  # systemd's socket stays open in systemd, with the clients queued on it
        if not inherited:
            try:
                os.unlink(path)
            except OSError:
                pass
    notify("STOPPING=1")
    if idled:
        LOG.info("pipe worker exiting: no message for %g s (the socket unit starts it again for the next one)", config.pipe.worker_idle)
    else:
        LOG.info("pipe worker stopping: %d message(s) in flight", worker.in_flight.count)
    if not worker.in_flight.wait_idle(config.pipe.deadline):
        LOG.warning("pipe worker stopping with %d message(s) in flight: their clients defer them", worker.in_flight.count)
    worker.runner.close()
    return 0
