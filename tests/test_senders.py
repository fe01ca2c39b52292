"""[senders] lists: the three forms of entry, their files, re-reading them, and refusing broken ones."""

import logging
import os
import threading

import pytest

from mailfilter import senders
from mailfilter.config import SendersConfig
from mailfilter.log import LOGGER
from mailfilter.model import SenderHits

ENTRIES = ["Alerts@Monitoring.Example", "example.org", ".example.net"]


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        ("alerts@monitoring.example", "alerts@monitoring.example"),
        ("ALERTS@monitoring.EXAMPLE", "alerts@monitoring.example"),
        ("alerts@monitoring.example.", "alerts@monitoring.example"),  # the domain's trailing dot
        ("other@monitoring.example", None),  # an address entry is that address only
        ("alerts@sub.monitoring.example", None),
        ("x@example.org", "example.org"),
        ("Bob@Example.ORG", "example.org"),
        ("x@example.org.", "example.org"),
        ("x@sub.example.org", None),  # a domain is that domain only
        ("x@notexample.org", None),
        ("x@example.org.evil", None),
        ("x@sub.example.net", ".example.net"),  # a .domain: its subdomains, at any depth
        ("Bob@Sub.Deep.Example.NET", ".example.net"),
        ("x@sub.example.net.", ".example.net"),
        ("x@example.net", None),  # but not the domain itself
        ("x@badexample.net", None),
        ("", None),  # the null sender never matches
        ("example.org", None),  # not an address
        ("@example.org", None),
    ],
)
def test_the_three_forms_and_what_they_do_not_match(sender, expected):
    assert senders.SenderList(ENTRIES).matches(sender) == expected


def test_the_most_specific_subdomain_entry_is_the_one_named():
    assert senders.SenderList([".example.net", ".b.example.net"]).matches("x@a.b.example.net") == ".b.example.net"


@pytest.mark.parametrize(
    ("text", "entry"),
    [
        ("  Example.ORG  ", "example.org"),
        ("example.org.", "example.org"),
        (".Example.Org", ".example.org"),
        ("A.B@Example.org.", "a.b@example.org"),
        (".com", ".com"),
        ("münchen.de", "münchen.de"),
    ],
)
def test_entries_are_normalised(text, entry):
    assert senders.parse_entry(text) == entry


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "@example.org",
        "user@",
        "*.example.org",
        "*@example.org",
        "a b@example.org",
        "example..org",
        "..example.org",
        ".",
        "<a@b.org>",
        "a@b@",
    ],
)
def test_anything_else_is_an_error_naming_the_entry(text):
    with pytest.raises(ValueError, match=repr(text).replace("*", r"\*").replace(".", r"\.")):
        senders.parse_entry(text)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def warnings():
    handler, logger = Records(), logging.getLogger(LOGGER)
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


def _rewrite(path, text: str) -> None:
    """Give PATH new contents that its (mtime, size, inode) cannot hide: a new file renamed over it."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_a_list_file_with_comments_and_blank_lines(tmp_path, warnings):
    path = tmp_path / "allow"
    path.write_text("# trusted senders\n\nalerts@monitoring.example   # the monitoring\n  .Example.NET\n\t\n# example.org\n")
    found = senders.SenderList(["inline.example"], str(path))
    assert found.matches("alerts@monitoring.example") == "alerts@monitoring.example"
    assert found.matches("x@a.example.net") == ".example.net"
    assert found.matches("x@inline.example") == "inline.example"  # inline and file entries together
    assert found.matches("x@example.org") is None  # commented out
    assert len(found) == 3 and warnings == []
    assert senders.check_file(str(path)) is None


def test_a_changed_file_is_read_again_at_most_once_a_second(tmp_path, warnings):
    path, clock = tmp_path / "block", Clock()
    path.write_text("example.org\n")
    found = senders.SenderList((), str(path), clock=clock)
    _rewrite(path, "example.com\n")
    assert found.matches("x@example.org") == "example.org"  # not looked at again yet
    clock.now += 0.5
    assert found.matches("x@example.org") == "example.org"
    clock.now += 0.5
    assert found.matches("x@example.org") is None
    assert found.matches("x@example.com") == "example.com"
    path.write_text("example.com\nexample.edu\n")  # in place, same inode: the size tells
    clock.now += 1
    assert found.matches("x@example.edu") == "example.edu"
    assert warnings == []


def test_a_broken_file_keeps_the_last_good_list_with_one_warning_per_change(tmp_path, warnings):
    path, clock = tmp_path / "block", Clock()
    path.write_text("example.org\n")
    found = senders.SenderList(["inline.example"], str(path), clock=clock)
    _rewrite(path, "example.com\n*.example.biz\n")
    for _ in range(5):
        clock.now += 1
        assert found.matches("x@example.org") == "example.org"
        assert found.matches("x@example.com") is None  # nothing of the broken file is used
        assert found.matches("x@inline.example") == "inline.example"
    assert len(warnings) == 1
    assert str(path) in warnings[0] and "line 2" in warnings[0] and "*.example.biz" in warnings[0]
    assert "keeping its last good list (1 entries)" in warnings[0]
    assert "line 2" in senders.check_file(str(path))

    _rewrite(path, "example.org\nbroken entry\n")  # another change, still broken: one more warning
    clock.now += 1
    assert found.matches("x@example.org") == "example.org"
    assert len(warnings) == 2 and "'broken entry'" in warnings[1]

    path.unlink()  # gone: the last good list still
    clock.now += 1
    assert found.matches("x@example.org") == "example.org"
    clock.now += 1
    found.matches("x@example.org")
    assert len(warnings) == 3 and "missing" in warnings[2]

    _rewrite(path, "example.com\n")  # mended
    clock.now += 1
    assert found.matches("x@example.com") == "example.com" and found.matches("x@example.org") is None
    assert len(warnings) == 3


def test_a_file_missing_at_start_is_an_empty_list_and_a_warning(tmp_path, warnings):
    path, clock = tmp_path / "absent", Clock()
    found = senders.SenderList(["example.org"], str(path), clock=clock)
    assert found.matches("x@example.org") == "example.org" and found.matches("x@example.com") is None
    assert len(warnings) == 1 and str(path) in warnings[0] and "missing" in warnings[0]
    clock.now += 5
    found.matches("x@example.com")
    assert len(warnings) == 1  # no change, no new warning
    path.write_text("example.com\n")  # it appears
    clock.now += 1
    assert found.matches("x@example.com") == "example.com"
    assert "missing" in senders.check_file(str(tmp_path / "absent-too"))


def test_a_symbolic_link_is_refused(tmp_path, warnings):
    target, link = tmp_path / "real", tmp_path / "link"
    target.write_text("example.org\n")
    link.symlink_to(target)
    found = senders.SenderList((), str(link))
    assert found.matches("x@example.org") is None
    assert len(warnings) == 1 and "symbolic link" in warnings[0]
    assert "symbolic link" in senders.check_file(str(link))


@pytest.mark.parametrize("kind", ["directory", "fifo", "undecodable"])
def test_what_is_not_a_readable_text_file_is_refused(tmp_path, warnings, kind):
    path = tmp_path / "list"
    if kind == "directory":
        path.mkdir()
        why = "not a regular file"
    elif kind == "fifo":
        os.mkfifo(path)  # opened without blocking, and refused
        why = "not a regular file"
    else:
        path.write_bytes(b"example.org\nexample.\xff\n")
        why = "line 2: not UTF-8"
    assert senders.SenderList((), str(path)).matches("x@example.org") is None
    assert len(warnings) == 1 and why in warnings[0]
    assert why in senders.check_file(str(path))


def test_check_file_of_no_file_is_none():
    assert senders.check_file("") is None


def test_a_hundred_thousand_entries_are_sets_not_a_loop(tmp_path):
    path = tmp_path / "block"
    path.write_text("".join(f"user{i}@host{i}.example\nd{i}.example\n.s{i}.example\n" for i in range(33_334)))
    found = senders.SenderList((), str(path))
    assert len(found) == 100_002
    for i in range(0, 33_334, 97):
        assert found.matches(f"USER{i}@host{i}.example") == f"user{i}@host{i}.example"
        assert found.matches(f"x@d{i}.example") == f"d{i}.example"
        assert found.matches(f"x@a.b.s{i}.example") == f".s{i}.example"
        assert found.matches(f"x@s{i}.example") is None
        assert found.matches(f"x@sub.d{i}.example") is None


def test_many_threads_look_up_while_the_file_changes(tmp_path, warnings):
    path, clock = tmp_path / "allow", Clock()
    path.write_text("example.org\n")
    found = senders.SenderList(["inline.example"], str(path), clock=clock)
    errors: list[BaseException] = []

    def lookups() -> None:
        try:
            for _ in range(2000):
                assert found.matches("x@inline.example") == "inline.example"
                assert found.matches("x@example.org") in ("example.org", None)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=lookups) for _ in range(8)]
    for t in threads:
        t.start()
    for i in range(50):
        _rewrite(path, "example.org\n" if i % 2 else f"example{i}.com\n")
        clock.now += 1
    for t in threads:
        t.join()
    assert errors == [] and warnings == []


def test_the_cache_keeps_one_list_per_config(tmp_path, warnings):
    path = tmp_path / "block"
    path.write_text(".example.biz\n")
    cache = senders.Cache()
    config = SendersConfig(allow=["friend@example.biz"], block_file=str(path))
    assert cache.hits("friend@mail.example.biz", config) == SenderHits(None, ".example.biz")
    assert cache.hits("friend@example.biz", config) == SenderHits("friend@example.biz", None)
    assert cache.hits("", config) == SenderHits()
    first = cache.lists(config)
    assert cache.lists(SendersConfig(allow=["friend@example.biz"], block_file=str(path))) == first  # same lists, kept
    assert cache.lists(SendersConfig(block_file=str(path)))[1] is first[1]
    assert cache.hits("friend@example.biz", SendersConfig()) == SenderHits()
