"""The milter path: private Postfix instances on loopback, fed over SMTP, each wired to one filter.

Configurations, each its own Postfix (tests/postfix.py) relaying everything to one smtp-sink:
  mailfilter  smtpd_milters = `mailfilter milter` (run as tests/milterproc.py does; metrics off)
  pair        smtpd_milters = Debian's spamass-milter, then clamav-milter, on the same spamd and clamd
  none        no milter: Postfix alone
and, without Postfix, the spamd ceiling: spamc processes at the same concurrency. Every milter
listens on a unix socket, as mailfilter's and Debian's defaults do (bench/miltertcp.py compares
mailfilter's milter over TCP, where libmilter's writes used to stall 40 ms without TCP_NODELAY).

Per round and concurrency, every configuration gets a batch from Postfix's smtp-source
(one typical ham, repeated: messages per second) and a batch from our own smtplib client
threads (the mixed corpus: messages per second and the latency of each SMTP transaction,
connect to the reply to DATA). Configurations run in turn, forwards in one round and backwards
in the next, and Postfix's queue is drained between batches. spamd's log shows that every
filter really had spamd scan.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import signal
import smtplib
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from measure import BenchError, alternated, group_cpu, loadavg, peak_rss_kib, percentile, process_cpu, summary
from messages import Message

from conftest import write_config  # tests/conftest.py
from milterproc import USER, MilterProcess  # tests/milterproc.py
from postfix import PostfixInstance, free_port  # tests/postfix.py

HOST = "127.0.0.1"
SENDER, RECIPIENT = "alice@example.org", "bob@example.net"
CONFIGS = ("mailfilter", "pair", "none")
ORDER = ("ceiling", "mailfilter", "pair", "none")  # forwards, then backwards: mailfilter next to what it is compared with
BATCH_TIMEOUT = 300.0
READY_TIMEOUT = 30.0
DRAIN_TIMEOUT = 180.0
QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")
MESSAGE_SIZE_LIMIT = 60_000_000  # room for the 20 MB messages of the RSS check (Postfix's default is 10 MB)


class Daemon:
    """A filter daemon we start: its own session and log file; stopped by SIGTERM, then SIGKILL."""

    def __init__(self, name: str, argv: list[str], log: Path, umask: int = 0o022) -> None:
        self.name = name
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, umask=umask)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        """CPU seconds of its session: the daemon and the children it reaped (spamass-milter's spamc)."""
        return group_cpu(self.proc.pid)[self.proc.pid]

    def wait_ready(self, ready: Callable[[], bool], what: str) -> None:
        """Poll READY() until it is true; fail with the log's tail if the daemon exits or READY_TIMEOUT passes."""
        deadline = time.monotonic() + READY_TIMEOUT
        while not ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-2000:]
                raise BenchError(f"{self.name} did not get ready ({what}); exit status {self.proc.poll()}\n{tail}")
            time.sleep(0.05)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def _accepts_tcp(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
        return True
    return False


def _accepts_unix(path: Path) -> bool:
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        sock.connect(str(path))
        return True
    return False


def start_smtp_sink(work: Path) -> tuple[Daemon, int]:
    """Postfix's smtp-sink on a free loopback port: takes every message and keeps nothing."""
    port = free_port()
    sink = Daemon("smtp-sink", ["/usr/sbin/smtp-sink", "-u", "postfix", f"{HOST}:{port}", "256"], work / "smtp-sink.log")
    sink.wait_ready(lambda: _accepts_tcp(port), f"listening on {port}")
    return sink, port


def start_spamass_milter(work: Path, spamd: tuple[str, int]) -> tuple[Daemon, str]:
    """Debian's spamass-milter on a unix socket of its own; it runs spamc against our spamd.

    Debian's /etc/default adds `-i 127.0.0.1` (skip mail from localhost); here all mail comes from
    localhost, so it is left out: every message is scanned.
    """
    sock = work / "spamass.sock"
    argv = ["/usr/sbin/spamass-milter", "-p", str(sock), "--", "-d", spamd[0], "-p", str(spamd[1])]
    daemon = Daemon("spamass-milter", argv, work / "spamass-milter.log", umask=0)  # smtpd runs as postfix
    daemon.wait_ready(lambda: _accepts_unix(sock), f"listening on {sock}")
    return daemon, f"unix:{sock}"


def start_clamav_milter(work: Path, clamd_socket: str) -> tuple[Daemon, str]:
    """Debian's clamav-milter with its own config file, on our clamd's socket; infected mail is rejected."""
    sock = work / "clamav-milter.sock"
    config = work / "clamav-milter.conf"
    config.write_text(
        "\n".join(
            (
                f"MilterSocket {sock}",
                "MilterSocketMode 666",  # as Debian's own config: smtpd runs as postfix
                f"ClamdSocket unix:{clamd_socket}",
                "Foreground yes",
                "OnClean Accept",
                "OnInfected Reject",
                "OnFail Defer",
                "AddHeader Replace",
                "MaxFileSize 50M",  # as mailfilter's [milter] max_size: both scan what they get
                f"TemporaryDirectory {work}",
                f"LogFile {work / 'clamav-milter.log'}",
                "LogInfected Basic",
            )
        )
        + "\n"
    )
    daemon = Daemon("clamav-milter", ["/usr/sbin/clamav-milter", "--config-file", str(config)], work / "clamav-milter.out")
    daemon.wait_ready(lambda: _accepts_unix(sock), f"listening on {sock}")
    return daemon, f"unix:{sock}"


class MailfilterMilter:
    """`mailfilter milter` as tests/milterproc.py runs it, ready when it says READY=1, on the unix socket SOCKET.

    Started as root, it becomes milterproc.USER once its socket listens, so everything it writes
    (spool, quarantine, journal, log) lives in the process's own folder; metrics are off. The socket
    is 0666: Postfix's smtpd runs as postfix, which is not in USER's group.
    """

    def __init__(self, sections: dict[str, dict], socket_path: Path) -> None:
        self.name = "mailfilter milter"
        self._sections, self._socket = sections, socket_path
        self._process = self._start()

    def _start(self) -> MilterProcess:
        process = MilterProcess()
        folder = process.folder
        config = {
            **self._sections,
            "quarantine": {"dir": str(folder / "quarantine")},
            "report": {**self._sections["report"], "state_dir": str(folder / "state"), "journal_dir": str(folder / "journal")},
            "milter": {"socket": f"unix:{self._socket}", "socket_mode": 0o666, "tmpdir": str(folder), "user": USER},
            "metrics": {"listen": ""},
            "log": {"syslog": False, "file": str(folder / "mailfilter.log")},
        }
        try:
            process.start(write_config(folder / "mailfilter.toml", config))
            process.expect(b"READY=1")
        except (OSError, AssertionError) as exc:
            log = process.log()
            process.close()
            raise BenchError(f"mailfilter milter did not get ready: {exc}\n{log[-2000:]}") from None
        return process

    @property
    def pid(self) -> int:
        return self._process.proc.pid

    def cpu(self) -> float:
        """CPU seconds of the milter process, all its threads."""
        return process_cpu(self.pid)

    def restart(self) -> None:
        """A fresh process (a fresh VmHWM), on the same socket."""
        self.close()
        self._process = self._start()

    def close(self) -> None:
        if self._process.proc is not None and self._process.proc.poll() is None:
            self._process.terminate()
        self._process.close()


@dataclass
class Wiring:
    """One configuration: its Postfix instance and the filter processes behind it."""

    name: str
    postfix: PostfixInstance
    filters: list[Daemon | MailfilterMilter] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.postfix.smtp_port

    def filter_cpu(self) -> float:
        """CPU seconds its filter processes have used so far (none without a milter)."""
        return sum(process.cpu() for process in self.filters)

    def close(self) -> None:
        try:
            self.postfix.close()
        finally:
            for process in self.filters:
                process.close()


def wire(name: str, work: Path, sink_port: int, sections: dict[str, dict], spamd: tuple[str, int], clamd_socket: str) -> Wiring:
    """Start the filters of configuration NAME, then a Postfix that uses them and relays to the sink.

    SECTIONS: the mailfilter config both paths share (the milter adds its own settings).
    """
    folder = work / name
    folder.mkdir(mode=0o755)
    filters: list[Daemon | MailfilterMilter] = []
    postfix = None
    try:
        if name == "mailfilter":
            filters.append(MailfilterMilter(sections, folder / "milter.sock"))
            milters = f"unix:{folder / 'milter.sock'}"
        elif name == "pair":
            spamass, spamass_spec = start_spamass_milter(folder, spamd)
            filters.append(spamass)
            clamav, clamav_spec = start_clamav_milter(folder, clamd_socket)
            filters.append(clamav)
            milters = f"{spamass_spec}, {clamav_spec}"
        else:
            milters = ""
        postfix = PostfixInstance()
        # The harness's milter wiring wants an address; for "none", smtpd_milters empties it again.
        postfix.start(
            "milter",
            milter=milters or "inet:127.0.0.1:9",
            smtpd_milters=milters,
            relayhost=f"[{HOST}]:{sink_port}",
            message_size_limit=str(MESSAGE_SIZE_LIMIT),
            in_flow_delay="0s",  # measure the filters, not Postfix's flow control
        )
    except BaseException:
        if postfix is not None:
            postfix.close()
        for process in filters:
            process.close()
        raise
    return Wiring(name, postfix, filters)


def wait_drained(postfix: PostfixInstance) -> None:
    """Wait until Postfix has relayed everything it accepted (its queues hold no file)."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while any(files for q in QUEUES for _, _, files in os.walk(postfix.queue_dir / q)):
        if time.monotonic() > deadline:
            raise BenchError(f"Postfix did not drain its queue within {DRAIN_TIMEOUT:g} s\n{postfix.diagnostics()}")
        time.sleep(0.05)


def smtp_source(port: int, concurrency: int, count: int, message: Path) -> float:
    """COUNT messages (the file MESSAGE) over CONCURRENCY parallel sessions with Postfix's smtp-source;
    return the wall seconds. Any reply but a 2xx aborts it, and the bench."""
    argv = ["/usr/sbin/smtp-source", "-s", str(concurrency), "-m", str(count), "-f", SENDER, "-t", RECIPIENT]
    argv += ["-F", str(message), "-M", "client.example.org", f"{HOST}:{port}"]
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=BATCH_TIMEOUT, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise BenchError(f"smtp-source exited {proc.returncode}: {proc.stderr[-2000:]}")
    return wall


def _transaction(port: int, data: bytes) -> int:
    """One SMTP transaction for DATA (CRLF lines); the final reply code, or 0 when the connection failed."""
    try:
        with smtplib.SMTP(HOST, port, local_hostname="client.example.org", timeout=BATCH_TIMEOUT) as client:
            client.ehlo()
            code = client.mail(SENDER, ["BODY=8BITMIME"])[0]
            if code < 400:
                code = client.rcpt(RECIPIENT)[0]
            if code < 400:
                code = client.data(data)[0]
            return code
    except smtplib.SMTPResponseException as exc:
        return exc.smtp_code
    except (OSError, smtplib.SMTPException):
        return 0


def smtp_clients(port: int, concurrency: int, messages: list[Message]) -> dict:
    """Send MESSAGES (CRLF data) from CONCURRENCY threads, each taking the next message when done with one.

    Returns the wall seconds, every transaction's latency (connect to the reply to DATA), the reply
    codes, and the three slowest transactions.
    """
    jobs: queue.SimpleQueue[Message] = queue.SimpleQueue()
    for message in messages:
        jobs.put(message)
    results: list[tuple[float, int, str]] = []

    def work() -> None:
        while True:
            try:
                message = jobs.get_nowait()
            except queue.Empty:
                return
            started = time.perf_counter()
            code = _transaction(port, message.data)
            results.append((time.perf_counter() - started, code, message.name))

    wall, busy = _in_threads(work, concurrency)
    if busy:
        raise BenchError(f"SMTP clients still busy after {BATCH_TIMEOUT:g} s")
    codes: dict[str, int] = {}
    for _, code, _ in results:
        codes[str(code)] = codes.get(str(code), 0) + 1
    slowest = [{"message": name, "s": latency, "code": code} for latency, code, name in sorted(results, reverse=True)[:3]]
    return {"wall": wall, "latencies": [latency for latency, _, _ in results], "codes": codes, "slowest": slowest}


def _in_threads(work, concurrency: int) -> tuple[float, bool]:
    """Run WORK in CONCURRENCY threads at once; (wall seconds until all ended or BATCH_TIMEOUT, whether any is still busy)."""
    threads = [threading.Thread(target=work, daemon=True) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + BATCH_TIMEOUT
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return time.perf_counter() - started, any(thread.is_alive() for thread in threads)


def spamc_ceiling(spamd: tuple[str, int], concurrency: int, count: int, message: Path) -> float:
    """COUNT spamc runs on MESSAGE from CONCURRENCY threads, no Postfix: spamd's own pace. Returns wall seconds."""
    argv = ["/usr/bin/spamc", "-x", "-d", spamd[0], "-p", str(spamd[1])]  # -x: an error is an error, not a pass-through
    numbers = itertools.count()
    failures: list[str] = []

    def work() -> None:
        while next(numbers) < count and not failures:
            with message.open("rb") as stdin:
                proc = subprocess.run(argv, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120, check=False)
            if proc.returncode != 0:
                failures.append(f"spamc exited {proc.returncode}: {proc.stderr[-500:]!r}")

    wall, busy = _in_threads(work, concurrency)
    if failures or busy:
        raise BenchError(failures[0] if failures else f"spamc still busy after {BATCH_TIMEOUT:g} s")
    return wall


class SpamdLog:
    """Counts spamd's `result:` lines (one per message it scanned) since the last call."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = path.stat().st_size

    def scans(self) -> int:
        with self._path.open("rb") as log:
            log.seek(self._offset)
            text = log.read()
        self._offset += len(text)
        return text.count(b" spamd: result: ")


@dataclass(frozen=True)
class Load:
    """What to send: the smtp-source file, the client mix (CRLF data) and the batch sizes per concurrency."""

    source_file: Path
    mix: list[Message]
    counts: dict[int, int]
    daemons: dict[str, int]  # spamd's and clamd's process groups
    spamd_max_size: int


def _cpu(wiring: Wiring, load: Load) -> dict[str, float]:
    """CPU seconds used so far by the filter processes, the Postfix instance, spamd and clamd."""
    master = wiring.postfix.master_pid()
    groups = group_cpu(master, *load.daemons.values())
    return {"filter": wiring.filter_cpu(), "postfix": groups[master], **{name: groups[pgid] for name, pgid in load.daemons.items()}}


def _batch(wiring: Wiring, load: Load, concurrency: int, spamd_log: SpamdLog) -> dict:
    """One smtp-source batch and one client batch through WIRING, each followed by a drained queue."""
    count = load.counts[concurrency]
    spamd_log.scans()
    cpu_before = _cpu(wiring, load)
    source_wall = smtp_source(wiring.port, concurrency, count, load.source_file)
    wait_drained(wiring.postfix)
    cpu_after = _cpu(wiring, load)
    source_scans = spamd_log.scans()
    mix = [load.mix[i % len(load.mix)] for i in range(count)]
    clients = smtp_clients(wiring.port, concurrency, mix)
    wait_drained(wiring.postfix)
    return {
        "source_msgs_per_s": count / source_wall,
        "source_cpu_s": {part: (cpu_after[part] - cpu_before[part]) / count for part in cpu_after},
        "client_msgs_per_s": count / clients["wall"],
        "p50_s": percentile(clients["latencies"], 0.50),
        "p99_s": percentile(clients["latencies"], 0.99),
        "codes": clients["codes"],
        "slowest": clients["slowest"],
        "spamd_scans": {"smtp_source": source_scans, "clients": spamd_log.scans()},
        "spamd_expected": {
            "smtp_source": count,
            "clients": sum(1 for message in mix if message.size <= load.spamd_max_size),
        },
    }


def _ceiling(spamd: tuple[str, int], concurrency: int, load: Load) -> dict:
    """One spamc batch: messages per second, and CPU per message of spamd and of the spamc processes."""
    count, pgid = load.counts[concurrency], load.daemons["spamd"]
    before = {"spamd": group_cpu(pgid)[pgid], "spamc": _children_cpu()}
    wall = spamc_ceiling(spamd, concurrency, count, load.source_file)
    after = {"spamd": group_cpu(pgid)[pgid], "spamc": _children_cpu()}
    return {"msgs_per_s": count / wall, "cpu_s": {part: (after[part] - before[part]) / count for part in after}}


def _children_cpu() -> float:
    """CPU seconds of the children this process has waited for (the spamc runs)."""
    times = os.times()
    return times.children_user + times.children_system


def measure(wirings: dict[str, Wiring], load: Load, spamd: tuple[str, int], spamd_log: SpamdLog, rounds: int) -> dict:
    """ROUNDS rounds over every concurrency and configuration (and the spamc ceiling), in alternating order."""
    for wiring in wirings.values():  # start smtpd processes and milter threads, warm spamd: no figure
        smtp_source(wiring.port, max(load.counts), max(load.counts), load.source_file)
        wait_drained(wiring.postfix)
    per_round = []
    for index in range(rounds):
        this_round: dict[str, dict] = {}
        for concurrency in load.counts:
            cell: dict[str, dict] = {"loadavg": loadavg()}
            for name in alternated(ORDER, index):
                if name == "ceiling":
                    cell[name] = _ceiling(spamd, concurrency, load)
                else:
                    cell[name] = _batch(wirings[name], load, concurrency, spamd_log)
            this_round[str(concurrency)] = cell
        per_round.append(this_round)
    return {"rounds": per_round, "summary": {str(c): _summarise(per_round, str(c)) for c in load.counts}}


def _summarise(per_round: list[dict], concurrency: str) -> dict:
    """Median, min and max over the rounds of every figure at CONCURRENCY, and the ratios the targets judge."""
    cells = [r[concurrency] for r in per_round]
    out: dict[str, dict] = {
        name: {key: summary(cell[name][key] for cell in cells) for key in ("source_msgs_per_s", "client_msgs_per_s", "p50_s", "p99_s")}
        for name in CONFIGS
    }
    for name in CONFIGS:
        out[name]["source_cpu_s"] = {part: summary(c[name]["source_cpu_s"][part] for c in cells) for part in cells[0][name]["source_cpu_s"]}
    out["ceiling"] = {
        "msgs_per_s": summary(cell["ceiling"]["msgs_per_s"] for cell in cells),
        "cpu_s": {part: summary(c["ceiling"]["cpu_s"][part] for c in cells) for part in cells[0]["ceiling"]["cpu_s"]},
    }
    out["ratios"] = {
        "mailfilter_vs_ceiling": summary(c["mailfilter"]["source_msgs_per_s"] / c["ceiling"]["msgs_per_s"] for c in cells),
        "mailfilter_vs_pair": summary(c["mailfilter"]["source_msgs_per_s"] / c["pair"]["source_msgs_per_s"] for c in cells),
        "mailfilter_vs_pair_mix": summary(c["mailfilter"]["client_msgs_per_s"] / c["pair"]["client_msgs_per_s"] for c in cells),
        "p99_mailfilter_vs_pair": summary(c["mailfilter"]["p99_s"] / c["pair"]["p99_s"] for c in cells),
        # Messages per CPU-second, mailfilter's path against the others: what the throughput ratios would be
        # with both cores to ourselves; other work on the machine moves it far less than wall time.
        "cpu_mailfilter_vs_ceiling": summary(_cpu_total(c, "ceiling") / _cpu_total(c, "mailfilter") for c in cells),
        "cpu_mailfilter_vs_pair": summary(_cpu_total(c, "pair") / _cpu_total(c, "mailfilter") for c in cells),
    }
    return out


def _cpu_total(cell: dict, name: str) -> float:
    """CPU seconds per message of every part of configuration NAME's path in one round's CELL."""
    return sum(cell[name]["cpu_s" if name == "ceiling" else "source_cpu_s"].values())


def large_messages(wiring: Wiring, milter: MailfilterMilter, data: bytes, count: int) -> dict:
    """A fresh `mailfilter milter`, then COUNT concurrent copies of DATA (CRLF): its peak RSS before and after."""
    milter.restart()
    idle = peak_rss_kib(milter.pid)
    clients = smtp_clients(wiring.port, count, [Message("large", "ham", data)] * count)
    peak = peak_rss_kib(milter.pid)
    wait_drained(wiring.postfix)
    return {"messages": count, "bytes": len(data), "idle_kib": idle, "peak_kib": peak, "codes": clients["codes"], "wall_s": clients["wall"]}
