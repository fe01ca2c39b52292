"""A private PostgreSQL cluster for the tests: initdb in a temporary folder, a loopback port chosen at run time.

initdb and pg_ctl refuse root, so they run as postgres (runuser) on a folder postgres owns; the unix
socket goes to that folder too. Readiness is pg_ctl's own wait (-w), then a poll until a query answers.
Output goes to a log file, never to the caller's pipes (a daemon would hold them open).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess  # nosec B404
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BIN = Path("/usr/lib/postgresql/15/bin")
READY_TIMEOUT = 60.0


def available() -> bool:
    return (BIN / "initdb").is_file() and _postgres_user() is not None


def _postgres_user() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        return None


def _as_postgres(*argv: str, log: Path) -> None:
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    with open(log, "ab") as out:
        subprocess.run([*prefix, *argv], stdin=subprocess.DEVNULL, stdout=out, stderr=out, check=True, timeout=120)  # nosec B603


@dataclass
class Cluster:
    folder: Path
    port: int

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "server.log"

    def dsn(self, database: str = "mailfilter") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=on"
        _as_postgres(
            str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start", log=self.folder / "pg_ctl.log"
        )
        self.wait_ready()

    def stop(self, mode: str = "fast") -> None:
        _as_postgres(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", log=self.folder / "pg_ctl.log")

    def wait_ready(self, database: str = "postgres") -> None:
        import psycopg

        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                with psycopg.connect(self.dsn(database), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # polling for readiness

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)


def start(port: int) -> Cluster:
    user = _postgres_user()
    if user is None:
        raise RuntimeError("no postgres user: install Debian's postgresql (scripts/setup)")
    folder = Path(tempfile.mkdtemp(prefix="mailfilter-pg-"))
    os.chown(folder, user.pw_uid, user.pw_gid)
    cluster = Cluster(folder, port)
    _as_postgres(str(BIN / "initdb"), "-D", str(cluster.data), "-A", "trust", "-U", "postgres", "--no-sync", log=folder / "initdb.log")
    cluster.start()
    return cluster


def remove(cluster: Cluster) -> None:
    try:
        cluster.stop("immediate")
    except subprocess.CalledProcessError:
        pass  # not running
    shutil.rmtree(cluster.folder, ignore_errors=True)
