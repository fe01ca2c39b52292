"""Show that a message over [spamd] max_size goes whole to clamd and to spamd only as its first max_size bytes.

Two counting proxies stand between `mailfilter pipe` and the daemons: a TCP one in
front of spamd and a unix-socket one in front of clamd. Each records, per connection,
how many bytes the filter sent. Messages just under and just over max_size, and the
largest of the corpus, go through the real pipe door; the expectation is one spamd
connection per message carrying the whole message under the limit and at most
max_size bytes (plus the request's own header) over it, and one clamd connection,
carrying at least the whole message, for every message.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path

from measure import BenchError, run_process
from pipepath import PIPE_ENV, RECIPIENT, SENDER

from mailfilter import config as configmod

from conftest import write_config  # tests/conftest.py

HOST = "127.0.0.1"
TIMEOUT = 60.0
REQUEST_HEADER = 200  # bytes of spamd's request line and headers around the message


class CountingProxy:
    """Accept connections on LISTENER, relay each to UPSTREAM (an address for socket.connect), count bytes sent upstream.

    A half-close is passed on in both directions (aiospamc shuts down its sending side and then reads).
    """

    def __init__(self, listener: socket.socket, family: int, upstream: object) -> None:
        self._listener = listener
        self._family = family
        self._upstream = upstream
        self._lock = threading.Lock()
        self.sent: list[int] = []  # bytes the client sent, one entry per connection
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                index = len(self.sent)
                self.sent.append(0)
            thread = threading.Thread(target=self._serve, args=(client, index), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, client: socket.socket, index: int) -> None:
        with client, socket.socket(self._family, socket.SOCK_STREAM) as upstream:
            client.settimeout(TIMEOUT)
            upstream.settimeout(TIMEOUT)
            upstream.connect(self._upstream)
            back = threading.Thread(target=self._pump, args=(upstream, client, None), daemon=True)
            back.start()
            self._pump(client, upstream, index)
            back.join(TIMEOUT)

    def _pump(self, source: socket.socket, sink: socket.socket, index: int | None) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
                if index is not None:
                    with self._lock:
                        self.sent[index] += len(data)
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() that close() alone would leave blocked
        self._listener.close()
        self._accepting.join(TIMEOUT)
        for thread in self._threads:
            thread.join(TIMEOUT)


def tcp_proxy(upstream: tuple[str, int]) -> tuple[CountingProxy, int]:
    """A counting proxy on a free loopback port; returns it and the port."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((HOST, 0))
    listener.listen(16)
    return CountingProxy(listener, socket.AF_INET, upstream), listener.getsockname()[1]


def unix_proxy(path: Path, upstream: str) -> CountingProxy:
    """A counting proxy listening on the unix socket PATH."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    return CountingProxy(listener, socket.AF_UNIX, upstream)


def check(mailfilter: Path, sections: dict[str, dict], work: Path, messages: dict[str, bytes]) -> dict:
    """Run MESSAGES (name -> bytes) through `mailfilter pipe` with the config SECTIONS, its spamd and clamd
    behind the proxies; report what each daemon got."""
    spamd = (sections["spamd"]["host"], sections["spamd"]["port"])
    spamd_proxy, port = tcp_proxy(spamd)
    clamd_proxy = unix_proxy(work / "clamd-proxy.sock", sections["clamd"]["socket"])
    try:
        proxied = {
            **sections,
            "spamd": {**sections["spamd"], "port": port},
            "clamd": {**sections["clamd"], "socket": str(work / "clamd-proxy.sock")},
        }
        config = write_config(work / "maxsize.toml", proxied)
        max_size = configmod.load(config).spamd.max_size
        rows = []
        for name, data in messages.items():
            path = work / f"maxsize-{name}.eml"
            path.write_bytes(data)
            before = (len(spamd_proxy.sent), len(clamd_proxy.sent))
            argv = [str(mailfilter), "pipe", "-q", "BENCH2", "-f", SENDER, "--", RECIPIENT]
            run = run_process(argv, path, {**PIPE_ENV, "MAILFILTER_CONFIG": config, "TMPDIR": str(work)}, TIMEOUT)
            if run.status != 0:
                raise BenchError(f"mailfilter pipe on {name} exited {run.status}: {run.output[-2000:]!r}")
            rows.append(
                {
                    "message": name,
                    "bytes": len(data),
                    "over_max_size": len(data) > max_size,
                    "spamd_bytes": spamd_proxy.sent[before[0] :],
                    "clamd_bytes": clamd_proxy.sent[before[1] :],
                }
            )
    finally:
        spamd_proxy.close()
        clamd_proxy.close()
    for row in rows:
        row["reached"] = [name for name in ("spamd", "clamd") if max(row[f"{name}_bytes"], default=0) >= row["bytes"]]
        if row["over_max_size"]:  # scored on a truncated copy: something, never more than max_size of the message
            sent = row["spamd_bytes"]
            row["spamd_truncated"] = len(sent) == 1 and 0 < sent[0] <= max_size + REQUEST_HEADER
            spamd_ok = row["spamd_truncated"]
        else:
            spamd_ok = "spamd" in row["reached"]
        row["as_expected"] = spamd_ok and "clamd" in row["reached"]
    return {"max_size": max_size, "messages": rows, "passed": all(r["as_expected"] for r in rows)}
