"""The one table of numbers that leave or enter the filter.

- What a pipe(8) exit status means to Postfix, and which ones we may use.
- What a clamscan exit status means, in words, for logs and admin reports.
"""

from __future__ import annotations

from .model import Action

# pipe(8): 0 delivered, 75 (EX_TEMPFAIL) defers, 69 (EX_UNAVAILABLE) bounces.
# Every other status bounces too, so no other one may ever leave `pipe`.
EX_OK = 0
EX_UNAVAILABLE = 69
EX_TEMPFAIL = 75
PIPE_EXIT_STATUSES = frozenset({EX_OK, EX_UNAVAILABLE, EX_TEMPFAIL})

PIPE_EXIT_BY_ACTION = {
    Action.DELIVER: EX_OK,
    Action.QUARANTINE: EX_OK,
    Action.REJECT: EX_UNAVAILABLE,
    Action.TEMPFAIL: EX_TEMPFAIL,
    Action.HOLD: EX_TEMPFAIL,  # the milter's alone, never decided for pipe; were it, the message would stay queued
}

# clamscan's exit statuses. Current clamscan documents 0, 1 and 2; the rest are
# the legacy codes of older releases that admins still find in old scripts.
CLAMSCAN_CODES = {
    0: "no virus found",
    1: "virus(es) found",
    2: "an error occurred",
    40: "unknown option passed",
    50: "database initialization error",
    52: "not supported file type",
    53: "can't open directory",
    54: "can't open file",
    55: "error reading file",
    56: "can't stat input file or directory",
    57: "can't get absolute path name of current working directory",
    58: "I/O error, check your filesystem",
    59: "can't get information about current user from /etc/passwd",
    60: "can't get information about user clamav (default name) from /etc/passwd",
    61: "can't fork",
    63: "can't create temporary files/directories (check permissions)",
    64: "can't write to temporary directory (please specify another one)",
    70: "can't allocate and clear memory (calloc)",
    71: "can't allocate memory (malloc)",
}


def clamscan_code_text(code: int | None) -> str:
    """The human meaning of a clamscan exit status (or of a signal death)."""
    if code is None:
        return "no exit status (the scanner did not run to completion)"
    if code < 0:
        return f"killed by signal {-code}"
    text = CLAMSCAN_CODES.get(code)
    if text is None:
        return f"unknown error (exit status {code} is not a known clamscan code)"
    return text
