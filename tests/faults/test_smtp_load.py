"""Faults under load for the third wiring: content_filter over SMTP -> `mailfilter smtp` -> the 10028 smtpd.

The same load and accounting as tests/faults/test_load.py (numbered ham, GTUBE and EICAR from a few SMTP
clients; every message accounted for afterwards), with this wiring's own faults: spamd and clamd killed,
the door SIGKILLed mid-traffic and started again (as systemd restarts it), the reinjection smtpd going
away (refused, and open connections cut: see smtpgate.py for the one moment left alone), and the admin
reports' sendmail failing. A virus is accepted and quarantined (the door's default), so each must be in
the quarantine exactly once and never at the sink.
"""

from __future__ import annotations

import random
import re

import pytest
from smtpwiring import DoorProcess, SmtpPostfix

from .chaos import ChaosLoop, Daemons, FlakySendmail
from .smtpgate import ReinjectGate
from .test_load import CHAOS_OUTAGE, SEED, SENDMAIL_FAIL_PERMILLE, account, report, run_load
from .wiring import config_sections
from conftest import write_config
from postfix import HOST, kill_strays, requires_root

pytestmark = [pytest.mark.faults, pytest.mark.postfix, pytest.mark.daemons, requires_root]
# This wiring carries the load in about 40 s, a third of pipe's time: faults come three times as often, so that
# the door is killed, and the reinjection cut, several times within one run.
CHAOS_PAUSE = (0.3, 2.0)


def through_the_door(postfix: SmtpPostfix):
    """SETTLED for this wiring: every accepted message was handed to the door at least once (maillog)."""
    relay = f"relay={HOST}[{HOST}]:{postfix.door_port}".encode()
    seen: set[str] = set()
    offset = 0

    def settled(accepted) -> bool:
        nonlocal offset
        with open(postfix.maillog_path, "rb") as fh:
            fh.seek(offset)
            new = fh.read()
        new = new[: new.rfind(b"\n") + 1]
        offset += len(new)
        seen.update(m.decode() for m in re.findall(rb"(\w+): to=<[^>]*>, " + re.escape(relay) + rb", .*status=sent", new))
        return all(r.queue_id in seen for r in accepted)

    return settled


DUPLICATE = re.compile(r"queue id (\w+), .*: delivered (\d+) times to \S+: DUPLICATED")


def rfc1047_window(problems: list[str], door_log: str, maillog: str, door_port: int) -> tuple[list[str], int]:
    """Split off the duplicates SMTP itself cannot prevent, each proved from both sides: Postfix logged that the
    door's connection was lost after the final dot ("message may be sent more than once"), and the door logged,
    for the retry, that the reinjection of the earlier attempt had sent its final dot and never read an answer
    (its ledger's D line: the door was SIGKILLed between its dot to the 10028 smtpd and that smtpd's reply).
    A duplicate without both, or with more copies than such retries, stays a problem. Returns (problems, explained)."""
    kept, explained = [], 0
    for problem in problems:
        found = DUPLICATE.search(problem)
        if found:
            queue_id, copies = found.group(1), int(found.group(2))
            unanswered = door_log.count(f"{queue_id}: a retry of a message whose reinjection got no answer")
            postfix_saw = re.search(
                rf"{queue_id}: to=<[^>]*>, relay=[^,]*:{door_port}, .*status=deferred \(lost connection with .* while sending end of data"
                r" -- message may be sent more than once\)",
                maillog,
            )
            if postfix_saw and copies - 1 <= unanswered:
                explained += 1
                continue
        kept.append(problem)
    return kept, explained


def test_smtp_wiring_under_faults(fault_run_dir, summary):
    rng = random.Random(f"{SEED}-smtp")
    daemons = Daemons(fault_run_dir)
    with SmtpPostfix() as postfix:
        try:
            postfix.start_smtp(maxproc=4)
            folder = postfix.filter_dir
            sendmail = FlakySendmail(folder, owner=postfix.pipe_user.pw_name)
            gate = ReinjectGate((HOST, postfix.reinject_port))
            spamd_host, spamd_port, clamd_socket = daemons.addresses
            door = DoorProcess(postfix, f"{spamd_host}:{spamd_port}", clamd_socket)
            sections = config_sections(folder, daemons.addresses, sendmail.argv)
            sections["smtp"] = {"listen": f"{HOST}:{postfix.door_port}", "reinject": gate.address, "timeout": 10, "max_clients": 4}
            write_config(folder / "mailfilter.toml", sections)  # the door's config file, with the flaky report sendmail
            door.start()
            sendmail.fail(SENDMAIL_FAIL_PERMILLE)

            def restart_door() -> None:
                if door.proc is None or door.proc.poll() is not None:
                    door.start()

            chaos = ChaosLoop(
                rng,
                {
                    "spamd_killed": (lambda: daemons.kill("spamd"), lambda: daemons.start("spamd")),
                    "clamd_killed": (lambda: daemons.kill("clamd"), lambda: daemons.start("clamd")),
                    "door_killed": (door.kill, restart_door),
                    "reinject_outage": (gate.down, gate.up),
                    "sendmail_outage": (lambda: sendmail.fail(1000), lambda: sendmail.fail(SENDMAIL_FAIL_PERMILLE)),
                },
                CHAOS_PAUSE,
                CHAOS_OUTAGE,
            )
            try:
                clients, load_seconds = run_load(postfix, "smtp", rng, chaos, through_the_door(postfix))
            finally:
                daemons.start()
                restart_door()
                sendmail.fail(0)
            log = (folder / "mailfilter.log").read_text
            how = {"wiring": "smtp", "virus_rejected": False, "log": log, "action_key": "action", "load_seconds": load_seconds}
            how["writers_killed"] = True  # the door is SIGKILLed mid-traffic: a store cut mid-write leaves a temporary file
            figures, problems = account(postfix, clients, chaos, sendmail, daemons, folder=folder, **how)
            figures["reinject_connections_cut"] = gate.cuts
            problems, explained = rfc1047_window(problems, log(), postfix.maillog_path.read_text(), postfix.door_port)
            figures["duplicated_rfc1047_window"] = explained  # reported apart; "duplicated" keeps only the others
            figures["duplicated"] -= explained
            figures["door_output_tracebacks"] = door.output().count("Traceback")
            if figures["door_output_tracebacks"]:
                problems.append(f"the door printed {figures['door_output_tracebacks']} traceback(s): see door.out")
            report(summary, "smtp", figures, problems, postfix, [folder / "mailfilter.log", folder / "door.out", sendmail.logfile], clients)
        finally:
            if "door" in locals():
                door.kill()
            if "gate" in locals():
                gate.close()
            postfix.stop()
            kill_strays(postfix.work)
