"""Replay the fuzzers' kept inputs (fuzz/regressions/TARGET/) and seeds through the same property checks, without atheris.

An input lands in fuzz/regressions/ when fuzz/run.py finds it breaking a
property; it stays there for good, so a bug once found is tested on every run.
Each replay must also be quick: libFuzzer keeps slow inputs (timeout-*) too.
"""

from __future__ import annotations

import sys
import time

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "fuzz"))
import properties

REGRESSIONS = ROOT / "fuzz" / "regressions"
REPLAY_SECONDS = 5.0  # well under fuzz/run.py's default per-input timeout (10 s)


def kept_inputs() -> list:
    params = []
    for target, spec in properties.TARGETS.items():
        for i, seed in enumerate(spec.seeds):
            params.append(pytest.param(target, seed, id=f"{target}-seed-{i}"))
        for path in sorted((REGRESSIONS / target).glob("*")):
            params.append(pytest.param(target, path.read_bytes(), id=f"{target}-{path.name}"))
    return params


@pytest.mark.parametrize(("target", "data"), kept_inputs())
def test_kept_input(target, data):
    started = time.monotonic()
    properties.TARGETS[target].check(data)
    assert time.monotonic() - started < REPLAY_SECONDS


def test_reader_reads_back_what_pack_writes():
    data = properties.pack(b"abc", 7, b"x" * 300, b"") + b"tail"
    reader = properties.Reader(data)
    assert (reader.chunk(), reader.byte(), reader.chunk(), reader.chunk(), reader.rest()) == (b"abc", 7, b"x" * 300, b"", b"tail")
    assert (reader.byte(), reader.chunk(), reader.text()) == (0, b"", "")
