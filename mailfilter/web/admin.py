"""The admin pages: login, dashboard, the quarantine list, one message, release and delete.

Every page but /login redirects to /login without a session; every POST needs
the session's CSRF token in its `csrf` field (403 otherwise). Blocking work
(argon2, the store, sendmail) runs in the thread pool, never on the event loop.
"""

from __future__ import annotations

import secrets

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ..actions import quarantine as qstore
from ..actions import reinject
from ..actions.held import ID_PATTERN, BadEntry
from . import audit, dashboard, listing, render, users
from .app import LOG, client, csrf_ok, to_login, web_of
from .sessions import COOKIE, PRE_COOKIE, login_csrf

NEEDS_CONFIRM = ("virus", "unscannable")


async def login_form(request: Request) -> Response:
    web = web_of(request)
    pre = request.cookies.get(PRE_COOKIE) or secrets.token_urlsafe(32)
    response = web.page("login.html", csrf=login_csrf(web.key, pre), error=None, session=None)
    web.cookie(response, PRE_COOKIE, pre, max_age=3600)
    return response


async def login(request: Request) -> Response:
    web = web_of(request)
    form = await request.form()
    pre = request.cookies.get(PRE_COOKIE, "")
    if not pre or not csrf_ok(form, login_csrf(web.key, pre)):
        return web.error(403, "The form is stale or did not come from this console: reload the login page.")
    name, password = str(form.get("username", ""))[:64], str(form.get("password", ""))[:1024]
    keys = (f"user:{name.lower()}", f"addr:{client(request)}")
    if web.throttle.blocked(*keys):
        LOG.warning("web: login refused (too many failures) user=%r client=%s", name, client(request))
        return web.page("login.html", 429, csrf=login_csrf(web.key, pre), error="Too many failed logins: wait a few minutes.", session=None)
    if not await run_in_threadpool(users.verify, web.config.web.users_file, name, password):
        web.throttle.fail(*keys)
        LOG.warning("web: login failed user=%r client=%s", name, client(request))
        return web.page("login.html", 401, csrf=login_csrf(web.key, pre), error="Wrong user name or password.", session=None)
    session = web.sessions.create(name)
    LOG.info("web: login user=%s client=%s", name, client(request))
    response = RedirectResponse("/", status_code=303)
    web.cookie(response, COOKIE, session.id)
    response.delete_cookie(PRE_COOKIE, path="/")
    return response


async def logout(request: Request) -> Response:
    web = web_of(request)
    session = web.session(request)
    if session is None:
        return to_login()
    if not csrf_ok(await request.form(), session.csrf):
        return web.error(403, "Missing or wrong CSRF token.", session)
    web.sessions.end(session.id)
    response = to_login()
    response.delete_cookie(COOKIE, path="/")
    return response


async def home(request: Request) -> Response:
    web = web_of(request)
    session = web.session(request)
    if session is None:
        return to_login()
    board = await run_in_threadpool(dashboard.today, web.config, web.store)
    return web.page("dashboard.html", session=session, board=board)


async def quarantine_list(request: Request) -> Response:
    web = web_of(request)
    session = web.session(request)
    if session is None:
        return to_login()
    query = listing.Query.of(request.query_params)
    page = await run_in_threadpool(listing.page, web.store, query)
    return web.page("list.html", session=session, page=page, query=query)


async def entry_page(request: Request) -> Response:
    web = web_of(request)
    session = web.session(request)
    if session is None:
        return to_login()
    qid = request.path_params["qid"]
    if not ID_PATTERN.match(qid):
        return web.error(404, "No such message.", session)

    def load() -> tuple[qstore.Entry, render.Shown]:
        with web.store.open_message(qid) as (entry, fh):
            return entry, render.show(fh.read(render.DISPLAY_LIMIT + 1))

    try:
        entry, shown = await run_in_threadpool(load)
    except qstore.NotFound:
        return web.error(404, "No such message (released and purged, or deleted).", session)
    except BadEntry as exc:
        return web.error(500, f"This entry is damaged or not ours: {exc.why}", session)
    trail = await run_in_threadpool(audit.of, web.config.report.state_dir, qid)
    return web.page("message.html", session=session, entry=entry, shown=shown, trail=trail, confirm=entry.reason in NEEDS_CONFIRM)


async def release(request: Request) -> Response:
    web = web_of(request)
    session = web.session(request)
    if session is None:
        return to_login()
    form = await request.form()
    if not csrf_ok(form, session.csrf):
        return web.error(403, "Missing or wrong CSRF token.", session)
    qid = request.path_params["qid"]
    force = form.get("confirm") == "yes"

    def send(data: bytes, sender: str, to: list[str]) -> None:
        reinject.sendmail(data, sender, to, web.config.delivery)

    try:
        entry = await run_in_threadpool(web.store.release, qid, f"web:{session.user}", send, None, force)
    except qstore.NotFound:
        return web.error(404, "No such message.", session)
    except qstore.Refused as exc:
        return web.error(409, f"{exc} (tick the confirmation box)", session)
    except (qstore.Busy, BadEntry, reinject.DeliveryError, qstore.QuarantineError) as exc:
        LOG.error("web: release %s by %s failed: %s", qid, session.user, exc)
        return web.error(502, f"The release failed, nothing was marked released: {exc}", session)
    to = list(entry.released[-1].to)
    audit.record(web.config.report.state_dir, session.user, "release", qid, to=to, forced=force)
    LOG.info("web: released %s to %s by %s", qid, ",".join(to), session.user)
    return RedirectResponse(f"/quarantine/{qid}", status_code=303)


async def delete(request: Request) -> Response:
    web = web_of(request)
    session = web.session(request)
    if session is None:
        return to_login()
    if not csrf_ok(await request.form(), session.csrf):
        return web.error(403, "Missing or wrong CSRF token.", session)
    qid = request.path_params["qid"]
    try:
        await run_in_threadpool(web.store.delete, qid)
    except qstore.NotFound:
        return web.error(404, "No such message.", session)
    except (qstore.Busy, BadEntry, qstore.QuarantineError) as exc:
        return web.error(502, f"The delete failed: {exc}", session)
    audit.record(web.config.report.state_dir, session.user, "delete", qid)
    LOG.info("web: deleted %s by %s", qid, session.user)
    return RedirectResponse("/quarantine", status_code=303)


def routes() -> list[Route]:
    return [
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/", home, methods=["GET"]),
        Route("/quarantine", quarantine_list, methods=["GET"]),
        Route("/quarantine/{qid}", entry_page, methods=["GET"]),
        Route("/quarantine/{qid}/release", release, methods=["POST"]),
        Route("/quarantine/{qid}/delete", delete, methods=["POST"]),
    ]
