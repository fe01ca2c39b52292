"""A message being held for scanning: in memory while small, in a private temporary file beyond that.

The milter spools every message as it arrives; a 50 MB message then costs a
file, not 50 MB of RAM. Scanners read it as a stream (clamd) or, when it is
small enough for them, as bytes (spamd). The temporary file is created 0600
by tempfile and has no name once created, so it is removed on every path.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import BinaryIO

CHUNK = 64 * 1024


class Spool:
    def __init__(self, memory_limit: int = 1 << 20, tmpdir: str | None = None) -> None:
        self._file: tempfile.SpooledTemporaryFile[bytes] = tempfile.SpooledTemporaryFile(max_size=memory_limit, dir=tmpdir)
        self.size = 0

    @classmethod
    def of(cls, data: bytes) -> Spool:
        spool = cls(memory_limit=len(data) + 1)
        spool.write(data)
        return spool

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self.size += len(data)

    def fill(self, source: BinaryIO) -> None:
        while chunk := source.read(CHUNK):
            self.write(chunk)

    @property
    def on_disk(self) -> bool:
        return bool(self._file._rolled)

    def read(self, limit: int | None = None) -> bytes:
        """The first LIMIT bytes (all of them by default)."""
        self._file.seek(0)
        return self._file.read(-1 if limit is None else limit)

    def chunks(self) -> Iterator[bytes]:
        self._file.seek(0)
        while chunk := self._file.read(CHUNK):
            yield chunk

    def stream(self) -> BinaryIO:
        """The file, rewound, for one reader at a time."""
        self._file.seek(0)
        return self._file  # type: ignore[return-value]

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
