"""Fixtures of the fault tests: their own spamd and clamd, which the chaos loop may kill, and the summary file.

The daemons live in $MAILFILTER_RUN_DIR when it is set, else in RUN_DIR, never in
the default run dir of the other tests (scripts/daemons.py): other test runs on the
same machine keep their daemons while these are killed. Daemons this session
started are stopped at its end; ones that were already running are left running.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import daemons as harness
from .chaos import daemon_pid

RUN_DIR = "/tmp/mailfilter-faults-daemons"
SUMMARY_ENV = "MAILFILTER_FAULTS_SUMMARY"


def pytest_configure(config: pytest.Config) -> None:
    # Registered here too, so that `--strict-markers` accepts it before pyproject.toml lists it.
    config.addinivalue_line("markers", "faults: fault injection under load (tests/faults): kills daemons, needs root")


@pytest.fixture(scope="session")
def fault_run_dir() -> str:
    """The run dir of the daemons the fault tests may kill; stopped afterwards if this session started them."""
    run_dir = str(Path(os.environ.get("MAILFILTER_RUN_DIR") or RUN_DIR).resolve())
    running = {name for name in harness.DAEMONS if daemon_pid(run_dir, name)}
    yield run_dir
    for name in harness.DAEMONS:
        if name not in running:
            harness.stop(run_dir, name)


class Summary:
    """The figures of the fault tests, one section per test, rewritten to $MAILFILTER_FAULTS_SUMMARY after each."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sections: dict[str, dict] = {}

    def add(self, name: str, figures: dict) -> None:
        self.sections[name] = figures
        if self.path:
            tmp = Path(self.path + ".tmp")
            tmp.write_text(json.dumps(self.sections, indent=2, sort_keys=True) + "\n")
            tmp.replace(self.path)


SUMMARY = Summary(os.environ.get(SUMMARY_ENV, ""))
HEADLINE = (
    "sent attempts accepted refused_4xx refused_5xx given_up_after_4xx delivered quarantined admin_reports "
    "lost duplicated duplicated_rfc1047_window viruses_delivered wrong_verdict unscanned_or_mislabelled strays"
).split()


@pytest.fixture(scope="session")
def summary() -> Summary:
    return SUMMARY


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """The figures of the load tests, after pytest's own summary."""
    if not SUMMARY.sections:
        return
    out = terminalreporter
    out.section("faults under load")
    for name, figures in SUMMARY.sections.items():
        out.line(f"{name}: " + ", ".join(f"{key}={figures[key]}" for key in HEADLINE if key in figures))
        out.line(f"{name}: faults injected {figures.get('faults')}, seconds {figures.get('seconds')}")
        out.line(f"{name}: refusals {figures.get('refusals')}")
    if SUMMARY.path:
        out.line(f"(JSON in {SUMMARY.path})")
