"""Hand a message back to Postfix with sendmail: never -t, never a shell."""

from __future__ import annotations

import subprocess  # nosec B404
from collections.abc import Sequence

from ..config import DeliveryConfig
from ..model import Envelope


class DeliveryError(Exception):
    """sendmail did not accept the message."""


def sendmail_argv(sendmail: Sequence[str], sender: str, recipients: Sequence[str]) -> list[str]:
    """The exact argv: -G (not a submission), -i (a lone dot is data), -f SENDER, and
    `--` so that no recipient, however it is spelled, can be read as an option."""
    return [*sendmail, "-G", "-i", "-f", sender, "--", *recipients]


def sendmail(message: bytes, sender: str, recipients: Sequence[str], config: DeliveryConfig) -> None:
    """Run sendmail with MESSAGE on stdin; raise DeliveryError unless it exits 0.

    The environment is passed on unchanged: under pipe(8) it carries MAIL_CONFIG,
    which points sendmail at the Postfix instance that gave us the message.
    """
    if not recipients:
        raise DeliveryError("no recipients")
    argv = sendmail_argv(config.sendmail, sender, recipients)
    try:
        # argv: the admin-configured sendmail plus fixed options; addresses follow "--". No shell.
        proc = subprocess.run(argv, input=message, capture_output=True, timeout=config.timeout, check=False)  # noqa: S603  # nosec B603
    except subprocess.TimeoutExpired:
        raise DeliveryError(f"{argv[0]} did not finish within {config.timeout:g} s") from None
    except OSError as exc:
        raise DeliveryError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    if proc.returncode != 0:
        said = " ".join(proc.stderr.decode("utf-8", "replace").split())[:300]
        how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}"
        raise DeliveryError(f"{argv[0]} {how}" + (f": {said}" if said else ""))


def reinject(message: bytes, envelope: Envelope, config: DeliveryConfig) -> None:
    sendmail(message, envelope.sender, envelope.recipients, config)
