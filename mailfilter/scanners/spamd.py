"""SpamAssassin through spamd (aiospamc's client, the SYMBOLS command)."""

from __future__ import annotations

from ..config import SpamdConfig
from ..model import SCANNER_SPAMD, Cause, ScanFailure, SpamOutcome, SpamReport


def _quiet_aiospamc() -> None:
    # aiospamc logs through loguru, whose default sink is stderr; under pipe(8)
    # stderr ends up in bounce and defer messages, so silence it.
    from loguru import logger

    logger.disable("aiospamc")


def _client(config: SpamdConfig):
    """An aiospamc Client whose connection is closed on every path.

    aiospamc's own connection managers leave the socket open when a request
    times out or is cancelled (a file-descriptor leak in a long-lived daemon);
    the subclass closes the writer in a finally.
    """
    from aiospamc.client import Client
    from aiospamc.connections import TcpConnectionManager, Timeout, UnixConnectionManager

    class Closing:
        async def _send(self, data: bytes) -> bytes:
            reader, writer = await self._connect()  # type: ignore[attr-defined]
            try:
                writer.write(data)
                if writer.can_write_eof():
                    writer.write_eof()
                await writer.drain()
                return await self._receive(reader)  # type: ignore[attr-defined]
            finally:
                writer.close()

    class Unix(Closing, UnixConnectionManager):
        pass

    class Tcp(Closing, TcpConnectionManager):
        pass

    timeout = Timeout(total=config.timeout, connection=config.timeout, response=config.timeout)
    manager = Unix(config.socket, timeout=timeout) if config.socket else Tcp(config.host, config.port, timeout=timeout)
    return Client(manager)


async def scan(message: bytes, config: SpamdConfig) -> SpamOutcome:
    from aiospamc.exceptions import AIOSpamcConnectionFailed, ClientException, TimeoutException
    from aiospamc.requests import Request
    from aiospamc.responses import ResponseException

    _quiet_aiospamc()
    try:
        response = await _client(config).request(Request("SYMBOLS", body=message))
    except AIOSpamcConnectionFailed as exc:
        return ScanFailure(SCANNER_SPAMD, Cause.UNAVAILABLE, _text(exc) or "cannot connect")
    except (TimeoutError, TimeoutException):
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
