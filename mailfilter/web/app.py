"""The ASGI application: what every route shares (config, key, sessions, templates) and the security headers.

Routes live in admin.py (login, dashboard, quarantine) and public.py (release
links). Every response carries a strict Content-Security-Policy: nothing but
our own stylesheet and images, no script at all, no framing, forms only to us.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..actions.quarantine import FolderStore, open_store
from ..config import Config
from ..record import dataclass
from . import secret
from .sessions import COOKIE, Session, Sessions, Throttle, same

HERE = os.path.dirname(__file__)
LOG = logging.getLogger("mailfilter")
CSP = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


@dataclass
class Web:
    """What the routes share; one per server process."""

    config: Config
    store: FolderStore
    key: bytes
    secure: bool  # the Secure flag on cookies (off only when listening on loopback)
    sessions: Sessions
    throttle: Throttle
    templates: jinja2.Environment

    def page(self, name: str, code: int = 200, **values: Any) -> HTMLResponse:
        text = self.templates.get_template(name).render(**values)
        # Undecodable bytes of a message reach us as surrogates (surrogateescape): shown as "?", never a 500.
        return HTMLResponse(text.encode("utf-8", "replace"), status_code=code)

    def error(self, status: int, text: str, session: Session | None = None) -> HTMLResponse:
        return self.page("error.html", status, status=status, text=text, session=session)

    def cookie(self, response: Response, name: str, value: str, max_age: int | None = None) -> None:
        response.set_cookie(name, value, max_age=max_age, path="/", secure=self.secure, httponly=True, samesite="strict")

    def session(self, request: Request) -> Session | None:
        return self.sessions.get(request.cookies.get(COOKIE))


def web_of(request: Request) -> Web:
    return request.app.state.web


def to_login() -> RedirectResponse:
    return RedirectResponse("/login", status_code=303)


def csrf_ok(form: Any, expected: str) -> bool:
    return same(form.get("csrf"), expected)


def client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


class SecurityHeaders:
    """Adds HEADERS to every response (pages, redirects, static files, errors)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(os.path.join(HERE, "templates")),
        autoescape=True,  # every value is escaped, whatever the template's name
        undefined=jinja2.StrictUndefined,
    )
    env.filters["size"] = human_size
    return env


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def create(config: Config, secure: bool) -> ASGIApp:
    """The console for CONFIG; SECURE sets the cookies' Secure flag."""
    from . import admin, public

    web = Web(
        config=config,
        store=open_store(config.quarantine),
        key=secret.load(config.web.secret_file),
        secure=secure,
        sessions=Sessions(),
        throttle=Throttle(),
        templates=templates(),
    )
    routes = [*admin.routes(), *public.routes(), Mount("/static", StaticFiles(directory=os.path.join(HERE, "static")), name="static")]
    app = Starlette(routes=routes)
    app.state.web = web

    async def not_found(request: Request, exc: Exception) -> Response:
        return web.error(404, "No such page.")

    app.add_exception_handler(404, not_found)
    return SecurityHeaders(app)
