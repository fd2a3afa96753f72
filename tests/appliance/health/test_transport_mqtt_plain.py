"""mqtt:// (health.allow_insecure): the uplink talks plain MQTT to a real mosquitto, no TLS set up."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from appliance import config as config_mod
from appliance.health import payloads
from appliance.health.mqtt import MqttSettings, MqttUplink
from appliance.health.run import HealthChannel
from appliance.health.spool import Spool
from conftest import Mosquitto


async def test_plain_mqtt_uplink_connects_and_publishes(tmp_path: Path, health_pki) -> None:
    (tmp_path / "broker-dir").mkdir()
    broker = Mosquitto(tmp_path / "broker-dir", health_pki)
    conf = broker.conf.read_text().split("listener ")[0]
    broker.conf.write_text(conf + f"listener {broker.port} 127.0.0.1\nallow_anonymous true\n")
    broker.start()
    try:
        up = MqttUplink(MqttSettings(broker.host, broker.port, "GW1", None, None, None, tls=False,
                                     reconnect_min_s=1, reconnect_max_s=1), Spool(tmp_path / "spool", 1))
        await up.start()
        try:
            await up.wait_connected(10)
            p = payloads.telemetry_payload(0, time.time_ns(), [], [], {"load1": 0.1})
            assert up.publish(up.topics.telemetry, payloads.encode(p)) == "sent"
            for _ in range(100):
                if up.counters["published"] >= 1:
                    break
                await asyncio.sleep(0.05)
            assert up.counters["published"] >= 1
        finally:
            await up.stop()
    finally:
        broker.stop()


def test_mqtt_url_gives_a_plain_uplink_on_1883(tmp_path: Path) -> None:
    text = (f'[gateway]\nid = "gw-1"\nstate_dir = "{tmp_path}"\n'
            '[health]\nurl = "mqtt://broker.local"\nallow_insecure = true\n')
    path = tmp_path / "omgw.toml"
    path.write_text(text)
    cfg = config_mod.load(path)
    uplink = HealthChannel(cfg)._make_uplink()
    assert uplink.s.tls is False and uplink.s.port == 1883 and uplink.s.ca_file is None
