"""The light half of `mailfilter pipe`: hand the message to a running `mailfilter worker`.

pipe(8) starts one process per message. Importing the whole pipeline (asyncio,
aiospamc, the config model, logging) costs a Python process more CPU than the
scanners' clients do, on every message. So entry.py tries this module first: it
imports nothing beyond _socket and _signal (no json, no tomllib, no typing, no re or enum: see settings()),
finds [pipe] worker and [pipe] deadline, and streams the message to the worker,
which runs the very same door code (doors/pipe.py) in a process that imported
everything once.

The protocol, over the worker's unix socket (\\0 separates fields: neither a
path nor an argument can contain one):

  client  MAILFILTER-PIPE/2 <n>\\n<n bytes: config path \\0 $MAIL_CONFIG \\0 argv[0] \\0 argv[1]...>
  worker  GO\\n                    or  DECLINE reason\\n
  client  <n>\\n<n bytes> ... 0\\n   the message in chunks of at most CHUNK bytes; the 0 chunk ends it
  worker  READY <seconds>\\n        the message is scanned and is to be delivered or quarantined
  client  ACT\\n                   sent only while [pipe] deadline has not passed
  worker  <status> <n>\\n<n bytes>   exit status 0, 69 or 75, and the text to print (UTF-8)

The worker answers a message it will not act on (deferred, rejected, a usage
error) without READY. [pipe] deadline bounds everything up to READY; the worker
delivers only after ACT, and the client, once it has said ACT, waits the
<seconds> the worker gave (its [delivery] timeout and a margin) instead: so a
client never gives up on a delivery in progress, and a worker never delivers
for a client that gave up (that would be a second delivery on Postfix's retry).
`mailfilter check` compares [pipe] deadline plus that budget with Postfix's
command_time_limit.

Before anything is sent the client checks whom it talks to: the socket and
every folder above it must be owned by the client's user or root and not be
replaceable by anyone else, and the process that listens (SO_PEERCRED) must run as
the client's own user, or be root (systemd's mailfilter-worker.socket listens for
the worker it starts). Otherwise it is not our worker, and the message is
filtered in this process.

NoWorker is raised, and the caller filters the message itself, only while
nothing of the message has been read: no socket, nobody listening, a worker
that does not answer the greeting in time, or one that declines (it serves
another config file, would reinject into another Postfix instance than
pipe(8)'s $MAIL_CONFIG, runs as another user, or is stopping). From the first
byte read on, every failure is a deferral (exit 75 with one 4.x.x line): the
message is still whole in Postfix's queue, and a worker that has gone cannot
tell us whether it delivered.
"""

from __future__ import annotations

import _signal as signal  # the C modules under signal and socket: their Python halves import enum
import _socket as socket  # (IntEnum for signal and family names) and selectors, half of this client's start-up
import os
import stat  # os imports it: free
import sys
import time

from ..defaults import CONFIG_ENV, CONFIG_PATH, PIPE_DEADLINE, WORKER_SOCKET

TYPE_CHECKING = False  # typing itself would be an import of a few ms on every message
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import BinaryIO

PROTOCOL = b"MAILFILTER-PIPE/2"
PROTOCOL_NAME = b"MAILFILTER-PIPE/"
GREETING_TIMEOUT = 10.0  # a worker that does not say GO or DECLINE by then is passed by
CHUNK = 64 * 1024
REPLY_LIMIT = 1 << 20
EX_TEMPFAIL = 75
MAX_DEADLINE = 86400.0  # as config.py's bound; a larger value is the full loader's error to report
MAX_BUDGET = 2 * 86400  # a READY budget beyond this is not a worker's answer
ACT_MARGIN = 10.0  # seconds the client waits beyond the budget READY gave
_VALUE_OPTIONS = {"-f", "-q", "--queue-id"}  # their values are never read as options here either


class NoWorker(Exception):
    """Filter in this process; the message is untouched. The text says why (empty: no worker configured or listening)."""


class Deferred(Exception):
    """Defer the message with this text (the worker failed after the message started to go)."""


class _DeadlineExceeded(BaseException):
    pass


def config_path(argv: list[str], environ: Mapping[str, str]) -> tuple[str, bool]:
    """The config file `pipe` would load (as config.load resolves it), and whether it was named."""
    named = None
    i = 0
    while i < len(argv) and argv[i] != "--":
        arg = argv[i]
        if arg in ("-c", "--config") and i + 1 < len(argv):
            named = argv[i + 1]
        elif arg.startswith("--config="):
            named = arg.split("=", 1)[1]
        i += 2 if arg in _VALUE_OPTIONS or arg in ("-c", "--config") else 1
    named = named or environ.get(CONFIG_ENV) or None
    return os.path.abspath(named or CONFIG_PATH), named is not None


def settings(path: str, named: bool) -> tuple[str, float]:
    """[pipe] worker and [pipe] deadline from the config file.

    tomllib (with the re, typing and datetime it imports) would cost this client
    more than everything else it does, so the file is first read by simple_pipe_keys,
    which understands only the plain spellings admins write and says when it cannot
    be sure; then, and only then, tomllib decides. A file the full loader would
    refuse is NoWorker: filtering in this process then reports the error properly.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        if named:
            raise NoWorker("") from None
        data = b""
    except OSError as exc:
        raise NoWorker("") from exc
    table = simple_pipe_keys(data)
    if table is None:
        import tomllib

        try:
            table = tomllib.loads(data.decode("utf-8")).get("pipe", {})
        except ValueError as exc:  # TOMLDecodeError and UnicodeDecodeError
            raise NoWorker("") from exc
    worker = table.get("worker", WORKER_SOCKET) if isinstance(table, dict) else None
    deadline = table.get("deadline", PIPE_DEADLINE) if isinstance(table, dict) else None
    if not isinstance(worker, str) or isinstance(deadline, bool) or not isinstance(deadline, (int, float)):
        raise NoWorker("")
    if not 0 < deadline <= MAX_DEADLINE:  # NaN too: the full loader names the bad value in the log
        raise NoWorker("")
    if not worker:
        raise NoWorker("")
    return worker, float(deadline)


_KEYS = (b"worker", b"deadline")
_OTHER_KEYS = (b"worker_idle",)


def simple_pipe_keys(data: bytes) -> dict[str, str | float] | None:
    """The worker and deadline keys of [pipe], when every line that could set them is a plain one
    (`worker = "/path"`, `deadline = 120`, the key bare or quoted, an optional # comment) under a plain `[pipe]` header;
    None when anything else could set or hide them (tomllib must then decide).

    A line could set a key when the key's name is in what precedes its `=`, or anywhere in
    a line with an inline table; values (a folder called worker, a line of a multi-line
    array) may mention the names. It never returns a value tomllib would
    not: a \\u escape (TOML's one way to spell a key without its letters), a multi-line
    string, or a second definition also mean None.
    """
    if b"\\u" in data or b"\\U" in data or b'"""' in data or b"'''" in data:
        return None
    found: dict[str, str | float] = {}
    table = b""
    for raw in data.split(b"\n"):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        key, equals, value = line.partition(b"=")
        if line.startswith(b"["):
            table = line.partition(b"#")[0].strip()
            if any(word in line for word in _KEYS):
                return None
            continue
        if b"{" in line and any(word in line for word in _KEYS):
            return None
        if not equals or not any(word in key for word in _KEYS):
            continue
        key = _unquoted(key.strip())
        if key in _OTHER_KEYS:
            continue  # [pipe]'s other keys that mention a name: they set nothing this client reads
        if table != b"[pipe]" or key not in _KEYS or key.decode() in found:
            return None
        parsed = _simple_value(value.strip())
        if parsed is None or isinstance(parsed, str) is (key == b"deadline"):
            return None
        found[key.decode()] = parsed
    return found


def _unquoted(key: bytes) -> bytes:
    """KEY without the quotes of a quoted key that is a plain word ("worker" and 'worker' are worker in TOML);
    anything else as it is (then it is no key this reader knows, and tomllib decides)."""
    if len(key) > 2 and key[:1] == key[-1:] and key[:1] in (b'"', b"'") and key[1:-1].replace(b"_", b"").replace(b"-", b"").isalnum():
        return key[1:-1]
    return key


def _simple_value(text: bytes) -> str | float | None:
    """A basic string without escapes, or a decimal number, then an optional comment; else None."""
    if text.startswith(b'"'):
        end = text.find(b'"', 1)
        if end < 0 or b"\\" in text[:end]:
            return None
        value, rest = text[1:end].decode("utf-8", "strict"), text[end + 1 :].strip()
    else:
        number, _, comment = text.partition(b"#")
        number, rest = number.strip(), b"#" + comment if comment else b""
        if not number.replace(b".", b"", 1).isdigit():
            return None
        value = float(number)
    return value if not rest or rest.startswith(b"#") else None


def unsafe_socket(path: str, uid: int) -> str | None:
    """Why the socket at PATH may not be our worker's, or None: the socket and every folder above it must
    be owned by UID or root and writable by no one else (a sticky folder may be: nobody can replace
    another user's entry in it), the socket itself must be owned by UID. Without that another local
    user could bind the path first, or put their own socket in its place, and take every message."""
    if not os.path.isabs(path):
        return f"{path} is not an absolute path"
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None  # no worker: nothing to trust or distrust
    except OSError as exc:
        return f"cannot check {path}: {exc.strerror or exc}"
    if not stat.S_ISSOCK(info.st_mode):
        return f"{path} is not a socket"
    if info.st_uid != uid:
        return f"{path} belongs to uid {info.st_uid}, not to uid {uid}"
    return unsafe_folder(os.path.dirname(path), uid)


def unsafe_folder(folder: str, uid: int) -> str | None:
    """Why FOLDER or a folder above it could be replaced or written by someone else than UID and root, or None."""
    while True:
        try:
            info = os.lstat(folder)
        except OSError as exc:
            return f"cannot check {folder}: {exc.strerror or exc}"
        if not stat.S_ISDIR(info.st_mode):
            return f"{folder} is not a folder (a link?)"
        if info.st_uid not in (uid, 0):
            return f"{folder} belongs to uid {info.st_uid}"
        if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
            return f"{folder} can be written by others (mode {stat.S_IMODE(info.st_mode):o})"
        if folder == "/":
            return None
        folder = os.path.dirname(folder)


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected unix socket (SO_PEERCRED: pid, uid, gid as ints)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    return int.from_bytes(creds[4:8], sys.byteorder, signed=True)


def _greet(sock: socket.socket, argv: list[str], config: str, mail_config: str) -> None:
    """Send the greeting; return on GO, raise NoWorker otherwise."""
    fields = b"\0".join(os.fsencode(field) for field in (config, mail_config, *argv))
    sock.settimeout(GREETING_TIMEOUT)
    try:
        sock.sendall(PROTOCOL + b" %d\n" % len(fields) + fields)
        answer = _line(sock, 1024)
    except (OSError, ValueError) as exc:
        raise NoWorker(f"the pipe worker did not answer: {exc}") from None
    if answer == b"GO":
        sock.settimeout(None)  # from here on the deadline alone bounds the wait
        return
    if answer.startswith(b"DECLINE "):
        raise NoWorker("the pipe worker declined: " + answer[8:].decode("ascii", "replace"))
    raise NoWorker(f"the pipe worker answered {answer[:80]!r}")


def _line(sock: socket.socket, limit: int) -> bytes:
    """One LF-terminated line, without the LF, read a byte at a time (nothing after it is consumed);
    ValueError if the peer closes first or it is too long."""
    data = bytearray()
    while len(data) <= limit:
        byte = sock.recv(1)
        if not byte:
            raise ValueError("connection closed")
        if byte == b"\n":
            return bytes(data)
        data += byte
    raise ValueError("line too long")


def _exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        more = sock.recv(size - len(data))
        if not more:
            raise ValueError("connection closed")
        data += more
    return bytes(data)


def _send_message(sock: socket.socket, stdin: BinaryIO) -> None:
    while chunk := stdin.read(CHUNK):
        sock.sendall(b"%d\n" % len(chunk) + chunk)
    sock.sendall(b"0\n")


def _act(sock: socket.socket, budget_text: bytes, deadline_at: float) -> None:
    """The worker is ready to deliver: say ACT if [pipe] deadline has not passed, then wait the budget it gave.

    The deadline's timer is stopped first: if it struck before, _DeadlineExceeded is on its way and ACT
    is never sent (the worker then delivers nothing); once ACT is sent, only the delivery budget counts."""
    signal.setitimer(signal.ITIMER_REAL, 0)
    if not budget_text.isdigit() or not 0 < int(budget_text) <= MAX_BUDGET:
        raise ValueError(f"unusable READY {budget_text[:20]!r}")
    if time_now() >= deadline_at:
        raise _DeadlineExceeded
    signal.signal(signal.SIGTERM, _ignore)  # Postfix stopping: let the delivery finish and answer it
    sock.sendall(b"ACT\n")
    signal.setitimer(signal.ITIMER_REAL, int(budget_text) + ACT_MARGIN)


def _ignore(signum: int, frame: object) -> None:
    pass


def time_now() -> float:
    return time.monotonic()


def _reply(sock: socket.socket, first: bytes | None = None) -> tuple[int, str | None]:
    """The worker's final answer; FIRST is its status line when already read."""
    status_text, _, size_text = (first if first is not None else _line(sock, 32)).partition(b" ")
    if status_text not in (b"0", b"69", b"75") or not size_text.isdigit() or int(size_text) > REPLY_LIMIT:
        raise ValueError(f"unusable reply {status_text + b' ' + size_text!r}")
    text = _exactly(sock, int(size_text)).decode("utf-8", "replace")
    return int(status_text), text or None


def hand_off(argv: list[str], stdin: BinaryIO, environ: Mapping[str, str] | None = None) -> tuple[int, str | None]:
    """Have the worker filter the message on STDIN; return pipe's exit status and the text to print.

    Raises NoWorker while the message is untouched; afterwards every failure becomes (75, "4.x.x ...").
    """
    environ = os.environ if environ is None else environ
    path, named = config_path(argv, environ)
    worker, deadline = settings(path, named)

    def expire(signum: int, frame: object) -> None:
        raise _DeadlineExceeded

    previous = signal.signal(signal.SIGALRM, expire)
    deadline_at = time_now() + deadline
    signal.setitimer(signal.ITIMER_REAL, deadline)
    acting = False
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        uid = os.geteuid()
        problem = unsafe_socket(worker, uid)
        if problem:
            raise NoWorker(f"not using the pipe worker socket: {problem}")
        try:
            sock.connect(worker)
        except (FileNotFoundError, ConnectionRefusedError):
            raise NoWorker("") from None  # no worker running: the usual case where none is deployed
        except OSError as exc:
            raise NoWorker(f"cannot reach the pipe worker at {worker}: {exc.strerror or exc}") from None
        listener = peer_uid(sock)  # who called listen(): the worker, or root's systemd for a socket unit
        if listener not in (uid, 0):
            raise NoWorker(f"not using the pipe worker socket: {worker} is served by uid {listener}, not by uid {uid}")
        _greet(sock, argv, path, environ.get("MAIL_CONFIG", ""))
        try:
            _send_message(sock, stdin)
            status_or_ready = _line(sock, 64)
            if status_or_ready.startswith(b"READY "):
                acting = True
                _act(sock, status_or_ready[6:], deadline_at)
            return _reply(sock, status_or_ready if not acting else None)
        except (OSError, ValueError) as exc:
            if acting:
                raise Deferred(
                    f"4.3.0 mailfilter: the pipe worker failed while delivering ({str(exc) or type(exc).__name__}), message deferred"
                ) from None
            raise Deferred(f"4.3.0 mailfilter: the pipe worker failed ({str(exc) or type(exc).__name__}), message deferred") from None
    except _DeadlineExceeded:
        if acting:
            return EX_TEMPFAIL, "4.3.0 mailfilter: the pipe worker did not finish delivering in time, message deferred"
        return EX_TEMPFAIL, f"4.3.0 mailfilter: filter deadline of {deadline:g} s exceeded, message deferred"
    except Deferred as exc:
        return EX_TEMPFAIL, str(exc)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        sock.close()
