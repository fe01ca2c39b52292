"""Helpers for the tests of `mailfilter smtp`: the door run in a thread of the test, and a fake reinjecting smtpd.

    with FakeSmtpd() as smtpd, RunningDoor(config) as door:
        client = door.client()   # smtplib.SMTP to the door
        ...
        [message] = smtpd.wait(1)
"""

from __future__ import annotations

import asyncio
import smtplib
import socket
import socketserver
import threading
import time
from dataclasses import dataclass, field

HOST = "127.0.0.1"


@dataclass
class Taken:
    """One message the fake smtpd took: what came before DATA, and the data (dots unstuffed)."""

    xforward: list[str]
    mail: str
    rcpts: list[str]
    data: bytes


@dataclass
class Behaviour:
    end_of_data: str = "250 2.0.0 Ok: queued as FAKE1"
    hold_dot: float = 0.0  # seconds to wait before answering 354 (a slow reinjection)
    xforward: bool = True
    extensions: tuple[str, ...] = ("8BITMIME", "SMTPUTF8", "PIPELINING")
    lost: list[str] = field(default_factory=list)  # what each connection closed before its dot had sent
    data_started: threading.Event = field(default_factory=threading.Event)  # a DATA command came
    hang_up_after: bool = False  # close each connection after its message (an smtpd_timeout on an idle one)
    connections: int = 0
    hold_answer: threading.Event | None = None  # set it to let the fake answer a final dot it has read
    dot_seen: threading.Event = field(default_factory=threading.Event)  # a final dot came


class _Session(socketserver.StreamRequestHandler):
    timeout = 30

    def send(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        fake: FakeSmtpd = self.server.fake  # type: ignore[attr-defined]
        behaviour = fake.behaviour
        xforward: list[str] = []
        mail, rcpts = "", []
        behaviour.connections += 1
        self.send("220 fake.example.net ESMTP")
        while line := self.rfile.readline():
            text = line.decode("utf-8", "surrogateescape").rstrip("\r\n")
            verb = text.split(" ", 1)[0].upper()
            if verb == "EHLO":
                offered = ["XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE"] if behaviour.xforward else []
                extensions = [*behaviour.extensions, *offered]
                for ext in ["fake.example.net", *extensions[:-1]]:
                    self.send(f"250-{ext}")
                self.send(f"250 {extensions[-1]}")
            elif verb == "XFORWARD":
                xforward.append(text)
                self.send("250 2.0.0 Ok")
            elif verb == "MAIL":
                mail, rcpts = text, []
                self.send("250 2.1.0 Ok")
            elif verb == "RCPT":
                rcpts.append(text)
                self.send("250 2.1.5 Ok")
            elif verb == "DATA":
                behaviour.data_started.set()
                if behaviour.hold_dot:
                    time.sleep(behaviour.hold_dot)
                self.send("354 End data with <CR><LF>.<CR><LF>")
                lines = []
                while (data := self.rfile.readline()) not in (b".\r\n", b""):
                    lines.append(data[1:] if data.startswith(b".") else data)
                if not data:
                    behaviour.lost.append(mail)
                    return
                behaviour.dot_seen.set()
                if behaviour.hold_answer is not None:
                    behaviour.hold_answer.wait(30)
                self.send(behaviour.end_of_data)
                if behaviour.end_of_data.startswith("2"):
                    fake.record(Taken(xforward, mail, rcpts, b"".join(lines)))
                xforward, mail, rcpts = [], "", []
                if behaviour.hang_up_after:
                    return
            elif verb == "RSET":
                xforward, mail, rcpts = [], "", []
                self.send("250 2.0.0 Ok")
            elif verb == "QUIT":
                self.send("221 2.0.0 Bye")
                return
            else:
                self.send("502 5.5.2 Error: command not recognized")


class FakeSmtpd:
    """A reinjecting smtpd on a free loopback port, in threads of the test; keeps what it takes."""

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self.behaviour = behaviour or Behaviour()
        self._server = socketserver.ThreadingTCPServer((HOST, 0), _Session)
        self._server.daemon_threads = True
        self._server.fake = self  # type: ignore[attr-defined]
        self.port = self._server.server_address[1]
        self.taken: list[Taken] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def record(self, taken: Taken) -> None:
        with self._changed:
            self.taken.append(taken)
            self._changed.notify_all()

    def wait(self, count: int, timeout: float = 30) -> list[Taken]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.taken) >= count, timeout):
                raise AssertionError(f"the fake smtpd took {len(self.taken)} message(s), expected {count}")
            return list(self.taken)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeSmtpd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RunningDoor:
    """`mailfilter smtp` (doors.smtp.run) on its own event loop in a thread, on a free port; stop() as SIGTERM does."""

    def __init__(self, config, port: int) -> None:
        self.config, self.port = config, port
        self.states: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self.status: int | None = None
        self._thread = threading.Thread(target=self._main, name="smtp-door", daemon=True)

    def _main(self) -> None:
        from mailfilter.doors import smtp

        async def main() -> int:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()

            def ready(state: str) -> None:
                self.states.append(state)
                self._ready.set()

            return await smtp.run(self.config, f"{HOST}:{self.port}", self._stop, ready)

        try:
            self.status = asyncio.run(main())
        finally:
            self._ready.set()

    def start(self) -> RunningDoor:
        self._thread.start()
        if not self._ready.wait(30) or "READY=1" not in self.states:
            raise AssertionError("the smtp door did not become ready")
        return self

    def stop(self, timeout: float = 60) -> None:
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)  # type: ignore[union-attr]
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError("the smtp door did not stop")

    def client(self) -> smtplib.SMTP:
        client = smtplib.SMTP(HOST, self.port, local_hostname="postfix.example.net", timeout=60)
        client.ehlo()
        return client

    def lmtp_client(self) -> smtplib.LMTP:
        """A client after LHLO, for a door with [smtp] protocol = "lmtp"."""
        client = smtplib.LMTP(HOST, self.port, local_hostname="postfix.example.net", timeout=60)
        client.ehlo()  # LHLO
        return client

    def __enter__(self) -> RunningDoor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def crlf(raw: bytes) -> bytes:
    """RAW with CRLF line ends, as it goes over SMTP."""
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def door_config(live, tmp_path, sendmail, smtpd: FakeSmtpd, sections=None, **smtp):
    """The config of a door (the real spamd and clamd: the `live` fixture) that reinjects into SMTPD, with its
    quarantine, state and journal under TMP_PATH, reports through the recording SENDMAIL; SECTIONS and SMTP added."""
    return live(
        **(sections or {}),
        smtp={"reinject": smtpd.address, "timeout": 10, "grace": 10, **smtp},
        metrics={"listen": ""},
        delivery={"sendmail": sendmail.argv()},
        quarantine={"dir": str(tmp_path / "quarantine")},
        report={
            "admin": "admin@example.net",
            "sender": "mailfilter@example.net",
            "state_dir": str(tmp_path / "state"),
            "journal_dir": str(tmp_path / "journal"),
        },
    )
