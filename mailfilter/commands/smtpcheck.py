"""`mailfilter check`'s lines for the after-queue SMTP door: its listener and the reinjection port.

Both are real SMTP round trips (greeting, EHLO, QUIT), nothing is sent. The door is optional (one of
the wirings): with [smtp] left at its defaults and nothing answering on [smtp] listen, it is taken as not
in use and no line is printed; with [smtp] set, nothing answering is a WARN. A door that answers while
its reinjecting smtpd does not is a FAIL (it would defer every message).
"""

from __future__ import annotations

import smtplib
import subprocess  # nosec B404
from collections.abc import Iterator, Mapping

from ..config import Config, SmtpConfig
from ..doors.smtpreinject import split_address
from .check import POSTCONF, Line, Status

TIMEOUT = 5.0
ONLY = "(only matters with the smtp wiring)"


def probe(address: str, lmtp: bool = False) -> tuple[str | None, smtplib.SMTP | None]:
    """(None, client after EHLO, or LHLO with LMTP) when ADDRESS answers SMTP (LMTP), else (why not, None)."""
    try:
        host, port = split_address(address)
        client = smtplib.LMTP(timeout=TIMEOUT) if lmtp else smtplib.SMTP(timeout=TIMEOUT)
        code, text = client.connect(host, port)
        if code != 220:
            client.close()
            return f"greets with {code} {text.decode('utf-8', 'replace')}", None
        code, text = client.ehlo("mailfilter-check.localhost")
        if code != 250:
            client.close()
            return f"refuses {'LHLO' if lmtp else 'EHLO'}: {code} {text.decode('utf-8', 'replace')}", None
    except (OSError, ValueError, smtplib.SMTPException) as exc:
        return str(exc) or type(exc).__name__, None
    return None, client


def _quit(client: smtplib.SMTP) -> None:
    try:
        client.quit()
    except (OSError, smtplib.SMTPException):
        client.close()


def _postconf(environ: Mapping[str, str], command: str, *args: str) -> str | None:
    """What `postconf [-c $MAIL_CONFIG] ARGS` prints, or None when it cannot tell (no Postfix config here)."""
    where = ["-c", environ["MAIL_CONFIG"]] if environ.get("MAIL_CONFIG") else []
    try:
        # argv: the fixed postconf path, an optional -c MAIL_CONFIG and fixed arguments. No shell.
        proc = subprocess.run([command, *where, *args], capture_output=True, text=True, timeout=30, check=False)  # noqa: S603  # nosec B603
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def transport_lines(config: Config, environ: Mapping[str, str], command: str = POSTCONF) -> Iterator[Line]:
    """main.cf's content_filter against [smtp] listen, and its transport's process limit against [smtp] max_clients."""
    content_filter = _postconf(environ, command, "-hx", "content_filter")
    if not content_filter:
        return  # not read from here, or set per service with -o (master.cf.example C sets it in main.cf)
    transport, _, nexthop = content_filter.partition(":")
    port = config.smtp.listen.rpartition(":")[2]
    if not nexthop.endswith(f":{port}"):
        fix = f"content_filter = {transport}:[127.0.0.1]:{port} (or set [smtp] listen to where it sends)"
        yield Line(Status.WARN, "smtp wiring", f"content_filter = {content_filter} does not reach [smtp] listen {config.smtp.listen}", fix)
        return
    service = _postconf(environ, command, "-M", f"{transport}/unix")
    fields = (service or "").split()
    if len(fields) < 8:
        yield Line(Status.WARN, "smtp wiring", f"content_filter names {transport}, which master.cf lacks", "add it (master.cf.example C)")
        return
    maxproc, command = fields[6], fields[7]
    if command != config.smtp.protocol:
        fix = f"make them agree: '{config.smtp.protocol}' as {transport}'s command, or [smtp] protocol = \"{command}\""
        yield Line(Status.WARN, "smtp wiring", f"{transport} runs {command}(8), [smtp] protocol is {config.smtp.protocol}", fix)
        return
    limit = int(maxproc) if maxproc.isdigit() else int(_postconf(environ, command, "-hx", "default_process_limit") or 100)
    if limit > config.smtp.max_clients:
        text = f"{transport} runs up to {limit} at once ({maxproc} in master.cf), [smtp] max_clients is {config.smtp.max_clients}"
        fix = f"make them equal: maxproc {config.smtp.max_clients} in master.cf, or [smtp] max_clients = {limit}"
        yield Line(Status.WARN, "smtp wiring", f"{text}: sessions beyond it are told 421 and their mail waits", fix)
        return
    yield Line(Status.OK, "smtp wiring", f"content_filter = {content_filter}, {transport} maxproc {limit} <= [smtp] max_clients")


def smtp_lines(config: Config, environ: Mapping[str, str] | None = None, command: str = POSTCONF) -> Iterator[Line]:
    listen, reinject = config.smtp.listen, config.smtp.reinject
    problem, door = probe(listen, config.smtp.protocol == "lmtp") if listen else ("[smtp] listen is ''", None)
    if door is None and config.smtp == SmtpConfig():
        return  # not in use
    if door is None:
        yield Line(Status.WARN, "smtp door", f"nothing answers on {listen}: {problem} {ONLY}", "start `mailfilter smtp`")
    else:
        offered = door.has_extn("xforward")
        _quit(door)
        text = f"answers on {listen}" + ("" if offered else "; it does not offer XFORWARD (is it mailfilter?)")
        yield Line(Status.OK if offered else Status.WARN, "smtp door", text)
    problem, smtpd = probe(reinject) if reinject else ("[smtp] reinject is ''", None)
    if smtpd is None:
        fix = "add the 127.0.0.1:10028 smtpd of master.cf.example (C) and `postfix reload`; match [smtp] reinject"
        status = Status.WARN if door is None else Status.FAIL
        yield Line(status, "smtp reinject", f"nothing answers on {reinject}: {problem}; every message would be deferred {ONLY}", fix)
        return
    offered = smtpd.has_extn("xforward")
    _quit(smtpd)
    if not offered:
        fix = "add -o smtpd_authorized_xforward_hosts=127.0.0.0/8 to that smtpd"
        text = f"{reinject} answers but does not offer XFORWARD: its logs name 127.0.0.1, not the client"
        yield Line(Status.WARN, "smtp reinject", text, fix)
        return
    yield Line(Status.OK, "smtp reinject", f"{reinject} answers and offers XFORWARD")
    if environ is not None:
        yield from transport_lines(config, environ, command)
