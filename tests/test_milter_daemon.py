"""The `mailfilter milter` process: readiness (sd_notify), privileges, socket permissions, clean stop on SIGTERM."""

import os
import pwd
import socket
import stat
from pathlib import Path

import pytest

from conftest import write_config
from milterproc import USER, MilterProcess


@pytest.fixture
def milter():
    process = MilterProcess()
    yield process
    process.close()


def config(folder, socket_spec, **milter):
    return write_config(
        folder / "m.toml",
        {
            "milter": {"socket": socket_spec, "grace": 5, "user": USER, **milter},
            "log": {"syslog": False, "file": str(folder / "milter.log")},
            "quarantine": {"dir": str(folder / "q")},
            "report": {"state_dir": str(folder / "state"), "journal_dir": str(folder / "journal")},
            "metrics": {"listen": ""},
        },
    )


def test_ready_only_when_listening_then_stops_cleanly_on_sigterm(milter):
    path = milter.folder / "run" / "milter.sock"
    milter.start(config(milter.folder, f"unix:{path}"))
    milter.expect(b"READY=1")
    info = os.stat(path)
    user = pwd.getpwnam(USER)
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o660
    assert (info.st_uid, info.st_gid) == (user.pw_uid, user.pw_gid)
    uids = next(line for line in Path(f"/proc/{milter.proc.pid}/status").read_text().splitlines() if line.startswith("Uid:"))
    assert uids.split()[1:] == [str(user.pw_uid)] * 4  # real, effective, saved, filesystem: no way back to root
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(str(path))  # accepts connections as soon as it said ready
    milter.proc.send_signal(15)
    milter.expect(b"STOPPING=1")
    assert milter.proc.wait(timeout=30) == 0
    log = milter.log()
    assert f"listening on unix:{path}" in log and f"running as {USER}" in log and "stopping: 0 message(s) in flight" in log


def test_refuses_to_run_as_root_without_a_user(milter, capfd):
    milter.start(config(milter.folder, f"unix:{milter.folder}/m.sock", user=""))
    assert milter.proc.wait(timeout=30) == 1
    assert "refusing to run as root: set [milter] user" in capfd.readouterr().err
    assert not (milter.folder / "m.sock").exists()


def test_address_in_use_is_a_clear_error(milter, capfd):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        milter.start(config(milter.folder, f"inet:{port}@127.0.0.1"))
        assert milter.proc.wait(timeout=30) == 1
    assert "cannot listen on inet:" in capfd.readouterr().err
