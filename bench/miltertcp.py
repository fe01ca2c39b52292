"""The milter over TCP against the milter over a unix socket: one client, one message at a time, the same Postfix.

    bench/miltertcp.py [--messages 60] [--rounds 3]      (root; prints one JSON object)

One private Postfix (tests/postfix.py) relays to its sink; `mailfilter milter` (tests/milterproc.py) listens on
`inet:PORT@127.0.0.1` or `unix:PATH`, the bench's spamd and clamd scan. Latency = SMTP connect to the reply to the
final dot, over MESSAGES ~4 kB hams per round; the configurations alternate. The figure: median of each, and inet/unix.
"""

from __future__ import annotations

import argparse
import json
import smtplib
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[1:1] = [str(ROOT / "tests"), str(ROOT / "scripts"), str(HERE)]

from afterqueue import corpus  # noqa: E402

import daemons  # noqa: E402
from conftest import write_config  # noqa: E402
from milterproc import USER, MilterProcess  # noqa: E402
from postfix import HOST, PostfixInstance, free_port, kill_strays  # noqa: E402

TARGET = 1.15


def milter(st: dict, kind: str, port: int) -> tuple[MilterProcess, str]:
    """`mailfilter milter` on inet:PORT or on a unix socket in its own folder; (the process, Postfix's address)."""
    process = MilterProcess()
    folder = process.folder
    spec = f"inet:{port}@{HOST}" if kind == "inet" else f"unix:{folder / 'milter.sock'}"
    sections = {
        "spamd": {"host": st["spamd_host"], "port": st["spamd_port"], "timeout": 30},
        "clamd": {"socket": st["clamd_socket"], "timeout": 30},
        "quarantine": {"dir": str(folder / "quarantine")},
        "report": {"admin": "", "state_dir": str(folder / "state"), "journal_dir": ""},
        "milter": {"socket": spec, "socket_mode": 0o666, "tmpdir": str(folder), "user": USER},
        "metrics": {"listen": ""},
        "log": {"syslog": False, "file": str(folder / "mailfilter.log")},
    }
    process.start(write_config(folder / "mailfilter.toml", sections))
    process.expect(b"READY=1")
    return process, f"inet:{HOST}:{port}" if kind == "inet" else spec


def batch(postfix: PostfixInstance, bodies: list[bytes]) -> list[float]:
    times = []
    for body in bodies:
        started = time.perf_counter()
        with smtplib.SMTP(HOST, postfix.smtp_port, timeout=60) as client:
            client.sendmail("alice@example.org", ["bob@example.net"], body)
        times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    st = daemons.start()
    bodies = corpus(args.messages, 20261203)
    results: dict[str, list[float]] = {"inet": [], "unix": []}
    processes, instances = {}, {}
    try:
        for name in ("inet", "unix"):
            processes[name], address = milter(st, name, free_port())
            instances[name] = PostfixInstance()
            instances[name].start("milter", milter=address, milter_content_timeout="60s")
            batch(instances[name], bodies[:5])  # warm-up
        for round_ in range(args.rounds):
            for name in ("inet", "unix") if round_ % 2 == 0 else ("unix", "inet"):
                results[name] += batch(instances[name], bodies)
    finally:
        for instance in instances.values():
            instance.stop()
            kill_strays(instance.work)
            instance.close()
        for process in processes.values():
            process.terminate()
            process.close()
    inet, unix = (statistics.median(results[k]) for k in ("inet", "unix"))
    print(json.dumps({
        "messages": args.messages * args.rounds,
        "median_ms": {"inet": round(inet, 1), "unix": round(unix, 1)},
        "inet_over_unix": round(inet / unix, 3),
        "target": TARGET,
        "verdict": "PASS" if inet / unix <= TARGET else "MISS",
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
