"""Single faults, each provoked at a chosen moment (issue 6, part 1, items 3 and 4).

- `mailfilter pipe` killed with SIGKILL while it scans: pipe(8) must defer the
  message, never bounce it, and once flushed it is delivered exactly once.
- clamd gone between taking a message and answering (it was killed then): that is
  no verdict, so a deferral or a 451, never "clean" (a bug found by the load tests).
- A full quarantine disk (a small tmpfs mounted on the quarantine folder): a
  virus is deferred (pipe: 4.3.0 quarantine failed) or refused with 451 (milter,
  virus = "quarantine"), no entry and no temporary file is left behind, and
  once there is room again the virus is quarantined exactly once.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from .chaos import Daemons, FlakySendmail, Milter
from .load import ADMIN, RECIPIENTS, SENDER, TOKEN, build, scanned_problem
from .rigs import PAGE, HoldingSpamd, MountRefused, MuteClamd, TinyDisk, pipe_processes
from .wiring import config_sections, drain, instance, kill_strays, quarantine_list, start_milter, start_pipe
from conftest import quarantined
from milterproc import USER
from postfix import Delivery, PostfixInstance, requires_root

pytestmark = [pytest.mark.faults, pytest.mark.postfix, pytest.mark.daemons, requires_root]
RECIPIENT = RECIPIENTS[0]
QUARANTINE_DISK = 64 * 1024  # bytes of the tmpfs on the quarantine folder


def queued(postfix: PostfixInstance, raw: bytes) -> str:
    """Submit RAW, expect it queued; return its queue id."""
    code, text = postfix.send(raw, SENDER, [RECIPIENT])
    assert code == 250, f"{code} {text}"
    return text.rsplit(" ", 1)[1]


def to_recipient(postfix: PostfixInstance) -> list[Delivery]:
    return [d for d in postfix.sink.deliveries if d.recipients != (ADMIN,)]


@contextlib.contextmanager
def tiny_disk(path: Path) -> Iterator[TinyDisk]:
    """A TinyDisk on PATH owned by the filter's user, or a skip where mounting is not permitted."""
    try:
        with TinyDisk(path, USER, QUARANTINE_DISK) as disk:
            yield disk
    except MountRefused as exc:
        pytest.skip(f"a full quarantine disk needs `mount -t tmpfs` (root with CAP_SYS_ADMIN): {exc}")


def quiesce(postfix: PostfixInstance, milter: Milter | None = None) -> None:
    """Nothing may write to the quarantine any more: Postfix and its filters stopped, the milter too."""
    postfix.stop()
    kill_strays(postfix.work)
    if milter is not None and milter.running:
        milter.kill()


def test_pipe_killed_mid_message_is_deferred_then_delivered_once(fault_run_dir):
    daemons = Daemons(fault_run_dir)
    host, port, clamd_socket = daemons.addresses
    token = "FLT-00000000-pipe-00001"  # noqa: S105 - a message token, not a password
    with HoldingSpamd(host, port) as spamd, instance() as postfix:
        folder = postfix.filter_dir
        start_pipe(postfix, config_sections(folder, (host, spamd.port, clamd_socket), FlakySendmail(folder).argv))
        queue_id = queued(postfix, build(token, "ham", (RECIPIENT,)))
        assert spamd.arrived.wait(60), "the message never reached spamd"  # the filter is scanning: spamd holds it
        [pid] = postfix.wait_for(lambda: pipe_processes(queue_id), what=f"the `mailfilter pipe` process of {queue_id}")
        os.kill(pid, signal.SIGKILL)
        postfix.wait_logged(rf"{queue_id}: to=<{RECIPIENT}>, relay=mailfilter, .*, status=deferred \(Command died with signal 9")
        postfix.wait_for(lambda: not pipe_processes(queue_id), what="the killed filter gone")
        assert to_recipient(postfix) == []
        spamd.release()
        drain(postfix)
        [delivery] = to_recipient(postfix)
        assert TOKEN.findall(delivery.data) == [token.encode()] * 3  # Message-ID, Subject, body
        assert not scanned_problem(delivery, "ham"), scanned_problem(delivery, "ham")
        log = postfix.maillog()
        assert "status=bounced" not in log
        assert len(re.findall(rf"{queue_id}: to=<{RECIPIENT}>, relay=mailfilter, .*status=sent", log)) == 1
        assert list((folder / "tmp").iterdir()) == []  # the killed filter's spool had no name to leave behind


def test_pipe_clamd_hanging_up_before_its_answer_defers_the_virus(fault_run_dir):
    """As when clamd is killed right after the stream: no answer is no verdict (pipe: 4.7.1, deferred)."""
    daemons = Daemons(fault_run_dir)
    token = "FLT-00000000-pipe-00004"  # noqa: S105 - a message token, not a password
    with instance() as postfix, MuteClamd(postfix.filter_dir / "mute-clamd.sock") as clamd:
        folder = postfix.filter_dir
        host, port, _ = daemons.addresses
        start_pipe(postfix, config_sections(folder, (host, port, str(clamd.path)), FlakySendmail(folder).argv))
        queue_id = queued(postfix, build(token, "eicar", (RECIPIENT,)))
        line = postfix.wait_logged(rf"{queue_id}: to=<{RECIPIENT}>, relay=mailfilter, .*, status=\w+ \(.*")[0]
        verdict = re.search(rf"{queue_id}: from=.*", (folder / "mailfilter.log").read_text())
        assert clamd.streams >= 1
        assert "status=deferred" in line and "dsn=4.7.1" in line, (
            f"clamd took the virus and hung up without an answer, and mailfilter said:\n{verdict and verdict[0]}\nPostfix:\n{line}"
        )
        assert to_recipient(postfix) == []


def test_milter_clamd_hanging_up_before_its_answer_tempfails_the_virus(fault_run_dir):
    """The same through the milter: 451 4.7.1, never 250."""
    daemons = Daemons(fault_run_dir)
    token = "FLT-00000000-milter-00002"  # noqa: S105 - a message token, not a password
    milter = Milter()
    try:
        with instance() as postfix, MuteClamd(milter.folder / "mute-clamd.sock") as clamd:
            host, port, _ = daemons.addresses
            start_milter(postfix, milter, config_sections(milter.folder, (host, port, str(clamd.path)), FlakySendmail(milter.folder).argv))
            code, text = postfix.send(build(token, "eicar", (RECIPIENT,)), SENDER, [RECIPIENT])
            assert clamd.streams >= 1
            verdict = re.search(r"\w+: from=.*", milter.log())
            assert (code, text[:5]) == (451, "4.7.1"), (
                f"clamd took the virus and hung up without an answer; the client got {code} {text}; the milter logged:\n"
                f"{verdict and verdict[0]}"
            )
            drain(postfix)
            assert to_recipient(postfix) == []
    finally:
        milter.close()


@pytest.mark.parametrize("free_pages", [0, 1], ids=["full", "room-for-the-message-only"])
def test_pipe_full_quarantine_defers_and_leaves_nothing(fault_run_dir, free_pages):
    """With one page free the message file fits and its metadata does not: the message file must go too."""
    daemons = Daemons(fault_run_dir)
    token = f"FLT-00000000-pipe-0000{2 + free_pages}"
    raw = build(token, "eicar", (RECIPIENT,))
    assert len(raw) + 1024 < PAGE, "the virus must fit in one page, with Postfix's headers"
    with contextlib.ExitStack() as stack:
        postfix = stack.enter_context(instance())
        folder = postfix.filter_dir
        disk = stack.enter_context(tiny_disk(folder / "quarantine"))
        stack.callback(quiesce, postfix)  # before the disk is unmounted
        config = start_pipe(postfix, config_sections(folder, daemons.addresses, FlakySendmail(folder).argv))
        disk.fill()
        disk.free(free_pages)
        queue_id = queued(postfix, raw)
        why = f"mailfilter: quarantine failed: cannot store in {disk.path}: No space left on device"
        # (Postfix turns the line's newline into a space)
        postfix.wait_logged(rf"{queue_id}: to=<{RECIPIENT}>, relay=mailfilter, .*, dsn=4\.3\.0, status=deferred \({re.escape(why)} ?\)")
        assert disk.files() == [], "a partial entry or a temporary file was left in the quarantine"
        assert quarantine_list(config) == []
        assert [(m["queue_id"], m["queue_name"] != "hold") for m in postfix.postqueue_json()] == [(queue_id, True)]  # still queued
        disk.free()  # room again: the next try quarantines it
        drain(postfix)
        [(meta, held)] = quarantined(disk.path)
        assert meta["queue_id"] == queue_id and meta["message_id"] == f"<{token}@faults.example.org>"
        assert held.endswith(raw.replace(b"\r\n", b"\n"))  # as pipe(8) gave it
        assert [json.loads(line)["id"] for line in quarantine_list(config)] == [meta["id"]]
        assert to_recipient(postfix) == [] and "status=bounced" not in postfix.maillog()


def test_milter_full_quarantine_tempfails_and_leaves_nothing(fault_run_dir):
    daemons = Daemons(fault_run_dir)
    token = "FLT-00000000-milter-00001"  # noqa: S105 - a message token, not a password
    raw = build(token, "eicar", (RECIPIENT,))
    milter = Milter()
    try:
        with contextlib.ExitStack() as stack:
            postfix = stack.enter_context(instance())
            disk = stack.enter_context(tiny_disk(milter.folder / "quarantine"))
            stack.callback(quiesce, postfix, milter)  # before the disk is unmounted
            sections = config_sections(milter.folder, daemons.addresses, FlakySendmail(milter.folder).argv)
            config = start_milter(postfix, milter, sections, virus="quarantine")
            disk.fill()
            code, text = postfix.send(raw, SENDER, [RECIPIENT])
            assert (code, text[:5]) == (451, "4.7.1"), f"{code} {text}"
            assert disk.files() == [], "a partial entry or a temporary file was left in the quarantine"
            assert quarantine_list(config) == []
            assert "No space left on device" in milter.log()
            disk.free()
            assert postfix.send(raw, SENDER, [RECIPIENT])[0] == 250  # the client tries again
            [(meta, _)] = quarantined(disk.path)
            assert meta["message_id"] == f"<{token}@faults.example.org>" and meta["reason"] == "virus"
            drain(postfix)  # the admin report
            assert to_recipient(postfix) == [] and "status=bounced" not in postfix.maillog()
    finally:
        milter.close()
