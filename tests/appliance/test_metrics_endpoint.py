"""The per-channel Prometheus endpoint: scraped over HTTP, built from ``status()`` at scrape time."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from appliance import config as config_mod
from appliance.metrics import MetricsServer, listen_problem

VALUE = {"channel": "value", "gateway_id": "GW1", "uptime_s": 12.5, "connected": 1,
         "handshake_refusals": {"404": 2}, "tap": {"sent_records": 40, "dropped_queue": 0, "dropped_socket": 3,
                                                  "dropped_encode": 0, "queued": 0},
         "charge_points": [{"cp_id": "CP001", "connected": True, "frames_up": 7, "frames_down": 6, "bytes_up": 700,
                            "bytes_down": 600, "connects": 1, "reconnects": 0, "invalid_frames": 1,
                            "rejected_calls": 0, "upstream_failures": 0, "inspect_failures": 2,
                            "csms_latency_ms": {"n": 6, "p50": 1.5, "p95": 3.0, "p99": None}}]}
HEALTH = {"channel": "health", "gateway_id": "GW1", "uptime_s": 30.0, "state": "degraded",
          "reasons": ["uplink_down: not connected for 75 s"],
          "uplink": {"connected": False, "published": 10, "spooled": 4, "spool_pending": 4, "dropped": 0},
          "sampler": {"ticks": 30, "late": 1, "skipped": 0, "jitter_ms": {"n": 30, "p50": 0.2, "p99": 1.1, "max": 2.0}},
          "devices": {"meter:feed1": {"kind": "meter", "quality": "ok", "missing_cycles": 0},
                      "sensor:cab": {"kind": "sensor", "quality": "missing", "missing_cycles": 7}},
          "blackbox": {"write_failing": False, "errors": 0, "records": 99},
          "tap": {"received": 5, "lost": 1, "malformed": 0},
          "watchdog": {"cp_id": "CP001", "state": "watching", "failures": 0, "relay_cycles": 2}}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


async def scrape(url: str) -> tuple[int, str, str]:
    def get() -> tuple[int, str, str]:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.status, r.headers["Content-Type"], r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers["Content-Type"], e.read().decode()

    return await asyncio.to_thread(get)


async def serving(doc: dict) -> MetricsServer:
    calls = []
    server = MetricsServer("127.0.0.1:0", lambda: calls.append(1) or doc, channel=doc["channel"])
    server.calls = calls  # type: ignore[attr-defined]
    await server.start()
    return server


async def test_value_metrics_have_per_charge_point_frame_counters() -> None:
    server = await serving(VALUE)
    try:
        status, ctype, text = await scrape(f"http://127.0.0.1:{server.port}/metrics")
    finally:
        await server.close()
    assert status == 200 and ctype.startswith("text/plain; version=")
    s = samples(text)
    assert s[("omgw_value_frames_total", (("cp_id", "CP001"), ("direction", "up")))] == 7
    assert s[("omgw_value_frames_total", (("cp_id", "CP001"), ("direction", "down")))] == 6
    assert s[("omgw_value_invalid_frames_total", (("cp_id", "CP001"),))] == 1
    assert s[("omgw_value_inspect_failures_total", (("cp_id", "CP001"),))] == 2
    assert s[("omgw_value_charge_point_connected", (("cp_id", "CP001"),))] == 1
    assert s[("omgw_value_handshake_refusals_total", (("status", "404"),))] == 2
    assert s[("omgw_value_tap_dropped_records_total", (("cause", "socket"),))] == 3
    assert s[("omgw_value_csms_latency_ms", (("cp_id", "CP001"), ("quantile", "p50")))] == 1.5
    assert ("omgw_value_csms_latency_ms", (("cp_id", "CP001"), ("quantile", "p99"))) not in s
    assert s[("omgw_uptime_seconds", ())] == 12.5
    assert server.calls == [1]  # type: ignore[attr-defined]  # status() read once per scrape, not before


async def test_health_metrics_have_state_device_and_uplink_gauges() -> None:
    server = await serving(HEALTH)
    try:
        status, _, text = await scrape(f"http://127.0.0.1:{server.port}/metrics")
        missing, _, _ = await scrape(f"http://127.0.0.1:{server.port}/nope")
    finally:
        await server.close()
    assert status == 200 and missing == 404
    s = samples(text)
    assert s[("omgw_health_degraded", ())] == 1
    assert s[("omgw_health_degraded_reason", (("code", "uplink_down"),))] == 1
    assert s[("omgw_health_uplink_connected", ())] == 0
    assert s[("omgw_health_uplink_spooled_messages_total", ())] == 4
    assert s[("omgw_health_sampler_late_ticks_total", ())] == 1
    assert s[("omgw_health_device_ok", (("device", "sensor:cab"), ("kind", "sensor"), ("quality", "missing")))] == 0
    assert s[("omgw_health_device_missing_cycles", (("device", "sensor:cab"),))] == 7
    assert s[("omgw_health_tap_lost_datagrams_total", ())] == 1
    assert s[("omgw_health_watchdog_state", (("cp_id", "CP001"), ("state", "watching")))] == 1
    assert s[("omgw_health_relay_cycles_total", (("cp_id", "CP001"),))] == 2


def test_metrics_listen_defaults_to_loopback_and_refuses_other_addresses_unless_allowed() -> None:
    cfg = config_mod.parse({"gateway": {"id": "GW1"}, "health": {"url": "mqtts://h:8883"},
                            "value": {"csms_url": "ws://h/", "security_profile": 0, "allow_insecure": True,
                                      "allow_unknown_charge_points": True}}, check_files=False)
    assert cfg.value is not None and cfg.health is not None
    assert (cfg.value.metrics_listen, cfg.health.metrics_listen) == ("127.0.0.1:9101", "127.0.0.1:9102")
    with pytest.raises(config_mod.ConfigError) as err:
        config_mod.parse({"gateway": {"id": "GW1"}, "health": {"metrics_listen": "0.0.0.0:9102"}}, check_files=False)
    assert err.value.problems[0].path == "health.metrics_listen"
    remote = config_mod.parse({"gateway": {"id": "GW1"},
                               "health": {"metrics_listen": "0.0.0.0:9102", "metrics_allow_remote": True}},
                              check_files=False)
    assert remote.health is not None and remote.health.metrics_listen == "0.0.0.0:9102"
    off = config_mod.parse({"gateway": {"id": "GW1"}, "health": {"metrics_listen": "off"}}, check_files=False)
    assert off.health is not None and off.health.metrics_listen is None
    assert listen_problem("[::1]:9101", False) is None and listen_problem("localhost:1", False) is None
    assert "HOST:PORT" in (listen_problem("9101", False) or "")
