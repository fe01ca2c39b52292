"""Both wirings as the fault tests set them up: mailfilter's config, a started instance, draining the queue."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from .chaos import Milter
from conftest import ROOT, write_config
from milterproc import USER
from postfix import PIPE_ARGS, PostfixInstance, filter_sections, filter_venv, free_port, kill_strays

SCANNER_TIMEOUT = 10  # [spamd]/[clamd] timeout
DRAIN_SECONDS = 60.0  # flushing the queue until empty


def config_sections(folder: Path, addresses: tuple, sendmail: list[str]) -> dict[str, dict]:
    """mailfilter's config for a filter whose files all live in FOLDER; ADDRESSES: (spamd host, spamd port, clamd socket)."""
    spamd_host, spamd_port, clamd_socket = addresses
    return {
        **filter_sections(folder, (spamd_host, spamd_port), clamd_socket, SCANNER_TIMEOUT),
        "delivery": {"sendmail": sendmail, "timeout": 60},
        "pipe": {"deadline": 120},
        "metrics": {"listen": ""},
    }


@contextlib.contextmanager
def instance() -> Iterator[PostfixInstance]:
    """A PostfixInstance whose filter processes are gone before its work folder is removed.

    pipe(8) runs `mailfilter pipe` outside the master's process group, so stopping the
    master does not wait for it: one still scanning (a test that failed half-way) would
    recreate its folders in the removed work folder. Those processes work in the
    instance's queue folder: whatever still does once the master is down is killed.
    """
    with PostfixInstance() as postfix:
        try:
            yield postfix
        finally:
            postfix.stop()
            kill_strays(postfix.work)


def start_pipe(postfix: PostfixInstance, sections: dict[str, dict]) -> str:
    """Start POSTFIX in the content_filter wiring with the config SECTIONS (in its filter_dir); return the config's path."""
    config = write_config(postfix.filter_dir / "mailfilter.toml", sections)
    postfix.start("content_filter", argv=[str(filter_venv()), *PIPE_ARGS], config=config)
    return config


class Worker:
    """`mailfilter worker` as pipe(8) runs the filter (USER:postdrop, the instance's MAIL_CONFIG and TMPDIR),
    on the config the pipe processes read; restartable, as an admin restarts it."""

    def __init__(self, postfix: PostfixInstance, config: str) -> None:
        self.postfix, self.config = postfix, config
        self.process = None
        self.starts = 0
        self.start()

    def start(self) -> None:
        from test_worker_real import WorkerProcess

        folder = self.postfix.filter_dir
        env = {"MAIL_CONFIG": str(self.postfix.config_dir), "TMPDIR": str(folder / "tmp")}
        self.starts += 1
        self.process = WorkerProcess(filter_venv(), self.config, folder, f"worker-{self.starts}", group="postdrop", env=env)
        self.process.expect(b"READY=1")

    def stop(self, timeout: float = 120.0) -> None:
        """SIGTERM, as `systemctl restart` sends it: new messages are filtered by their own processes meanwhile."""
        if self.process is not None:
            self.process.proc.terminate()
            self.process.proc.wait(timeout)
            self.process.close()
            self.process = None

    def log(self) -> str:
        return self.process.output() if self.process else ""

    def close(self) -> None:
        if self.process is not None:
            self.process.close()
            self.process = None


def start_milter(postfix: PostfixInstance, milter: Milter, sections: dict[str, dict], **milter_config: str) -> str:
    """Start MILTER with SECTIONS (files in its folder) on a free port, then POSTFIX in the milter wiring; return the config's path."""
    port = free_port()
    sections["log"]["file"] = str(milter.folder / "milter.log")  # where MilterProcess.log() reads
    sections["milter"] = {"socket": f"inet:{port}@127.0.0.1", "tmpdir": str(milter.folder), "user": f"{USER}:postdrop", **milter_config}
    config = write_config(milter.folder / "milter.toml", sections)
    # MAIL_CONFIG: the admin reports go through this instance's sendmail (see test_postfix_milter.py).
    milter.start(config, env={"MAIL_CONFIG": str(postfix.config_dir)})
    postfix.start("milter", milter=f"inet:127.0.0.1:{port}", milter_content_timeout="60s")
    return config


def drain(postfix: PostfixInstance, timeout: float = DRAIN_SECONDS) -> float:
    """Flush Postfix's queue (postqueue -f, at most once a second) until it is empty; return the seconds it took.

    Anything not active is flushed, incoming included: a flush that reaches a message whose
    delivery agent has not yet let go of it ("skipped, still being delivered") puts it back in
    incoming for 60 s, and only another flush (or qmgr's 300 s wakeup) brings it back.
    A message on hold would never leave: that fails at once.
    """
    started = time.monotonic()
    flushed = 0.0
    while queue := postfix.postqueue_json():
        now = time.monotonic()
        names = Counter(m["queue_name"] for m in queue)
        if now - started > timeout or names["hold"]:
            raise AssertionError(f"the queue is not empty after {now - started:.0f} s of flushing: {dict(names)}\n{postfix.diagnostics()}")
        if now - flushed > 1.0 and set(names) - {"active"}:
            postfix.flush()
            flushed = now
        time.sleep(0.1)  # polling the queue
    return time.monotonic() - started


def check_quarantine_folder(folder: Path) -> list[str]:
    """No hidden temporary file and no half entry (.eml without .json or the reverse) left behind."""
    if not folder.exists():
        return []
    names = {p.name for p in folder.iterdir()}
    problems = [f"hidden file left in the quarantine: {n}" for n in sorted(names) if n.startswith(".")]
    for name in sorted(names - {n for n in names if n.startswith(".")}):
        stem, _, ext = name.rpartition(".")
        other = f"{stem}.{'json' if ext == 'eml' else 'eml'}"
        if other not in names:
            problems.append(f"half a quarantine entry: {name} without {other}")
    return problems


def quarantine_list(config: str) -> list[str]:
    """`mailfilter quarantine list --json` with CONFIG: one JSON line per entry it lists."""
    argv = [sys.executable, "-m", "mailfilter", "--config", config, "quarantine", "list", "--json"]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=60, check=True)
    return proc.stdout.splitlines()
