"""What a scanner pool ([spamd] servers) adds to each message, and what one failover costs.

  dispatch   Pool.scan around an attempt that returns at once: the pool's own CPU per message
             (choosing the member, counting in flight, the ledger), with no network at all
  spamd      a short message scored by the private spamd: the scanner called on that one server
             directly (scanners.spamd._scan_one) against through a pool of one (scan_blocking),
             alternating, ROUNDS rounds of MESSAGES each; a round's figure is its median
  failover   the same message through [a refused port, the live spamd] with the refused member
             taken first every time (it is put back up before each message): the refusal's cost

Alone: `.venv/bin/python bench/poolcost.py [--rounds N]` with the daemons of scripts/daemons.py running
(`scripts/daemons.py start`); prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from pathlib import Path

from mailfilter.record import replace

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts"), str(ROOT / "tests")]

from mailfilter import config as configmod  # noqa: E402
from mailfilter.model import SpamReport  # noqa: E402
from mailfilter.scanners import pool, spamd  # noqa: E402

import corpus  # noqa: E402
import daemons  # noqa: E402


def dispatch(calls: int, config: configmod.SpamdConfig) -> float:
    """Microseconds of CPU per Pool.scan around an attempt that only makes its one-server config, as
    scan_blocking's does (two members, in a ledger)."""
    members = (pool.Server("127.0.0.1", 1), pool.Server("127.0.0.1", 2))
    p = pool.Pool("spamd", members, lambda server, timeout: True)
    answer = SpamReport(0.0, 5.0)
    with pool.ledger():
        started = time.process_time()
        for _ in range(calls):
            p.scan(lambda server, budget: replace(config, host=server.host, port=server.port, timeout=budget) and answer, 30.0)
        return (time.process_time() - started) / calls * 1e6


def median_ms(scan, message: bytes, n: int) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        outcome = scan(message)
        times.append(time.perf_counter() - started)
        if not isinstance(outcome, SpamReport):
            raise SystemExit(f"poolcost: spamd did not score the message: {outcome}")
    return statistics.median(times) * 1000


def refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=40)
    args = parser.parse_args()
    state = daemons.state()
    if not daemons.ping_spamd(state["spamd_host"], state["spamd_port"]):
        print("poolcost: no spamd answers; run scripts/daemons.py start", file=sys.stderr)
        return 2
    live = f"{state['spamd_host']}:{state['spamd_port']}"
    single = configmod.from_dict({"spamd": {"host": state["spamd_host"], "port": state["spamd_port"], "timeout": 30}}).spamd
    dead = refused_port()
    pair = configmod.from_dict({"spamd": {"servers": [f"127.0.0.1:{dead}", live], "timeout": 30}}).spamd
    failing = pool.POOLS.get("spamd", pool.members(pair.servers, "", 0, ""), spamd.ping)
    message = corpus.clean()

    def direct(data: bytes):
        return spamd._scan_one(spamd._request(data), single)

    def pooled(data: bytes):
        return spamd.scan_blocking(data, single)

    def failover(data: bytes):
        for member in failing._members:
            member.down_until = 0.0  # the refused member is healthy again, and first in turn
        failing._turn = len(failing._members) - 1
        return spamd.scan_blocking(data, pair)

    rounds = {"direct": [], "pooled": [], "failover": []}
    for i in range(args.rounds):
        order = ("direct", "pooled", "failover") if i % 2 == 0 else ("failover", "pooled", "direct")
        for name in order:
            scan = {"direct": direct, "pooled": pooled, "failover": failover}[name]
            rounds[name].append(median_ms(scan, message, args.messages))
    figures = {name: round(statistics.median(values), 3) for name, values in rounds.items()}
    result = {
        "dispatch_us_cpu": round(dispatch(100_000, single), 2),
        "spamd_direct_ms": figures["direct"],
        "spamd_pool_of_one_ms": figures["pooled"],
        "pool_overhead_ms": round(figures["pooled"] - figures["direct"], 3),
        "spamd_after_one_refusal_ms": figures["failover"],
        "failover_cost_ms": round(figures["failover"] - figures["pooled"], 3),
        "rounds": args.rounds,
        "messages_per_round": args.messages,
        "message_bytes": len(message),
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
