"""The course chapter's mail system, private and on loopback: Postfix virtual mailboxes + Dovecot, mailfilter in the path.

    scripts/lab up [--milter] [--delivery lmtp|virtual] [--json]    (root; idempotent: a running lab is kept)
    scripts/lab down | status | adduser ADDRESS  (password on stdin)

Everything lives in one folder ($MAILFILTER_LAB, default /tmp/mailfilter-lab); nothing of the host's own
/etc/postfix or /etc/dovecot is read or changed, and no chroot is used:

  postfix/   main.cf, master.cf, vhosts, vmaps (postmap), queue, maillog   the chapter's virtual layout
  vmail/     the Maildirs (DOMAIN/USER/Maildir), owned by the vmail user (uid/gid 5000 when free)
  dovecot/   dovecot.conf, users (passwd-file, ARGON2ID hashes), sieve/, run/, dovecot.log
  filter/    mailfilter.toml, quarantine/, state/, journal/, mailfilter.log
  spamd/     the lab's own spamd and clamd (scripts/daemons.py, Bayes on, TELL allowed)
  lab.json   what `up --json` prints: ports, users and passwords, the admin, wiring and delivery

Wiring: `content_filter` (the chapter's: smtpd -o content_filter=mailfilter:dummy, pipe(8) running
`mailfilter pipe` as the filter user) or `--milter` (smtpd_milters, `mailfilter milter` as the filter user).
Delivery: `lmtp` (default: Dovecot LMTP, whose Sieve files X-Spam-Flag: YES into Junk; IMAPSieve runs
`mailfilter learn spam|ham` when a user moves a message into or out of Junk) or `virtual` (the chapter's:
Postfix virtual(8) writes the Maildir). Admin reports go to info@unix.specialist.ru, the chapter's VIRUSADMIN.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "tests")]

import labconf  # noqa: E402

import daemons  # noqa: E402

LAB = Path(os.environ.get("MAILFILTER_LAB", "/tmp/mailfilter-lab"))
DOMAIN = "unix.specialist.ru"
USERS = ("info", "sales")
ADMIN = f"info@{DOMAIN}"
VMAIL, VMAIL_ID = "vmail", 5000
FILTER_USER = "mailfilter-test"  # scripts/setup makes it: the user pipe(8) and the milter run as
HOST = "127.0.0.1"
READY = 60.0
ADDRESS = re.compile(r"^[a-z0-9][a-z0-9._+-]{0,63}@[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?)+$")


class LabError(Exception):
    """Something the admin must fix; said in one line, exit 1."""


def log(text: str) -> None:
    print(f"lab: {text}", file=sys.stderr, flush=True)


def run(argv: list[str], **kw) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, **kw)
    if proc.returncode != 0:
        raise LabError(f"{' '.join(map(str, argv[:3]))} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-800:]}")
    return proc


def start_daemon(argv: list[str], output: Path) -> None:
    """Run a command that forks a daemon: its output to a file (a pipe would be held open by the daemon)."""
    with open(output, "ab") as out:
        code = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, timeout=120, check=False).returncode
    if code != 0:
        raise LabError(f"{' '.join(argv[:3])} failed ({code}): {output.read_text(errors='replace').strip()[-800:]}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait(what: str, ready, timeout: float = READY) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise LabError(f"{what} not ready within {timeout:g} s")
        time.sleep(0.1)


def answers(port: int, greeting: bytes) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=5) as sock:
            return sock.recv(512).startswith(greeting)
    except OSError:
        return False


def vmail_user() -> pwd.struct_passwd:
    """The vmail user: uid/gid 5000 as in the chapter when free, else the next free id (said so)."""
    try:
        return pwd.getpwnam(VMAIL)
    except KeyError:
        pass
    wanted = VMAIL_ID
    while True:
        try:
            pwd.getpwuid(wanted)
        except KeyError:
            break
        wanted += 1
    if wanted != VMAIL_ID:
        log(f"uid {VMAIL_ID} is taken: the {VMAIL} user gets {wanted}")
    run(["groupadd", "--system", "--gid", str(wanted), VMAIL])
    home = ["--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin"]
    run(["useradd", "--system", "--uid", str(wanted), "--gid", str(wanted), *home, VMAIL])
    return pwd.getpwnam(VMAIL)


def state() -> dict:
    try:
        return json.loads((LAB / "lab.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def master_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().split()[0])
        os.kill(pid, 0)
        return pid
    except (FileNotFoundError, ValueError, IndexError, ProcessLookupError, PermissionError):
        return None


def running(st: dict) -> dict[str, bool]:
    milter = st.get("milter_pid")
    return {
        "postfix": bool(st) and master_pid(LAB / "postfix" / "queue" / "pid" / "master.pid") is not None,
        "dovecot": bool(st) and master_pid(LAB / "dovecot" / "run" / "master.pid") is not None,
        "milter": bool(milter) and _alive(milter),
        "spamd": bool(st) and daemons.ping_spamd(HOST, st.get("spamd_port", 0)),
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def healthy(st: dict) -> bool:
    """Everything the lab's wiring needs runs (the milter only for the milter wiring)."""
    parts = running(st)
    return all(up for name, up in parts.items() if name != "milter" or st.get("wiring") == "milter")


def public(st: dict) -> dict:
    keys = ("smtp", "imap", "pop3", "users", "admin", "wiring", "delivery")
    return {k: st[k] for k in keys}


def up(wiring: str, delivery: str) -> dict:
    st = state()
    if st and healthy(st):
        if (st["wiring"], st["delivery"]) == (wiring, delivery):
            log(f"already up in {LAB} ({wiring}, {delivery})")
            return st
        log(f"running as {st['wiring']}/{st['delivery']}: taking it down first")
        down()
        st = {}
    elif st:
        down()  # half up: start again from a clean folder
        st = {}
    vmail = vmail_user()
    filter_user = pwd.getpwnam(FILTER_USER)
    LAB.mkdir(mode=0o755, exist_ok=True)
    LAB.chmod(0o755)
    for sub in ("postfix", "dovecot", "filter"):
        (LAB / sub).mkdir(mode=0o755, exist_ok=True)
    st = {
        "smtp": f"{HOST}:{free_port()}",
        "imap": f"{HOST}:{free_port()}",
        "pop3": f"{HOST}:{free_port()}",
        "users": {f"{u}@{DOMAIN}": secrets.token_urlsafe(12) for u in USERS},
        "admin": ADMIN,
        "wiring": wiring,
        "delivery": delivery,
        "vmail_uid": vmail.pw_uid,
    }
    log("spamd and clamd (Bayes on, TELL allowed)")
    spam = daemons.start(LAB / "spamd", bayes=True)
    st.update(spamd_port=spam["spamd_port"], spamd_host=spam["spamd_host"], clamd_socket=spam["clamd_socket"], run_dir=str(LAB / "spamd"))
    mailfilter = labconf.filter_install()
    labconf.write_filter(LAB, st, mailfilter, filter_user)
    labconf.write_maildirs(LAB, st, vmail)
    log("dovecot")
    labconf.write_dovecot(LAB, st, vmail, mailfilter)
    for address, password in st["users"].items():
        labconf.add_user(LAB, address, password, vmail)
    start_daemon(["dovecot", "-c", str(LAB / "dovecot" / "dovecot.conf")], LAB / "dovecot" / "start.out")
    imap_port, pop3_port = (int(st[k].rsplit(":", 1)[1]) for k in ("imap", "pop3"))
    wait("dovecot imap", lambda: answers(imap_port, b"* OK"))
    wait("dovecot pop3", lambda: answers(pop3_port, b"+OK"))
    if wiring == "milter":
        log("mailfilter milter")
        st["milter_port"] = free_port()
        st["milter_pid"] = labconf.start_milter(LAB, st, mailfilter, filter_user)
        wait("the milter", lambda: _listening(st["milter_port"]))
    log(f"postfix ({wiring}, {delivery})")
    labconf.write_postfix(LAB, st, mailfilter, vmail, filter_user)
    start_daemon(["postfix", "-c", str(LAB / "postfix" / "etc"), "start"], LAB / "postfix" / "start.out")
    smtp_port = int(st["smtp"].rsplit(":", 1)[1])
    wait("postfix smtpd", lambda: answers(smtp_port, b"220 "))
    (LAB / "lab.json").write_text(json.dumps(st, indent=1, sort_keys=True) + "\n")
    (LAB / "lab.json").chmod(0o600)
    log(f"up: SMTP {st['smtp']}, IMAP {st['imap']}, POP3 {st['pop3']}; users {', '.join(st['users'])} (lab.json has the passwords)")
    return st


def _listening(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=2):
            return True
    except OSError:
        return False


def down() -> None:
    st = state()
    etc = LAB / "postfix" / "etc"
    if (etc / "main.cf").exists() and running(st)["postfix"]:
        subprocess.run(["postfix", "-c", str(etc), "stop"], capture_output=True, timeout=60, check=False)
    pid = master_pid(LAB / "dovecot" / "run" / "master.pid")
    if pid:
        os.kill(pid, signal.SIGTERM)
        wait("dovecot to stop", lambda: not _alive(pid), 30)
    if st.get("milter_pid") and _alive(st["milter_pid"]):
        os.kill(st["milter_pid"], signal.SIGTERM)
        wait("the milter to stop", lambda: not _alive(st["milter_pid"]), 30)
    if (LAB / "spamd").exists():
        daemons.stop(LAB / "spamd")
    if LAB.exists():
        shutil.rmtree(LAB)
        log(f"down: {LAB} removed")
    else:
        log("down: nothing was up")


def status() -> int:
    st = state()
    if not st:
        print("lab: down")
        return 3
    parts = running(st)
    print(json.dumps({**public(st), "running": parts}, indent=1, sort_keys=True))
    return 0 if parts["postfix"] and parts["dovecot"] else 1


def adduser(address: str, password: str) -> None:
    address = address.strip().lower()
    if not ADDRESS.match(address):
        raise LabError(f"{address!r} is not an address (user@domain, letters, digits and . _ + - only)")
    if not address.endswith(f"@{DOMAIN}"):
        raise LabError(f"{address}: the lab serves only {DOMAIN}")
    if len(password) < 8:
        raise LabError("a password has at least 8 characters")
    st = state()
    if not st or not running(st)["postfix"]:
        raise LabError("the lab is not up: scripts/lab up")
    vmail = pwd.getpwuid(st["vmail_uid"])
    st["users"][address] = password
    labconf.write_maildirs(LAB, st, vmail)
    labconf.add_user(LAB, address, password, vmail)
    start_daemon(["postfix", "-c", str(LAB / "postfix" / "etc"), "reload"], LAB / "postfix" / "start.out")
    (LAB / "lab.json").write_text(json.dumps(st, indent=1, sort_keys=True) + "\n")
    log(f"{address} added")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/lab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="bring the lab up (idempotent)")
    p_up.add_argument("--milter", action="store_true", help="smtpd_milters instead of the chapter's content_filter")
    p_up.add_argument("--delivery", choices=("lmtp", "virtual"), default="lmtp")
    p_up.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    sub.add_parser("down", help="stop everything and remove the lab's folder")
    sub.add_parser("status", help="what runs, as JSON (exit 3: down)")
    p_add = sub.add_parser("adduser", help="add a mailbox; the password is read from stdin")
    p_add.add_argument("address")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("lab: run it as root (it starts Postfix and Dovecot and makes their users)", file=sys.stderr)
        return 1
    try:
        if args.command == "up":
            st = up("milter" if args.milter else "content_filter", args.delivery)
            if args.json:
                print(json.dumps(public(st), sort_keys=True))
            return 0
        if args.command == "down":
            down()
            return 0
        if args.command == "status":
            return status()
        adduser(args.address, sys.stdin.readline().rstrip("\r\n"))
        return 0
    except LabError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
