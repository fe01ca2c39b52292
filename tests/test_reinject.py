"""sendmail(): the message streams to sendmail's stdin, under one deadline, and only exit 0 is delivered."""

import os
import sys
import time

import pytest

from mailfilter.actions import reinject
from mailfilter.actions.reinject import DeliveryError
from mailfilter.config import DeliveryConfig


def _config(argv, timeout=30.0):
    return DeliveryConfig(sendmail=list(argv), timeout=timeout)


def _python(code):
    return [sys.executable, "-c", code]


def test_chunks_reach_sendmail_byte_for_byte_with_the_fixed_argv(sendmail):
    chunks = [b"Subject: s\n", b"", b"\n", os.urandom(300_000), b"end\n"]
    reinject.sendmail(iter(chunks), "a@example.org", ["-t", "b@example.net"], _config(sendmail.argv()))
    reinject.sendmail(b"".join(chunks), "a@example.org", ["c@example.net"], _config(sendmail.argv()))
    (argv1, got1), (argv2, got2) = sendmail.calls
    assert argv1 == ["-G", "-i", "-f", "a@example.org", "--", "-t", "b@example.net"] and got1 == b"".join(chunks)
    assert argv2[-1] == "c@example.net" and got2 == got1


def test_a_sendmail_that_exits_without_reading_is_its_exit_status_not_a_broken_pipe():
    config = _config(_python("import sys; sys.stderr.write('over quota\\n'); sys.exit(75)"))
    big = (b"x" * 65536 for _ in range(200))  # 13 MB: far more than a pipe holds
    with pytest.raises(DeliveryError, match=r"exit status 75: over quota$"):
        reinject.sendmail(big, "a@example.org", ["b@example.net"], config)


def test_a_sendmail_that_hangs_is_killed_and_reaped_at_the_deadline(tmp_path):
    pidfile = tmp_path / "pid"
    config = _config(_python(f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)"), 1.5)
    started = time.monotonic()
    with pytest.raises(DeliveryError, match=r"did not finish within 1.5 s"):
        reinject.sendmail((b"x" * 65536 for _ in range(200)), "a@example.org", ["b@example.net"], config)
    assert time.monotonic() - started < 10
    with pytest.raises(ProcessLookupError):
        os.kill(int(pidfile.read_text()), 0)  # killed and waited for: no process, not even a zombie


def test_a_source_that_fails_midway_delivers_nothing(sendmail):
    def source():
        yield b"Subject: s\n\npart one\n"
        raise OSError(5, "Input/output error")

    with pytest.raises(OSError, match="Input/output error"):
        reinject.sendmail(source(), "a@example.org", ["b@example.net"], _config(sendmail.argv()))
    assert sendmail.calls == []  # killed before its input was closed: no truncated message delivered


def test_a_flood_on_stderr_is_drained_and_kept_short():
    code = "import sys\nfor _ in range(2000): sys.stderr.write('e' * 1000 + '\\n')\nsys.stdin.buffer.read()\nsys.exit(1)"
    with pytest.raises(DeliveryError) as info:
        reinject.sendmail((b"y" * 65536 for _ in range(100)), "a@example.org", ["b@example.net"], _config(_python(code), 30))
    assert str(info.value).startswith(f"{sys.executable} exit status 1: eee") and len(str(info.value)) < 400
    assert reinject.STDERR_LIMIT <= 65536


def test_a_sendmail_killed_by_a_signal_says_so(sendmail):
    with pytest.raises(DeliveryError, match="killed by signal 9"):
        reinject.sendmail(b"Subject: s\n\nb\n", "a@example.org", ["b@example.net"], _config(sendmail.argv("--kill")))


def test_no_recipients_and_no_program_are_delivery_errors(tmp_path):
    with pytest.raises(DeliveryError, match="no recipients"):
        reinject.sendmail(b"", "a@example.org", [], _config(["/bin/true"]))
    with pytest.raises(DeliveryError, match="cannot run"):
        reinject.sendmail(b"", "a@example.org", ["b@example.net"], _config([str(tmp_path / "missing")]))
