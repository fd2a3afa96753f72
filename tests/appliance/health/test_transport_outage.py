"""Store-and-forward across a broker outage: every telemetry ``seq`` arrives exactly once, in order.

The outage length is ``OUTAGE_S``: 30 s, as the issue asks (``OMGW_OUTAGE_S=5`` for a quick local run).
"""

from __future__ import annotations

import asyncio
import os
import time

from appliance.health import payloads
from appliance.health.mqtt import MqttSettings, MqttUplink
from appliance.health.spool import Spool

OUTAGE_S = float(os.environ.get("OMGW_OUTAGE_S", "30"))
RATE_HZ = 10.0
BEFORE_S = 2.0
AFTER_S = 3.0


async def test_broker_outage_every_seq_exactly_once_in_order(mosquitto, subscribe, health_pki, tmp_path):
    sub = subscribe(mosquitto, "omgw/v1/GW1/telemetry", client_id="aiops", persistent=True)
    up = MqttUplink(MqttSettings(mosquitto.host, mosquitto.port, "GW1", health_pki.ca_file,
                                 str(health_pki.client.cert), str(health_pki.client.key),
                                 reconnect_min_s=1, reconnect_max_s=1, replay_rate=50),
                    Spool(tmp_path / "spool", 5))
    await up.start()
    seq = 0
    outcomes: dict[str, int] = {}

    async def produce(seconds: float) -> None:
        nonlocal seq
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            p = payloads.telemetry_payload(seq, time.time_ns(), [], [], {"seq_probe": seq})
            r = up.publish(up.topics.telemetry, payloads.encode(p))
            outcomes[r] = outcomes.get(r, 0) + 1
            seq += 1
            await asyncio.sleep(1 / RATE_HZ)

    try:
        await up.wait_connected(10)
        await produce(BEFORE_S)
        await asyncio.to_thread(mosquitto.stop)
        await produce(OUTAGE_S)
        spooled_during_outage = len(up.spool)
        await asyncio.to_thread(mosquitto.start)
        await produce(AFTER_S)
        expected = list(range(seq))
        drain_s = 15 + seq / 50
        msgs = await asyncio.to_thread(sub.wait_for, lambda m: len(m) >= seq, drain_s)
        await asyncio.sleep(1.0)  # any late duplicate would arrive now
        got = [m.json()["seq"] for m in sub.snapshot()]
        for m in sub.snapshot():
            payloads.validate("telemetry", m.payload)
        stats = up.stats()
        print(f"outage={OUTAGE_S}s produced={seq} outcomes={outcomes} "
              f"spooled_during_outage={spooled_during_outage} received={len(got)} stats={stats}")
        assert len(got) == len(set(got)), f"duplicates: {sorted(s for s in set(got) if got.count(s) > 1)}"
        assert got == expected
        assert spooled_during_outage >= int(OUTAGE_S * RATE_HZ * 0.8)
        assert stats["replayed"] >= spooled_during_outage and stats["spool_pending"] == 0
        assert stats["dropped"] == 0
        del msgs
    finally:
        await up.stop()


async def test_live_topics_without_backlog_flow_during_replay(mosquitto, subscribe, health_pki, tmp_path):
    """A spooled telemetry backlog is replayed at the rate limit; events (no backlog) go out at once."""
    sub = subscribe(mosquitto, "omgw/v1/GW1/#", client_id="obs2")
    spool = Spool(tmp_path / "spool", 5)
    now = time.time_ns()
    for i in range(200):  # a backlog from an earlier outage (e.g. found on disk after a reboot)
        spool.append("omgw/v1/GW1/telemetry",
                     payloads.encode(payloads.telemetry_payload(i, now - (200 - i) * 10**9, [], [], {})),
                     1, False, now)
    up = MqttUplink(MqttSettings(mosquitto.host, mosquitto.port, "GW1", health_pki.ca_file,
                                 str(health_pki.client.cert), str(health_pki.client.key), replay_rate=50),
                    spool)
    await up.start()
    try:
        await up.wait_connected(10)
        await asyncio.sleep(0.5)
        ev = payloads.event_payload(0, time.time_ns(), type="fault", severity="warning", source="test",
                                    message="live during replay")
        assert up.publish(up.topics.event, payloads.encode(ev)) == "sent"
        live = up.publish(up.topics.telemetry, payloads.encode(
            payloads.telemetry_payload(200, time.time_ns(), [], [], {})))
        assert live == "spooled"  # behind its topic's backlog
        msgs = await asyncio.to_thread(sub.wait_for, lambda m: len(m) >= 201, 20, up.topics.telemetry)
        assert [m.json()["seq"] for m in msgs] == list(range(201))
        allm = sub.snapshot()
        ev_at = next(i for i, m in enumerate(allm) if m.topic == up.topics.event)
        tel_before_ev = sum(1 for m in allm[:ev_at] if m.topic == up.topics.telemetry)
        assert tel_before_ev < 100, "the event waited for the whole telemetry backlog"
    finally:
        await up.stop()
