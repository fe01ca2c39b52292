"""The files of scripts/lab: mailfilter's config, the Maildirs, Dovecot 2.3's config and users, Postfix's main.cf and
master.cf with the chapter's virtual layout. Each function writes one part into the lab folder; lab.py runs them."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import write_config
from postfix import CORE_SERVICES, PIPE_GROUP, SETGID_GROUP, filter_venv

DOMAIN = "unix.specialist.ru"
HOST = "127.0.0.1"


def filter_install() -> Path:
    """`mailfilter` from a non-editable venv every user can run (the pipe user, the milter's, IMAPSieve's vmail)."""
    return filter_venv()


def write_filter(lab: Path, st: dict, mailfilter: Path, owner: pwd.struct_passwd) -> Path:
    folder = lab / "filter"
    for sub in ("quarantine", "state", "journal", "tmp"):
        (folder / sub).mkdir(mode=0o700, exist_ok=True)
        shutil.chown(folder / sub, owner.pw_uid, owner.pw_gid)
    shutil.chown(folder, owner.pw_uid, owner.pw_gid)
    sections = {
        "spamd": {"host": st["spamd_host"], "port": st["spamd_port"], "timeout": 30},
        "clamd": {"socket": st["clamd_socket"], "timeout": 30},
        "quarantine": {"dir": str(folder / "quarantine")},
        "report": {
            "admin": f"info@{DOMAIN}",
            "sender": f"mailfilter@{DOMAIN}",
            "state_dir": str(folder / "state"),
            "journal_dir": str(folder / "journal"),
        },
        "metrics": {"listen": ""},
        "log": {"syslog": False, "file": str(folder / "mailfilter.log")},
    }
    if st["wiring"] == "milter":
        sections["milter"] = {"socket": f"inet:{st['milter_port'] if 'milter_port' in st else 0}@{HOST}", "tmpdir": str(folder / "tmp"),
                              "user": f"{owner.pw_name}:{PIPE_GROUP}"}  # fmt: skip
    path = folder / "mailfilter.toml"
    write_config(path, sections)
    path.chmod(0o644)  # read by pipe(8)'s user, the milter, and IMAPSieve's learn as vmail
    (folder / "mailfilter.log").touch()
    shutil.chown(folder / "mailfilter.log", owner.pw_uid, owner.pw_gid)
    (folder / "mailfilter.log").chmod(0o666)  # `learn` runs as vmail and logs there too
    return path


def write_maildirs(lab: Path, st: dict, vmail: pwd.struct_passwd) -> None:
    """DOMAIN/USER/Maildir for every user, owned by vmail; vhosts and vmaps as the chapter has them."""
    base = lab / "vmail"
    base.mkdir(mode=0o750, exist_ok=True)
    shutil.chown(base, vmail.pw_uid, vmail.pw_gid)
    for address in st["users"]:
        local, domain = address.split("@")
        for folder in (base / domain, base / domain / local):
            folder.mkdir(mode=0o700, exist_ok=True)
            shutil.chown(folder, vmail.pw_uid, vmail.pw_gid)
    etc = lab / "postfix" / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "vhosts").write_text(f"{DOMAIN}\n")
    (etc / "vmaps").write_text("".join(f"{a} {a.split('@')[1]}/{a.split('@')[0]}/Maildir/\n" for a in sorted(st["users"])))
    if (etc / "main.cf").exists():
        postmap(lab)


def postmap(lab: Path) -> None:
    etc = lab / "postfix" / "etc"
    subprocess.run(["postmap", "-c", str(etc), str(etc / "vmaps")], check=True, capture_output=True, timeout=60)


def add_user(lab: Path, address: str, password: str, vmail: pwd.struct_passwd) -> None:
    """One passwd-file line with an ARGON2ID hash (doveadm pw, the password on stdin); the file 0640 root:dovecot."""
    proc = subprocess.run(
        ["doveadm", "pw", "-s", "ARGON2ID"], input=f"{password}\n{password}\n", capture_output=True, text=True, timeout=60, check=True
    )
    digest = proc.stdout.strip()
    users = lab / "dovecot" / "users"
    lines = [line for line in (users.read_text().splitlines() if users.exists() else []) if not line.startswith(f"{address}:")]
    local, domain = address.split("@")
    home = lab / "vmail" / domain / local
    lines.append(f"{address}:{digest}:{vmail.pw_uid}:{vmail.pw_gid}::{home}::")
    temp = users.with_suffix(".new")
    temp.write_text("\n".join(lines) + "\n")
    shutil.chown(temp, "root", "dovecot")
    temp.chmod(0o640)
    temp.replace(users)


def write_dovecot(lab: Path, st: dict, vmail: pwd.struct_passwd, mailfilter: Path) -> None:
    folder = lab / "dovecot"
    sieve = folder / "sieve"
    for sub in (folder / "run", folder / "state", sieve, sieve / "bin"):
        sub.mkdir(mode=0o755, parents=True, exist_ok=True)
    imap_port, pop3_port = (st[k].rsplit(":", 1)[1] for k in ("imap", "pop3"))
    (sieve / "before.sieve").write_text(
        'require ["fileinto", "mailbox"];\nif header :contains "X-Spam-Flag" "YES" { fileinto :create "Junk"; stop; }\n'
    )
    (sieve / "learn-spam.sieve").write_text('require ["vnd.dovecot.pipe", "copy", "imapsieve"];\npipe :copy "learn-spam";\n')
    (sieve / "learn-ham.sieve").write_text(
        'require ["vnd.dovecot.pipe", "copy", "imapsieve", "environment", "variables"];\n'
        'if environment :matches "imap.mailbox" "*" { if string "${1}" "Trash" { stop; } }\n'
        'pipe :copy "learn-ham";\n'
    )
    config = lab / "filter" / "mailfilter.toml"
    for kind in ("spam", "ham"):
        script = sieve / "bin" / f"learn-{kind}"
        script.write_text(f"#!/bin/sh\nexec {mailfilter} --config {config} learn {kind}\n")
        script.chmod(0o755)
    conf = f"""# The lab's Dovecot 2.3: loopback only, plaintext logins (there is no network to sniff), the chapter's Maildirs.
base_dir = {folder / "run"}
state_dir = {folder / "state"}
log_path = {folder / "dovecot.log"}
instance_name = mailfilter-lab
listen = {HOST}
protocols = imap pop3 lmtp
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = {vmail.pw_uid}
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = scheme=ARGON2ID username_format=%Lu {folder / "users"}
}}
userdb {{
  driver = passwd-file
  args = username_format=%Lu {folder / "users"}
}}
namespace inbox {{
  inbox = yes
  mailbox Junk {{
    special_use = \\Junk
    auto = subscribe
  }}
  mailbox Trash {{
    special_use = \\Trash
    auto = subscribe
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = {HOST}
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = {HOST}
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service lmtp {{
  unix_listener lmtp {{
    mode = 0666
  }}
}}
protocol lmtp {{
  mail_plugins = $mail_plugins sieve
  postmaster_address = info@{DOMAIN}
}}
protocol imap {{
  mail_plugins = $mail_plugins imap_sieve
}}
plugin {{
  sieve_before = {sieve / "before.sieve"}
  sieve_plugins = sieve_imapsieve sieve_extprograms
  sieve_global_extensions = +vnd.dovecot.pipe +vnd.dovecot.environment
  sieve_pipe_bin_dir = {sieve / "bin"}
  # Moved into Junk: learn spam. Moved out of Junk (anywhere but Trash): learn ham.
  imapsieve_mailbox1_name = Junk
  imapsieve_mailbox1_causes = COPY
  imapsieve_mailbox1_before = file:{sieve / "learn-spam.sieve"}
  imapsieve_mailbox2_name = *
  imapsieve_mailbox2_from = Junk
  imapsieve_mailbox2_causes = COPY
  imapsieve_mailbox2_before = file:{sieve / "learn-ham.sieve"}
}}
"""
    (folder / "dovecot.conf").write_text(conf)
    for name in ("before", "learn-spam", "learn-ham"):
        compile_sieve = ["sievec", "-c", str(folder / "dovecot.conf"), str(sieve / f"{name}.sieve")]
        subprocess.run(compile_sieve, check=True, capture_output=True, timeout=60)


def start_milter(lab: Path, st: dict, mailfilter: Path, owner: pwd.struct_passwd) -> int:
    """`mailfilter milter` on the lab's milter port (it drops to the filter user itself); its pid."""
    write_filter(lab, st, mailfilter, owner)
    env = {**os.environ, "MAIL_CONFIG": str(lab / "postfix" / "etc")}  # admin reports through the lab's Postfix
    with open(lab / "filter" / "milter.out", "ab") as out:
        proc = subprocess.Popen(
            [str(mailfilter), "--config", str(lab / "filter" / "mailfilter.toml"), "milter"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, start_new_session=True,
        )  # fmt: skip
    return proc.pid


def write_postfix(lab: Path, st: dict, mailfilter: Path, vmail: pwd.struct_passwd, owner: pwd.struct_passwd) -> None:
    work = lab / "postfix"
    etc, queue = work / "etc", work / "queue"
    smtp_port = st["smtp"].rsplit(":", 1)[1]
    main = {
        "compatibility_level": "3.6",
        "queue_directory": str(queue),
        "data_directory": str(work / "data"),
        "setgid_group": SETGID_GROUP,
        "myhostname": f"mail.{DOMAIN}",
        "mydomain": DOMAIN,
        "mydestination": "",
        "inet_interfaces": "loopback-only",
        "inet_protocols": "ipv4",
        "mynetworks": "127.0.0.0/8",
        "alias_maps": "",
        "alias_database": "",
        "maillog_file": str(work / "maillog"),
        "maillog_file_prefixes": str(lab),
        "queue_run_delay": "1s",
        "minimal_backoff_time": "1s",
        "maximal_backoff_time": "2s",
        # The chapter's virtual mailboxes.
        "virtual_mailbox_domains": str(etc / "vhosts"),
        "virtual_mailbox_base": str(lab / "vmail"),
        "virtual_mailbox_maps": f"hash:{etc / 'vmaps'}",
        "virtual_uid_maps": f"static:{vmail.pw_uid}",
        "virtual_gid_maps": f"static:{vmail.pw_gid}",
        "virtual_minimum_uid": str(min(vmail.pw_uid, 100)),
    }
    if st["delivery"] == "lmtp":
        main["virtual_transport"] = f"lmtp:unix:{lab / 'dovecot' / 'run' / 'lmtp'}"
    if st["wiring"] == "milter":
        main.update(smtpd_milters=f"inet:{HOST}:{st['milter_port']}", milter_default_action="tempfail", milter_protocol="6")
    else:
        imported, exported = subprocess.run(
            ["postconf", "-d", "-h", "import_environment", "export_environment"], capture_output=True, text=True, check=True, timeout=60
        ).stdout.splitlines()
        config = lab / "filter" / "mailfilter.toml"
        main["import_environment"] = f"{imported} TMPDIR={lab / 'filter' / 'tmp'} MAILFILTER_CONFIG={config}"
        main["export_environment"] = f"{exported} TMPDIR MAILFILTER_CONFIG"
    smtpd = f"{HOST}:{smtp_port} inet n - n - - smtpd"
    if st["wiring"] == "content_filter":
        smtpd += "\n  -o content_filter=mailfilter:dummy"
    services = [
        smtpd,
        *CORE_SERVICES,
        "virtual unix - n n - - virtual",
        "lmtp unix - - n - - lmtp",
    ]
    if st["wiring"] == "content_filter":  # the chapter's myfilter service, with mailfilter in the script's place
        services.append(
            f"mailfilter unix - n n - 4 pipe\n  flags=Rq user={owner.pw_name}:{PIPE_GROUP} null_sender=\n"
            f"  argv={mailfilter} pipe -q ${{queue_id}} -f ${{sender}} -- ${{recipient}}"
        )
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main.items()))
    (etc / "master.cf").write_text("\n".join(services) + "\n")
    postmap(lab)
    for name, mode in (("maildrop", 0o730), ("public", 0o710)):
        folder = queue / name
        folder.mkdir(parents=True, exist_ok=True)
        shutil.chown(folder, "postfix", PIPE_GROUP)
        folder.chmod(mode)
    print(f"lab: postfix in {work}", file=sys.stderr)
