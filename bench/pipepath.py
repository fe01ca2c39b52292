"""The pipe path: one process per message, as Postfix's pipe(8) runs a content filter.

Variants, each reinjecting through bench/sendmail-null:
  mailfilter     the installed console script `mailfilter pipe -q ID -f SENDER -- RCPT`, with a resident
                 `mailfilter worker` (as mailfilter-test) that it hands the message to; its CPU counts as the filter's
  mailfilter-alone  the same command with no worker ([pipe] worker = ''): the whole pipeline in each process
  myfilter       bench/myfilter.sh, the old recipe (spamc to a temp file, clamscan on it), tiny test signatures
  myfilter-big   the same with a synthetic database of hundreds of thousands of hash signatures
  floor          bench/floor.sh: spamc | clamdscan --stream -, in a shell, no Python

Every round sends each message of the same sample through every variant in turn, in an order
that alternates forwards and backwards, so that other work on the machine falls on all of them
alike. A variant's figure for a round is its mean per message; ratios are taken to the floor of
the same round. CPU is the filter's own (the process and what it waited for), and, separately,
what spamd and clamd spent for it.
"""

from __future__ import annotations

import grp
import pwd
import random
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from measure import BenchError, alternated, group_cpu, loadavg, process_cpu, run_process, summary
from messages import Message

HERE = Path(__file__).resolve().parent
SENDMAIL = HERE / "sendmail-null"
SENDER, RECIPIENT = "alice@example.org", "bob@example.net"
PIPE_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}  # pipe(8) sets no HOME and PATH=/usr/bin:/bin
TIMEOUT = 120.0
VARIANTS = ("floor", "mailfilter", "mailfilter-alone", "myfilter", "myfilter-big")  # in turn, forwards and backwards
OK_STATUS = {"mailfilter": {0}, "mailfilter-alone": {0}, "myfilter": {0}, "myfilter-big": {0}, "floor": {0, 1}}  # floor: 1 = virus
WORKER_USER = "mailfilter-test"  # created by scripts/setup; the worker refuses root, as pipe(8) refuses user=root


@dataclass(frozen=True)
class Setup:
    """What the variants need: the daemons' addresses and pids, the mailfilter config and the signature folders."""

    mailfilter: Path
    config: Path  # [pipe] worker = '': mailfilter-alone
    worker_config: Path  # the config the worker serves: mailfilter
    worker_pid: int
    spamd: tuple[str, int]
    clamd_conf: str
    daemon_pgids: tuple[int, ...]
    work: Path
    small_db: Path
    big_db: Path


def write_signatures(folder: Path, tests_signatures: Path, count: int, seed: int) -> int:
    """FOLDER gets the test signatures and COUNT random MD5 hash signatures (.hdb); return how many
    signatures clamscan reports loading from it (raises if it cannot load them)."""
    folder.mkdir(parents=True)
    for sig in tests_signatures.glob("mailfilter-test.*"):
        (folder / sig.name).write_bytes(sig.read_bytes())
    if count:
        rng = random.Random(seed)
        lines = (f"{rng.getrandbits(128):032x}:{rng.randint(1_000, 5_000_000)}:Bench.Synthetic-{i}\n" for i in range(count))
        (folder / "bench-synthetic.hdb").write_text("".join(lines))
    probe = folder.parent / f"{folder.name}.probe"
    probe.write_text("probe\n")
    proc = subprocess.run(
        ["/usr/bin/clamscan", f"--database={folder}", str(probe)], capture_output=True, text=True, timeout=300, check=False
    )
    probe.unlink()
    known = [line.split(":")[1] for line in proc.stdout.splitlines() if line.startswith("Known viruses:")]
    if proc.returncode != 0 or not known:
        raise BenchError(f"clamscan cannot load {folder}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return int(known[0])


def as_worker_user(argv: list[str]) -> list[str]:
    """ARGV run as WORKER_USER, as pipe(8) runs the filter (user=): the client hands a message only to a worker
    socket of its own user, so as root it would fall back to the whole pipeline. setpriv costs one exec (about 1 ms)."""
    user = pwd.getpwnam(WORKER_USER)
    return ["/usr/bin/setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--", *argv]


def _command(variant: str, setup: Setup) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of one variant, with the envelope pipe(8) would pass."""
    host, port = setup.spamd
    if variant in ("mailfilter", "mailfilter-alone"):
        argv = [str(setup.mailfilter), "pipe", "-q", "BENCH1", "-f", SENDER, "--", RECIPIENT]
        config = setup.worker_config if variant == "mailfilter" else setup.config
        if variant == "mailfilter":
            argv = as_worker_user(argv)
        return argv, {**PIPE_ENV, "MAILFILTER_CONFIG": str(config), "TMPDIR": str(setup.work)}
    if variant == "floor":
        return [str(HERE / "floor.sh")], {**PIPE_ENV, "SPAMD_HOST": host, "SPAMD_PORT": str(port), "CLAMD_CONF": setup.clamd_conf}
    db = setup.big_db if variant == "myfilter-big" else setup.small_db
    env = {
        **PIPE_ENV,
        "INSPECT_DIR": str(setup.work),
        "SENDMAIL": f"{SENDMAIL} -i",
        "VIRUSADMIN": "admin@example.net",
        "FILTER_SPAMC": f"/usr/bin/spamc -d {host} -p {port}",
        "CLAMSCAN_OPTIONS": f"--database={db}",
    }
    return [str(HERE / "myfilter.sh"), "-f", SENDER, "--", RECIPIENT], env


def run_one(variant: str, setup: Setup, message: Path) -> dict:
    """One message through one variant: wall and CPU seconds (the worker's included); raises if the filter failed."""
    argv, env = _command(variant, setup)
    worker_before = process_cpu(setup.worker_pid) if variant == "mailfilter" else 0.0
    run = run_process(argv, message, env, TIMEOUT)
    if run.status not in OK_STATUS[variant]:
        raise BenchError(f"{variant} on {message.name} exited {run.status}: {run.output[-2000:].decode('utf-8', 'replace')}")
    worker_cpu = process_cpu(setup.worker_pid) - worker_before if variant == "mailfilter" else 0.0
    return {"wall": run.wall, "cpu": run.cpu + worker_cpu}


def prepare_worker(folder: Path, sections: dict[str, dict]) -> dict[str, dict]:
    """FOLDER (owned by the worker's user) with what the worker writes, and its config sections: SECTIONS with
    its own quarantine, state, journal, log and socket there, and a copy of the sendmail stand-in it can run."""
    user = pwd.getpwnam(WORKER_USER)
    folder.mkdir(mode=0o755)
    shutil.copy(SENDMAIL, folder / SENDMAIL.name)
    own = {
        **sections,
        "delivery": {"sendmail": [str(folder / SENDMAIL.name)]},
        "quarantine": {"dir": str(folder / "quarantine")},
        "report": {**sections["report"], "state_dir": str(folder / "state"), "journal_dir": str(folder / "journal")},
        "log": {"syslog": False, "file": str(folder / "worker.log")},
        "pipe": {"worker": str(folder / "run" / "worker.sock")},
    }
    for path in [folder, *folder.iterdir()]:
        shutil.chown(path, user.pw_uid, user.pw_gid)
    return own


def start_worker(mailfilter: Path, config: Path, socket_path: Path, timeout: float = 60.0) -> subprocess.Popen:
    """`mailfilter worker` as WORKER_USER, in a session of its own; returns once its socket answers."""
    user = pwd.getpwnam(WORKER_USER)
    proc = subprocess.Popen(
        [str(mailfilter), "--config", str(config), "worker"],
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[g.gr_gid for g in grp.getgrall() if WORKER_USER in g.gr_mem],
        env={**PIPE_ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"mailfilter worker exited {proc.returncode}: {proc.stderr.read().decode('utf-8', 'replace')[-2000:]}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(socket_path))
                return proc
            except OSError:
                time.sleep(0.05)  # polling for readiness, not waiting for it
    proc.kill()
    raise BenchError(f"mailfilter worker did not listen on {socket_path} within {timeout:g} s")


def stop_worker(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _daemon_cpu(setup: Setup) -> float:
    return sum(group_cpu(*setup.daemon_pgids).values())


def measure(setup: Setup, sample: list[Message], files: dict[str, Path], rounds: int) -> dict:
    """ROUNDS rounds over SAMPLE, every message through every variant in turn; per-round means per message,
    ratios to the floor, and their summaries."""
    warm = min(sample, key=lambda m: m.size)
    for variant in VARIANTS:  # page cache, .pyc files, spamd children: not part of any figure
        run_one(variant, setup, files[warm.name])
    per_round = []
    for index in range(rounds):
        figures = {v: {"wall": 0.0, "cpu": 0.0, "daemon_cpu": 0.0, "per_message_wall": {}} for v in VARIANTS}
        load = loadavg()
        for position, message in enumerate(sample):
            for variant in alternated(VARIANTS, index * len(sample) + position):
                daemons_before = _daemon_cpu(setup)
                run = run_one(variant, setup, files[message.name])
                figures[variant]["daemon_cpu"] += _daemon_cpu(setup) - daemons_before
                figures[variant]["wall"] += run["wall"]
                figures[variant]["cpu"] += run["cpu"]
                figures[variant]["per_message_wall"][message.name] = run["wall"]
        for row in figures.values():
            for key in ("wall", "cpu", "daemon_cpu"):
                row[key] /= len(sample)
        per_round.append({"loadavg": load, **figures})
    floor = [r["floor"] for r in per_round]
    result = {"sample": [{"name": m.name, "kind": m.kind, "bytes": m.size} for m in sample], "variants": {}}
    for variant in VARIANTS:
        rows = [r[variant] for r in per_round]
        result["variants"][variant] = {
            "wall_s": summary(r["wall"] for r in rows),
            "cpu_s": summary(r["cpu"] for r in rows),
            "daemon_cpu_s": summary(r["daemon_cpu"] for r in rows),
            "total_cpu_s": summary(r["cpu"] + r["daemon_cpu"] for r in rows),
            "wall_vs_floor": summary(r["wall"] / f["wall"] for r, f in zip(rows, floor, strict=True)),
            "total_cpu_vs_floor": summary(
                (r["cpu"] + r["daemon_cpu"]) / (f["cpu"] + f["daemon_cpu"]) for r, f in zip(rows, floor, strict=True)
            ),
        }
    result["rounds"] = per_round
    return result
