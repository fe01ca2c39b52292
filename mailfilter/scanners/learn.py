"""Teach spamd's Bayes database one message: SpamAssassin's TELL command, through aiospamc.

spamd must run with --allow-tell and a Bayes database (use_bayes 1); TELL then learns the message
as spam or ham the way sa-learn does (a message learnt before as the other class is unlearnt first,
one learnt as the same class is left as it is). Blocking; one deadline: [spamd] timeout.
"""

from __future__ import annotations

import asyncio

from ..config import SpamdConfig
from ..record import dataclass

CLASSES = ("spam", "ham")


class LearnError(Exception):
    """spamd could not be told: the text says which spamd and why."""


@dataclass(frozen=True)
class Learnt:
    """What spamd answered: DidSet says the message was learnt now ('local'), empty when it knew it already."""

    message_class: str
    did_set: str
    did_remove: str


def learn(message: bytes, message_class: str, config: SpamdConfig, user: str = "") -> Learnt:
    """TELL spamd (CONFIG's socket, else host:port) that MESSAGE is MESSAGE_CLASS ('spam' or 'ham'), as spamd's
    USER (its Bayes data; '' : spamd's own)."""
    if message_class not in CLASSES:
        raise ValueError(f"message_class must be one of {CLASSES}, not {message_class!r}")
    import aiospamc
    from aiospamc.connections import Timeout
    from aiospamc.exceptions import ClientException
    from aiospamc.responses import ResponseException
    from loguru import logger

    logger.disable("aiospamc")  # its default sink is stderr
    where = config.socket or f"{config.host}:{config.port}"
    target = {"socket_path": config.socket} if config.socket else {"host": config.host, "port": config.port}
    try:
        response = asyncio.run(
            aiospamc.tell(
                message, message_class, set_action="local", timeout=Timeout(total=config.timeout), user=user or None, **target
            )
        )
    except ResponseException as exc:  # spamd answered with an error: TELL not allowed, no Bayes, ...
        raise LearnError(f"spamd at {where} refused TELL: {exc} (is it started with --allow-tell and use_bayes 1?)") from None
    except (TimeoutError, ClientException, OSError) as exc:
        cause = exc.__cause__ or exc.__context__
        why = " ".join(str(part) for part in (type(exc).__name__, exc, cause or "") if str(part))
        raise LearnError(f"spamd at {where} did not answer: {why}") from None
    headers = {str(k).lower(): v for k, v in response.headers.items()}
    return Learnt(message_class, _text(headers.get("didset")), _text(headers.get("didremove")))


def _text(value: object) -> str:
    if value is None:
        return ""
    inner = getattr(value, "action", None)
    if inner is not None:
        return ",".join(name for name in ("local", "remote") if getattr(inner, name, False))
    return str(getattr(value, "value", value))
