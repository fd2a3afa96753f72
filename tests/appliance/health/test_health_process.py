"""``omgw health`` end to end: simulated meter on a pty, simulated sensors, the tap, a real mosquitto."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

from drivers.modbus.regmap import load_map
from drivers.sim.modbus_meter import SimulatedBus, SimulatedMeter

from appliance.health.commands import generate_keypair, sign_command
from appliance.health.payloads import validate
from appliance.tap import TapSender


def schema_name(topic: str) -> str:
    tail = topic.split("/", 3)[3]
    if tail.startswith("ocpp/"):
        return "cp_state"
    if tail.startswith("blackbox/"):
        return "blackbox_manifest"
    return tail

OMGW = [sys.executable, "-m", "appliance.cli"]


def _config(tmp_path: Path, broker, pki, port: str, public_key: str) -> Path:
    text = f"""
[gateway]
id = "GW1"
state_dir = "{tmp_path / 'state'}"

[health]
url = "mqtts://localhost:{broker.port}"
ca_file = "{pki.ca_file}"
client_cert = "{pki.client.cert}"
client_key = "{pki.client.key}"
tap_socket = "{tmp_path / 'tap.sock'}"
soh_interval_s = 2

[[health.meters]]
name = "feed1"
model = "sdm630"
port = "{port}"
unit_id = 1
timeout_s = 0.2

[[health.sensors]]
name = "cabinet"
model = "sht3x"
bus = "sim"
address = 0x44

[blackbox]
pre_s = 2
post_s = 1

[watchdog]
enabled = true
cp_id = "CP001"
off_s = 2
hang_after_s = 3600
offline_after_s = 3600

[[commands.keys]]
kid = "ops"
public_key = "{public_key}"
allowed = ["ping", "snapshot", "relay_cycle", "selftest", "read_registers", "get_config", "set_sample_interval"]
"""
    path = tmp_path / "omgw.toml"
    path.write_text(text)
    return path


async def test_health_process_publishes_records_and_answers_commands(tmp_path, mosquitto, health_pki,
                                                                      subscribe) -> None:
    priv, pub = generate_keypair()
    async with SimulatedBus([SimulatedMeter(load_map("sdm630"), 1)], workdir=tmp_path / "line") as sim:
        cfg = _config(tmp_path, mosquitto, health_pki, sim.port, pub)
        check = await asyncio.create_subprocess_exec(*OMGW, "check-config", "-c", str(cfg),
                                                     stdout=asyncio.subprocess.PIPE)
        out, _ = await check.communicate()
        assert check.returncode == 0, out.decode()
        sub = subscribe(mosquitto, "omgw/v1/GW1/#")
        log = (tmp_path / "health.log").open("wb")
        proc = await asyncio.create_subprocess_exec(*OMGW, "health", "-c", str(cfg), stdout=log,
                                                    stderr=asyncio.subprocess.STDOUT,
                                                    env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"})
        try:
            # 1 Hz telemetry with the meter and the sensor.
            await asyncio.to_thread(sub.wait_for, lambda ms: sum(m.topic.endswith("/telemetry") for m in ms) >= 3, 20)
            tele = [m.json() for m in sub.snapshot() if m.topic.endswith("/telemetry")]
            assert [t["seq"] for t in tele[:3]] == [0, 1, 2]
            assert tele[-1]["meters"][0]["name"] == "feed1"
            volts = tele[-1]["meters"][0]["values"]["voltage_L1"]
            assert volts["q"] == "ok" and 200 < volts["v"] < 260
            assert tele[-1]["sensors"][0]["q"] == "ok"
            status = [m for m in sub.snapshot() if m.topic.endswith("/status")]
            assert status and status[-1].retain is True or status[-1].json()["state"] == "online"

            # A charger reports Faulted through the tap: an event, the charger's state and a snapshot.
            tap = TapSender(str(tmp_path / "tap.sock"), "GW1")
            tap_task = asyncio.create_task(tap.run())
            now = time.time_ns()
            tap.put(now, "CP001", "", "connect", subprotocol="ocpp1.6")
            tap.put(now + 1, "CP001", "up", "frame",
                    '[2,"s1","StatusNotification",{"connectorId":1,"errorCode":"GroundFailure","status":"Faulted"}]')
            tap.put(now + 2, "CP001", "down", "frame", '[3,"s1",{}]')
            await asyncio.to_thread(sub.wait_for, lambda ms: any("/blackbox/" in m.topic for m in ms), 20)
            events = [m.json() for m in sub.snapshot() if m.topic.endswith("/event")]
            assert any(e.get("kind") == "fault" for e in events)
            states = [m.json() for m in sub.snapshot() if m.topic.endswith("/ocpp/CP001/state")]
            assert states and states[-1]["connectors"]["1"]["status"] == "Faulted"
            manifest = next(m.json() for m in sub.snapshot() if "/blackbox/" in m.topic)
            assert manifest["gateway_id"] == "GW1" and manifest["records"]["by_kind"]["ocpp"] >= 2
            assert any("ocpp_faulted" in r for r in manifest["trigger"]["reasons"])
            tap_task.cancel()

            # A signed ping is answered on the response topic; a forged one is refused.
            envelope = sign_command(priv, "ops", "ping", "GW1", {})
            reply_sub = subscribe(mosquitto, "ops/replies/#", client_id="ops")
            reply_sub.publish("omgw/v1/GW1/cmd/ping", envelope, response_topic="ops/replies/1",
                              correlation_data=b"c1")
            replies = await asyncio.to_thread(reply_sub.wait_for, lambda ms: len(ms) >= 1, 10)
            assert replies[0].json()["ok"] is True and replies[0].json()["result"]["pong"] is True
            other_priv, _ = generate_keypair()
            reply_sub.publish("omgw/v1/GW1/cmd/ping", sign_command(other_priv, "ops", "ping", "GW1", {}),
                              response_topic="ops/replies/2", correlation_data=b"c2")
            replies = await asyncio.to_thread(reply_sub.wait_for, lambda ms: len(ms) >= 2, 10)
            assert replies[1].json()["ok"] is False and replies[1].json()["error"] == "bad_signature"

            # relay_cycle honours the transaction guard unless forced.
            tap = TapSender(str(tmp_path / "tap.sock"), "GW1")
            tap_task = asyncio.create_task(tap.run())
            now = time.time_ns()
            tap.put(now, "CP001", "up", "frame",
                    '[2,"t1","StartTransaction",{"connectorId":1,"idTag":"hmac:00","meterStart":0,'
                    '"timestamp":"2026-11-25T10:00:00Z"}]')
            tap.put(now + 1, "CP001", "down", "frame", '[3,"t1",{"transactionId":7,"idTagInfo":{"status":"Accepted"}}]')
            await asyncio.to_thread(sub.wait_for, lambda ms: any(
                m.topic.endswith("/ocpp/CP001/state") and m.json().get("transaction") for m in ms), 10)
            reply_sub.publish("omgw/v1/GW1/cmd/relay_cycle",
                              sign_command(priv, "ops", "relay_cycle", "GW1", {"cp": "CP001"}),
                              response_topic="ops/replies/3", correlation_data=b"c3")
            replies = await asyncio.to_thread(reply_sub.wait_for, lambda ms: len(ms) >= 3, 10)
            assert replies[2].json()["ok"] is False and replies[2].json()["error"] == "transaction_active"
            reply_sub.publish("omgw/v1/GW1/cmd/relay_cycle",
                              sign_command(priv, "ops", "relay_cycle", "GW1", {"cp": "CP001", "force": True}),
                              response_topic="ops/replies/4", correlation_data=b"c4")
            replies = await asyncio.to_thread(reply_sub.wait_for, lambda ms: len(ms) >= 4, 15)
            assert replies[3].json()["ok"] is True
            assert abs(replies[3].json()["result"]["off_s"] - 2.0) < 0.05
            assert (tmp_path / "state" / "relay-CP001.cycles").read_text().strip() == "1"  # for SOH, across restarts
            tap_task.cancel()

            # selftest actively checks the black box, each meter and sensor, the tap, disk and clock.
            reply_sub.publish("omgw/v1/GW1/cmd/selftest", sign_command(priv, "ops", "selftest", "GW1", {}),
                              response_topic="ops/replies/5", correlation_data=b"c5")
            replies = await asyncio.to_thread(reply_sub.wait_for, lambda ms: len(ms) >= 5, 15)
            checks = replies[4].json()["result"]["checks"]
            for name in ("blackbox_write", "meter:feed1", "sensor:cabinet", "tap", "disk_free"):
                assert checks[name]["ok"], (name, checks[name])

            # read_registers is read-only diagnostics on the meter's own bus; get_config hides no secret
            # in plain text (the config only names secret files); set_sample_interval is range-checked.
            for i, (name, args) in enumerate([("read_registers", {"meter": "feed1", "function": 4, "address": 0,
                                                                  "count": 2}),
                                              ("get_config", {}),
                                              ("set_sample_interval", {"interval_s": 1.0})], start=6):
                reply_sub.publish(f"omgw/v1/GW1/cmd/{name}", sign_command(priv, "ops", name, "GW1", args, ttl_s=60),
                                  response_topic=f"ops/replies/{i}", correlation_data=b"c")
            replies = await asyncio.to_thread(reply_sub.wait_for, lambda ms: len(ms) >= 8, 15)
            by_name = {r.json()["name"]: r.json() for r in replies[5:]}  # handlers finish in any order
            assert by_name["read_registers"]["ok"], by_name["read_registers"]
            assert len(by_name["read_registers"]["result"]["registers"]) == 2
            assert by_name["get_config"]["ok"] and by_name["get_config"]["result"]["gateway"]["id"] == "GW1"
            assert by_name["set_sample_interval"]["ok"] and by_name["set_sample_interval"]["result"]["interval_s"] == 1.0
            for r in replies:
                validate("command_reply", r.payload)

            # SOH every soh_interval_s.
            await asyncio.to_thread(sub.wait_for, lambda ms: any(m.topic.endswith("/soh") for m in ms), 10)

            # Every payload the gateway published validates against its JSON Schema in the repo.
            problems = []
            for m in sub.snapshot():
                if "/cmd/" in m.topic:  # the operator's signed commands, not the gateway's payloads
                    continue
                name = schema_name(m.topic)
                try:
                    validate(name, m.payload)
                except Exception as e:  # noqa: BLE001 - collect them all for one clear failure
                    problems.append(f"{m.topic}: {str(e).splitlines()[0]}")
            assert not problems, "\n".join(sorted(set(problems))[:20])
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                rc = await asyncio.wait_for(proc.wait(), 20)
                assert rc == 0, (tmp_path / "health.log").read_text()[-3000:]
            log.close()
    text = (tmp_path / "health.log").read_text()
    assert "Traceback" not in text, text[-3000:]
