"""`mailfilter milter`: the pipeline as a pymilter daemon for Postfix's smtpd_milters.

The adapter only translates: milter callbacks fill an Envelope and a Spool,
the pipeline and the policy decide (unchanged from the pipe door), and eom()
turns the Decision into milter actions:

  deliver     remove spoofed X-Spam-*/X-Virus-* fields (chgheader), insert ours, continue
  quarantine  store in our quarantine, discard
  hold        Postfix's hold queue (milter quarantine), with our headers
  reject      554 5.7.1 for a virus, 550 5.7.1 for spam
  tempfail    451 4.7.1

Every callback goes through one boundary (`_boundary`): an exception becomes a
logged traceback and a 451 4.7.1 tempfail, never an accept.

Between end of message and the reply only the scan and (for a DISCARD) the
quarantine store run, both bounded (milterreply.worst_case). The admin report,
the journal line, the metrics and the summary log line run after the reply, on
the daemon's AfterReply thread: they never delay or change it.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import Milter

from .. import journal, log, message, metrics, pipeline, split, subjecttag
from ..actions import quarantine, report
from ..config import Config
from ..daemon import InFlight, notify
from ..model import Action, Decision, Envelope, Group, ScanResults, Verdict, VirusReport
from ..record import dataclass
from ..spool import Spool
from .milterreply import STORE_ALLOWANCE, AfterReply, StoreTimeout, bounded

NAME = "mailfilter"
QUEUE_ID: contextvars.ContextVar[str] = contextvars.ContextVar("queue_id", default="NOQUEUE")
CALLBACKS = ("connect", "envfrom", "envrcpt", "data", "header", "eoh", "body", "eom", "abort", "close")
TEMPFAIL_REPLY = ("451", "4.7.1")


class QueueIdAdapter(logging.LoggerAdapter):
    """Every line of a message starts with its Postfix queue id, taken from the context."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"{QUEUE_ID.get()}: {msg}", kwargs


LOG = QueueIdAdapter(logging.getLogger(log.LOGGER), {})  # lines about one message
DAEMON_LOG = logging.getLogger(log.LOGGER)  # lines about the daemon


def _boundary(method: Callable[..., int]) -> Callable[..., int]:
    """The one catch of the adapter: an exception in any callback is a tempfail."""

    @functools.wraps(method)
    def guarded(self: MailfilterMilter, *args: Any) -> int:
        try:
            return method(self, *args)
        except Exception:
            LOG.exception("%s callback failed, message deferred", method.__name__)
            self.end_message()
            try:
                self.setreply(*TEMPFAIL_REPLY, "mailfilter: internal error, try again later")
            except Exception:  # noqa: BLE001 - abort/close have no reply to set; the status below still tempfails
                LOG.debug("no reply could be set in %s", method.__name__)
            return Milter.TEMPFAIL

    return guarded


@dataclass(frozen=True)
class Dependencies:
    """What the milters of every connection share. serve() makes one; tests make their own."""

    config: Config
    in_flight: InFlight
    tally: metrics.Tally
    after: AfterReply  # the work that waits until after the reply
    runner: pipeline.Runner | None = None  # without one, pipeline.run (a Runner per message)


class MailfilterMilter(Milter.Base):
    """One instance per SMTP connection (pymilter's factory, functools.partial(MailfilterMilter, deps), makes them)."""

    def __init__(self, deps: Dependencies) -> None:
        self.config, self.in_flight, self.tally, self.runner, self.after = deps.config, deps.in_flight, deps.tally, deps.runner, deps.after
        self.spool: Spool | None = None
        self.sender = ""
        self.recipients: list[str] = []
        self.own_fields: list[tuple[str, int]] = []  # spoofed X-Spam-*/X-Virus-* fields: (name, index)
        self.field_counts: dict[str, int] = {}
        self.started = 0.0
        self.too_big = False

    # --- message state -------------------------------------------------------------------------

    def begin_message(self, sender: str) -> None:
        self.end_message()
        self.in_flight.enter()
        self.spool = Spool(self.config.milter.spool_memory, self.config.milter.tmpdir or None)
        self.sender, self.recipients = sender, []
        self.own_fields, self.field_counts = [], {}
        self.started, self.too_big = time.monotonic(), False

    def end_message(self) -> None:
        if self.spool is not None:
            self.spool.close()
            self.spool = None
            self.in_flight.leave()

    def spool_write(self, data: bytes) -> None:
        if self.spool is None or self.too_big:
            return
        if self.spool.size + len(data) > self.config.milter.max_size:
            self.too_big = True
            return
        self.spool.write(data)

    def _queue_id(self) -> None:
        queue_id = self.getsymval("i")
        if queue_id:
            QUEUE_ID.set(queue_id)

    # --- callbacks -------------------------------------------------------------------------------

    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        QUEUE_ID.set("NOQUEUE")
        return Milter.CONTINUE

    @Milter.decode("bytes")
    def envfrom(self, sender: str | bytes, *params: str | bytes) -> int:
        QUEUE_ID.set("NOQUEUE")
        self.begin_message(_address(sender))
        return Milter.CONTINUE

    @Milter.decode("bytes")
    def envrcpt(self, recipient: str | bytes, *params: str | bytes) -> int:
        self._queue_id()  # Postfix has a queue id from the first accepted recipient on
        self.recipients.append(_address(recipient))
        return Milter.CONTINUE

    def data(self) -> int:
        self._queue_id()
        return Milter.CONTINUE

    @Milter.decode("bytes")
    def header(self, name: str | bytes, value: bytes) -> int:
        raw_name = name if isinstance(name, bytes) else name.encode("utf-8", "surrogateescape")
        key = raw_name.lower()
        self.field_counts[key] = self.field_counts.get(key, 0) + 1
        if message.OWN_FIELD.match(key):
            self.own_fields.append((raw_name.decode("ascii", "replace"), self.field_counts[key]))
        self.spool_write(raw_name + b": " + value.replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n") + b"\r\n")
        return self.refuse_too_big() if self.too_big else Milter.CONTINUE

    def eoh(self) -> int:
        self.spool_write(b"\r\n")
        return Milter.CONTINUE

    def body(self, chunk: bytes) -> int:
        self.spool_write(chunk)
        return self.refuse_too_big() if self.too_big else Milter.CONTINUE

    def eom(self) -> int:
        self._queue_id()
        spool = self.spool
        if spool is None:  # no MAIL FROM seen: nothing sane to scan
            raise RuntimeError("end of message without a message")
        envelope = Envelope(self.sender, tuple(self.recipients), QUEUE_ID.get())
        try:
            outcome = (self.runner or pipeline).run(spool, self.config, envelope, "milter")
            return self.act(envelope, spool, outcome)
        finally:
            self.end_message()

    def refuse_too_big(self) -> int:
        """Over [milter] max_size: refuse now (552 5.3.4), so Postfix sends no more of it."""
        limit, delay = self.config.milter.max_size, time.monotonic() - self.started
        envelope = Envelope(self.sender, tuple(self.recipients), QUEUE_ID.get())
        size, now = (self.spool.size if self.spool else 0), datetime.now(UTC)
        line = log.summary(envelope, None, None, delay, action="reject", size=f">{limit}")

        def bookkeeping() -> None:
            self.account(journal.event("milter", envelope, None, None, "reject", size, delay, now))
            LOG.info("%s", line)

        self.after_reply(bookkeeping, line)
        self.end_message()
        self.setreply("552", "5.3.4", f"message larger than {limit} bytes cannot be scanned")
        return Milter.REJECT

    def abort(self) -> int:
        self.end_message()
        return Milter.CONTINUE

    def close(self) -> int:
        self.end_message()
        return Milter.CONTINUE

    # --- the translation ---------------------------------------------------------------------------

    def act(self, envelope: Envelope, spool: Spool, outcome: pipeline.Outcome) -> int:
        """Set the reply; hand everything the reply does not depend on to the after-reply thread."""
        groups = split.for_one_answer(outcome.groups)
        if len(groups) > 1:
            return self.act_split(envelope, spool, outcome, groups)
        decision, results = groups[0].decision, outcome.results
        action = decision.action.value
        quarantine_id = None
        if action == "quarantine":  # the one slow step a DISCARD must wait for: bounded
            meta, store = quarantine.describe(envelope, spool, results, decision), quarantine.open_store(self.config.quarantine)
            try:
                quarantine_id = bounded(lambda: store.store(spool, meta), STORE_ALLOWANCE, "quarantine store")
            except StoreTimeout as exc:
                LOG.error("%s: message deferred (the entry may still appear; the client's retry then makes a second one)", exc)
                self.setreply(*TEMPFAIL_REPLY, "mailfilter: quarantine busy, try again later")
                return Milter.TEMPFAIL
        status = self.reply(action, decision, results, spool)
        # The reply is sealed. What follows only prepares the after-reply work and must not change it.
        self.after_reply_for(envelope, spool, results, ((envelope, decision, action, quarantine_id),))
        return status

    def act_split(self, envelope: Envelope, spool: Spool, outcome: pipeline.Outcome, groups: tuple[Group, ...]) -> int:
        """Recipients split by the policy: those whose group is not delivered are removed from the message
        (delrcpt) and their copy quarantined, an entry per group; the rest get the first delivered group's
        headers. No recipient left: discarded (every copy is held). A store that times out defers it all."""
        results, parts = outcome.results, []
        store = quarantine.open_store(self.config.quarantine)
        until = time.monotonic() + STORE_ALLOWANCE  # one allowance for all the entries: the bound `check` counts
        for group in groups:
            if group.decision.action is Action.DELIVER:
                continue
            part = Envelope(envelope.sender, group.recipients, envelope.queue_id)
            meta = quarantine.describe(part, spool, results, group.decision)
            try:
                left = max(0.0, until - time.monotonic())
                quarantine_id = bounded(functools.partial(store.store, spool, meta), left, "quarantine store")
            except StoreTimeout as exc:
                LOG.error("%s: message deferred (entries stored for its other recipients stay; the retry makes new ones)", exc)
                self.setreply(*TEMPFAIL_REPLY, "mailfilter: quarantine busy, try again later")
                return Milter.TEMPFAIL
            parts.append((part, group.decision, "quarantine", quarantine_id))
        delivered = [group for group in groups if group.decision.action is Action.DELIVER]
        for part, *_ in parts:
            for recipient in part.recipients:
                self.delrcpt(f"<{recipient}>")
        if delivered:
            self.mark(delivered[0].decision, spool)
            for group in delivered:
                parts.append((Envelope(envelope.sender, group.recipients, envelope.queue_id), group.decision, "deliver", None))
        status = Milter.CONTINUE if delivered else Milter.DISCARD
        self.after_reply_for(envelope, spool, results, tuple(parts))
        return status

    def after_reply_for(self, envelope: Envelope, spool: Spool, results: ScanResults, parts: tuple) -> None:
        """Prepare (reading the head now: the spool closes after eom) and queue the bookkeeping of each
        PART (envelope, decision, milter action, quarantine id): reports, journal, metrics, summary lines."""
        jobs = []
        delay, now, spool_size = time.monotonic() - self.started, datetime.now(UTC), spool.size
        for part, decision, action, quarantine_id in parts:
            ctx = None
            if decision.report and (decision.verdict is not Verdict.VIRUS or action in ("quarantine", "hold")):
                try:
                    ctx = report.context(part, spool, results, decision, quarantine_id)  # reads the head: before the spool closes
                except Exception as exc:  # noqa: BLE001 - a report never changes the message's fate
                    LOG.error("admin report not sent: %s", exc)
            line = functools.partial(log.summary, part, results, decision, delay, milter=action, quarantine=quarantine_id)
            jobs.append((part, decision, action, quarantine_id, ctx, line))

        def bookkeeping() -> None:
            for failure in results.failures:
                LOG.warning("%s", failure.describe())
            for part, decision, action, quarantine_id, ctx, line in jobs:
                for warning in decision.warnings:
                    LOG.warning("%s", warning)
                sent = self.send_report(ctx) if ctx is not None else None
                self.account(journal.event("milter", part, results, decision, action, spool_size, delay, now, quarantine_id))
                LOG.info("%s", line(report=sent))

        summary = "; ".join(line(report="dropped" if ctx is not None else None) for *_, ctx, line in jobs)
        self.after_reply(bookkeeping, summary)

    def reply(self, action: str, decision: Decision, results: ScanResults, spool: Spool) -> int:
        """The milter actions and reply for ACTION (a quarantine entry is already stored)."""
        if action == "deliver":
            self.mark(decision, spool)
        elif action == "hold":
            self.mark(decision, spool)
            self.quarantine(f"mailfilter: {decision.verdict.value}")
        elif action == "quarantine":
            return Milter.DISCARD
        elif action == "reject":
            code = "554" if decision.verdict is Verdict.VIRUS else "550"
            self.setreply(code, "5.7.1", _reply_text(decision, results))
            return Milter.REJECT
        else:
            self.setreply(*TEMPFAIL_REPLY, _reply_text(decision, results))
            return Milter.TEMPFAIL
        return Milter.CONTINUE

    def after_reply(self, job: Callable[[], None], summary: str) -> None:
        """Queue JOB for the after-reply thread; when its queue is full, drop it (never wait) and say what was lost."""
        if not self.after.submit(job):
            dropped = self.after.dropped
            LOG.error("after-reply queue full (%d dropped so far): admin report, journal line and metrics dropped; %s", dropped, summary)

    def account(self, entry: dict[str, Any]) -> None:
        try:
            metrics.account(entry, self.config, LOG, self.tally)
        except Exception:
            LOG.exception("journal line or metrics not recorded")

    def mark(self, decision: Decision, spool: Spool) -> None:
        """Remove spoofed copies of our fields, then insert ours at the top, in order; tag the Subject."""
        for name, index in sorted(self.own_fields, key=lambda f: -f[1]):
            self.chgheader(name, index, "")
        for position, (name, value) in enumerate(decision.headers):
            self.addheader(name, message.header_value(value), position)
        edit = None
        if decision.subject_tag:
            edit = subjecttag.tag(subjecttag.raw_subject(spool.read(message.HEAD_LIMIT)), decision.subject_tag)
        if edit is not None:
            subject, previous = subjecttag.milter_values(edit)
            if previous is None:
                self.addheader("Subject", subject, -1)
            else:
                self.chgheader("Subject", 1, subject)
                self.addheader("X-Spam-Prev-Subject", previous, -1)

    def send_report(self, ctx: report.Context) -> str:
        try:
            return report.send(ctx, self.config, socket.gethostname(), datetime.now(UTC))
        except Exception as exc:  # noqa: BLE001 - a report never changes the message's fate
            LOG.error("admin report not sent: %s", exc)
            return "failed"


for _name in CALLBACKS:
    setattr(MailfilterMilter, _name, _boundary(getattr(MailfilterMilter, _name)))


def _address(raw: str | bytes) -> str:
    """`<a@b>` as libmilter gives it (bytes), or as a test harness does (str)."""
    text = (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw).strip()
    return text[1:-1] if text.startswith("<") and text.endswith(">") else text


def _reply_text(decision: Decision, results: ScanResults) -> str:
    if isinstance(results.virus, VirusReport) and results.virus.infected:
        text = "message rejected: virus found: " + ", ".join(results.virus.names)
    else:
        text = decision.dsn.text if decision.dsn else f"message {decision.action.value}"
    return message.printable(text, 400).replace("%", "%%")


# --- the daemon --------------------------------------------------------------------------------


class ServeError(Exception):
    """The milter could not start (bad socket, address in use...)."""


def _register(milter_module: Any) -> None:
    """pymilter's runmilter(), minus opening the socket and running: we do those ourselves."""
    m = milter_module
    m.set_connect_callback(Milter.connect_callback)
    m.set_envfrom_callback(lambda ctx, *b: ctx.getpriv().envfrom_bytes(*b))
    m.set_envrcpt_callback(lambda ctx, *b: ctx.getpriv().envrcpt_bytes(*b))
    m.set_header_callback(lambda ctx, f, v: ctx.getpriv().header_bytes(f, v))
    m.set_eoh_callback(lambda ctx: ctx.getpriv().eoh())
    m.set_body_callback(lambda ctx, chunk: ctx.getpriv().body(chunk))
    m.set_eom_callback(lambda ctx: ctx.getpriv().eom())
    m.set_abort_callback(lambda ctx: ctx.getpriv().abort())
    m.set_close_callback(Milter.close_callback)
    m.register(
        NAME,
        data=lambda ctx: ctx.getpriv().data(),
        unknown=lambda ctx, cmd: ctx.getpriv().unknown(cmd),
        negotiate=Milter.negotiate_callback,
    )


def nodelay_listeners() -> int:
    """TCP_NODELAY on libmilter's listening TCP socket(s), which Linux copies to every connection accepted from them.

    At end of message libmilter writes each header change and then the verdict as separate small writes;
    Postfix reads them without answering, so Nagle held every write after the first until Postfix's delayed
    ACK, some 40 ms per message over TCP (a unix socket has no Nagle). libmilter offers no hook for its
    sockets: they are found among the process's descriptors. Returns how many were set."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=int(name))
        except (OSError, ValueError):
            continue  # not a socket (or closed meanwhile)
        try:
            tcp = sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM
            if tcp and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                count += 1
        except OSError:
            pass
        finally:
            sock.detach()  # the descriptor stays libmilter's
    return count


def drop_privileges(spec: str, socket_path: str | None) -> None:
    """Become USER[:GROUP] (as pipe(8)'s user=): its uid, GROUP or its own group, and its other groups.
    The socket becomes theirs."""
    import grp
    import pwd

    user, _, group = spec.partition(":")
    try:
        entry = pwd.getpwnam(user)
        gid = grp.getgrnam(group).gr_gid if group else entry.pw_gid
    except KeyError:
        raise ServeError(f"[milter] user {spec!r}: no such user or group") from None
    if entry.pw_uid == 0 or gid == 0:
        raise ServeError(f"[milter] user {spec!r} is root: name an unprivileged user and group")
    if socket_path:
        os.chown(socket_path, entry.pw_uid, gid)
    os.setgroups(os.getgrouplist(user, gid))
    os.setgid(gid)
    os.setuid(entry.pw_uid)
    DAEMON_LOG.info("running as %s (uid %d, gid %d)", spec, entry.pw_uid, gid)


def serve(config: Config, socket_spec: str | None = None) -> int:
    """Run until SIGTERM/SIGINT; then let messages in flight finish (up to [milter] grace). Returns an exit status."""
    import milter as libmilter  # pymilter's C module

    if os.geteuid() == 0 and not config.milter.user:
        raise ServeError("refusing to run as root: set [milter] user (privileges are dropped once the socket is open)")
    pipeline.preload()  # before privileges are dropped
    spec = socket_spec or config.milter.socket
    # From here on SIGTERM/SIGINT/SIGHUP stay pending until libmilter's signal thread
    # (which inherits this mask) sigwait()s for them: a stop asked for while starting
    # is neither lost nor fatal.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    in_flight = InFlight()
    tally = metrics.Tally()
    _register(libmilter)
    path = spec[len("unix:") :] if spec.startswith("unix:") else None
    if path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        libmilter.setconn(spec)
        libmilter.opensocket(True)  # listening from here on: connections wait in the backlog
    except libmilter.error as exc:
        raise ServeError(f"cannot listen on {spec}: {exc}") from None
    if path:
        os.chmod(path, config.milter.socket_mode)
    else:
        nodelay_listeners()
    if os.geteuid() == 0:
        drop_privileges(config.milter.user, path)
    DAEMON_LOG.info("listening on %s", spec)
    if config.metrics.listen:
        try:
            metrics.serve(config.metrics.listen, tally, lambda: in_flight.count, metrics.held_at(config.quarantine))
        except OSError as exc:
            raise ServeError(f"cannot serve metrics on {config.metrics.listen}: {exc.strerror or exc}") from None
        DAEMON_LOG.info("metrics on http://%s/metrics", config.metrics.listen)
    # The scanners' threads, for every message: started as needed from libmilter's threads, so with
    # the signals above blocked. They outlive libmilter.main(): messages in flight finish with them.
    # So does the after-reply thread (started here, with the signals blocked too).
    runner = pipeline.Runner()
    after = AfterReply()
    Milter.factory = functools.partial(MailfilterMilter, Dependencies(config, in_flight, tally, after, runner))
    try:
        notify("READY=1")
        try:
            libmilter.main()  # returns after SIGTERM/SIGINT/SIGHUP (libmilter's signal thread)
        except libmilter.error as exc:  # libmilter's listener can end in failure while stopping
            DAEMON_LOG.warning("milter main loop ended: %s", exc)
        notify("STOPPING=1")
        deadline = time.monotonic() + config.milter.grace
        DAEMON_LOG.info("stopping: %d message(s) in flight", in_flight.count)
        if not in_flight.wait_idle(config.milter.grace):
            DAEMON_LOG.warning("stopping with %d message(s) still in flight: Postfix applies milter_default_action", in_flight.count)
        if not after.close(deadline - time.monotonic()):
            DAEMON_LOG.warning("stopping with %d admin report(s) or journal line(s) not done within [milter] grace", after.waiting)
    finally:
        runner.close()
    return 0
