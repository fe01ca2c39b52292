"""`mailfilter check`'s lines for the after-queue SMTP door: its listener and the reinjection port.

Both are real SMTP round trips (greeting, EHLO, QUIT), nothing is sent. The door is optional (one of
the wirings): with [smtp] left at its defaults and nothing answering on [smtp] listen, it is taken as not
in use and no line is printed; with [smtp] set, nothing answering is a WARN. A door that answers while
its reinjecting smtpd does not is a FAIL (it would defer every message).
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator

from ..config import Config, SmtpConfig
from ..doors.smtpreinject import split_address
from .check import Line, Status

TIMEOUT = 5.0
ONLY = "(only matters with the smtp wiring)"


def probe(address: str) -> tuple[str | None, smtplib.SMTP | None]:
    """(None, client after EHLO) when ADDRESS answers SMTP, else (why not, None)."""
    try:
        host, port = split_address(address)
        client = smtplib.SMTP(timeout=TIMEOUT)
        code, text = client.connect(host, port)
        if code != 220:
            client.close()
            return f"greets with {code} {text.decode('utf-8', 'replace')}", None
        code, text = client.ehlo("mailfilter-check.localhost")
        if code != 250:
            client.close()
            return f"refuses EHLO: {code} {text.decode('utf-8', 'replace')}", None
    except (OSError, ValueError, smtplib.SMTPException) as exc:
        return str(exc) or type(exc).__name__, None
    return None, client


def _quit(client: smtplib.SMTP) -> None:
    try:
        client.quit()
    except (OSError, smtplib.SMTPException):
        client.close()


def smtp_lines(config: Config) -> Iterator[Line]:
    listen, reinject = config.smtp.listen, config.smtp.reinject
    problem, door = probe(listen) if listen else ("[smtp] listen is ''", None)
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
