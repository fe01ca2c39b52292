"""The tools as root against a hostile quarantine: what the filter's user can plant must never reach root's rights.

The quarantine belongs to the unprivileged `mailfilter-test` (scripts/setup), as
in production; the tests run the real `mailfilter quarantine` CLI as root in a
subprocess with a timeout (a FIFO must not hang it) and look at every byte it
printed and sent.
"""

import fcntl
import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mailfilter.actions import held

from conftest import Sendmail, write_config

USER = "mailfilter-test"
MAILFILTER = str(Path(sys.executable).parent / "mailfilter")
TIMEOUT = 30

try:
    OWNER = pwd.getpwnam(USER)
except KeyError:
    OWNER = None
pytestmark = pytest.mark.skipif(os.geteuid() != 0 or OWNER is None, reason=f"needs root and the user {USER} (scripts/setup)")

BODY = b"Subject: hello\nFrom: alice@example.org\n\nheld body\n"


def qid(n: int) -> str:
    return f"20260101T{n:06d}Z-{n:010x}"


GOOD, GOOD2, EML_LINK, JSON_LINK, FIFO, CREATED_INT, RCPT_STR, SIZE_ESC, CREATED_ESC, ID_ESC, WRONG_OWNER = (qid(n) for n in range(1, 12))
BAD = [EML_LINK, JSON_LINK, FIFO, CREATED_INT, RCPT_STR, SIZE_ESC, CREATED_ESC, ID_ESC, WRONG_OWNER]
ESCAPES = "\x1b]0;owned\x07\x1b[2J\x1b[31m\x9b1m"


def meta(i: str, **changes) -> dict:
    base = {
        "id": i,
        "created": "2026-01-01T00:00:00+00:00",
        "size": len(BODY),
        "reason": "spam",
        "verdict": "spam",
        "sender": "alice@example.org",
        "recipients": ["bob@example.net"],
        "subject": "hello",
        "spam_score": 9.5,
        "virus_names": [],
        "released": [],
    }
    return {**base, **changes}


class Hostile:
    """A quarantine owned by USER with good and planted entries, a root-only secret beside it, a recording sendmail."""

    def __init__(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="mailfilter-hostile-", dir="/tmp"))
        self.work.chmod(0o755)
        self.folder = self.work / "quarantine"
        self.sent = self.work / "sent"
        for path in (self.folder, self.sent):
            path.mkdir(mode=0o700)
            os.chown(path, OWNER.pw_uid, OWNER.pw_gid)
        self.sendmail = Sendmail(self.sent)
        self.secret = ("ROOT-ONLY-" + secrets.token_hex(8)).encode()
        self.secret_file = self.root_only("secret", self.secret + b"\n")
        self.config = self.write_config(self.folder)
        self.plant()

    def write_config(self, folder: Path) -> str:
        return write_config(
            self.work / f"mailfilter-{secrets.token_hex(2)}.toml",
            {
                "delivery": {"sendmail": self.sendmail.argv(), "timeout": 30},
                "quarantine": {"dir": str(folder)},
                "report": {"state_dir": str(self.work / "state"), "journal_dir": str(self.work / "journal")},
                "log": {"syslog": False, "file": str(self.work / "mailfilter.log")},
            },
        )

    def root_only(self, name: str, data: bytes) -> Path:
        path = self.work / name
        path.write_bytes(data)
        path.chmod(0o600)
        return path

    def own(self, path: Path, user: pwd.struct_passwd | None = None, mode: int = 0o600) -> None:
        user = user or OWNER
        os.lchown(path, user.pw_uid, user.pw_gid)
        if not path.is_symlink():
            path.chmod(mode)

    def put(self, i: str, record: dict | None = None, body: bytes = BODY) -> None:
        for name, data in ((f"{i}.eml", body), (f"{i}.json", json.dumps(record or meta(i)).encode())):
            (self.folder / name).write_bytes(data)
            self.own(self.folder / name)

    def link(self, name: str, target: Path) -> None:
        (self.folder / name).symlink_to(target)
        self.own(self.folder / name)

    def plant(self) -> None:
        self.put(GOOD, meta(GOOD, subject="hi " + ESCAPES))
        self.put(GOOD2, meta(GOOD2, recipients=["bob@example.net", "dave@example.net"]))
        self.put(EML_LINK, meta(EML_LINK, reason="virus", virus_names=["Eicar"]))
        (self.folder / f"{EML_LINK}.eml").unlink()
        self.link(f"{EML_LINK}.eml", self.secret_file)
        planted = meta(JSON_LINK, subject=self.secret.decode(), recipients=["x@evil"])
        secret_meta = self.root_only("secret.json", json.dumps(planted).encode())
        self.put(JSON_LINK)
        (self.folder / f"{JSON_LINK}.json").unlink()
        self.link(f"{JSON_LINK}.json", secret_meta)
        self.put(FIFO)
        (self.folder / f"{FIFO}.json").unlink()
        os.mkfifo(self.folder / f"{FIFO}.json", 0o600)
        self.own(self.folder / f"{FIFO}.json")
        self.put(CREATED_INT, meta(CREATED_INT, created=1))
        self.put(RCPT_STR, meta(RCPT_STR, recipients="x@evil"))
        self.put(SIZE_ESC, meta(SIZE_ESC, size=ESCAPES))
        self.put(CREATED_ESC, meta(CREATED_ESC, created=ESCAPES + "2026-01-01"))
        self.put(ID_ESC, meta(ESCAPES, subject="id"))
        self.put(WRONG_OWNER)
        for name in (f"{WRONG_OWNER}.eml", f"{WRONG_OWNER}.json"):
            self.own(self.folder / name, pwd.getpwnam("nobody"), 0o644)

    def run(self, *args: str, config: str | None = None, as_owner: bool = False, env: dict | None = None) -> subprocess.CompletedProcess:
        environ = {k: v for k, v in os.environ.items() if k != "SUDO_USER"} | (env or {})
        command = [MAILFILTER, "--config", config or self.config, "quarantine", *args]
        who = {"user": OWNER.pw_uid, "group": OWNER.pw_gid, "extra_groups": []} if as_owner else {}
        # argv: our own console script and fixed words. No shell.
        return subprocess.run(command, capture_output=True, timeout=TIMEOUT, cwd=self.work, env=environ, check=False, **who)

    def everything_sent(self) -> bytes:
        return b"".join(path.read_bytes() for path in self.sent.iterdir())

    def close(self) -> None:
        shutil.rmtree(self.work)


@pytest.fixture
def hostile():
    q = Hostile()
    yield q
    q.close()


def clean(result: subprocess.CompletedProcess, q: Hostile) -> bytes:
    """What the command printed, after checking it holds no secret, no traceback and no terminal control."""
    both = result.stdout + result.stderr
    assert q.secret not in both
    assert b"Traceback" not in both
    assert not any(c in both for c in (b"\x1b", b"\x07", "\x9b".encode())), both
    return both


def warned(result: subprocess.CompletedProcess) -> list[str]:
    """The ids named by `warning: skipped ID.json|ID.eml|ID: why` lines."""
    lines = result.stderr.decode().splitlines()
    assert all(line.startswith("warning: skipped ") for line in lines), lines
    return sorted(line.split()[2].split(".")[0].rstrip(":") for line in lines)


def test_list_skips_and_reports_every_bad_entry_and_escapes_the_rest(hostile):
    result = hostile.run("list")
    clean(result, hostile)
    assert result.returncode == 0
    assert sorted(line.split()[0] for line in result.stdout.decode().splitlines()) == [GOOD, GOOD2]
    assert warned(result) == sorted(BAD)
    assert "hi \\x1b]0;owned\\x07\\x1b[2J" in result.stdout.decode()
    assert b"symlink" in result.stderr and b"not a regular file" in result.stderr and b"'created' is not a date" in result.stderr


def test_list_json_is_json_without_control_bytes(hostile):
    result = hostile.run("list", "--json")
    clean(result, hostile)
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(r["id"] for r in records) == [GOOD, GOOD2]
    assert next(r for r in records if r["id"] == GOOD)["subject"] == "hi " + ESCAPES


@pytest.mark.parametrize("raw", [True, False])
@pytest.mark.parametrize("bad", BAD)
def test_show_of_a_bad_entry_is_a_clear_error(hostile, bad, raw):
    result = hostile.run("show", *(["--raw"] if raw else []), bad)
    clean(result, hostile)
    assert result.returncode == 1 and result.stdout == b""
    assert result.stderr.startswith(f"Error: {bad}.".encode())


def test_show_of_a_good_entry_escapes_its_header(hostile):
    (hostile.folder / f"{GOOD}.eml").write_bytes(b"Subject: x" + ESCAPES.encode() + b"\n\nbody\n")
    result = hostile.run("show", GOOD)
    assert result.returncode == 0
    assert "Subject: x\\x1b]0;owned" in clean(result, hostile).decode()
    assert hostile.run("show", "--raw", GOOD).stdout == b"Subject: x" + ESCAPES.encode() + b"\n\nbody\n"  # raw asked for


@pytest.mark.parametrize("bad", BAD)
def test_release_of_a_bad_entry_sends_nothing(hostile, bad):
    result = hostile.run("release", "--force", bad)
    clean(result, hostile)
    assert result.returncode == 1 and result.stderr.startswith(f"Error: {bad}.".encode())
    assert hostile.sendmail.calls == []


def test_a_message_swapped_for_a_symlink_under_the_lock_is_not_what_is_sent(hostile):
    """Release has opened and is waiting for the lock while the filter's user swaps the .eml for a symlink."""
    path = hostile.folder / f"{GOOD2}.eml"
    lock = os.open(path, os.O_RDONLY)
    fcntl.flock(lock, fcntl.LOCK_EX)
    command = [MAILFILTER, "--config", hostile.config, "quarantine", "release", GOOD2]
    # argv: our own console script and fixed words. No shell.
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=hostile.work)
    try:
        deadline = time.monotonic() + TIMEOUT
        while not _holds_open(proc.pid, path):  # the release has its descriptor and now waits on our lock
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.01)
        path.rename(hostile.work / "moved.eml")
        hostile.link(path.name, hostile.secret_file)
    finally:
        os.close(lock)
    _out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    [(_argv, data)] = hostile.sendmail.calls
    assert hostile.secret not in data and data.split(b"\n", 1)[1] == BODY


def _holds_open(pid: int, path: Path) -> bool:
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_a_root_release_leaves_files_the_owner_can_purge(hostile):
    result = hostile.run("release", GOOD2, env={"SUDO_USER": "carol-admin"})
    clean(result, hostile)
    assert result.returncode == 0, result.stderr
    [(argv, data)] = hostile.sendmail.calls
    assert argv[-3:] == ["--", "bob@example.net", "dave@example.net"]
    assert data.startswith(b"X-Mailfilter-Released: carol-admin on ") and data.split(b"\n", 1)[1] == BODY
    stored = hostile.folder / f"{GOOD2}.json"
    assert (stored.stat().st_uid, stored.stat().st_mode & 0o777) == (OWNER.pw_uid, 0o600)
    assert json.loads(stored.read_text())["released"][0]["by"] == "carol-admin"
    assert {p.name for p in hostile.folder.iterdir() if p.lstat().st_uid == 0} == set()  # nothing root's left behind
    purged = hostile.run("purge", "--older-than", "1d", as_owner=True)  # what mailfilter-purge.timer runs
    clean(purged, hostile)
    assert purged.returncode == 0 and purged.stdout == b"purged 2 message(s) older than 1d\n"
    assert warned(purged) == sorted(BAD)
    assert not (hostile.folder / f"{GOOD2}.eml").exists() and not stored.exists()


def test_purge_as_root_deletes_the_old_good_entries_and_leaves_the_bad_alone(hostile):
    before = sorted(p.name for p in hostile.folder.iterdir())
    result = hostile.run("purge", "--older-than", "1d")
    clean(result, hostile)
    assert result.returncode == 0 and result.stdout == b"purged 2 message(s) older than 1d\n"
    assert warned(result) == sorted(BAD)
    assert sorted(p.name for p in hostile.folder.iterdir()) == [n for n in before if not n.startswith((GOOD, GOOD2))]
    assert hostile.secret_file.read_bytes() == hostile.secret + b"\n"


def test_an_entry_locked_for_ever_is_skipped_not_waited_on(hostile):
    """A process of the filter's user that holds an entry's lock and never lets go."""
    lock = os.open(hostile.folder / f"{GOOD2}.eml", os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert hostile.run("show", GOOD2).returncode == 0  # reading needs no lock
        busy = hostile.run("release", GOOD2)
        clean(busy, hostile)
        assert busy.returncode == 1 and b"locked by another process" in busy.stderr and hostile.sendmail.calls == []
        purged = hostile.run("purge", "--older-than", "1d")
        clean(purged, hostile)
        assert purged.returncode == 0 and purged.stdout == b"purged 1 message(s) older than 1d\n"
        assert warned(purged) == sorted([*BAD, GOOD2]) and (hostile.folder / f"{GOOD2}.json").exists()
    finally:
        os.close(lock)


def test_delete_of_a_bad_entry_is_refused_and_of_a_good_one_done(hostile):
    refused = hostile.run("delete", EML_LINK)
    clean(refused, hostile)
    assert refused.returncode == 1 and b"symlink" in refused.stderr
    assert (hostile.folder / f"{EML_LINK}.eml").is_symlink() and hostile.secret_file.exists()
    done = hostile.run("delete", GOOD)
    assert done.returncode == 0 and not (hostile.folder / f"{GOOD}.json").exists()


@pytest.mark.parametrize("how", ["symlink", "missing", "file"])
def test_a_quarantine_that_is_not_a_folder_is_refused_as_root(hostile, how):
    where = hostile.work / "elsewhere"
    if how == "symlink":
        where.symlink_to(hostile.folder)
    elif how == "file":
        where.write_bytes(b"")
    for args in (["list"], ["show", GOOD], ["purge", "--older-than", "1d"]):
        result = hostile.run(*args, config=hostile.write_config(where))
        clean(result, hostile)
        assert result.returncode == 1 and result.stderr.startswith(f"Error: quarantine {where}".encode()), result.stderr


# --- metadata checks, one table ---------------------------------------------------------------------

GOOD_META = meta(GOOD)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"id": GOOD2}, "its 'id' is not its file name"),
        ({"created": 1}, "'created' is not a date"),
        ({"created": "yesterday"}, "'created' is not a date"),
        ({"size": "9"}, "'size' is not a byte count"),
        ({"size": True}, "'size' is not a byte count"),
        ({"size": -1}, "'size' is not a byte count"),
        ({"recipients": "x"}, "'recipients' is not a list of strings"),
        ({"recipients": [1]}, "'recipients' is not a list of strings"),
        ({"sender": None}, "'sender' is not a string"),
        ({"spam_score": "9"}, "'spam_score' is not a number"),
        ({"virus_names": "Eicar"}, "'virus_names' is not a list of strings"),
        ({"released": [{"at": "x", "by": "y", "to": "z"}]}, "'released' is not a list of releases"),
        ({"headers": [["X-A"]]}, "'headers' is not a list of headers"),
    ],
)
def test_validate_refuses_wrong_types(change, why):
    with pytest.raises(ValueError, match=f"^{why}$"):
        held.validate({**GOOD_META, **change}, GOOD)


def test_validate_keeps_everything_and_types_it():
    entry = held.validate({**GOOD_META, "unknown": [1]}, GOOD)
    assert entry.created == datetime(2026, 1, 1, tzinfo=UTC) and entry.recipients == ("bob@example.net",)
    assert entry.meta["unknown"] == [1] and held.validate({**GOOD_META, "created": "2026-01-01T00:00"}, GOOD).created.tzinfo
    for reason in ("spam", "virus", "unscannable"):
        assert held.validate({**GOOD_META, "reason": reason}, GOOD).reason == reason
    assert held.validate({k: v for k, v in GOOD_META.items() if k not in ("released", "subject")}, GOOD).released == ()


def test_a_hard_link_or_huge_metadata_is_a_bad_entry(tmp_path):
    (tmp_path / f"{GOOD}.json").write_text(json.dumps(GOOD_META))
    os.link(tmp_path / f"{GOOD}.json", tmp_path / "other")
    (tmp_path / f"{GOOD2}.json").write_bytes(b" " * (held.META_LIMIT + 1))
    with held.Folder(str(tmp_path)) as folder:
        with pytest.raises(held.BadEntry, match="2 links"):
            folder.metadata(GOOD)
        with pytest.raises(held.BadEntry, match="more than"):
            folder.metadata(GOOD2)


def test_the_store_leaves_no_descriptor_open(tmp_path):
    from mailfilter.actions import quarantine
    from mailfilter.spool import Spool

    folder = quarantine.FolderStore(str(tmp_path / "q"))
    with Spool.of(BODY) as spool:
        i = folder.store(spool, {"reason": "spam", "sender": "a@b", "recipients": ["c@d"]})
    before = sorted(os.listdir("/proc/self/fd"))
    assert [e.id for e in folder.entries()[0]] == [i] and folder.get(i).size == len(BODY)
    with folder.open_message(i) as (_entry, fh):
        assert fh.read() == BODY
    folder.release(i, "admin", lambda data, sender, to: None)
    folder.delete(i)
    assert sorted(os.listdir("/proc/self/fd")) == before


# --- the journal: never a planted symlink followed, never a FIFO waited on ----------------------------


def _journal(code: str, *args: str) -> subprocess.CompletedProcess:
    """Run CODE in a fresh interpreter with a timeout (a FIFO would hang the old code for ever)."""
    # argv: this interpreter and test code. No shell.
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, timeout=TIMEOUT, cwd=tempfile.gettempdir(), check=False)


def test_journal_read_skips_a_symlink_and_a_fifo(hostile):
    folder = hostile.work / "journal"
    folder.mkdir()
    day = datetime(2026, 11, 26, tzinfo=UTC)
    line = json.dumps({"time": "2026-11-26T10:00:00+00:00", "verdict": "clean"}) + "\n"
    (folder / "2026-11-26.jsonl").write_text(line)
    planted = {"time": "2026-11-27T10:00:00+00:00", "sender": hostile.secret.decode()}
    secret = hostile.root_only("secret.jsonl", json.dumps(planted).encode())
    (folder / "2026-11-27.jsonl").symlink_to(secret)
    os.mkfifo(folder / "2026-11-28.jsonl")
    code = (
        "import sys, json; from datetime import datetime; from mailfilter import journal;"
        "print(json.dumps(list(journal.read(sys.argv[1], datetime.fromisoformat(sys.argv[2]), datetime.fromisoformat(sys.argv[3])))))"
    )
    result = _journal(code, str(folder), day.isoformat(), (day + timedelta(days=3)).isoformat())
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [json.loads(line)] and hostile.secret not in result.stdout + result.stderr


def test_journal_record_never_writes_through_a_symlink_or_waits_on_a_fifo(hostile):
    folder = hostile.work / "journal"
    folder.mkdir()
    target = hostile.root_only("target", b"")
    (folder / "2026-11-26.jsonl").symlink_to(target)
    os.mkfifo(folder / "2026-11-27.jsonl")
    code = (
        "import sys; from mailfilter import journal\n"
        "for day in sys.argv[2:]:\n"
        "    try:\n"
        "        journal.record(sys.argv[1], {'time': day + 'T10:00:00+00:00'})\n"
        "    except OSError as exc:\n"
        "        print(day, type(exc).__name__)\n"
    )
    result = _journal(code, str(folder), "2026-11-26", "2026-11-27")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().split() == ["2026-11-26", "OSError", "2026-11-27", "OSError"]
    assert target.read_bytes() == b""
