"""`mailfilter report`: one day of the journal, summed up for the admin.

summarize() turns a day's journal events into a Summary; text() and mail()
render it. All three are pure: events, a date and a hostname in, text or a
MIME message out. Everything taken from messages (addresses, virus names) is
escaped with message.printable(), so a hostile sender can add neither a line
nor a header. The command itself only reads the journal and the size of the
quarantine, and hands the mail to sendmail. matplotlib is imported only to
draw the chart of a mailed report.
"""

from __future__ import annotations

import io
import math
import os
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import TYPE_CHECKING, Any

import click

from .. import journal, metrics
from ..actions import reinject
from ..config import Config, ReportConfig
from ..message import header_value, printable
from ..model import Verdict
from ..record import dataclass, field

if TYPE_CHECKING:
    from ..cli import Context

VERDICTS = tuple(v.value for v in Verdict)
ACTIONS = ("deliver", "quarantine", "hold", "reject", "tempfail")  # hold: the milter's [milter] virus = "hold"
TOP = 10  # rows of a top list
BAR_WIDTH = 50  # marks in the busiest hour's text bar
MARKS = {"clean": "#", "spam": "s", "virus": "V", "unscannable": "u", "banned": "b", "error": "!"}
COLOURS = {"clean": "#4c9a2a", "spam": "#e69f00", "virus": "#d62728", "unscannable": "#9467bd", "banned": "#8c564b", "error": "#7f7f7f"}


@dataclass(frozen=True)
class Summary:
    """What one day of the journal says. Strings are as journaled: text() escapes them."""

    day: date
    hostname: str
    total: int
    verdicts: Counter[str]
    actions: Counter[str]
    viruses: Counter[str]
    spam_senders: Counter[str]
    failures: Counter[str]  # "scanner:cause"
    unscanned: Counter[str]  # scanner
    quarantined: int  # messages added to the quarantine that day
    quarantined_bytes: int
    quarantine_now: tuple[int, int]  # (messages, bytes) held when the report was made
    hourly: dict[str, list[int]]  # verdict -> 24 counts, hours in UTC
    hosts: Counter[str] = field(default_factory=Counter)  # messages by MX host: a fleet's journal ([report] journal_store)
    banned: Counter[str] = field(default_factory=Counter)  # "part: why" of the banned attachments
    sender_rules: Counter[str] = field(default_factory=Counter)  # "allow ENTRY" / "block ENTRY": [senders] hits


def summarize(events: list[dict[str, Any]], day: date, hostname: str, quarantine_now: tuple[int, int]) -> Summary:
    """Count the events of DAY (see journal.event for their fields)."""
    verdicts: Counter[str] = Counter()
    actions: Counter[str] = Counter()
    viruses: Counter[str] = Counter()
    spam_senders: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    unscanned: Counter[str] = Counter()
    hourly = {verdict: [0] * 24 for verdict in VERDICTS}
    hosts: Counter[str] = Counter(str(event["host"]) for event in events if event.get("host"))
    banned: Counter[str] = Counter(str(part) for event in events for part in event.get("banned") or ())
    sender_rules: Counter[str] = Counter(str(event["sender_rule"]) for event in events if event.get("sender_rule"))
    quarantined = quarantined_bytes = 0
    for event in events:
        verdict = str(event.get("verdict"))
        verdicts[verdict] += 1
        actions[str(event.get("action"))] += 1
        viruses.update(event.get("virus_names") or ())
        failures.update(event.get("failures") or ())
        unscanned.update(event.get("unscanned") or ())
        if verdict == Verdict.SPAM:
            spam_senders[event.get("sender") or ""] += 1
        if event.get("quarantine_id"):
            quarantined += 1
            quarantined_bytes += event.get("size") or 0
        if verdict in hourly:
            hourly[verdict][datetime.fromisoformat(event["time"]).astimezone(UTC).hour] += 1
    return Summary(
        day=day,
        hostname=hostname,
        total=len(events),
        verdicts=verdicts,
        actions=actions,
        viruses=viruses,
        spam_senders=spam_senders,
        failures=failures,
        unscanned=unscanned,
        quarantined=quarantined,
        quarantined_bytes=quarantined_bytes,
        quarantine_now=quarantine_now,
        hourly=hourly,
        hosts=hosts,
        banned=banned,
        sender_rules=sender_rules,
    )


def subject(summary: Summary) -> str:
    """The mail's Subject, and the first line of the text."""
    return f"mailfilter daily report for {summary.day} on {summary.hostname}"


def text(summary: Summary, bars: bool = True) -> str:
    """The report as text; BARS draws messages per hour as text bars, else points to the chart."""
    s = summary
    lines = [f"{printable(subject(s))} (UTC)", ""]
    if s.total:
        lines.append(f"Messages filtered: {s.total} (a deferred message counts once per attempt)")
        lines += _table("By verdict", s.verdicts, VERDICTS)
        lines += _table("By action", s.actions, ACTIONS)
        if s.hosts:
            lines += _table("By host", s.hosts, ())
        lines += _top("Top viruses", s.viruses, str)
        lines += _top("Banned attachments (part: why)", s.banned, str)
        lines += _top("Sender list hits ([senders])", s.sender_rules, str)
        lines += _top("Top spam senders", s.spam_senders, lambda sender: f"<{sender}>")
        lines += _top("Scanner failures (scanner:cause)", s.failures, str)
        lines += _top('Delivered unscanned (on_error = "accept"), by scanner', s.unscanned, str)
    else:
        lines.append(f"No messages were filtered on {s.day}.")
    held, held_bytes = s.quarantine_now
    lines += [
        "",
        "Quarantine",
        f"  added:     {s.quarantined} message(s), {_size(s.quarantined_bytes)}",
        f"  held now:  {held} message(s), {_size(held_bytes)}",
    ]
    if s.total:
        lines.append("")
        lines += _bars(s.hourly) if bars else ["Messages per hour: see the chart."]
    return "\n".join(lines) + "\n"


def _table(title: str, counts: Counter[str], names: tuple[str, ...]) -> list[str]:
    """Every name of NAMES (zeros too, so days compare at a glance), then any unexpected one."""
    extra = sorted(set(counts) - set(names))
    return ["", title] + [f"  {printable(name, 40):<12}{counts[name]:>7}" for name in (*names, *extra)]


def _top(title: str, counts: Counter[str], label: Callable[[str], str]) -> list[str]:
    """The TOP most frequent values (ties in alphabetical order), and how many more there were."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    if not ranked:
        return ["", title, "  (none)"]
    lines = ["", title] + [f"  {n:>7}  {printable(label(value), 300)}" for value, n in ranked[:TOP]]
    rest = ranked[TOP:]
    if rest:
        lines.append(f"  ({len(rest)} more with {sum(n for _, n in rest)} in all)")
    return lines


def _bars(hourly: dict[str, list[int]]) -> list[str]:
    """One stacked text bar per hour; a verdict seen at all gets at least one mark."""
    busiest = max(sum(counts[hour] for counts in hourly.values()) for hour in range(24))
    per_mark = max(1, math.ceil(busiest / BAR_WIDTH))
    legend = "  ".join(f"{mark} {verdict}" for verdict, mark in MARKS.items())
    lines = [f"Messages per hour (UTC), one mark = {per_mark} message(s): {legend}"]
    for hour in range(24):
        total = sum(counts[hour] for counts in hourly.values())
        bar = "".join(MARKS[verdict] * math.ceil(counts[hour] / per_mark) for verdict, counts in hourly.items())
        lines.append(f"  {hour:02d} {total:>6} {bar}".rstrip())
    return lines


def _size(n: int) -> str:
    """N bytes in words: 950 bytes, 12.3 kB, 4.5 MB, 1.2 GB."""
    if n < 1000:
        return f"{n} bytes"
    power = min(int(math.log10(n)) // 3, 3)
    return f"{n / 1000**power:.1f} {('kB', 'MB', 'GB')[power - 1]}"


def chart(summary: Summary) -> bytes:
    """A PNG of messages per hour, stacked by verdict (matplotlib's Agg canvas, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 3.6), dpi=100, layout="constrained")
    axes = figure.subplots()
    bottom = [0] * 24
    for verdict, counts in summary.hourly.items():
        axes.bar(range(24), counts, bottom=bottom, width=0.8, color=COLOURS[verdict], label=verdict)
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    axes.set(
        title=f"Messages per hour by verdict, {summary.day}",
        xlabel="hour (UTC)",
        ylabel="messages",
        xticks=range(24),
        xlim=(-0.6, 23.6),
    )
    axes.yaxis.get_major_locator().set_params(integer=True)
    axes.set_ylim(0, max(1, *bottom) * 1.08)  # room above the busiest hour
    axes.grid(axis="y", alpha=0.3)
    axes.set_axisbelow(True)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    out = io.BytesIO()
    FigureCanvasAgg(figure).print_png(out)
    return out.getvalue()


def mail(summary: Summary, config: ReportConfig, now: datetime) -> bytes:
    """The mailed report: text/plain, plus the chart as an inline image/png when there was mail.

    The header holds only our own values (configuration, hostname, date).
    """
    msg = EmailMessage()
    msg["From"] = f"mailfilter <{header_value(config.sender)}>"
    msg["To"] = header_value(config.admin)
    msg["Subject"] = header_value(subject(summary))
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = make_msgid("mailfilter", domain=header_value(summary.hostname, 200))
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(text(summary, bars=False))
    if summary.total:
        png = chart(summary)
        msg.add_attachment(png, maintype="image", subtype="png", disposition="inline", filename=f"mailfilter-{summary.day}.png")
    return msg.as_bytes()


def _events(config: Config, since: datetime, until: datetime) -> tuple[list[dict[str, Any]], str]:
    """The day's events and whose they are: the fleet's from [report] journal_store, else this host's folder."""
    if config.report.journal_store:
        from .. import pg, pgjournal

        try:
            events = list(pgjournal.read(config.report.journal_store, since, until))
        except pg.DatabaseError as exc:
            raise click.ClickException(f"cannot read the journal: {exc}") from None
        hosts = len({event.get("host") for event in events})
        return events, f"the fleet ({hosts} host{'' if hosts == 1 else 's'})"
    if not config.report.journal_dir:
        raise click.ClickException('[report] journal_dir is "": no journal is kept, so there is nothing to report')
    try:
        return list(journal.read(config.report.journal_dir, since, until)), os.uname().nodename
    except OSError as exc:
        raise click.ClickException(f"cannot read the journal in {config.report.journal_dir}: {exc.strerror or exc}") from None


def _usage(config: Config) -> tuple[int, int]:
    """(messages, bytes) held in the quarantine the config names."""
    if not config.quarantine.store:
        return metrics.quarantine_usage(metrics.held_at(config.quarantine))
    from ..actions.quarantine import QuarantineError, open_store

    try:
        return open_store(config.quarantine).usage()
    except QuarantineError as exc:
        raise click.ClickException(f"cannot count the quarantine: {exc}") from None


@click.command("report")
@click.option("--date", "day", type=click.DateTime(["%Y-%m-%d"]), metavar="YYYY-MM-DD", help="The UTC day (default: yesterday).")
@click.option("--send", is_flag=True, help="Mail it to [report] admin (with a chart) instead of printing it.")
@click.pass_obj
def report(obj: Context, day: datetime | None, send: bool) -> None:
    """Sum up one day of the journal: verdicts, actions, top viruses and spam senders,
    scanner failures, unscanned deliveries, the quarantine, and messages per hour.

    \b
    Run it after midnight UTC, from cron or a systemd timer:
      mailfilter report --send
    Exit status: 0 printed or sent, 1 the journal unreadable or sendmail failing.
    """
    config = obj.load()
    now = datetime.now(UTC)
    wanted = day.date() if day else now.date() - timedelta(days=1)
    since = datetime.combine(wanted, time(), UTC)
    events, hostname = _events(config, since, since + timedelta(days=1))
    summary = summarize(events, wanted, hostname, _usage(config))
    if not send:
        click.echo(text(summary), nl=False)
        return
    if not config.report.admin:
        raise click.ClickException('[report] admin is "": nobody to send the report to')
    try:
        reinject.sendmail(mail(summary, config.report, now), config.report.sender, [config.report.admin], config.delivery)
    except reinject.DeliveryError as exc:
        raise click.ClickException(f"report not sent: {exc}") from None
