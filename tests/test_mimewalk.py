"""Our own MIME walk (mailfilter/mimewalk.py) and what decides whether it runs (deepscan, spamd.truncate): pure, no daemons."""

from __future__ import annotations

import base64
import quopri
import random

import pytest

from mailfilter import deepscan, mimewalk
from mailfilter.model import VirusReport
from mailfilter.scanners import clamd, spamd
from mailfilter.spool import Spool

import hostile
from corpus import eicar


def contents(tree: mimewalk.Tree) -> list[bytes]:
    return [b"".join(mimewalk.decode(leaf)) for leaf in tree.leaves]


def found(tree: mimewalk.Tree) -> list[str]:
    return [leaf.path for leaf, data in zip(tree.leaves, contents(tree), strict=True) if eicar() in data]


@pytest.mark.parametrize("depth", [1, 5, 17, 18, 30, 60, 64])
def test_eicar_is_found_at_the_bottom_of_multiparts(depth):
    tree = mimewalk.walk(hostile._multipart_eicar(depth))
    assert tree.complete and tree.depth == depth
    assert found(tree) == [".".join(["1"] * depth)]


@pytest.mark.parametrize("make", [hostile._rfc822_body_eicar, hostile._alternating_eicar, hostile._forwarded_eicar])
def test_eicar_is_found_under_messages(make):
    tree = mimewalk.walk(make(40))
    assert tree.complete and len(found(tree)) == 1


def test_depth_limit():
    tree = mimewalk.walk(hostile._multipart_eicar(65))
    assert tree.problems == ("MIME parts nested deeper than 64 levels",) and found(tree) == []
    shallow = mimewalk.walk(hostile._multipart_eicar(10), mimewalk.Limits(depth=9))
    assert shallow.problems == ("MIME parts nested deeper than 9 levels",)


def test_parts_limit():
    raw = hostile._forwarded_eicar(50)  # 150 parts
    assert mimewalk.walk(raw).complete
    tree = mimewalk.walk(raw, mimewalk.Limits(parts=100))
    assert tree.problems == ("more than 100 MIME parts",) and tree.parts == 101


def test_bytes_limit():
    raw = hostile._attachment(bytes(10_000), "zeros.bin")
    assert mimewalk.walk(raw, mimewalk.Limits(bytes=20_000)).complete
    tree = mimewalk.walk(raw, mimewalk.Limits(bytes=5_000))
    assert tree.problems == ("MIME parts larger than 5000 bytes in all",)
    assert sum(leaf.size for leaf in tree.leaves) <= 5_000


def test_time_limit():
    ticks = iter(range(1000))
    tree = mimewalk.walk(hostile._multipart_eicar(30), mimewalk.Limits(seconds=10), clock=lambda: float(next(ticks)))
    assert tree.problems == ("MIME walk stopped after 10 s",) and found(tree) == []


def test_transfer_encodings_are_decoded():
    data = eicar() + bytes(c for c in range(256) if c not in b"\r\n")  # a line end in quoted-printable is the message's
    parts = {
        "base64": base64.encodebytes(data),
        "quoted-printable": quopri.encodestring(data),
        "x-uuencode": hostile._uuencode(data),
        "binary": data,
    }
    for encoding, body in parts.items():
        head = b"MIME-Version: 1.0\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: " + encoding.encode() + b"\n"
        raw = hostile._mail(b"x", head, body)
        assert contents(mimewalk.walk(raw))[0].rstrip(b"\n") == data, encoding
        crlf = mimewalk.walk(raw.replace(b"\n", b"\r\n"))
        if encoding != "binary":
            assert contents(crlf)[0] == data, f"{encoding} with CRLF"


def test_lenient_base64_and_uuencode_in_text():
    junk = b"!!".join(hostile._wrap64(eicar(), 4).split(b"\n"))[:-1]  # junk between groups, and a broken tail
    raw = hostile._mail(b"x", b"Content-Transfer-Encoding: base64\n", junk)
    assert eicar()[:60] in contents(mimewalk.walk(raw))[0]
    text = hostile._mail(b"uu", b"", b"Hello,\n\n" + hostile._uuencode(eicar()) + b"\nbye\n")
    tree = mimewalk.walk(text)
    assert [leaf.content_type for leaf in tree.leaves] == ["text/plain", "text/plain, uuencoded"]
    assert [eicar() in data for data in contents(tree)] == [False, True]


def test_broken_boundaries_still_give_the_parts():
    for broken in (
        hostile._attachment(eicar(), "e.com").replace(b"--b1--\n", b""),  # never closed
        hostile._attachment(eicar(), "e.com").replace(b'; boundary="b1"', b""),  # no boundary parameter
        hostile._attachment(eicar(), "e.com").replace(b'boundary="b1"', b'boundary="zz"'),  # the wrong one
    ):
        assert found(mimewalk.walk(broken)) == ["2"]


def test_ordinary_mail_is_one_level_deep():
    tree = mimewalk.walk(hostile._attachment(b"report", "report.pdf"))
    assert (tree.depth, tree.parts, [leaf.path for leaf in tree.leaves]) == (1, 3, ["1", "2"])
    assert tree.leaves[1].where() == "part 2 (application/octet-stream)"


def test_hostile_input_never_raises_and_stays_bounded():
    rng = random.Random(6)
    inputs = [case.raw for case in hostile.cases() if not case.name.startswith(("archive-", "eicar-after"))]
    inputs += [rng.randbytes(rng.randrange(1, 3000)) for _ in range(300)]
    inputs += [b"--", b"\n", b"\r\n\r\n", b"Content-Type: multipart/mixed; boundary=\n\n--\n--\n", b"begin 644 x\n" + b"\xff" * 100]
    limits = mimewalk.Limits(depth=20, parts=200, bytes=1 << 20, seconds=5)
    for data in inputs:
        tree = mimewalk.walk(data, limits)
        assert tree.depth <= limits.depth and tree.parts <= limits.parts + 1
        assert sum(leaf.size for leaf in tree.leaves) <= limits.bytes + len(data)  # uuencoded files are leaves inside leaves
        for leaf in tree.leaves:
            assert 0 <= leaf.start <= leaf.end <= len(leaf.source)
            assert sum(len(chunk) for chunk in mimewalk.decode(leaf)) <= leaf.size
            assert leaf.where().isprintable()


def test_a_walk_that_fails_is_a_problem_not_a_crash():
    tree = mimewalk.walk(None)  # type: ignore[arg-type]
    assert tree.leaves == () and tree.problems == ("MIME structure not readable (TypeError)",)


def test_which_messages_are_walked():
    def deep(raw: bytes) -> bool:
        with Spool.of(raw) as spool:
            return deepscan.may_nest_deeper(spool, deepscan.REACH)

    assert not deep(hostile._attachment(b"report", "report.pdf"))
    assert not deep(hostile._multipart_eicar(4))
    assert deep(hostile._multipart_eicar(5))
    assert deep(hostile._multipart_eicar(5).replace(b"Content-Type: multipart", b"CONTENT-TYPE:\n MULTIPART"))
    # Counted across the spool's 64 KB chunks, whatever falls on their border.
    for pad in range(65_470, 65_536, 7):
        assert deep(b"x" * pad + hostile._multipart_eicar(5)[len(hostile.HEAD) :])


def test_limit_alerts_are_not_viruses():
    alert = "Heuristics.Limits.Exceeded.MaxRecursion"
    assert clamd.classify(VirusReport((alert,), code=1)) == VirusReport(unscannable=(f"clamd: {alert}",))
    both = clamd.classify(VirusReport(("Eicar-Test-Signature", alert), code=1))
    assert both.names == ("Eicar-Test-Signature",) and both.unscannable == (f"clamd: {alert}",) and both.code == 1
    assert clamd.interpret({"stream": ("FOUND", alert)}, f"stream: {alert} FOUND") == VirusReport(unscannable=(f"clamd: {alert}",))


@pytest.mark.parametrize(
    ("head", "cut"),
    [
        (b"a\nb\nc", b"a\nb\n"),  # at the last line end
        (b"no line end at all", b"no line end at all"),
        (b"x" * 60 + b"\n" + b"y" * 10 + b"\n--b1\nContent-Type: text/plain\n\nhal", b"x" * 60 + b"\n" + b"y" * 10 + b"\n"),  # a part
        (b"\n--b1\n" + b"z" * 100 + b"\nmore", b"\n--b1\n" + b"z" * 100 + b"\n"),  # a delimiter too early to cut at
    ],
)
def test_spamd_copy_is_cut_at_a_line_end_or_a_part(head, cut):
    assert spamd.truncate(head) == cut
