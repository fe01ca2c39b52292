"""The after-queue pipe wiring: `content_filter = mailfilter:dummy`, pipe(8) running `mailfilter pipe`, sendmail reinjecting.

    bench/pipewiring.py [--messages N] [--rounds R] [--clients 4 16] [--out DIR]     (root)

For each concurrency C: a spamd with C children kept forked (bench/afterqueue.py's Spamd), the shared clamd
(scripts/daemons.py), and two private Postfix instances with tests/postfix.py's "content_filter" wiring (the
pipe(8) service `mailfilter pipe -q ${queue_id} -f ${sender} -- ${recipient}` at maxproc C, the filter venv's
console script, each instance relaying to its own sink):
  pipe         [pipe] worker = '': each pipe process filters its message itself
  pipe+worker  a `mailfilter worker` run as tests/test_worker_real.py's postfix_worker runs it (the pipe user, group
               postdrop, the instance's MAIL_CONFIG and TMPDIR); the pipe processes hand their messages to it
  ceiling      C spamc processes at once on one of the messages, no Postfix: spamd's own pace (bench/milterpath.py)
Postfix runs with in_flow_delay = 0s (measure the filter, not flow control, as bench/milterpath.py does) and with
max_use and max_idle high enough that every pipe(8) process lives through the run: the CPU of the commands it
ran is read from it.

Load: bench/afterqueue.py's closed loop, C clients each submitting one ~4 kB ham at a time over SMTP and waiting
until the sink has it: msgs/s = messages / wall, latency = submission to arrival at the sink (p50, p99).
CPU per message, read once the queue has drained: the pipe commands with what they ran (sendmail, postdrop) as
pipe(8) collected them, the worker's process, Postfix (the rest of the master's process group), spamd and clamd.
Configurations alternate within a round, and the ratio to the ceiling is taken within each round.
Results: OUT/pipewiring.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[1:1] = [str(ROOT / "tests"), str(ROOT / "scripts"), str(HERE)]

import milterpath  # noqa: E402
from afterqueue import RUN_DIR, SIZE, Arrivals, Spamd, batch, corpus  # noqa: E402
from measure import BenchError, alternated, group_cpu, percentile, process_cpu, reaped_cpu, summary  # noqa: E402
from test_worker_real import SUMMARY, WorkerProcess  # noqa: E402

import daemons  # noqa: E402
from conftest import write_config  # noqa: E402
from postfix import PIPE_ARGS, PIPE_GROUP, PostfixInstance, filter_sections, filter_venv  # noqa: E402

CONFIGS = ("pipe", "pipe+worker")
ORDER = ("ceiling", *CONFIGS)  # forwards, then backwards
TAGS = {"pipe": "mailfilter/pipe", "pipe+worker": "mailfilter/worker"}  # who wrote the summary lines
MARK = b"X-Virus-Status: Clean"  # the filter saw the message
SCANNER_TIMEOUT = 60.0
POSTFIX = {"in_flow_delay": "0s", "max_use": "100000", "max_idle": "3600s"}
LABELS = {"ceiling": "spamd ceiling (spamc)", "pipe": "pipe", "pipe+worker": "pipe + worker"}


class Wiring:
    """One configuration: a content_filter Postfix whose pipe service runs CLIENTS filters at once, the arrivals at its
    sink and, for pipe+worker, the worker."""

    def __init__(self, name: str, clients: int, mailfilter: Path, spamd: Spamd, clamd_socket: str) -> None:
        self.name = name
        self.postfix = PostfixInstance()
        self.worker: WorkerProcess | None = None
        self.log = self.postfix.filter_dir / "mailfilter.log"
        try:
            folder = self.postfix.filter_dir
            sections = filter_sections(folder, (spamd.host, spamd.port), clamd_socket, SCANNER_TIMEOUT)
            socket_path = str(folder / "run" / "worker.sock") if name == "pipe+worker" else ""
            config = write_config(folder / "mailfilter.toml", {**sections, "pipe": {"worker": socket_path}})
            argv = [str(mailfilter), *PIPE_ARGS]
            self.postfix.start("content_filter", argv=argv, config=config, pipe_maxproc=clients, **POSTFIX)
            if socket_path:
                env = {"MAIL_CONFIG": str(self.postfix.config_dir), "TMPDIR": str(folder / "tmp")}
                self.worker = WorkerProcess(mailfilter, config, folder, "worker", group=PIPE_GROUP, env=env)
                self.worker.expect(b"READY=1")
        except BaseException:
            self.close()
            raise
        self.arrivals = Arrivals(self.postfix)

    def cpu(self, scanners: dict[str, int]) -> tuple[dict[str, float], set[int]]:
        """CPU seconds so far of each part (pipe commands, worker, Postfix, the SCANNERS' process groups), and the
        pids of the pipe(8) processes they were read from."""
        master = self.postfix.master_pid()
        if master is None:
            raise BenchError(f"{self.name}: Postfix is not running\n{self.postfix.diagnostics()}")
        groups = group_cpu(master, *scanners.values())
        pipes = reaped_cpu(master, "pipe")
        parts = {
            "pipe": sum(pipes.values()),
            "worker": process_cpu(self.worker.pid) if self.worker else 0.0,
            "postfix": groups[master] - sum(pipes.values()),
        }
        return parts | {name: groups[pgid] for name, pgid in scanners.items()}, set(pipes)

    def check(self) -> None:
        """Fail unless the last message was filtered and every summary line so far is the expected process's."""
        if MARK not in self.arrivals.last:
            raise BenchError(f"{self.name}: the messages were not filtered (no {MARK!r}):\n{self.arrivals.last[:1500]!r}")
        tags = {tag for tag, *_ in SUMMARY.findall(self.log.read_text(errors="replace"))}
        if tags != {TAGS[self.name]}:
            raise BenchError(f"{self.name}: summary lines by {sorted(tags)}, expected only {TAGS[self.name]}\n{self.postfix.diagnostics()}")

    def close(self) -> None:
        try:
            if self.worker is not None:
                self.worker.close()
        finally:
            self.postfix.close()


def measured(wiring: Wiring, bodies: list[bytes], clients: int, tag: str, scanners: dict[str, int]) -> dict[str, float]:
    """One closed-loop batch through WIRING: msgs/s, p50 and p99 latency, and CPU seconds per message of each part."""
    before, pipes = wiring.cpu(scanners)
    wall, latencies = batch(wiring.postfix, wiring.arrivals, bodies, clients, tag)
    milterpath.wait_drained(wiring.postfix)  # every pipe command has exited and been reaped
    after, still = wiring.cpu(scanners)
    if pipes - still:
        raise BenchError(f"{wiring.name}: pipe(8) processes {sorted(pipes - still)} exited during the batch: their commands' CPU is lost")
    wiring.check()
    count = len(latencies)
    figures = {"rate": count / wall, "p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99)}
    return figures | {part: (after[part] - before[part]) / count for part in after}


def ceiling(spamd: Spamd, clients: int, count: int, sample: Path) -> dict[str, float]:
    """COUNT spamc runs on SAMPLE, CLIENTS at once (bench/milterpath.py): msgs/s, CPU per message of spamc and spamd."""
    load = milterpath.Load(source_file=sample, mix=[], counts={clients: count}, daemons={"spamd": spamd.proc.pid}, spamd_max_size=0)
    figures = milterpath._ceiling((spamd.host, spamd.port), clients, load)
    return {"rate": figures["msgs_per_s"], **figures["cpu_s"]}


def concurrency(clients: int, args: argparse.Namespace, state: dict, mailfilter: Path, bodies: list[bytes], sample: Path) -> dict:
    """Every round at CLIENTS: each configuration's figures (median, min, max over rounds) and their ratio to the ceiling."""
    per: dict[str, list[dict[str, float]]] = {name: [] for name in ORDER}
    spamd = Spamd(clients)
    scanners = {"spamd": spamd.proc.pid, "clamd": os.getpgid(state["pids"]["clamd"])}
    wirings: dict[str, Wiring] = {}
    try:
        for name in CONFIGS:
            wirings[name] = Wiring(name, clients, mailfilter, spamd, state["clamd_socket"])
            batch(wirings[name].postfix, wirings[name].arrivals, bodies[: args.warmup], clients, f"{name}-{clients}-warmup")  # not counted
        for rnd in range(args.rounds):
            for name in alternated(ORDER, rnd):
                if name == "ceiling":
                    figures = ceiling(spamd, clients, len(bodies), sample)
                else:
                    figures = measured(wirings[name], bodies, clients, f"{name}-{clients}-{rnd}", scanners)
                per[name].append(figures)
                print(f"c={clients} {name} round {rnd}: {figures['rate']:.1f} msg/s", file=sys.stderr)
    finally:
        for wiring in wirings.values():
            wiring.close()
        spamd.stop()
    out = {name: {key: summary(r[key] for r in rounds) for key in rounds[0]} for name, rounds in per.items()}
    out["ratio"] = {name: summary(r["rate"] / c["rate"] for r, c in zip(per[name], per["ceiling"], strict=True)) for name in CONFIGS}
    return out


def run(args: argparse.Namespace) -> dict:
    if os.geteuid() != 0:
        raise SystemExit("pipewiring: needs root (private Postfix instances, the pipe user)")
    state = daemons.start(RUN_DIR)
    mailfilter = filter_venv()
    bodies = corpus(args.messages, args.seed)
    results: dict = {"messages": args.messages, "size": SIZE, "rounds": args.rounds, "clients": {}}
    with tempfile.NamedTemporaryFile(prefix="mailfilter-bench-pipewiring-", suffix=".eml") as sample:
        sample.write(bodies[0])
        sample.flush()
        for clients in args.clients:
            results["clients"][clients] = concurrency(clients, args, state, mailfilter, bodies, Path(sample.name))
    return results


def table(results: dict) -> str:
    lines = [
        "Pipe wiring (content_filter = mailfilter:dummy, pipe(8) runs `mailfilter pipe`, sendmail reinjects),"
        f" {results['messages']} messages of ~{results['size'] // 1024} kB per batch, closed loop, {results['rounds']} round(s);"
        " pipe maxproc = spamd children = spamc processes = clients; median (min-max); ratios taken within each round.",
        "CPU: pipe = the `mailfilter pipe` processes with their sendmail and postdrop, worker = `mailfilter worker`'s process"
        " with its sendmail and postdrop, Postfix = the rest of the master's process group (pipe(8) itself included).",
        "",
        "| clients | wiring | msgs/s | p50 latency | p99 latency | CPU / message | msgs/s vs spamd ceiling |",
        "|---|---|---|---|---|---|---|",
    ]
    for clients, per in results["clients"].items():
        for name in ORDER:
            f = per[name]
            rate = f"{f['rate']['median']:.1f} ({f['rate']['min']:.1f}-{f['rate']['max']:.1f})"
            if name == "ceiling":
                latency, ratio = "- | -", "1.00x"
                parts = ("spamc", "spamd")
            else:
                latency = f"{f['p50']['median'] * 1000:.0f} ms | {f['p99']['median'] * 1000:.0f} ms"
                r = per["ratio"][name]
                ratio = f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})"
                parts = ("pipe", "worker", "postfix", "spamd", "clamd") if name == "pipe+worker" else ("pipe", "postfix", "spamd", "clamd")
            cpu = " + ".join(f"{'Postfix' if p == 'postfix' else p} {f[p]['median'] * 1000:.0f}" for p in parts)
            lines.append(f"| {clients} | {LABELS[name]} | {rate} | {latency} | {cpu} ms | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=16, help="messages each wiring gets first, not counted")
    parser.add_argument("--clients", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--seed", type=int, default=20261202)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    results = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pipewiring.json").write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
