"""Every health payload validates against its JSON Schema; the schemas reject what they should."""

from __future__ import annotations

import json

import jsonschema
import pytest

from appliance.health import payloads as P
from appliance.health.topics import Topics, TopicError

T = 1_795_633_082_123_456_789

EXAMPLES = {
    "status": P.status_payload(0, T, gateway_id="GW1", state="online", boot_id="b1", version="0.1.0"),
    "telemetry": P.telemetry_payload(
        7, T,
        meters=[{"name": "main", "model": "sdm630", "ok": True, "values": {"voltage_l1_v": 230.1, "power_w": 7200.0}},
                {"name": "cp2", "ok": False, "values": {}, "error": "timeout unit 2"}],
        sensors=[{"name": "cabinet", "model": "sht4x", "ok": True,
                  "values": {"temperature_c": 31.2, "humidity_pct": 40.5}}],
        gateway={"cpu_temp_c": 52.0, "load1": 0.4, "spool_pending": 0, "tap_dropped": 0}),
    "soh": P.soh_payload(1, T, [{"name": "modbus", "state": "ok"},
                                {"name": "sd_card", "state": "degraded", "detail": "wear 80%",
                                 "metrics": {"wear_pct": 80}}]),
    "cp_state": P.cp_state_payload(3, T, cp_id="CP7", connected=True, latency_ms=41.5,
                                   boot={"vendor": "ACME", "model": "W22", "firmware": "1.2.3"},
                                   connectors=[{"id": 1, "status": "Charging"},
                                               {"id": 2, "status": "Faulted", "error_code": "GroundFailure"}],
                                   errors=["GroundFailure on connector 2"]),
    "event": P.event_payload(9, T, type="watchdog", severity="error", source="watchdog",
                             message="relay power cycle", data={"cp": "CP7", "attempt": 1}),
    "blackbox_manifest": P.blackbox_manifest_payload(0, T, snapshot_id="20261125T170000Z-fault", reason="fault",
                                                     from_ns=T - 10**12, to_ns=T, records=1234, size=56789,
                                                     sha256="a" * 64, archive_url="https://om.example/x"),
    "command_reply": P.command_reply_payload(2, T, command="relay_cycle", status="done", result={"ok": True}),
}


def test_every_payload_name_has_an_example() -> None:
    assert set(EXAMPLES) == set(P.PAYLOAD_NAMES)


@pytest.mark.parametrize("name", P.PAYLOAD_NAMES)
def test_builder_output_validates_and_carries_schema_seq_ts(name: str) -> None:
    p = EXAMPLES[name]
    P.validate(name, p)
    P.validate(name, P.encode(p))  # the bytes on the wire, too
    assert p["schema"] == 1 and isinstance(p["seq"], int) and p["ts"] == "2026-11-25T18:58:02.123456Z"


@pytest.mark.parametrize("name", P.PAYLOAD_NAMES)
def test_schema_rejects_missing_seq_and_unknown_fields(name: str) -> None:
    p = dict(EXAMPLES[name])
    del p["seq"]
    with pytest.raises(jsonschema.ValidationError):
        P.validate(name, p)
    with pytest.raises(jsonschema.ValidationError):
        P.validate(name, EXAMPLES[name] | {"surprise": 1})
    with pytest.raises(jsonschema.ValidationError):
        P.validate(name, EXAMPLES[name] | {"schema": 2})


def test_status_state_and_reading_shape_are_checked() -> None:
    with pytest.raises(jsonschema.ValidationError):
        P.validate("status", EXAMPLES["status"] | {"state": "sleeping"})
    bad = json.loads(P.encode(EXAMPLES["telemetry"]))
    bad["meters"][0]["values"]["power_w"] = "7200"
    with pytest.raises(jsonschema.ValidationError):
        P.validate("telemetry", bad)


def test_seq_counters_are_per_topic_class() -> None:
    s = P.SeqCounters()
    assert [s.next("telemetry"), s.next("telemetry"), s.next("event"), s.next("telemetry")] == [0, 1, 0, 2]
    with pytest.raises(KeyError):
        s.next("nope")


def test_topics_follow_the_contract_and_reject_bad_ids() -> None:
    t = Topics("GW1")
    assert t.status == "omgw/v1/GW1/status" and t.telemetry == "omgw/v1/GW1/telemetry"
    assert t.soh == "omgw/v1/GW1/soh" and t.event == "omgw/v1/GW1/event"
    assert t.cp_state("CP7") == "omgw/v1/GW1/ocpp/CP7/state"
    assert t.blackbox("s-1") == "omgw/v1/GW1/blackbox/s-1" and t.cmd("reboot") == "omgw/v1/GW1/cmd/reboot"
    assert t.cmd_filter == "omgw/v1/GW1/cmd/+" and t.command_name("omgw/v1/GW1/cmd/reboot") == "reboot"
    assert t.command_name("omgw/v1/GW2/cmd/reboot") is None
    assert Topics("GW1", "acme/omgw").telemetry == "acme/omgw/GW1/telemetry"
    for bad in ("CP/1", "#", "+", "", "a b", "x" * 65):
        with pytest.raises(TopicError):
            t.cp_state(bad)
    with pytest.raises(TopicError):
        Topics("GW/1")
    with pytest.raises(TopicError):
        Topics("GW1", "omgw/#")
