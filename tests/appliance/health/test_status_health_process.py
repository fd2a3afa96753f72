"""``omgw health`` serves its status socket and metrics; ``omgw status`` reads them (mosquitto, pty meter)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
import urllib.request
from pathlib import Path

from drivers.modbus.regmap import load_map
from drivers.sim.modbus_meter import SimulatedBus, SimulatedMeter


OMGW = [sys.executable, "-m", "appliance.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def omgw_status(cfg: Path) -> tuple[int, dict]:
    proc = await asyncio.create_subprocess_exec(*OMGW, "status", "-c", str(cfg), "--json",
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, json.loads(out)


async def test_health_process_reports_up_over_status_socket_and_metrics(tmp_path, mosquitto, health_pki) -> None:
    metrics_port = free_port()
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
metrics_listen = "127.0.0.1:{metrics_port}"
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
""")
        log = (tmp_path / "health.log").open("wb")
        proc = await asyncio.create_subprocess_exec(*OMGW, "health", "-c", str(cfg), stdout=log,
                                                    stderr=asyncio.subprocess.STDOUT,
                                                    env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"})
        try:
            deadline = time.monotonic() + 20
            while True:
                rc, result = await omgw_status(cfg)
                health = result["channels"]["health"]
                if rc == 0 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            assert rc == 0, (result, (tmp_path / "health.log").read_text()[-2000:])
            assert health["state"] == "up" and health["reasons"] == [] and health["uplink"]["connected"] is True
            assert health["devices"]["meter:feed1"]["quality"] == "ok"
            assert health["devices"]["sensor:cabinet"]["quality"] == "ok"
            assert health["sampler"]["ticks"] >= 1 and health["watchdog"] is None
            assert oct((tmp_path / "health.sock").stat().st_mode & 0o777) == "0o660"

            def scrape() -> str:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
                    return r.read().decode()

            text = await asyncio.to_thread(scrape)
            assert "omgw_health_degraded 0.0" in text
            assert 'omgw_health_device_ok{device="meter:feed1",kind="meter",quality="ok"} 1.0' in text

            # The broker goes away: after 60 s the channel would be degraded; here the state is still
            # up but the uplink is reported disconnected at once.
            mosquitto.stop()
            await asyncio.sleep(2)
            rc, result = await omgw_status(cfg)
            assert result["channels"]["health"]["uplink"]["connected"] is False
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 15)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            log.close()
    assert not (tmp_path / "health.sock").exists()  # unlinked on stop
    rc, result = await omgw_status(cfg)
    assert rc == 1 and result["channels"]["health"]["state"] == "down"
