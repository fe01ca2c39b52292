"""The console over HTTP (Starlette's test client on the real app): sessions, CSRF, headers, escaping, release, links."""

from __future__ import annotations

import json
import re
import warnings
from datetime import UTC, datetime

import pytest

with warnings.catch_warnings():  # starlette's test client names an anyio alias that newer anyio deprecates
    warnings.simplefilter("ignore", DeprecationWarning)
    from starlette.testclient import TestClient

from mailfilter import config as configmod
from mailfilter.actions import quarantine
from mailfilter.spool import Spool
from mailfilter.web import app as webapp
from mailfilter.web import links, users

HOSTILE_HTML = (
    b'<p onclick="x()">Hello <script>document.title="pwned"</script>'
    b'<img src="http://127.0.0.1:9/remote.png" onerror="document.title=1">'
    b'<span style="background:url(http://127.0.0.1:9/css.png)">css</span>'
    b"<style>body{background:url(http://127.0.0.1:9/style.png)}</style></p>"
)


def message(subject: str, html: bytes = HOSTILE_HTML, filename: str = "report.pdf") -> bytes:
    return (
        b"From: <spammer@example.org>\r\nTo: <bob@example.net>\r\nSubject: " + subject.encode() + b"\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nplain <b>text</b>\r\n"
        b"--b\r\nContent-Type: text/html\r\n\r\n" + html + b"\r\n"
        b'--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename="' + filename.encode() + b'"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n"
    )


def hold(folder: str, raw: bytes, reason: str = "spam", recipients=("bob@example.net", "carol@example.net")) -> str:
    meta = {"reason": reason, "verdict": reason, "virus_names": ["Eicar-Test-Signature"] if reason == "virus" else [],
            "spam_score": 12.5 if reason == "spam" else None, "sender": "spammer@example.org", "recipients": list(recipients),
            "subject": re.search(rb"Subject: (.*?)\r\n", raw).group(1).decode(), "headers": []}  # fmt: skip
    with Spool.of(raw) as spool:
        return quarantine.store(spool, meta, folder)


@pytest.fixture
def console(make_config, tmp_path):
    path = make_config(web={"users_file": str(tmp_path / "users"), "secret_file": str(tmp_path / "state" / "web-secret"),
                            "public_url": "https://mail.example.net/"})  # fmt: skip
    config = configmod.load(path)
    users.add(config.web.users_file, "admin", "correct horse")
    client = TestClient(webapp.create(config, secure=False), base_url="http://127.0.0.1", follow_redirects=False)
    return config, client


def csrf(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


PASSWORD = "correct horse"  # noqa: S105  (a test account)


def login(client, password=PASSWORD, user="admin"):
    form = client.get("/login")
    return client.post("/login", data={"username": user, "password": password, "csrf": csrf(form.text)})


@pytest.mark.parametrize("method,path", [("GET", "/"), ("GET", "/quarantine"), ("GET", "/quarantine/20261127T120000Z-0a1b2c3d4e"),
                                         ("POST", "/quarantine/20261127T120000Z-0a1b2c3d4e/release"),
                                         ("POST", "/quarantine/20261127T120000Z-0a1b2c3d4e/delete"), ("POST", "/logout")])  # fmt: skip
def test_every_admin_page_redirects_to_login_without_a_session(console, method, path):
    _config, client = console
    response = client.request(method, path)
    assert response.status_code in (302, 303) and response.headers["location"] == "/login"
    assert client.get("/login").status_code == 200


def test_login_sets_a_strict_httponly_cookie_and_headers_forbid_scripts(console):
    _config, client = console
    response = login(client)
    assert response.status_code == 303
    cookie = next(v for k, v in response.headers.multi_items() if k == "set-cookie" and v.startswith("mf_session="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
    csp = client.get("/").headers["content-security-policy"]
    for part in ("default-src 'none'", "style-src 'self'", "img-src 'self'", "form-action 'self'", "frame-ancestors 'none'"):
        assert part in csp
    assert "<script" not in client.get("/").text


def test_cookie_is_secure_unless_on_loopback(make_config, tmp_path):
    config = configmod.load(make_config(web={"users_file": str(tmp_path / "u"), "secret_file": str(tmp_path / "s")}))
    users.add(config.web.users_file, "admin", "correct horse")
    client = TestClient(webapp.create(config, secure=True), base_url="https://console.example.net", follow_redirects=False)
    assert "Secure" in login(client).headers["set-cookie"]


def test_secret_file_is_made_0600(console):
    config, _client = console
    import os

    assert os.stat(config.web.secret_file).st_mode & 0o777 == 0o600


def test_post_without_or_with_a_wrong_csrf_is_403(console):
    config, client = console
    qid = hold(config.quarantine.dir, message("x"))
    bad_login = client.post("/login", data={"username": "admin", "password": "correct horse", "csrf": "nope"})
    assert bad_login.status_code == 403
    login(client)
    for data in ({}, {"csrf": "wrong"}):
        assert client.post(f"/quarantine/{qid}/release", data=data).status_code == 403
        assert client.post(f"/quarantine/{qid}/delete", data=data).status_code == 403
    assert quarantine.FolderStore(config.quarantine.dir).get(qid).released == ()


def test_wrong_passwords_are_rate_limited_and_logged(console, caplog):
    _config, client = console
    assert [login(client, "wrong pass").status_code for _ in range(5)] == [401] * 5
    assert login(client).status_code == 429  # even the right password, for a while
    assert "login failed user='admin'" in caplog.text and "too many failures" in caplog.text


def test_hostile_subjects_and_names_render_escaped_and_html_is_sanitized(console):
    config, client = console
    qid = hold(config.quarantine.dir, message("<script>alert(1)</script>", filename="<img src=x onerror=alert(2)>.pdf"))
    login(client)
    listing = client.get("/quarantine").text
    assert "<script>alert(1)" not in listing and "&lt;script&gt;alert(1)&lt;/script&gt;" in listing
    page = client.get(f"/quarantine/{qid}").text
    assert "<script" not in page and "onerror" not in page.replace("onerror=alert(2)&gt;", "")
    assert "127.0.0.1:9" not in page and "url(" not in page and "onclick" not in page
    assert "plain &lt;b&gt;text&lt;/b&gt;" in page and "application/pdf" in page and "&lt;img src=x" in page


def test_release_delivers_and_is_audited_and_a_virus_needs_confirm(console, sendmail):
    config, client = console
    spam, virus = hold(config.quarantine.dir, message("spam")), hold(config.quarantine.dir, message("bad"), "virus")
    login(client)
    token = csrf(client.get(f"/quarantine/{spam}").text)
    assert client.post(f"/quarantine/{spam}/release", data={"csrf": token}).status_code == 303
    (argv, data), = sendmail.calls
    assert argv[-5:] == ["-f", "spammer@example.org", "--", "bob@example.net", "carol@example.net"] and "-G" in argv and "-i" in argv
    assert b"X-Mailfilter-Released: web:admin" in data
    assert "release" in client.get(f"/quarantine/{spam}").text and "admin" in client.get(f"/quarantine/{spam}").text
    assert client.post(f"/quarantine/{virus}/release", data={"csrf": token}).status_code == 409
    assert len(sendmail.calls) == 1
    assert client.post(f"/quarantine/{virus}/release", data={"csrf": token, "confirm": "yes"}).status_code == 303
    assert len(sendmail.calls) == 2
    assert client.post(f"/quarantine/{virus}/delete", data={"csrf": token}).status_code == 303
    with open(f"{config.report.state_dir}/web-audit.jsonl") as fh:
        lines = [json.loads(x) for x in fh]
    done = [(x["who"], x["action"], x["id"]) for x in lines]
    assert done == [("admin", "release", spam), ("admin", "release", virus), ("admin", "delete", virus)]


def link_for(config, qid, rcpt, expires=None):
    from mailfilter.web import secret

    key = secret.load(config.web.secret_file)
    return "/r/" + links.make(key, qid, rcpt, expires or int(datetime.now(UTC).timestamp()) + 3600)


def test_a_link_releases_to_its_recipient_once(console, sendmail):
    config, client = console
    qid = hold(config.quarantine.dir, message("spam"))
    path = link_for(config, qid, "bob@example.net")
    page = client.get(path)
    assert page.status_code == 200 and "Release it to me" in page.text and not sendmail.calls
    assert client.post(path, data={}).status_code == 403 and not sendmail.calls
    assert client.post(path, data={"csrf": csrf(page.text)}).status_code == 200
    (argv, _data), = sendmail.calls
    assert argv[-3:] == ["spammer@example.org", "--", "bob@example.net"]
    assert client.get(path).status_code == 410 and client.post(path, data={"csrf": csrf(page.text)}).status_code == 410
    assert len(sendmail.calls) == 1


def test_forged_altered_expired_and_foreign_links_are_refused_and_deliver_nothing(console, sendmail):
    config, client = console
    qid, virus = hold(config.quarantine.dir, message("spam")), hold(config.quarantine.dir, message("v"), "virus")
    good = link_for(config, qid, "bob@example.net")
    qpart, expires, rcpt, mac = good[3:].split(".")
    altered = f"/r/{qpart}.{int(expires) + 86400}.{rcpt}.{mac}"  # a longer life: the MAC no longer fits
    assert client.get(good[:-1] + ("0" if good[-1] != "0" else "1")).status_code == 403
    assert client.get(altered).status_code == 403
    assert client.get("/r/" + links.make(b"k" * 64, qid, "bob@example.net", 2**40)).status_code == 403
    assert client.get(link_for(config, qid, "mallory@example.com")).status_code == 403  # not a recipient of it
    expired = link_for(config, qid, "bob@example.net", expires=1000)
    assert client.get(expired).status_code == 410 and client.post(expired, data={"csrf": "x"}).status_code == 410
    vlink = link_for(config, virus, "bob@example.net")
    page = client.get(vlink)
    assert page.status_code == 200 and "Release it to me" not in page.text
    token = links.csrf(__import__("mailfilter.web.secret", fromlist=["x"]).load(config.web.secret_file), links.check(
        __import__("mailfilter.web.secret", fromlist=["x"]).load(config.web.secret_file), vlink[3:], datetime.now(UTC)))
    assert client.post(vlink, data={"csrf": token}).status_code == 403
    assert not sendmail.calls


def hostile_cases():
    import hostile

    return [case for case in hostile.cases() if not case.name.startswith(("zip-bomb", "gzip-bomb", "size-"))]


def test_the_hostile_corpus_lists_and_renders_escaped(console):
    """Every hostile message held as the filter holds it (metadata from the message itself): the list and each
    message page answer 200 with nothing of the message able to open a tag, a handler or a remote fetch."""
    from mailfilter import message as msgmod

    config, client = console
    login(client)
    held = []
    for case in hostile_cases():
        raw = case.make()
        if len(raw) > 4 * 1024 * 1024:
            continue
        with Spool.of(raw) as spool:
            parsed = msgmod.parse(spool.read(msgmod.HEAD_LIMIT))
            meta = {"reason": "spam", "verdict": "spam", "virus_names": [], "spam_score": 9.0, "sender": case.sender,
                    "recipients": list(case.recipients), "subject": msgmod.subject(parsed), "headers": []}  # fmt: skip
            held.append((case.name, quarantine.store(spool, meta, config.quarantine.dir)))
    assert len(held) > 200
    listing = client.get("/quarantine?page=1")
    assert listing.status_code == 200 and "<script" not in listing.text.split("</header>")[-1]
    handler = re.compile(r"<[^>]+\son[a-z]+\s*=", re.I)
    scheme = re.compile(r"(href|src|action)\s*=\s*[\"']?\s*(javascript|data|vbscript):", re.I)
    for name, qid in held:
        page = client.get(f"/quarantine/{qid}")
        assert page.status_code == 200, name
        assert "<script" not in page.text.lower() and not handler.search(page.text) and not scheme.search(page.text), name
