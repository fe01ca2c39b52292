"""The public release pages of digest links: GET shows the message's summary and a form, only POST releases.

No session: the signed link is the capability. It releases one entry to the one
recipient it names, once, and only spam (a virus, an unscannable or a banned
message is shown as held, with no form). Forged or altered: 403. Expired, used,
or its entry gone: 410. None of these sends anything.
"""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..actions import quarantine as qstore
from ..actions import reinject
from ..actions.held import BadEntry, Entry
from . import audit, links
from .app import LOG, Web, csrf_ok, web_of

RELEASABLE = ("spam",)


def releasable(entry: Entry) -> bool:
    return entry.reason in RELEASABLE


def _resolve(web: Web, token: str) -> tuple[links.Link, Entry] | Response:
    try:
        link = links.check(web.key, token, datetime.now(UTC))
    except links.Forged:
        return web.error(403, "This release link is not valid.")
    except links.Gone as exc:
        return web.error(410, f"{exc}.")
    if links.used(web.config.report.state_dir, link):
        return web.error(410, "This link was already used.")
    try:
        entry = web.store.get(link.qid)
    except (qstore.NotFound, BadEntry):
        return web.error(410, "This message is no longer held.")
    if link.recipient.lower() not in (r.lower() for r in entry.recipients):
        return web.error(403, "This release link is not valid.")
    return link, entry


async def show(request: Request) -> Response:
    web = web_of(request)
    found = await run_in_threadpool(_resolve, web, request.path_params["token"])
    if isinstance(found, Response):
        return found
    link, entry = found
    return web.page(
        "link.html", session=None, entry=entry, link=link, csrf=links.csrf(web.key, link), releasable=releasable(entry), done=False
    )


async def release(request: Request) -> Response:
    web = web_of(request)
    token = request.path_params["token"]
    form = await request.form()
    found = await run_in_threadpool(_resolve, web, token)
    if isinstance(found, Response):
        return found
    link, entry = found
    if not csrf_ok(form, links.csrf(web.key, link)):
        return web.error(403, "Missing or wrong form token: open the link again.")
    if not releasable(entry):
        return web.error(403, "This message cannot be released by link; ask your mail administrator.")
    state = web.config.report.state_dir
    try:
        links.claim(state, link)
    except links.Gone:
        return web.error(410, "This link was already used.")

    def send(data: bytes, sender: str, to: list[str]) -> None:
        reinject.sendmail(data, sender, to, web.config.delivery)

    try:
        await run_in_threadpool(web.store.release, link.qid, f"link:{link.recipient}", send, [link.recipient], False)
    except (qstore.QuarantineError, BadEntry, reinject.DeliveryError) as exc:
        links.unclaim(state, link)  # nothing was delivered: the link stays good
        LOG.error("web: link release %s to %s failed: %s", link.qid, link.recipient, exc)
        return web.error(502, "The message could not be released just now; try again later.")
    audit.record(state, f"link:{link.recipient}", "release", link.qid, to=[link.recipient], forced=False)
    LOG.info("web: released %s to %s by its digest link", link.qid, link.recipient)
    return web.page("link.html", session=None, entry=entry, link=link, csrf="", releasable=False, done=True)


def routes() -> list[Route]:
    return [Route("/r/{token}", show, methods=["GET"]), Route("/r/{token}", release, methods=["POST"])]
