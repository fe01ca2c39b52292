"""`mailfilter check`: the operator's self-test of a host, one OK, WARN or FAIL line per check.

The scanners are tested on the path mail takes: one probe message, with the
GTUBE line and an EICAR attachment built here at run time, goes through
pipeline.scan. The parsers of Postfix and clamd values, the signature date and
the comparisons of limits are pure functions; the I/O around them is thin.
"""

from __future__ import annotations

import enum
import os
import pwd
import re
import subprocess  # nosec B404
import sys
import tempfile
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from email.message import EmailMessage
from typing import Any

import click

from .. import pipeline
from ..config import ClamdConfig, Config, SpamdConfig
from ..doors import milterreply
from ..message import printable
from ..model import Cause, ScanFailure, SpamOutcome, SpamReport, SpamSkipped, VirusOutcome
from ..record import dataclass, replace
from ..scanners import pool
from ..spool import Spool

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
POSTCONF = "/usr/sbin/postconf"
POSTFIX_PARAMETERS = ("message_size_limit", "milter_content_timeout", "command_time_limit", "milter_default_action")
STREAM_MAX_DEFAULT = 100 * 1024 * 1024  # clamd.conf(5) and clamconf of ClamAV 1.4: "Default: 100M" (Debian writes 25M)
STALE = timedelta(days=3)
SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
TIME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class Status(enum.StrEnum):
    OK = "OK"  # as it should be
    WARN = "WARN"  # works, but look at it
    FAIL = "FAIL"  # mail cannot be filtered as configured


@dataclass(frozen=True)
class Line:
    """The result of one check: what was looked at, what was found and, for a problem, what to do."""

    status: Status
    subject: str
    text: str
    fix: str = ""

    def render(self) -> str:
        fix = f"; fix: {self.fix}" if self.fix else ""
        return f"{self.status:<6}{self.subject}: {printable(self.text + fix, 1000)}"


# --- pure: the probe, parsers, judgements --------------------------------------------------------


def eicar() -> bytes:
    """The 68-byte EICAR anti-virus test file, put together from reversed pieces so that no file holds it."""
    pieces = ["*H+H$!ELIF-TSET", "-SURIVITNA-DRADNATS-RACIE$}7)CC7)^P(45XZP\\4[PA@%P!O5X"]
    return "".join(p[::-1] for p in reversed(pieces)).encode("ascii")


def probe() -> bytes:
    """A message that spamd must score as spam (GTUBE) and ClamAV must find a virus in (EICAR)."""
    msg = EmailMessage()
    msg["From"] = "mailfilter-check@localhost"
    msg["To"] = "postmaster@localhost"
    msg["Subject"] = "mailfilter check: GTUBE and EICAR test patterns"
    msg.set_content(f"The generic test for unsolicited bulk email:\n\n{GTUBE}\n")
    msg.add_attachment(eicar(), maintype="application", subtype="octet-stream", filename="eicar.com")
    return msg.as_bytes()


def _failure_fix(failure: ScanFailure, section: str, unavailable: str) -> str:
    return {
        Cause.UNAVAILABLE: unavailable,
        Cause.TIMEOUT: f"see why it is slow (its log, the load) or raise [{section}] timeout",
        Cause.ERROR: "read its log",
        Cause.TOO_LARGE: "raise its size limit",
    }[failure.cause]


def spam_line(outcome: SpamOutcome, config: SpamdConfig) -> Line:
    """spamd's verdict on the probe: only a spam score is OK."""
    where = _where(config.servers, config.host, config.port, config.socket)
    if isinstance(outcome, SpamReport):
        text = f"{where} scored GTUBE {outcome.score:g}/{outcome.threshold:g}"
        if outcome.is_spam:
            return Line(Status.OK, "spamd", f"{text}, spam")
        return Line(Status.FAIL, "spamd", f"{text}, not spam", "check SpamAssassin's rules and required_score")
    if isinstance(outcome, SpamSkipped):
        return Line(Status.FAIL, "spamd", f"not asked: {outcome.reason}", "raise [spamd] max_size")
    fix = _failure_fix(outcome, "spamd", "start spamd, or correct [spamd] host, port or socket")
    return Line(Status.FAIL, "spamd", f"{where}: {outcome.cause}: {outcome.text}", fix)


def virus_line(outcome: VirusOutcome, config: ClamdConfig) -> Line:
    """ClamAV's verdict on the probe: only EICAR found is OK."""
    if config.backend == "clamscan":
        subject, where, unavailable = "clamscan", config.clamscan[0], "install ClamAV, or correct [clamd] clamscan"
    else:
        where = _where(config.servers, config.host, config.port, "" if config.host else config.socket)
        subject, unavailable = "clamd", "start clamd (clamav-daemon), or correct [clamd] socket, host or port"
    if isinstance(outcome, ScanFailure):
        return Line(Status.FAIL, subject, f"{where}: {outcome.cause}: {outcome.text}", _failure_fix(outcome, "clamd", unavailable))
    if not outcome.infected:
        return Line(Status.FAIL, subject, f"{where} did not find EICAR", "check ClamAV's signature database (freshclam)")
    return Line(Status.OK, subject, f"{where} found EICAR: {', '.join(outcome.names)}")


def _where(servers: tuple[str, ...], host: str, port: int, path: str) -> str:
    """The server (or servers) a scanner's config names, as [spamd] servers writes them ("unix:" only in a pool)."""
    members = pool.members(servers, host, port, path)
    if len(members) == 1 and not servers:
        return path or f"{host}:{port}"
    return ", ".join(member.label for member in members)


def pool_configs(config: Config) -> list[Config]:
    """One config per pool member, so that `check` probes every one: the Nth spamd with the Nth clamd (the
    shorter pool's first member fills in, probed again but reported once)."""
    spamd, clamd = config.spamd.servers, config.clamd.servers if config.clamd.backend == "clamd" else ()
    if len(spamd) <= 1 and len(clamd) <= 1:
        return [config]
    out = []
    for i in range(max(len(spamd), len(clamd))):
        one = config
        if spamd:
            one = replace(one, spamd=replace(one.spamd, servers=(spamd[i if i < len(spamd) else 0],)))
        if clamd:
            one = replace(one, clamd=replace(one.clamd, servers=(clamd[i if i < len(clamd) else 0],)))
        out.append(one)
    return out


def signature_date(answer: str) -> datetime | None:
    """The database date in a version line such as `ClamAV 1.4.6/27460/Wed Nov 25 08:22:05 2026`, if it has one."""
    parts = answer.split("/", 2)
    if len(parts) < 3:
        return None
    try:
        return datetime.strptime(" ".join(parts[2].split()), "%a %b %d %H:%M:%S %Y")
    except ValueError:
        return None


def signature_line(answer: str, now: datetime) -> Line:
    """WARN when the signatures are older than STALE, or when ClamAV does not say how old they are."""
    fix = "check that freshclam runs (systemctl status clamav-freshclam)"
    date = signature_date(answer)
    if date is None:
        return Line(Status.WARN, "signatures", f"age unknown: ClamAV answers {answer!r}", fix)
    text = f"{answer}, {(now - date) / timedelta(days=1):.1f} days old"
    if now - date > STALE:
        return Line(Status.WARN, "signatures", f"{text}, more than {STALE.days}", fix)
    return Line(Status.OK, "signatures", text)


def user_line(uid: int) -> Line:
    """Who runs the check: the folder checks are only true for this user."""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    if uid == 0:
        text = "root: the folders below are writable for root, which says nothing of the filter's user; folders created now belong to root"
        return Line(Status.WARN, "user", text, "run the check as the filter's user: sudo -u mailfilter mailfilter check")
    return Line(Status.OK, "user", f"{name} (uid {uid})")


def parse_clamd_size(text: str) -> int:
    """A clamd.conf size in bytes: `26214400`, `512K`, `25M`, `2G` (either case)."""
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", text.strip())
    if not m:
        raise ValueError(f"not a clamd size: {text!r}")
    return int(m.group(1)) * SIZE_UNITS[m.group(2).upper()]


def stream_max_length(conf: str) -> int:
    """StreamMaxLength in bytes from the text of clamd.conf: the first setting wins (as clamd reads it), else the default."""
    for line in conf.splitlines():
        words = line.split(None, 1)
        if len(words) == 2 and words[0] == "StreamMaxLength":
            return parse_clamd_size(words[1])
    return STREAM_MAX_DEFAULT


# clamd.conf's limits and their defaults (clamd.conf(5), ClamAV 1.4): past one, clamd stops looking and, unless
# AlertExceedsMax is yes, answers OK, which nothing can tell from clean.
CLAMD_LIMITS = {"MaxRecursion": "17", "MaxFiles": "10000", "MaxScanSize": "400M", "MaxFileSize": "100M", "MaxScanTime": "120000"}


def clamd_setting(conf: str, name: str, default: str) -> str:
    """A setting from the text of clamd.conf: the first one wins (as clamd reads it), else DEFAULT."""
    for line in conf.splitlines():
        words = line.split(None, 1)
        if len(words) == 2 and words[0] == name:
            return words[1].strip()
    return default


def clamd_limits(conf: str, path: str) -> Line:
    """WARN when clamd's config (text CONF of PATH) would hide a scan that hit one of its limits."""
    limits = ", ".join(f"{name} {clamd_setting(conf, name, default)}" for name, default in CLAMD_LIMITS.items())
    alert, heuristic = clamd_setting(conf, "AlertExceedsMax", "no"), clamd_setting(conf, "HeuristicAlerts", "yes")
    if alert.lower() not in ("yes", "true", "1") or heuristic.lower() not in ("yes", "true", "1"):
        text = f"AlertExceedsMax {alert}, HeuristicAlerts {heuristic}: a message past clamd's limits ({limits}) is answered OK"
        text += "; mailfilter scans the parts of deep MIME itself, but not what lies past a limit inside a part"
        return Line(Status.WARN, "clamd limits", text, f"set AlertExceedsMax yes and HeuristicAlerts yes in {path}, then restart clamd")
    return Line(Status.OK, "clamd limits", f"AlertExceedsMax yes: a scan past a limit ({limits}) is held as unscannable")


def clamd_limit_lines(config: Config) -> Iterator[Line]:
    """The clamd limits line, when clamd's config file is readable (the clamd size line says when it is not)."""
    path = config.clamd.config_file
    if config.clamd.backend != "clamd" or not path:
        return
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            conf = fh.read()
    except OSError:
        return
    yield clamd_limits(conf, path)


def parse_postfix_time(text: str) -> int:
    """A Postfix time value in seconds: `300s`, `5m`, `1h`, `1d`, `1w`, or a bare number of seconds."""
    m = re.fullmatch(r"(\d+)([smhdw]?)", text.strip())
    if not m:
        raise ValueError(f"not a Postfix time value: {text!r}")
    return int(m.group(1)) * TIME_UNITS[m.group(2) or "s"]


@dataclass(frozen=True)
class PostfixLimits:
    """The Postfix settings that the filter's own limits must fit in."""

    message_size_limit: int  # bytes; 0 is no limit
    milter_content_timeout: int  # seconds
    command_time_limit: int  # seconds
    milter_default_action: str = "tempfail"  # what Postfix does when the milter does not answer in time

    @classmethod
    def parse(cls, values: Mapping[str, str]) -> PostfixLimits:
        """From postconf's values of POSTFIX_PARAMETERS; ValueError names a bad one."""
        size = values["message_size_limit"].strip()
        if not size.isdigit():
            raise ValueError(f"not a message_size_limit: {size!r}")
        timeouts = parse_postfix_time(values["milter_content_timeout"]), parse_postfix_time(values["command_time_limit"])
        return cls(int(size), *timeouts, values.get("milter_default_action", "tempfail").strip())


def milter_deadline(config: Config) -> float:
    """The milter's worst case from end of message to reply: the scanners at once, each bounded by its timeout,
    the pipeline's backstop, and the quarantine store's allowance (the admin report comes after the reply)."""
    return milterreply.worst_case(config)


def _limit(subject: str, ok: bool, left: str, relation: tuple[str, str], right: str, problem: str, fix: str) -> Line:
    """LEFT relation RIGHT: relation[0] when OK, relation[1] (with the problem and the fix) when not."""
    if ok:
        return Line(Status.OK, subject, f"{left} {relation[0]} {right}")
    return Line(Status.WARN, subject, f"{left} {relation[1]} {right}: {problem}", fix)


def coherence(postfix: PostfixLimits, stream_max: int | None, config: Config) -> list[Line]:
    """Compare Postfix's limits with clamd's StreamMaxLength (None: unknown) and the filter's own."""
    size = postfix.message_size_limit
    size_text = f"Postfix message_size_limit {size}" + ("" if size else " (no limit)")
    fits, below = ("<=", ">"), ("<", ">=")
    lines = []
    if stream_max is not None:
        problem = "clamd refuses the larger mail Postfix takes, and that mail stays deferred"
        fix = f"lower message_size_limit or raise StreamMaxLength in {config.clamd.config_file}"
        lines.append(_limit("clamd size", 0 < size <= stream_max, size_text, fits, f"clamd StreamMaxLength {stream_max}", problem, fix))
    max_size = config.milter.max_size
    problem = "the milter refuses (552) mail that Postfix takes"
    fix = "make [milter] max_size at least message_size_limit (only matters with the milter)"
    lines.append(_limit("milter size", 0 < size <= max_size, size_text, fits, f"[milter] max_size {max_size}", problem, fix))
    deadline, timeout = milter_deadline(config), postfix.milter_content_timeout
    store = milterreply.STORE_ALLOWANCE
    milter_time = _limit(
        "milter time",
        deadline < timeout,
        f"milter worst case {deadline:g} s (slower scanner timeout + {pipeline.BACKSTOP:g} s + {store:g} s quarantine store)",
        below,
        f"Postfix milter_content_timeout {timeout} s",
        "Postfix gives up first, applies milter_default_action, and the client's retry quarantines the message twice",
        "lower [spamd]/[clamd] timeout or raise milter_content_timeout (only matters with the milter)",
    )
    lines.append(replace(milter_time, status=Status.FAIL) if milter_time.status is Status.WARN else milter_time)
    if postfix.milter_default_action == "accept":
        problem = "a milter that is down or too slow lets mail in unscanned"
        fix = "set milter_default_action = tempfail (only matters with the milter)"
        lines.append(Line(Status.WARN, "milter default", f"Postfix milter_default_action = accept: {problem}", fix))
    from ..doors.pipe import worst_case

    longest, made_of = worst_case(config)
    limit = postfix.command_time_limit
    line = _limit(
        "pipe time",
        longest < limit,
        f"pipe worst case {longest:g} s ({made_of})",
        below,
        f"Postfix command_time_limit {limit} s",
        "pipe(8) may kill a filter that has delivered: Postfix defers the message and delivers it again",
        "lower [pipe] deadline, [delivery] timeout or [report] timeout, or raise command_time_limit",
    )
    lines.append(line if line.status is Status.OK else Line(Status.FAIL, line.subject, line.text, line.fix))
    return lines


# --- thin I/O ------------------------------------------------------------------------------------


def clamav_version(config: ClamdConfig) -> str:
    """ClamAV's version line: clamd's answer to VERSION, or `clamscan --version` for the clamscan backend."""
    if config.backend == "clamscan":
        argv = [*config.clamscan, "--version"]
        # argv: the configured clamscan and --version. No shell.
        return subprocess.run(argv, capture_output=True, text=True, timeout=config.timeout, check=True).stdout.strip()  # noqa: S603  # nosec B603
    server = pool.members(config.servers, config.host, config.port, "" if config.host else config.socket)[0]
    with server.connect(config.timeout) as sock:
        sock.sendall(b"zVERSION\0")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    return answer.rstrip(b"\0").decode("ascii", "replace").strip()


def scanner_lines(config: Config, now: datetime) -> Iterator[Line]:
    """The probe through the pipeline (spamd and ClamAV at once), on every member of a pool; then the age
    of ClamAV's signatures (on the first clamd that found EICAR)."""
    asked, versioned = set(), None
    for one in pool_configs(config):
        with Spool.of(probe()) as spool:
            results = pipeline.scan(spool, one)
        for line, key in (
            (spam_line(results.spam, one.spamd), ("spamd", one.spamd.servers)),
            (virus_line(results.virus, one.clamd), ("clamd", one.clamd.servers)),
        ):
            if key not in asked:
                asked.add(key)
                yield line
        if versioned is None and not isinstance(results.virus, ScanFailure):
            versioned = one.clamd
    if versioned is None:
        return  # its FAIL line says why; the version would not answer either
    try:
        answer = clamav_version(versioned)
    except (OSError, subprocess.SubprocessError) as exc:
        yield Line(Status.WARN, "signatures", f"age unknown: cannot ask ClamAV its version: {exc}", "read ClamAV's log")
        return
    yield signature_line(answer, now)


def _reason(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def folder_line(subject: str, path: str) -> Line:
    """Create PATH if missing (0700, as the filter does), then write and remove a hidden file in it."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".mailfilter-check-") as fh:
            fh.write(b"mailfilter check\n")
            fh.flush()
    except FileExistsError:
        reason = "exists but is not a folder"
    except OSError as exc:
        reason = _reason(exc)
    else:
        return Line(Status.OK, subject, f"{path} is writable")
    fix = f"make it a folder the filter's user can write: install -d -o mailfilter -m 0700 {path}"
    return Line(Status.FAIL, subject, f"{path}: {reason}", fix)


def store_line(subject: str, dsn: str) -> Line:
    """A PostgreSQL store: reachable, and its schema at this mailfilter's version."""
    from .. import pg

    try:
        found = pg.check(dsn)
    except ImportError:
        return Line(Status.FAIL, subject, "psycopg is not installed", "install mailfilter with its dependencies (psycopg[binary])")
    except pg.DatabaseError as exc:
        return Line(Status.FAIL, subject, str(exc), "start PostgreSQL or correct the DSN (its password belongs in ~/.pgpass)")
    if found != pg.SCHEMA_VERSION:
        fix = "run `mailfilter db init`" if found == 0 else "run `mailfilter db upgrade`"
        return Line(Status.FAIL, subject, f"{pg.where(dsn)}: schema version {found}, this mailfilter needs {pg.SCHEMA_VERSION}", fix)
    return Line(Status.OK, subject, f"{pg.where(dsn)}: schema version {found}")


def sendmail_line(argv: tuple[str, ...]) -> Line:
    path = argv[0]
    if not os.path.isfile(path):
        return Line(Status.FAIL, "sendmail", f"{path} does not exist", "install Postfix, or correct [delivery] sendmail")
    if not os.access(path, os.X_OK):
        return Line(Status.FAIL, "sendmail", f"{path} is not executable", "correct [delivery] sendmail")
    return Line(Status.OK, "sendmail", f"{path} is executable")


def postconf(environ: Mapping[str, str], command: str = POSTCONF) -> dict[str, str]:
    """POSTFIX_PARAMETERS as `postconf -hx` prints them, from $MAIL_CONFIG when set; ValueError when it cannot tell."""
    where = ["-c", environ["MAIL_CONFIG"]] if environ.get("MAIL_CONFIG") else []
    try:
        # argv: the fixed postconf path, an optional -c MAIL_CONFIG and parameter names. No shell.
        argv = [command, *where, "-hx", *POSTFIX_PARAMETERS]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)  # noqa: S603  # nosec B603
    except (OSError, subprocess.SubprocessError) as exc:
        raise ValueError(f"cannot run {command}: {_reason(exc)}") from None
    values = proc.stdout.splitlines()
    if proc.returncode != 0 or len(values) != len(POSTFIX_PARAMETERS):
        said = proc.stderr.strip().splitlines()
        raise ValueError(said[-1] if said else f"{command}: exit status {proc.returncode}")
    return dict(zip(POSTFIX_PARAMETERS, values, strict=True))


def limit_lines(config: Config, environ: Mapping[str, str], command: str = POSTCONF) -> Iterator[Line]:
    """Postfix's limits (through postconf) against clamd's StreamMaxLength and the filter's own."""
    try:
        postfix = PostfixLimits.parse(postconf(environ, command))
    except ValueError as exc:
        yield Line(Status.WARN, "postfix", f"limits not checked: {exc}", "install Postfix, or set MAIL_CONFIG to its config folder")
        return
    stream_max = None
    path = config.clamd.config_file
    if config.clamd.backend == "clamd" and path:
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                stream_max = stream_max_length(fh.read())
        except (OSError, ValueError) as exc:
            fix = "set [clamd] config_file to clamd's config ('' when clamd runs on another host)"
            yield Line(Status.WARN, "clamd size", f"StreamMaxLength not checked: {path}: {_reason(exc)}", fix)
    yield from coherence(postfix, stream_max, config)


def worker_line(config: Config, environ: Mapping[str, str]) -> Line:
    """Whether a `mailfilter worker` takes this config's pipe messages: a real round trip (a --help request)."""
    import io

    from ..doors import pipeclient

    if not config.pipe.worker:
        return Line(Status.OK, "pipe worker", "not used ([pipe] worker = '')")
    argv = ([] if config.source == "(defaults)" else ["--config", config.source]) + ["pipe", "--help"]
    try:
        status, text = pipeclient.hand_off(argv, io.BytesIO(b""), environ)
    except pipeclient.NoWorker as exc:
        if str(exc).startswith("not using the pipe worker socket"):
            fix = "put [pipe] worker in a folder only the filter's user (and root) can write, e.g. /run/mailfilter-pipe (0700)"
            return Line(Status.FAIL, "pipe worker", f"{exc}; every pipe process filters its message itself", fix)
        if not str(exc):
            return Line(Status.OK, "pipe worker", f"none on {config.pipe.worker}: each `mailfilter pipe` filters its message itself")
        return Line(Status.WARN, "pipe worker", str(exc), "run `mailfilter worker` as pipe(8)'s user, with this config and MAIL_CONFIG")
    if status != 0 or not (text or "").startswith("usage: "):
        return Line(Status.FAIL, "pipe worker", f"{config.pipe.worker} answers {status}: {text}", "restart it; read its log")
    return Line(Status.OK, "pipe worker", f"answers on {config.pipe.worker}")


def checks(config: Config, environ: Mapping[str, str], now: datetime) -> Iterator[Line]:
    """Every check after the config's, in order; each line as soon as it is known."""
    yield user_line(os.geteuid())
    yield from scanner_lines(config, now)
    if config.quarantine.store:
        yield store_line("quarantine store", config.quarantine.store)
    else:
        yield folder_line("quarantine", config.quarantine.dir)
    yield folder_line("state", config.report.state_dir)
    if config.report.journal_dir:
        yield folder_line("journal", config.report.journal_dir)
    if config.report.journal_store:
        yield store_line("journal store", config.report.journal_store)
    yield sendmail_line(config.delivery.sendmail)
    yield worker_line(config, environ)
    from .smtpcheck import smtp_lines  # here: it imports Line and Status from this module

    yield from smtp_lines(config, environ)
    from .policycheck import policy_lines

    yield from policy_lines(config)
    yield from limit_lines(config, environ)
    yield from clamd_limit_lines(config)


@click.command()
@click.pass_obj
def check(obj: Any) -> None:
    """Self-test: config, spamd, ClamAV and its signatures, folders, sendmail, limits against Postfix's.

    One line per check: OK; WARN (it works, but look at it); FAIL (mail cannot be filtered as
    configured), each problem with what to do. spamd must score GTUBE as spam and ClamAV find
    EICAR, through the code that scans mail. Postfix's values come from postconf ($MAIL_CONFIG
    when set). Run it as the filter's user.

    Exit status: 0 when every line is OK or WARN, 1 when any line is FAIL.
    """
    try:
        config = obj.load()
    except click.ClickException as exc:
        click.echo(Line(Status.FAIL, "config", exc.format_message(), "correct it; `mailfilter config --defaults` lists every key").render())
        sys.exit(1)
    click.echo(Line(Status.OK, "config", config.source).render())
    failed = False
    for line in checks(config, os.environ, datetime.now()):
        click.echo(line.render())
        failed = failed or line.status is Status.FAIL
    sys.exit(1 if failed else 0)
