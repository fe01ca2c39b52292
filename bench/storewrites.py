"""Quarantine writes per second: the folder (FolderStore) against PostgreSQL (PgStore), as the filter stores.

Each write is one store() of a 22 kB message with its metadata, durable before it returns: the folder
with fsync of the file, the metadata and the folder; PostgreSQL with a COMMIT (fsync on, the default
synchronous_commit) into a private cluster started here (tests/pgcluster.py: initdb in a temporary
folder on this machine's disk, a loopback port). THREADS writers at once, as milter threads or pipe
processes of one host would be; the figure is writes / wall second over WRITES writes.

Alone: `.venv/bin/python bench/storewrites.py [--writes N] [--threads 1,4]`; prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import pgcluster  # noqa: E402

from mailfilter import pg  # noqa: E402
from mailfilter.actions import pgstore  # noqa: E402
from mailfilter.actions import quarantine as qstore  # noqa: E402
from mailfilter.spool import Spool  # noqa: E402

META = {
    "reason": "virus",
    "verdict": "virus",
    "virus_names": ["Eicar-Test-Signature"],
    "sender": "a@example.org",
    "recipients": ["b@example.net"],
}


def message(size: int = 22_000) -> bytes:
    body = (b"Lorem ipsum dolor sit amet, consectetur adipiscing elit.\n" * (size // 58 + 1))[:size]
    return b"From: a@example.org\nTo: b@example.net\nSubject: bench\n\n" + body


def rate(store, data: bytes, writes: int, threads: int) -> float:
    def one(_: int) -> str:
        with Spool.of(data) as spool:
            return store.store(spool, META)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(min(threads, writes))))  # warm up: connections, the folder
        started = time.perf_counter()
        ids = list(pool.map(one, range(writes)))
        took = time.perf_counter() - started
    if len(set(ids)) != writes:
        raise SystemExit("storewrites: ids not unique")
    return writes / took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=300)
    parser.add_argument("--threads", default="1,4")
    args = parser.parse_args()
    if not pgcluster.available():
        print("storewrites: needs Debian's postgresql (scripts/setup)", file=sys.stderr)
        return 2
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cluster = pgcluster.start(port)
    folder = Path(tempfile.mkdtemp(prefix="mailfilter-bench-quarantine-"))
    data = message()
    result: dict = {"message_bytes": len(data), "writes": args.writes}
    try:
        dsn = cluster.create_database("bench")
        pg.upgrade(dsn, create=True)
        for threads in (int(n) for n in args.threads.split(",")):
            result[f"folder_writes_per_s_{threads}_threads"] = round(
                rate(qstore.FolderStore(str(folder / str(threads))), data, args.writes, threads), 1
            )
            result[f"postgresql_writes_per_s_{threads}_threads"] = round(rate(pgstore.PgStore(dsn), data, args.writes, threads), 1)
    finally:
        pgcluster.remove(cluster)
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
