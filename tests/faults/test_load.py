"""Faults under load (issue 6, part 1): both Postfix wirings, thousands of messages, daemons killed at random.

Through a private Postfix (tests/postfix.py), a few concurrent SMTP clients send
numbered ham, GTUBE spam and EICAR viruses while a chaos loop (seeded) kills
spamd, clamd and, in the milter wiring, the milter with SIGKILL and restarts
them, and makes the reinjection sendmail (tests/faults/flaky-sendmail) fail for a
while, on top of a steady fraction of failing calls. Afterwards everything is
brought up, Postfix's queue is flushed until it is empty, and every message is
accounted for: accepted means at the sink exactly once per recipient (or, for a
virus in the pipe wiring, in the quarantine exactly once); refused means a 4xx,
or 554 5.7.1 for a virus at the milter, and nothing delivered. The figures go to
the terminal summary and, as JSON, to $MAILFILTER_FAULTS_SUMMARY.

Counts, pauses and deadlines are the constants below. Environment:
MAILFILTER_FAULTS_SEED the seed (the chaos loop's choices; timing still varies from
run to run), MAILFILTER_FAULTS_MESSAGES the messages per wiring (1000),
MAILFILTER_FAULTS_EVIDENCE where a failed run's logs are kept, MAILFILTER_FAULTS_KEEP=1
keeps them after a run that passed too.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest

from .chaos import ChaosLoop, Daemons, FlakySendmail, Milter
from .load import Accounting, ClientLoop, Result, messages
from .rigs import HoldingSpamd
from .wiring import Worker, check_quarantine_folder, config_sections, drain, instance, start_milter, start_pipe
from conftest import quarantined, write_config
from postfix import PostfixInstance, requires_root

pytestmark = [pytest.mark.faults, pytest.mark.postfix, pytest.mark.daemons, requires_root]

MESSAGES_PER_WIRING = int(os.environ.get("MAILFILTER_FAULTS_MESSAGES", "1000"))
ATTEMPTS = 5  # a message refused with a 4xx is sent again, up to this many times in all,
RETRY_AFTER = 2.0  # after N refusals no sooner than N times this many seconds (an MTA's retry schedule, shortened)
BACKOFF = 0.5  # seconds a client holds off after a 4xx before its next message
MIX = {"ham": 0.7, "gtube": 0.15, "eicar": 0.15}  # weights of the message kinds
TWO_RECIPIENTS = 0.1  # fraction of messages with a second recipient
CLIENT_THREADS = 4
PER_CONNECTION = 3  # messages per SMTP connection
# Deadlines, so that the whole of tests/faults stays under 8 minutes on 2 cores (each test fails beyond its own):
LOAD_SECONDS = {"pipe": 260.0, "milter": 210.0, "worker": 240.0, "smtp": 180.0}  # the load with the chaos, until every message met it
DRAIN_SECONDS = {"pipe": 120.0, "milter": 30.0, "worker": 120.0, "smtp": 90.0}  # then flushing the queue until it is empty
CHAOS_PAUSE = (1.0, 6.0)  # seconds between two faults
WORKER_PAUSE = (0.5, 3.0)  # the worker's half load takes some 45 s: every fault of its deck must come in that time
CHAOS_OUTAGE = (0.1, 1.5)  # seconds a fault lasts before its repair
# The worker wiring: [pipe] deadline short enough that spamd held for a while, or a slow sendmail, outlast it.
WORKER_DEADLINE = 4.0
WORKER_OUTAGE = (0.5, 6.0)  # with HOLD_EXTRA: some held scans outlast the deadline and some do not
HOLD_EXTRA = 2.0  # seconds spamd stays held beyond its outage
WORKER_MESSAGES = max(1, MESSAGES_PER_WIRING // 2)  # the hand-over's faults cost retries: half the load keeps the time
SLOW_SENDMAIL = 5.0  # seconds: longer than the deadline, well within [delivery] timeout
SENDMAIL_FAIL_PERMILLE = 50  # steady chance that the reinjection sendmail fails (exit 75) during the load
SEED = int(os.environ.get("MAILFILTER_FAULTS_SEED", "61127"))
EVIDENCE = os.environ.get("MAILFILTER_FAULTS_EVIDENCE", "/tmp/mailfilter-faults-evidence")  # logs of a failed run are kept here


ANY_NUMBER = re.compile(r"/tmp/mailfilter-\w+-\w+|[0-9A-F]{8,}|\d+")  # work folders, queue ids, numbers
MILTER_WARNING = re.compile(r"warning: milter \S+: (.*)")


def maillog_figures(log: str) -> dict:
    """What Postfix logged: deferrals by relay, DSN and reason (numbers and ids left out), bounces, milter tempfails."""
    deferred = Counter(
        " ".join([m[1], m[2], ANY_NUMBER.sub("N", m[3])[:90]])
        for m in re.finditer(r"relay=([^,]+), .*?dsn=(\d\.\d\.\d), status=deferred \((.*)\)", log)
    )
    return {
        "deferred": dict(deferred.most_common(12)),
        "bounced": len(re.findall(r"status=bounced", log)),
        "skipped_still_being_delivered": log.count("skipped, still being delivered"),
        "milter_rejects": dict(Counter(re.findall(r"milter-reject: \w+ from \S+: (\d{3} \d\.\d\.\d)", log)).most_common()),
        "milter_warnings": dict(Counter(ANY_NUMBER.sub("N", w)[:100] for w in MILTER_WARNING.findall(log)).most_common(8)),
    }


def filter_log_figures(text: str, key: str) -> dict:
    """What mailfilter logged: its actions (KEY: action for pipe, milter for the milter), and internal errors."""
    return {
        "actions": dict(Counter(re.findall(rf"\b{key}=(\w+)", text)).most_common()),
        "internal_errors": len(re.findall(r"internal error|callback failed", text)),
        "tracebacks": text.count("Traceback"),
    }


def run_load(postfix: PostfixInstance, wiring: str, rng: random.Random, chaos: ChaosLoop, settled=None) -> tuple[ClientLoop, float]:
    """Send MESSAGES_PER_WIRING messages while CHAOS runs; return the client loop and the seconds the load took.

    The chaos goes on after the last message until SETTLED(accepted results) is true (polled), so that
    every message meets it on its way: the pipe wiring filters after the queue, long after the 250; and until
    every fault of its deck has come once (a fast load would otherwise end before the deck does).
    """
    batch = messages(WORKER_MESSAGES if wiring == "worker" else MESSAGES_PER_WIRING, wiring, rng, MIX, TWO_RECIPIENTS)
    started = time.monotonic()
    deadline = started + LOAD_SECONDS[wiring]
    clients = ClientLoop(postfix.smtp_port, batch, CLIENT_THREADS, PER_CONNECTION, deadline, ATTEMPTS, RETRY_AFTER, BACKOFF)
    chaos.start()
    clients.start()
    try:
        clients.join()
        accepted = [r for r in clients.results if r.accepted]
        while (settled is not None and not settled(accepted)) or not chaos.dealt_all():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the load did not settle, or not every fault came, within {LOAD_SECONDS[wiring]:g} s: lower MESSAGES_PER_WIRING"
                )
            time.sleep(0.5)  # polling the maillog
    finally:
        chaos.stop()
    assert not clients.unfinished, (
        f"{clients.unfinished} of {len(batch)} messages not settled within {LOAD_SECONDS[wiring]:g} s: lower MESSAGES_PER_WIRING"
    )
    return clients, time.monotonic() - started


def filtered_once(postfix: PostfixInstance):
    """SETTLED for the pipe wiring: every accepted message went through `mailfilter pipe` at least once (maillog)."""
    seen: set[str] = set()
    offset = 0

    def settled(accepted) -> bool:
        nonlocal offset
        with open(postfix.maillog_path, "rb") as fh:  # only what was logged since the last look, whole lines
            fh.seek(offset)
            new = fh.read()
        new = new[: new.rfind(b"\n") + 1]
        offset += len(new)
        seen.update(m.decode() for m in re.findall(rb"(\w+): to=<[^>]*>, relay=mailfilter, ", new))
        return all(r.queue_id in seen for r in accepted)

    return settled


def account(postfix: PostfixInstance, clients: ClientLoop, chaos: ChaosLoop, sendmail: FlakySendmail, daemons: Daemons, **how) -> tuple:
    """After the load (everything up again): drain the queue, account for every message; return (figures, problems).

    how: wiring, folder (the filter's), virus_rejected (bool), log (the filter's log text) and action_key (its action field), load_seconds;
    writers_killed (bool): the filter was SIGKILLed during the run, so a store may have been cut mid-write: what it left is
    removed by the store's own sweep (as `quarantine purge` does) and counted; anything the sweep leaves is a problem.
    """
    folder = how["folder"]
    during_load = len(postfix.sink.deliveries)
    queued = len(postfix.postqueue_json())
    drain_seconds = drain(postfix, DRAIN_SECONDS[how["wiring"]])
    deliveries = postfix.sink.deliveries
    quarantine = [meta for meta, _ in quarantined(folder / "quarantine")]
    accounting = Accounting(clients.attempts, deliveries, quarantine, virus_rejected=how["virus_rejected"]).check()
    swept = []
    if how.get("writers_killed"):
        from datetime import timedelta

        from mailfilter.actions.quarantine import FolderStore

        swept = FolderStore(str(folder / "quarantine")).sweep(timedelta(0))  # the load is over: no writer is in flight
    problems = accounting.problems + check_quarantine_folder(folder / "quarantine")
    figures = {
        **accounting.figures,
        "store_leftovers_swept": len(swept),
        "sink_deliveries_during_load": during_load,
        "sink_deliveries_after_load": len(deliveries) - during_load,
        "queued_after_load": queued,
        "faults": {**chaos.counts, "sendmail_calls_failed": sendmail.failures()},
        "spamassassin_locks_removed": len(daemons.locks_removed),  # left by killed spamd children (see chaos.py)
        "chaos_log": chaos.log,
        "postfix": maillog_figures(postfix.maillog()),
        "mailfilter": filter_log_figures(how["log"](), how["action_key"]),
        "seconds": {"load": round(how["load_seconds"], 1), "drain": round(drain_seconds, 1)},
        "seed": SEED,
    }
    if figures["postfix"]["bounced"]:
        problems.append(f"Postfix bounced {figures['postfix']['bounced']} message(s): see status=bounced in the maillog")
    if missing := sorted(set(chaos.faults) - set(chaos.counts)):
        problems.append(f"faults never injected: {missing} (the load was too short for CHAOS_PAUSE: tune the constants)")
    return figures, problems


def keep_evidence(name: str, files: list[Path], figures: dict, problems: list[str], attempts: list[Result]) -> Path:
    """Copy the logs of a failed run out of the work folders (which are removed) to EVIDENCE/NAME-TIME/."""
    folder = Path(EVIDENCE) / f"{name}-{time.strftime('%Y%m%dT%H%M%S')}"
    folder.mkdir(parents=True, exist_ok=True)
    for path in files:
        if path.exists():
            shutil.copyfile(path, folder / path.name)
    (folder / "figures.json").write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    (folder / "problems.txt").write_text("\n".join(problems) + "\n")
    (folder / "attempts.jsonl").write_text("".join(json.dumps(r.record()) + "\n" for r in sorted(attempts, key=lambda r: r.at)))
    return folder


def report(summary, name: str, figures: dict, problems: list[str], postfix: PostfixInstance, logs: list[Path], clients: ClientLoop) -> None:
    """Record and print the figures; fail with every problem found, keeping the logs as evidence."""
    summary.add(name, figures)
    shown = {k: v for k, v in figures.items() if k != "chaos_log"}
    print(f"\n{name}: {json.dumps(shown, sort_keys=True)}")
    if problems or os.environ.get("MAILFILTER_FAULTS_KEEP"):
        kept = keep_evidence(name, [postfix.maillog_path, *logs], figures, problems, clients.all_attempts)
    if problems:
        listed = "\n".join(problems[:40])
        raise AssertionError(f"{len(problems)} problem(s) in the {name} run (logs kept in {kept}):\n{listed}\n{postfix.diagnostics()}")


def test_pipe_wiring_under_faults(fault_run_dir, summary):
    """content_filter -> `mailfilter pipe` -> flaky sendmail: spamd and clamd killed, sendmail failing."""
    rng = random.Random(f"{SEED}-pipe")
    daemons = Daemons(fault_run_dir)
    with instance() as postfix:
        folder = postfix.filter_dir
        sendmail = FlakySendmail(folder)
        start_pipe(postfix, config_sections(folder, daemons.addresses, sendmail.argv))
        sendmail.fail(SENDMAIL_FAIL_PERMILLE)
        chaos = ChaosLoop(
            rng,
            {
                "spamd_killed": (lambda: daemons.kill("spamd"), lambda: daemons.start("spamd")),
                "clamd_killed": (lambda: daemons.kill("clamd"), lambda: daemons.start("clamd")),
                "sendmail_outage": (lambda: sendmail.fail(1000), lambda: sendmail.fail(SENDMAIL_FAIL_PERMILLE)),
            },
            CHAOS_PAUSE,
            CHAOS_OUTAGE,
        )
        try:
            clients, load_seconds = run_load(postfix, "pipe", rng, chaos, filtered_once(postfix))
        finally:  # everything up again, and no more failing calls
            daemons.start()
            sendmail.fail(0)
        log = (folder / "mailfilter.log").read_text
        how = {"wiring": "pipe", "virus_rejected": False, "log": log, "action_key": "action", "load_seconds": load_seconds}
        figures, problems = account(postfix, clients, chaos, sendmail, daemons, folder=folder, **how)
        report(summary, "pipe", figures, problems, postfix, [folder / "mailfilter.log", sendmail.logfile], clients)


def test_milter_wiring_under_faults(fault_run_dir, summary):
    """smtpd_milters -> `mailfilter milter`: spamd, clamd and the milter killed, the report sendmail failing."""
    rng = random.Random(f"{SEED}-milter")
    daemons = Daemons(fault_run_dir)
    milter = Milter()
    try:
        with instance() as postfix:
            folder = milter.folder
            sendmail = FlakySendmail(folder)
            start_milter(postfix, milter, config_sections(folder, daemons.addresses, sendmail.argv))
            sendmail.fail(SENDMAIL_FAIL_PERMILLE)
            chaos = ChaosLoop(
                rng,
                {
                    "spamd_killed": (lambda: daemons.kill("spamd"), lambda: daemons.start("spamd")),
                    "clamd_killed": (lambda: daemons.kill("clamd"), lambda: daemons.start("clamd")),
                    "milter_killed": (milter.kill, milter.start),
                    "sendmail_outage": (lambda: sendmail.fail(1000), lambda: sendmail.fail(SENDMAIL_FAIL_PERMILLE)),
                },
                CHAOS_PAUSE,
                CHAOS_OUTAGE,
            )
            try:
                clients, load_seconds = run_load(postfix, "milter", rng, chaos)
            finally:
                daemons.start()
                if not milter.running:
                    milter.start()
                sendmail.fail(0)
            how = {"wiring": "milter", "virus_rejected": True, "log": milter.log, "action_key": "milter", "load_seconds": load_seconds}
            figures, problems = account(postfix, clients, chaos, sendmail, daemons, folder=folder, **how)
            report(summary, "milter", figures, problems, postfix, [folder / "milter.log", sendmail.logfile], clients)
    finally:
        milter.close()


def corrupt_state(folder: Path) -> None:
    """State files as a crash or a hostile hand may leave them: valid JSON of the wrong shape, and half a file."""
    state = folder / "state"
    state.mkdir(exist_ok=True)
    (state / "metrics-state.json").write_text("[1]")
    (state / "report-state.json").write_text('{"clamav:unavailable": ')


def test_pipe_worker_wiring_under_faults(fault_run_dir, summary):
    """content_filter -> `mailfilter pipe` -> `mailfilter worker`, with the pipe clients giving up at their deadline
    while spamd is held (before READY, or with READY on its way), sendmail slower than the deadline after ACT,
    the worker restarted (clients filter themselves meanwhile), clamd killed, sendmail failing, and the
    state files corrupted under [metrics] textfile (an exception after delivery, before the fix a deferral)."""
    rng = random.Random(f"{SEED}-worker")
    daemons = Daemons(fault_run_dir)
    spamd_host, spamd_port, clamd_socket = daemons.addresses
    with instance() as postfix, HoldingSpamd(spamd_host, spamd_port) as held:
        held.release()
        folder = postfix.filter_dir
        sendmail = FlakySendmail(folder)
        sections = config_sections(folder, ("127.0.0.1", held.port, clamd_socket), sendmail.argv)
        sections["pipe"] = {"deadline": WORKER_DEADLINE, "worker": str(folder / "run" / "worker.sock")}
        sections["metrics"]["textfile"] = str(folder / "mailfilter.prom")
        config = start_pipe(postfix, sections)
        worker = Worker(postfix, config)
        sendmail.fail(SENDMAIL_FAIL_PERMILLE)
        chaos = ChaosLoop(
            rng,
            {
                "spamd_held": (held.hold, lambda: (time.sleep(HOLD_EXTRA), held.release())),
                "clamd_killed": (lambda: daemons.kill("clamd"), lambda: daemons.start("clamd")),
                "sendmail_slow": (lambda: sendmail.slow(SLOW_SENDMAIL), lambda: sendmail.slow(0)),
                "sendmail_outage": (lambda: sendmail.fail(1000), lambda: sendmail.fail(SENDMAIL_FAIL_PERMILLE)),
                "worker_restarted": (worker.stop, worker.start),
                "state_corrupted": (lambda: corrupt_state(folder), lambda: None),
            },
            WORKER_PAUSE,
            WORKER_OUTAGE,
        )
        try:
            try:
                clients, load_seconds = run_load(postfix, "worker", rng, chaos, filtered_once(postfix))
            finally:
                held.release()
                daemons.start("clamd")  # spamd is only held here, never killed
                sendmail.fail(0)
                sendmail.slow(0)
                if worker.process is None:
                    worker.start()
            # Draining: a longer deadline (each pipe process reads it per message), so that the flush does not feed on itself.
            sections["pipe"]["deadline"] = 60
            write_config(folder / "mailfilter.toml", sections)
            worker.stop()
            worker.start()
            text = (folder / "mailfilter.log").read_text
            how = {"wiring": "worker", "virus_rejected": False, "log": text, "action_key": "action", "load_seconds": load_seconds}
            figures, problems = account(postfix, clients, chaos, sendmail, daemons, folder=folder, **how)
            log = text()
            figures["mailfilter"]["by_worker"] = log.count("mailfilter/worker[")
            figures["mailfilter"]["by_pipe_process"] = len(re.findall(r"mailfilter/pipe\[\d+\]: \w+: from=", log))
            figures["mailfilter"]["gave_up_before_delivery"] = log.count("the pipe client gave up before delivery")
            if not figures["mailfilter"]["gave_up_before_delivery"]:
                problems.append("no client gave up at its deadline: the chaos never tested the hand-over (tune WORKER_OUTAGE)")
            report(summary, "worker", figures, problems, postfix, [folder / "mailfilter.log", sendmail.logfile], clients)
        finally:
            worker.close()
