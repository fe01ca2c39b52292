"""The shipped systemd unit and tmpfiles entry: valid, and hardened the way the README promises."""

import shutil
import subprocess

import pytest

from conftest import ROOT

UNIT = ROOT / "systemd" / "mailfilter-milter.service"
needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


@needs_systemd
@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "systemd").iterdir() if p.suffix in (".service", ".timer", ".socket")))
def test_unit_verifies(tmp_path, name):
    # verify wants ExecStart to exist: point it at this checkout's command.
    for path in (ROOT / "systemd").glob("*.service"):
        text = path.read_text().replace("/usr/local/bin/mailfilter", str(ROOT / ".venv" / "bin" / "mailfilter"))
        (tmp_path / path.name).write_text(text)
    for path in [*(ROOT / "systemd").glob("*.timer"), *(ROOT / "systemd").glob("*.socket")]:
        (tmp_path / path.name).write_text(path.read_text())
    proc = subprocess.run(["systemd-analyze", "verify", str(tmp_path / name)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


@needs_systemd
@pytest.mark.parametrize(
    "name", ["mailfilter-milter.service", "mailfilter-worker.service", "mailfilter-purge.service", "mailfilter-report.service"]
)
def test_unit_exposure_is_ok_or_better(name):
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--threshold=20", str(ROOT / "systemd" / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert proc.stdout.splitlines()[-1].split()[-2] in ("OK", "SAFE")


def test_unit_writes_only_where_it_must():
    settings = [line.split("=", 1) for line in UNIT.read_text().splitlines() if "=" in line and not line.startswith("#")]
    values = {}
    for key, value in settings:
        values.setdefault(key, []).append(value)
    assert values["Type"] == ["notify"] and values["ProtectSystem"] == ["strict"] and values["NoNewPrivileges"] == ["yes"]
    assert values["PrivateTmp"] == ["yes"] and values["User"] == ["mailfilter"]
    writable = values["ReadWritePaths"][0].split()
    assert sorted(writable) == [
        "-/var/spool/postfix/mailfilter",  # the socket folder inside Postfix's chroot, when used
        "/run/mailfilter",
        "/var/lib/mailfilter",
        "/var/spool/postfix/maildrop",
        "/var/spool/postfix/public",
    ]


def test_tmpfiles_make_private_folders():
    rows = [line.split() for line in (ROOT / "systemd" / "mailfilter-tmpfiles.conf").read_text().splitlines() if line.startswith("d ")]
    modes = {path: mode for _, path, mode, *_ in rows}
    assert modes == {
        "/run/mailfilter": "0750",
        "/var/lib/mailfilter": "0700",
        "/var/lib/mailfilter/quarantine": "0700",
        "/var/spool/postfix/mailfilter": "0750",
    }
    assert all(row[3] == "mailfilter" for row in rows)


def test_master_cf_example_has_both_wirings():
    text = (ROOT / "master.cf.example").read_text()
    assert "-o content_filter=mailfilter:dummy" in text
    wrapped = "argv=/usr/local/libexec/mailfilter/mailfilter-pipe -t 900 /usr/local/bin/mailfilter"
    assert f"{wrapped} pipe -q ${{queue_id}} -f ${{sender}} -- ${{recipient}}" in text
    assert "flags=Rq user=mailfilter null_sender=" in text
    assert "milter_default_action = tempfail" in text and "smtpd_milters = unix:/run/mailfilter/milter.sock" in text
    assert not [line for line in text.splitlines() if "sendmail -t" in line]
