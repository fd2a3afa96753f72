"""A simulated CSMS built on the ``ocpp`` library, for the demo, the tests and the benchmarks.

It speaks OCPP 1.6J and 2.0.1 on one listener (the subprotocol picks the handler set), can require
HTTP Basic auth and client certificates like a real CSMS at security profiles 1-3, and records what
it saw so tests can assert on it.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import ssl
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ocpp.routing import on
from ocpp.v16 import ChargePoint as _Cp16
from ocpp.v16 import call_result as r16
from ocpp.v16.enums import Action as A16
from ocpp.v16.enums import AuthorizationStatus as Auth16
from ocpp.v16.enums import RegistrationStatus as Reg16
from ocpp.v201 import ChargePoint as _Cp201
from ocpp.v201 import call_result as r201
from ocpp.v201.enums import Action as A201
from ocpp.v201.enums import AuthorizationStatusEnumType as Auth201
from ocpp.v201.enums import RegistrationStatusEnumType as Reg201
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

SUBPROTOCOLS = ["ocpp2.0.1", "ocpp1.6"]


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class CsmsCp16(_Cp16):
    def __init__(self, cp_id: str, connection: Any, csms: SimulatedCsms):
        super().__init__(cp_id, connection)
        self.csms = csms

    @on(A16.boot_notification)
    def on_boot(self, charge_point_vendor: str, charge_point_model: str, **kw: Any) -> Any:
        self.csms.event(self.id, "BootNotification", vendor=charge_point_vendor, model=charge_point_model)
        return r16.BootNotification(current_time=now_iso(), interval=self.csms.heartbeat_s, status=Reg16.accepted)

    @on(A16.heartbeat)
    def on_heartbeat(self) -> Any:
        self.csms.event(self.id, "Heartbeat")
        return r16.Heartbeat(current_time=now_iso())

    @on(A16.authorize)
    def on_authorize(self, id_tag: str) -> Any:
        self.csms.event(self.id, "Authorize", id_tag=id_tag)
        return r16.Authorize(id_tag_info={"status": Auth16.accepted})

    @on(A16.start_transaction)
    def on_start(self, connector_id: int, id_tag: str, meter_start: int, timestamp: str, **kw: Any) -> Any:
        tx = next(self.csms.tx_ids)
        self.csms.event(self.id, "StartTransaction", id_tag=id_tag, transaction_id=tx, meter_start=meter_start)
        return r16.StartTransaction(transaction_id=tx, id_tag_info={"status": Auth16.accepted})

    @on(A16.stop_transaction)
    def on_stop(self, meter_stop: int, timestamp: str, transaction_id: int, **kw: Any) -> Any:
        self.csms.event(self.id, "StopTransaction", transaction_id=transaction_id, meter_stop=meter_stop)
        return r16.StopTransaction()

    @on(A16.meter_values)
    def on_meter_values(self, connector_id: int, meter_value: list[Any], **kw: Any) -> Any:
        self.csms.event(self.id, "MeterValues", connector_id=connector_id, meter_value=meter_value)
        return r16.MeterValues()

    @on(A16.status_notification)
    def on_status(self, connector_id: int, error_code: str, status: str, **kw: Any) -> Any:
        self.csms.event(self.id, "StatusNotification", connector_id=connector_id, status=status, error_code=error_code)
        return r16.StatusNotification()


class CsmsCp201(_Cp201):
    def __init__(self, cp_id: str, connection: Any, csms: SimulatedCsms):
        super().__init__(cp_id, connection)
        self.csms = csms

    @on(A201.boot_notification)
    def on_boot(self, charging_station: dict[str, Any], reason: str, **kw: Any) -> Any:
        self.csms.event(self.id, "BootNotification", vendor=charging_station.get("vendor_name"),
                        model=charging_station.get("model"))
        return r201.BootNotification(current_time=now_iso(), interval=self.csms.heartbeat_s, status=Reg201.accepted)

    @on(A201.heartbeat)
    def on_heartbeat(self, **kw: Any) -> Any:
        self.csms.event(self.id, "Heartbeat")
        return r201.Heartbeat(current_time=now_iso())

    @on(A201.authorize)
    def on_authorize(self, id_token: dict[str, Any], **kw: Any) -> Any:
        self.csms.event(self.id, "Authorize", id_token=id_token)
        return r201.Authorize(id_token_info={"status": Auth201.accepted})

    @on(A201.transaction_event)
    def on_transaction_event(self, event_type: str, transaction_info: dict[str, Any], seq_no: int, **kw: Any) -> Any:
        self.csms.event(self.id, "TransactionEvent", event_type=event_type, seq_no=seq_no,
                        transaction_id=transaction_info.get("transaction_id"), id_token=kw.get("id_token"))
        if kw.get("id_token") is not None:
            return r201.TransactionEvent(id_token_info={"status": Auth201.accepted})
        return r201.TransactionEvent()

    @on(A201.meter_values)
    def on_meter_values(self, evse_id: int, meter_value: list[Any], **kw: Any) -> Any:
        self.csms.event(self.id, "MeterValues", evse_id=evse_id, meter_value=meter_value)
        return r201.MeterValues()

    @on(A201.status_notification)
    def on_status(self, timestamp: str, connector_status: str, evse_id: int, connector_id: int, **kw: Any) -> Any:
        self.csms.event(self.id, "StatusNotification", evse_id=evse_id, connector_id=connector_id,
                        status=connector_status)
        return r201.StatusNotification()


@dataclass
class CsmsConnection:
    cp_id: str
    subprotocol: str | None
    headers: dict[str, str]
    client_cert_subject: str | None
    connection: ServerConnection
    handler: _Cp16 | _Cp201 | None = None


@dataclass
class SimulatedCsms:
    """Start with ``await csms.start()``; ``url`` is then the base for ``csms_url``."""

    host: str = "127.0.0.1"
    port: int = 0
    ssl_context: ssl.SSLContext | None = None
    basic_auth: dict[str, str] | None = None  # cp_id -> password; None = no auth required
    heartbeat_s: int = 300
    subprotocols: list[str] = field(default_factory=lambda: list(SUBPROTOCOLS))
    on_event: Any = None  # callable(cp_id, action, fields) for the demo's live view
    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    connections: list[CsmsConnection] = field(default_factory=list)
    refused: list[tuple[str, int]] = field(default_factory=list)
    raw_handler: Any = None  # optional coroutine(connection, cp_id) replacing the ocpp handlers
    tx_ids: Any = field(default_factory=lambda: itertools.count(1000))
    _server: Server | None = None

    @property
    def url(self) -> str:
        scheme = "wss" if self.ssl_context else "ws"
        return f"{scheme}://{'localhost' if self.ssl_context else self.host}:{self.port}/ocpp"

    def event(self, cp_id: str, action: str, **fields: Any) -> None:
        self.events.append((cp_id, action, fields))
        if self.on_event is not None:
            self.on_event(cp_id, action, fields)

    def actions(self, cp_id: str) -> list[str]:
        return [a for c, a, _ in self.events if c == cp_id]

    async def start(self) -> SimulatedCsms:
        self._server = await serve(
            self._handler, self.host, self.port, ssl=self.ssl_context, subprotocols=self.subprotocols,
            process_request=self._process_request, compression=None, max_size=2**20,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> SimulatedCsms:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        cp_id = request.path.rstrip("/").rsplit("/", 1)[-1]
        if self.basic_auth is not None:
            want = self.basic_auth.get(cp_id)
            got = request.headers.get("Authorization", "")
            expect = "Basic " + base64.b64encode(f"{cp_id}:{want}".encode()).decode()
            if want is None or got != expect:
                self.refused.append((cp_id, 401))
                return connection.respond(401, "Unauthorized\n")
        return None

    async def _handler(self, connection: ServerConnection) -> None:
        cp_id = connection.request.path.rstrip("/").rsplit("/", 1)[-1]
        peer_cert = connection.transport.get_extra_info("peercert") if self.ssl_context else None
        subject = None
        if peer_cert:
            subject = ",".join(f"{k}={v}" for rdn in peer_cert.get("subject", ()) for k, v in rdn)
        conn = CsmsConnection(cp_id, connection.subprotocol, dict(connection.request.headers.raw_items()),
                              subject, connection)
        self.connections.append(conn)
        self.event(cp_id, "connected", subprotocol=connection.subprotocol)
        try:
            if self.raw_handler is not None:
                await self.raw_handler(connection, cp_id)
                return
            cls = CsmsCp201 if connection.subprotocol == "ocpp2.0.1" else CsmsCp16
            conn.handler = cls(cp_id, connection, self)
            await conn.handler.start()
        except ConnectionClosed:
            pass
        finally:
            self.event(cp_id, "disconnected")

    def connection_for(self, cp_id: str) -> CsmsConnection | None:
        for c in reversed(self.connections):
            if c.cp_id == cp_id:
                return c
        return None


async def wait_for(predicate: Any, timeout: float = 5.0, interval: float = 0.01) -> None:
    """Poll ``predicate`` until true; raise TimeoutError with its name otherwise (tests, demo)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s: {getattr(predicate, '__name__', predicate)}")
        await asyncio.sleep(interval)
