"""The after-queue SMTP path: `mailfilter smtp` (over SMTP and over LMTP) against amavisd-new, all three as
FILTER_README's advanced content filter.

    bench/afterqueue.py [--messages N] [--rounds R] [--clients 4 16] [--out DIR]     (root; Debian's amavisd-new)

Each filter gets a private Postfix (tests/smtpwiring.py: smtpd -o content_filter=TRANSPORT:[127.0.0.1]:PORT,
the transport with maxproc = clients and XFORWARD, the 127.0.0.1 reinjection smtpd with content_filter=,
everything relayed to one sink). Both use the same spamd rules (/usr/share/spamassassin, local tests only;
amavisd-new runs SpamAssassin in-process, mailfilter asks the bench's spamd) and the same clamd (INSTREAM).
amavisd-new is Debian's package, configured here in a private folder (never its service, never /etc/amavis):
$max_servers = clients. mailfilter: [smtp] max_clients = clients; the LMTP row has [smtp] protocol = "lmtp" and
Postfix's lmtp client as the transport (the lmtp-mailfilter wiring of master.cf.example).

Load: CLIENTS threads, each submitting one ~4 kB ham at a time to smtpd and waiting until the sink has it
(closed loop): msgs/s = messages / wall, latency = submission to arrival at the sink (p50, p99). The filter's
CPU per message: the door's process (with its threads) or amavisd's process group, over the batch.
Configurations alternate within a round. Results: OUT/afterqueue.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import random
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[1:1] = [str(ROOT / "tests"), str(ROOT / "scripts"), str(HERE)]

import messages  # noqa: E402
from measure import alternated, group_cpu, percentile, process_cpu, summary  # noqa: E402
from smtpwiring import DoorProcess, SmtpPostfix  # noqa: E402

import daemons  # noqa: E402
from postfix import HOST, free_port  # noqa: E402

RUN_DIR = os.environ.get("MAILFILTER_RUN_DIR", "/tmp/mailfilter-bench-daemons")
CONFIGS = ("mailfilter", "mailfilter-lmtp", "amavisd")
OURS = ("mailfilter", "mailfilter-lmtp")  # each compared with amavisd-new within each round
LABELS = {"mailfilter": "mailfilter smtp", "mailfilter-lmtp": "mailfilter smtp (LMTP)", "amavisd": "amavisd-new"}
SIZE = 4096
AMAVISD = "/usr/sbin/amavisd"
AMAVIS_USER = "amavis"
READY = 120.0
MAX_REQUESTS = 1000  # messages a child handles before it is replaced: amavisd-new's $max_requests and spamd's --max-conn-per-child
BATCH_TIMEOUT = 600.0
MARKS = {  # the filter saw the message
    "mailfilter": b"X-Virus-Status: Clean",
    "mailfilter-lmtp": b"X-Virus-Status: Clean",
    "amavisd": b"X-Virus-Scanned: amavis at ",
}


def amavis_conf(home: Path, port: int, reinject: int, servers: int, clamd_socket: str) -> str:
    """A complete amavisd.conf (read alone with -c): SMTP in on PORT, out to REINJECT, SA in-process, clamd INSTREAM."""
    return f"""use strict;
$MYHOME = '{home}';
$TEMPBASE = '{home}/tmp';
$db_home = '{home}/db';
$helpers_home = '{home}/var';
$lock_file = '{home}/amavisd.lock';
$pid_file = '{home}/amavisd.pid';
$daemon_user = '{AMAVIS_USER}';
$daemon_group = '{AMAVIS_USER}';
$mydomain = 'example.net';
$myhostname = 'amavis.example.net';
$max_servers = {servers};
$max_requests = {MAX_REQUESTS};
$child_timeout = 300;
$inet_socket_bind = '127.0.0.1';
$inet_socket_port = {port};
@inet_acl = qw(127.0.0.1);
$unix_socketname = undef;
$forward_method = 'smtp:[127.0.0.1]:{reinject}';
$notify_method = $forward_method;
$DO_SYSLOG = 0;
$LOGFILE = '{home}/amavis.log';
$log_level = 0;
$enable_db = 0;
$enable_zmq = 0;
$enable_dkim_verification = 0;
$enable_dkim_signing = 0;
@local_domains_maps = (['.example.net', 'example.net']);
@bypass_spam_checks_maps = (0);
@bypass_virus_checks_maps = (0);
$sa_local_tests_only = 1;
$sa_configpath = '/usr/share/spamassassin';
$sa_tag_level_deflt = -9999;
$sa_tag2_level_deflt = 5.0;
$sa_kill_level_deflt = 9999;
$sa_spam_subject_tag = undef;
$final_virus_destiny = D_DISCARD;
$final_banned_destiny = D_PASS;
$final_spam_destiny = D_PASS;
$final_bad_header_destiny = D_PASS;
$virus_admin = undef;
$spam_admin = undef;
$QUARANTINEDIR = '{home}/quarantine';
$virus_quarantine_method = 'local:virus-%m';
@av_scanners = (['ClamAV-clamd-stream', \\&ask_daemon, ["{{}}/*", 'clamd:{clamd_socket}'],
  qr/\\bOK$/m, qr/\\bFOUND$/m, qr/^.*?: (?!Infected Archive)(.*) FOUND$/m]);
@av_scanners_backup = ();
1;
"""


class Amavisd:
    """amavisd-new from a private folder, in the foreground of its own session; stopped with SIGTERM."""

    def __init__(self, work: Path, port: int, reinject: int, servers: int, clamd_socket: str) -> None:
        self.home = work / "amavis"
        for sub in ("", "tmp", "db", "var", "quarantine"):
            (self.home / sub).mkdir(exist_ok=True)
            shutil.chown(self.home / sub, AMAVIS_USER, AMAVIS_USER)
        self.conf = work / "amavisd.conf"
        self.conf.write_text(amavis_conf(self.home, port, reinject, servers, clamd_socket))
        self.port = port
        with (work / "amavisd.out").open("wb") as out:
            self.proc = subprocess.Popen(
                [AMAVISD, "-c", str(self.conf), "foreground"], stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )
        wait_greeting(port, READY, self.proc, work / "amavisd.out")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def wait_greeting(port: int, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            with socket.create_connection((HOST, port), timeout=5) as sock:
                if sock.recv(512).startswith(b"220"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"no 220 on {port} within {timeout:g} s: {log.read_text(errors='replace')[-2000:]}")


class Spamd:
    """A spamd for one concurrency: scripts/daemons.py's rules and options, but CHILDREN children kept forked (as an
    admin sizes it for a content filter of that concurrency; the shared one keeps 4 at most, forking them as needed)."""

    def __init__(self, children: int) -> None:
        self.run = Path(tempfile.mkdtemp(prefix="mailfilter-bench-spamd-", dir="/tmp"))
        self.run.chmod(0o755)
        self.host, self.port = HOST, free_port()
        st = {"spamd_host": self.host, "spamd_port": self.port}
        cmd = [arg for arg in daemons._spamd_command(self.run, st) if not arg.startswith("--max-children")]
        cmd += [f"--max-children={children}", f"--min-children={children}", f"--min-spare={children}", f"--max-spare={children}"]
        cmd.append(f"--max-conn-per-child={MAX_REQUESTS}")  # each child lives as long as an amavisd-new child ($max_requests)
        with (self.run / "spamd.out").open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
        deadline = time.monotonic() + READY
        while not daemons.ping_spamd(self.host, self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"spamd did not start: {(self.run / 'spamd.out').read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        shutil.rmtree(self.run, ignore_errors=True)


class Arrivals:
    """Sink arrivals by Message-ID: an Event per message and its time."""

    def __init__(self, postfix: SmtpPostfix) -> None:
        self.times: dict[str, float] = {}
        self.events: dict[str, threading.Event] = {}
        self.last = b""  # the last message that arrived, to check that the filter marked it
        self._lock = threading.Lock()
        sink = postfix.sink
        original = sink.record

        def record(delivery) -> None:
            match = re.search(rb"^Message-ID: <([^>]+)>", delivery.data, re.M | re.I)
            original(delivery)
            self.last = delivery.data
            if match:
                self.arrived(match.group(1).decode())

        sink.record = record  # type: ignore[method-assign]

    def expect(self, mid: str) -> threading.Event:
        with self._lock:
            return self.events.setdefault(mid, threading.Event())

    def arrived(self, mid: str) -> None:
        self.times[mid] = time.monotonic()
        self.expect(mid).set()


def batch(postfix: SmtpPostfix, arrivals: Arrivals, bodies: list[bytes], clients: int, tag: str) -> tuple[float, list[float]]:
    """Closed loop: CLIENTS threads, one message at a time each. Returns (wall seconds, latencies)."""
    todo = list(enumerate(bodies))
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []

    def client() -> None:
        while True:
            with lock:
                if not todo or errors:
                    return
                index, body = todo.pop()
            mid = f"{tag}-{index}@bench.example.org"
            raw = re.sub(rb"(?im)^Message-ID: <[^>]+>", f"Message-ID: <{mid}>".encode(), body, count=1)
            done = arrivals.expect(mid)
            started = time.monotonic()
            try:
                code, text = postfix.send(raw, "alice@example.org", ["bob@example.net"])
                if code != 250:
                    raise RuntimeError(f"{code} {text}")
                if not done.wait(BATCH_TIMEOUT):
                    raise RuntimeError(f"{mid} did not arrive")
            except (OSError, smtplib.SMTPException, RuntimeError) as exc:
                errors.append(str(exc))
                return
            latencies.append(arrivals.times[mid] - started)

    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{tag}: {errors[0]}\n{postfix.diagnostics()}")
    return time.monotonic() - started, latencies


def corpus(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        raw = messages.ham(rng, i, SIZE)
        if not re.search(rb"(?im)^Message-ID:", raw):
            raw = f"Message-ID: <x{i}@bench.example.org>\n".encode() + raw
        out.append(raw)
    return out


def run(args: argparse.Namespace) -> dict:
    if os.geteuid() != 0:
        raise SystemExit("afterqueue: needs root (private Postfix instances, amavisd-new's user)")
    pwd.getpwnam(AMAVIS_USER)  # Debian's amavisd-new package
    state = daemons.start(RUN_DIR)
    bodies = corpus(args.messages, args.seed)
    results: dict = {"messages": args.messages, "size": SIZE, "rounds": args.rounds, "clients": {}}
    for clients in args.clients:
        keys = ("rate", "p50", "p99", "cpu", "spamd", "clamd")
        per: dict[str, dict[str, list[float]]] = {c: {k: [] for k in keys} for c in CONFIGS}
        ratios: dict[str, dict[str, list[float]]] = {n: {"rate": [], "p99": []} for n in OURS}  # ours / amavisd-new, per round
        spamd = Spamd(clients)
        scanners = (spamd.proc.pid, os.getpgid(state["pids"]["clamd"]))
        setups = {}
        try:
            for name in CONFIGS:
                setups[name] = start(name, clients, state, spamd)
                postfix, arrivals, _cpu = setups[name]
                batch(postfix, arrivals, bodies[: args.warmup], clients, f"{name}-{clients}-warmup")  # not counted
            for rnd in range(args.rounds):
                for name in alternated(CONFIGS, rnd):
                    postfix, arrivals, cpu = setups[name]
                    before, scanned = cpu(), group_cpu(*scanners)
                    wall, latencies = batch(postfix, arrivals, bodies, clients, f"{name}-{clients}-{rnd}")
                    used, after = cpu() - before, group_cpu(*scanners)
                    if MARKS[name] not in arrivals.last:
                        raise RuntimeError(f"{name}: the messages were not filtered (no {MARKS[name]!r}):\n{arrivals.last[:1500]!r}")
                    per[name]["spamd"].append((after[scanners[0]] - scanned[scanners[0]]) / len(latencies))
                    per[name]["clamd"].append((after[scanners[1]] - scanned[scanners[1]]) / len(latencies))
                    per[name]["rate"].append(len(latencies) / wall)
                    per[name]["p50"].append(percentile(latencies, 0.5))
                    per[name]["p99"].append(percentile(latencies, 0.99))
                    per[name]["cpu"].append(used / len(latencies))
                    p99 = percentile(latencies, 0.99) * 1000
                    print(f"c={clients} {name} round {rnd}: {len(latencies) / wall:.1f} msg/s, p99 {p99:.0f} ms", file=sys.stderr)
                theirs = per["amavisd"]
                for name in OURS:
                    ratios[name]["rate"].append(per[name]["rate"][-1] / theirs["rate"][-1])
                    ratios[name]["p99"].append(per[name]["p99"][-1] / theirs["p99"][-1])
        finally:
            for postfix, _arrivals, _cpu in setups.values():
                stopper = getattr(postfix, "bench_stop", None)
                if stopper:
                    stopper()
                postfix.close()
            spamd.stop()
        results["clients"][clients] = {name: {k: summary(v) for k, v in figures.items()} for name, figures in per.items()}
        results["clients"][clients]["ratio"] = {n: {k: summary(v) for k, v in r.items()} for n, r in ratios.items()}
    return results


def start(name: str, clients: int, state: dict, spamd: Spamd):
    """A started instance for NAME with CLIENTS processes; (postfix, arrivals, cpu seconds so far of the filter)."""
    postfix = SmtpPostfix()
    try:
        if name in OURS:
            lmtp = name == "mailfilter-lmtp"
            if lmtp:
                postfix.start_smtp(maxproc=clients, transport="lmtp-mailfilter", client="lmtp")
            else:
                postfix.start_smtp(maxproc=clients)
            door = DoorProcess(
                postfix,
                f"{spamd.host}:{spamd.port}",
                state["clamd_socket"],
                max_clients=clients,
                timeout=60,
                **({"protocol": "lmtp"} if lmtp else {}),
            )
            door.start()
            postfix.bench_stop = door.stop  # type: ignore[attr-defined]
            cpu = lambda: process_cpu(door.proc.pid)  # noqa: E731
        else:
            postfix.door_port = free_port()
            postfix.start_smtp(maxproc=clients, transport="smtp-amavis")
            amavisd = Amavisd(postfix.work, postfix.door_port, postfix.reinject_port, clients, state["clamd_socket"])
            postfix.bench_stop = amavisd.stop  # type: ignore[attr-defined]
            cpu = lambda: group_cpu(amavisd.proc.pid)[amavisd.proc.pid]  # noqa: E731
    except BaseException:
        postfix.close()
        raise
    return postfix, Arrivals(postfix), cpu


def table(results: dict) -> str:
    lines = [
        f"After queue over SMTP, {results['messages']} messages of ~{results['size'] // 1024} kB per batch, closed loop,"
        f" {results['rounds']} round(s); median (min-max); ratios taken within each round.",
        "",
        "| clients | filter | msgs/s | p50 latency | p99 latency | CPU / message: filter + spamd + clamd | msgs/s vs amavisd-new"
        " | p99 vs amavisd-new |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for clients, per in results["clients"].items():
        for name in CONFIGS:
            f = per[name]
            rate, p50, p99, cpu, spamd, clamd = (f[k]["median"] for k in ("rate", "p50", "p99", "cpu", "spamd", "clamd"))
            span = f"({f['rate']['min']:.1f}-{f['rate']['max']:.1f})"
            ratio = per["ratio"][name]["rate"] if name in OURS else None
            p99_ratio = per["ratio"][name]["p99"] if name in OURS else None
            lines.append(
                f"| {clients} | {LABELS[name]} | {rate:.1f} {span} | {p50 * 1000:.0f} ms | {p99 * 1000:.0f} ms"
                f" | {cpu * 1000:.0f} + {spamd * 1000:.0f} + {clamd * 1000:.0f} ms"
                f" | {_ratio(ratio)} | {_ratio(p99_ratio)} |"
            )
    return "\n".join(lines)


def _ratio(figure: dict | None) -> str:
    return "1.00x" if figure is None else f"{figure['median']:.2f}x ({figure['min']:.2f}-{figure['max']:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=8, help="messages each filter gets first, not counted")
    parser.add_argument("--clients", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--seed", type=int, default=20261202)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    results = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "afterqueue.json").write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
