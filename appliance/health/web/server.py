"""The technician page's HTTPS server: a small asyncio HTTP/1.1 shell on the health process's loop.

Why on the loop (like ``metrics.py``): every document is built from state the health process
mutates on this loop (the charge-point tracker, the status tracker, the telemetry history), so
reading it here needs no locks. The only blocking work, scrypt password checks, runs in a worker
thread. One request per connection (``Connection: close``) except the event stream, which stays
open and sends one ``tick`` event a second.

Read-only, except ``POST /api/snapshot`` (the snapshot button; CSRF token + same-origin check,
audited by the source with the technician's name) and ``POST /api/login``/``/api/logout``.
Everything under ``/api/`` except ``/api/login`` needs a session; the page itself (three static
files) is public and holds nothing. See docs/web.md for the security model.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from ...config import WebConfig
from ...logfmt import get_logger
from ...metrics import parse_listen
from ...passwords import hash_password, verify_password
from .auth import LoginThrottle, Session, SessionStore, csrf_problem, origin_problem
from .data import valid_snapshot_name

log = get_logger("web")

STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/index.html": ("index.html", "text/html; charset=utf-8"),
          "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8")}
SECURITY_HEADERS = (
    "Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'\r\n"
    "X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\nX-Frame-Options: DENY\r\n"
    "Cross-Origin-Opener-Policy: same-origin\r\nCross-Origin-Resource-Policy: same-origin\r\n"
)
MAX_HEAD = 16384
MAX_BODY = 4096
MAX_STREAMS = 16
_DUMMY_HASH = hash_password("not a password: evens out the time an unknown user name takes")


class PageSource(Protocol):
    """What the page shows; implemented over a running ``HealthChannel`` by :mod:`.source`."""

    async def chargers(self) -> dict[str, Any]: ...
    def telemetry(self, minutes: float) -> dict[str, Any]: ...
    def health(self) -> dict[str, Any]: ...
    def snapshots(self) -> dict[str, Any]: ...
    def snapshot_path(self, name: str) -> Path | None: ...
    async def request_snapshot(self, user: str, address: str) -> dict[str, Any]: ...
    def live(self) -> dict[str, Any]: ...


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    address: str
    peer_cn: str | None = None

    def cookie(self, name: str) -> str | None:
        for part in self.headers.get("cookie", "").split(";"):
            k, _, v = part.strip().partition("=")
            if k == name:
                return v
        return None


@dataclass
class Response:
    status: str
    body: bytes = b""
    ctype: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    file: Path | None = None  # streamed instead of body


def _json(status: str, doc: Any, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, json.dumps(doc, separators=(",", ":"), default=str).encode(), headers=headers or [])


def _error(status: str, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return _json(status, {"error": message}, headers)


def _cert_cn(peercert: Any) -> str | None:
    """The commonName of a verified client certificate (``ssl`` getpeercert() form)."""
    for rdn in (peercert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


class WebServer:
    def __init__(self, config: WebConfig, source: PageSource, *, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.source = source
        self.clock = clock
        self.host, self._port = parse_listen(config.listen)
        self.tls = config.cert_file is not None
        self.cookie_name = "__Host-omgw_session" if self.tls else "omgw_session"
        self.throttle = LoginThrottle(config.lockout_failures, config.lockout_s)
        self.sessions = SessionStore(config.session_idle_s)
        self.users = {u.name: u.password_hash for u in config.users}
        self.streams = 0
        self._server: asyncio.AbstractServer | None = None
        self._static: dict[str, bytes] = {}
        self._conns: set[asyncio.Task[Any]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def ssl_context(self) -> ssl.SSLContext | None:
        c = self.config
        if c.cert_file is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(c.cert_file), str(c.key_file))
        if c.client_ca_file is not None:
            ctx.load_verify_locations(cafile=str(c.client_ca_file))
            ctx.verify_mode = ssl.CERT_OPTIONAL  # a certificate logs in; without one, the password form
        return ctx

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self._port, ssl=self.ssl_context(),
                                                  limit=MAX_HEAD, ssl_handshake_timeout=10)
        scheme = "https" if self.tls else "http"
        log.info("web_listening", address=f"{scheme}://{self.host}:{self.port}/", users=len(self.users),
                 client_certificates=self.config.client_ca_file is not None)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._conns):
                t.cancel()
            await asyncio.gather(*self._conns, return_exceptions=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    # ---- HTTP plumbing ------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            req = await self._read(reader, writer)
            if req is None:
                return
            if req.method == "GET" and req.path == "/api/stream":
                await self._stream(req, writer)
                return
            resp = await self.dispatch(req)
            await self._write(writer, resp, head_only=req.method == "HEAD")
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, UnicodeError,
                ssl.SSLError):
            pass  # a client that went away or sent garbage: nothing to answer
        finally:
            self._conns.discard(task)
            with contextlib.suppress(OSError, ssl.SSLError):
                writer.close()

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Request | None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        except asyncio.LimitOverrunError:
            await self._write(writer, _error("431 Request Header Fields Too Large", "header too large"))
            return None
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await self._write(writer, _error("400 Bad Request", "malformed request line"))
            return None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
        length = headers.get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_BODY:
            await self._write(writer, _error("413 Content Too Large", f"body over {MAX_BODY} bytes"))
            return None
        body = await asyncio.wait_for(reader.readexactly(int(length)), 10) if int(length) else b""
        url = urlsplit(parts[1])
        peer = writer.get_extra_info("peername") or ("?", 0)
        cn = _cert_cn(writer.get_extra_info("peercert")) if self.config.client_ca_file else None
        return Request(parts[0], unquote(url.path), parse_qs(url.query), headers, body, str(peer[0]), cn)

    async def _write(self, writer: asyncio.StreamWriter, r: Response, head_only: bool = False) -> None:
        size = r.file.stat().st_size if r.file is not None else len(r.body)
        extra = "".join(f"{k}: {v}\r\n" for k, v in r.headers)
        cache = "" if any(k == "Cache-Control" for k, _ in r.headers) else "Cache-Control: no-store\r\n"
        hsts = "Strict-Transport-Security: max-age=31536000\r\n" if self.tls else ""
        writer.write(f"HTTP/1.1 {r.status}\r\nContent-Type: {r.ctype}\r\nContent-Length: {size}\r\n"
                     f"Connection: close\r\n{SECURITY_HEADERS}{hsts}{cache}{extra}\r\n".encode())
        if not head_only:
            if r.file is not None:
                with r.file.open("rb") as f:
                    while chunk := f.read(65536):
                        writer.write(chunk)
                        await writer.drain()
            else:
                writer.write(r.body)
        await writer.drain()

    def _own_origin(self, req: Request) -> str:
        return f"{'https' if self.tls else 'http'}://{req.headers.get('host', '')}"

    def _session(self, req: Request) -> tuple[Session | None, list[tuple[str, str]]]:
        """The request's session from its cookie, or a new one for a verified client certificate."""
        now = self.clock()
        s = self.sessions.get(req.cookie(self.cookie_name), now)
        if s is not None or req.peer_cn is None:
            return s, []
        token, s = self.sessions.create(f"cert:{req.peer_cn}", "certificate", now)
        log.info("web_login", user=s.user, addr=req.address, method="certificate")
        return s, [("Set-Cookie", self._cookie(token))]

    def _cookie(self, token: str, max_age: int | None = None) -> str:
        secure = "; Secure" if self.tls else ""
        age = f"; Max-Age={max_age}" if max_age is not None else ""
        return f"{self.cookie_name}={token}; Path=/; HttpOnly; SameSite=Strict{secure}{age}"

    # ---- routes -------------------------------------------------------------------------------

    async def dispatch(self, req: Request) -> Response:
        if req.path in STATIC:
            if req.method not in ("GET", "HEAD"):
                return _error("405 Method Not Allowed", "GET only")
            name, ctype = STATIC[req.path]
            return Response("200 OK", self._asset(name), ctype, [("Cache-Control", "no-cache")])
        if not req.path.startswith("/api/"):
            return _error("404 Not Found", "no such page")
        if req.path == "/api/login":
            return await self._login(req) if req.method == "POST" else _error("405 Method Not Allowed", "POST only")
        session, set_cookie = self._session(req)
        if session is None:
            if req.path == "/api/session" and req.method in ("GET", "HEAD"):  # the page asks before showing the form
                return _json("200 OK", {"user": None})
            return _error("401 Unauthorized", "log in first")
        resp = await self._api(req, session)
        resp.headers += set_cookie
        return resp

    async def _api(self, req: Request, s: Session) -> Response:
        path, method = req.path, req.method
        if method == "POST":
            problem = csrf_problem(s, req.headers.get("x-csrf-token"), req.headers.get("origin"),
                                   self._own_origin(req), req.headers.get("sec-fetch-site"))
            if problem is not None:
                log.warning("web_csrf_refused", user=s.user, addr=req.address, path=path, reason=problem)
                return _error("403 Forbidden", problem)
            if path == "/api/snapshot":
                result = await self.source.request_snapshot(s.user, req.address)
                return _json("202 Accepted", result)
            if path == "/api/logout":
                self.sessions.end(req.cookie(self.cookie_name))
                log.info("web_logout", user=s.user, addr=req.address)
                return _json("200 OK", {"ok": True}, [("Set-Cookie", self._cookie("", 0))])
            return _error("404 Not Found", "no such action")
        if method not in ("GET", "HEAD"):
            return _error("405 Method Not Allowed", "GET or POST")
        if path == "/api/session":
            return _json("200 OK", {"user": s.user, "csrf": s.csrf, "method": s.method})
        if path == "/api/chargers":
            return _json("200 OK", await self.source.chargers())
        if path == "/api/telemetry":
            try:
                minutes = float(req.query.get("minutes", ["10"])[0])
            except ValueError:
                return _error("400 Bad Request", "minutes must be a number")
            return _json("200 OK", self.source.telemetry(minutes))
        if path == "/api/health":
            return _json("200 OK", self.source.health())
        if path == "/api/snapshots":
            return _json("200 OK", self.source.snapshots())
        if path.startswith("/api/snapshots/"):
            name = path[len("/api/snapshots/"):]
            name = name[: -len(".tar.gz")] if name.endswith(".tar.gz") else name
            if not valid_snapshot_name(name):
                log.warning("web_bad_snapshot_name", user=s.user, addr=req.address, name=name[:80])
                return _error("400 Bad Request", "not a snapshot name")
            file = self.source.snapshot_path(name)
            if file is None:
                return _error("404 Not Found", "no such snapshot")
            log.info("web_snapshot_download", user=s.user, addr=req.address, id=name)
            return Response("200 OK", ctype="application/gzip", file=file,
                            headers=[("Content-Disposition", f'attachment; filename="{name}.tar.gz"')])
        return _error("404 Not Found", "no such endpoint")

    async def _login(self, req: Request) -> Response:
        problem = origin_problem(req.headers.get("origin"), self._own_origin(req), req.headers.get("sec-fetch-site"))
        if problem is not None:
            return _error("403 Forbidden", problem)
        try:
            doc = json.loads(req.body)
            user, password = str(doc["user"])[:64], str(doc["password"])[:1024]
        except (ValueError, KeyError, TypeError):
            return _error("400 Bad Request", 'expected {"user": ..., "password": ...}')
        wait = self.throttle.retry_after(user, req.address, self.clock())
        if wait > 0:
            log.warning("web_login_locked", user=user, addr=req.address, retry_after_s=round(wait))
            return self._locked(wait)
        encoded = self.users.get(user)
        ok = await asyncio.to_thread(verify_password, password, encoded or _DUMMY_HASH)
        if not ok or encoded is None:
            wait = self.throttle.failed(user, req.address, self.clock())
            log.warning("web_login_failed", user=user, addr=req.address, locked_s=round(wait))
            return self._locked(wait) if wait > 0 else _error("401 Unauthorized", "wrong user name or password")
        self.throttle.succeeded(user, req.address)
        token, s = self.sessions.create(user, "password", self.clock())
        log.info("web_login", user=user, addr=req.address, method="password")
        return _json("200 OK", {"user": user, "csrf": s.csrf, "method": "password"},
                     [("Set-Cookie", self._cookie(token))])

    @staticmethod
    def _locked(wait: float) -> Response:
        secs = max(1, int(wait + 0.999))
        return _error("429 Too Many Requests", f"too many failed logins; try again in {secs} s",
                      [("Retry-After", str(secs))])

    def _asset(self, name: str) -> bytes:
        if name not in self._static:
            self._static[name] = (resources.files(__package__) / "static" / name).read_bytes()
        return self._static[name]

    # ---- live updates (Server-Sent Events) ----------------------------------------------------

    async def _stream(self, req: Request, writer: asyncio.StreamWriter) -> None:
        session, _ = self._session(req)
        if session is None:
            await self._write(writer, _error("401 Unauthorized", "log in first"))
            return
        if self.streams >= MAX_STREAMS:
            await self._write(writer, _error("503 Service Unavailable", "too many live views",
                                             [("Retry-After", "5")]))
            return
        self.streams += 1
        try:
            writer.write(("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
                          f"Connection: close\r\n{SECURITY_HEADERS}\r\nretry: 2000\n\n").encode())
            token = req.cookie(self.cookie_name)
            while True:
                if token is not None and self.sessions.get(token, self.clock()) is None:
                    writer.write(b"event: logout\ndata: {}\n\n")
                    await writer.drain()
                    return
                doc = self.source.live()
                doc["chargers"] = await self.source.chargers()
                writer.write(b"event: tick\ndata: " + json.dumps(doc, separators=(",", ":"), default=str).encode()
                             + b"\n\n")
                await asyncio.wait_for(writer.drain(), 5)  # a stalled client is dropped, not buffered for
                await asyncio.sleep(1.0)
        finally:
            self.streams -= 1


async def start_web(config: WebConfig | None, source: PageSource) -> WebServer | None:
    """Start the page if configured; an unusable address or certificate is logged, never fatal."""
    if config is None:
        return None
    server = WebServer(config, source)
    try:
        await server.start()
    except (OSError, ssl.SSLError) as e:
        log.warning("web_unavailable", address=config.listen, error=getattr(e, "strerror", None) or str(e))
        return None
    return server


__all__ = ["PageSource", "Request", "Response", "WebServer", "start_web"]

