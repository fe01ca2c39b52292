"""`mailfilter check`: the pure parsers and judgements table by table, then the command against the real spamd and clamd."""

import os
import socket
from datetime import datetime
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from mailfilter import config as configmod
from mailfilter.cli import Context
from mailfilter.commands import check as chk
from mailfilter.commands.check import Line, PostfixLimits, Status, check
from mailfilter.model import Cause, ScanFailure, SpamReport, SpamSkipped, VirusReport

import corpus
from conftest import ROOT, mode

M = 1024 * 1024


@click.group()
@click.option("-c", "--config", "config_path")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """The same Context as mailfilter.cli's group, with only `check` registered."""
    ctx.obj = Context(config_path)


cli.add_command(check)


@pytest.fixture
def postfix_dir(tmp_path):
    """postfix_dir(**parameters) -> a private Postfix config folder (for MAIL_CONFIG) with that main.cf."""

    def make(**parameters: str) -> str:
        folder = tmp_path / "postfix"
        folder.mkdir(exist_ok=True)
        (folder / "main.cf").write_text("".join(f"{name} = {value}\n" for name, value in parameters.items()))
        (folder / "master.cf").write_text("")  # postconf works without it, but warns
        for name in ("main.cf", "master.cf"):
            os.utime(folder / name, (1e9, 1e9))  # Postfix waits while a config file is less than a second old
        return str(folder)

    return make


def run_check(config_path: str, mail_config: str) -> tuple[int, list[str]]:
    result = CliRunner().invoke(cli, ["--config", config_path, "check"], env={"MAIL_CONFIG": mail_config})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output.splitlines()


def by_subject(lines: list[str]) -> dict[str, str]:
    """{subject: status} of rendered lines such as `OK    spamd: ...`."""
    return {line[6:].split(":", 1)[0]: line[:6].strip() for line in lines}


def a_file(path) -> str:
    path.write_text("")
    return str(path)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- pure functions ------------------------------------------------------------------------------


def test_line_render():
    assert Line(Status.OK, "config", "/etc/mailfilter/mailfilter.toml").render() == "OK    config: /etc/mailfilter/mailfilter.toml"
    assert Line(Status.WARN, "x", "y").render() == "WARN  x: y"
    assert Line(Status.FAIL, "sendmail", "gone", "install it").render() == "FAIL  sendmail: gone; fix: install it"
    assert "\n" not in Line(Status.FAIL, "clamd", "two\nlines").render()


def test_probe_carries_the_product_s_own_gtube_and_eicar():
    assert chk.GTUBE == corpus.GTUBE
    assert chk.eicar() == corpus.eicar()
    raw = chk.probe()
    assert chk.GTUBE.encode() in raw and b"eicar.com" in raw


@pytest.mark.parametrize(
    ("text", "expected"),
    [("26214400", 26214400), ("25M", 25 * M), ("10m", 10 * M), ("512K", 512 * 1024), ("512k", 512 * 1024), ("2G", 2048 * M), (" 1M ", M)],
)
def test_parse_clamd_size(text, expected):
    assert chk.parse_clamd_size(text) == expected


@pytest.mark.parametrize("text", ["", "25MB", "-1", "1.5M", "M", "25 M"])
def test_parse_clamd_size_refuses(text):
    with pytest.raises(ValueError, match="not a clamd size"):
        chk.parse_clamd_size(text)


@pytest.mark.parametrize(
    ("conf", "expected"),
    [
        ("", 100 * M),  # clamd.conf(5): "Default: 100M"
        ("LocalSocket /run/clamd.ctl\nStreamMaxLength 25M\n", 25 * M),
        ("#StreamMaxLength 25M\n", 100 * M),
        ("# StreamMaxLength 25M\n", 100 * M),
        ("  StreamMaxLength   1K  \n", 1024),
        ("StreamMaxLength 10M\nStreamMaxLength 20M\n", 10 * M),  # clamd keeps the first (clamconf agrees)
        ("MaxFileSize 25M\nstreammaxlength 1M\n", 100 * M),  # option names are case-sensitive for clamd
    ],
)
def test_stream_max_length(conf, expected):
    assert chk.stream_max_length(conf) == expected


def test_stream_max_length_bad_value():
    with pytest.raises(ValueError, match="not a clamd size: '25 MB'"):
        chk.stream_max_length("StreamMaxLength 25 MB\n")


@pytest.mark.parametrize(("text", "seconds"), [("1000s", 1000), ("300", 300), ("5m", 300), ("1h", 3600), ("2d", 172800), ("1w", 604800)])
def test_parse_postfix_time(text, seconds):
    assert chk.parse_postfix_time(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "1.5h", "-1s", "s", "$command_time_limit"])
def test_parse_postfix_time_refuses(text):
    with pytest.raises(ValueError, match="not a Postfix time value"):
        chk.parse_postfix_time(text)


def test_postfix_limits_parse():
    values = {"message_size_limit": "10240000", "milter_content_timeout": "300s", "command_time_limit": "1000s"}
    assert PostfixLimits.parse(values) == PostfixLimits(10240000, 300, 1000)
    with pytest.raises(ValueError, match="not a message_size_limit: '10M'"):
        PostfixLimits.parse({**values, "message_size_limit": "10M"})


NOW = datetime(2026, 11, 27, 8, 22, 5)


@pytest.mark.parametrize(
    ("answer", "status", "text"),
    [
        ("ClamAV 1.4.6/27460/Wed Nov 25 08:22:05 2026", Status.OK, "ClamAV 1.4.6/27460/Wed Nov 25 08:22:05 2026, 2.0 days old"),
        ("ClamAV 1.4.6/27460/Tue Nov 24 08:22:05 2026", Status.OK, "3.0 days old"),
        ("ClamAV 1.4.6/27460/Tue Nov 24 08:22:04 2026", Status.WARN, "3.0 days old, more than 3"),
        ("ClamAV 1.4.6/27400/Thu Nov  5 10:00:00 2026", Status.WARN, "21.9 days old, more than 3"),
        ("ClamAV 1.4.6", Status.WARN, "age unknown: ClamAV answers 'ClamAV 1.4.6'"),
        ("ClamAV 1.4.6/27460/yesterday", Status.WARN, "age unknown"),
        ("", Status.WARN, "age unknown"),
    ],
)
def test_signature_line(answer, status, text):
    line = chk.signature_line(answer, NOW)
    assert (line.status, line.subject) == (status, "signatures")
    assert text in line.text
    assert bool(line.fix) == (status is Status.WARN)


def config_of(**sections) -> configmod.Config:
    return configmod.from_dict(sections)


DEFAULT_POSTFIX = PostfixLimits(10240000, 300, 1000)  # Postfix's own defaults


@pytest.mark.parametrize(
    ("postfix", "stream_max", "sections", "expected"),
    [
        (DEFAULT_POSTFIX, 25 * M, {}, {"clamd size": "OK", "milter size": "OK", "milter time": "OK", "pipe time": "OK"}),
        (DEFAULT_POSTFIX, None, {}, {"milter size": "OK", "milter time": "OK", "pipe time": "OK"}),
        (PostfixLimits(25 * M, 300, 1000), 25 * M, {}, {"clamd size": "OK"}),  # equal fits
        (PostfixLimits(25 * M + 1, 300, 1000), 25 * M, {}, {"clamd size": "WARN"}),
        (PostfixLimits(0, 300, 1000), 200 * M, {}, {"clamd size": "WARN", "milter size": "WARN"}),  # 0: no limit
        (DEFAULT_POSTFIX, 25 * M, {"milter": {"max_size": 1000}}, {"milter size": "WARN"}),
        (PostfixLimits(10240000, 76, 1000), None, {}, {"milter time": "OK"}),
        (PostfixLimits(10240000, 75, 1000), None, {}, {"milter time": "FAIL"}),  # 60 s + 5 s + 10 s is not below 75 s
        (PostfixLimits(10240000, 66, 1000), None, {}, {"milter time": "FAIL"}),  # enough for the scan, not for the store
        (DEFAULT_POSTFIX, None, {"spamd": {"timeout": 10}, "clamd": {"timeout": 295}}, {"milter time": "FAIL"}),
        (PostfixLimits(10240000, 300, 1000, "accept"), None, {}, {"milter time": "OK", "milter default": "WARN"}),
        (PostfixLimits(10240000, 300, 1000, "tempfail"), None, {}, {"milter default": None}),
        # The whole run counts: deadline + [delivery] timeout 120 + 30 (quarantine) + 10 (hand-over) + [report] timeout 30.
        (DEFAULT_POSTFIX, None, {"pipe": {"deadline": 810}}, {"pipe time": "FAIL"}),
        (DEFAULT_POSTFIX, None, {"pipe": {"deadline": 809.5}}, {"pipe time": "OK"}),
        (DEFAULT_POSTFIX, None, {"pipe": {"deadline": 300}, "delivery": {"timeout": 700}}, {"pipe time": "FAIL"}),
        (DEFAULT_POSTFIX, None, {"pipe": {"deadline": 300}, "report": {"timeout": 600}}, {"pipe time": "FAIL"}),
    ],
)
def test_coherence(postfix, stream_max, sections, expected):
    lines = chk.coherence(postfix, stream_max, config_of(**sections))
    got = {line.subject: line.status.value for line in lines}
    assert {k: got.get(k) for k in expected} == expected
    if stream_max is None:
        assert "clamd size" not in got
    for line in lines:
        assert bool(line.fix) == (line.status is not Status.OK), line


def test_coherence_texts():
    size, milter, timeout, pipe = chk.coherence(PostfixLimits(0, 30, 200), 100 * M, config_of(clamd={"timeout": 30}))
    assert size.render().startswith("WARN  clamd size: Postfix message_size_limit 0 (no limit) > clamd StreamMaxLength 104857600: ")
    assert milter.text.startswith("Postfix message_size_limit 0 (no limit) > [milter] max_size 52428800: the milter refuses (552)")
    assert timeout.render().startswith(
        "FAIL  milter time: milter worst case 75 s (slower scanner timeout + 5 s + 10 s quarantine store)"
        " >= Postfix milter_content_timeout 30 s"
    )
    [accept] = [line for line in chk.coherence(PostfixLimits(0, 30, 200, "accept"), None, config_of()) if line.subject == "milter default"]
    assert accept.render().startswith("WARN  milter default: Postfix milter_default_action = accept: a milter that is down or too slow")
    assert pipe.render().startswith(
        "FAIL  pipe time: pipe worst case 490 s ([pipe] deadline 300 + [delivery] timeout + 30 s 150 + hand-over margin 10"
        " + [report] timeout 30) >= Postfix command_time_limit 200 s: pipe(8) may kill a filter that has delivered"
    )


def test_milter_deadline_is_the_slower_scanner_plus_the_pipeline_s_grace():
    assert chk.milter_deadline(config_of(spamd={"timeout": 10}, clamd={"timeout": 40})) == 55  # + 5 s backstop + 10 s store
    assert chk.milter_deadline(config_of()) == 75


@pytest.mark.parametrize(
    ("outcome", "status", "text"),
    [
        (SpamReport(1000.0, 5.0, ("GTUBE",)), Status.OK, "127.0.0.1:783 scored GTUBE 1000/5, spam"),
        (SpamReport(0.1, 5.0), Status.FAIL, "127.0.0.1:783 scored GTUBE 0.1/5, not spam"),
        (SpamSkipped("message larger than 10 bytes"), Status.FAIL, "not asked: message larger than 10 bytes"),
        (ScanFailure("spamd", Cause.UNAVAILABLE, "Connection refused"), Status.FAIL, "127.0.0.1:783: unavailable: Connection refused"),
        (ScanFailure("spamd", Cause.TIMEOUT, "no answer within 60 s"), Status.FAIL, "127.0.0.1:783: timeout: no answer within 60 s"),
    ],
)
def test_spam_line(outcome, status, text):
    line = chk.spam_line(outcome, configmod.SpamdConfig())
    assert (line.status, line.subject, line.text) == (status, "spamd", text)
    assert bool(line.fix) == (status is Status.FAIL)


@pytest.mark.parametrize(
    ("outcome", "clamd", "status", "text"),
    [
        (VirusReport(("Eicar-Test-Signature",), 1), {}, Status.OK, "/var/run/clamav/clamd.ctl found EICAR: Eicar-Test-Signature"),
        (VirusReport(), {"host": "192.0.2.1"}, Status.FAIL, "192.0.2.1:3310 did not find EICAR"),
        (ScanFailure("clamav", Cause.ERROR, "lstat() failed"), {}, Status.FAIL, "/var/run/clamav/clamd.ctl: error: lstat() failed"),
        (
            ScanFailure("clamav", Cause.UNAVAILABLE, "cannot run"),
            {"backend": "clamscan"},
            Status.FAIL,
            "/usr/bin/clamscan: unavailable: cannot run",
        ),
    ],
)
def test_virus_line(outcome, clamd, status, text):
    line = chk.virus_line(outcome, configmod.ClamdConfig(**clamd))
    assert (line.status, line.text) == (status, text)
    assert line.subject == clamd.get("backend", "clamd")
    assert bool(line.fix) == (status is Status.FAIL)


def test_user_line():
    assert chk.user_line(0).status is Status.WARN and "sudo -u mailfilter" in chk.user_line(0).fix
    assert chk.user_line(65534) == Line(Status.OK, "user", "nobody (uid 65534)")


# --- the thin I/O parts --------------------------------------------------------------------------


def test_folder_line_creates_a_private_folder_and_leaves_nothing(tmp_path):
    folder = tmp_path / "a" / "quarantine"
    assert chk.folder_line("quarantine", str(folder)) == Line(Status.OK, "quarantine", f"{folder} is writable")
    assert mode(folder) == 0o700 and os.listdir(folder) == []


def test_folder_line_fails_on_a_file_in_the_way(tmp_path):
    (tmp_path / "quarantine").write_text("")
    line = chk.folder_line("quarantine", str(tmp_path / "quarantine"))
    assert (line.status, line.text) == (Status.FAIL, f"{tmp_path / 'quarantine'}: exists but is not a folder")
    assert "install -d" in line.fix


def test_sendmail_line(tmp_path):
    script = tmp_path / "sendmail"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    assert chk.sendmail_line((str(script),)).text.endswith("is not executable")
    script.chmod(0o755)
    assert chk.sendmail_line((str(script), "-t")).status is Status.OK
    line = chk.sendmail_line((str(tmp_path / "missing"),))
    assert (line.status, line.text) == (Status.FAIL, f"{tmp_path / 'missing'} does not exist")


def test_postconf_reads_mail_config_and_expands(postfix_dir):
    folder = postfix_dir(command_time_limit="900s", milter_content_timeout="$command_time_limit")
    values = chk.postconf({"MAIL_CONFIG": folder})
    assert values == {
        "message_size_limit": "10240000",
        "milter_content_timeout": "900s",
        "command_time_limit": "900s",
        "milter_default_action": "tempfail",
    }


def test_postconf_failures_are_warnings(tmp_path):
    config = config_of()
    (line,) = chk.limit_lines(config, {}, command=str(tmp_path / "postconf"))
    assert line.status is Status.WARN and line.text == f"limits not checked: cannot run {tmp_path / 'postconf'}: No such file or directory"
    (line,) = chk.limit_lines(config, {"MAIL_CONFIG": str(tmp_path / "none")})
    assert line.status is Status.WARN and "main.cf: No such file or directory" in line.text


def test_unreadable_clamd_conf_is_a_warning(tmp_path, postfix_dir):
    config = config_of(clamd={"config_file": str(tmp_path / "clamd.conf")})
    lines = list(chk.limit_lines(config, {"MAIL_CONFIG": postfix_dir()}))
    assert lines[0].render().startswith(f"WARN  clamd size: StreamMaxLength not checked: {tmp_path / 'clamd.conf'}: No such file")
    assert [line.subject for line in lines[1:]] == ["milter size", "milter time", "pipe time"]
    assert [line.subject for line in chk.limit_lines(config_of(clamd={"config_file": ""}), {"MAIL_CONFIG": postfix_dir()})] == [
        "milter size",
        "milter time",
        "pipe time",
    ]


def test_bad_config_is_one_fail_line(tmp_path, postfix_dir):
    path = tmp_path / "bad.toml"
    path.write_text("[clamd]\nbackend = 'nope'\n")
    status, lines = run_check(str(path), postfix_dir())
    assert status == 1 and len(lines) == 1
    assert lines[0].startswith(f"FAIL  config: {path}: [clamd] backend: must be one of") and "; fix: " in lines[0]


# --- the command against the real spamd and clamd ------------------------------------------------


@pytest.fixture
def good_config(real_config, daemons):
    """real_config(...) that also points [clamd] config_file at the private clamd's config."""

    def make(**overrides: dict) -> str:
        overrides.setdefault("clamd", {}).setdefault("config_file", daemons["clamd_config"])
        return real_config(**overrides)

    return make


@pytest.mark.daemons
def test_all_well_is_exit_0(tmp_path, good_config, postfix_dir, daemons):
    status, lines = run_check(good_config(), postfix_dir())
    assert status == 0, lines
    assert by_subject(lines) == {
        "config": "OK",
        "user": "WARN" if os.geteuid() == 0 else "OK",
        "spamd": "OK",
        "clamd": "OK",
        "signatures": "WARN",  # the test database answers VERSION without a date
        "quarantine": "OK",
        "state": "OK",
        "journal": "OK",
        "sendmail": "OK",
        "pipe worker": "OK",
        "attachments": "OK",
        "clamd size": "OK",
        "milter size": "OK",
        "milter time": "OK",
        "pipe time": "OK",
        "clamd limits": "OK",
    }
    assert lines[0] == f"OK    config: {tmp_path / 'mailfilter.toml'}"
    assert f"OK    spamd: 127.0.0.1:{daemons['spamd_port']} scored GTUBE " in "\n".join(lines)
    assert f"OK    clamd: {daemons['clamd_socket']} found EICAR: Eicar-Test-Signature" in "\n".join(lines)
    assert "WARN  signatures: age unknown: ClamAV answers 'ClamAV " in "\n".join(lines)
    assert "OK    clamd size: Postfix message_size_limit 10240000 <= clamd StreamMaxLength 104857600" in lines
    assert any(line.startswith("OK    attachments: ") and "libmagic answers" in line for line in lines)
    assert mode(tmp_path / "quarantine") == 0o700 and os.listdir(tmp_path / "quarantine") == []


@pytest.mark.daemons
def test_clamscan_backend(good_config, postfix_dir):
    clamscan = ["/usr/bin/clamscan", f"--database={ROOT / 'tests' / 'signatures'}"]
    status, lines = run_check(good_config(clamd={"backend": "clamscan", "clamscan": clamscan}), postfix_dir())
    assert status == 0, lines
    assert "OK    clamscan: /usr/bin/clamscan found EICAR: Eicar-Test-Signature.UNOFFICIAL" in lines
    assert "clamd size" not in by_subject(lines)


@pytest.mark.daemons
def test_clamd_over_tcp(good_config, postfix_dir, daemons):
    status, lines = run_check(good_config(clamd={"host": daemons["clamd_host"], "port": daemons["clamd_port"]}), postfix_dir())
    assert status == 0, lines
    assert f"OK    clamd: {daemons['clamd_host']}:{daemons['clamd_port']} found EICAR: Eicar-Test-Signature.UNOFFICIAL" in lines
    assert "WARN  signatures: age unknown: ClamAV answers 'ClamAV " in "\n".join(lines)  # VERSION answered over TCP


BROKEN = {
    "spamd down": (
        lambda tmp: {"spamd": {"port": closed_port()}},
        "FAIL  spamd: 127.0.0.1:{port}: unavailable: ",
        "; fix: start spamd, or correct [spamd] host, port or socket",
    ),
    "clamd down": (
        lambda tmp: {"clamd": {"socket": str(tmp / "no-clamd.ctl")}},
        "FAIL  clamd: {tmp}/no-clamd.ctl: unavailable: ",
        "; fix: start clamd (clamav-daemon), or correct [clamd] socket, host or port",
    ),
    "quarantine not a folder": (
        lambda tmp: {"quarantine": {"dir": a_file(tmp / "in-the-way")}},
        "FAIL  quarantine: {tmp}/in-the-way: exists but is not a folder; fix: ",
        "install -d -o mailfilter -m 0700 {tmp}/in-the-way",
    ),
    "journal under a file": (
        lambda tmp: {"report": {"journal_dir": a_file(tmp / "file") + "/journal"}},
        "FAIL  journal: {tmp}/file/journal: Not a directory; fix: ",
        "",
    ),
    "sendmail missing": (
        lambda tmp: {"delivery": {"sendmail": ["/nonexistent/sendmail"]}},
        "FAIL  sendmail: /nonexistent/sendmail does not exist; fix: install Postfix, or correct [delivery] sendmail",
        "",
    ),
}


@pytest.mark.daemons
@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_dependency_is_a_fail_line_and_exit_1(tmp_path, good_config, postfix_dir, case):
    overrides, start, end = BROKEN[case]
    sections = overrides(tmp_path)
    port = sections.get("spamd", {}).get("port")
    status, lines = run_check(good_config(**sections), postfix_dir())
    assert status == 1
    failed = [line for line in lines if line.startswith("FAIL")]
    assert len(failed) == 1, lines
    assert failed[0].startswith(start.format(tmp=tmp_path, port=port)), failed
    assert failed[0].endswith(end.format(tmp=tmp_path)), failed


@pytest.mark.daemons
def test_postfix_limits_that_do_not_fit_are_warnings(good_config, postfix_dir):
    mail_config = postfix_dir(message_size_limit=str(200 * M), milter_content_timeout="30s", command_time_limit="5m")
    status, lines = run_check(good_config(), mail_config)
    statuses = by_subject(lines)
    assert [statuses[s] for s in ("clamd size", "milter size")] == ["WARN"] * 2
    # A pipe run that can outlast command_time_limit could be killed after it delivered: a second delivery.
    # A milter slower than milter_content_timeout: Postfix applies milter_default_action after the quarantine store.
    assert status == 1 and [s for s, v in statuses.items() if v == "FAIL"] == ["milter time", "pipe time"], lines
    assert "FAIL  pipe time: pipe worst case " in "\n".join(lines) and ">= Postfix command_time_limit 300 s: " in "\n".join(lines)


def test_the_check_module_does_not_hold_eicar():
    source = Path(chk.__file__).read_bytes()
    assert corpus.eicar()[:20] not in source and corpus.eicar()[-20:] not in source


@pytest.mark.parametrize(
    ("conf", "status"),
    [
        ("", Status.WARN),  # clamd's defaults: AlertExceedsMax no
        ("AlertExceedsMax no\n", Status.WARN),
        ("AlertExceedsMax yes\nHeuristicAlerts no\n", Status.WARN),
        ("AlertExceedsMax yes\n", Status.OK),
        ("# AlertExceedsMax yes\nAlertExceedsMax true\nAlertExceedsMax no\n", Status.OK),  # the first one wins
    ],
)
def test_clamd_config_that_hides_limit_hits_is_a_warning(tmp_path, conf, status):
    path = tmp_path / "clamd.conf"
    path.write_text(conf + "MaxRecursion 12\n")
    [line] = chk.clamd_limit_lines(config_of(clamd={"config_file": str(path)}))
    assert (line.subject, line.status) == ("clamd limits", status)
    assert "MaxRecursion 12, MaxFiles 10000, MaxScanSize 400M, MaxFileSize 100M" in line.text
    if status is Status.WARN:
        assert line.render().endswith(f"; fix: set AlertExceedsMax yes and HeuristicAlerts yes in {path}, then restart clamd")
    assert list(chk.clamd_limit_lines(config_of(clamd={"config_file": str(tmp_path / "missing")}))) == []
    assert list(chk.clamd_limit_lines(config_of(clamd={"config_file": str(path), "backend": "clamscan"}))) == []


def test_a_sender_list_file_that_cannot_be_read_is_a_warn(make_config, tmp_path):
    from mailfilter import config as configmod
    from mailfilter.commands.policycheck import policy_lines

    good = tmp_path / "allow"
    good.write_text("partner.example\n# comment\n.partner.example\n")
    config = configmod.load(make_config(senders={"allow_file": str(good), "block_file": str(tmp_path / "missing")}))
    lines = {line.subject: line for line in policy_lines(config)}
    assert lines["senders allow_file"].status.value == "OK" and "2 entries" in lines["senders allow_file"].text
    assert lines["senders block_file"].status.value == "WARN" and "missing" in lines["senders block_file"].text
