"""`mailfilter check`'s lines for the smtp door (commands/smtpcheck.py), against fake SMTP servers."""

from __future__ import annotations

from smtpdoor import Behaviour, FakeSmtpd, free_port

from mailfilter import config as configmod
from mailfilter.commands.smtpcheck import smtp_lines


def lines(**smtp) -> list[str]:
    return [line.render() for line in smtp_lines(configmod.from_dict({"smtp": smtp} if smtp else {}))]


def test_not_in_use_prints_nothing():
    assert lines() == [] or lines()[0].startswith("OK    smtp door")  # a door of the host's own may answer on 10027


def test_door_and_reinjection_answering_with_xforward_are_ok():
    with FakeSmtpd() as door, FakeSmtpd() as smtpd:
        assert lines(listen=door.address, reinject=smtpd.address) == [
            f"OK    smtp door: answers on {door.address}",
            f"OK    smtp reinject: {smtpd.address} answers and offers XFORWARD",
        ]


def test_a_door_without_its_reinjection_is_a_fail():
    with FakeSmtpd() as door:
        [_, reinject] = lines(listen=door.address, reinject=f"127.0.0.1:{free_port()}")
    assert reinject.startswith("FAIL  smtp reinject: nothing answers on 127.0.0.1:") and "every message would be deferred" in reinject


def test_nothing_listening_is_a_warning_and_xforward_missing_is_named():
    with FakeSmtpd(Behaviour(xforward=False)) as smtpd:
        [door, reinject] = lines(listen=f"127.0.0.1:{free_port()}", reinject=smtpd.address)
    assert door.startswith("WARN  smtp door: nothing answers on 127.0.0.1:") and "start `mailfilter smtp`" in door
    assert reinject.startswith("WARN  smtp reinject:") and "smtpd_authorized_xforward_hosts=127.0.0.0/8" in reinject
