"""The Debian package (scripts/package): built, lintian-clean, installed on this machine, used, upgraded, removed, purged.

Slow (a build bundles every Python dependency) and it installs into the system, so it runs once, as root, and
leaves nothing behind: the package is purged at the end whatever happened.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import corpus

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [
    pytest.mark.daemons,
    pytest.mark.skipif(os.geteuid() != 0, reason="installs a package: needs root"),
    pytest.mark.skipif(shutil.which("dpkg-buildpackage") is None and shutil.which("apt-get") is None, reason="not Debian"),
]


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
    # upgrade over itself keeps an edited conffile
    conffile.write_text(conffile.read_text() + "\n[report]\nadmin = \"postmaster@example.net\"\n")
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
