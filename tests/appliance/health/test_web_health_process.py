"""``omgw health`` with ``[health.web]``: the page's data comes from the running process, and the
snapshot button is audited in the black box with the technician's name (mosquitto, pty meter)."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import ssl
import sys
import tarfile
import time
from typing import Any

from appliance.blackbox.snapshot import verify_snapshot
from appliance.passwords import hash_password
from drivers.modbus.regmap import load_map
from drivers.sim.modbus_meter import SimulatedBus, SimulatedMeter

OMGW = [sys.executable, "-m", "appliance.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_health_process_serves_the_page_and_audits_the_snapshot_button(tmp_path, mosquitto, health_pki) -> None:
    web_port = free_port()
    leaf = health_pki.ca.issue("gw-web-test", hosts=("127.0.0.1",))
    origin = f"https://127.0.0.1:{web_port}"
    ctx = ssl.create_default_context(cafile=health_pki.ca_file)

    def request(method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
                ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPSConnection("127.0.0.1", web_port, context=ctx, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    async def call(*args: Any, **kw: Any) -> tuple[int, dict[str, str], bytes]:
        return await asyncio.to_thread(request, *args, **kw)

    async with SimulatedBus([SimulatedMeter(load_map("sdm630"), 1)], workdir=tmp_path / "line") as sim:
        cfg = tmp_path / "omgw.toml"
        cfg.write_text(f"""
[gateway]
id = "GW1"
state_dir = "{tmp_path / 'state'}"
[health]
url = "mqtts://localhost:{mosquitto.port}"
ca_file = "{health_pki.ca_file}"
client_cert = "{health_pki.client.cert}"
client_key = "{health_pki.client.key}"
tap_socket = "{tmp_path / 'tap.sock'}"
status_socket = "{tmp_path / 'health.sock'}"
metrics_listen = "off"
[[health.meters]]
name = "feed1"
model = "sdm630"
port = "{sim.port}"
timeout_s = 0.2
[[health.sensors]]
name = "cabinet"
model = "sht3x"
bus = "sim"
address = 0x44
[health.web]
listen = "127.0.0.1:{web_port}"
cert_file = "{leaf.cert}"
key_file = "{leaf.key}"
[[health.web.users]]
name = "tech"
password_hash = "{hash_password('pw-for-the-test')}"
[blackbox]
pre_s = 5
post_s = 1
""")
        log_path = tmp_path / "health.log"
        log = log_path.open("wb")
        proc = await asyncio.create_subprocess_exec(*OMGW, "health", "-c", str(cfg), stdout=log,
                                                    stderr=asyncio.subprocess.STDOUT,
                                                    env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"})
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    status, headers, body = await call("POST", "/api/login",
                                                       json.dumps({"user": "tech", "password": "pw-for-the-test"}).encode(),
                                                       {"Origin": origin})
                    break
                except (ConnectionRefusedError, ConnectionResetError):
                    assert time.monotonic() < deadline, log_path.read_text()[-2000:]
                    await asyncio.sleep(0.2)
            assert status == 200, body
            cookie = headers["set-cookie"].split(";", 1)[0]
            csrf = json.loads(body)["csrf"]
            auth = {"Cookie": cookie}

            while True:  # a few samples into the history
                _, _, body = await call("GET", "/api/telemetry?minutes=10", headers=auth)
                points = json.loads(body)["points"]
                if len(points) >= 3 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            assert len(points) >= 3
            assert all(isinstance(v, float) for v in points[-1]["m"]["feed1"]["V"])
            assert points[-1]["s"]["cabinet"]["dp"] is not None

            _, _, body = await call("GET", "/api/health", headers=auth)
            health = json.loads(body)
            assert health["gateway_id"] == "GW1" and health["uplink"]["connected"] is True
            assert health["versions"]["omgw"] and health["disk"]["disk_total_bytes"] > 0
            assert "synced" in health["clock"]
            _, _, body = await call("GET", "/api/chargers", headers=auth)
            assert json.loads(body) == {"chargers": [], "value_channel": None}

            status, _, body = await call("POST", "/api/snapshot", b"{}",
                                         {**auth, "Origin": origin, "X-CSRF-Token": csrf})
            assert status == 202 and json.loads(body)["requested"] is True

            snap: dict[str, Any] | None = None
            deadline = time.monotonic() + 15
            while snap is None and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                _, _, body = await call("GET", "/api/snapshots", headers=auth)
                snap = next((s for s in json.loads(body)["snapshots"] if "web: tech" in s["reasons"]), None)
            assert snap is not None, log_path.read_text()[-2000:]
            status, _, body = await call("GET", f"/api/snapshots/{snap['id']}", headers=auth)
            assert status == 200
            archive = tmp_path / "web.tar.gz"
            archive.write_bytes(body)
            assert verify_snapshot(archive) == []
            with tarfile.open(archive) as tar:
                lines = [json.loads(line) for m in tar.getmembers() if m.isfile() and m.name.endswith(".jsonl")
                         for line in tar.extractfile(m).read().decode().splitlines()]  # type: ignore[union-attr]
            audits = [r for r in lines if "web" in json.dumps(r) and "command" in json.dumps(r)]
            assert audits, "no audit record of the snapshot button in the archive"
            assert "user=tech" in log_path.read_text() and "web_snapshot_requested" in log_path.read_text()
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 15)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            log.close()
