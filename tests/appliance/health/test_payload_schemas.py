"""Every health payload validates against its JSON Schema; the schemas reject what they should."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import jsonschema
import pytest

from appliance.blackbox.snapshot import read_manifest, write_snapshot
from appliance.health import payloads as P
from appliance.health.cpstate import ChargePointTracker
from appliance.health.sampler import Sample
from appliance.health.soh import HealthAccumulator
from appliance.tap import TapRecord
from appliance.health.topics import Topics, TopicError

T = 1_795_633_082_123_456_789


def _tracker_state_and_events() -> tuple[dict, list[dict]]:
    """A charge point before any BootNotification (nulls), then faulted and charging: the real reducer."""
    tr = ChargePointTracker()
    events = []
    for i, (d, ev, frame, extra) in enumerate([
        ("", "connect", None, {"subprotocol": "ocpp1.6"}),
        ("up", "frame", '[2,"s1","StatusNotification",{"connectorId":1,"errorCode":"GroundFailure","status":"Faulted"}]', {}),
        ("up", "frame", '[2,"t1","StartTransaction",{"connectorId":2,"idTag":"x","meterStart":100,'
                        '"timestamp":"2026-11-25T10:00:00Z"}]', {}),
        ("down", "frame", '[3,"t1",{"transactionId":7,"idTagInfo":{"status":"Accepted"}}]', {}),
        ("up", "frame", '[2,"t2","StopTransaction",{"transactionId":7,"meterStop":5100,"timestamp":"x"}]', {}),
    ]):
        events += tr.apply(TapRecord(T + i, "CP7", d, ev, frame, extra))
    return tr.state("CP7"), events


CP_STATE, TRACKER_EVENTS = _tracker_state_and_events()
WATCHDOG_EVENT = {"kind": "watchdog_power_cycle", "cp": "CP7", "reason": "charger offline", "code": "offline",
                  "state": "cycling", "off_s": 2.0, "cycle": 1, "forced": False, "manual": False, "time_ns": T,
                  "phase": "decided", "detail": {"trigger": "offline"}}
BILLING_EVENT = {"kind": "billing_deviation", "cp_id": "CP7", "transaction_id": "7", "meter": "feed1",
                 "started_ns": T, "ended_ns": T + 10**12, "charger_wh": 5000.0, "meter_wh": 4800.0,
                 "deviation_wh": 200.0, "tolerance_wh": 50.0, "meter_gap_s": 0.5}
BLACKBOX_ERROR_EVENT = {"kind": "blackbox_write_failed", "detail": "No space left on device"}


class _Records:
    def read(self, since_ns: int, until_ns: int, include_unflushed: bool = True):  # noqa: ARG002
        return iter(())


def _manifest(tmp: Path) -> dict:
    path = write_snapshot(_Records(), T - 10**10, T, tmp, "GW1", ["fault connector=1"], trigger_ns=T)
    return read_manifest(path)


def _soh() -> dict:
    acc = HealthAccumulator()
    acc.add_sample(Sample(0, T, 0.0, METERS, SENSORS, GATEWAY), T / 1e9)
    acc.set_chargers({"CP7": {"reconnects": 1, "faults": 1, "upstream_losses": 0}})
    return acc.snapshot(T / 1e9 + 60, T)


METERS = [{"name": "feed1", "model": "SDM630", "unit_id": 1, "ts_ns": T,
           "values": {"voltage_L1": {"v": 230.1, "unit": "V", "q": "ok"},
                      "energy_import_total": {"v": None, "unit": "kWh", "q": "crc", "reason": "CRC mismatch"}}},
          {"name": "cp2", "model": "SDM630", "unit_id": 2, "values": None, "missing": "timeout: no reading"}]
SENSORS = [{"name": "cabinet", "model": "SHT3x", "address": 0x44, "ts_ns": T, "temperature_c": 31.2,
            "humidity_rh": 40.5, "pressure_hpa": None, "dew_point_c": 16.1, "q": "ok"}]
GATEWAY = {"cpu_temp_c": None, "load_1": 0.4, "mem_available_ratio": 0.5, "boot_id": "b", "clock_synced": True,
           "write_bytes": 4096, "unavailable": {"cpu_temp_c": "no thermal zone"}}
with tempfile.TemporaryDirectory(prefix="omgw-manifest-") as _d:
    MANIFEST = _manifest(Path(_d))

EXAMPLES = {
    "status": P.status_payload(0, T, gateway_id="GW1", state="online", boot_id="b1", version="0.1.0"),
    "telemetry": P.stamp(7, T, Sample(3, T, 0.002, METERS, SENSORS, GATEWAY, skipped=1).to_payload()),
    "soh": P.soh_payload(1, T, _soh()),
    "cp_state": P.cp_state_payload(3, T, CP_STATE),
    "event": P.event_payload(9, T, TRACKER_EVENTS[0]),
    "blackbox_manifest": P.blackbox_manifest_payload(0, T, MANIFEST),
    "command_reply": P.command_reply_payload(2, T, name="relay_cycle", ok=True, nonce="ab" * 16, result={"off_s": 10.0}),
}


def test_producers_examples_are_real() -> None:
    assert [e["kind"] for e in TRACKER_EVENTS] == ["fault", "transaction_started", "transaction_ended"]
    assert CP_STATE["boot"]["vendor"] is None and CP_STATE["boot_status"] is None  # before a BootNotification
    assert EXAMPLES["telemetry"]["ts"] == "2026-11-25T18:58:02.123456Z"  # re-stamped, not the sampler's ms
    assert EXAMPLES["blackbox_manifest"]["records"]["total"] == 0


@pytest.mark.parametrize("event", [*TRACKER_EVENTS, WATCHDOG_EVENT, BILLING_EVENT, BLACKBOX_ERROR_EVENT,
                                   {"kind": "billing_check_skipped", "cp_id": "CP7", "transaction_id": "7",
                                    "reason": "transaction start or charger energy unknown"}])
def test_every_event_kind_validates(event: dict) -> None:
    P.validate("event", P.event_payload(0, T, event))


def test_event_needs_a_string_kind_and_common_fields_are_typed() -> None:
    with pytest.raises(jsonschema.ValidationError):
        P.validate("event", P.event_payload(0, T, {"cp_id": "CP7"}))
    with pytest.raises(jsonschema.ValidationError):
        P.validate("event", P.event_payload(0, T, {"kind": 3}))
    with pytest.raises(jsonschema.ValidationError):
        P.validate("event", P.event_payload(0, T, {"kind": "fault", "time_ns": "yesterday"}))


def test_head_ts_has_one_format() -> None:
    for bad in ("2026-11-25T18:58:02.123Z", "2026-11-25T18:58:02Z", "2026-11-25 18:58:02.123456Z"):
        for name in P.PAYLOAD_NAMES:
            with pytest.raises(jsonschema.ValidationError):
                P.validate(name, EXAMPLES[name] | {"ts": bad})


def test_stamp_replaces_the_producers_head() -> None:
    p = P.stamp(5, T, {"schema": 9, "seq": 1, "ts": "x", "kind": "fault"})
    assert list(p) == ["schema", "seq", "ts", "kind"] and p["schema"] == 1 and p["seq"] == 5


def test_missing_meter_needs_a_reason_and_bad_values_need_null() -> None:
    tele = json.loads(P.encode(EXAMPLES["telemetry"]))
    del tele["meters"][1]["missing"]
    with pytest.raises(jsonschema.ValidationError):
        P.validate("telemetry", tele)
    tele = json.loads(P.encode(EXAMPLES["telemetry"]))
    tele["meters"][0]["values"]["voltage_L1"]["v"] = None  # q=ok must carry a number
    with pytest.raises(jsonschema.ValidationError):
        P.validate("telemetry", tele)


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
    if name != "event":  # events: every producer adds its kind's fields (docs/mqtt.md)
        with pytest.raises(jsonschema.ValidationError):
            P.validate(name, EXAMPLES[name] | {"surprise": 1})
    with pytest.raises(jsonschema.ValidationError):
        P.validate(name, EXAMPLES[name] | {"schema": 2})


def test_status_state_and_reading_shape_are_checked() -> None:
    with pytest.raises(jsonschema.ValidationError):
        P.validate("status", EXAMPLES["status"] | {"state": "sleeping"})
    bad = json.loads(P.encode(EXAMPLES["telemetry"]))
    bad["meters"][0]["values"]["voltage_L1"]["v"] = "230.1"
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
