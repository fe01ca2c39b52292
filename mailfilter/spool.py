"""A message being held for scanning: in memory while small, in a private temporary file beyond that.

The milter spools every message as it arrives; a 50 MB message then costs a
file, not 50 MB of RAM. Scanners read it as a stream (clamd) or, when it is
small enough for them, as bytes (spamd). The temporary file is created 0600
by tempfile and has no name once created, so it is removed on every path.

Every reader has its own position: stream() gives a new reader each time,
read(), read_at() and chunks() read at an offset (os.pread on disk), so scanner
threads, the quarantine copy and reinjection never move each other's place.
The writer only appends. A reader sees the bytes written before it was made,
and keeps them readable after close(): on disk it holds a descriptor of its own.
"""

from __future__ import annotations

import errno
import io
import os
import threading
from collections.abc import Iterator
from typing import BinaryIO

CHUNK = 64 * 1024


class TooLarge(Exception):
    """fill() stopped: the message is larger than its limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the message is larger than {limit} bytes")
        self.limit = limit


class Spool:
    def __init__(self, memory_limit: int = 1 << 20, tmpdir: str | None = None) -> None:
        self._memory: bytearray | None = bytearray()
        self._file: BinaryIO | None = None
        self._memory_limit, self._tmpdir = memory_limit, tmpdir
        self._lock = threading.Lock()  # one writer, any number of readers being made
        self.size = 0

    @classmethod
    def of(cls, data: bytes) -> Spool:
        spool = cls(memory_limit=len(data) + 1)
        spool.write(data)
        return spool

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._file is None and self._memory is None:
                raise ValueError("write to a closed spool")
            if self._file is None and self.size + len(data) > self._memory_limit:
                self._roll_over()
            if self._file is not None:
                _write_all(self._file.fileno(), data)
            else:
                self._memory += data  # type: ignore[operator]
            self.size += len(data)

    def _roll_over(self) -> None:
        import tempfile  # here: most messages stay in memory, and each import costs a `mailfilter pipe` process

        file = tempfile.TemporaryFile(dir=self._tmpdir, buffering=0)  # closed by close()
        try:
            _write_all(file.fileno(), self._memory or b"")
        except BaseException:
            file.close()
            raise
        self._file, self._memory = file, None  # readers made before keep the old bytearray: it is never changed again

    def fill(self, source: BinaryIO, limit: int | None = None) -> None:
        """Everything SOURCE holds; TooLarge as soon as the spool would hold more than LIMIT bytes."""
        while chunk := source.read(CHUNK):
            if limit is not None and self.size + len(chunk) > limit:
                raise TooLarge(limit)
            self.write(chunk)

    @property
    def on_disk(self) -> bool:
        return self._file is not None

    def read_at(self, offset: int, size: int) -> bytes:
        """Up to SIZE bytes from OFFSET (fewer only at the end)."""
        memory, file = self._memory, self._file
        if file is not None:
            return _pread_all(file.fileno(), min(size, max(self.size - offset, 0)), offset)
        if memory is None:
            raise ValueError("read from a closed spool")
        return bytes(memory[offset : offset + size])

    def read(self, limit: int | None = None) -> bytes:
        """The first LIMIT bytes (all of them by default)."""
        return self.read_at(0, self.size if limit is None else min(limit, self.size))

    def chunks(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The bytes from START to END (the end of the spool as it is now), CHUNK bytes at a time."""
        end = self.size if end is None else min(end, self.size)
        while start < end:
            chunk = self.read_at(start, min(CHUNK, end - start))
            if not chunk:  # never a short copy that looks whole (a quarantine entry, a reinjected message)
                raise OSError(errno.EIO, f"the spool ends at {start} bytes, not {end}")
            start += len(chunk)
            yield chunk

    def stream(self) -> Reader:
        """A new reader from the start, with its own position: for one thread, which closes it (or lets it go)."""
        with self._lock:
            if self._file is not None:
                return Reader(os.dup(self._file.fileno()), None, self.size)
            return Reader(None, self._memory, self.size)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
            self._file, self._memory = None, None

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Reader(io.RawIOBase):
    """The first SIZE bytes of a spool, read from a position of its own (os.pread on a descriptor of its own,
    or slices of the memory, which the spool only ever appends to)."""

    def __init__(self, fd: int | None, memory: bytearray | None, size: int) -> None:
        super().__init__()
        self._fd, self._memory, self._size, self._pos = fd, memory or bytearray(), size, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError("read from a closed reader")
        left = self._size - self._pos
        want = left if size is None or size < 0 else min(size, left)
        if want <= 0:
            return b""
        if self._fd is not None:
            data = _pread_all(self._fd, want, self._pos)
            if not data:  # the file lost bytes: never an early end that a scanner would take for the whole
                raise OSError(errno.EIO, f"the spool ends at {self._pos} bytes, not {self._size}")
        else:
            data = bytes(self._memory[self._pos : self._pos + want])
        self._pos += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        return self.read(-1)

    def close(self) -> None:
        if not self.closed and self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._memory = bytearray()
        super().close()


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    parts, got = [], 0
    while got < size:  # one pread, unless a regular file reads short (a signal): then read on
        part = os.pread(fd, size - got, offset + got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)
