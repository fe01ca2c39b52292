"""FILTER_README's advanced wiring in a private Postfix (tests/postfix.py), with `mailfilter smtp` as a real process.

    smtpd (-o content_filter=smtp-mailfilter:[127.0.0.1]:DOOR) -> smtp-mailfilter transport (smtp, XFORWARD)
      -> `mailfilter smtp` on DOOR -> 127.0.0.1:REINJECT smtpd (content_filter=, as master.cf.example C) -> sink

The door runs as the pipe user (as its systemd unit runs as its own user), from the copied venv, with
MAIL_CONFIG naming this instance (admin reports through sendmail reach it). Between the door and spamd, and
between the door and the reinjection smtpd, a Gate: a TCP forwarder that a test can take down (connection
refused, as a stopped daemon) and bring back, or hold (a slow scanner).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path

from conftest import write_config
from postfix import HOST, PIPE_GROUP, PostfixInstance, _SinkSession, filter_sections, filter_venv, free_port

DOOR_TRANSPORT = "smtp-mailfilter"


class _Utf8SinkSession(_SinkSession):
    """The sink, offering SMTPUTF8 too (Postfix bounces SMTPUTF8 mail to a server without it)."""

    def reply(self, *lines: str) -> None:
        if lines and lines[-1] == "250 8BITMIME":
            lines = (*lines[:-1], "250-8BITMIME", "250 SMTPUTF8")
        super().reply(*lines)


class SmtpPostfix(PostfixInstance):
    """A private Postfix wired as master.cf.example's C, minus what a test has no use for."""

    def __init__(self) -> None:
        super().__init__()
        self.sink._server.RequestHandlerClass = _Utf8SinkSession  # type: ignore[attr-defined]
        self.door_port = free_port()
        self.reinject_port = 0

    def start_smtp(self, maxproc: int = 4, transport: str = DOOR_TRANSPORT, client: str = "smtp", **main_cf: str) -> None:
        """Start the instance; TRANSPORT (at most MAXPROC at once, Postfix's CLIENT: smtp or lmtp) carries every
        message smtpd takes to door_port."""
        self.smtp_port, self.reinject_port = free_port(), free_port()
        self.config_dir.mkdir(mode=0o755)
        main = self._main_cf("milter", "inet:127.0.0.1:1", "")
        for key in ("smtpd_milters", "milter_default_action", "milter_protocol"):
            main.pop(key)
        main |= {"smtputf8_enable": "yes", "allow_min_user": "yes"} | main_cf
        self._write("main.cf", "".join(f"{key} = {value}\n" for key, value in main.items()))
        smtpd = f"{HOST}:{self.smtp_port} inet n - n - - smtpd"
        master = self._master_cf("milter", (), None).replace(
            smtpd + "\n", f"{smtpd}\n  -o content_filter={transport}:[{HOST}]:{self.door_port}\n", 1
        )
        master += "\n".join(
            [
                f"{transport} unix - - n - {maxproc} {client}",
                f"  -o syslog_name=postfix/{transport}",
                f"  -o {client}_send_xforward_command=yes",
                "  -o disable_mime_output_conversion=yes",
                f"  -o {client}_generic_maps=",
                f"{HOST}:{self.reinject_port} inet n - n - - smtpd",
                "  -o syslog_name=postfix/reinject",
                "  -o content_filter=",
                "  -o receive_override_options=no_unknown_recipient_checks,no_header_body_checks,no_milters",
                "  -o smtpd_helo_restrictions=",
                "  -o smtpd_client_restrictions=",
                "  -o smtpd_sender_restrictions=",
                "  -o smtpd_relay_restrictions=",
                "  -o smtpd_recipient_restrictions=permit_mynetworks,reject",
                "  -o smtpd_data_restrictions=",
                "  -o mynetworks=127.0.0.0/8",
                "  -o smtpd_authorized_xforward_hosts=127.0.0.0/8",
            ]
        ) + "\n"
        self._write("master.cf", master)
        for name, mode in (("maildrop", 0o730), ("public", 0o710)):
            folder = self.queue_dir / name
            folder.mkdir(parents=True)
            shutil.chown(folder, "postfix", PIPE_GROUP)
            folder.chmod(mode)
        try:
            self.postfix("start")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{self.postfix('check', check=False).stderr}{self.diagnostics()}") from None
        self.wait_for(self._banner, what="a 220 banner from smtpd")


class Forwarder:
    """A TCP listener on a fixed free port that hands each connection to _serve() in a thread of its own (a
    subclass forwards it to TARGET); up() listens (again), stop_listening() refuses new connections, close()
    is down()."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target, self.port = target, free_port()
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop_listening(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()

    def down(self) -> None:
        self.stop_listening()

    def close(self) -> None:
        self.down()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        raise NotImplementedError


class Gate(Forwarder):
    """A TCP forwarder on a fixed free port to TARGET; down() refuses connections (and cuts open ones), up() serves
    again; hold is seconds to wait before forwarding a new connection (a slow daemon). `seen` counts connections."""

    def __init__(self, target: tuple[str, int]) -> None:
        super().__init__(target)
        self.hold = 0.0
        self.seen = 0
        self.connected = threading.Event()  # set at each connection forwarded (clear() to wait for the next)
        self._open: set[socket.socket] = set()
        self.up()

    def down(self) -> None:
        self.stop_listening()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _serve(self, client: socket.socket) -> None:
        self.seen += 1
        self.connected.set()
        if self.hold:
            threading.Event().wait(self.hold)
        try:
            upstream = socket.create_connection(self.target, timeout=30)
        except OSError:
            client.close()
            return
        if self._listener is None:  # taken down while holding
            client.close()
            upstream.close()
            return
        with self._lock:
            self._open |= {client, upstream}
        back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        back.start()
        _pump(client, upstream)
        back.join()
        with self._lock:
            self._open -= {client, upstream}
        client.close()
        upstream.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


class DoorProcess:
    """`mailfilter smtp` as the pipe user, from the copied venv, with this instance's MAIL_CONFIG; its output in door.out."""

    def __init__(self, postfix: SmtpPostfix, spamd: str, clamd_socket: str, more: dict | None = None, **smtp: object) -> None:
        """MORE: config sections added (e.g. recipients); SMTP: [smtp] keys."""
        self.postfix = postfix
        folder = postfix.filter_dir
        host, port = spamd.rsplit(":", 1)
        sections = filter_sections(folder, (host, int(port)), clamd_socket, timeout=10) | (more or {})
        sections["smtp"] = {"listen": f"{HOST}:{postfix.door_port}", "reinject": f"{HOST}:{postfix.reinject_port}", "timeout": 10, **smtp}
        sections["metrics"] = {"listen": ""}
        self.config = write_config(folder / "mailfilter.toml", sections)
        self.proc: subprocess.Popen | None = None
        self.environ: dict[str, str] = {}  # more environment (NOTIFY_SOCKET)

    def start(self) -> DoorProcess:
        postfix = self.postfix
        env = {
            "PATH": "/usr/bin:/bin",
            "MAILFILTER_CONFIG": str(self.config),
            "MAIL_CONFIG": str(postfix.config_dir),
            "TMPDIR": str(postfix.filter_dir / "tmp"),
            **self.environ,
        }
        with open(postfix.filter_dir / "door.out", "ab") as out:
            self.proc = subprocess.Popen(
                [str(filter_venv()), "smtp"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=env,
                cwd=postfix.filter_dir,
                user=postfix.pipe_user.pw_uid,
                group=PIPE_GROUP,
                extra_groups=[],
            )
        postfix.wait_for(self._greets, what="a 220 greeting from mailfilter smtp")
        return self

    def _greets(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"mailfilter smtp exited with {self.proc.returncode}:\n{self.output()}")
        try:
            with socket.create_connection((HOST, self.postfix.door_port), timeout=5) as sock:
                # 421 "too many sessions": the door is up, only Postfix's retries took every session first
                return sock.recv(512).startswith((b"220 ", b"421 "))
        except OSError:
            return False

    def output(self) -> str:
        path = self.postfix.filter_dir / "door.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self, signum: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signum)
            self.proc.wait(60)

    def stop(self) -> int | None:
        self.kill(signal.SIGTERM)
        return self.proc.returncode if self.proc else None


def log_path(postfix: SmtpPostfix) -> Path:
    return postfix.filter_dir / "mailfilter.log"
