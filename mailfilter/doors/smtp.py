"""`mailfilter smtp`: the after-queue door that speaks SMTP to Postfix (FILTER_README's advanced method).

Postfix hands every queued message to it over SMTP (`content_filter = smtp-mailfilter:[127.0.0.1]:10027`);
the door scans it with the same pipeline and policy as the other doors and reinjects it over SMTP into
Postfix's second smtpd ([smtp] reinject, 127.0.0.1:10028, with `content_filter=` empty), with the same
envelope and the XFORWARD attributes Postfix gave. The reply to end-of-data is 250 only once the
reinjecting smtpd took the message (or its quarantine entry is durable, or it is refused on purpose);
every failure before that is a 4xx, and Postfix keeps the message queued. One process, resident: the
pipeline is imported once, scanner threads and reinjection connections are kept (smtpreinject.Pool).

Modules: smtpserver (aiosmtpd's protocol with XFORWARD, the sessions), smtpfilter (one message:
pipeline, policy, act, reply, bookkeeping), smtpreinject (the SMTP client). This one runs the daemon:
listen, tell systemd READY=1, and on SIGTERM/SIGINT stop accepting, let transactions in flight end
(up to [smtp] grace), tell systemd STOPPING=1, close what is left.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable

from .. import log, metrics, pipeline
from ..config import Config
from ..daemon import notify
from . import smtpfilter
from .milterreply import AfterReply
from .smtpledger import Ledger, LedgerError
from .smtpreinject import Pool, split_address
from .smtpserver import DoorState, FilterLMTP, FilterSMTP

LOG = logging.getLogger(log.LOGGER)
HOSTNAME = "mailfilter.localhost"  # the 220 greeting's name: seen only by the local Postfix
IDLE_MARGIN = 60.0  # seconds a session may stay idle beyond the worst case of one message
POLL = 0.05  # seconds between two looks at the sessions while stopping


class ServeError(Exception):
    """The door cannot start (no address, address in use, running as root)."""


def worst_case(config: Config) -> float:
    """The longest from end-of-data to the reply: the slower scanner's timeout, the pipeline's backstop, and
    the reinjection's [smtp] timeout. Keep it well below the transport's smtp_data_done_timeout (600 s)."""
    return max(config.spamd.timeout, config.clamd.timeout) + pipeline.BACKSTOP + config.smtp.timeout


def refuse_root() -> None:
    if os.geteuid() == 0:
        raise ServeError("refusing to run as root: run it as its own user (systemd/mailfilter-smtp.service)")


def preload() -> None:
    """Import now what messages need, so that no message pays for it."""
    pipeline.preload()
    from .. import journal, message  # noqa: F401
    from ..actions import quarantine, report  # noqa: F401


def serve(config: Config, listen: str | None = None) -> int:
    """Run until SIGTERM/SIGINT, then let transactions in flight finish (up to [smtp] grace). Returns an exit status."""
    listen = listen or config.smtp.listen
    if not listen:
        raise ServeError("no address to listen on: [smtp] listen is '' (set it, or pass --listen)")
    if not config.smtp.reinject:
        raise ServeError("no reinjection address: [smtp] reinject is '' (Postfix's second smtpd, e.g. 127.0.0.1:10028)")
    preload()
    logging.getLogger("mail.log").setLevel(logging.ERROR)  # aiosmtpd's own lines (every command at INFO); ours say it all
    return asyncio.run(_until_signal(config, listen))


async def _until_signal(config: Config, listen: str) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        return await run(config, listen, stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


async def run(config: Config, listen: str, stop: asyncio.Event, ready: Callable[[str], object] = notify) -> int:
    """Serve on LISTEN until STOP is set, then stop as SIGTERM does. READY gets READY=1 and STOPPING=1 (systemd)."""
    loop = asyncio.get_running_loop()
    tally = metrics.Tally()
    runner = pipeline.Runner()
    try:
        ledger = Ledger(config.report.state_dir)
    except LedgerError as exc:
        runner.close()
        raise ServeError(str(exc)) from None
    if ledger.unsure:
        LOG.warning("%d message(s) reinjected by the last run got no answer: their retries may arrive twice", ledger.unsure)
    if ledger.recovered:
        LOG.warning("%d message(s) sealed by the last run may have lost their answer: a retry is answered, not delivered", ledger.recovered)
    pool = Pool(config.smtp.reinject, config.smtp.timeout, size=config.smtp.max_clients)
    after = AfterReply()
    door = DoorState(smtpfilter.Dependencies(config, runner, pool, tally, ledger), after)
    host, port = split_address(listen)
    options = {
        "data_size_limit": config.smtp.max_size,
        "enable_SMTPUTF8": True,
        "hostname": HOSTNAME,
        "ident": "mailfilter",
        "timeout": worst_case(config) + IDLE_MARGIN,
        "loop": loop,
    }
    try:
        protocol = FilterLMTP if config.smtp.protocol == "lmtp" else FilterSMTP
        server = await loop.create_server(lambda: protocol(door, **options), host, port, reuse_address=True)
    except OSError as exc:
        runner.close()
        ledger.close()
        raise ServeError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    LOG.info("smtp door listening on %s (%s), reinjecting into %s", listen, config.smtp.protocol.upper(), config.smtp.reinject)
    if config.metrics.listen:
        try:
            metrics.serve(config.metrics.listen, tally, lambda: door.in_flight.count, metrics.held_at(config.quarantine))
        except OSError as exc:
            server.close()
            runner.close()
            ledger.close()
            raise ServeError(f"cannot serve metrics on {config.metrics.listen}: {exc.strerror or exc}") from None
        LOG.info("metrics on http://%s/metrics", config.metrics.listen)
    try:
        ready("READY=1")
        await stop.wait()
        ready("STOPPING=1")
        await _stop(door, server, config)
    finally:
        runner.close()
        pool.close()
        door.executor.shutdown(wait=False, cancel_futures=True)
        ledger.close()
    return 0


async def _stop(door: DoorState, server: asyncio.Server, config: Config) -> None:
    """No new connection nor transaction; transactions in flight end within [smtp] grace; then close everything."""
    door.stopping = True
    server.close()
    deadline = time.monotonic() + config.smtp.grace
    LOG.info("smtp door stopping: %d transaction(s) in flight", door.busy())
    while (door.busy() or door.in_flight.count) and time.monotonic() < deadline:
        await asyncio.sleep(POLL)
    if door.busy() or door.in_flight.count:
        door.abandoned.set()  # a message still being filtered is not reinjected now: Postfix gets no 250 and retries it
        LOG.warning("smtp door stopping with %d message(s) in flight: not reinjected, Postfix retries them", door.in_flight.count)
    for session in list(door.sessions):
        if session.transport is not None:
            session.transport.close()
    if not door.after.close(max(1.0, deadline - time.monotonic())):
        LOG.warning("smtp door stopping with %d admin report(s) or journal line(s) not done within [smtp] grace", door.after.waiting)
