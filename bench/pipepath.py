"""The pipe path: one process per message, as Postfix's pipe(8) runs a content filter.

Variants, each reinjecting through bench/sendmail-null:
  mailfilter     the installed console script `mailfilter pipe -q ID -f SENDER -- RCPT`
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

import random
import subprocess
from dataclasses import dataclass
from pathlib import Path

from measure import BenchError, alternated, group_cpu, loadavg, run_process, summary
from messages import Message

HERE = Path(__file__).resolve().parent
SENDMAIL = HERE / "sendmail-null"
SENDER, RECIPIENT = "alice@example.org", "bob@example.net"
PIPE_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}  # pipe(8) sets no HOME and PATH=/usr/bin:/bin
TIMEOUT = 120.0
VARIANTS = ("floor", "mailfilter", "myfilter", "myfilter-big")  # in turn, forwards and backwards: the floor next to mailfilter
OK_STATUS = {"mailfilter": {0}, "myfilter": {0}, "myfilter-big": {0}, "floor": {0, 1}}  # floor: clamdscan's 1 = virus


@dataclass(frozen=True)
class Setup:
    """What the variants need: the daemons' addresses and pids, the mailfilter config and the signature folders."""

    mailfilter: Path
    config: Path
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


def _command(variant: str, setup: Setup) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of one variant, with the envelope pipe(8) would pass."""
    host, port = setup.spamd
    if variant == "mailfilter":
        argv = [str(setup.mailfilter), "pipe", "-q", "BENCH1", "-f", SENDER, "--", RECIPIENT]
        return argv, {**PIPE_ENV, "MAILFILTER_CONFIG": str(setup.config), "TMPDIR": str(setup.work)}
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
    """One message through one variant: wall and CPU seconds; raises if the filter failed."""
    argv, env = _command(variant, setup)
    run = run_process(argv, message, env, TIMEOUT)
    if run.status not in OK_STATUS[variant]:
        raise BenchError(f"{variant} on {message.name} exited {run.status}: {run.output[-2000:].decode('utf-8', 'replace')}")
    return {"wall": run.wall, "cpu": run.cpu}


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
