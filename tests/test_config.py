import math

import pytest

from mailfilter import config as configmod
from mailfilter.config import ConfigError


def write(tmp_path, text):
    path = tmp_path / "mailfilter.toml"
    path.write_text(text)
    return str(path)


def test_defaults_match_a_debian_host():
    c = configmod.Config()
    assert (c.spamd.host, c.spamd.port, c.spamd.socket) == ("127.0.0.1", 783, "")
    assert c.clamd.socket == "/var/run/clamav/clamd.ctl" and c.clamd.backend == "clamd"
    assert c.delivery.sendmail == ("/usr/sbin/sendmail",)
    assert c.spamd.on_error == c.clamd.on_error == "tempfail"


def test_all_required_keys_load(tmp_path):
    path = write(
        tmp_path,
        """
[spamd]
host = "10.0.0.1"
port = 7830
socket = "/run/spamd.sock"
timeout = 5
on_error = "accept"
[clamd]
socket = "/run/clamd.sock"
host = "127.0.0.2"
port = 3311
timeout = 2.5
on_error = "accept"
backend = "clamscan"
[delivery]
sendmail = ["/usr/sbin/sendmail", "-oi"]
[quarantine]
dir = "/srv/q"
spam_score = 12
[report]
admin = "root@example.org"
interval = 600
""",
    )
    c = configmod.load(path, environ={})
    assert c.spamd.port == 7830 and c.spamd.timeout == 5.0 and c.spamd.on_error == "accept"
    assert c.clamd.backend == "clamscan" and c.clamd.host == "127.0.0.2"
    assert c.delivery.sendmail == ("/usr/sbin/sendmail", "-oi")
    assert c.quarantine.spam_score == 12.0 and c.report.interval == 600.0
    assert c.source == path


def test_environment_variable_names_the_file(tmp_path):
    path = write(tmp_path, "[spamd]\nport = 9999\n")
    assert configmod.load(None, environ={"MAILFILTER_CONFIG": path}).spamd.port == 9999


def test_missing_default_file_gives_defaults(monkeypatch, tmp_path):
    monkeypatch.setattr(configmod, "DEFAULT_PATH", str(tmp_path / "absent.toml"))
    assert configmod.load(None, environ={}) == configmod.Config()


def test_inf_disables_scores(tmp_path):
    c = configmod.load(write(tmp_path, "[quarantine]\nspam_score = inf\n"), environ={})
    assert math.isinf(c.quarantine.spam_score)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[spamd]\nprot = 1\n", "[spamd] prot: unknown key"),
        ("[spam]\nport = 1\n", "unknown section [spam]"),
        ("[spamd]\nport = 'x'\n", "[spamd] port: expected an integer"),
        ("[spamd]\nport = 70000\n", "[spamd] port: must be a port number"),
        ("[spamd]\non_error = 'ignore'\n", "[spamd] on_error: must be one of 'tempfail', 'accept'"),
        ("[clamd]\nbackend = 'clamdscan'\n", "[clamd] backend: must be one of"),
        ("[clamd]\ntimeout = 0\n", "[clamd] timeout: must be a number of seconds above 0"),
        # Values that used to pass and then defer every message (OverflowError at mail time).
        ("[pipe]\ndeadline = 1e300\n", "[pipe] deadline: must be a number of seconds above 0 and at most 86400"),
        ("[spamd]\ntimeout = 1e300\n", "[spamd] timeout: must be a number of seconds above 0 and at most 86400"),
        ("[delivery]\ntimeout = inf\n", "[delivery] timeout: must be a number of seconds"),
        ("[report]\ninterval = 1e300\n", "[report] interval: must be a number of seconds"),
        ("[milter]\nmax_size = 100000000000000000\n", "[milter] max_size: must be a number of bytes"),
        ("[pipe]\nmax_size = 0\n", "[pipe] max_size: must be a number of bytes above 0"),
        ("[quarantine]\ndir = 'quarantine'\n", "[quarantine] dir: must be an absolute path"),
        ("[report]\nstate_dir = 'state'\n", "[report] state_dir: must be an absolute path"),
        ("[spamd]\nsocket = 'spamd.sock'\n", "[spamd] socket: must be an absolute path"),
        ("[quarantine]\nspam_score = -inf\n", "[quarantine] spam_score: must be a number"),
        ("[policy]\nunscannable = 'clean'\n", "[policy] unscannable: must be one of 'quarantine', 'reject', 'tempfail', 'accept'"),
        ("[clamd]\ntimeout = true\n", "[clamd] timeout: expected a number"),
        ("[delivery]\nsendmail = 'sendmail -t'\n", "[delivery] sendmail: expected a list"),
        ("[delivery]\nsendmail = ['sendmail']\n", "must be an absolute path"),
        ("[delivery]\nsendmail = []\n", "must be a non-empty list"),
        ("[quarantine]\nspam_score = nan\n", "[quarantine] spam_score: must be a number"),
        ("spamd = 1\n", "[spamd] must be a table"),
        ("[spamd\n", "not valid TOML"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        configmod.load(path, environ={})
    assert message in str(info.value) and path in str(info.value)


def test_named_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        configmod.load(str(tmp_path / "nope.toml"), environ={})
    with pytest.raises(ConfigError, match="config file not found"):
        configmod.load(None, environ={"MAILFILTER_CONFIG": str(tmp_path / "nope.toml")})


def test_describe_is_a_loadable_config_of_the_defaults(tmp_path):
    text = configmod.describe()
    assert configmod.load(write(tmp_path, text), environ={}).spamd == configmod.Config().spamd
    for section in configmod.SECTIONS:
        assert f"[{section}]" in text
