"""The `mailfilter milter` process: readiness (sd_notify), socket permissions, clean stop on SIGTERM."""

import os
import signal
import socket
import stat
import subprocess
import sys

import pytest

from conftest import ROOT, write_config


@pytest.fixture
def notify_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(30)
    yield sock, path
    sock.close()


def start(tmp_path, notify_path, socket_spec):
    config = write_config(
        tmp_path / "m.toml",
        {
            "milter": {"socket": socket_spec, "grace": 5},
            "log": {"syslog": False, "file": str(tmp_path / "milter.log")},
            "quarantine": {"dir": str(tmp_path / "q")},
            "report": {"state_dir": str(tmp_path / "state")},
        },
    )
    env = {"PATH": "/usr/bin:/bin", "NOTIFY_SOCKET": notify_path}
    return subprocess.Popen([sys.executable, "-m", "mailfilter", "--config", config, "milter"], env=env, cwd=ROOT)


def test_ready_only_when_listening_then_stops_cleanly_on_sigterm(tmp_path, notify_socket):
    sock, notify_path = notify_socket
    path = tmp_path / "run" / "milter.sock"
    proc = start(tmp_path, notify_path, f"unix:{path}")
    try:
        assert sock.recv(100) == b"READY=1"
        mode = os.stat(path).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))  # accepts connections as soon as it said ready
        proc.send_signal(signal.SIGTERM)
        assert sock.recv(100) == b"STOPPING=1"
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()
    log = (tmp_path / "milter.log").read_text()
    assert f"listening on unix:{path}" in log and "stopping: 0 message(s) in flight" in log


def test_address_in_use_is_a_clear_error(tmp_path, notify_socket):
    _, notify_path = notify_socket
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        proc = start(tmp_path, notify_path, f"inet:{port}@127.0.0.1")
        assert proc.wait(timeout=30) == 1
