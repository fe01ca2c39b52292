"""Run `mailfilter milter` as a real process for tests, ready when it says so (sd_notify), never after a sleep."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

READY_TIMEOUT = 30.0


class MilterProcess:
    """`python -m mailfilter --config CONFIG milter`, with a NOTIFY_SOCKET of our own to hear READY=1 and STOPPING=1."""

    def __init__(self, config: str, folder: Path, env: dict[str, str] | None = None) -> None:
        self.notify_path = str(folder / f"notify-{os.getpid()}-{id(self)}.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.notify.settimeout(READY_TIMEOUT)
        environ = {"PATH": "/usr/bin:/bin", **(env or {}), "NOTIFY_SOCKET": self.notify_path}
        self.proc = subprocess.Popen([sys.executable, "-m", "mailfilter", "--config", config, "milter"], env=environ, cwd=ROOT)

    def expect(self, state: bytes) -> None:
        got = self.notify.recv(100)
        assert got == state, f"milter said {got!r}, expected {state!r}"

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.notify.close()
        if os.path.exists(self.notify_path):
            os.unlink(self.notify_path)
