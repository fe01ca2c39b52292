"""The quarantine list page: filters (reason, recipient, sender, date) and paging over the store's entries."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from urllib.parse import urlencode

from ..actions.held import Entry
from ..actions.quarantine import FolderStore
from ..record import dataclass

PER_PAGE = 50
REASONS = ("", "spam", "virus", "unscannable")


@dataclass(frozen=True)
class Query:
    reason: str = ""
    recipient: str = ""
    sender: str = ""
    day: date | None = None
    page: int = 1

    @classmethod
    def of(cls, params: Mapping[str, str]) -> Query:
        """The filters from a query string; a value that makes no sense is ignored, never an error page."""
        reason = params.get("reason", "")
        try:
            day = date.fromisoformat(params.get("date", "")) if params.get("date") else None
        except ValueError:
            day = None
        try:
            page = max(1, min(int(params.get("page", "1")), 1_000_000))
        except ValueError:
            page = 1
        return cls(
            reason=reason if reason in REASONS else "",
            recipient=params.get("recipient", "")[:300].strip(),
            sender=params.get("sender", "")[:300].strip(),
            day=day,
            page=page,
        )

    def matches(self, entry: Entry) -> bool:
        if self.reason and entry.reason != self.reason:
            return False
        if self.day and entry.created.date() != self.day:
            return False
        if self.sender and self.sender.lower() not in entry.sender.lower():
            return False
        return not self.recipient or any(self.recipient.lower() in r.lower() for r in entry.recipients)

    def link(self, page: int) -> str:
        """The query string of PAGE with the same filters."""
        values = {
            "reason": self.reason,
            "recipient": self.recipient,
            "sender": self.sender,
            "date": self.day.isoformat() if self.day else "",
        }
        return "?" + urlencode({**{k: v for k, v in values.items() if v}, "page": page})


@dataclass(frozen=True)
class Page:
    entries: list[Entry]
    total: int  # entries matching the filters
    number: int
    pages: int
    skipped: int  # bad entries (see held.py), not listed


def page(store: FolderStore, query: Query) -> Page:
    good, bad = store.entries()
    matching = [entry for entry in good if query.matches(entry)]
    pages = max(1, -(-len(matching) // PER_PAGE))
    number = min(query.page, pages)
    start = (number - 1) * PER_PAGE
    return Page(matching[start : start + PER_PAGE], len(matching), number, pages, len(bad))
