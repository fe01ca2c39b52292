"""`mailfilter pipe` handing messages to a resident `mailfilter worker` (doors/pipeclient.py, doors/worker.py).

The worker runs in a thread of this process with scripted scanner answers and the
recording sendmail; the client is the one `mailfilter pipe` runs. What pipe(8)
relies on does not change with a worker: exit 0, 69 or 75 only, one status line
on failure, the message byte for byte. And a worker is never needed: when it is
absent, declines or says nothing, the client filters the message itself; once the
message has gone, a failure defers it and nothing is delivered for a client that
gave up.
"""

from __future__ import annotations

import contextlib
import io
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from mailfilter import config as configmod
from mailfilter import log, pipeline
from mailfilter.doors import pipeclient
from mailfilter.doors import worker as workermod
from mailfilter.model import Cause, ScanFailure, ScanResults, SpamReport, VirusReport

import corpus
from conftest import DEFAULT_ARGS, ROOT, quarantined

HAM = SpamReport(0.3, 5.0, ("NONE",))
SPAM = SpamReport(1000.0, 5.0, ("GTUBE",))
CLEAN = VirusReport()
EICAR = VirusReport(("Eicar-Test-Signature",), 1)
CLAM_DOWN = ScanFailure("clamav", Cause.UNAVAILABLE, "Could not reach clamd")
MAILFILTER = ROOT / ".venv" / "bin" / "mailfilter"
ENVELOPE = ["alice@example.org", "bob@example.net", "carol@example.net"]


@pytest.fixture
def answers(monkeypatch):
    """answers(spam, virus, delay=0): what the pipeline's scanners say, after DELAY seconds."""

    def set_answers(spam, virus, delay=0.0):
        def scan(spool, config, *_):
            time.sleep(delay)
            return ScanResults(spam, virus)

        monkeypatch.setattr(pipeline, "scan", scan)  # a pipe process
        monkeypatch.setattr(pipeline.Runner, "scan", lambda runner, spool, config, *_: scan(spool, config))  # the worker

    return set_answers


class Running:
    def __init__(self, config_path: str, worker: workermod.Worker, listener: socket.socket) -> None:
        self.config_path, self.worker, self.listener = config_path, worker, listener
        self.thread = threading.Thread(target=worker.run, args=(listener,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.listener.fileno() != -1:
            self.worker.stopping = True
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
            self.listener.close()
            self.thread.join(10)
            self.worker.runner.close()

    def idle(self) -> None:
        assert self.worker.in_flight.wait_idle(10)


@pytest.fixture
def worker(tmp_path, make_config):
    """worker(**config overrides) -> a Running worker on tmp_path/run/worker.sock, with the config file it serves."""
    running: list[Running] = []

    def start(**overrides: dict) -> Running:
        path = make_config(pipe={"worker": str(tmp_path / "run" / "worker.sock"), **overrides.pop("pipe", {})}, **overrides)
        config = configmod.load(path)
        log.configure("mailfilter/worker", config.log, stderr=False)
        running.append(Running(path, workermod.Worker(config), workermod.open_socket(config.pipe.worker)))
        return running[-1]

    yield start
    for r in running:
        r.stop()


def hand_off(config_path: str, raw: bytes, *argv: str) -> tuple[int, str | None, io.BytesIO]:
    stdin = io.BytesIO(raw)
    status, line = pipeclient.hand_off(["--config", config_path, "pipe", *(argv or DEFAULT_ARGS)], stdin, environ={})
    return status, line, stdin


def log_text(tmp_path: Path) -> str:
    return (tmp_path / "mailfilter.log").read_text()


def test_clean_message_goes_through_the_worker_byte_for_byte(worker, answers, sendmail, tmp_path):
    answers(HAM, CLEAN)
    w = worker()
    raw = corpus.clean().replace(b"\n", b"\r\n", 3) + bytes(range(256)) + b"\x00no final newline" * 8000  # > one chunk
    status, line, _ = hand_off(w.config_path, raw)
    assert (status, line) == (0, None)
    [(argv, data)] = sendmail.calls
    assert argv == ["-G", "-i", "-f", *ENVELOPE[:1], "--", *ENVELOPE[1:]]
    assert data.endswith(raw.split(b"\n\n", 1)[1]) or data.endswith(raw[-1000:])
    assert data.endswith(b"\x00no final newline" * 8000)
    w.idle()  # the summary line is written after the reply
    assert "mailfilter/worker" in log_text(tmp_path) and "4F2A1C: from=<alice@example.org>, nrcpt=2, verdict=clean" in log_text(tmp_path)


def test_virus_is_quarantined_by_the_worker(worker, answers, sendmail, tmp_path):
    answers(HAM, EICAR)
    w = worker()
    raw = corpus.eicar_attached()
    assert hand_off(w.config_path, raw)[:2] == (0, None)
    [(meta, stored)] = quarantined(tmp_path / "quarantine")
    assert stored == raw and meta["queue_id"] == "4F2A1C"
    w.idle()  # the report goes after the reply
    [(argv, report)] = sendmail.calls
    assert argv[-1] == "admin@example.net" and b"Subject: VIRUS FOUND" in report


def test_reject_policy_and_scanner_failure_keep_their_statuses(worker, answers, sendmail):
    w = worker(policy={"virus": "reject"}, report={"admin": ""})
    answers(HAM, EICAR)
    assert hand_off(w.config_path, corpus.eicar_attached())[:2] == (69, "5.7.1 message rejected: virus found: Eicar-Test-Signature")
    answers(HAM, CLAM_DOWN)
    assert hand_off(w.config_path, corpus.clean())[:2] == (75, "4.7.1 mailfilter: clamav unavailable, message deferred")
    assert sendmail.calls == []


def test_usage_error_and_help_come_back_from_the_worker(worker, answers, sendmail):
    answers(HAM, CLEAN)
    w = worker()
    status, line, _ = hand_off(w.config_path, corpus.clean(), "-f", "alice@example.org")
    assert status == 75 and line.startswith("4.3.5 mailfilter: missing '-- RECIPIENT...'")
    status, line, _ = hand_off(w.config_path, b"", "--help")
    assert status == 0 and line.startswith("usage: mailfilter") and "master.cf" in line
    assert sendmail.calls == []


def test_hostile_sender_stays_the_value_of_f(worker, answers, sendmail):
    answers(HAM, CLEAN)
    w = worker()
    assert hand_off(w.config_path, corpus.clean(), "-f", "-c", "--", "-t", "--config=/etc/passwd")[:2] == (0, None)
    [(argv, _)] = sendmail.calls
    assert argv == ["-G", "-i", "-f", "-c", "--", "-t", "--config=/etc/passwd"]


def test_no_worker_listening_leaves_the_message_untouched(tmp_path, make_config):
    path = make_config(pipe={"worker": str(tmp_path / "absent.sock")})
    with pytest.raises(pipeclient.NoWorker) as caught:
        hand_off(path, corpus.clean())
    assert str(caught.value) == ""  # the usual case: nothing to warn about
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "absent.sock"))  # a socket file nobody listens on: a killed worker
    stale.close()
    stdin = io.BytesIO(corpus.clean())
    with pytest.raises(pipeclient.NoWorker):
        pipeclient.hand_off(["--config", path, "pipe", *DEFAULT_ARGS], stdin, environ={})
    assert stdin.tell() == 0


def test_worker_off_in_config_is_never_tried(make_config):
    with pytest.raises(pipeclient.NoWorker):
        hand_off(make_config(pipe={"worker": ""}), corpus.clean())


def test_worker_serving_another_config_declines(worker, answers, sendmail, tmp_path):
    answers(HAM, CLEAN)
    w = worker()
    other = tmp_path / "other.toml"
    other.write_text(Path(w.config_path).read_text())  # same socket, another file
    stdin = io.BytesIO(corpus.clean())
    with pytest.raises(pipeclient.NoWorker, match=f"declined: it serves {w.config_path}, not {other}"):
        pipeclient.hand_off(["--config", str(other), "pipe", *DEFAULT_ARGS], stdin, environ={})
    assert stdin.tell() == 0 and sendmail.calls == []


def test_worker_for_another_postfix_instance_declines(worker, answers, sendmail, tmp_path):
    answers(HAM, CLEAN)
    w = worker()  # this process has no MAIL_CONFIG: sendmail reinjects into /etc/postfix
    for same in ("", "/etc/postfix", "/etc/postfix/"):
        assert pipeclient.hand_off(
            ["--config", w.config_path, "pipe", *DEFAULT_ARGS], io.BytesIO(corpus.clean()), {"MAIL_CONFIG": same}
        ) == (0, None)
    stdin = io.BytesIO(corpus.clean())
    with pytest.raises(
        pipeclient.NoWorker, match="declined: it reinjects into the Postfix of /etc/postfix, not MAIL_CONFIG=/etc/postfix-out"
    ):
        pipeclient.hand_off(["--config", w.config_path, "pipe", *DEFAULT_ARGS], stdin, {"MAIL_CONFIG": "/etc/postfix-out"})
    assert stdin.tell() == 0 and len(sendmail.calls) == 3


def test_stopping_worker_and_another_user_decline(worker, answers, monkeypatch):
    answers(HAM, CLEAN)
    w = worker()
    monkeypatch.setattr(workermod, "peer_uid", lambda conn: 4242)
    with pytest.raises(pipeclient.NoWorker, match="declined: it runs as uid 0, the client as uid 4242"):
        hand_off(w.config_path, corpus.clean())
    monkeypatch.undo()
    answers(HAM, CLEAN)
    w.stop()  # a worker told to stop declines the clients it accepted before its accept loop ended
    listener = workermod.open_socket(w.worker.config.pipe.worker)
    w.worker.stopping = True
    served = threading.Thread(target=lambda: w.worker._handle_guarded(listener.accept()[0]), daemon=True)
    served.start()
    with pytest.raises(pipeclient.NoWorker, match="declined: it is stopping"):
        hand_off(w.config_path, corpus.clean())
    served.join(5)
    listener.close()


class FakeWorker:
    """A socket that answers the greeting as told, then does BEHAVIOUR: for client-side failures."""

    def __init__(self, path: Path, greeting: bytes | None, behaviour: str) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen()
        self.received = b""
        self.thread = threading.Thread(target=self.serve, args=(greeting, behaviour), daemon=True)
        self.thread.start()

    def serve(self, greeting: bytes | None, behaviour: str) -> None:
        with self.listener:
            conn, _ = self.listener.accept()
        with conn:
            self.received = conn.recv(65536)
            if greeting is None:
                conn.recv(1)  # say nothing until the client hangs up
                return
            conn.sendall(greeting)
            if behaviour == "close":
                conn.recv(1000)
            elif behaviour == "garbage":
                while not self.received.endswith(b"0\n"):
                    self.received += conn.recv(65536)
                conn.sendall(b"200 OK\n")


@pytest.mark.parametrize(
    ("behaviour", "said"), [("close", "the pipe worker failed ("), ("garbage", "the pipe worker failed (unusable reply")]
)
def test_worker_failing_after_go_defers(tmp_path, make_config, behaviour, said):
    path = make_config(pipe={"worker": str(tmp_path / "fake.sock")})
    fake = FakeWorker(tmp_path / "fake.sock", b"GO\n", behaviour)
    status, line, _ = hand_off(path, corpus.clean() * 100)
    fake.thread.join(5)
    assert status == 75 and line.startswith(f"4.3.0 mailfilter: {said}") and line.endswith("message deferred")
    assert fake.received.startswith(b"MAILFILTER-PIPE/2 ")


def test_silent_worker_is_passed_by(tmp_path, make_config, monkeypatch):
    monkeypatch.setattr(pipeclient, "GREETING_TIMEOUT", 0.2)
    path = make_config(pipe={"worker": str(tmp_path / "fake.sock")})
    fake = FakeWorker(tmp_path / "fake.sock", None, "")
    stdin = io.BytesIO(corpus.clean())
    with pytest.raises(pipeclient.NoWorker, match="did not answer"):
        pipeclient.hand_off(["--config", path, "pipe", *DEFAULT_ARGS], stdin, environ={})
    assert stdin.tell() == 0
    fake.thread.join(5)


def test_client_deadline_defers_and_the_worker_delivers_nothing(worker, answers, sendmail, tmp_path):
    answers(HAM, CLEAN, delay=1.5)
    w = worker(pipe={"deadline": 0.5})
    started = time.monotonic()
    status, line, _ = hand_off(w.config_path, corpus.clean())
    assert time.monotonic() - started < 1.4
    assert (status, line) == (75, "4.3.0 mailfilter: filter deadline of 0.5 s exceeded, message deferred")
    w.idle()
    assert sendmail.calls == [] and quarantined(tmp_path / "quarantine") == []
    assert "4F2A1C: mailfilter: the pipe client gave up before delivery" in log_text(tmp_path)


def test_message_cut_short_is_never_delivered(worker, answers, sendmail, tmp_path):
    answers(HAM, CLEAN)
    w = worker()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(tmp_path / "run" / "worker.sock"))
        fields = b"\0".join(s.encode() for s in [w.config_path, "", "pipe", *DEFAULT_ARGS])
        sock.sendall(b"MAILFILTER-PIPE/2 %d\n" % len(fields) + fields)
        assert sock.recv(3) == b"GO\n"
        sock.sendall(b"100\nFrom: a@example.org\n\nonly part of it")
    w.idle()
    assert sendmail.calls == []
    assert "4F2A1C: mailfilter: the pipe client's message ended early" in log_text(tmp_path)


@pytest.mark.parametrize("greeting", [b"HELLO\n", b"MAILFILTER-PIPE/2 999999999\n", b"MAILFILTER-PIPE/2 50\nshort", b""])
def test_bad_greeting_does_not_hurt_the_next_client(worker, answers, sendmail, tmp_path, greeting):
    answers(HAM, CLEAN)
    w = worker()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(tmp_path / "run" / "worker.sock"))
        sock.sendall(greeting)
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(100) == b""
    assert hand_off(w.config_path, corpus.clean())[:2] == (0, None)
    assert len(sendmail.calls) == 1
    # a bare connect-and-close is how a starting worker checks the socket is taken: not worth a warning
    assert ("pipe client dropped before its message" in log_text(tmp_path)) is (greeting != b"")


def test_concurrent_client_processes_each_delivered_once(worker, answers, sendmail, tmp_path):
    """20 `mailfilter pipe` processes at once, as pipe(8) with maxproc 20 would start them."""
    answers(HAM, CLEAN, delay=0.2)
    w = worker()
    env = {"PATH": "/usr/bin:/bin", "MAILFILTER_CONFIG": w.config_path}
    procs = []
    for n in range(20):
        raw = corpus.clean().replace(b"Subject:", b"Subject: n%03d" % n, 1)
        argv = [str(MAILFILTER), "pipe", "-q", f"Q{n}", "-f", "alice@example.org", "--", "bob@example.net"]
        procs.append((subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env), raw))
    outputs = [proc.communicate(raw, timeout=60)[0] for proc, raw in procs]
    assert ([proc.returncode for proc, _ in procs], outputs) == ([0] * 20, [b""] * 20)
    subjects = sorted(data.split(b"Subject: ", 1)[1][:4] for _, data in sendmail.calls)
    assert subjects == sorted(b"n%03d" % n for n in range(20))
    w.idle()
    assert log_text(tmp_path).count("mailfilter/worker") >= 20  # the worker did them, not the processes themselves


def test_open_socket_replaces_a_stale_socket_but_not_a_live_one(tmp_path):
    path = str(tmp_path / "run" / "worker.sock")
    first = workermod.open_socket(path)
    with pytest.raises(workermod.WorkerError, match="another worker is listening"):
        workermod.open_socket(path)
    first.close()  # killed: the file stays
    second = workermod.open_socket(path)
    assert (Path(path).stat().st_mode & 0o777, (tmp_path / "run").stat().st_mode & 0o777) == (0o600, 0o700)
    second.close()
    Path(path).unlink()
    Path(path).write_text("not a socket")
    with pytest.raises(workermod.WorkerError, match="not a socket"):
        workermod.open_socket(path)


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        (["pipe", "-f", "a@b", "--", "c@d"], {}, ("/etc/mailfilter/mailfilter.toml", False)),
        (["pipe", "-f", "a@b", "--", "c@d"], {"MAILFILTER_CONFIG": "/x/env.toml"}, ("/x/env.toml", True)),
        (["--config", "/x/a.toml", "pipe", "-f", "a@b", "--", "c@d"], {"MAILFILTER_CONFIG": "/x/env.toml"}, ("/x/a.toml", True)),
        (["pipe", "--config=/x/b.toml", "-f", "a@b", "--", "c@d"], {}, ("/x/b.toml", True)),
        (["pipe", "-f", "-c", "--", "-c", "/x/rcpt.toml"], {}, ("/etc/mailfilter/mailfilter.toml", False)),
        (["pipe", "-q", "--config", "-f", "a@b", "--", "c@d"], {}, ("/etc/mailfilter/mailfilter.toml", False)),
    ],
)
def test_client_finds_the_config_file_the_way_pipe_does(argv, environ, expected):
    assert pipeclient.config_path(argv, environ) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[spamd]\nport = 783\n", ("/run/mailfilter-pipe/worker.sock", 300.0)),
        ('[pipe]\nworker = "/x/w.sock"\ndeadline = 60\n', ("/x/w.sock", 60.0)),
        ('pipe.worker = "/x/dotted.sock"\n', ("/x/dotted.sock", 300.0)),
        ('[pipe]\n"\\u0077orker" = "/x/escaped.sock"\n', ("/x/escaped.sock", 300.0)),
        ('[pipe]\nworker = ""\n', None),
        ("[pipe]\ndeadline = -1\n", None),
        ('[pipe]\nworker = "/x/w.sock\n', None),  # unterminated: tomllib refuses it
    ],
)
def test_client_reads_pipe_worker_and_deadline(tmp_path, text, expected):
    (tmp_path / "c.toml").write_text(text)
    if expected is None:
        with pytest.raises(pipeclient.NoWorker):
            pipeclient.settings(str(tmp_path / "c.toml"), True)
    else:
        assert pipeclient.settings(str(tmp_path / "c.toml"), True) == expected


def test_client_reads_the_same_defaults_as_the_config():
    assert pipeclient.PIPE_DEADLINE == configmod.PipeConfig().deadline
    assert pipeclient.settings("/nonexistent/default.toml", False) == (configmod.PipeConfig().worker, configmod.PipeConfig().deadline)


def test_check_says_whether_a_worker_answers(worker, make_config, tmp_path):
    from mailfilter.commands.check import Status, worker_line

    w = worker()
    config = configmod.load(w.config_path)
    assert worker_line(config, {}).status is Status.OK and "answers on" in worker_line(config, {}).text
    declined = worker_line(config, {"MAIL_CONFIG": "/etc/postfix-out"})
    assert declined.status is Status.WARN and "declined: it reinjects into the Postfix of /etc/postfix" in declined.text
    w.stop()
    absent = worker_line(config, {})
    assert absent.status is Status.OK and "each `mailfilter pipe` filters its message itself" in absent.text
    off = worker_line(configmod.load(make_config(pipe={"worker": ""})), {})
    assert (off.status, off.text) == (Status.OK, "not used ([pipe] worker = '')")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        ('[pipe]\nworker = "/x/w.sock"  # ours\ndeadline = 120.5\r\n', {"worker": "/x/w.sock", "deadline": 120.5}),
        ('[spamd]\nport = 783\n[pipe]\n# worker = "/commented/out"\ndeadline = 60 # s\n[milter]\nuser = "m"\n', {"deadline": 60.0}),
        ('[pipe]\nworker = ""\n', {"worker": ""}),
        ('pipe.worker = "/x/dotted.sock"\n', None),
        ('pipe = { worker = "/x/inline.sock" }\n', None),
        ('[pipe]\n"worker" = "/x/quoted-key.sock"\n', {"worker": "/x/quoted-key.sock"}),  # as tests/ and bench/ write keys
        ("[pipe]\n'deadline' = 30\n\"worker_idle\" = 5\n", {"deadline": 30.0}),
        ('[pipe]\n"work er" = "/x/spaced-key.sock"\n', {}),
        ('[pipe]\n"worker\\u0020" = "/x/escaped-key.sock"\n', None),
        ('[pipe]\n"pipe".worker = "/x/quoted-dotted.sock"\n', None),
        ("[pipe]\nworker = '/x/literal.sock'\n", None),
        ('[pipe]\nworker = "/x/esc\\\\aped.sock"\n', None),
        ('[ pipe ]\nworker = "/x/spaced-header.sock"\n', None),
        ('[pipe.more]\nworker = "/x/subtable.sock"\n', None),
        ('[milter]\nworker = "/x/other-table.sock"\n', None),
        ('[pipe]\nworker = "/x/a"\nworker = "/x/b"\n', None),
        ("[pipe]\ndeadline = 1_000\n", None),
        ('[pipe]\ndeadline = "60"\n', None),
        ("[pipe]\nworker = 5\n", None),
        ('[pipe]\nworker = """/x/multi"""\n', None),
        ('[report]\nadmin = "deadline-watch@example.org"\n[quarantine]\ndir = "/srv/worker/q"\n', {}),
        ('[delivery]\nsendmail = [\n  "/usr/sbin/sendmail",\n  "--worker",\n]\n', {}),
        ('x = [\n  { worker = "/x/array-of-tables.sock" },\n]\n', None),
        ("[pipe]\nworkers = 3\n", None),
    ],
)
def test_simple_reader_reads_plain_lines_and_defers_the_rest_to_tomllib(text, expected):
    assert pipeclient.simple_pipe_keys(text.encode()) == expected


def test_simple_reader_never_disagrees_with_tomllib():
    """Random config files from plausible and odd fragments: whenever the simple reader answers, tomllib agrees."""
    import random
    import tomllib

    fragments = [
        "[pipe]",
        "[spamd]",
        "[pipe.x]",
        "[ pipe ]",
        "[milter]",
        'worker = "/run/a.sock"',
        'worker = "/run/b.sock" # c',
        "worker = ''",
        "deadline = 30",
        "deadline = 2.5  # s",
        "deadline = -1",
        "deadline = 1e2",
        "# deadline = 5",
        'pipe.worker = "/d.sock"',
        "pipe = { deadline = 9 }",
        "port = 783",
        'user = "mailfilter"',
        'dir = "/srv/worker/deadline"',
        '  { worker = "/in/array" },',
        'sendmail = ["/x", "worker"]',
        "x = [",
        "  [1, 2],",
        "]",
        "",
        '"deadline" = 7',
        "'worker' = \"/run/q.sock\"",
        '"worker_idle" = 3',
        '"pipe".deadline = 4',
        'note = "worker"',
    ]
    rng = random.Random(20261128)
    answered = 0
    for _ in range(3000):
        text = "\n".join(rng.choice(fragments) for _ in range(rng.randint(1, 8))) + "\n"
        simple = pipeclient.simple_pipe_keys(text.encode())
        if simple is None:
            continue
        answered += 1
        try:
            table = tomllib.loads(text).get("pipe", {})
        except tomllib.TOMLDecodeError:
            continue  # the full loader refuses it; the worker cannot be serving it either
        assert simple == {k: v for k, v in table.items() if k in ("worker", "deadline")}, text
    assert answered > 300  # the reader answered often enough for the comparison to mean something


def _greet_raw(sock: socket.socket, config_path: str, version: bytes = b"MAILFILTER-PIPE/2") -> bytes:
    fields = b"\0".join(s.encode() for s in [config_path, "", "pipe", *DEFAULT_ARGS])
    sock.sendall(version + b" %d\n" % len(fields) + fields)
    return sock.recv(100)


def _send_raw_message(sock: socket.socket, raw: bytes) -> None:
    sock.sendall(b"%d\n" % len(raw) + raw + b"0\n")


@contextlib.contextmanager
def _sent(running, raw: bytes):
    """A raw client connection to RUNNING's socket that has been told GO and has sent RAW whole."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(running.worker.config.pipe.worker))
        assert _greet_raw(sock, running.config_path) == b"GO\n"
        _send_raw_message(sock, raw)
        yield sock


def test_delivery_longer_than_the_client_deadline_is_waited_for_and_done_once(worker, answers, sendmail, tmp_path):
    """The client's deadline covers the scan; once it said ACT it waits for the delivery ([delivery] timeout).
    Before, a client whose deadline struck during a slow sendmail deferred (75) while the worker went on and
    delivered: Postfix's retry then delivered a second copy."""
    answers(HAM, CLEAN)
    w = worker(pipe={"deadline": 1.0}, delivery={"sendmail": sendmail.argv("--sleep", "2"), "timeout": 30})
    started = time.monotonic()
    assert hand_off(w.config_path, corpus.clean())[:2] == (0, None)
    assert time.monotonic() - started >= 2
    w.idle()
    assert len(sendmail.calls) == 1


def test_client_that_gives_up_before_act_gets_nothing_delivered(worker, answers, sendmail, tmp_path):
    """A client that reads READY but does not say ACT (its deadline struck): nothing is delivered or stored."""
    answers(HAM, CLEAN)
    w = worker()
    for raw in (corpus.clean(), corpus.eicar_attached()):
        with _sent(w, raw) as sock:
            assert sock.recv(100).startswith(b"READY ")
        w.idle()
    assert sendmail.calls == [] and quarantined(tmp_path / "quarantine") == []
    assert log_text(tmp_path).count("the pipe client gave up before delivery; nothing delivered") == 2


def test_client_that_says_something_else_than_act_gets_nothing_delivered(worker, answers, sendmail, tmp_path):
    answers(HAM, CLEAN)
    w = worker()
    with _sent(w, corpus.clean()) as sock:
        assert sock.recv(100).startswith(b"READY ")
        sock.sendall(b"NO\n")
        assert sock.recv(200).startswith(b"75 ")  # deferred: nothing was done
    w.idle()
    assert sendmail.calls == []


def test_act_then_reply_and_the_bookkeeping_after_the_reply(worker, answers, sendmail, tmp_path):
    """With ACT the worker delivers and answers 0; the summary line follows the reply."""
    answers(HAM, CLEAN)
    w = worker()
    with _sent(w, corpus.clean()) as sock:
        ready = sock.recv(100)
        assert ready.startswith(b"READY ") and int(ready.split()[1]) >= 30  # [delivery] timeout 30 s and a margin
        sock.sendall(b"ACT\n")
        assert sock.recv(100) == b"0 0\n"
    w.idle()
    assert len(sendmail.calls) == 1 and "verdict=clean" in log_text(tmp_path)


def test_deferral_and_reject_come_without_ready(worker, answers, sendmail):
    """Nothing to deliver: the worker answers at once, the client needs no ACT."""
    w = worker(policy={"virus": "reject"}, report={"admin": ""})
    answers(HAM, CLAM_DOWN)
    with _sent(w, corpus.clean()) as sock:
        assert sock.recv(100).startswith(b"75 ")
    assert sendmail.calls == []


def test_client_of_another_protocol_version_is_declined(worker, answers, sendmail, tmp_path):
    """A client of the release before (a half-done upgrade) filters its message itself."""
    answers(HAM, CLEAN)
    w = worker()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(tmp_path / "run" / "worker.sock"))
        assert _greet_raw(sock, w.config_path, b"MAILFILTER-PIPE/1").startswith(b"DECLINE it speaks MAILFILTER-PIPE/2")
    assert sendmail.calls == []


@pytest.mark.parametrize("size", [b"99999999999999999999", b"1048577"])
def test_chunk_larger_than_the_protocol_allows_is_refused(worker, answers, sendmail, tmp_path, size):
    answers(HAM, CLEAN)
    w = worker()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(tmp_path / "run" / "worker.sock"))
        assert _greet_raw(sock, w.config_path) == b"GO\n"
        sock.sendall(size + b"\nFrom: a@example.org\n\n")
        sock.shutdown(socket.SHUT_WR)
        sock.recv(100)
    w.idle()
    assert sendmail.calls == []
    assert "nothing delivered" in log_text(tmp_path)


def test_message_over_pipe_max_size_is_refused_not_scanned(worker, answers, sendmail, tmp_path):
    answers(HAM, CLEAN)
    w = worker(pipe={"max_size": 100_000})
    status, line, _ = hand_off(w.config_path, corpus.clean() + b"x" * 200_000)
    assert (status, line) == (69, "5.3.4 mailfilter: message larger than 100000 bytes cannot be scanned")
    assert sendmail.calls == []
    assert hand_off(w.config_path, corpus.clean())[:2] == (0, None)


def test_socket_in_a_folder_others_can_write_is_not_used(tmp_path, make_config):
    folder = tmp_path / "open"
    folder.mkdir()
    folder.chmod(0o777)  # anybody could have bound the socket, or replace it
    path = make_config(pipe={"worker": str(folder / "worker.sock")})
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(folder / "worker.sock"))
    listener.listen()
    stdin = io.BytesIO(corpus.clean())
    try:
        with pytest.raises(pipeclient.NoWorker, match=r"not using the pipe worker socket: .*open can be written by others"):
            pipeclient.hand_off(["--config", path, "pipe", *DEFAULT_ARGS], stdin, environ={})
    finally:
        listener.close()
    assert stdin.tell() == 0
    with pytest.raises(workermod.WorkerError, match="can be written by others"):
        workermod.open_socket(str(folder / "other.sock"))


def test_unsafe_socket_rules(tmp_path):
    safe = tmp_path / "safe"
    safe.mkdir(mode=0o700)
    assert pipeclient.unsafe_socket(str(safe / "absent.sock"), 0) is None
    (safe / "file").write_text("")
    assert "is not a socket" in pipeclient.unsafe_socket(str(safe / "file"), 0)
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(sticky / "w.sock"))
    try:
        assert pipeclient.unsafe_socket(str(sticky / "w.sock"), 0) is None  # ours, in a sticky folder: nobody can replace it
        assert pipeclient.unsafe_socket(str(sticky / "w.sock"), 4242) == f"{sticky / 'w.sock'} belongs to uid 0, not to uid 4242"
    finally:
        sock.close()
    link = tmp_path / "link"
    link.symlink_to(safe)
    (safe / "w2.sock").touch()
    assert "not a folder" in (pipeclient.unsafe_folder(str(link), 0) or "")
