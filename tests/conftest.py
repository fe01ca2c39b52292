"""Shared fixtures: a recording sendmail, config files, and the real spamd and clamd (started once per session)."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent
FAKE_SENDMAIL = HERE / "bin" / "fake_sendmail.py"
sys.path.insert(0, str(ROOT / "scripts"))


class Sendmail:
    """What the recording sendmail was given: one (argv, bytes) per call, oldest first."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def argv(self, *behaviour: str) -> list[str]:
        return [sys.executable, str(FAKE_SENDMAIL), str(self.folder), *behaviour]

    @property
    def calls(self) -> list[tuple[list[str], bytes]]:
        out = []
        for path in sorted(self.folder.glob("*.argv")):
            out.append((json.loads(path.read_text()), path.with_suffix(".eml").read_bytes()))
        return out


@pytest.fixture
def sendmail(tmp_path) -> Sendmail:
    folder = tmp_path / "sent"
    folder.mkdir()
    return Sendmail(folder)


def toml_value(value) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table, as [recipients] holds them
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def write_config(path: Path, sections: dict[str, dict]) -> str:
    lines = []
    for name, table in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{json.dumps(key)} = {toml_value(value)}" for key, value in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
def make_config(tmp_path, sendmail):
    """make_config(**overrides) -> path of a config that writes only under tmp_path."""

    def make(**overrides: dict) -> str:
        sections = {
            "delivery": {"sendmail": sendmail.argv(), "timeout": 30},
            "quarantine": {"dir": str(tmp_path / "quarantine")},
            "report": {
                "admin": "admin@example.net",
                "sender": "mailfilter@example.net",
                "state_dir": str(tmp_path / "state"),
                "journal_dir": str(tmp_path / "journal"),
            },
            "log": {"syslog": False, "file": str(tmp_path / "mailfilter.log")},
        }
        for name, table in overrides.items():
            sections.setdefault(name, {}).update(table)
        return write_config(tmp_path / "mailfilter.toml", sections)

    return make


DEFAULT_ARGS = ("-q", "4F2A1C", "-f", "alice@example.org", "--", "bob@example.net", "carol@example.net")


def run_pipe(config_path: str, raw: bytes, *argv: str, default: bool = True) -> tuple[int, str]:
    """Call the pipe door in-process: (exit status, what it printed). No ARGV: a typical envelope."""
    from mailfilter.doors import pipe

    out = io.StringIO()
    args = list(argv) if argv or not default else list(DEFAULT_ARGS)
    status = pipe.main(["--config", config_path, "pipe", *args], io.BytesIO(raw), out, environ={})
    return status, out.getvalue()


def run_bytes(raw: bytes, config):
    """pipeline.run on a message given as bytes."""
    from mailfilter import pipeline
    from mailfilter.spool import Spool

    with Spool.of(raw) as spool:
        return pipeline.run(spool, config)


@pytest.fixture(scope="session")
def daemons():
    """The real spamd and clamd from scripts/daemons.py (reused when already running)."""
    import daemons as harness

    state = harness.start()
    yield state


@pytest.fixture
def real_config(make_config, daemons):
    """make_config(...) pointed at the real daemons."""

    def make(**overrides: dict) -> str:
        base = {
            "spamd": {"host": daemons["spamd_host"], "port": daemons["spamd_port"], "timeout": 30},
            "clamd": {"socket": daemons["clamd_socket"], "timeout": 30},
        }
        for name, table in overrides.items():
            base.setdefault(name, {}).update(table)
        return make_config(**base)

    return make


def free_tcp_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def quarantined(folder: Path) -> list[tuple[dict, bytes]]:
    out = []
    for meta in sorted(folder.glob("*.json")):
        out.append((json.loads(meta.read_text()), meta.with_suffix(".eml").read_bytes()))
    return out


def mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777


@pytest.fixture
def milter_runner():
    """The pipeline.Runner that run_milter's milter scans with (None: pipeline.run); a test module may override it."""
    return None


@pytest.fixture
def run_milter(tmp_path, sendmail, milter_runner):
    """run_milter(raw, drain=True, **config sections) -> (milter status, ctx, in-flight counter): the milter door
    through pymilter's TestCtx (no socket, no MTA), queue id 4F2A1C, from alice@example.org to bob@example.net.
    With drain, it returns once the after-reply work (report, journal, summary line) is done; run.after is
    the AfterReply of the last run."""
    import functools

    import Milter
    from Milter import testctx

    from mailfilter import config as configmod
    from mailfilter import metrics
    from mailfilter.doors import milter

    class Ctx(testctx.TestCtx):
        """TestCtx that records milter quarantine (hold) instead of refusing it."""

        def __init__(self):
            super().__init__()
            self.held = None

        def quarantine(self, reason):
            self.held = reason

    afters = []

    def run(raw, drain=True, rcpts=("bob@example.net",), **sections):
        base = {
            "delivery": {"sendmail": sendmail.argv()},
            "quarantine": {"dir": str(tmp_path / "quarantine")},
            "report": {"admin": "admin@example.net", "state_dir": str(tmp_path / "state"), "journal_dir": str(tmp_path / "journal")},
            "milter": {"tmpdir": str(tmp_path)},
        }
        for name, table in sections.items():
            base.setdefault(name, {}).update(table)
        in_flight = milter.InFlight()
        run.after = after = milter.AfterReply()
        afters.append(after)
        deps = milter.Dependencies(configmod.from_dict(base), in_flight, metrics.Tally(), after, milter_runner)
        Milter.factory = functools.partial(milter.MailfilterMilter, deps)
        ctx = Ctx()
        ctx._setsymval("i", "4F2A1C")
        assert ctx._connect() == Milter.CONTINUE
        status = ctx._feedFile(io.BytesIO(raw), "alice@example.org", *rcpts)
        ctx._close()
        if drain:
            assert after.drain(60), "after-reply work not done within 60 s"
        return status, ctx, in_flight

    yield run
    for after in afters:
        after.close(60)


@pytest.fixture
def live(daemons):
    """live(**config sections) -> a Config that scans with the real spamd and clamd."""

    def make(**sections):
        from mailfilter import config as configmod

        base = {
            "spamd": {"host": daemons["spamd_host"], "port": daemons["spamd_port"], "timeout": 30},
            "clamd": {"socket": daemons["clamd_socket"], "timeout": 30},
        }
        for name, table in sections.items():
            base.setdefault(name, {}).update(table)
        return configmod.from_dict(base)

    return make
