"""`mailfilter web` as it runs in production: its own process under uvicorn, as the quarantine's owner, never root."""

from __future__ import annotations

import http.client
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import write_config
from postfix import free_port

ROOT = Path(__file__).resolve().parent.parent
MAILFILTER = [sys.executable, "-m", "mailfilter"]
OWNER = "nobody"
requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="runs the console as another user (runuser): needs root")


def config_for(folder: Path, port: int) -> str:
    return write_config(
        folder / "mailfilter.toml",
        {
            "quarantine": {"dir": str(folder / "quarantine")},
            "report": {"state_dir": str(folder / "state"), "journal_dir": ""},
            "web": {"listen": f"127.0.0.1:{port}", "users_file": str(folder / "users"), "secret_file": str(folder / "state" / "secret")},
            "log": {"syslog": False},
        },
    )


def test_it_refuses_to_run_as_root(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    proc = subprocess.run([*MAILFILTER, "--config", config_for(tmp_path, free_port()), "web"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "refuses to run as root" in proc.stderr


@requires_root
def test_the_console_serves_under_uvicorn_as_the_quarantines_owner():
    folder = Path(tempfile.mkdtemp(prefix="mailfilter-web-"))  # not under pytest's root-only folder: the owner must reach it
    (folder / "quarantine").mkdir()
    port = free_port()
    path = config_for(folder, port)
    owner = pwd.getpwnam(OWNER)
    for sub in (folder, folder / "quarantine"):
        shutil.chown(sub, owner.pw_uid, owner.pw_gid)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        ["runuser", "-u", OWNER, "--", *MAILFILTER, "--config", path, "web"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/login")
                login = conn.getresponse()
                body = login.read().decode()
                break
            except OSError:
                conn.close()
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "the console did not answer within 60 s"
                time.sleep(0.1)
        assert login.status == 200 and 'name="csrf"' in body
        assert "default-src 'none'" in login.getheader("content-security-policy") and login.getheader("server") is None
        conn.request("GET", "/quarantine")
        redirect = conn.getresponse()
        redirect.read()
        assert redirect.status in (302, 303) and redirect.getheader("location") == "/login"
        secret = folder / "state" / "secret"
        assert secret.stat().st_uid == owner.pw_uid and secret.stat().st_mode & 0o777 == 0o600  # made at start, the owner's
        conn.close()
    finally:
        proc.terminate()
        proc.wait(30)
        proc.stdout.close()
        shutil.rmtree(folder, ignore_errors=True)
