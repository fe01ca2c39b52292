"""The SMTP side of `mailfilter smtp`: aiosmtpd's protocol, with what an after-queue filter needs of it.

- XFORWARD (Postfix's XFORWARD_README): offered in the EHLO reply, its attributes kept with the
  transaction and passed on to the reinjecting smtpd, so that its Received line and logs name the
  original client. aiosmtpd has no such command; it lets a subclass add one (smtp_XFORWARD).
- Addresses taken as Postfix sent them (no RFC 5322 re-rendering, the null sender as <>), and
  8BITMIME and SMTPUTF8 offered and passed on; bytes of the message are never decoded.
- Lines of any length up to LINE_LIMIT (Postfix queues longer lines than SMTP's 1000; a 500 would bounce).
- At most [smtp] max_clients sessions; one more is told 421 (Postfix retries later), as is a new
  MAIL FROM once the door is stopping.
- Errors inside a command are a 451, never aiosmtpd's default 500 (Postfix would bounce the message).

Over LMTP (FilterLMTP) the same, with LHLO, and one reply line per recipient after DATA.

The end of DATA hands the message to smtpfilter.filter_message on a thread of the door's executor;
the reply waits for it. WAITING, the gate before reinjection's final dot or the quarantine store, raises
once this connection is gone or the stop's grace has run out: a message Postfix was not told 250 for
is never reinjected.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope

from .. import log
from ..daemon import InFlight
from ..model import Envelope as MailEnvelope
from . import smtpfilter
from .milterreply import AfterReply

LOG = logging.getLogger(log.LOGGER)
LINE_LIMIT = 1 << 20  # bytes of one line (command or message) the reader takes
XFORWARD_ATTRIBUTES = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE")
UNAVAILABLE = "[UNAVAILABLE]"


class DoorState:
    """What the sessions of one door share: the filter's dependencies, the executor, the session count, the stop."""

    def __init__(self, deps: smtpfilter.Dependencies, after: AfterReply) -> None:
        self.deps, self.after = deps, after
        self.config = deps.config
        self.executor = concurrent.futures.ThreadPoolExecutor(self.config.smtp.max_clients, thread_name_prefix="mailfilter-smtp")
        self.in_flight = InFlight()
        self.sessions: set[FilterSMTP] = set()
        self.stopping = False  # no new transactions
        self.abandoned = threading.Event()  # the grace is over: nothing more is reinjected or stored

    def admit(self, session: FilterSMTP) -> bool:
        if self.stopping or len(self.sessions) >= self.config.smtp.max_clients:
            return False
        self.sessions.add(session)
        return True

    def busy(self) -> int:
        """Sessions inside a transaction (MAIL given, DATA not answered)."""
        return sum(1 for session in self.sessions if session.envelope is not None and session.envelope.mail_from)

    def after_reply(self, job: Any) -> None:
        if job is not None and not self.after.submit(job):
            LOG.error("after-reply queue full (%d dropped so far): admin report, journal line and metrics dropped", self.after.dropped)


class Transaction(Envelope):
    """aiosmtpd's envelope, with the XFORWARD attributes of this transaction."""

    def __init__(self) -> None:
        super().__init__()
        self.xforward: dict[str, str] = {}


class FilterSMTP(SMTP):
    line_length_limit = LINE_LIMIT

    def __init__(self, door: DoorState, **options: Any) -> None:
        self.door = door
        self.gone = threading.Event()
        super().__init__(Handler(door), **options)

    def _create_envelope(self) -> Transaction:
        return Transaction()

    def connection_lost(self, error: Exception | None) -> None:
        self.gone.set()
        self.door.sessions.discard(self)
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        if not self.door.admit(self):
            why = "stopping" if self.door.stopping else f"too many sessions ([smtp] max_clients {self.door.config.smtp.max_clients})"
            LOG.warning("smtp: connection refused: %s", why)
            await self.push(f"421 4.3.2 mailfilter: {why}, try again later")
            self.transport.close()  # type: ignore[union-attr]
            return
        await super()._handle_client()

    async def smtp_MAIL(self, arg: str | None) -> None:
        if self.door.stopping:
            await self.push("421 4.3.2 mailfilter: stopping, try again later")
            self.transport.close()  # type: ignore[union-attr]
            return
        await super().smtp_MAIL(arg)

    async def smtp_XFORWARD(self, arg: str | None) -> None:
        envelope = self.envelope
        if not isinstance(envelope, Transaction):  # aiosmtpd makes one per transaction (_create_envelope)
            raise TypeError("no transaction")
        if envelope.mail_from:
            await self.push("503 5.5.1 Error: MAIL transaction in progress")
            return
        attributes = {}
        for item in (arg or "").split():
            name, equals, value = item.partition("=")
            if not equals or name.upper() not in XFORWARD_ATTRIBUTES:
                await self.push(f"501 5.5.4 Bad XFORWARD attribute: {name[:40]}")
                return
            attributes[name.upper()] = value
        if not attributes:
            await self.push("501 5.5.4 Syntax: XFORWARD attribute=value...")
            return
        envelope.xforward.update(attributes)
        await self.push("250 2.0.0 Ok")

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """The address between < and > as sent (quotes kept, no re-rendering), and the rest (the parameters)."""
        return raw_address(arg)


class FilterLMTP(FilterSMTP, LMTP):
    """The same door over LMTP (RFC 2033, [smtp] protocol = "lmtp"): LHLO instead of HELO/EHLO (aiosmtpd's
    LMTP), and after DATA one reply per recipient (Handler.handle_DATA, smtpgroups.act_per_recipient)."""


def raw_address(arg: str) -> tuple[str | None, str | None]:
    """`<addr> PARAMS` -> (addr, PARAMS); the null sender is '<>' (as aiosmtpd has it); None when not bracketed."""
    text = (arg or "").lstrip()
    if not text:
        return "", ""
    if not text.startswith("<"):
        return None, None
    quoted = escaped = False
    for i, char in enumerate(text[1:], 1):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == ">" and not quoted:
            address = text[1:i]
            return (address or "<>"), text[i + 1 :]
    return None, None


class Handler:
    """aiosmtpd's hooks for one session."""

    def __init__(self, door: DoorState) -> None:
        self.door = door

    async def handle_EHLO(self, server: FilterSMTP, session: Any, envelope: Any, hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-XFORWARD " + " ".join(XFORWARD_ATTRIBUTES), responses[-1]]

    async def handle_exception(self, error: Exception) -> str:
        LOG.error("smtp: command failed (the client is told 451): %s", error, exc_info=error)
        return "451 4.3.0 mailfilter: internal error, try again later"

    async def handle_DATA(self, server: FilterSMTP, session: Any, envelope: Transaction) -> str:
        started = time.monotonic()
        received = received_message(envelope)
        lmtp = isinstance(server, LMTP)
        if len(received.data) > self.door.config.smtp.max_size:  # aiosmtpd refuses over SIZE; this is for SIZE-less clients
            self.door.after_reply(smtpfilter.refused_too_large(received.envelope, len(received.data), self.door.deps, started))
            return for_each(smtpfilter.too_large(self.door.config.smtp.max_size), envelope, lmtp)

        def waiting() -> None:
            if server.gone.is_set():
                raise smtpfilter.ClientGone("the client hung up before the message was reinjected; nothing delivered")
            if self.door.abandoned.is_set():
                raise smtpfilter.ClientGone("stopping: the grace for messages in flight ran out; nothing delivered")

        def work() -> smtpfilter.Answer:
            with self.door.in_flight:
                return smtpfilter.filter_message(received, self.door.deps, waiting, started, per_recipient=lmtp)

        future = asyncio.get_running_loop().run_in_executor(self.door.executor, work)
        try:
            answer = await asyncio.shield(future)
        except asyncio.CancelledError:  # the connection is gone: the reply cannot be given, the bookkeeping still runs
            future.add_done_callback(lambda done: done.cancelled() or done.exception() or self.door.after_reply(done.result().after))
            raise
        self.door.after_reply(answer.after)
        if answer.sealed:  # runs once the reply below is written to Postfix's connection
            asyncio.get_running_loop().call_soon(smtpfilter.note, self.door.deps, "answered", answer.sealed)
        if answer.answered:
            asyncio.get_running_loop().call_soon(answer.answered)
        return for_each(answer.reply, envelope, lmtp)


def for_each(reply: str, envelope: Transaction, lmtp: bool) -> str:
    """REPLY as the client reads it: over LMTP one line per recipient, so a single line is given to each."""
    if lmtp and "\r\n" not in reply:
        return "\r\n".join([reply] * max(1, len(envelope.rcpt_tos)))
    return reply


def received_message(envelope: Transaction) -> smtpfilter.Received:
    sender = "" if envelope.mail_from in (None, "<>") else envelope.mail_from
    ident = envelope.xforward.get("IDENT", "")
    queue_id = ident if ident and not ident.startswith("[") else None
    mail_envelope = MailEnvelope(sender, tuple(envelope.rcpt_tos), queue_id)
    data = envelope.original_content or b""
    return smtpfilter.Received(
        mail_envelope,
        data,
        dict(envelope.xforward),
        eight_bit="BODY=8BITMIME" in envelope.mail_options,
        smtputf8=envelope.smtp_utf8,
    )
