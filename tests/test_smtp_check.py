"""`mailfilter check`'s lines for the smtp door (commands/smtpcheck.py), against fake SMTP servers."""

from __future__ import annotations

import pytest
from smtpdoor import Behaviour, FakeSmtpd, free_port

from mailfilter import config as configmod
from mailfilter.commands.smtpcheck import smtp_lines, transport_lines


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


def postfix_config(tmp_path, content_filter: str, maxproc: str, command: str = "smtp"):
    (tmp_path / "main.cf").write_text(f"compatibility_level = 3.6\ncontent_filter = {content_filter}\n")
    (tmp_path / "master.cf").write_text(f"smtp-mailfilter unix - - n - {maxproc} {command}\n  -o {command}_send_xforward_command=yes\n")
    return {"MAIL_CONFIG": str(tmp_path)}


@pytest.mark.parametrize(
    ("content_filter", "maxproc", "expected"),
    [
        ("smtp-mailfilter:[127.0.0.1]:10027", "4", "OK    smtp wiring: content_filter = smtp-mailfilter:[127.0.0.1]:10027, smtp-"),
        ("smtp-mailfilter:[127.0.0.1]:10027", "10", "WARN  smtp wiring: smtp-mailfilter runs up to 10 at once (10 in master.cf), [smtp]"),
        ("smtp-mailfilter:[127.0.0.1]:10027", "-", "WARN  smtp wiring: smtp-mailfilter runs up to 100 at once (- in master.cf)"),
        ("smtp-mailfilter:[127.0.0.1]:10024", "4", "WARN  smtp wiring: content_filter = smtp-mailfilter:[127.0.0.1]:10024 does not reach"),
        ("scan:[127.0.0.1]:10027", "4", "WARN  smtp wiring: content_filter names scan, which master.cf lacks"),
    ],
)
def test_the_wiring_is_compared_with_smtp_section(tmp_path, content_filter, maxproc, expected):
    environ = postfix_config(tmp_path, content_filter, maxproc)
    [line] = [line.render() for line in transport_lines(configmod.from_dict({}), environ)]
    assert line.startswith(expected), line


def test_no_postfix_config_no_wiring_line(tmp_path):
    assert list(transport_lines(configmod.from_dict({}), {"MAIL_CONFIG": str(tmp_path / "none")})) == []


@pytest.mark.parametrize(("command", "protocol", "expected"), [("lmtp", "smtp", "WARN"), ("smtp", "lmtp", "WARN"), ("lmtp", "lmtp", "OK")])
def test_the_transports_client_must_speak_the_doors_protocol(tmp_path, command, protocol, expected):
    environ = postfix_config(tmp_path, "smtp-mailfilter:[127.0.0.1]:10027", "4", command)
    [line] = [line.render() for line in transport_lines(configmod.from_dict({"smtp": {"protocol": protocol}}), environ)]
    assert line.startswith(f"{expected:<6}smtp wiring: "), line
    if expected == "WARN":
        assert f"smtp-mailfilter runs {command}(8), [smtp] protocol is {protocol}" in line, line
