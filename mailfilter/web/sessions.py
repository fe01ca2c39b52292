"""Sessions, CSRF tokens and the login rate limit, kept in the server's memory (one process).

A session is a random 256-bit id in a cookie (HttpOnly, SameSite=Strict, Secure
unless the console listens on loopback) and, here, its user, its CSRF token
and its expiry; a restart logs everyone out. Before login, the login form's
CSRF token is an HMAC of a random pre-session cookie. Failed logins are counted
per user name and per client address: past LIMIT within WINDOW seconds, every
attempt is refused until the window has passed, even with the right password.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import deque

from ..record import dataclass

COOKIE = "mf_session"
PRE_COOKIE = "mf_login"
LIFETIME = 8 * 3600.0  # seconds a session lasts from login
LIMIT = 5  # failed logins per user name or client address ...
WINDOW = 300.0  # ... within this many seconds, before logins are refused


@dataclass(frozen=True)
class Session:
    id: str
    user: str
    csrf: str
    expires: float


class Sessions:
    def __init__(self, lifetime: float = LIFETIME) -> None:
        self.lifetime = lifetime
        self._by_id: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, user: str) -> Session:
        session = Session(secrets.token_urlsafe(32), user, secrets.token_urlsafe(32), time.monotonic() + self.lifetime)
        with self._lock:
            now = time.monotonic()
            for sid in [s.id for s in self._by_id.values() if s.expires <= now]:
                del self._by_id[sid]
            self._by_id[session.id] = session
        return session

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        with self._lock:
            session = self._by_id.get(sid)
            if session and session.expires <= time.monotonic():
                del self._by_id[sid]
                return None
            return session

    def end(self, sid: str | None) -> None:
        with self._lock:
            self._by_id.pop(sid or "", None)


def login_csrf(key: bytes, pre: str) -> str:
    return hmac.new(key, f"login\n{pre}".encode(), hashlib.sha256).hexdigest()


def same(given: object, expected: str) -> bool:
    return isinstance(given, str) and bool(given) and hmac.compare_digest(given.encode(), expected.encode())


class Throttle:
    """Failed logins per key (a user name, a client address) in a sliding window."""

    def __init__(self, limit: int = LIMIT, window: float = WINDOW) -> None:
        self.limit, self.window = limit, window
        self._fails: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        fails = self._fails.setdefault(key, deque())
        while fails and fails[0] <= now - self.window:
            fails.popleft()
        return fails

    def blocked(self, *keys: str) -> bool:
        now = time.monotonic()
        with self._lock:
            return any(len(self._recent(key, now)) >= self.limit for key in keys)

    def fail(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                self._recent(key, now).append(now)
            if len(self._fails) > 10000:  # forget idle keys rather than grow without bound
                for key in [k for k, v in self._fails.items() if not v]:
                    del self._fails[key]
