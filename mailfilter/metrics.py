"""Prometheus metrics, the same families for both doors.

A Tally holds cumulative counters and scan-time histograms and learns from
journal events. The milter keeps one in memory and serves it over HTTP on a
loopback port (prometheus-client, with live gauges for messages in flight and
the quarantine). A `pipe` process lives for one message, so it adds its event
to a Tally kept in a JSON state file under an exclusive lock and rewrites a
.prom file for node_exporter's textfile collector (temporary name, rename).
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

PREFIX = "mailfilter"
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
COUNTERS = {
    "messages": ("Messages filtered, by door, verdict and action.", ("door", "verdict", "action")),
    "scanner_errors": ("Scanner failures (down, timeout, error, too large), by scanner and cause.", ("scanner", "cause")),
    "unscanned": ("Messages delivered without a scanner's verdict (on_error = accept), by scanner.", ("scanner",)),
}
HISTOGRAM = ("scan_duration_seconds", "Time one scanner took for one message.", ("scanner",))


class Tally:
    """Cumulative counters {family: {label values: n}} and histograms {scanner: [bucket counts..., sum, count]}."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        data = data or {}
        self.counters: dict[str, dict[tuple[str, ...], float]] = {
            name: {tuple(k.split("\x1f")): v for k, v in data.get("counters", {}).get(name, {}).items()} for name in COUNTERS
        }
        self.histograms: dict[str, list[float]] = {k: list(v) for k, v in data.get("histograms", {}).items()}
        self._lock = threading.Lock()

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
                self._inc("scanner_errors", tuple(failure.split(":", 1)))
            for scanner in event["unscanned"]:
                self._inc("unscanned", (scanner,))
            for scanner, key in (("spamd", "spam_seconds"), ("clamav", "virus_seconds")):
                if event.get(key) is not None:
                    self._time(scanner, float(event[key]))

    def _inc(self, name: str, labels: tuple[str, ...]) -> None:
        family = self.counters[name]
        family[labels] = family.get(labels, 0) + 1

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


def quarantine_usage(folder: str) -> tuple[int, int]:
    """(messages, bytes) held in the quarantine; hidden temporary files are not counted."""
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


def quarantine_gauges(folder: str) -> dict[str, tuple[str, float]]:
    count, size = quarantine_usage(folder)
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


def add_to_textfile(path: str, state_dir: str, event: dict[str, Any], quarantine_dir: str) -> None:
    """For `pipe`: add EVENT to the shared state and rewrite PATH, both under one exclusive lock."""
    from .actions.quarantine import write_atomic

    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    lock = os.open(os.path.join(state_dir, ".metrics.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state_path = os.path.join(state_dir, "metrics-state.json")
        try:
            with open(state_path, encoding="utf-8") as fh:
                tally = Tally(json.load(fh))
        except (FileNotFoundError, ValueError):
            tally = Tally()
        tally.observe(event)
        write_atomic(state_dir, "metrics-state.json", [json.dumps(tally.to_json()).encode("utf-8")])
        folder, name = os.path.split(os.path.abspath(path))
        write_atomic(folder, name, [render(tally, quarantine_gauges(quarantine_dir)).encode("utf-8")], mode=0o644)
    finally:
        os.close(lock)


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

    Bookkeeping never changes a message's fate: a failure here is logged, not raised.
    """
    from . import journal

    try:
        if config.report.journal_dir:
            journal.record(config.report.journal_dir, entry)
    except OSError as exc:
        logger.error("journal not written: %s", exc)
    if tally is not None:
        tally.observe(entry)
        return
    try:
        if config.metrics.textfile:
            add_to_textfile(config.metrics.textfile, config.report.state_dir, entry, config.quarantine.dir)
    except OSError as exc:
        logger.error("metrics textfile not written: %s", exc)
