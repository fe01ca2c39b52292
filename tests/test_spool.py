import os

from mailfilter.spool import Spool


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
    import io

    with Spool(memory_limit=10) as spool:
        spool.fill(io.BytesIO(b"a" * 200_000))
        assert spool.size == 200_000 and spool.stream().read() == b"a" * 200_000
    with Spool.of(b"abc") as spool:
        assert not spool.on_disk and spool.read() == b"abc"
