"""The Debian package (scripts/package): built, lintian-clean, installed on this machine, used, upgraded, removed, purged.

Slow (a build bundles every Python dependency) and it installs into the system, so it runs once, as root, and
leaves nothing behind: the package is purged at the end whatever happened.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from test_worker_activation import LAUNCHER
from test_worker_real import summaries

import corpus
from conftest import quarantined, write_config
from postfix import PIPE_ARGS, PIPE_GROUP, TIMEOUT, PostfixInstance, filter_sections

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [
    pytest.mark.daemons,
    pytest.mark.skipif(os.geteuid() != 0, reason="installs a package: needs root"),
    pytest.mark.skipif(shutil.which("dpkg-buildpackage") is None and shutil.which("apt-get") is None, reason="not Debian"),
]


UNITS = Path("/lib/systemd/system")


def unit(name: str) -> dict[str, list[str]]:
    """The settings of the installed systemd unit NAME: every `Key=value` line, a key given twice keeps both."""
    settings: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        key, equals, value = line.partition("=")
        if equals and not line.startswith(("#", ";", "[")):
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


class PackagedWorker:
    """The packaged worker, started as systemd starts it from the packaged units: mailfilter-worker.socket's
    socket (its path, owner, mode and folder mode), bound and listening before the worker runs, handed over as
    fd 3 with LISTEN_FDS=1 and LISTEN_PID; mailfilter-worker.service's ExecStart, User= and Environment=, with
    two settings an admin's drop-in would change for a second Postfix instance: MAILFILTER_CONFIG and MAIL_CONFIG
    (and the group postdrop, which alone makes postdrop trust MAIL_CONFIG; the unit's Group= is for /etc/postfix)."""

    def __init__(self, folder: Path, config: Path, mail_config: Path) -> None:
        sock, service = unit("mailfilter-worker.socket"), unit("mailfilter-worker.service")
        [path] = sock["ListenStream"]
        self.path = Path(path)
        user = pwd.getpwnam(sock["SocketUser"][0])
        self.made_folder = not self.path.parent.exists()
        self.path.parent.mkdir(mode=int(sock["DirectoryMode"][0], 8), exist_ok=True)
        self.path.unlink(missing_ok=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        os.chown(path, user.pw_uid, grp.getgrnam(sock["SocketGroup"][0]).gr_gid)
        os.chmod(path, int(sock["SocketMode"][0], 8))
        self.listener.listen(int(sock["Backlog"][0]))
        self.notify_path = folder / "worker.notify"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        os.chown(self.notify_path, user.pw_uid, -1)
        [user_name] = service["User"]
        assert user_name == user.pw_name, "the worker runs as the socket's owner (the clients' own user)"
        environ = dict(item.split("=", 1) for line in service.get("Environment", []) for item in line.split())
        assert environ["MAILFILTER_CONFIG"] == "/etc/mailfilter/mailfilter.toml" and environ["MAIL_CONFIG"] == "/etc/postfix"
        fd = self.listener.fileno()
        environ.update(
            PATH="/usr/bin:/bin",
            MAILFILTER_CONFIG=str(config),
            MAIL_CONFIG=str(mail_config),
            TMPDIR=str(folder / "tmp"),
            NOTIFY_SOCKET=str(self.notify_path),
            LISTEN_FDS="1",
            FD=str(fd),
        )
        [exec_start] = service["ExecStart"]
        self.out = folder / "worker.out"
        with self.out.open("wb") as out:
            self.proc = subprocess.Popen(
                ["/usr/bin/python3", "-c", LAUNCHER, "", *exec_start.split()],
                env=environ,
                cwd=folder,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                pass_fds=(fd,),
                user=user.pw_uid,
                group=grp.getgrnam(PIPE_GROUP).gr_gid,
                extra_groups=[],
            )

    def expect(self, state: bytes) -> None:
        """Wait for STATE on the notify socket (readiness as systemd sees it); fail with the worker's output."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and self.proc.poll() is None:
            if select.select([self.notify], [], [], 0.2)[0]:
                got = self.notify.recv(100)
                assert got == state, f"worker said {got!r}, expected {state!r}: {self.out.read_text()}"
                return
        raise AssertionError(f"worker (exit status {self.proc.poll()}) never said {state!r}: {self.out.read_text()}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(TIMEOUT)
        self.listener.close()
        self.notify.close()
        self.path.unlink(missing_ok=True)  # RemoveOnStop=yes
        if self.made_folder:
            self.path.parent.rmdir()


def filter_through_postfix(daemons: dict, work: Path) -> None:
    """A private Postfix whose pipe(8) runs the installed /usr/bin/mailfilter as the package's user, served by the
    packaged worker on the packaged socket (the config leaves [pipe] worker at its default): a clean message is
    delivered once with its header, EICAR is quarantined, both by the worker, none by a fallback."""
    with PostfixInstance(pipe_user="mailfilter") as postfix:
        folder = postfix.filter_dir
        sections = filter_sections(folder, (daemons["spamd_host"], daemons["spamd_port"]), daemons["clamd_socket"], 30)
        config = Path(write_config(folder / "mailfilter.toml", sections))
        assert "worker" not in config.read_text()
        postfix.start("content_filter", argv=["/usr/bin/mailfilter", *PIPE_ARGS], config=config)
        worker = PackagedWorker(folder, config, postfix.config_dir)
        try:
            worker.expect(b"READY=1")
            codes = [postfix.send(raw, "alice@example.org", ["bob@example.net"]) for raw in (corpus.clean(), corpus.eicar_attached())]
            assert [code for code, _ in codes] == [250, 250], codes
            clean_id, eicar_id = (text.rsplit(" ", 1)[1] for _, text in codes)
            postfix.wait_for(lambda: postfix.postqueue_json() == [], what="an empty queue")
            deliveries = postfix.sink.wait(2)  # the clean message and the admin's report
            [delivery] = [d for d in deliveries if d.recipients == ("bob@example.net",)]
            assert b"X-Virus-Status: Clean" in delivery.data and len(postfix.sink.deliveries) == 2
            [(meta, _stored)] = quarantined(folder / "quarantine")
            assert meta["queue_id"] == eicar_id
            log = (folder / "mailfilter.log").read_text()
            for queue_id, verdict in ((clean_id, "clean"), (eicar_id, "virus")):
                [(tag, pid, text)] = summaries(log, queue_id)
                assert (tag, pid) == ("mailfilter/worker", worker.proc.pid) and f"verdict={verdict}" in text, log
            assert f"pipe worker listening on {worker.path} (from systemd)" in log, log
        finally:
            worker.close()


def run(*argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=1800, check=False, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def deb():
    out = run(str(ROOT / "scripts" / "package"), cwd=ROOT).stdout.strip().splitlines()[-1]
    path = ROOT / out
    assert path.name.startswith("mailfilter_") and path.suffix == ".deb" and path.exists(), out
    yield path
    run("dpkg", "--purge", "mailfilter", check=False)


def test_install_check_filter_upgrade_remove_purge(deb, daemons):
    run("dpkg", "-i", str(deb))
    assert os.path.realpath("/usr/bin/mailfilter") == "/usr/lib/mailfilter/bin/mailfilter"
    assert Path("/lib/systemd/system/mailfilter-worker.socket").exists()
    assert "/usr/bin/mailfilter" in Path("/lib/systemd/system/mailfilter-milter.service").read_text()
    assert Path("/etc/systemd/system/sockets.target.wants/mailfilter-worker.socket").is_symlink()  # enabled
    assert not Path("/etc/systemd/system/multi-user.target.wants/mailfilter-milter.service").exists()  # only if asked
    conffile = Path("/etc/mailfilter/mailfilter.toml")
    assert all(line.startswith("#") or not line.strip() for line in conffile.read_text().splitlines())  # every key commented
    run("/usr/bin/mailfilter", "--config", str(conffile), "config")  # and it loads
    for unit in Path("/lib/systemd/system").glob("mailfilter-*"):
        run("systemd-analyze", "verify", str(unit), check=False)  # no systemd running here: its complaints are about that
    # check, as the filter's own user, against the private daemons
    work = Path(tempfile.mkdtemp(prefix="mailfilter-package-"))  # not under pytest's root-only folder
    work.chmod(0o755)
    config = work / "pkg.toml"
    config.write_text(
        f'[spamd]\nhost = "{daemons["spamd_host"]}"\nport = {daemons["spamd_port"]}\n'
        f'[clamd]\nsocket = "{daemons["clamd_socket"]}"\n[metrics]\nlisten = ""\n'
    )
    config.chmod(0o644)
    checked = run("runuser", "-u", "mailfilter", "--", "/usr/bin/mailfilter", "--config", str(config), "check", check=False)
    assert "OK    spamd:" in checked.stdout and "OK    clamd:" in checked.stdout and "FAIL" not in checked.stdout, checked.stdout
    # a message through the installed filter (scan: the same pipeline the doors run)
    sample = work / "gtube.eml"
    sample.write_bytes(corpus.gtube())
    sample.chmod(0o644)
    as_filter = ["runuser", "-u", "mailfilter", "--", "/usr/bin/mailfilter", "--config", str(config)]
    scanned = run(*as_filter, "scan", "--json", str(sample), check=False)  # exit 1: spam
    assert json.loads(scanned.stdout.splitlines()[0])["verdict"] == "spam"
    filter_through_postfix(daemons, work)
    # upgrade over itself keeps an edited conffile
    conffile.write_text(conffile.read_text() + '\n[report]\nadmin = "postmaster@example.net"\n')
    run("dpkg", "-i", "--force-confold", str(deb))
    assert 'admin = "postmaster@example.net"' in conffile.read_text()
    # remove keeps the quarantine, purge leaves nothing of the package
    held = Path("/var/lib/mailfilter/quarantine/keep-me.json")
    held.write_text("{}")
    run("dpkg", "--remove", "mailfilter")
    assert held.exists() and not Path("/usr/bin/mailfilter").exists()
    run("dpkg", "--purge", "mailfilter")
    assert not Path("/var/lib/mailfilter").exists() and not Path("/etc/mailfilter").exists() and not Path("/usr/lib/mailfilter").exists()
    status = run("dpkg-query", "-W", "-f=${Status}", "mailfilter", check=False).stdout
    assert "installed" not in status.replace("not-installed", ""), status
    shutil.rmtree(work, ignore_errors=True)
