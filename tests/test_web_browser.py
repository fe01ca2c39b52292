"""The console in a real browser (Debian's chromium, headless, through selenium and chromium-driver), served by
uvicorn, over entries quarantined by the real pipeline (spamd and clamd): log in, list, open a hostile HTML message
(nothing runs, nothing is fetched), release it, read the audit line, and release a digest link once.

MAILFILTER_SCREENSHOTS=DIR also writes the list and the message page there (README's pictures: docs/).
"""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import corpus
from conftest import free_tcp_port, run_pipe

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = [
    pytest.mark.daemons,
    pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)), reason="chromium and chromium-driver not installed"),
]
PASSWORD = "correct horse"  # noqa: S105  (a test account)


class Counter(http.server.ThreadingHTTPServer):
    """A local HTTP server that only counts what asks it for anything (remote images, CSS url(), scripts)."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        counter = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                counter.requests.append(self.path)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()


def hostile_spam(port: int) -> bytes:
    remote = f"http://127.0.0.1:{port}"
    html = (
        f'<p onclick="document.title=\'clicked\'">Cheap <b>pills</b><script>document.title="pwned"</script>'
        f'<img src="{remote}/remote.png" onerror="document.title=\'onerror\'">'
        f'<span style="background:url({remote}/inline.png)">styled</span>'
        f"<style>body{{background:url({remote}/style.png)}}</style>"
        f'<script src="{remote}/evil.js"></script></p>'
    )
    return (
        "From: Spammer <spammer@example.org>\r\nTo: bob@example.net\r\nSubject: Cheap pills <script>alert(1)</script>\r\n"
        "Message-ID: <hostile@example.org>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b\"\r\n\r\n"
        f"--b\r\nContent-Type: text/plain\r\n\r\n{corpus.GTUBE}\r\n--b\r\nContent-Type: text/html\r\n\r\n{html}\r\n--b--\r\n"
    ).encode()


@pytest.fixture
def console(real_config, tmp_path):
    """Entries held by the real pipeline, and the console serving them under uvicorn: (config, base URL, counter)."""
    import uvicorn

    from mailfilter import config as configmod
    from mailfilter.web import app as webapp
    from mailfilter.web import users

    counter = Counter()
    port = free_tcp_port()
    base = f"http://127.0.0.1:{port}"
    path = real_config(
        quarantine={"dir": str(tmp_path / "quarantine"), "spam_score": 5.0},
        web={"users_file": str(tmp_path / "users"), "secret_file": str(tmp_path / "state" / "web-secret"), "public_url": base},
    )
    for raw in (hostile_spam(counter.server_address[1]), corpus.eicar_attached(), corpus.gtube()):
        status, out = run_pipe(path, raw, "-q", "ABC123", "-f", "spammer@example.org", "--", "bob@example.net", "carol@example.net")
        assert status == 0, out
    config = configmod.load(path)
    users.add(config.web.users_file, "admin", PASSWORD)
    server = uvicorn.Server(uvicorn.Config(webapp.create(config, secure=False), host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield path, config, base, counter
    server.should_exit = True
    thread.join(10)
    counter.shutdown()
    counter.server_close()


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def entries(config) -> dict[str, str]:
    from mailfilter.actions.quarantine import open_store

    good, _bad = open_store(config.quarantine).entries()
    return {("cheap" if e.subject.startswith("Cheap pills") else "gtube") if e.reason == "spam" else e.reason: e.id for e in good}


def shoot(driver, name: str) -> None:
    if folder := os.environ.get("MAILFILTER_SCREENSHOTS"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / name))


def test_an_admin_logs_in_reads_a_hostile_message_safely_and_releases_it(console, browser, sendmail):
    _path, config, base, counter = console
    held = entries(config)  # "cheap": the hostile spam, "gtube": the plain one, "virus"
    assert sorted(held) == ["cheap", "gtube", "virus"]
    browser.get(f"{base}/quarantine")
    assert browser.current_url == f"{base}/login"  # no session: the login page
    browser.find_element(By.ID, "username").send_keys("admin")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "login").click()
    browser.get(f"{base}/quarantine")
    listing = browser.page_source
    assert all(qid in listing for qid in held.values()) and "Cheap pills &lt;script&gt;alert(1)&lt;/script&gt;" in listing
    shoot(browser, "console-list.png")

    browser.get(f"{base}/quarantine/{held['cheap']}")
    assert browser.title.startswith("Cheap pills")  # no script changed it
    assert browser.find_elements(By.TAG_NAME, "script") == [] and "onerror" not in browser.page_source
    assert "Cheap pills" in browser.find_element(By.CLASS_NAME, "html").text  # the sanitized HTML is shown
    shoot(browser, "console-message.png")
    time.sleep(0.5)  # what the page could still fetch would have been fetched by now
    assert counter.requests == [], counter.requests
    logs = [entry["message"] for entry in browser.get_log("browser")]
    assert not any(str(counter.server_address[1]) in message for message in logs), logs

    before = len(sendmail.calls)  # the pipeline's admin report (the virus) went through it too
    browser.find_element(By.ID, "release").click()
    deadline = time.monotonic() + 20  # click() may return before the console's answer: wait for the sendmail call
    while len(sendmail.calls) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    [(argv, data)] = sendmail.calls[before:]
    assert argv[-3:] == ["--", "bob@example.net", "carol@example.net"] and b"X-Mailfilter-Released: web:admin" in data
    browser.get(f"{base}/quarantine/{held['cheap']}")
    audit = browser.find_element(By.ID, "audit").text
    assert "admin" in audit and "release" in audit

    browser.get(f"{base}/quarantine/{held['virus']}")  # a virus: the button alone does not release it
    browser.find_element(By.ID, "release").click()
    assert len(sendmail.calls) == before + 1


def test_a_digest_link_released_in_the_browser_delivers_once(console, browser, sendmail):
    path, config, _base, _counter = console
    from mailfilter.cli import cli

    result = CliRunner().invoke(cli, ["--config", path, "digest", "--json"])
    assert result.exit_code == 0, result.output
    digests = {d["recipient"]: d["entries"] for d in map(json.loads, result.output.splitlines())}
    gtube = entries(config)["gtube"]
    [link] = [e["link"] for e in digests["carol@example.net"] if e["id"] == gtube]
    before = len(sendmail.calls)  # the pipeline's admin report (the virus) went through it too
    browser.get(link)
    browser.find_element(By.ID, "release").click()
    done = WebDriverWait(browser, 20).until(lambda b: b.find_elements(By.ID, "done"))  # click() may return before the answer
    assert "on its way to carol@example.net" in done[0].text
    [(argv, _data)] = sendmail.calls[before:]
    assert argv[-2:] == ["--", "carol@example.net"]
    browser.get(link)
    assert "already used" in browser.page_source and browser.find_elements(By.ID, "release") == []
    browser.back()
    browser.refresh()
    assert len(sendmail.calls) == before + 1
    [virus_entry] = [e for e in digests["bob@example.net"] if e["link"] is None]
    assert virus_entry["id"] == entries(config)["virus"]
