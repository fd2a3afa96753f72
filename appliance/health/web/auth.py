"""Who may see the technician page: login throttling, sessions and CSRF checks.

Sans-I/O: every function takes the time it needs as an argument and never reads a clock, so the
lockout and expiry rules are tested without sleeping. Password hashes are verified by the caller
(``passwords.verify_password`` is CPU-bound scrypt and runs off the event loop).

Guarantees:
- ``lockout_failures`` failed logins for one user name, or from one client address, lock that name
  or address for ``lockout_s`` (whichever is locked is refused without checking the password, so
  a locked-out attacker learns nothing and burns no scrypt time). Unknown user names count as
  failures for the address and for the name, so probing names is throttled too.
- Session tokens are 256-bit random, compared in constant time through a dict lookup of their
  SHA-256 (the raw token is never stored); sessions end after ``idle_s`` without a request.
- The CSRF token is a second random value per session, sent by the page in a header; a POST must
  carry it and (when the browser sends one) an ``Origin`` equal to the page's own origin.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field


@dataclass
class _Failures:
    count: int = 0
    locked_until: float = 0.0


@dataclass
class LoginThrottle:
    """Failed-login counters per user name and per client address (``now`` in monotonic seconds)."""

    max_failures: int = 5
    lockout_s: float = 60.0
    _by_key: dict[str, _Failures] = field(default_factory=dict)

    @staticmethod
    def _keys(user: str, address: str) -> tuple[str, str]:
        return f"user:{user}", f"addr:{address}"

    def retry_after(self, user: str, address: str, now: float) -> float:
        """Seconds until a login for ``user`` from ``address`` may be tried again; 0 when it may now."""
        wait = 0.0
        for k in self._keys(user, address):
            f = self._by_key.get(k)
            if f is not None and f.locked_until > now:
                wait = max(wait, f.locked_until - now)
        return wait

    def failed(self, user: str, address: str, now: float) -> float:
        """Count a failure; returns the lockout now in force (0 while under the limit)."""
        for k in self._keys(user, address):
            f = self._by_key.setdefault(k, _Failures())
            if f.locked_until and f.locked_until <= now:  # an expired lockout starts a fresh count
                f.count, f.locked_until = 0, 0.0
            f.count += 1
            if f.count >= self.max_failures:
                f.locked_until = now + self.lockout_s
        self._prune(now)
        return self.retry_after(user, address, now)

    def succeeded(self, user: str, address: str) -> None:
        for k in self._keys(user, address):
            self._by_key.pop(k, None)

    def _prune(self, now: float) -> None:
        if len(self._by_key) > 10_000:  # bounded memory against a name-spraying client
            for k in [k for k, f in self._by_key.items() if f.locked_until <= now]:
                del self._by_key[k]


@dataclass(frozen=True)
class Session:
    user: str
    csrf: str
    method: str  # "password" | "certificate"
    created: float


@dataclass
class SessionStore:
    idle_s: float = 1800.0
    max_sessions: int = 256
    _sessions: dict[bytes, tuple[Session, float]] = field(default_factory=dict)

    @staticmethod
    def _digest(token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8", "replace")).digest()

    def create(self, user: str, method: str, now: float) -> tuple[str, Session]:
        """A new session; returns (cookie token, session). The oldest sessions go beyond ``max_sessions``."""
        self._expire(now)
        while len(self._sessions) >= self.max_sessions:
            oldest = min(self._sessions, key=lambda k: self._sessions[k][1])
            del self._sessions[oldest]
        token = secrets.token_urlsafe(32)
        session = Session(user, secrets.token_urlsafe(32), method, now)
        self._sessions[self._digest(token)] = (session, now)
        return token, session

    def get(self, token: str | None, now: float) -> Session | None:
        """The session for a cookie token (and mark it used), or None when unknown or idle too long."""
        if not token:
            return None
        key = self._digest(token)
        entry = self._sessions.get(key)
        if entry is None:
            return None
        session, last = entry
        if now - last > self.idle_s:
            del self._sessions[key]
            return None
        self._sessions[key] = (session, now)
        return session

    def end(self, token: str | None) -> None:
        if token:
            self._sessions.pop(self._digest(token), None)

    def __len__(self) -> int:
        return len(self._sessions)

    def _expire(self, now: float) -> None:
        for k in [k for k, (_s, last) in self._sessions.items() if now - last > self.idle_s]:
            del self._sessions[k]


def csrf_problem(session: Session, header_token: str | None, origin: str | None, own_origin: str,
                 fetch_site: str | None = None) -> str | None:
    """Why a state-changing request must be refused (None when it passes).

    The token must match the session's; ``Origin`` must be the page's own origin (browsers send it
    on every POST; a non-browser client without it still needs the token, which only the page's
    own script can read); ``Sec-Fetch-Site``, when sent, must be ``same-origin``.
    """
    if not header_token or not hmac.compare_digest(header_token.encode(), session.csrf.encode()):
        return "missing or wrong CSRF token"
    if origin is not None and origin != own_origin:
        return f"cross-origin request from {origin[:100]}"
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return f"Sec-Fetch-Site {fetch_site[:32]}"
    return None


def origin_problem(origin: str | None, own_origin: str, fetch_site: str | None = None) -> str | None:
    """The same-origin half of :func:`csrf_problem`, for the login POST (no session yet)."""
    if origin is not None and origin != own_origin:
        return f"cross-origin request from {origin[:100]}"
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return f"Sec-Fetch-Site {fetch_site[:32]}"
    return None


__all__ = ["LoginThrottle", "Session", "SessionStore", "csrf_problem", "origin_problem"]
