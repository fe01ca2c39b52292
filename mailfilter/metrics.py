"""Prometheus metrics, the same families for both doors.

A Tally holds cumulative counters and scan-time histograms and learns from
journal events. The milter keeps one in memory and serves it over HTTP on a
loopback port (prometheus-client, with live gauges for messages in flight and
the quarantine). A `pipe` process lives for one message, so it adds its event
to a Tally kept in a JSON state file under an exclusive lock and rewrites a
.prom file for node_exporter's textfile collector (temporary name, rename).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

PREFIX = "mailfilter"
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
COUNTERS = {
    "messages": ("Messages filtered, by door, verdict and action.", ("door", "verdict", "action")),
    "scanner_errors": ("Scanner failures (down, timeout, error, too large), by scanner and cause.", ("scanner", "cause")),
    "unscanned": ("Messages delivered without a scanner's verdict (on_error = accept), by scanner.", ("scanner",)),
    "scans": ("Scans answered, by scanner and the pool member that answered.", ("scanner", "server")),
    "failovers": ("Pool members that failed a message before another answered (or all failed), by scanner.", ("scanner",)),
    "sender_rules": ("Messages whose envelope sender matched [senders] allow or block, by list.", ("list",)),
    "journal_errors": ("Journal writes that failed (the message was not held up), by journal: folder or postgresql.", ("journal",)),
}
HISTOGRAM = ("scan_duration_seconds", "Time one scanner took for one message.", ("scanner",))


class Tally:
    """Cumulative counters {family: {label values: n}} and histograms {scanner: [bucket counts..., sum, count]}."""

    def __init__(self, data: Any = None) -> None:
        """DATA as to_json() gave it. Anything else (a damaged state file) gives an empty tally, with `damaged` set."""
        self.counters: dict[str, dict[tuple[str, ...], float]] = {name: {} for name in COUNTERS}
        self.histograms: dict[str, list[float]] = {}
        self.damaged = False
        self._lock = threading.Lock()
        if data is not None:
            try:
                self.counters, self.histograms = _load(data)
            except (ValueError, TypeError, AttributeError):
                self.damaged = True

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {
                "counters": {name: {"\x1f".join(k): v for k, v in values.items()} for name, values in self.counters.items()},
                "histograms": {k: list(v) for k, v in self.histograms.items()},
            }

    def observe(self, event: dict[str, Any]) -> None:
        """Count one journal event (see journal.event)."""
        with self._lock:
            self._inc("messages", (event["door"], event["verdict"], event["action"]))
            for failure in event["failures"]:
                self._inc("scanner_errors", (*failure.split(":", 1), "")[:2])
            for scanner in event["unscanned"]:
                self._inc("unscanned", (scanner,))
            for scanner, server in (event.get("servers") or {}).items():
                self._inc("scans", (str(scanner), str(server)))
            for scanner, n in (event.get("failovers") or {}).items():
                self._inc("failovers", (str(scanner),), n)
            if event.get("sender_rule"):
                self._inc("sender_rules", (str(event["sender_rule"]).partition(" ")[0],))
            for store in event.get("journal_errors") or ():
                self._inc("journal_errors", (str(store),))
            for scanner, key in (("spamd", "spam_seconds"), ("clamav", "virus_seconds")):
                if event.get(key) is not None:
                    self._time(scanner, float(event[key]))

    def _inc(self, name: str, labels: tuple[str, ...], n: float = 1) -> None:
        family = self.counters[name]
        family[labels] = family.get(labels, 0) + n

    def _time(self, scanner: str, seconds: float) -> None:
        row = self.histograms.setdefault(scanner, [0.0] * (len(BUCKETS) + 2))
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                row[i] += 1
        row[-2] += seconds
        row[-1] += 1

    def families(self) -> list[tuple[str, str, str, list[tuple[str, dict[str, str], float]]]]:
        """(name, type, help, samples) in Prometheus' model; samples are (sample name, labels, value)."""
        with self._lock:  # a snapshot: nothing is yielded while the lock is held
            counters = {name: sorted(values.items()) for name, values in self.counters.items()}
            histograms = sorted((k, list(v)) for k, v in self.histograms.items())
        out = []
        for name, (text, labels) in COUNTERS.items():
            samples = [(f"{PREFIX}_{name}_total", dict(zip(labels, key, strict=True)), v) for key, v in counters[name]]
            out.append((f"{PREFIX}_{name}", "counter", text, samples))
        name, text, _ = HISTOGRAM
        samples = []
        for scanner, row in histograms:
            for bound, count in zip(BUCKETS, row, strict=False):
                samples.append((f"{PREFIX}_{name}_bucket", {"scanner": scanner, "le": _number(bound)}, count))
            samples.append((f"{PREFIX}_{name}_bucket", {"scanner": scanner, "le": "+Inf"}, row[-1]))
            samples.append((f"{PREFIX}_{name}_sum", {"scanner": scanner}, row[-2]))
            samples.append((f"{PREFIX}_{name}_count", {"scanner": scanner}, row[-1]))
        out.append((f"{PREFIX}_{name}", "histogram", text, samples))
        return out


def _load(data: Any) -> tuple[dict[str, dict[tuple[str, ...], float]], dict[str, list[float]]]:
    """Counters and histograms from DATA, checked: ValueError unless every part has the expected shape."""
    counters_in = data.get("counters", {}) if isinstance(data, dict) else None
    histograms_in = data.get("histograms", {}) if isinstance(data, dict) else None
    if not isinstance(counters_in, dict) or not isinstance(histograms_in, dict):
        raise ValueError("not a tally")
    counters = {}
    for name, (_text, labels) in COUNTERS.items():
        family = counters_in.get(name, {})
        if not isinstance(family, dict):
            raise ValueError(f"{name} is not a table")
        if not all(isinstance(key, str) and _count(value) for key, value in family.items()):
            raise ValueError(f"{name} holds a bad label set or count")
        counters[name] = {tuple(key.split("\x1f")): value for key, value in family.items()}
        if not all(len(key) == len(labels) for key in counters[name]):
            raise ValueError(f"{name} holds a label set of the wrong length")
    histograms = {}
    for scanner, row in histograms_in.items():
        if not isinstance(scanner, str) or not isinstance(row, list) or len(row) != len(BUCKETS) + 2 or not all(map(_count, row)):
            raise ValueError(f"histogram {scanner!r} is not {len(BUCKETS) + 2} counts")
        histograms[scanner] = list(row)
    return counters, histograms


def _count(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def quarantine_usage(folder: str) -> tuple[int, int]:
    """(messages, bytes) held in the quarantine FOLDER, or in the PostgreSQL store when FOLDER is its URI
    ([quarantine] store or dir, as held_at() gives it); hidden temporary files are not counted. A store that
    cannot be read counts (0, 0), as a folder that cannot be listed does."""
    if folder.startswith(("postgresql://", "postgres://")):
        from .actions.pgstore import PgStore
        from .actions.quarantine import QuarantineError

        try:
            return PgStore(folder).usage()
        except QuarantineError:
            return 0, 0
    count = size = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0, 0
    for entry in entries:
        if entry.name.endswith(".eml") and not entry.name.startswith("."):
            try:
                size += entry.stat().st_size
                count += 1
            except OSError:
                continue
    return count, size


def render(tally: Tally, gauges: dict[str, tuple[str, float]]) -> str:
    """The text exposition format (what node_exporter's textfile collector reads)."""
    lines = []
    for name, kind, text, samples in tally.families():
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        lines += [f"{sample}{_labels(labels)} {_number(value)}" for sample, labels, value in samples]
    for name, (text, value) in gauges.items():
        lines += [f"# HELP {PREFIX}_{name} {text}", f"# TYPE {PREFIX}_{name} gauge", f"{PREFIX}_{name} {_number(value)}"]
    return "\n".join(lines) + "\n"


def held_at(quarantine: Any) -> str:
    """Where [quarantine] keeps held mail, for quarantine_usage(): the store's URI, else the folder."""
    return quarantine.store or quarantine.dir


def quarantine_gauges(folder: str) -> dict[str, tuple[str, float]]:
    return _gauges(*quarantine_usage(folder))


def _gauges(count: int, size: int) -> dict[str, tuple[str, float]]:
    return {
        "quarantine_messages": ("Messages held in the quarantine.", count),
        "quarantine_bytes": ("Bytes held in the quarantine.", size),
    }


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}" if labels else ""


def _number(value: float) -> str:
    return repr(float(value)) if value != int(value) else f"{int(value)}.0"


STATE = "metrics-state.json"
GAUGE_REFRESH = 60.0  # seconds: the quarantine is counted at most this often; each message adds its own entry


def add_to_textfile(path: str, state_dir: str, event: dict[str, Any], quarantine_dir: str, now: float | None = None) -> str | None:
    """For `pipe`: add EVENT to the shared state in STATE_DIR and rewrite PATH. Returns a warning to log when
    the state was damaged: it is then started afresh.

    The lock covers only the read-modify-write of two small files (temporary name, rename; no fsync: a lost
    increment after a power cut is acceptable, a torn file is not). PATH is renamed under the lock too, so
    that no counter ever goes back (Prometheus would read a reset). The quarantine gauges come from the
    state: the quarantine is counted again by one process, outside the lock, when the count is older than
    GAUGE_REFRESH seconds; in between, each quarantined message adds itself.
    """
    now = time.time() if now is None else now
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    with _locked(state_dir):
        state, damage = _read_state(state_dir)
        tally = Tally(state)
        warning = f"{os.path.join(state_dir, STATE)} was damaged ({damage}): counting starts afresh" if damage else None
        if tally.damaged:
            warning = f"{os.path.join(state_dir, STATE)} was not a tally: counting starts afresh"
        tally.observe(event)
        messages, size, counted = _quarantine(state) or (0, 0, -math.inf)
        if event.get("quarantine_id"):
            messages, size = messages + 1, size + max(int(event.get("size") or 0), 0)
        refresh = not 0 <= now - counted < GAUGE_REFRESH
        _write(path, state_dir, tally, (messages, size, now if refresh else counted))
    if refresh:  # this process counts again; the others go on with the time stamp it has claimed
        messages, size = quarantine_usage(quarantine_dir)
        with _locked(state_dir):
            _write(path, state_dir, Tally(_read_state(state_dir)[0]), (messages, size, now))
    return warning


@contextlib.contextmanager
def _locked(state_dir: str) -> Iterator[None]:
    lock = os.open(os.path.join(state_dir, ".metrics.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
    finally:
        os.close(lock)


def _read_state(state_dir: str) -> tuple[Any, str | None]:
    """(the state as JSON, or None; what is wrong with the file, if it is not JSON)"""
    try:
        with open(os.path.join(state_dir, STATE), "rb") as fh:
            state = json.load(fh)
        return state, None if state is not None else "null"
    except FileNotFoundError:
        return None, None
    except ValueError as exc:  # not JSON (UnicodeDecodeError is one too)
        return None, str(exc)


def _quarantine(state: Any) -> tuple[int, int, float] | None:
    """The quarantine gauges kept in STATE: (messages, bytes, when counted), if they are sane."""
    held = state.get("quarantine") if isinstance(state, dict) else None
    if not isinstance(held, dict):
        return None
    values = held.get("messages"), held.get("bytes"), held.get("counted")
    if not all(map(_count, values)) or not isinstance(values[0], int) or not isinstance(values[1], int):
        return None
    return values  # type: ignore[return-value]


def _write(path: str, state_dir: str, tally: Tally, held: tuple[int, int, float]) -> None:
    messages, size, counted = held
    state = tally.to_json() | {"quarantine": {"messages": messages, "bytes": size, "counted": counted}}
    _replace(state_dir, STATE, json.dumps(state).encode("utf-8"), 0o600)
    gauges = _gauges(messages, size)
    folder, name = os.path.split(os.path.abspath(path))
    _replace(folder, name, render(tally, gauges).encode("utf-8"), 0o644)


def _replace(folder: str, name: str, data: bytes, mode: int) -> None:
    """FOLDER/NAME holds DATA, all of it or none: a hidden temporary file, renamed. Not synced."""
    tmp = os.path.join(folder, f".{name}.{os.urandom(4).hex()}.tmp")  # secrets.token_hex, without its imports
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(folder, name))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def serve(listen: str, tally: Tally, in_flight: Callable[[], int], quarantine_dir: str) -> Any:
    """For the milter: serve TALLY and live gauges over HTTP on LISTEN (HOST:PORT); returns the server."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

    class Collector:
        def collect(self) -> Iterable[Metric]:
            for name, kind, text, samples in tally.families():
                family: Metric
                if kind == "counter":
                    family = CounterMetricFamily(name, text, labels=list(COUNTERS[name[len(PREFIX) + 1 :]][1]))
                else:
                    family = HistogramMetricFamily(name, text, labels=["scanner"])
                for sample, labels, value in samples:
                    family.add_sample(sample, labels, value)
                yield family
            gauges = {"in_flight": ("Messages being received or scanned right now.", in_flight())}
            gauges |= quarantine_gauges(quarantine_dir)
            for name, (text, value) in gauges.items():
                yield GaugeMetricFamily(f"{PREFIX}_{name}", text, value=value)

    registry = CollectorRegistry()
    registry.register(Collector())
    host, _, port = listen.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host or "127.0.0.1", registry=registry)
    return server


def account(entry: dict[str, Any], config: Any, logger: Any, tally: Tally | None = None) -> None:
    """Write ENTRY to the journal and count it (in TALLY, or the pipe's textfile).

    Bookkeeping never changes a message's fate: it never raises, whatever fails (even a deadline that
    strikes now); the failure is logged.
    """
    from . import journal

    failed = []  # the journals not written, counted in journal_errors
    try:
        if config.report.journal_dir:
            journal.record(config.report.journal_dir, entry)
    except BaseException as exc:  # noqa: BLE001 - logged; the message's fate is sealed
        _log(logger, "error", "journal not written: %s", exc)
        failed.append("folder")
    try:
        if getattr(config.report, "journal_store", ""):
            from . import pgjournal

            pgjournal.record(config.report.journal_store, entry)
    except BaseException as exc:  # noqa: BLE001 - logged; the message's fate is sealed
        _log(logger, "error", "journal not written to PostgreSQL: %s", exc)
        failed.append("postgresql")
    entry = {**entry, "journal_errors": failed} if failed else entry
    try:
        if tally is not None:
            tally.observe(entry)
        elif config.metrics.textfile:
            warning = add_to_textfile(config.metrics.textfile, config.report.state_dir, entry, held_at(config.quarantine))
            if warning:
                _log(logger, "warning", "metrics: %s", warning)
    except BaseException as exc:  # noqa: BLE001 - logged; the message's fate is sealed
        _log(logger, "error", "metrics not counted: %s", exc)


def _log(logger: Any, level: str, text: str, *args: Any) -> None:
    try:
        getattr(logger, level)(text, *args)
    except BaseException:  # noqa: BLE001, S110 - a broken log must not make bookkeeping raise
        pass
