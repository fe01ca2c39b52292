"""One TOML file loaded once into a frozen Config.

Every key has a default that matches a Debian host and a one-line description
(`mailfilter config` prints them). An unknown section or key, a value of the
wrong type or out of range is a ConfigError naming the key: never a silent
fall-back to defaults.
"""

from __future__ import annotations

import math
import os
import tomllib
from typing import Any

from .configkeys import (
    BANNED_ACTIONS,
    MAX_INTERVAL,
    ON_ERROR,
    ConfigError,
    _absolute,
    _absolute_or_empty,
    _argv,
    _bytes,
    _convert,
    _count,
    _dsn,
    _entries,
    _extensions,
    _header_text,
    _key,
    _listen,
    _milter_socket,
    _mode,
    _one_of,
    _port,
    _score,
    _seconds,
    _servers,
    _socket_path,
    _types,
    _url_or_empty,
    _user,
)
from .defaults import BANNED_EXTENSIONS, BANNED_TYPES, PIPE_DEADLINE, WORKER_SOCKET
from .defaults import CONFIG_ENV as ENV_VAR
from .defaults import CONFIG_PATH as DEFAULT_PATH
from .record import MISSING, dataclass, field, fields

# A section's keys that exclude others when given in the file (a pool replaces the single server).
EXCLUSIVE = {"spamd": ("servers", ("host", "port", "socket")), "clamd": ("servers", ("host", "port", "socket"))}


@dataclass(frozen=True)
class SpamdConfig:
    servers: list = _key(
        [], "a pool: 'HOST:PORT' or 'unix:/PATH' each; one server per message, failover to the next; replaces host/port/socket", _servers
    )
    host: str = _key("127.0.0.1", "spamd TCP host (used when socket is empty)")
    port: int = _key(783, "spamd TCP port", _port)
    socket: str = _key("", "spamd unix socket path; when set, host and port are not used", _socket_path)
    timeout: float = _key(60.0, "seconds to wait for spamd's answer", _seconds())
    on_error: str = _key(
        "tempfail", "spamd down, timing out or failing: 'tempfail' (keep mail queued) or 'accept' (deliver unscanned)", ON_ERROR
    )
    max_size: int = _key(
        512000,
        "bytes spamd is sent: a larger message is scored on its first max_size bytes, cut at a line end (as amavisd-new does)",
        _bytes,
    )
    user: str = _key("", "spamd's User: whose preferences and Bayes data score the message, as `spamc -u` ('' : spamd's own)", _user)


@dataclass(frozen=True)
class ClamdConfig:
    servers: list = _key(
        [], "a pool of clamd: 'HOST:PORT' or 'unix:/PATH' each; one per message, failover to the next; replaces socket/host/port", _servers
    )
    backend: str = _key("clamd", "'clamd' (resident daemon, INSTREAM) or 'clamscan' (a process per message)", _one_of("clamd", "clamscan"))
    socket: str = _key("/var/run/clamav/clamd.ctl", "clamd unix socket path (used when host is empty)", _socket_path)
    host: str = _key("", "clamd TCP host; when set, the socket is not used")
    port: int = _key(3310, "clamd TCP port", _port)
    timeout: float = _key(60.0, "seconds to wait for ClamAV's answer", _seconds())
    on_error: str = _key(
        "tempfail", "ClamAV down, timing out or failing: 'tempfail' (keep mail queued) or 'accept' (deliver unscanned)", ON_ERROR
    )
    clamscan: list = _key(["/usr/bin/clamscan"], "clamscan backend: command and extra arguments (e.g. --database=DIR)", _argv)
    config_file: str = _key("/etc/clamav/clamd.conf", "clamd's own config, where `mailfilter check` reads StreamMaxLength ('' skips it)")


@dataclass(frozen=True)
class DeliveryConfig:
    sendmail: list = _key(["/usr/sbin/sendmail"], "sendmail command (argv list); mailfilter adds -G -i -f SENDER -- RCPT...", _argv)
    timeout: float = _key(120.0, "seconds sendmail may take to accept one message (after the scan, outside [pipe] deadline)", _seconds())


@dataclass(frozen=True)
class QuarantineConfig:
    dir: str = _key("/var/lib/mailfilter/quarantine", "where held messages are stored (created 0700)", _absolute)
    store: str = _key("", "'': held messages in dir; postgresql://USER@HOST/DB: in PostgreSQL, for a fleet (dir is then not used)", _dsn)
    spam_score: float = _key(math.inf, "quarantine spam at or above this score instead of delivering it (inf: never)", _score)


@dataclass(frozen=True)
class PolicyConfig:
    virus: str = _key(
        "quarantine", "'quarantine' (hold, tell the admin) or 'reject' (pipe: bounce with 5.7.1, exit 69)", _one_of("quarantine", "reject")
    )
    spam_reject_score: float = _key(math.inf, "reject spam at or above this score (pipe: bounce with 5.7.1, exit 69; inf: never)", _score)
    unscannable: str = _key(
        "quarantine",
        "a message the virus scan could not see all of (a ClamAV limit, a part that cannot be decoded): 'quarantine',"
        " 'reject', 'tempfail' or 'accept' (deliver marked Unscanned); never clean",
        _one_of("quarantine", "reject", "tempfail", "accept"),
    )
    subject_tag: str = _key("", "put this before the Subject of spam that is delivered, e.g. '[SPAM] ' ('' : never)", _header_text)


@dataclass(frozen=True)
class SendersConfig:
    allow: list = _key(
        [], "envelope senders never treated as spam: address, domain (that domain only) or .domain (its subdomains only)", _entries
    )
    block: list = _key(
        [], "envelope senders treated as spam at the reject score (pipe 69, milter 550; quarantined if no reject score)", _entries
    )
    allow_file: str = _key("", "more allow entries, one a line, '#' comments; re-read when it changes ('' : none)", _absolute_or_empty)
    block_file: str = _key("", "more block entries, as allow_file ('' : none)", _absolute_or_empty)


@dataclass(frozen=True)
class AttachmentsConfig:
    banned_extensions: list = _key(
        list(BANNED_EXTENSIONS), "file name extensions banned (any case), also hidden behind another, as invoice.pdf.exe", _extensions
    )
    banned_types: list = _key(
        list(BANNED_TYPES), "MIME types banned as libmagic reports them from the content, whatever the name says", _types
    )
    action: str = _key(
        "quarantine", "a banned attachment: 'quarantine', 'reject' or 'allow' ([recipients] banned overrides it)", BANNED_ACTIONS
    )
    archives: bool = _key(True, "look at the names and types of the members of zip files (nested, never extracted to disk)")
    encrypted: str = _key(
        "quarantine", "an encrypted archive, whose members cannot be seen: 'quarantine' or 'allow'", _one_of("quarantine", "allow")
    )
    uninspected: str = _key(
        "accept",
        "what the check could not see (a limit, a damaged zip): 'accept' (deliver with X-Mailfilter-Uninspected, warn)"
        " or 'quarantine' (held as unscannable)",
        _one_of("accept", "quarantine"),
    )


@dataclass(frozen=True)
class ReportConfig:
    admin: str = _key("postmaster", "who receives VIRUS FOUND / ANTIVIRUS FAILED reports ('' turns reports off)")
    sender: str = _key("postmaster", "envelope sender and From: of the reports")
    interval: float = _key(
        3600.0, "seconds between two reports of the same kind (a scanner failure, a virus); the rest are counted", _seconds(MAX_INTERVAL)
    )
    state_dir: str = _key("/var/lib/mailfilter", "where the report rate limit and the pipe metrics keep their state", _absolute)
    timeout: float = _key(30.0, "seconds the admin report's sendmail may take (after the message's fate is sealed)", _seconds())
    journal_dir: str = _key(
        "/var/lib/mailfilter/journal", "one JSON line per message, for `mailfilter report` ('' turns it off)", _absolute_or_empty
    )
    journal_store: str = _key("", "postgresql://USER@HOST/DB: journal to PostgreSQL too; `mailfilter report` reads it (the fleet)", _dsn)


@dataclass(frozen=True)
class PipeConfig:
    deadline: float = _key(
        PIPE_DEADLINE, "seconds `pipe` may take to read and scan a message before it defers; delivery then has [delivery] timeout",
        _seconds(),
    )
    max_size: int = _key(
        52428800, "bytes; a larger message is refused (exit 69, 5.3.4) instead of being scanned; keep it above message_size_limit", _bytes
    )
    worker: str = _key(
        WORKER_SOCKET,
        "unix socket of `mailfilter worker`; `pipe` hands messages to it when it listens, else filters them itself ('' never tries)",
        _absolute_or_empty,
    )
    worker_idle: float = _key(
        300.0,
        "seconds without a message after which a worker started by systemd's socket unit exits (the next message starts it again)",
        _seconds(),
    )


@dataclass(frozen=True)
class MilterConfig:
    socket: str = _key("unix:/run/mailfilter/milter.sock", "where `milter` listens: unix:PATH or inet:PORT@127.0.0.1", _milter_socket)
    virus: str = _key(
        "reject",
        "a virus: 'reject' (554 5.7.1, no backscatter), 'quarantine' (our store, then discard) or 'hold' (Postfix's hold queue)",
        _one_of("reject", "quarantine", "hold"),
    )
    max_size: int = _key(52428800, "bytes; a larger message is refused with 552 5.3.4 instead of being scanned", _bytes)
    spool_memory: int = _key(1048576, "bytes of a message held in memory; the rest goes to a private temporary file", _bytes)
    tmpdir: str = _key("", "folder for spooled messages ('' for the system's temporary folder)", _absolute_or_empty)
    socket_mode: int = _key(0o660, "permissions of a unix socket (0o660: Postfix's group must be the socket's group)", _mode, octal=True)
    user: str = _key("", "when started as root: USER[:GROUP] to become once the socket is open (refused as root without it)")
    grace: float = _key(30.0, "seconds to let messages in flight finish after SIGTERM", _seconds())


@dataclass(frozen=True)
class MetricsConfig:
    listen: str = _key("127.0.0.1:9899", "milter: serve Prometheus metrics on HOST:PORT ('' turns it off)", _listen)
    textfile: str = _key("", "pipe: rewrite this .prom file for node_exporter's textfile collector ('' turns it off)", _absolute_or_empty)


@dataclass(frozen=True)
class SmtpConfig:
    listen: str = _key("127.0.0.1:10027", "`mailfilter smtp`: HOST:PORT of the after-queue door (Postfix's content_filter)", _listen)
    reinject: str = _key("127.0.0.1:10028", "HOST:PORT of Postfix's second smtpd (no content_filter) that takes filtered mail", _listen)
    max_clients: int = _key(4, "SMTP sessions served at once; match the smtp-mailfilter transport's process limit (maxproc)", _count(1000))
    timeout: float = _key(120.0, "seconds the reinjecting smtpd may take to accept one message (after the scan)", _seconds())
    max_size: int = _key(52428800, "bytes (offered as SIZE); a larger message is refused with 552 5.3.4 instead of being scanned", _bytes)
    grace: float = _key(30.0, "seconds to let messages in flight finish after SIGTERM", _seconds())
    protocol: str = _key("smtp", "'smtp', or 'lmtp': one reply per recipient after DATA (Postfix's lmtp client)", _one_of("smtp", "lmtp"))


@dataclass(frozen=True)
class WebConfig:
    listen: str = _key("127.0.0.1:8026", "`mailfilter web`: HOST:PORT of the quarantine console", _listen)
    users_file: str = _key("/etc/mailfilter/web-users", "console users and their argon2id hashes (`mailfilter web adduser`)", _absolute)
    secret_file: str = _key("/var/lib/mailfilter/web-secret", "the key of release links and sessions (made 0600 when missing)", _absolute)
    public_url: str = _key("", "the console's URL as recipients reach it, for digest links ('' : no links)", _url_or_empty)
    link_days: int = _key(14, "days a digest's release link stays valid", _count(366))


@dataclass(frozen=True)
class LogConfig:
    syslog: bool = _key(True, "log to syslog facility mail under `pipe` (the CLI logs to stderr)")
    file: str = _key("", "also append log lines to this file", _absolute_or_empty)
    level: str = _key("info", "'debug', 'info', 'warning' or 'error'", _one_of("debug", "info", "warning", "error"))


@dataclass(frozen=True)
class Config:
    spamd: SpamdConfig = field(default_factory=SpamdConfig)
    clamd: ClamdConfig = field(default_factory=ClamdConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    quarantine: QuarantineConfig = field(default_factory=QuarantineConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    senders: SendersConfig = field(default_factory=SendersConfig)
    attachments: AttachmentsConfig = field(default_factory=AttachmentsConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    pipe: PipeConfig = field(default_factory=PipeConfig)
    milter: MilterConfig = field(default_factory=MilterConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    web: WebConfig = field(default_factory=WebConfig)
    log: LogConfig = field(default_factory=LogConfig)
    # [recipients."DOMAIN"] and [recipients."ADDRESS"]: (lowercase key, its rule), as recipients.parse() checked them
    recipients: tuple = ()
    source: str = "(defaults)"


SECTIONS = {f.name: f.default_factory for f in fields(Config) if f.default_factory is not MISSING}


def from_dict(data: dict[str, Any], source: str = "(dict)") -> Config:
    """Build a Config from parsed TOML, checking every key and value."""
    sections: dict[str, Any] = {}
    for name, table in data.items():
        if name == "recipients":
            from . import recipients

            sections[name] = recipients.parse(table, source)
            continue
        if name not in SECTIONS:
            raise ConfigError(f"{source}: unknown section [{name}] (known: {', '.join(SECTIONS)}, recipients)")
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [{name}] must be a table")
        cls = SECTIONS[name]
        known = {f.name: f for f in fields(cls)}
        values = {}
        for key, given in table.items():
            where = f"{source}: [{name}] {key}"
            if key not in known:
                raise ConfigError(f"{where}: unknown key (known: {', '.join(known)})")
            f = known[key]
            value = _convert(where, given, f.type)
            check = f.metadata["check"]
            problem = check(value) if check else None
            if problem:
                raise ConfigError(f"{where}: {problem}, got {value!r}")
            values[key] = value
        if name in EXCLUSIVE and table.get(EXCLUSIVE[name][0]) and set(EXCLUSIVE[name][1]) & set(table):
            given = ", ".join(key for key in EXCLUSIVE[name][1] if key in table)
            raise ConfigError(f"{source}: [{name}] servers and {given}: set one or the other (servers replaces {given})")
        sections[name] = cls(**values)
    return Config(**sections, source=source)


def load(path: str | None = None, environ: dict[str, str] | None = None) -> Config:
    """Load the config from PATH, else $MAILFILTER_CONFIG, else the default path if it exists.

    A path that was named (argument or environment) must exist; only the
    default path may be absent, in which case the defaults apply.
    """
    environ = os.environ if environ is None else environ
    named = path or environ.get(ENV_VAR) or None
    target = named or DEFAULT_PATH
    try:
        with open(target, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        if named:
            raise ConfigError(f"{target}: config file not found") from None
        return Config()
    except OSError as exc:
        raise ConfigError(f"{target}: cannot read config: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{target}: not valid TOML: {exc}") from None
    return from_dict(data, source=target)


def describe() -> str:
    """Every section and key with its default and description, as a commented TOML file."""
    lines = []
    for name, cls in SECTIONS.items():
        lines.append(f"[{name}]")
        instance = cls()
        for f in fields(cls):
            lines.append(f"# {f.metadata['doc']}")
            value = getattr(instance, f.name)
            lines.append(f"{f.name} = {oct(value) if f.metadata['octal'] else _toml_value(value)}")
        lines.append("")
    from . import recipients

    lines.extend(recipients.describe())
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)
