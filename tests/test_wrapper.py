"""wrapper/mailfilter-pipe.c, compiled now (warnings are errors), run on small commands as pipe(8) would run it.

The promise: whatever the filter does, the wrapper leaves with 0, 69 or 75, and when it is not the
filter's own 0, 69 or 75, with exactly one `4.3.0` line and nothing of the filter's output.
"""

import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest

from postfix import build_wrapper

PYTHON = sys.executable
DEFERRED = "4.3.0 mailfilter: filter failed ({}), message deferred\n"


@pytest.fixture(scope="module")
def wrapper(tmp_path_factory) -> str:
    return str(build_wrapper(tmp_path_factory.mktemp("wrapper") / "mailfilter-pipe"))


def run(wrapper: str, *argv: str, stdin: bytes = b"", timeout: float = 30) -> tuple[int, bytes]:
    proc = subprocess.run([wrapper, *argv], input=stdin, capture_output=True, timeout=timeout)
    assert proc.stderr == b""  # pipe(8) reads stdout and stderr as one: the wrapper writes only to stdout
    return proc.returncode, proc.stdout


def python(code: str) -> list[str]:
    return [PYTHON, "-c", code]


@pytest.mark.parametrize("status", [0, 69, 75])
def test_the_filters_own_answers_pass_unchanged(wrapper, status):
    text = "4.7.1 mailfilter: clamav unavailable, message deferred\n" if status == 75 else "5.7.1 virus found\n" * (status == 69)
    code, out = run(wrapper, *python(f"import sys; sys.stdout.write({text!r}); sys.exit({status})"))
    assert (code, out.decode()) == (status, text)


@pytest.mark.parametrize("status", [1, 2, 64, 70, 78, 127, 255])
def test_any_other_exit_status_defers_with_one_line(wrapper, status):
    assert run(wrapper, *python(f"raise SystemExit({status})")) == (75, DEFERRED.format(f"exit status {status}").encode())


def test_a_traceback_and_garbage_never_reach_pipe8(wrapper):
    """What a half-upgraded install prints: only the wrapper's line goes out (a 5.x.x line would bounce the message)."""
    code = "import sys; print('5.1.1 garbage'); print('more'); sys.stderr.write('Traceback: secret body text\\n'); import mailfilter_gone"
    assert run(wrapper, *python(code)) == (75, DEFERRED.format("exit status 1").encode())


def test_exit_75_with_a_permanent_status_text_defers(wrapper):
    """pipe(8) takes a 5.x.x (or 2.x.x) code in the output over exit status 75: that would bounce."""
    code, out = run(wrapper, *python("import sys; print('5.7.1 rejected'); sys.exit(75)"))
    assert (code, out) == (75, DEFERRED.format("exit status 75 with a non-4.x.x status text").encode())


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV, signal.SIGTERM])
def test_a_filter_killed_by_a_signal_defers(wrapper, sig):
    code = f"import os, sys; print('partial'); sys.stdout.flush(); os.kill(os.getpid(), {int(sig)})"
    assert run(wrapper, *python(code)) == (75, DEFERRED.format(f"killed by signal {int(sig)}").encode())


def test_a_missing_filter_defers(wrapper):
    assert run(wrapper, "/nonexistent/mailfilter", "pipe") == (
        75,
        DEFERRED.format("cannot run /nonexistent/mailfilter: No such file or directory").encode(),
    )


def test_a_missing_interpreter_defers(wrapper, tmp_path):
    script = tmp_path / "mailfilter"
    script.write_text("#!/nonexistent/venv/bin/python\nprint('never')\n")
    script.chmod(0o755)
    assert run(wrapper, str(script)) == (75, DEFERRED.format(f"cannot run {script}: No such file or directory").encode())


def test_a_file_that_cannot_be_executed_defers(wrapper, tmp_path):
    script = tmp_path / "mailfilter"
    script.write_text("#!/bin/true\n")
    script.chmod(0o644)
    assert run(wrapper, str(script)) == (75, DEFERRED.format(f"cannot run {script}: Permission denied").encode())


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        ((), "mailfilter-pipe: no filter command given"),
        (("-t", "30"), "mailfilter-pipe: no filter command given"),
        (("-t",), "mailfilter-pipe: -t wants 1 to 86400 seconds"),
        (("-t", "0", "/bin/true"), "mailfilter-pipe: -t wants 1 to 86400 seconds: 0"),
        (("-t", "1e3", "/bin/true"), "mailfilter-pipe: -t wants 1 to 86400 seconds: 1e3"),
        (("mailfilter", "pipe"), "cannot run mailfilter: not an absolute path"),  # no PATH search
    ],
)
def test_bad_arguments_defer(wrapper, argv, reason):
    assert run(wrapper, *argv) == (75, DEFERRED.format(reason).encode())


def test_the_message_reaches_the_filter_untouched(wrapper):
    message = b"Received: x\r\nSubject: t\r\n\r\n" + bytes(range(256)) * 8192 + b"\n.\n"  # 2 MB, more than any pipe holds
    code, out = run(wrapper, *python("import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())"), stdin=message)
    assert (code, out.decode()) == (0, hashlib.sha256(message).hexdigest() + "\n")


def test_arguments_environment_and_folder_pass_unchanged(wrapper, tmp_path):
    code = "import os, sys; print(sys.argv[1:], os.environ.get('MAIL_CONFIG'), os.getcwd())"
    argv = ["-t", "5", "", "a b", "--", "-bob@example.net"]
    proc = subprocess.run(
        [wrapper, *python(code), *argv], capture_output=True, text=True, cwd=tmp_path, env={"MAIL_CONFIG": "/etc/postfix-x"}, check=False
    )
    assert (proc.returncode, proc.stdout) == (0, f"{argv} /etc/postfix-x {tmp_path}\n")


def test_the_filter_gets_default_signals_and_an_empty_mask(wrapper):
    """The wrapper ignores SIGPIPE and blocks signals for itself only: an exec'd program would inherit both."""
    code, out = run(wrapper, "/usr/bin/grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status")
    fields = dict(line.split(":\t") for line in out.decode().splitlines())
    assert code == 0 and int(fields["SigBlk"], 16) == 0
    assert not int(fields["SigIgn"], 16) & (1 << (signal.SIGPIPE - 1))


def test_output_beyond_4_kib_is_cut_and_never_blocks_the_filter(wrapper):
    code, out = run(wrapper, *python("import sys; sys.stdout.write('x' * 1_000_000); sys.exit(69)"))
    assert (code, out) == (69, b"x" * 4096)


def test_a_filter_that_closes_its_output_early_is_waited_for(wrapper, tmp_path):
    done = tmp_path / "done"
    code = f"import os, time; os.close(1); os.close(2); time.sleep(0.5); open({str(done)!r}, 'w').close(); raise SystemExit(69)"
    assert run(wrapper, *python(code)) == (69, b"")
    assert done.exists()  # the wrapper answered only once the filter had finished


def test_offspring_that_keep_the_output_open_do_not_hold_the_answer(wrapper, tmp_path):
    pidfile = tmp_path / "pid"
    code = (
        "import subprocess, sys; p = subprocess.Popen(['/bin/sleep', '60']);"
        f" open({str(pidfile)!r}, 'w').write(str(p.pid)); print('done'); sys.exit(0)"
    )
    started = time.monotonic()
    try:
        assert run(wrapper, *python(code)) == (0, b"done\n")
        assert time.monotonic() - started < 30
    finally:
        os.kill(int(pidfile.read_text()), signal.SIGKILL)


def test_time_limit_kills_and_defers(wrapper):
    started = time.monotonic()
    assert run(wrapper, "-t", "1", *python("import time; print('5.3.0 late'); time.sleep(60)")) == (
        75,
        DEFERRED.format("no result within 1 s, killed").encode(),
    )
    assert time.monotonic() - started < 20


def test_sigterm_is_passed_to_the_filter_which_answers(wrapper, tmp_path):
    ready = tmp_path / "ready"
    code = (
        "import signal, sys, time\n"
        "def stop(*_): print('4.3.2 mailfilter: stopping, message deferred'); sys.exit(75)\n"
        f"signal.signal(signal.SIGTERM, stop); open({str(ready)!r}, 'w').close(); time.sleep(60)\n"
    )
    proc = subprocess.Popen([wrapper, *python(code)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
        proc.wait()
    assert (proc.returncode, out, err) == (75, b"4.3.2 mailfilter: stopping, message deferred\n", b"")


def test_a_reader_that_goes_away_does_not_kill_the_wrapper(wrapper):
    """pipe(8) may stop reading the output: SIGPIPE must not turn the filter's 75 into a death by signal."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([wrapper, *python("print('4.7.1 deferred'); raise SystemExit(75)")], stdout=write_end, timeout=30)
    finally:
        os.close(write_end)
    assert proc.returncode == 75
