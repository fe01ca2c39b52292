"""mailfilter's benchmark driver; bench/run prepares the machine and calls it.

Measures, in one run on this machine: the pipe path (one process per message) against
the old myfilter.sh recipe and a shell floor; the start-up of `mailfilter pipe`; the two
scanners at once against one after the other; the
milter path through private Postfix instances against spamass-milter + clamav-milter,
Postfix alone and the spamd ceiling; peak RSS; and where messages over [spamd] max_size
go. Writes bench/results/latest.{md,json,png}. Needs root (private Postfix instances)
and the daemons of scripts/daemons.py in $MAILFILTER_RUN_DIR (started if absent).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[1:1] = [str(ROOT / "tests"), str(ROOT / "scripts")]

import concurrency  # noqa: E402
import maxsize  # noqa: E402
import messages  # noqa: E402
import milterpath  # noqa: E402
import mimewalk  # noqa: E402
import pipepath  # noqa: E402
import policycost  # noqa: E402
import report  # noqa: E402
import startup  # noqa: E402
import wrapcost  # noqa: E402
from measure import BenchError, loadavg, peak_rss_kib  # noqa: E402

import daemons  # noqa: E402 - scripts/daemons.py, found through the path set just above

BENCH_RUN_DIR = "/tmp/mailfilter-bench-daemons"
RESULTS = HERE / "results"
PACKAGES = ("postfix", "spamassassin", "spamc", "clamav", "clamav-daemon", "spamass-milter", "clamav-milter")


@dataclass(frozen=True)
class Plan:
    """How much to measure: rounds, the pipe sample, messages per milter batch by concurrency, the RSS check."""

    mode: str
    rounds: int
    pipe_messages: int
    counts: dict[int, int] = field(default_factory=dict)
    large_count: int = 16
    large_bytes: int = 20_000_000
    signatures: int = 300_000
    corpus: int = 40


PLANS = {
    "full": Plan("full", rounds=8, pipe_messages=10, counts={1: 10, 4: 24, 16: 48}),
    "quick": Plan("quick", rounds=3, pipe_messages=4, counts={1: 6, 4: 12, 16: 32}),
}


def base_config(work: Path, state: dict) -> dict[str, dict]:
    """The mailfilter config both paths share: the bench daemons, our sendmail stand-in, everything else under WORK."""
    return {
        "spamd": {"host": state["spamd_host"], "port": state["spamd_port"], "timeout": 60},
        "clamd": {"socket": state["clamd_socket"], "timeout": 60, "config_file": state["clamd_config"]},
        "delivery": {"sendmail": [str(pipepath.SENDMAIL)]},
        "quarantine": {"dir": str(work / "quarantine")},
        "report": {"admin": "admin@example.net", "state_dir": str(work / "state"), "journal_dir": str(work / "journal")},
        "metrics": {"textfile": ""},
        "log": {"syslog": False, "file": str(work / "pipe.log")},
    }


def versions() -> dict[str, str]:
    """Debian package versions of the software under test, and Python's."""
    out = subprocess.run(
        ["/usr/bin/dpkg-query", "-W", "-f", "${Package} ${Version}\\n", *PACKAGES], capture_output=True, text=True, check=False
    )
    found = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    return {**found, "python": platform.python_version()}


def source_version() -> str:
    """The commit of the tree under test, with `+changes` when mailfilter/ differs from it (the tree is shared)."""

    def git(*args: str) -> str:
        return subprocess.run(["/usr/bin/git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False).stdout.strip()

    changed = git("status", "--porcelain", "--", "mailfilter")
    return f"{git('rev-parse', '--short', 'HEAD') or 'unknown'}{'+changes' if changed else ''}"


def run(plan: Plan, seed: int, state: dict, work: Path) -> dict:
    """Every measurement, in order; returns the results without the targets."""
    from conftest import write_config  # tests/conftest.py
    from postfix import filter_venv  # tests/postfix.py

    corpus = messages.build(seed, plan.corpus)
    folder = work / "messages"
    folder.mkdir()
    files = {}
    for message in corpus:
        files[message.name] = folder / f"{message.name}.eml"
        files[message.name].write_bytes(message.data)
    sections = {**base_config(work, state), "pipe": {"worker": ""}}
    config = Path(write_config(work / "pipe.toml", sections))
    worker_sections = pipepath.prepare_worker(work / "worker", sections)
    worker_config = Path(write_config(work / "worker" / "pipe.toml", worker_sections))
    spamd = (state["spamd_host"], state["spamd_port"])
    mailfilter = filter_venv()  # installed as an admin would (not editable), readable by the worker's user
    signatures = {
        "small": pipepath.write_signatures(work / "db-small", daemons.SIGNATURES, 0, seed),
        "big": pipepath.write_signatures(work / "db-big", daemons.SIGNATURES, plan.signatures, seed),
    }
    ham = messages.typical_ham(corpus)
    digest = hashlib.sha256(b"".join(m.data for m in corpus)).hexdigest()
    results: dict = {"corpus": {"messages": len(corpus), "bytes": sum(m.size for m in corpus), "sha256": digest}, "signatures": signatures}
    worker = pipepath.start_worker(mailfilter, worker_config, Path(worker_sections["pipe"]["worker"]))
    try:
        setup = pipepath.Setup(
            mailfilter=mailfilter,
            config=config,
            worker_config=worker_config,
            worker_pid=worker.pid,
            spamd=spamd,
            clamd_conf=state["clamd_config"],
            daemon_pgids=(state["pids"]["spamd"], state["pids"]["clamd"]),
            work=work,
            small_db=work / "db-small",
            big_db=work / "db-big",
        )
        argv = [str(mailfilter), "pipe", "-q", "BENCH0", "-f", pipepath.SENDER, "--", pipepath.RECIPIENT]
        python = mailfilter.parent / "python"
        _say("start-up: -X importtime and wall, with and without the worker")
        results["startup"] = {
            name: startup.measure(python, run, files[ham.name], {**pipepath.PIPE_ENV, "MAILFILTER_CONFIG": str(path)}, plan.rounds)
            for name, run, path in (("worker", pipepath.as_worker_user(argv), worker_config), ("alone", argv, config))
        }
        _say(f"pipe path: {plan.rounds} rounds x {len(pipepath.VARIANTS)} variants x {plan.pipe_messages} messages")
        results["pipe"] = pipepath.measure(setup, messages.pipe_sample(corpus, plan.pipe_messages), files, plan.rounds)
        results["pipe"]["worker_peak_rss_kib"] = peak_rss_kib(worker.pid)
        _say("mailfilter-pipe: the wrapper's cost per message (/bin/true; the pipe client as root, filtering alone)")
        env = {**pipepath.PIPE_ENV, "MAILFILTER_CONFIG": str(config), "TMPDIR": str(work)}
        commands = {"true": ["/bin/true"], "pipe": argv}
        results["wrapper"] = wrapcost.measure(wrapcost.wrapper_path(), commands, files[ham.name], env, plan.rounds)
    finally:
        pipepath.stop_worker(worker)
    _say("spamd and ClamAV at once against one after the other")
    results["concurrency"] = concurrency.measure(config, corpus, plan.rounds)
    _say("the deep virus scan: the MIME walk's cost, and pipeline.run with and without it")
    from mailfilter import config as configmod

    results["mimewalk"] = mimewalk.measure(corpus, configmod.load(str(config)), plan.rounds)
    _say("the policy's own cost: attachment check, sender lists, per-recipient rules")
    results["policycost"] = policycost.measure(corpus, {k: sections[k] for k in ("spamd", "clamd")}, plan.rounds)
    _say("[spamd] max_size: counting proxies")
    largest = max(corpus, key=lambda m: m.size)
    results["maxsize"] = maxsize.check(
        mailfilter,
        sections,
        work,
        {"under": messages.sized(seed, 480_000), "over": messages.sized(seed, 560_000), largest.name: largest.data},
    )
    results.update(_milter(plan, seed, corpus, files[ham.name], ham, sections, state, work))
    return results


def _milter(
    plan: Plan, seed: int, corpus: list[messages.Message], source_file: Path, ham: messages.Message, sections: dict, state: dict, work: Path
) -> dict:
    """The milter path: the wirings, the rounds, peak RSS, and the large-message check."""
    from mailfilter import config as configmod

    spamd = (state["spamd_host"], state["spamd_port"])
    load = milterpath.Load(
        source_file=source_file,
        mix=[messages.Message(m.name, m.kind, m.data.replace(b"\n", b"\r\n")) for m in corpus],
        counts=plan.counts,
        daemons={"spamd": state["pids"]["spamd"], "clamd": state["pids"]["clamd"]},
        spamd_max_size=configmod.SpamdConfig().max_size,
    )
    spamd_log = milterpath.SpamdLog(Path(state["run_dir"]) / "spamd.log")
    sink, sink_port = milterpath.start_smtp_sink(work)
    wirings: dict[str, milterpath.Wiring] = {}
    try:
        for name in milterpath.CONFIGS:
            wirings[name] = milterpath.wire(name, work, sink_port, sections, spamd, state["clamd_socket"])
        _say(f"milter path: {plan.rounds} rounds x concurrency {list(plan.counts)} x {len(milterpath.CONFIGS)} configurations + ceiling")
        measured = milterpath.measure(wirings, load, spamd, spamd_log, plan.rounds)
        rss = {f.name: peak_rss_kib(f.pid) for w in wirings.values() for f in w.filters}
        _say(f"milter peak RSS: {plan.large_count} concurrent {plan.large_bytes / 1e6:.0f} MB messages")
        big = messages.large(seed, plan.large_bytes).replace(b"\n", b"\r\n")
        large = milterpath.large_messages(wirings["mailfilter"], wirings["mailfilter"].filters[0], big, plan.large_count)
    finally:
        for wiring in wirings.values():
            wiring.close()
        sink.close()
    kinds = {kind: sum(1 for m in corpus if m.kind == kind) for kind in ("ham", "spam", "virus")}
    measured.update(
        source_message={"name": ham.name, "bytes": ham.size},
        mix=f"{len(corpus)} messages: {kinds['ham']} ham, {kinds['spam']} spam, {kinds['virus']} viruses, "
        f"{min(m.size for m in corpus) / 1000:.1f} kB to {max(m.size for m in corpus) / 1e6:.1f} MB",
        counts={str(c): n for c, n in plan.counts.items()},
        spamd_check=_spamd_check(measured["rounds"]),
    )
    return {"milter": measured, "peak_rss_kib": rss, "large": large}


def _spamd_check(rounds: list[dict]) -> dict[str, dict[str, int]]:
    """spamd scans seen in its log against those expected, over all rounds, for the two filters that use spamd."""
    check = {}
    for name in ("mailfilter", "pair"):
        cells = [cell[name] for r in rounds for cell in r.values()]
        check[name] = {
            "seen": sum(sum(c["spamd_scans"].values()) for c in cells),
            "expected": sum(sum(c["spamd_expected"].values()) for c in cells),
        }
    return check


NOTES = [
    "Pipe path: each variant runs the same sample one message at a time, as pipe(8) starts one process per message, "
    "with pipe(8)'s environment (PATH=/usr/bin:/bin, no HOME) and the message file on standard input. Wall is the "
    "process's, exec to exit; filter CPU is user+system of the process and everything it waited for (spamc, clamscan, "
    "sendmail); spamd & clamd CPU is what their process groups used during the variant's messages (10 ms ticks, divided "
    "by the sample size). Every variant reinjects through bench/sendmail-null, which reads the message and keeps nothing; "
    "the floor has no reinjection at all.",
    "myfilter-big: a signature folder of random MD5 hash signatures generated now (as many as the table says, checked with "
    "clamscan's `Known viruses:`), so that clamscan's per-message database load shows as it does in production (Debian's "
    "full database has millions of signatures and takes far longer).",
    "Milter path: three private Postfix instances (tests/postfix.py, no chroot, loopback only) run side by side, each "
    "relaying to one Postfix smtp-sink; in_flow_delay = 0s and message_size_limit = 60 MB. Between batches the queue is "
    "drained, so no batch pays for the previous one's deliveries. Every milter listens on a unix socket, as mailfilter's "
    "and Debian's defaults do (over TCP, mailfilter's listener has TCP_NODELAY: bench/miltertcp.py compares the two). spamass-milter "
    "runs without Debian's `-i 127.0.0.1`, which would skip all mail from localhost; clamav-milter rejects infected mail, "
    "as mailfilter does by default.",
    "Throughput targets use smtp-source's batches (one typical ham); latency targets use the smtplib clients' batches "
    "(the corpus mix, viruses rejected with 5xx included). With a few dozen messages per batch, p99 is close to the "
    "batch's slowest message.",
    "The spamd ceiling is spamc (with -x) at the same concurrency on the same ham, without Postfix: spamd here has "
    "--max-children=4 (scripts/daemons.py) on 2 cores.",
    "CPU per message (milter path, smtp-source batches) is what each part used during a batch, divided by its messages "
    "(10 ms ticks): the filter (the mailfilter milter process; spamass-milter with the spamc it forks, plus clamav-milter), "
    "the Postfix instance (all its processes), spamd and clamd; for the ceiling, the spamc processes and spamd.",
    "Peak RSS is VmHWM from /proc; for the pair it is per daemon (spamass-milter also forks a short-lived spamc per "
    "message, not counted). The large-message check uses a freshly started `mailfilter milter`.",
    "Other work on the machine (other engineers' test runs) shows as spread between rounds; the load averages above say "
    "how busy it was. CPU-time figures move far less with it than wall-time ones.",
]


STARTED = time.monotonic()


def _say(text: str) -> None:
    print(f"bench: [{time.monotonic() - STARTED:4.0f} s] {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="mailfilter benchmark: pipe path, start-up, milter path; results in bench/results/.")
    parser.add_argument("--quick", action="store_true", help="a smoke run of about two minutes (fewer rounds and messages)")
    parser.add_argument("--rounds", type=int, help="rounds per figure (default: 8, or 3 with --quick)")
    parser.add_argument("--seed", type=int, default=20261127, help="seed of the generated corpus and signatures")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"where latest.md/json/png go (default: {RESULTS})")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root: it runs private Postfix instances")
    plan = PLANS["quick" if args.quick else "full"]
    if args.rounds:
        plan = Plan(**{**asdict(plan), "rounds": args.rounds})
    began = float(os.environ.get("BENCH_STARTED", time.time()))
    os.environ.setdefault("MAILFILTER_RUN_DIR", BENCH_RUN_DIR)
    loadavg_before = loadavg()
    version = source_version()
    work = Path(tempfile.mkdtemp(prefix="mailfilter-bench-", dir="/tmp"))
    work.chmod(0o755)  # Postfix's and the milters' unprivileged processes reach into it
    try:
        state = daemons.start()
        results = run(plan, args.seed, state, work)
    except (BenchError, daemons.DaemonError) as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["meta"] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": plan.mode,
        "mailfilter": version,
        "seed": args.seed,
        "rounds": plan.rounds,
        "plan": {**asdict(plan), "counts": {str(c): n for c, n in plan.counts.items()}},
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "versions": versions(),
        "loadavg_before": loadavg_before,
        "loadavg_after": loadavg(),
        "wall_s": time.time() - began,
    }
    results["notes"] = NOTES
    results = {"meta": results.pop("meta"), "targets": report.targets(results), **results}
    paths = report.write(results, args.out)
    for row in results["targets"]:
        _say(f"{row['verdict']}  {row['target']}: {row['figure']}")
    _say(f"wrote {', '.join(str(p) for p in paths.values())} in {results['meta']['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
