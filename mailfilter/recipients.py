"""[recipients."DOMAIN"] and [recipients."ADDRESS"]: the policy of some recipients, and who gets which.

A table names a domain (every recipient at it; "sub.example.org" only if listed itself) or one address
(its keys override its domain's). Every key is optional: what a table leaves out comes from the domain's
table, then from the global sections ([quarantine] spam_score, [policy] ..., [attachments] action,
[spamd] user). Matching is case-insensitive, on the envelope recipient as Postfix hands it over (after
its rewriting). Pure: parse() checks the tables once, at load; rule_for() resolves a recipient.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

from .record import dataclass, fields

# what a key may be: a domain (labels of letters, digits, hyphens; IDNs in their A-label form) or LOCAL@DOMAIN
_DOMAIN = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.?")
VIRUS = ("quarantine", "reject", "hold")
BANNED = ("quarantine", "reject", "allow")


@dataclass(frozen=True)
class Table:
    """One [recipients."…"] table as written: None is a key it leaves out."""

    spam_score: float | None = None  # quarantine at or above ([quarantine] spam_score)
    spam_reject_score: float | None = None  # reject at or above ([policy] spam_reject_score)
    virus: str | None = None  # 'quarantine', 'reject' or 'hold' (the milter's; other doors quarantine)
    subject_tag: str | None = None  # ([policy] subject_tag)
    bypass_spam: bool | None = None  # true: no spamd for these recipients (the virus scan always runs)
    banned: str | None = None  # 'quarantine', 'reject' or 'allow' ([attachments] action)
    spamd_user: str | None = None  # spamd's User for them ([spamd] user)


DOCS = {
    "spam_score": "quarantine spam at or above this score (overrides [quarantine] spam_score)",
    "spam_reject_score": "reject spam at or above this score (overrides [policy] spam_reject_score)",
    "virus": "'quarantine', 'reject' or 'hold' (overrides [policy] virus, and [milter] virus in the milter; hold is the milter's)",
    "subject_tag": "put before the Subject of delivered spam (overrides [policy] subject_tag)",
    "bypass_spam": "true: no spamd for these recipients (the virus scan always runs)",
    "banned": "a banned attachment: 'quarantine', 'reject' or 'allow' (overrides [attachments] action)",
    "spamd_user": "spamd's User for them (overrides [spamd] user)",
}
KINDS = {"spam_score": "float", "spam_reject_score": "float", "virus": "str", "subject_tag": "str", "bypass_spam": "bool"}
KINDS |= {"banned": "str", "spamd_user": "str"}


@dataclass(frozen=True)
class Rule:
    """The effective policy of one recipient: every key resolved."""

    spam_score: float
    spam_reject_score: float
    virus: str
    subject_tag: str
    bypass_spam: bool
    banned: str
    spamd_user: str


def valid_key(key: str) -> bool:
    local, at, domain = key.rpartition("@")
    if at and (not local or len(local) > 64 or any(c.isspace() or c in '<>,;"' for c in local)):
        return False
    return len(domain) <= 253 and _DOMAIN.fullmatch(domain) is not None


def parse(data: Any, source: str) -> tuple[tuple[str, Table], ...]:
    """The [recipients] tables of a config file, checked: ((lowercase key, Table), ...)."""
    from .configkeys import ConfigError, _convert, _header_text, _one_of, _score, _user

    checks = {"spam_score": _score, "spam_reject_score": _score, "virus": _one_of(*VIRUS), "subject_tag": _header_text}
    checks |= {"banned": _one_of(*BANNED), "spamd_user": _user}
    if not isinstance(data, dict):
        raise ConfigError(f'{source}: [recipients] must hold tables, as [recipients."example.org"]')
    tables: dict[str, Table] = {}
    for name, table in data.items():
        where = f'{source}: [recipients."{name}"]'
        key = name.lower().rstrip(".")
        if not valid_key(key):
            raise ConfigError(f"{where}: not a domain or an address")
        if key in tables:
            raise ConfigError(f"{where}: given twice (keys are case-insensitive)")
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: must be a table of keys (known: {', '.join(KINDS)})")
        values = {}
        for item, given in table.items():
            if item not in KINDS:
                raise ConfigError(f"{where} {item}: unknown key (known: {', '.join(KINDS)})")
            value = _convert(f"{where} {item}", given, KINDS[item])
            check = checks.get(item)
            problem = check(value) if check else None
            if problem:
                raise ConfigError(f"{where} {item}: {problem}, got {value!r}")
            values[item] = value
        tables[key] = Table(**values)
    return tuple(tables.items())


def describe() -> Iterator[str]:
    """The commented example `config --defaults` ends with."""
    yield "# Per-recipient policy: a table per domain or address (an address's keys override its domain's);"
    yield "# every key is optional and defaults to the global one. For example:"
    yield '# [recipients."example.org"]'
    for name, doc in DOCS.items():
        yield f"# {name}: {doc}"
    yield ""


def rule_for(recipient: str, base: Rule, tables: Mapping[str, Table]) -> Rule:
    """The policy of RECIPIENT: BASE, overridden by its domain's table, then by its address's."""
    address = recipient.strip().lower()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    domain = address.rpartition("@")[2].rstrip(".")
    merged = {f.name: getattr(base, f.name) for f in fields(Rule)}
    for found in (tables.get(domain), tables.get(address) if "@" in address else None):
        if found is not None:
            merged.update({name: value for name, value in vars(found).items() if value is not None})
    return Rule(**merged)


def base_rule(config: Any, door: str) -> Rule:
    """The global policy a door starts from (the milter's virus default is its own [milter] virus)."""
    virus = config.milter.virus if door == "milter" else config.policy.virus
    spam_score = config.quarantine.spam_score
    return Rule(
        spam_score=spam_score if not math.isnan(spam_score) else math.inf,
        spam_reject_score=config.policy.spam_reject_score,
        virus=virus,
        subject_tag=config.policy.subject_tag,
        bypass_spam=False,
        banned=config.attachments.action,
        spamd_user=config.spamd.user,
    )
