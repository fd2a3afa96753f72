"""Snapshot trigger rules: which black-box records are faults (pure; no store, no loop)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.blackbox.record import Record, RecordKind
from appliance.blackbox.triggers import (
    FAULT_EVENT_KINDS,
    fault_reason,
    reason_slug,
)

T = 1_764_090_651_000_000_000


def tap(frame: Any, *, direction: str = "up", cp: str = "CP001", ev: str = "frame", **extra: Any) -> Record:
    f = frame if isinstance(frame, str) else json.dumps(frame)
    payload = {"cp": cp, "dir": direction, "ev": ev, "f": f, **extra}
    return Record(RecordKind.OCPP, T, json.dumps(payload).encode())


def call(action: str, body: dict[str, Any], uid: str = "1") -> list[Any]:
    return [2, uid, action, body]


def event(kind: str, **fields: Any) -> Record:
    return Record(RecordKind.EVENT, T, json.dumps({"kind": kind, **fields}).encode())


def command(**fields: Any) -> Record:
    return Record(RecordKind.COMMAND, T, json.dumps(fields).encode())


# ---- OCPP 1.6 --------------------------------------------------------------------------------

SN16_OK = {"connectorId": 1, "errorCode": "NoError", "status": "Charging"}


def test_16_status_faulted_is_a_trigger_with_cp_connector_and_error() -> None:
    body = {"connectorId": 2, "errorCode": "GroundFailure", "status": "Faulted", "vendorErrorCode": "E42"}
    reason = fault_reason(tap(call("StatusNotification", body)))
    assert reason == "ocpp_faulted cp=CP001 connector=2 error=GroundFailure vendor_error=E42"


def test_16_faulted_with_no_error_code_is_still_a_trigger() -> None:
    body = {"connectorId": 0, "errorCode": "NoError", "status": "Faulted"}
    assert fault_reason(tap(call("StatusNotification", body))) == "ocpp_faulted cp=CP001 connector=0"


def test_16_error_code_other_than_no_error_is_a_trigger_in_any_status() -> None:
    body = {"connectorId": 1, "errorCode": "HighTemperature", "status": "Charging"}
    reason = fault_reason(tap(call("StatusNotification", body)))
    assert reason == "ocpp_error cp=CP001 connector=1 error=HighTemperature status=Charging"


@pytest.mark.parametrize("status", ["Available", "Preparing", "Charging", "SuspendedEV", "Finishing",
                                    "Reserved", "Unavailable"])
def test_16_normal_status_with_no_error_is_not_a_trigger(status: str) -> None:
    assert fault_reason(tap(call("StatusNotification", {**SN16_OK, "status": status}))) is None


def test_only_frames_from_the_charger_count() -> None:
    body = {"connectorId": 1, "errorCode": "GroundFailure", "status": "Faulted"}
    assert fault_reason(tap(call("StatusNotification", body), direction="down")) is None
    assert fault_reason(tap(call("StatusNotification", body), direction="")) is None
    assert fault_reason(tap(call("StatusNotification", body), ev="disconnect")) is None


def test_only_calls_count_not_results_or_errors() -> None:
    assert fault_reason(tap([3, "1", {"status": "Faulted", "errorCode": "GroundFailure"}])) is None
    assert fault_reason(tap([4, "1", "InternalError", "StatusNotification Faulted", {}])) is None
    assert fault_reason(tap([True, "1", "StatusNotification", {"status": "Faulted"}])) is None
    assert fault_reason(tap([2.0, "1", "StatusNotification", {"status": "Faulted"}])) is None


def test_other_actions_are_not_triggers_even_if_they_mention_faulted() -> None:
    body = {"connectorId": 1, "status": "Faulted", "errorCode": "OtherError", "info": "Faulted"}
    assert fault_reason(tap(call("DataTransfer", body))) is None
    assert fault_reason(tap(call("Heartbeat", {}))) is None


def test_reason_values_are_reduced_to_safe_tokens() -> None:
    body = {"connectorId": 1, "errorCode": "OtherError", "status": "Faulted",
            "vendorErrorCode": 'x y="z"\nlevel=error ' + "A" * 100}
    reason = fault_reason(tap(call("StatusNotification", body), cp="CP 7\n"))
    assert reason is not None
    assert "\n" not in reason and '"' not in reason
    tokens = reason.split(" ")
    assert tokens[0] == "ocpp_faulted" and "cp=CP_7_" in tokens
    assert all(len(t.split("=", 1)[1]) <= 40 for t in tokens[1:])


# ---- OCPP 2.0.1 ------------------------------------------------------------------------------


def test_201_status_notification_faulted_is_a_trigger() -> None:
    body = {"timestamp": "2026-11-25T17:10:51Z", "connectorStatus": "Faulted", "evseId": 1, "connectorId": 2}
    assert fault_reason(tap(call("StatusNotification", body))) == "ocpp_faulted cp=CP001 evse=1 connector=2"


@pytest.mark.parametrize("status", ["Available", "Occupied", "Reserved", "Unavailable"])
def test_201_status_notification_other_states_are_not_triggers(status: str) -> None:
    body = {"timestamp": "2026-11-25T17:10:51Z", "connectorStatus": status, "evseId": 1, "connectorId": 1}
    assert fault_reason(tap(call("StatusNotification", body))) is None


def notify_event(*data: Any) -> list[Any]:
    return call("NotifyEvent", {"generatedAt": "2026-11-25T17:10:51Z", "seqNo": 0, "eventData": list(data)})


def event_data(variable: str, value: str, *, trigger: str = "Delta", **extra: Any) -> dict[str, Any]:
    return {"eventId": 1, "timestamp": "2026-11-25T17:10:51Z", "trigger": trigger, "actualValue": value,
            "eventNotificationType": "HardWiredNotification",
            "component": {"name": "Connector", "evse": {"id": 1, "connectorId": 1}},
            "variable": {"name": variable}, **extra}


def test_201_notify_event_availability_state_faulted_is_a_trigger() -> None:
    reason = fault_reason(tap(notify_event(event_data("AvailabilityState", "Faulted"))))
    assert reason == ("ocpp_faulted cp=CP001 component=Connector evse=1 connector=1 "
                      "variable=AvailabilityState")


def test_201_notify_event_problem_true_is_a_trigger_with_tech_code() -> None:
    data = event_data("Problem", "true", trigger="Alerting", techCode="E-OVC")
    data["component"] = {"name": "EVSE", "evse": {"id": 2}}
    assert fault_reason(tap(notify_event(data))) == (
        "ocpp_problem cp=CP001 component=EVSE evse=2 variable=Problem tech_code=E-OVC")


def test_201_notify_event_cleared_or_normal_values_are_not_triggers() -> None:
    assert fault_reason(tap(notify_event(event_data("Problem", "true", cleared=True)))) is None
    assert fault_reason(tap(notify_event(event_data("Problem", "false")))) is None
    assert fault_reason(tap(notify_event(event_data("AvailabilityState", "Available")))) is None


def test_201_notify_event_alerting_trigger_alone_is_not_a_fault() -> None:
    # The schema's trigger enum (Alerting | Delta | Periodic) says how a value was reported.
    assert fault_reason(tap(notify_event(event_data("Temperature", "71.5", trigger="Alerting")))) is None


def test_201_notify_event_finds_the_fault_among_several_entries() -> None:
    frame = notify_event(event_data("Power", "7200"), "not an object", event_data("Problem", "TRUE"))
    assert (fault_reason(tap(frame)) or "").startswith("ocpp_problem ")


def transaction_event(trigger: str, stopped: str | None = None) -> list[Any]:
    info: dict[str, Any] = {"transactionId": "tx-1"}
    if stopped is not None:
        info["stoppedReason"] = stopped
    return call("TransactionEvent", {"eventType": "Ended" if stopped else "Updated",
                                     "timestamp": "2026-11-25T17:10:51Z", "triggerReason": trigger,
                                     "seqNo": 3, "transactionInfo": info, "evse": {"id": 1}})


def test_201_transaction_event_abnormal_condition_is_a_trigger() -> None:
    reason = fault_reason(tap(transaction_event("AbnormalCondition")))
    assert reason == "ocpp_transaction_fault cp=CP001 evse=1 trigger=AbnormalCondition"


@pytest.mark.parametrize("stopped", ["GroundFault", "OvercurrentFault", "EmergencyStop", "PowerQuality"])
def test_201_transaction_ended_by_a_fault_is_a_trigger(stopped: str) -> None:
    reason = fault_reason(tap(transaction_event("ChargingStateChanged", stopped)))
    assert reason == f"ocpp_transaction_fault cp=CP001 evse=1 trigger=ChargingStateChanged stopped={stopped}"


@pytest.mark.parametrize("stopped", [None, "EVDisconnected", "Local", "Remote", "PowerLoss", "Other"])
def test_201_ordinary_transaction_events_are_not_triggers(stopped: str | None) -> None:
    assert fault_reason(tap(transaction_event("MeterValuePeriodic", stopped))) is None


# ---- defensive parsing -----------------------------------------------------------------------

FAULT_FRAME = json.dumps(call("StatusNotification", {"connectorId": 1, "errorCode": "GroundFailure",
                                                     "status": "Faulted"}))


@pytest.mark.parametrize("cut", [1, 10, 25, len(FAULT_FRAME) - 2, len(FAULT_FRAME) - 1])
def test_truncated_frames_are_not_triggers_and_never_raise(cut: int) -> None:
    rec = tap(FAULT_FRAME[:cut], trunc=len(FAULT_FRAME))
    assert fault_reason(rec) is None


@pytest.mark.parametrize("payload", [
    b"", b"\xff\xfe", b"null", b"[]", b"42", b'{"dir":"up"}', b'{"dir":"up","f":17}',
    b'{"dir":"up","f":"[2]"}', b'{"dir":"up","f":"[2,\\"1\\",\\"StatusNotification\\"]"}',
    b'{"dir":"up","f":"[2,\\"1\\",\\"StatusNotification\\",[]]"}',
    b'{"dir":"up","f":"[2,\\"1\\",\\"StatusNotification\\",{\\"status\\":NaN}]"}',
    b'{"dir":"up","f":"' + b"[" * 100_000 + b'StatusNotification"}',
    b'{"dir":"up","f":"[2,\\"1\\",\\"NotifyEvent\\",{\\"eventData\\":{}}]"}',
    b'{"dir":"up","f":"[2,\\"1\\",\\"NotifyEvent\\",{\\"eventData\\":[{\\"actualValue\\":1}]}]"}',
    b'{"dir":"up","f":"[2,\\"1\\",\\"TransactionEvent\\",{\\"transactionInfo\\":[]}]"}',
])
def test_malformed_ocpp_payloads_are_not_triggers(payload: bytes) -> None:
    assert fault_reason(Record(RecordKind.OCPP, T, payload)) is None


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(RecordKind)), st.binary(max_size=300))
def test_fault_reason_never_raises_on_arbitrary_bytes(kind: RecordKind, payload: bytes) -> None:
    reason = fault_reason(Record(kind, T, payload))
    assert reason is None or isinstance(reason, str)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20)
    | st.sampled_from(["Faulted", "StatusNotification", "NoError", "Problem", "true", "up"]),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(
        st.sampled_from(["status", "errorCode", "connectorStatus", "eventData", "variable", "name",
                         "actualValue", "component", "evse", "triggerReason", "transactionInfo",
                         "stoppedReason", "kind", "cleared", "x"]), children, max_size=5),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["StatusNotification", "NotifyEvent", "TransactionEvent"]), json_values)
def test_fault_reason_never_raises_on_arbitrary_call_bodies(action: str, body: Any) -> None:
    reason = fault_reason(tap([2, "1", action, body]))
    assert reason is None or (isinstance(reason, str) and "\n" not in reason)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_fault_reason_never_raises_on_arbitrary_event_and_command_objects(obj: Any) -> None:
    for kind in (RecordKind.EVENT, RecordKind.COMMAND):
        reason = fault_reason(Record(kind, T, json.dumps(obj).encode()))
        assert reason is None or isinstance(reason, str)


def test_records_without_the_record_shape_are_not_triggers() -> None:
    assert fault_reason(object()) is None  # type: ignore[arg-type]


# ---- events and commands ---------------------------------------------------------------------


def test_fault_event_kinds_are_documented_data() -> None:
    assert FAULT_EVENT_KINDS == frozenset(
        {"watchdog_power_cycle", "over_temperature", "meter_lost", "fault", "billing_deviation"})


@pytest.mark.parametrize("kind", sorted(FAULT_EVENT_KINDS))
def test_fault_events_are_triggers(kind: str) -> None:
    assert fault_reason(event(kind)) == kind


def test_event_reason_carries_the_component_and_cleared_events_are_not_triggers() -> None:
    assert fault_reason(event("watchdog_power_cycle", cp="CP7", attempt=2)) == "watchdog_power_cycle cp=CP7"
    assert fault_reason(event("meter_lost", meter="main")) == "meter_lost meter=main"
    assert fault_reason(event("over_temperature", sensor="cabinet", cleared=True)) is None


@pytest.mark.parametrize("kind", ["telemetry_gap", "command_audit", "startup", "", "FAULT"])
def test_other_events_are_not_triggers(kind: str) -> None:
    assert fault_reason(event(kind)) is None


def test_fault_kinds_in_other_record_kinds_are_not_triggers() -> None:
    payload = json.dumps({"kind": "fault", "name": "snapshot"}).encode()
    for kind in (RecordKind.TELEMETRY, RecordKind.SOH, RecordKind.MARK):
        assert fault_reason(Record(kind, T, payload)) is None


def test_snapshot_command_is_a_trigger() -> None:
    assert fault_reason(command(name="snapshot")) == "remote_command"
    assert fault_reason(command(name="snapshot", operator="ops-1", args={"pre_s": 60})) == "remote_command by=ops-1"


@pytest.mark.parametrize("fields", [
    {"name": "reboot"}, {"name": "snapshot", "accepted": False}, {"name": "snapshot", "verified": False},
    {"name": "snapshot", "status": "Rejected"}, {"name": "snapshot", "status": "denied"}, {},
])
def test_other_or_refused_commands_are_not_triggers(fields: dict[str, Any]) -> None:
    assert fault_reason(command(**fields)) is None


# ---- slugs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("reason", "slug"), [
    ("ocpp_faulted cp=CP1 connector=1", "ocpp_faulted"),
    ("watchdog_power_cycle", "watchdog_power_cycle"),
    ("Technician Visit 2026", "technician"),
    ("../../etc/passwd", "etc_passwd"),
    ("!!!", "snapshot"),
    ("", "snapshot"),
    ("x" * 100, "x" * 32),
])
def test_reason_slug_is_a_safe_file_name_token(reason: str, slug: str) -> None:
    assert reason_slug(reason) == slug
