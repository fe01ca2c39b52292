"""A message whose recipients the policy splits, carried out by a door that gives one answer.

pipe(8) takes one exit status per message and SMTP one reply after DATA, so the groups of
policy.plan() are reduced to what such a door can do (pure):

- one group: its decision, as it is;
- a group that defers (a scanner down, tempfail policy): the whole message is deferred before
  anything is delivered, so nothing needs remembering;
- every group rejects: the message is rejected (the first group's DSN);
- otherwise the groups that reject have their copy quarantined, and each group is delivered or
  quarantined on its own. If a later group fails after an earlier one was sealed, the door defers
  and remembers what was sealed (actions/splitlog.py), so that Postfix's retry skips it.

The milter answers per message too but can drop recipients (delrcpt): it uses plan() itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from .model import Action, Decision, Envelope, Group
from .record import replace

LOG = logging.getLogger("mailfilter")  # log.LOGGER; log.py is not imported on the pipe's path

SEALING = (Action.DELIVER, Action.QUARANTINE)


def for_one_answer(groups: tuple[Group, ...]) -> tuple[Group, ...]:
    """GROUPS as a door with one answer per message carries them out (see the module's text)."""
    if len(groups) <= 1:
        return groups
    deferred = next((g for g in groups if g.decision.action is Action.TEMPFAIL), None)
    if deferred is not None:
        return (Group(tuple(r for g in groups for r in g.recipients), deferred.decision),)
    if all(g.decision.action is Action.REJECT for g in groups):
        return (Group(tuple(r for g in groups for r in g.recipients), groups[0].decision),)
    carried = []
    for group in groups:
        if group.decision.action is Action.REJECT:
            decision = replace(group.decision, action=Action.QUARANTINE, dsn=None)
            carried.append(Group(group.recipients, decision))
        else:
            carried.append(group)
    return tuple(carried)


def warn(groups: tuple[Group, ...], failures: tuple, logger: logging.Logger, queue_id: str) -> None:
    """Log the scanners' failures and each group's warnings, once each, before anything is carried out."""
    for failure in failures:
        logger.warning("%s: %s", queue_id, failure.describe())
    for warning in dict.fromkeys(w for group in groups for w in group.decision.warnings):
        logger.warning("%s: %s", queue_id, warning)


def carry(
    envelope: Envelope,
    groups: tuple[Group, ...],
    before: Mapping[str, str],
    seal: Callable[[Envelope, Decision], str | None],
    record: Callable[[tuple[str, ...], str], None],
) -> list[tuple[Envelope, Group, str | None]]:
    """Carry out each group (for_one_answer's) for its recipients not sealed BEFORE: SEAL delivers or
    quarantines one part (the quarantine id, or None when delivered), RECORD notes it sealed before the next
    group is tried. An exception from SEAL stops here (the door defers; what was recorded is skipped next time).
    Returns (the part's envelope, its group, its quarantine id) for each group carried out now.

    RECORD failing (OSError: the state folder full or read-only) does not stop anything: the group is sealed
    all the same, and deferring now would deliver it twice on the retry for certain. The next groups are
    carried out; only if one of them fails too does the retry repeat the unrecorded group (logged here)."""
    done = []
    for group in groups:
        todo = tuple(r for r in group.recipients if r not in before)
        if not todo:
            continue
        part = replace(envelope, recipients=todo)
        quarantine_id = seal(part, group.decision)
        what = f"quarantined {quarantine_id}" if quarantine_id else "delivered"
        try:
            record(todo, what)
        except OSError as exc:
            LOG.error(
                "%s: %s %s, but the split log cannot be written (if a later group fails, the retry repeats this one): %s",
                envelope.queue_id or "NOQUEUE",
                ", ".join(todo),
                what,
                exc,
            )
        done.append((part, Group(todo, group.decision), quarantine_id))
    return done
