"""A real ``omgw health`` process whose hardware is owned by this (bench) process: its sensors are on
an I2C bus this test serves (``bus = "sim:PATH"``), its relay is looped back to its alive input
(``OMGW_SIM_GPIO_LOOPBACK``). Faults injected here show up in its telemetry; the off time of a
remote ``relay_cycle`` is measured by the gateway on its alive input."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.health.commands import generate_keypair, sign_command
from appliance.health.payloads import validate
from drivers.sim.i2c import SimulatedBme280, SimulatedSht3x, SimulatedSMBus
from drivers.sim.i2c_server import I2cSimServer

OMGW = [sys.executable, "-m", "appliance.cli"]


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="bench") as d:  # short: a socket path is at most 107 bytes
        yield Path(d)


def _config(tmp_path: Path, broker: Any, pki: Any, i2c_sock: Path, public_key: str) -> Path:
    path = tmp_path / "omgw.toml"
    path.write_text(f"""
[gateway]
id = "GW1"
state_dir = "{tmp_path / 'state'}"

[health]
url = "mqtts://localhost:{broker.port}"
ca_file = "{pki.ca_file}"
client_cert = "{pki.client.cert}"
client_key = "{pki.client.key}"
tap_socket = "{tmp_path / 'tap.sock'}"
status_socket = "{tmp_path / 'health.sock'}"
metrics_listen = "off"
sample_interval_s = 0.25

[[health.sensors]]
name = "cabinet"
model = "sht3x"
bus = "sim:{i2c_sock}"
address = 0x44

[[health.sensors]]
name = "ambient"
model = "bme280"
bus = "sim:{i2c_sock}"
address = 0x76

[watchdog]
enabled = true
cp_id = "CP001"
relay_pin = "GPIO17"
alive_pin = "GPIO27"
off_s = 2
hang_after_s = 3600
offline_after_s = 3600

[[commands.keys]]
kid = "ops"
public_key = "{public_key}"
allowed = ["relay_cycle"]
""")
    return path


async def test_bench_owned_sensors_and_relay_loopback_seen_by_a_separate_health_process(
    tmp_path: Path, sock_dir: Path, mosquitto: Any, health_pki: Any, subscribe: Any
) -> None:
    sht = SimulatedSht3x(temperature_c=21.5, humidity_rh=40.0)
    bme = SimulatedBme280(temperature_c=23.0, humidity_rh=50.0, pressure_hpa=1000.0)
    sim = SimulatedSMBus({0x44: sht, 0x76: bme})
    i2c_sock = sock_dir / "i2c.sock"
    server = I2cSimServer(sim, i2c_sock)
    priv, pub = generate_keypair()
    cfg = _config(tmp_path, mosquitto, health_pki, i2c_sock, pub)
    sub = subscribe(mosquitto, "omgw/v1/GW1/#")
    seen = 0

    async def next_telemetry(pred: Callable[[dict[str, dict[str, Any]]], bool], timeout: float = 15) -> dict[str, Any]:
        """The first telemetry sample after the last one returned whose sensors (by name) satisfy pred."""
        nonlocal seen

        def match(msgs: list[Any]) -> bool:
            return any(pred({s["name"]: s for s in m.json()["sensors"]}) for m in msgs[seen:])

        msgs = await asyncio.to_thread(sub.wait_for, match, timeout, "omgw/v1/GW1/telemetry")
        for i in range(seen, len(msgs)):
            payload = msgs[i].json()
            if pred({s["name"]: s for s in payload["sensors"]}):
                seen = i + 1
                validate("telemetry", msgs[i].payload)
                return {s["name"]: s for s in payload["sensors"]}
        raise AssertionError("unreachable")

    log = (tmp_path / "health.log").open("wb")
    env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock", "OMGW_SIM_GPIO_LOOPBACK": "GPIO17>GPIO27,invert"}
    proc = await asyncio.create_subprocess_exec(*OMGW, "health", "-c", str(cfg), stdout=log,
                                                stderr=asyncio.subprocess.STDOUT, env=env)
    try:
        # Readings of the chips this process owns.
        s = await next_telemetry(lambda s: s["cabinet"]["q"] == "ok" and s["ambient"]["q"] == "ok", 30)
        assert s["cabinet"]["temperature_c"] == pytest.approx(21.5, abs=0.01)
        assert s["ambient"]["pressure_hpa"] == pytest.approx(1000.0, abs=0.1)
        sht.set_climate(30.0, 65.0)
        s = await next_telemetry(lambda s: s["cabinet"]["q"] == "ok" and s["cabinet"]["temperature_c"] > 29)
        assert s["cabinet"]["humidity_rh"] == pytest.approx(65.0, abs=0.01)

        # Every measurement's CRC corrupted: the driver's retry fails too, the sample says crc.
        sht.corrupt_crc(None)
        s = await next_telemetry(lambda s: s["cabinet"]["q"] == "crc")
        assert "CRC mismatch" in s["cabinet"]["reason"] and "after 1 retry" in s["cabinet"]["reason"]
        assert s["cabinet"]["temperature_c"] is None and s["ambient"]["q"] == "ok"
        sht.clear_faults()
        await next_telemetry(lambda s: s["cabinet"]["q"] == "ok")

        # The sensor unplugged: missing, naming bus and address.
        sim.detach(0x44)
        s = await next_telemetry(lambda s: s["cabinet"]["q"] == "missing")
        assert "I2cDeviceMissing" in s["cabinet"]["reason"] and "bus 0 address 0x44" in s["cabinet"]["reason"]
        sim.attach(0x44, sht)
        await next_telemetry(lambda s: s["cabinet"]["q"] == "ok")

        # The bench goes away and comes back: every sensor missing, then read again.
        server.close()
        s = await next_telemetry(lambda s: s["cabinet"]["q"] == "missing" and s["ambient"]["q"] == "missing")
        server = I2cSimServer(sim, i2c_sock)
        await next_telemetry(lambda s: s["cabinet"]["q"] == "ok" and s["ambient"]["q"] == "ok")

        # A remote relay_cycle: the gateway measures the off time on its (looped-back) alive input.
        ops = subscribe(mosquitto, "ops/replies/#", client_id="ops")
        ops.publish("omgw/v1/GW1/cmd/relay_cycle",
                    sign_command(priv, "ops", "relay_cycle", "GW1", {"cp": "CP001"}),
                    response_topic="ops/replies/1", correlation_data=b"c1")
        replies = await asyncio.to_thread(ops.wait_for, lambda ms: len(ms) >= 1, 20)
        reply = replies[0].json()
        assert reply["ok"] is True, reply
        result = reply["result"]
        assert result["phase"] == "done" and abs(result["off_s"] - 2.0) <= 0.05
        assert abs(result["detail"]["input_off_s"] - result["off_s"]) <= 0.05, result
        events = await asyncio.to_thread(sub.wait_for, lambda ms: any(
            m.json().get("phase") == "done" for m in ms), 10, "omgw/v1/GW1/event")
        done = next(m.json() for m in events if m.json().get("phase") == "done")
        assert done["detail"]["input_off_s"] == result["detail"]["input_off_s"]
        validate("event", next(m.payload for m in events if m.json().get("phase") == "done"))
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            rc = await asyncio.wait_for(proc.wait(), 20)
            assert rc == 0, (tmp_path / "health.log").read_text()[-3000:]
        log.close()
        server.close()
    text = (tmp_path / "health.log").read_text()
    assert "Traceback" not in text, text[-3000:]
    assert "sim_gpio_loopback" in text
