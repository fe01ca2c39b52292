"""The console's quarantine list over 10,000 entries: milliseconds per `GET /quarantine`, as a logged-in admin sees it.

The entries are written as the filter writes them (quarantine.store: a 2 kB message and its metadata, spam and
viruses, 100 senders, 50 recipients); the console is the real application (web/app.py) under uvicorn on loopback,
asked over HTTP by one client with its session cookie. Measured: the first page, a page in the middle, and a filter
(reason=virus and a recipient), each REPEAT times after one warm-up; the figure is the median and the worst.

Alone: `.venv/bin/python bench/weblist.py [--entries 10000] [--repeat 20]`; prints one JSON object.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from mailfilter import config as configmod  # noqa: E402
from mailfilter.actions import quarantine  # noqa: E402
from mailfilter.spool import Spool  # noqa: E402

from conftest import free_tcp_port, write_config  # noqa: E402

TARGET_MS = 300.0
PASSWORD = "bench password"  # noqa: S105


def fill(folder: str, count: int) -> None:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    body = b"x" * 2000
    for n in range(count):
        virus = n % 4 == 0
        subject = f"Offer number {n}"
        raw = f"From: s{n % 100}@example.org\r\nTo: u{n % 50}@example.net\r\nSubject: {subject}\r\n\r\n".encode() + body
        meta = {
            "reason": "virus" if virus else "spam",
            "verdict": "virus" if virus else "spam",
            "virus_names": ["Eicar-Test-Signature"] if virus else [],
            "spam_score": None if virus else 12.5,
            "sender": f"s{n % 100}@example.org",
            "recipients": [f"u{n % 50}@example.net"],
            "subject": subject,
            "headers": [],
        }
        with Spool.of(raw) as spool:
            quarantine.store(spool, meta, folder, now=start + timedelta(seconds=n * 37))


def get(conn: http.client.HTTPConnection, path: str, cookie: str = "") -> tuple[int, str, http.client.HTTPResponse]:
    conn.request("GET", path, headers={"Cookie": cookie} if cookie else {})
    response = conn.getresponse()
    return response.status, response.read().decode(), response


def login(conn: http.client.HTTPConnection) -> str:
    _status, page, response = get(conn, "/login")
    pre = response.getheader("set-cookie").split(";", 1)[0]
    token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    form = f"username=admin&password={PASSWORD.replace(' ', '+')}&csrf={token}"
    conn.request("POST", "/login", body=form, headers={"Content-Type": "application/x-www-form-urlencoded", "Cookie": pre})
    response = conn.getresponse()
    response.read()
    if response.status != 303:
        raise SystemExit(f"login failed: {response.status}")
    return response.getheader("set-cookie").split(";", 1)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    import uvicorn

    from mailfilter.web import app as webapp
    from mailfilter.web import users

    work = Path(tempfile.mkdtemp(prefix="mailfilter-bench-web-"))
    try:
        port = free_tcp_port()
        path = write_config(
            work / "mailfilter.toml",
            {
                "quarantine": {"dir": str(work / "quarantine")},
                "report": {"state_dir": str(work / "state"), "journal_dir": ""},
                "web": {"users_file": str(work / "users"), "secret_file": str(work / "state" / "secret")},
            },
        )
        config = configmod.load(path)
        quarantine.ensure_folder(config.quarantine.dir)
        started = time.monotonic()
        fill(config.quarantine.dir, args.entries)
        filled = time.monotonic() - started
        users.add(config.web.users_file, "admin", PASSWORD)
        server = uvicorn.Server(uvicorn.Config(webapp.create(config, secure=False), host="127.0.0.1", port=port, log_config=None))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        cookie = login(conn)
        pages = {"first page": "/quarantine", "page 100": "/quarantine?page=100", "filtered": "/quarantine?reason=virus&recipient=u8%40"}
        figures = {}
        for name, route in pages.items():
            status, page, _ = get(conn, route, cookie)  # warm-up
            if status != 200 or "Offer number" not in page:
                raise SystemExit(f"{route}: {status} {page[:300]}")
            times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                get(conn, route, cookie)
                times.append((time.perf_counter() - t) * 1000)
            figures[name] = {"median_ms": round(statistics.median(times), 1), "max_ms": round(max(times), 1)}
        server.should_exit = True
        worst = max(f["median_ms"] for f in figures.values())
        result = {
            "entries": args.entries,
            "fill_seconds": round(filled, 1),
            "pages": figures,
            "target_ms": TARGET_MS,
            "verdict": "PASS" if worst < TARGET_MS else "MISS",
        }
        print(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
