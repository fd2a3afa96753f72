"""HttpsUplink against a local ``http.server`` over TLS that requires client certificates."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from appliance.health import payloads
from appliance.health.https_uplink import HttpsSettings, HttpsUplink
from appliance.health.spool import Spool
from conftest import free_port


class Endpoint:
    """The O&M centre's ingest endpoint: records POSTed batches and PUT archives; can go down."""

    def __init__(self, pki: Any):
        self.port = free_port()
        self.pki = pki
        self.batches: list[list[dict[str, Any]]] = []
        self.puts: dict[str, tuple[bytes, str]] = {}
        self.peer_cns: list[str] = []
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        ep = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers["Content-Length"]))

            def do_POST(self) -> None:
                body = json.loads(self._body())
                cert = self.connection.getpeercert()  # type: ignore[attr-defined]
                with ep.lock:
                    ep.batches.append(body)
                    ep.peer_cns.append(dict(x[0] for x in cert["subject"])["commonName"])
                self.send_response(204)
                self.end_headers()

            def do_PUT(self) -> None:
                with ep.lock:
                    ep.puts[self.path] = (self._body(), self.headers["X-Omgw-Sha256"])
                self.send_response(201)
                self.end_headers()

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.pki.server.cert), str(self.pki.server.key))
        ctx.load_verify_locations(self.pki.ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
        srv = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        srv.daemon_threads = True
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
        self.server = srv
        self.thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        if self.thread is not None:
            self.thread.join(5)

    def messages(self) -> list[dict[str, Any]]:
        with self.lock:
            return [m for b in self.batches for m in b]


@pytest.fixture
def endpoint(health_pki: Any) -> Iterator[Endpoint]:
    ep = Endpoint(health_pki)
    ep.start()
    try:
        yield ep
    finally:
        ep.stop()


def uplink(ep: Endpoint, pki: Any, spool_dir: Path) -> HttpsUplink:
    return HttpsUplink(HttpsSettings(f"https://localhost:{ep.port}/ingest", pki.ca_file, str(pki.client.cert),
                                     str(pki.client.key), flush_interval_s=0.2, retry_min_s=0.2,
                                     retry_max_s=1, replay_rate=50), Spool(spool_dir, 1))


async def _wait(pred: Any, timeout: float = 15) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


async def test_batches_are_posted_with_mtls_and_validate(endpoint, health_pki, tmp_path):
    up = uplink(endpoint, health_pki, tmp_path / "spool")
    await up.start()
    try:
        t0 = time.time_ns()
        for i in range(5):
            assert up.publish("omgw/v1/GW1/telemetry", payloads.encode(
                payloads.telemetry_payload(i, t0 + i, [], [], {})), time_ns=t0 + i * 1000) == "queued"
        await _wait(lambda: len(endpoint.messages()) >= 5)
        msgs = endpoint.messages()
        assert [m["payload"]["seq"] for m in msgs] == [0, 1, 2, 3, 4]
        assert {m["topic"] for m in msgs} == {"omgw/v1/GW1/telemetry"}
        assert msgs[0]["t"] == payloads.iso_ts(t0)
        for m in msgs:
            payloads.validate("telemetry", m["payload"])
        assert endpoint.peer_cns[0] == "GW1"  # the server saw our client certificate
    finally:
        await up.stop()


def test_endpoint_refuses_a_client_without_certificate(endpoint, health_pki):
    ctx = ssl.create_default_context(cafile=health_pki.ca_file)
    conn = http.client.HTTPSConnection("localhost", endpoint.port, context=ctx, timeout=5)
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
        conn.request("POST", "/ingest", body=b"[]")
        conn.getresponse()
    conn.close()


async def test_endpoint_outage_spools_and_replays_every_seq_once_in_order(endpoint, health_pki, tmp_path):
    up = uplink(endpoint, health_pki, tmp_path / "spool")
    await up.start()
    seq = 0

    async def produce(seconds: float) -> None:
        nonlocal seq
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            up.publish("omgw/v1/GW1/telemetry",
                       payloads.encode(payloads.telemetry_payload(seq, time.time_ns(), [], [], {})))
            seq += 1
            await asyncio.sleep(0.1)

    try:
        await produce(1)
        await asyncio.to_thread(endpoint.stop)
        await produce(3)
        assert len(up.spool) > 0 and not up.reachable
        endpoint.start()  # same port
        await produce(1)
        await _wait(lambda: len(endpoint.messages()) >= seq and len(up.spool) == 0, 20)
        got = [m["payload"]["seq"] for m in endpoint.messages()]
        assert len(got) == len(set(got)), "duplicates"
        assert got == list(range(seq))
        assert up.stats()["replayed"] > 0
    finally:
        await up.stop()


async def test_snapshot_upload_puts_the_archive_with_its_digest(endpoint, health_pki, tmp_path):
    archive = tmp_path / "snap-20261125T170000Z.tar.zst"
    archive.write_bytes(bytes(range(256)) * 1000)
    up = uplink(endpoint, health_pki, tmp_path / "spool")
    url = await up.upload_snapshot(archive)
    assert url.endswith("/ingest/snapshots/snap-20261125T170000Z.tar.zst")
    body, digest = endpoint.puts["/ingest/snapshots/snap-20261125T170000Z.tar.zst"]
    assert body == archive.read_bytes() and digest == hashlib.sha256(body).hexdigest()
