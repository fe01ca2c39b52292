"""`mailfilter check`'s lines for the per-recipient policy: sender list files, the attachment check."""

from __future__ import annotations

from collections.abc import Iterator

from ..config import Config
from .check import Line, Status


def policy_lines(config: Config) -> Iterator[Line]:
    from .. import senders

    for key in ("allow_file", "block_file"):
        path = getattr(config.senders, key)
        if not path:
            continue
        problem = senders.check_file(path)
        if problem:
            fix = f"make {path} a readable file of entries (address, domain or .domain), one a line; until then the last good list is used"
            yield Line(Status.WARN, f"senders {key}", problem, fix)
        else:
            yield Line(Status.OK, f"senders {key}", f"{path}: {len(senders.SenderList((), path))} entries")
    attachments = config.attachments
    in_use = attachments.action != "allow" or any(table.banned not in (None, "allow") for _, table in config.recipients)
    if not in_use:
        return
    try:
        import magic

        found = magic.from_buffer(b"MZ" + bytes(62), mime=True)
    except Exception as exc:  # noqa: BLE001 - anything here means the type check cannot run
        fix = "install libmagic1 (apt-get install libmagic1) and python-magic"
        yield Line(Status.FAIL, "attachments", f"libmagic cannot be used ({exc}): banned types cannot be checked", fix)
        return
    types, extensions = len(attachments.banned_types), len(attachments.banned_extensions)
    yield Line(Status.OK, "attachments", f"{extensions} extensions and {types} types banned (libmagic answers: {found})")
