"""Run `mailfilter milter` as a real process for tests, ready when it says so (sd_notify), never after a sleep.

Started as root (as the tests are), the milter drops privileges to USER once its
socket is open, so everything it writes afterwards (quarantine, journal, state)
and its NOTIFY_SOCKET live in `folder`, a work folder of USER's under /tmp.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from conftest import ROOT

READY_TIMEOUT = 30.0
USER = "mailfilter-test"  # created by scripts/setup


class MilterProcess:
    """`python -m mailfilter --config CONFIG milter`, with a NOTIFY_SOCKET of our own to hear READY=1 and STOPPING=1."""

    def __init__(self) -> None:
        user = pwd.getpwnam(USER)
        self.folder = Path(tempfile.mkdtemp(prefix="mailfilter-milter-", dir="/tmp"))
        self.folder.chmod(0o755)
        os.chown(self.folder, user.pw_uid, user.pw_gid)
        self.notify_path = str(self.folder / "notify.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        os.chown(self.notify_path, user.pw_uid, user.pw_gid)  # the milter sends READY after becoming USER
        self.notify.settimeout(READY_TIMEOUT)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, config: str, env: dict[str, str] | None = None) -> None:
        environ = {"PATH": "/usr/bin:/bin", **(env or {}), "NOTIFY_SOCKET": self.notify_path}
        self.proc = subprocess.Popen([sys.executable, "-m", "mailfilter", "--config", config, "milter"], env=environ, cwd=ROOT)

    def expect(self, state: bytes) -> None:
        got = self.notify.recv(100)
        assert got == state, f"milter said {got!r}, expected {state!r}"

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def log(self) -> str:
        path = self.folder / "milter.log"
        return path.read_text() if path.exists() else ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.notify.close()
        shutil.rmtree(self.folder, ignore_errors=True)
