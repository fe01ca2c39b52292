"""Hand a message back to Postfix with sendmail: never -t, never a shell.

The message goes to sendmail's standard input as it is read (bytes, or an
iterable of chunks such as message.rewritten()), while sendmail's standard
error is read into a bounded buffer, all under one deadline: a 50 MB message
costs a chunk of memory, not 50 MB, and a sendmail that stops reading cannot
hang us. If the message cannot be read to its end, sendmail is killed before
its input is closed, so it never takes a truncated message for a whole one.
"""

from __future__ import annotations

import os
import selectors
import subprocess  # nosec B404
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, cast

from ..config import DeliveryConfig
from ..model import Envelope

STDERR_LIMIT = 4096  # bytes of sendmail's complaint that we keep; the rest is read and dropped
_WRITE = 64 * 1024


class DeliveryError(Exception):
    """sendmail did not accept the message."""


class _Timeout(Exception):
    pass


def sendmail_argv(sendmail: Sequence[str], sender: str, recipients: Sequence[str]) -> list[str]:
    """The exact argv: -G (not a submission), -i (a lone dot is data), -f SENDER, and
    `--` so that no recipient, however it is spelled, can be read as an option."""
    return [*sendmail, "-G", "-i", "-f", sender, "--", *recipients]


def sendmail(message: bytes | Iterable[bytes], sender: str, recipients: Sequence[str], config: DeliveryConfig) -> None:
    """Run sendmail with MESSAGE (bytes, or chunks of bytes) on stdin; raise DeliveryError unless it exits 0.

    The environment is passed on unchanged: under pipe(8) it carries MAIL_CONFIG,
    which points sendmail at the Postfix instance that gave us the message.
    An exception while reading MESSAGE kills sendmail and propagates.
    """
    if not recipients:
        raise DeliveryError("no recipients")
    argv = sendmail_argv(config.sendmail, sender, recipients)
    deadline = time.monotonic() + config.timeout
    chunks = iter((message,) if isinstance(message, (bytes, bytearray, memoryview)) else message)
    try:
        # argv: the admin-configured sendmail plus fixed options; addresses follow "--". No shell.
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, bufsize=0)  # noqa: S603  # nosec B603
    except OSError as exc:
        raise DeliveryError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    try:
        said = _feed(cast(IO[bytes], proc.stdin), cast(IO[bytes], proc.stderr), chunks, deadline)
        proc.wait(max(deadline - time.monotonic(), 0))
    except (_Timeout, subprocess.TimeoutExpired):
        raise DeliveryError(f"{argv[0]} did not finish within {config.timeout:g} s") from None
    finally:
        if proc.returncode is None:
            proc.kill()  # before its input is closed: killed, it delivers nothing
            proc.wait()
        for pipe in (proc.stdin, proc.stderr):
            if pipe is not None:
                pipe.close()
    if proc.returncode != 0:
        text = " ".join(said.decode("utf-8", "replace").split())[:300]
        how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}"
        raise DeliveryError(f"{argv[0]} {how}" + (f": {text}" if text else ""))


def _feed(stdin: IO[bytes], stderr: IO[bytes], chunks: Iterator[bytes], deadline: float) -> bytes:
    """Write CHUNKS to STDIN and read STDERR, until both are done; return (the start of) what STDERR said.

    A sendmail that exits before it has read everything (EPIPE) is not an error
    here: its exit status says what happened."""
    said = bytearray()
    pending = memoryview(b"")
    with selectors.DefaultSelector() as selector:
        for pipe, event in ((stdin, selectors.EVENT_WRITE), (stderr, selectors.EVENT_READ)):
            os.set_blocking(pipe.fileno(), False)
            selector.register(pipe, event)
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Timeout
            for key, _events in selector.select(left):
                try:
                    if key.fileobj is stderr:
                        if data := os.read(key.fd, 32768):
                            said += data[: max(STDERR_LIMIT - len(said), 0)]
                            continue
                    elif pending or (pending := memoryview(_next_chunk(chunks))):
                        pending = pending[os.write(key.fd, pending[:_WRITE]) :]
                        continue
                except BlockingIOError:
                    continue
                except BrokenPipeError:
                    pass  # sendmail closed its input: its exit status tells why
                selector.unregister(key.fileobj)
                cast(IO[bytes], key.fileobj).close()  # stdin: the end of the message
    return bytes(said)


def _next_chunk(chunks: Iterator[bytes]) -> bytes:
    """The next chunk that is not empty, b"" at the end."""
    for chunk in chunks:
        if chunk:
            return chunk
    return b""


def reinject(message: bytes | Iterable[bytes], envelope: Envelope, config: DeliveryConfig) -> None:
    sendmail(message, envelope.sender, envelope.recipients, config)
