"""The technician page's HTTPS server (appliance/health/web/server.py) over a real TLS socket.

The server runs on the test's event loop on a free loopback port with a DevCA certificate; the
requests are real (http.client + ssl, in a worker thread) and trust only that CA.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
import tarfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from appliance.blackbox.record import RecordKind
from appliance.blackbox.snapshot import SnapshotArchive, read_manifest, verify_snapshot, write_snapshot
from appliance.blackbox.store import BlackBox
from appliance.config import WebConfig, WebUser, parse
from appliance.devpki import CertFiles, DevCA
from appliance.health.web.data import snapshots_doc
from appliance.health.web.server import WebServer
from appliance.passwords import hash_password

PASSWORD = "correct horse battery"
S = 1_000_000_000


@dataclass
class FakeSource:
    archive: SnapshotArchive
    requests: list[tuple[str, str]] = field(default_factory=list)

    async def chargers(self) -> dict[str, Any]:
        return {"chargers": [{"cp_id": "CP001", "connected": True}], "value_channel": None}

    def telemetry(self, minutes: float) -> dict[str, Any]:
        return {"minutes": minutes, "points": [{"t": 1, "m": {}, "s": {}}]}

    def health(self) -> dict[str, Any]:
        return {"state": "up", "events": []}

    def snapshots(self) -> dict[str, Any]:
        return snapshots_doc(self.archive.snapshots())

    def snapshot_path(self, name: str) -> Path | None:
        info = self.archive.get(name)
        return None if info is None else info.path

    async def request_snapshot(self, user: str, address: str) -> dict[str, Any]:
        self.requests.append((user, address))
        return {"requested": True, "by": user}

    def live(self) -> dict[str, Any]:
        return {"point": {"t": 1}, "health": self.health()}


@dataclass
class Site:
    server: WebServer
    source: FakeSource
    ctx: ssl.SSLContext
    snapshot_id: str
    ca: DevCA
    client: CertFiles

    @property
    def origin(self) -> str:
        return f"https://127.0.0.1:{self.server.port}"

    async def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                      ctx: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], bytes]:
        def go() -> tuple[int, dict[str, str], bytes]:
            conn = http.client.HTTPSConnection("127.0.0.1", self.server.port, context=ctx or self.ctx, timeout=10)
            data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
            conn.request(method, path, body=data, headers=headers or {})
            r = conn.getresponse()
            out = r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
            conn.close()
            return out

        return await asyncio.to_thread(go)

    async def login(self, user: str = "tech", password: str = PASSWORD) -> tuple[int, dict[str, str], bytes]:
        return await self.request("POST", "/api/login", {"user": user, "password": password},
                                  {"Origin": self.origin, "Content-Type": "application/json"})

    async def session(self) -> tuple[str, str]:
        status, headers, body = await self.login()
        assert status == 200, body
        cookie = headers["set-cookie"].split(";", 1)[0]
        return cookie, json.loads(body)["csrf"]


def _make_snapshot(directory: Path) -> str:
    store = BlackBox(directory / "bb")
    store.open()
    t0 = time.time_ns() - 10 * S
    for i in range(10):
        store.append(RecordKind.EVENT, {"kind": "test", "i": i}, time_ns=t0 + i * S)
    store.flush()
    path = write_snapshot(store, t0, t0 + 10 * S, directory / "bb" / "snapshots", "GW1", "operator_request",
                          trigger_ns=t0 + 5 * S)
    store.close()
    return path.name[: -len(".tar.gz")]


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    ca = DevCA(tmp_path / "pki")
    leaf = ca.issue("gw-web", hosts=("127.0.0.1", "localhost"))
    client = ca.issue("alice", client=True)
    snap = _make_snapshot(tmp_path)
    cfg = WebConfig(listen="127.0.0.1:0", cert_file=leaf.cert, key_file=leaf.key, client_ca_file=ca.cert_file,
                    users=[WebUser(name="tech", password_hash=hash_password(PASSWORD))],
                    lockout_failures=5, lockout_s=60)
    source = FakeSource(SnapshotArchive(tmp_path / "bb" / "snapshots"))
    server = WebServer(cfg, source)
    await server.start()
    ctx = ssl.create_default_context(cafile=str(ca.cert_file))
    try:
        yield Site(server, source, ctx, snap, ca, client)
    finally:
        await server.close()


async def test_page_is_served_over_https_with_security_headers(site: Site) -> None:
    status, headers, body = await site.request("GET", "/")
    assert status == 200 and b"<title>omgw technician view</title>" in body
    assert "script-src 'self'" in headers["content-security-policy"] and headers["x-frame-options"] == "DENY"
    for path in ("/app.js", "/style.css"):
        status, headers, _ = await site.request("GET", path)
        assert status == 200 and headers["x-content-type-options"] == "nosniff"


async def test_plain_http_and_untrusted_clients_get_no_page(site: Site) -> None:
    untrusting = ssl.create_default_context()  # the system store does not know the DevCA
    with pytest.raises(ssl.SSLCertVerificationError):
        await site.request("GET", "/", ctx=untrusting)


async def test_every_api_endpoint_needs_a_session(site: Site) -> None:
    for path in ("/api/chargers", "/api/telemetry", "/api/health", "/api/snapshots", "/api/stream",
                 f"/api/snapshots/{site.snapshot_id}"):
        status, _, _ = await site.request("GET", path)
        assert status == 401, path
    status, _, body = await site.request("GET", "/api/session")
    assert status == 200 and json.loads(body) == {"user": None}
    status, _, _ = await site.request("POST", "/api/snapshot", b"{}", {"Origin": site.origin})
    assert status == 401 and site.source.requests == []


async def test_wrong_password_and_unknown_user_are_refused(site: Site) -> None:
    status, headers, body = await site.login(password="wrong")
    assert status == 401 and "set-cookie" not in headers
    status, _, _ = await site.login(user="nobody")
    assert status == 401


async def test_login_sets_a_strict_http_only_secure_host_cookie(site: Site) -> None:
    status, headers, body = await site.login()
    assert status == 200
    cookie = headers["set-cookie"]
    name, _, rest = cookie.partition("=")
    assert name == "__Host-omgw_session"
    flags = {f.strip() for f in cookie.split(";")[1:]}
    assert {"HttpOnly", "Secure", "SameSite=Strict", "Path=/"} <= flags
    assert not any(f.lower().startswith("domain") for f in flags)
    assert len(rest.split(";")[0]) >= 43  # 256 random bits
    doc = json.loads(body)
    assert doc["user"] == "tech" and len(doc["csrf"]) >= 43


async def test_lockout_after_five_failures_answers_429_with_retry_after(site: Site) -> None:
    for _ in range(4):
        assert (await site.login(password="nope"))[0] == 401
    status, headers, _ = await site.login(password="nope")
    assert status == 429 and 55 <= int(headers["retry-after"]) <= 60
    status, headers, _ = await site.login()  # the right password does not help while locked
    assert status == 429 and "set-cookie" not in headers


async def test_lockout_per_address_covers_other_user_names(site: Site) -> None:
    for i in range(5):
        await site.login(user=f"guess{i}", password="x")
    status, headers, _ = await site.login()
    assert status == 429 and int(headers["retry-after"]) > 0


async def test_login_from_another_origin_is_refused(site: Site) -> None:
    status, _, _ = await site.request("POST", "/api/login", {"user": "tech", "password": PASSWORD},
                                      {"Origin": "https://evil.example"})
    assert status == 403


async def test_data_endpoints_answer_json_with_a_session(site: Site) -> None:
    cookie, _ = await site.session()
    h = {"Cookie": cookie}
    for path, key in (("/api/chargers", "chargers"), ("/api/telemetry?minutes=10", "points"),
                      ("/api/health", "state"), ("/api/snapshots", "snapshots"), ("/api/session", "csrf")):
        status, headers, body = await site.request("GET", path, headers=h)
        assert status == 200 and headers["content-type"] == "application/json", path
        assert key in json.loads(body)
        assert headers["cache-control"] == "no-store"
    status, _, _ = await site.request("GET", "/api/telemetry?minutes=lots", headers=h)
    assert status == 400


async def test_snapshot_post_needs_the_csrf_token_and_same_origin(site: Site) -> None:
    cookie, csrf = await site.session()
    base = {"Cookie": cookie, "Content-Type": "application/json"}
    for headers in ({**base, "Origin": site.origin},  # no token
                    {**base, "Origin": site.origin, "X-CSRF-Token": "forged"},
                    {**base, "Origin": "https://evil.example", "X-CSRF-Token": csrf},
                    {**base, "X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"}):
        status, _, _ = await site.request("POST", "/api/snapshot", b"{}", headers)
        assert status == 403, headers
    assert site.source.requests == []
    status, _, body = await site.request("POST", "/api/snapshot", b"{}",
                                         {**base, "Origin": site.origin, "X-CSRF-Token": csrf})
    assert status == 202 and json.loads(body)["by"] == "tech"
    assert site.source.requests == [("tech", "127.0.0.1")]


async def test_snapshot_names_cannot_escape_the_archive(site: Site) -> None:
    cookie, _ = await site.session()
    h = {"Cookie": cookie}
    for path in ("/api/snapshots/..%2F..%2Fetc%2Fpasswd", "/api/snapshots/../../etc/passwd",
                 "/api/snapshots/.hidden", "/api/snapshots/a%00b", "/api/snapshots/%2e%2e"):
        status, _, _ = await site.request("GET", path, headers=h)
        assert status in (400, 404), path
    status, _, _ = await site.request("GET", "/api/snapshots/20990101T000000Z-nothing-0000", headers=h)
    assert status == 404


async def test_snapshot_download_is_the_archive_and_its_manifest_verifies(site: Site, tmp_path: Path) -> None:
    cookie, _ = await site.session()
    status, _, body = await site.request("GET", "/api/snapshots", headers={"Cookie": cookie})
    listed = json.loads(body)["snapshots"]
    assert [s["id"] for s in listed] == [site.snapshot_id] and listed[0]["reasons"] == ["operator_request"]
    status, headers, body = await site.request("GET", f"/api/snapshots/{site.snapshot_id}", headers={"Cookie": cookie})
    assert status == 200 and headers["content-type"] == "application/gzip"
    assert f'filename="{site.snapshot_id}.tar.gz"' in headers["content-disposition"]
    out = tmp_path / "download.tar.gz"
    out.write_bytes(body)
    assert verify_snapshot(out) == []
    assert read_manifest(out)["snapshot_id"] == site.snapshot_id
    with tarfile.open(out) as tar:
        assert any(n.endswith("manifest.json") for n in tar.getnames())


async def test_logout_ends_the_session(site: Site) -> None:
    cookie, csrf = await site.session()
    status, headers, _ = await site.request("POST", "/api/logout", b"{}",
                                            {"Cookie": cookie, "X-CSRF-Token": csrf, "Origin": site.origin})
    assert status == 200 and "Max-Age=0" in headers["set-cookie"]
    status, _, _ = await site.request("GET", "/api/health", headers={"Cookie": cookie})
    assert status == 401


async def test_a_client_certificate_from_the_technician_ca_logs_in_as_its_name(site: Site) -> None:
    ctx = ssl.create_default_context(cafile=str(site.ca.cert_file))
    ctx.load_cert_chain(str(site.client.cert), str(site.client.key))
    status, headers, body = await site.request("GET", "/api/session", ctx=ctx)
    assert status == 200 and json.loads(body)["user"] == "cert:alice"
    assert headers["set-cookie"].startswith("__Host-omgw_session=")


async def test_event_stream_sends_ticks_to_a_session(site: Site) -> None:
    cookie, _ = await site.session()

    def read_two_events() -> list[str]:
        conn = http.client.HTTPSConnection("127.0.0.1", site.server.port, context=site.ctx, timeout=10)
        conn.request("GET", "/api/stream", headers={"Cookie": cookie})
        r = conn.getresponse()
        assert r.status == 200 and r.getheader("Content-Type") == "text/event-stream"
        events, t0 = [], time.monotonic()
        while len(events) < 2:
            line = r.fp.readline().decode()
            if line.startswith("event: "):
                events.append(line.strip())
        conn.close()
        assert time.monotonic() - t0 < 3.5
        return events

    assert await asyncio.to_thread(read_two_events) == ["event: tick", "event: tick"]


def test_config_requires_https_or_an_explicit_insecure_flag(tmp_path: Path) -> None:
    from appliance.config import ConfigError

    base = {"gateway": {"id": "gw"}, "health": {"web": {"users": [{"name": "t", "password_hash": "plain"}]}}}
    with pytest.raises(ConfigError) as e:
        parse(base, check_files=False)
    paths = {p.path for p in e.value.problems}
    assert {"health.web.cert_file", "health.web.users[0].password_hash"} <= paths
    ok = {"gateway": {"id": "gw"}, "health": {"web": {"allow_insecure": True, "users": [
        {"name": "t", "password_hash": hash_password("x")}]}}}
    assert parse(ok, check_files=False).health.web.listen == "127.0.0.1:8443"
