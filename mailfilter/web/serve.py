"""`mailfilter web`: the console under uvicorn, as the quarantine's owner (never root)."""

from __future__ import annotations

import ipaddress
import os

from ..config import Config


class ServeError(Exception):
    pass


def split(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def refuse_root() -> None:
    if os.geteuid() == 0:
        raise ServeError("mailfilter web refuses to run as root: run it as the quarantine's owner (systemd/mailfilter-web.service)")


def serve(config: Config) -> int:
    import uvicorn

    from . import app

    refuse_root()
    host, port = split(config.web.listen)
    from .secret import SecretError

    try:
        application = app.create(config, secure=not loopback(host))
    except SecretError as exc:
        raise ServeError(f"the console's key: {exc}") from None
    uvicorn.run(application, host=host, port=port, log_config=None, access_log=False, server_header=False, proxy_headers=False)
    return 0
