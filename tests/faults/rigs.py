"""Rigs for single faults: a spamd that holds requests until told, a tiny disk, the `mailfilter pipe` processes."""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import shutil
import socket
import socketserver
import subprocess
import threading
import time
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


class HoldingSpamd:
    """A TCP proxy in front of the real spamd that holds every request until release() (a slow spamd on demand).

    `requests` holds each request as it arrived; `arrived` is set by the first one.
    A request whose client has gone by the time it is released is dropped quietly.
    """

    def __init__(self, host: str, port: int) -> None:
        self.requests: list[bytes] = []
        self.arrived = threading.Event()
        self.released = threading.Event()
        outer = self

        class Relay(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with contextlib.suppress(OSError):
                    self.request.settimeout(120)
                    request = b""
                    while chunk := self.request.recv(65536):  # aiospamc half-closes after its request
                        request += chunk
                    outer.requests.append(request)
                    outer.arrived.set()
                    outer.released.wait(120)  # the slow scanner: held until the test lets it go
                    with socket.create_connection((host, port), timeout=60) as upstream:
                        upstream.sendall(request)
                        upstream.shutdown(socket.SHUT_WR)
                        while chunk := upstream.recv(65536):
                            self.request.sendall(chunk)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Relay)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), name="holding-spamd", daemon=True)
        self.thread.start()

    def release(self) -> None:
        """Let every held and future request through at once."""
        self.released.set()

    def hold(self) -> None:
        """Hold requests again, from now on, until the next release()."""
        self.released.clear()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def __enter__(self) -> HoldingSpamd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MuteClamd:
    """A clamd on a unix socket at PATH that takes a whole INSTREAM and hangs up without a word.

    What a mailfilter sees when the real clamd dies (SIGKILL, OOM, a crash) after the
    message was streamed and before it answered. `streams` counts the streams it took.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.streams = 0
        outer = self

        class Session(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                with contextlib.suppress(OSError):
                    command = self.rfile.readline()  # b"nINSTREAM\n"; pyclamd's constructor connects and says nothing
                    if b"INSTREAM" not in command:
                        return
                    while (header := self.rfile.read(4)) and (size := int.from_bytes(header, "big")):
                        self.rfile.read(size)
                    outer.streams += 1  # and no "stream: OK", no "FOUND": the connection just closes

        self.server = socketserver.ThreadingUnixStreamServer(str(path), Session)
        self.server.daemon_threads = True
        path.chmod(0o666)  # the pipe user and the milter's user connect
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), name="mute-clamd", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> MuteClamd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pipe_processes(queue_id: str) -> list[int]:
    """Pids of running `mailfilter pipe ... -q QUEUE_ID ...` processes (the filter pipe(8) started for that message)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"pipe" in argv and any(a.endswith(b"/mailfilter") for a in argv) and queue_id.encode() in argv:
            pids.append(int(entry.name))
    return pids


class MountRefused(Exception):
    """mount -t tmpfs is not permitted here (no CAP_SYS_ADMIN, a container without it...)."""


class TinyDisk:
    """A tmpfs of SIZE bytes mounted at PATH, 0700 and owned by USER, that fill() makes full.

    The ballast that fills it is one file in the folder `.ballast` (it is no message, and
    kept out of the folder's own files); free(n) gives back N pages, free() all of it.
    """

    def __init__(self, path: Path, user: str, size: int = 64 * 1024) -> None:
        self.path = path
        self.size = size
        self.user = pwd.getpwnam(user)
        self.mounted = False

    def __enter__(self) -> TinyDisk:
        self.path.mkdir(mode=0o700, exist_ok=True)
        options = f"size={self.size},mode=0700,uid={self.user.pw_uid},gid={self.user.pw_gid}"
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "mailfilter-faults", str(self.path)], capture_output=True, text=True)
        if proc.returncode:
            raise MountRefused(f"mount -t tmpfs -o {options} failed: {proc.stderr.strip() or proc.returncode}")
        self.mounted = True
        self.ballast_dir = self.path / ".ballast"
        self.ballast_dir.mkdir(mode=0o700)
        self.ballast = self.ballast_dir / "ballast"
        return self

    def fill(self) -> int:
        """Write ballast until the disk is full; return its size."""
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            page = b"\0" * PAGE
            while True:  # tmpfs allocates whole pages: each write takes one, or fails
                try:
                    os.write(fd, page)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
        finally:
            os.close(fd)
        size = self.ballast.stat().st_size
        assert size % PAGE == 0, f"ballast of {size} bytes: not whole pages"
        return size

    def free(self, pages: int | None = None) -> None:
        """Give back PAGES pages of ballast (all of it by default)."""
        size = self.ballast.stat().st_size
        os.truncate(self.ballast, 0 if pages is None else max(0, size - pages * PAGE))

    def files(self) -> list[str]:
        """Every name in the folder but the ballast's, hidden ones included."""
        return sorted(name for name in os.listdir(self.path) if name != ".ballast")

    def __exit__(self, *exc: object) -> None:
        if not self.mounted:
            return
        deadline = time.monotonic() + 30
        while subprocess.run(["umount", str(self.path)], capture_output=True).returncode:
            if time.monotonic() > deadline:  # a process still has a file open there
                subprocess.run(["umount", "--lazy", str(self.path)], check=True)
                break
            time.sleep(0.1)
        self.mounted = False
        with contextlib.suppress(OSError):
            shutil.rmtree(self.path)
