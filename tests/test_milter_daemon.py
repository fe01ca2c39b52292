"""The `mailfilter milter` process: readiness (sd_notify), socket permissions, clean stop on SIGTERM."""

import os
import socket
import stat

from conftest import write_config
from milterproc import MilterProcess


def config(tmp_path, socket_spec):
    return write_config(
        tmp_path / "m.toml",
        {
            "milter": {"socket": socket_spec, "grace": 5},
            "log": {"syslog": False, "file": str(tmp_path / "milter.log")},
            "quarantine": {"dir": str(tmp_path / "q")},
            "report": {"state_dir": str(tmp_path / "state"), "journal_dir": str(tmp_path / "journal")},
            "metrics": {"listen": ""},
        },
    )


def test_ready_only_when_listening_then_stops_cleanly_on_sigterm(tmp_path):
    path = tmp_path / "run" / "milter.sock"
    milter = MilterProcess(config(tmp_path, f"unix:{path}"), tmp_path)
    try:
        milter.expect(b"READY=1")
        mode = os.stat(path).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))  # accepts connections as soon as it said ready
        milter.proc.send_signal(15)
        milter.expect(b"STOPPING=1")
        assert milter.proc.wait(timeout=30) == 0
    finally:
        milter.close()
    log = (tmp_path / "milter.log").read_text()
    assert f"listening on unix:{path}" in log and "stopping: 0 message(s) in flight" in log


def test_address_in_use_is_a_clear_error(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        milter = MilterProcess(config(tmp_path, f"inet:{port}@127.0.0.1"), tmp_path)
        try:
            assert milter.proc.wait(timeout=30) == 1
        finally:
            milter.close()
