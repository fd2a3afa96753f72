"""MqttUplink against a real mosquitto with an mTLS listener: connect, refusals, birth/LWT, commands."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from appliance.health import payloads
from appliance.health.mqtt import Command, MqttSettings, MqttUplink
from appliance.health.spool import Spool
from conftest import Mosquitto

GW = "GW1"


def settings(broker: Any, pki: Any, **kw: Any) -> MqttSettings:
    base: dict[str, Any] = dict(host=broker.host, port=broker.port, gateway_id=GW, ca_file=pki.ca_file,
                                cert_file=str(pki.client.cert), key_file=str(pki.client.key),
                                reconnect_min_s=1, reconnect_max_s=1)
    base.update(kw)
    return MqttSettings(**base)


async def test_mtls_connect_publishes_retained_birth_and_telemetry(mosquitto, subscribe, health_pki, tmp_path):
    sub = subscribe(mosquitto, f"omgw/v1/{GW}/#")
    up = MqttUplink(settings(mosquitto, health_pki), Spool(tmp_path / "spool", 1))
    await up.start()
    try:
        await up.wait_connected(10)
        p = payloads.telemetry_payload(0, time.time_ns(), [], [], {"load1": 0.1})
        assert up.publish(up.topics.telemetry, payloads.encode(p)) == "sent"
        msgs = await asyncio.to_thread(sub.wait_for, lambda m: len(m) >= 1, 10, up.topics.telemetry)
        assert msgs[0].json() == p and msgs[0].qos == 1
        status = sub.snapshot(up.topics.status)[-1].json()
        payloads.validate("status", status)
        assert status["state"] == "online" and status["boot_id"] == up.boot_id
    finally:
        await up.stop()
    # A clean stop leaves a retained "offline"; a late subscriber sees it.
    late = subscribe(mosquitto, up.topics.status, client_id="late")
    got = await asyncio.to_thread(late.wait_for, lambda m: len(m) >= 1, 10)
    assert got[-1].retain and got[-1].json()["state"] == "offline"


@pytest.mark.parametrize("case", ["wrong_server_ca", "client_cert_from_rogue_ca", "wrong_hostname"])
async def test_tls_misconfiguration_is_refused_and_messages_are_spooled(case, mosquitto, health_pki, tmp_path):
    kw: dict[str, Any] = {}
    broker = mosquitto
    if case == "wrong_server_ca":
        kw["ca_file"] = str(health_pki.rogue_ca.cert_file)
    elif case == "client_cert_from_rogue_ca":
        kw.update(cert_file=str(health_pki.rogue_client.cert), key_file=str(health_pki.rogue_client.key))
    else:  # a broker whose certificate (from the right CA) names another host than the one we dial
        mosquitto.kill()
        (tmp_path / "other").mkdir()
        broker = Mosquitto(tmp_path / "other", health_pki,
                           server=health_pki.ca.issue("other-broker", hosts=("broker.example",)))
        broker.start()
    up = MqttUplink(settings(broker, health_pki, **kw), Spool(tmp_path / "spool", 1))
    await up.start()
    try:
        await asyncio.sleep(3)
        assert not up.connected and up.stats()["connects"] == 0
        assert up.stats()["connect_failures"] >= 1
        assert up.publish(up.topics.telemetry, b'{"x":1}') == "spooled"
        assert len(up.spool) == 1
    finally:
        await up.stop(drain_timeout_s=0)
        broker.kill()


async def test_bind_interface_lo_connects_and_unknown_interface_is_rejected(mosquitto, health_pki, tmp_path):
    with pytest.raises(OSError):
        MqttUplink(settings(mosquitto, health_pki, bind_interface="nosuchif0"), Spool(tmp_path / "s1", 1))
    up = MqttUplink(settings(mosquitto, health_pki, bind_interface="lo"), Spool(tmp_path / "s2", 1))
    await up.start()
    try:
        await up.wait_connected(10)
    finally:
        await up.stop()


UPLINK_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from appliance.health.mqtt import MqttSettings, MqttUplink
    from appliance.health.spool import Spool
    host, port, ca, cert, key, spool = sys.argv[1:7]
    async def main():
        up = MqttUplink(MqttSettings(host, int(port), "GW1", ca, cert, key, keepalive_s=5), Spool(spool, 1))
        await up.start()
        await up.wait_connected(10)
        print("connected", flush=True)
        await asyncio.sleep(3600)
    asyncio.run(main())
""")


async def test_killed_uplink_process_leaves_retained_offline_will(mosquitto, subscribe, health_pki, tmp_path):
    sub = subscribe(mosquitto, f"omgw/v1/{GW}/status")
    proc = subprocess.Popen([sys.executable, "-c", UPLINK_SCRIPT, mosquitto.host, str(mosquitto.port),
                             health_pki.ca_file, str(health_pki.client.cert), str(health_pki.client.key),
                             str(tmp_path / "spool")], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[3], env={**os.environ, "PYTHONPATH": "."})
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)  # type: ignore[union-attr]
        assert line.strip() == "connected"
        online = await asyncio.to_thread(sub.wait_for, lambda m: any(x.json()["state"] == "online" for x in m))
        boot_id = [x for x in online if x.json()["state"] == "online"][-1].json()["boot_id"]
        proc.send_signal(signal.SIGKILL)  # no DISCONNECT: the broker must publish the will
        proc.wait(5)
        msgs = await asyncio.to_thread(sub.wait_for, lambda m: m[-1].json()["state"] == "offline", 10)
        will = msgs[-1].json()
        payloads.validate("status", will)
        assert will["boot_id"] == boot_id and will["reason"] == "connection lost"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    late = subscribe(mosquitto, f"omgw/v1/{GW}/status", client_id="late")
    got = await asyncio.to_thread(late.wait_for, lambda m: len(m) >= 1)
    assert got[-1].retain and got[-1].json()["state"] == "offline"


async def test_command_is_delivered_with_response_topic_and_reply_correlates(mosquitto, subscribe, health_pki,
                                                                             tmp_path):
    received: list[Command] = []
    up = MqttUplink(settings(mosquitto, health_pki), Spool(tmp_path / "spool", 1), on_command=received.append)
    await up.start()
    try:
        await up.wait_connected(10)
        op = subscribe(mosquitto, "operator/replies/#", client_id="operator")
        await asyncio.sleep(0.3)  # let the uplink's SUBSCRIBE land
        await asyncio.to_thread(op.publish, up.topics.cmd("relay_cycle"), b'{"sig":"..."}',
                                response_topic="operator/replies/1", correlation_data=b"c-42")
        for _ in range(100):
            if received:
                break
            await asyncio.sleep(0.05)
        cmd = received[0]
        assert (cmd.name, cmd.payload, cmd.response_topic, cmd.correlation_data) == \
            ("relay_cycle", b'{"sig":"..."}', "operator/replies/1", b"c-42")
        reply = payloads.command_reply_payload(0, time.time_ns(), name=cmd.name, ok=True)
        assert up.reply(cmd.response_topic, cmd.correlation_data, payloads.encode(reply))
        got = await asyncio.to_thread(op.wait_for, lambda m: len(m) >= 1)
        assert json.loads(got[0].payload) == reply
        assert got[0].properties.CorrelationData == b"c-42"
    finally:
        await up.stop()


async def test_every_payload_received_over_mqtt_validates(mosquitto, subscribe, health_pki, tmp_path):
    from test_payload_schemas import EXAMPLES

    sub = subscribe(mosquitto, f"omgw/v1/{GW}/#")
    up = MqttUplink(settings(mosquitto, health_pki), Spool(tmp_path / "spool", 1))
    await up.start()
    try:
        await up.wait_connected(10)
        t = up.topics
        where = {"telemetry": t.telemetry, "soh": t.soh, "cp_state": t.cp_state("CP7"), "event": t.event,
                 "blackbox_manifest": t.blackbox("20261125T170000Z-fault"), "command_reply": t.cmd("x") + "/r"}
        for name, topic in where.items():
            assert up.publish(topic, payloads.encode(EXAMPLES[name])) == "sent"
        msgs = await asyncio.to_thread(sub.wait_for, lambda m: len(m) >= len(where) + 1)
        by_topic = {m.topic: m for m in msgs}
        payloads.validate("status", by_topic[t.status].payload)
        for name, topic in where.items():
            payloads.validate(name, by_topic[topic].payload)
    finally:
        await up.stop()
