"""`mailfilter web adduser|deluser` and `mailfilter digest`: the users file, the digests, their release links."""

from __future__ import annotations

import json
import re
import warnings
from email import message_from_bytes, policy

import pytest
from click.testing import CliRunner
from test_web_http import csrf, hold, message

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from starlette.testclient import TestClient

from mailfilter import config as configmod
from mailfilter.cli import cli
from mailfilter.web import app as webapp
from mailfilter.web import users


@pytest.fixture
def setup(make_config, tmp_path):
    def make(public_url: str = "https://mail.example.net/"):
        path = make_config(
            web={"users_file": str(tmp_path / "users"), "secret_file": str(tmp_path / "state" / "web-secret"), "public_url": public_url}
        )
        return path, configmod.load(path)

    return make


def run(path: str, *args: str, stdin: str = "") -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--config", path, *args], input=stdin)
    return result.exit_code, result.output


def test_adduser_reads_the_password_from_stdin_and_deluser_removes_the_user(setup):
    path, config = setup()
    owner = run_owner(config)
    assert run(path, "web", "adduser", "admin", stdin="correct horse\n") == (0, f"admin: added in {config.web.users_file}{owner}")
    assert users.verify(config.web.users_file, "admin", "correct horse") and not users.verify(config.web.users_file, "admin", "wrong one")
    with open(config.web.users_file) as fh:
        assert fh.read().startswith("admin:$argon2id$")
    code, out = run(path, "web", "adduser", "admin", stdin="battery staple\n")
    assert code == 0 and "password changed" in out and users.verify(config.web.users_file, "admin", "battery staple")
    code, out = run(path, "web", "adduser", "bob", stdin="short\n")
    assert code == 1 and "at least 8 characters" in out and "bob" not in users.read(config.web.users_file)
    code, out = run(path, "web", "adduser", "bad name", stdin="correct horse\n")
    assert code == 1 and "a user name is" in out
    assert run(path, "web", "deluser", "admin")[0] == 0 and users.read(config.web.users_file) == {}
    code, out = run(path, "web", "deluser", "admin")
    assert code == 1 and "no such user" in out


def run_owner(config) -> str:
    """What adduser adds when run as root: the users file goes to the quarantine's owner (here: its creator)."""
    import os

    if os.geteuid() != 0:
        return "\n"
    os.makedirs(config.quarantine.dir, exist_ok=True)
    return f" (owner uid {os.stat(config.quarantine.dir).st_uid}, as {config.quarantine.dir})\n"


def digest_json(path: str) -> list[dict]:
    code, out = run(path, "digest", "--json")
    assert code == 0, out
    return [json.loads(line) for line in out.splitlines()]


def test_digest_json_lists_each_recipients_entries_with_links_for_spam_only(setup, sendmail):
    path, config = setup()
    spam = hold(config.quarantine.dir, message("cheap pills"))
    virus = hold(config.quarantine.dir, message("invoice"), "virus", recipients=("bob@example.net",))
    by = {d["recipient"]: d["entries"] for d in digest_json(path)}
    assert sorted(by) == ["bob@example.net", "carol@example.net"]
    bob = {e["id"]: e for e in by["bob@example.net"]}  # oldest first; these two were held in the same second
    assert sorted(bob) == sorted([spam, virus]) and (bob[spam]["subject"], bob[virus]["subject"]) == ("cheap pills", "invoice")
    spam_link, virus_link = bob[spam]["link"], bob[virus]["link"]
    assert spam_link.startswith("https://mail.example.net/r/" + spam + ".") and virus_link is None
    assert not sendmail.calls and digest_json(path) != []  # --json sends nothing and keeps the state
    # The link works on the console, for bob only, once.
    client = TestClient(webapp.create(config, secure=False), base_url="http://127.0.0.1", follow_redirects=False)
    local = spam_link.replace("https://mail.example.net", "")
    page = client.get(local)
    assert page.status_code == 200 and "Release it to me" in page.text
    assert client.post(local, data={"csrf": csrf(page.text)}).status_code == 200
    [(argv, _data)] = sendmail.calls
    assert argv[-3:] == ["spammer@example.org", "--", "bob@example.net"]
    assert client.post(local, data={"csrf": csrf(page.text)}).status_code == 410 and len(sendmail.calls) == 1
    # Released to bob: his next digest no longer lists it; carol's still does.
    by = {d["recipient"]: [e["id"] for e in d["entries"]] for d in digest_json(path)}
    assert by == {"bob@example.net": [virus], "carol@example.net": [spam]}


def test_digest_mails_each_recipient_once_then_only_what_is_new(setup, sendmail):
    path, config = setup()
    spam = hold(config.quarantine.dir, message("<b>cheap</b> pills"))
    code, out = run(path, "digest", "--dry-run")
    assert code == 0 and "bob@example.net: 1 entry, 1 with a link" in out and not sendmail.calls
    code, out = run(path, "digest")
    assert code == 0 and out.count("digest sent, 1 entry") == 2, out
    sent = {argv[-1]: (argv, data) for argv, data in sendmail.calls}
    assert sorted(sent) == ["bob@example.net", "carol@example.net"]
    argv, data = sent["carol@example.net"]
    assert argv[-5:] == ["-G", "-i", "-f", "mailfilter@example.net", "--", "carol@example.net"][-5:] and "-G" in argv and "-i" in argv
    mail = message_from_bytes(data, policy=policy.default)
    assert mail["To"] == "carol@example.net" and mail["Auto-Submitted"] == "auto-generated"
    text = mail.get_content()
    assert "<b>cheap</b> pills" in text and re.search(r"https://mail\.example\.net/r/" + spam + r"\.\d+\.\S+", text)
    assert run(path, "digest") == (0, "") and len(sendmail.calls) == 2  # nothing new: nothing sent
    newer = hold(config.quarantine.dir, message("second"), recipients=("carol@example.net",))
    assert run(path, "digest")[0] == 0 and len(sendmail.calls) == 3
    assert newer in sendmail.calls[-1][1].decode() and spam not in sendmail.calls[-1][1].decode()


def test_a_failed_digest_is_sent_again_next_time_and_no_public_url_means_no_links(make_config, tmp_path, sendmail):
    web = {"users_file": str(tmp_path / "users"), "secret_file": str(tmp_path / "state" / "web-secret")}
    path = make_config(web=web, delivery={"sendmail": sendmail.argv("--exit", "75")})
    hold(configmod.load(path).quarantine.dir, message("spam"), recipients=("bob@example.net",))
    code, out = run(path, "digest")
    assert code == 1 and "bob@example.net: digest not sent" in out
    path = make_config(web=web)  # sendmail works again
    code, out = run(path, "digest")
    assert code == 0 and "bob@example.net: digest sent, 1 entry" in out
    text = sendmail.calls[-1][1].decode()
    assert "Subject: spam" in text and "/r/" not in text and "cannot be released by link" in text
