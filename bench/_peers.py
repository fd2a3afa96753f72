"""Process entry points for the value-channel benchmark: a CSMS responder, a charger load generator
and a tap drain, each meant to run in its own (spawned) process so that none of them shares an
event loop or a GIL with the proxy under test or with each other.

Each entry point takes one end of a ``multiprocessing`` pipe and speaks a tiny request/response
protocol over it: the parent sends ``(command, kwargs)`` and gets back ``("ok", result)`` or
``("error", text)``. Children ignore SIGINT: the parent owns shutdown (it sends ``exit``, then
terminates and kills whatever is left), so Ctrl-C tears everything down in one place.

Nothing here is part of the gateway; it only needs websockets.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import signal
import socket
import ssl
import time
from array import array
from multiprocessing.connection import Connection
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

SUBPROTOCOL = "ocpp1.6"


def raise_nofile() -> int:
    """One socket per charger (two per charger in a proxy): lift the soft fd limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _child_setup() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise_nofile()


async def _command_loop(conn: Connection, target: Any) -> None:
    """Serve ``(command, kwargs)`` requests from the parent until ``exit`` or the pipe closes."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            cmd, kwargs = await loop.run_in_executor(None, conn.recv)
        except (EOFError, OSError):
            return
        if cmd == "exit":
            conn.send(("ok", None))
            return
        try:
            result = await getattr(target, cmd)(**kwargs)
        except Exception as e:  # reported to the parent, which decides what it means for the run
            conn.send(("error", f"{type(e).__name__}: {e}"))
        else:
            conn.send(("ok", result))


def percentiles_us(samples_ns: Any) -> dict[str, float | int]:
    """Nearest-rank p50/p99/p99.9, mean and max of round trips, in microseconds."""
    n = len(samples_ns)
    if n == 0:
        return {"n": 0}
    s = sorted(samples_ns)

    def q(p: float) -> float:
        return s[min(n - 1, max(0, int(p * n + 0.5) - 1))] / 1000

    return {"n": n, "p50": q(0.50), "p99": q(0.99), "p999": q(0.999),
            "mean": sum(s) / n / 1000, "max": s[-1] / 1000}


# ---- CSMS responder ---------------------------------------------------------------------------

class _Responder:
    """Answers every OCPP-J CALL with a CALLRESULT carrying ``currentTime``; counts what it saw."""

    def __init__(self) -> None:
        self.connections = 0
        self.open_connections = 0
        self.calls = 0
        self._second = -1
        self._time_json = ""

    def _current_time(self) -> str:
        now = time.time()
        sec = int(now)
        if sec != self._second:
            self._second = sec
            self._time_json = json.dumps(time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(sec)))
        return self._time_json

    async def handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        self.open_connections += 1
        loads, dumps, send = json.loads, json.dumps, ws.send
        try:
            async for msg in ws:
                try:
                    m = loads(msg)
                except ValueError:
                    continue
                if type(m) is list and len(m) >= 3 and m[0] == 2:
                    self.calls += 1
                    await send(f'[3,{dumps(m[1])},{{"currentTime":{self._current_time()}}}]')
        except ConnectionClosed:
            pass
        finally:
            self.open_connections -= 1

    async def stats(self) -> dict[str, int]:
        return {"connections": self.connections, "open": self.open_connections, "calls": self.calls}


def csms_main(conn: Connection, certfile: str | None, keyfile: str | None) -> None:
    """CSMS responder: ws:// and (with a certificate) wss:// listeners on 127.0.0.1, free ports.

    First message to the parent: ``("ready", {"ws_port": .., "wss_port": ..})``.
    """
    _child_setup()

    async def main() -> None:
        responder = _Responder()
        common: dict[str, Any] = dict(subprotocols=[SUBPROTOCOL], compression=None, ping_interval=None,
                                      max_queue=16, server_header=None, open_timeout=60, backlog=1024)
        plain = await serve(responder.handler, "127.0.0.1", 0, **common)
        tls = None
        ports = {"ws_port": plain.sockets[0].getsockname()[1], "wss_port": None}
        if certfile and keyfile:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(certfile, keyfile)
            tls = await serve(responder.handler, "127.0.0.1", 0, ssl=ctx, **common)
            ports["wss_port"] = tls.sockets[0].getsockname()[1]
        conn.send(("ready", ports))
        try:
            await _command_loop(conn, responder)
        finally:
            for server in (plain, tls):
                if server is not None:
                    server.close()
                    await server.wait_closed()

    asyncio.run(main())


# ---- blind byte pipe: the floor of any Python relay ---------------------------------------------

class _PipeLeg(asyncio.Protocol):
    """One side of a blind TCP pipe: every read is written to the partner as is (bytes arriving
    before the partner is connected wait in a list). No WebSocket parsing, no checks."""

    def __init__(self) -> None:
        self.partner: _PipeLeg | None = None
        self.transport: Any = None
        self.early: list[bytes] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.partner is None:
            self.early.append(data)
        else:
            self.partner.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.partner is not None:
            self.partner.transport.close()


def byte_pipe_main(conn: Connection, upstream_port: int) -> None:
    """What relaying costs with no protocol work at all: each accepted connection is piped to
    ``upstream_port`` by the same event loop ``omgw value`` runs (uvloop when installed).

    First message to the parent: ``("ready", {"port": ..})``.
    """
    _child_setup()

    async def main() -> None:
        loop = asyncio.get_running_loop()

        class Accepted(_PipeLeg):
            def connection_made(self, transport: Any) -> None:
                super().connection_made(transport)
                loop.create_task(self.connect())

            async def connect(self) -> None:
                try:
                    _, upstream = await loop.create_connection(_PipeLeg, "127.0.0.1", upstream_port)
                except OSError:
                    self.transport.close()
                    return
                upstream.partner, self.partner = self, upstream
                for data in self.early:
                    upstream.transport.write(data)
                self.early.clear()

        server = await loop.create_server(Accepted, "127.0.0.1", 0, backlog=1024)
        conn.send(("ready", {"port": server.sockets[0].getsockname()[1]}))
        try:
            await _command_loop(conn, object())
        finally:
            server.close()

    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


# ---- charger load generator ------------------------------------------------------------------

def _heartbeat(mid: int) -> str:
    return f'[2,"{mid}","Heartbeat",{{}}]'


class _ResponseMismatch(Exception):
    pass


def _check(reply: str | bytes, mid: int) -> None:
    m = json.loads(reply)
    if not (type(m) is list and len(m) == 3 and m[0] == 3 and m[1] == str(mid)):
        raise _ResponseMismatch(f"expected CALLRESULT for {mid}, got {reply[:120]!r}")


class _LoadGenerator:
    def __init__(self) -> None:
        self.conns: list[ClientConnection] = []
        self.connect_errors: list[str] = []

    @staticmethod
    def _client_kwargs(ca_file: str | None) -> dict[str, Any]:
        kw: dict[str, Any] = dict(subprotocols=[SUBPROTOCOL], compression=None, ping_interval=None,
                                  open_timeout=60, close_timeout=10, max_queue=16, user_agent_header=None)
        if ca_file:
            kw["ssl"] = ssl.create_default_context(cafile=ca_file)
        return kw

    async def sequential(self, url: str, n: int, warmup: int, ca_file: str | None = None) -> dict[str, Any]:
        """One connection, ``warmup + n`` Heartbeats one after the other; round trips of the last n."""
        lat = array("q")
        append, clock = lat.append, time.perf_counter_ns
        async with connect(url, **self._client_kwargs(ca_file)) as ws:
            if ws.subprotocol != SUBPROTOCOL:
                raise _ResponseMismatch(f"subprotocol {ws.subprotocol!r}")
            send, recv = ws.send, ws.recv
            gc.collect()
            gc.disable()
            try:
                for i in range(warmup + n):
                    frame = _heartbeat(i)
                    t0 = clock()
                    await send(frame)
                    reply = await recv()
                    t1 = clock()
                    _check(reply, i)
                    if i >= warmup:
                        append(t1 - t0)
            finally:
                gc.enable()
        return percentiles_us(lat)

    async def connect_many(self, urls: list[str], batch: int, ca_file: str | None = None) -> dict[str, Any]:
        """Open one connection per URL, ``batch`` handshakes at a time; keep them for ``run``."""
        kw = self._client_kwargs(ca_file)
        self.connect_errors = []
        t0 = time.perf_counter()
        for i in range(0, len(urls), batch):
            results = await asyncio.gather(*(connect(u, **kw) for u in urls[i:i + batch]),
                                           return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    self.connect_errors.append(f"{type(r).__name__}: {r}")
                else:
                    self.conns.append(r)
        return {"connected": len(self.conns), "failed": len(self.connect_errors),
                "errors": sorted(set(self.connect_errors))[:5], "seconds": time.perf_counter() - t0}

    async def run(self, duration: float, warmup: float) -> dict[str, Any]:
        """Every connection sends Heartbeats in a closed loop; round trips started in the window count."""
        clock = time.perf_counter_ns
        start = clock()
        window_start = start + int(warmup * 1e9)
        deadline = window_start + int(duration * 1e9)
        errors: list[str] = []

        async def charger(ws: ClientConnection) -> array:
            lat = array("q")
            append, send, recv = lat.append, ws.send, ws.recv
            i = 0
            try:
                while True:
                    t0 = clock()
                    if t0 >= deadline:
                        return lat
                    await send(_heartbeat(i))
                    reply = await recv()
                    t1 = clock()
                    if i & 63 == 0:  # spot-check that replies match (parsing every one costs load)
                        _check(reply, i)
                    if t0 >= window_start:
                        append(t1 - t0)
                    i += 1
            except (ConnectionClosed, _ResponseMismatch) as e:
                errors.append(f"{type(e).__name__}: {e}")
                return lat

        per_conn = await asyncio.gather(*(charger(ws) for ws in self.conns))
        elapsed_window = (min(clock(), deadline) - window_start) / 1e9
        counts = [len(a) for a in per_conn]
        merged = array("q")
        for a in per_conn:
            merged.extend(a)
        stats = percentiles_us(merged)
        stats.update(
            messages=len(merged),
            window_s=elapsed_window,
            msgs_per_s=len(merged) / elapsed_window if elapsed_window > 0 else 0.0,
            errors=len(errors),
            error_samples=sorted(set(errors))[:5],
            per_conn_min=min(counts) if counts else 0,
            per_conn_max=max(counts) if counts else 0,
            starved=sum(1 for c in counts if c == 0),
        )
        return stats

    async def close_all(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        codes: dict[str, int] = {}
        conns, self.conns = self.conns, []
        for i in range(0, len(conns), 200):
            await asyncio.gather(*(ws.close() for ws in conns[i:i + 200]), return_exceptions=True)
        for ws in conns:
            key = str(ws.close_code)
            codes[key] = codes.get(key, 0) + 1
        return {"seconds": time.perf_counter() - t0, "close_codes": codes}


def loadgen_main(conn: Connection) -> None:
    _child_setup()
    asyncio.run(_command_loop(conn, _LoadGenerator()))


# ---- tap drain ---------------------------------------------------------------------------------

def tap_drain_main(conn: Connection, path: str) -> None:
    """Stands in for the health process: binds the tap socket and reads (and discards) datagrams."""
    _child_setup()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock.bind(path)
    sock.settimeout(0.2)
    conn.send(("ready", None))
    datagrams = nbytes = 0
    try:
        while True:
            try:
                data = sock.recv(262144)
                datagrams += 1
                nbytes += len(data)
            except TimeoutError:
                pass
            if conn.poll():
                cmd, _ = conn.recv()
                if cmd == "exit":
                    conn.send(("ok", {"datagrams": datagrams, "bytes": nbytes}))
                    return
                conn.send(("ok", {"datagrams": datagrams, "bytes": nbytes}))
    finally:
        sock.close()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
