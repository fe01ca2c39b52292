import functools
import io
import os
import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from mailfilter.spool import Spool, TooLarge


def test_small_stays_in_memory_large_goes_to_a_private_file(tmp_path):
    with Spool(memory_limit=100, tmpdir=str(tmp_path)) as spool:
        spool.write(b"x" * 50)
        assert not spool.on_disk
        spool.write(b"y" * 100)
        assert spool.on_disk and spool.size == 150
        assert os.listdir(tmp_path) == []  # unnamed: nothing to leak
        assert spool.read() == b"x" * 50 + b"y" * 100
        assert spool.read(10) == b"x" * 10
        assert b"".join(spool.chunks()) == spool.read()


def test_fill_and_of():
    with Spool(memory_limit=10) as spool:
        spool.fill(io.BytesIO(b"a" * 200_000))
        assert spool.size == 200_000 and spool.stream().read() == b"a" * 200_000
    with Spool.of(b"abc") as spool:
        assert not spool.on_disk and spool.read() == b"abc"


# Every reader has its own position (issue "Keep the promise", item 14): the scanner threads, the quarantine
# copy and reinjection read the same spool at once.


def _data(size):
    return random.Random(size).randbytes(size)


def _on_disk(data, tmp_path):
    spool = Spool(memory_limit=1024, tmpdir=str(tmp_path))
    for i in range(0, len(data), 10_000):
        spool.write(data[i : i + 10_000])
    assert spool.on_disk
    return spool


@pytest.mark.parametrize("on_disk", [True, False])
def test_a_reader_started_while_another_is_midway_is_unaffected(tmp_path, on_disk):
    data = _data(300_000)
    with _on_disk(data, tmp_path) if on_disk else Spool.of(data) as spool:
        first = spool.stream()
        assert first.read(1000) == data[:1000]
        second = spool.stream()
        assert second.read(10) == data[:10]
        assert b"".join(spool.chunks()) == data and spool.read(5) == data[:5]  # the quarantine copy, spamd's bytes
        assert first.read(1000) == data[1000:2000]
        assert second.read() == data[10:] and first.read() == data[2000:]
        assert first.read(10) == b""


def test_threads_reading_one_spool_each_get_exactly_the_bytes(tmp_path):
    data = _data(1_000_000)
    with _on_disk(data, tmp_path) as spool:

        def stream(size):
            reader, parts = spool.stream(), []
            while part := reader.read(size):
                parts.append(part)
            reader.close()
            return b"".join(parts)

        readers = [functools.partial(stream, size) for size in (997, 4096, 65536)] * 10
        readers += [lambda: b"".join(spool.chunks()), spool.read] * 4
        with ThreadPoolExecutor(len(readers)) as pool:
            got = list(pool.map(lambda read: read(), readers))
    assert all(g == data for g in got), [len(g) for g in got]


def test_a_reader_outlives_the_spool_and_sees_what_was_written_before_it(tmp_path):
    data = _data(200_000)
    spool = _on_disk(data, tmp_path)
    reader = spool.stream()
    spool.write(b"later")
    spool.close()
    assert reader.read() == data  # its own descriptor: not closed, not reused by another file
    reader.close()
    with Spool(memory_limit=100, tmpdir=str(tmp_path)) as spool:
        spool.write(b"x" * 60)
        reader = spool.stream()
        spool.write(b"y" * 60)  # rolls over to disk
        assert spool.on_disk and reader.read() == b"x" * 60 and spool.read() == b"x" * 60 + b"y" * 60


def test_fill_stops_past_its_limit():
    with Spool() as spool:
        spool.fill(io.BytesIO(b"a" * 100_000), limit=100_000)
        assert spool.size == 100_000
    with Spool() as spool, pytest.raises(TooLarge, match="larger than 99999 bytes"):
        spool.fill(io.BytesIO(b"a" * 100_000), limit=99_999)


def test_a_spool_that_lost_bytes_is_an_error_never_a_short_message(tmp_path):
    data = _data(300_000)
    with _on_disk(data, tmp_path) as spool, spool.stream() as reader:
        os.ftruncate(spool._file.fileno(), 100_000)  # as if the file system lost the end of it
        with pytest.raises(OSError, match="the spool ends at 100000 bytes, not 300000"):
            list(spool.chunks())  # the quarantine copy: an error, not a short entry
        assert len(reader.read(100_000)) == 100_000
        with pytest.raises(OSError, match="ends at 100000 bytes"):
            reader.read()  # clamd's stream: an error, not an early end that could be taken for a clean message
    with pytest.raises(ValueError, match="closed spool"):
        spool.read()
