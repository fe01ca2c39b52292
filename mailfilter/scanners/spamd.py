"""SpamAssassin through spamd (aiospamc, the SYMBOLS command)."""

from __future__ import annotations

import asyncio

from ..config import SpamdConfig
from ..model import SCANNER_SPAMD, Cause, ScanFailure, SpamOutcome, SpamReport, SpamSkipped


def _quiet_aiospamc() -> None:
    # aiospamc logs through loguru, whose default sink is stderr; under pipe(8)
    # stderr ends up in bounce and defer messages, so silence it.
    from loguru import logger

    logger.disable("aiospamc")


async def scan(message: bytes, config: SpamdConfig) -> SpamOutcome:
    if len(message) > config.max_size:
        return SpamSkipped(f"message larger than {config.max_size} bytes")

    import aiospamc
    from aiospamc.exceptions import AIOSpamcConnectionFailed, ClientException, TimeoutException
    from aiospamc.responses import ResponseException

    _quiet_aiospamc()
    where = {"socket_path": config.socket} if config.socket else {"host": config.host, "port": config.port}
    timeout = aiospamc.Timeout(total=config.timeout, connection=config.timeout, response=config.timeout)
    try:
        response = await aiospamc.symbols(message, timeout=timeout, **where)
    except AIOSpamcConnectionFailed as exc:
        return ScanFailure(SCANNER_SPAMD, Cause.UNAVAILABLE, _text(exc) or "cannot connect")
    except (TimeoutException, asyncio.TimeoutError):
        return ScanFailure(SCANNER_SPAMD, Cause.TIMEOUT, f"no answer within {config.timeout:g} s")
    except (ClientException, ResponseException) as exc:
        return ScanFailure(SCANNER_SPAMD, Cause.ERROR, _text(exc) or type(exc).__name__)
    except OSError as exc:
        return ScanFailure(SCANNER_SPAMD, Cause.UNAVAILABLE, exc.strerror or str(exc))

    spam = response.headers.get("Spam")
    if spam is None:
        return ScanFailure(SCANNER_SPAMD, Cause.ERROR, "answer without a Spam header")
    body = response.body.decode("ascii", "replace").strip()
    tests = tuple(t for t in body.split(",") if t)
    return SpamReport(score=float(spam.score), threshold=float(spam.threshold), tests=tests)


def _text(exc: BaseException) -> str:
    text = str(exc)
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        text = f"{text}: {cause}" if text else str(cause)
    return text
