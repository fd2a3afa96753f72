"""The value channel: accepts chargers, opens their upstream leg first, then links the two.

Handshake order (why): the charger's WebSocket handshake is only answered once the CSMS has
accepted the upstream leg, so the subprotocol the CSMS selected is the one the charger gets, and a
CSMS that is down or refusing turns into HTTP 502/503 for the charger, which then retries and keeps
its own offline queue. The proxy never accepts a charger it cannot connect through.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
import time
from typing import Any
from urllib.parse import unquote

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.headers import parse_subprotocol
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from ..config import ChargePointConfig, Config, ValueConfig
from ..logfmt import get_logger
from ..passwords import verify_password
from ..sdnotify import SystemdNotifier
from ..statussock import StatusSocket
from .inspect import FrameInspector
from .link import GOING_AWAY, NORMAL, ChargePointLink, RelayServerConnection, TapSink
from ..ocppj import version_of
from .stats import ChargePointStats
from .upstream import UpstreamDialer, UpstreamError, server_ssl_context

log = get_logger("value")

_REPLACED = (NORMAL, "replaced by a newer connection for this charge point")


class _NullTap:
    def put(self, *args: Any, **kwargs: Any) -> None:
        pass

    def stats(self) -> dict[str, int]:
        return {}


class _Session:
    """One charger connection from handshake to close."""

    __slots__ = ("cp_id", "charger", "upstream", "link", "done")

    def __init__(self, cp_id: str, charger: ServerConnection):
        self.cp_id = cp_id
        self.charger = charger
        self.upstream: ClientConnection | None = None
        self.link: ChargePointLink | None = None
        self.done = asyncio.Event()

    async def close(self, code: int, reason: str) -> None:
        if self.link is not None:
            await self.link.close(code, reason)
        else:
            await asyncio.gather(
                self.charger.close(code, reason),
                *([self.upstream.close(code, reason)] if self.upstream else []),
            )
        self.done.set()


def charge_point_id_from_path(path: str) -> str | None:
    """``/ocpp/{cp_id}`` or ``/{cp_id}`` (percent-decoded); anything else is not ours."""
    path = path.split("?", 1)[0]
    parts = [p for p in path.split("/") if p]
    if len(parts) == 2 and parts[0] == "ocpp":
        raw = parts[1]
    elif len(parts) == 1:
        raw = parts[0]
    else:
        return None
    cp_id = unquote(raw)
    if not cp_id or len(cp_id) > 48 or any(ord(c) < 0x21 or c == "/" for c in cp_id):
        return None
    return cp_id


def _basic_auth(headers: Headers) -> tuple[str, str] | None:
    value = headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(token.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


class ValueChannel:
    def __init__(self, config: Config, tap: TapSink | None = None, notifier: SystemdNotifier | None = None):
        assert config.value is not None
        self.config = config
        self.cfg: ValueConfig = config.value
        self.tap: Any = tap or _NullTap()
        self.notifier = notifier or SystemdNotifier()
        self.dialer = UpstreamDialer.create(self.cfg)
        self.stats: dict[str, ChargePointStats] = {}
        self._sessions: dict[str, _Session] = {}
        self._by_conn: dict[ServerConnection, _Session] = {}
        self._auth_ok: set[tuple[str, bytes]] = set()
        self._server: Server | None = None
        self._status_socket = StatusSocket(self.cfg.status_socket, self.status)
        self._tasks: list[asyncio.Task[None]] = []
        self.started_ns = time.time_ns()
        self.handshake_refusals: dict[int, int] = {}

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.cfg
        host, port = cfg.listen_host_port()
        ssl_ctx = server_ssl_context(cfg.charger_tls.cert_file, cfg.charger_tls.key_file) if cfg.charger_tls else None
        self._server = await serve(
            self._handler,
            host or None,
            port,
            ssl=ssl_ctx,
            process_request=self._process_request,
            process_response=self._process_response,
            select_subprotocol=self._select_subprotocol,
            compression=None,
            open_timeout=cfg.connect_timeout_s + 5,
            **cfg.keepalive(),
            max_size=cfg.max_frame_bytes,
            max_queue=16,
            server_header=None,
            create_connection=RelayServerConnection,
        )
        await self._status_socket.start()
        self._tasks.append(asyncio.create_task(self._stats_to_tap(cfg.tap_stats_interval_s)))
        if self.notifier.watchdog_interval_s:
            self._tasks.append(asyncio.create_task(self._watchdog(self.notifier.watchdog_interval_s)))
        log.info(
            "value_listening",
            listen=cfg.listen,
            port=self.port,
            tls=bool(ssl_ctx),
            csms=cfg.csms_url,
            profile=cfg.security_profile,
            validation=cfg.validation,
        )
        self.notifier.ready(f"listening on {cfg.listen}")

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop accepting, close every leg with 1001 (going away)."""
        self.notifier.stopping()
        if self._server is not None:
            self._server.close(close_connections=False)
        await asyncio.gather(
            *(s.close(GOING_AWAY, "gateway shutting down") for s in list(self._sessions.values())),
            return_exceptions=True,
        )
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await self._status_socket.stop()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        log.info("value_stopped")

    async def _watchdog(self, interval: float) -> None:
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    async def _stats_to_tap(self, interval: float) -> None:
        """Per-charge-point counters for the health side, every ``tap_stats_interval_s``."""
        while True:
            await asyncio.sleep(interval)
            now = time.time_ns()
            for stats in list(self.stats.values()):
                snap = stats.snapshot()
                del snap["cp_id"]
                self.tap.put(now, stats.cp_id, "", "stats", **snap)

    # ---- handshake -------------------------------------------------------------------------

    def _refuse(self, connection: ServerConnection, status: int, text: str, **fields: Any) -> Response:
        self.handshake_refusals[status] = self.handshake_refusals.get(status, 0) + 1
        log.warning("charger_refused", status=status, reason=text, peer=_peer(connection), **fields)
        response = connection.respond(status, text + "\n")
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Basic realm="omgw", charset="UTF-8"'
        return response

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        cfg = self.cfg
        cp_id = charge_point_id_from_path(request.path)
        if cp_id is None:
            return self._refuse(connection, 404, "not an OCPP charge point path")
        cp = cfg.charge_point(cp_id)
        if cp is None and not cfg.allow_unknown_charge_points:
            return self._refuse(connection, 404, "unknown charge point", cp=cp_id)
        if cp is not None and cp.charger_password_hash and not await self._charger_authenticated(cp, request.headers):
            return self._refuse(connection, 401, "charger authentication failed", cp=cp_id)
        try:
            subprotocols = sum((parse_subprotocol(v) for v in request.headers.get_all("Sec-WebSocket-Protocol")), [])
        except Exception:  # websockets.exceptions.InvalidHeader*, kept broad to answer 400 not 500
            return self._refuse(connection, 400, "invalid Sec-WebSocket-Protocol header", cp=cp_id)

        old = self._sessions.get(cp_id)
        if old is not None:
            log.warning("charger_replaced", cp=cp_id, peer=_peer(connection))
            try:
                await asyncio.wait_for(old.close(*_REPLACED), timeout=10)
            except TimeoutError:
                log.error("charger_replace_timeout", cp=cp_id)
        session = _Session(cp_id, connection)
        self._sessions[cp_id] = session
        self._by_conn[connection] = session
        stats = self._stats_for(cp_id)
        try:
            session.upstream = await self.dialer.open(cp_id, cp, subprotocols)
        except UpstreamError as e:
            stats.upstream_failures += 1
            self._forget(session)
            self.tap.put(time.time_ns(), cp_id, "", "upstream_failed", reason=e.reason)
            return self._refuse(connection, e.http_status, f"upstream: {e.reason}", cp=cp_id, detail=e.detail)
        if self._sessions.get(cp_id) is not session:  # replaced while we were dialling
            await session.upstream.close(*_REPLACED)
            self._by_conn.pop(connection, None)
            return self._refuse(connection, 409, "replaced by a newer connection", cp=cp_id)
        log.info("upstream_connected", cp=cp_id, subprotocol=session.upstream.subprotocol)
        return None

    def _select_subprotocol(self, connection: ServerConnection, offered: Any) -> Subprotocol | None:
        session = self._by_conn.get(connection)
        if session is None or session.upstream is None:
            return None
        chosen = session.upstream.subprotocol
        return chosen if chosen in offered else None

    async def _process_response(self, connection: ServerConnection, request: Request, response: Response) -> None:
        if response.status_code != 101:
            session = self._by_conn.get(connection)
            if session is not None:  # the charger handshake failed after the upstream opened
                if session.upstream is not None:
                    await session.upstream.close(GOING_AWAY, "charger handshake failed")
                self._forget(session)
        return None

    async def _charger_authenticated(self, cp: ChargePointConfig, headers: Headers) -> bool:
        creds = _basic_auth(headers)
        if creds is None or creds[0] != cp.id:
            return False
        assert cp.charger_password_hash is not None
        key = (cp.id, hashlib.sha256((cp.charger_password_hash + "\0" + creds[1]).encode()).digest())
        if key in self._auth_ok:
            return True
        # scrypt costs ~50 ms of CPU: keep it off the event loop so other chargers are not delayed.
        ok = await asyncio.get_running_loop().run_in_executor(None, verify_password, creds[1], cp.charger_password_hash)
        if ok:
            self._auth_ok.add(key)
        return ok

    # ---- established link -----------------------------------------------------------------

    async def _handler(self, connection: ServerConnection) -> None:
        session = self._by_conn.get(connection)
        if session is None or session.upstream is None:
            await connection.close(1011, "no upstream")
            return
        cp_id = session.cp_id
        stats = self._stats_for(cp_id)
        stats.connects += 1
        stats.connected = True
        stats.subprotocol = connection.subprotocol
        version = version_of(connection.subprotocol)
        inspector = FrameInspector(version, self.cfg.validation, self.cfg.pending_calls_max)
        link = ChargePointLink(cp_id, connection, session.upstream, stats, inspector, self.tap)
        session.link = link
        log.info("charger_connected", cp=cp_id, peer=_peer(connection), subprotocol=connection.subprotocol,
                 reconnects=stats.reconnects)
        self.tap.put(time.time_ns(), cp_id, "", "connect", subprotocol=connection.subprotocol)
        try:
            await link.run()
        finally:
            stats.connected = self._sessions.get(cp_id) not in (session, None)
            self._forget(session)
            session.done.set()
            self.tap.put(time.time_ns(), cp_id, "", "disconnect", close=stats.last_close)

    def _forget(self, session: _Session) -> None:
        if self._sessions.get(session.cp_id) is session:
            del self._sessions[session.cp_id]
        self._by_conn.pop(session.charger, None)

    def _stats_for(self, cp_id: str) -> ChargePointStats:
        stats = self.stats.get(cp_id)
        if stats is None:
            stats = self.stats[cp_id] = ChargePointStats(cp_id)
        return stats

    # ---- status ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "schema": 1,
            "channel": "value",
            "gateway_id": self.config.gateway.id,
            "pid": os.getpid(),
            "uptime_s": round((time.time_ns() - self.started_ns) / 1e9, 1),
            "listen": self.cfg.listen,
            "csms_url": self.cfg.csms_url,
            "security_profile": self.cfg.security_profile,
            "validation": self.cfg.validation,
            "connected": sum(1 for s in self.stats.values() if s.connected),
            "handshake_refusals": {str(k): v for k, v in sorted(self.handshake_refusals.items())},
            "tap": self.tap.stats() if hasattr(self.tap, "stats") else {},
            "charge_points": [s.snapshot() for s in self.stats.values()],
        }


def _peer(connection: ServerConnection) -> str:
    addr = connection.remote_address
    return f"{addr[0]}:{addr[1]}" if addr else "?"
