"""The SPAMC protocol as scanners/spamd.py speaks it (SYMBOLS): the request's bytes and every kind of answer."""

from __future__ import annotations

import re

import pytest

from mailfilter.model import Cause, ScanFailure, SpamReport
from mailfilter.scanners.spamd import BadAnswer, _report, _request


def test_the_request_is_symbols_with_the_length_of_the_lf_message():
    request = _request(b"Subject: x\r\n\r\nbody\r\nbare\rcr\n")
    assert request == b"SYMBOLS SPAMC/1.5\r\nContent-length: 25\r\n\r\nSubject: x\n\nbody\nbare\rcr\n"


@pytest.mark.parametrize(
    "answer,report",
    [
        (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 28\r\nSpam: False ; 1.3 / 5.0\r\n\r\nHTML_MESSAGE,RCVD_ILLEGAL_IP",
         SpamReport(1.3, 5.0, ("HTML_MESSAGE", "RCVD_ILLEGAL_IP"))),
        (b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1000.0 / 5.0\r\nContent-length: 5\r\n\r\nGTUBE", SpamReport(1000.0, 5.0, ("GTUBE",))),
        (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\nspam: no ; -2.5 / 5.0\r\n\r\n", SpamReport(-2.5, 5.0, ())),
        (b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; 0.0 / 5.0\r\n\r\nA,B\r\n", SpamReport(0.0, 5.0, ("A", "B"))),  # no length: to the end
    ],
)  # fmt: skip
def test_answers_are_read(answer, report):
    assert _report(answer) == report


@pytest.mark.parametrize(
    "answer,says",
    [
        (b"", "without an answer"),
        (b"garbage that is no SPAMD answer\r\n", "not a spamd answer"),
        (b"SPAMD/1.1 76 Bad header line: (EOF)\r\n\r\n", "spamd answered 76 Bad header line: (EOF)"),
        (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 28\r\nSpam: False ; 1.3 / 5.0", "ends inside its headers"),
        (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 99\r\nSpam: False ; 1.3 / 5.0\r\n\r\nA", "cut short"),
        (b"SPAMD/1.1 0 EX_OK\r\nSpam: maybe\r\n\r\n", "Spam header cannot be read"),
        (b"SPAMD/1.1 0 EX_OK\r\nno colon here\r\n\r\n", "without a colon"),
    ],
)
def test_unreadable_answers_and_error_statuses_are_errors(answer, says):
    with pytest.raises(BadAnswer, match=re.escape(says)):
        _report(answer)


def test_an_answer_without_a_spam_header_is_a_failure_never_a_score():
    assert _report(b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\n\r\n") == ScanFailure("spamd", Cause.ERROR, "answer without a Spam header")
