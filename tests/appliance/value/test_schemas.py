"""Payload validation against the ocpp package's OCA schemas, with per-version error kinds."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import pytest
from jsonschema import Draft4Validator
from jsonschema.validators import validator_for

from appliance.value import schemas
from appliance.ocppj import ErrorKind, FrameError, error_code_for
from appliance.value.schemas import has_schema, known_actions, validate_payload

TS = "2026-11-25T17:10:51.123Z"

# --- real payloads that must pass ---------------------------------------------------------------

VALID: list[tuple[str, str, bool, dict[str, Any]]] = [
    # OCPP 1.6
    ("1.6", "BootNotification", True, {
        "chargePointVendor": "VendorX", "chargePointModel": "SingleSocketCharger",
        "chargePointSerialNumber": "SN-1", "firmwareVersion": "1.2.3", "meterType": "Eastron SDM630",
    }),
    ("1.6", "BootNotification", False, {"status": "Accepted", "currentTime": TS, "interval": 300}),
    ("1.6", "Heartbeat", True, {}),
    ("1.6", "Heartbeat", False, {"currentTime": TS}),
    ("1.6", "Authorize", True, {"idTag": "04A2B3C4D5E6F7"}),
    ("1.6", "Authorize", False, {"idTagInfo": {"status": "Accepted", "expiryDate": TS, "parentIdTag": "FLEET-1"}}),
    ("1.6", "StartTransaction", True,
     {"connectorId": 1, "idTag": "04A2B3C4D5E6F7", "meterStart": 123456, "timestamp": TS}),
    ("1.6", "StartTransaction", False, {"transactionId": 42, "idTagInfo": {"status": "Accepted"}}),
    ("1.6", "StopTransaction", True, {
        "transactionId": 42, "idTag": "04A2B3C4D5E6F7", "meterStop": 130000, "timestamp": TS, "reason": "Local",
        "transactionData": [{"timestamp": TS, "sampledValue": [
            {"value": "130000", "measurand": "Energy.Active.Import.Register", "unit": "Wh",
             "context": "Transaction.End"},
        ]}],
    }),
    ("1.6", "StopTransaction", False, {"idTagInfo": {"status": "Accepted"}}),
    ("1.6", "MeterValues", True, {"connectorId": 1, "transactionId": 42, "meterValue": [{
        "timestamp": TS, "sampledValue": [
        {"value": "2935.600", "measurand": "Energy.Active.Import.Register", "unit": "kWh"},
        {"value": "16.2", "measurand": "Current.Import", "unit": "A", "phase": "L1"},
    ]}]}),
    ("1.6", "MeterValues", False, {}),
    ("1.6", "StatusNotification", True, {"connectorId": 1, "errorCode": "NoError", "status": "Charging"}),
    # multipleOf 0.1 on limit: 21.4 / 0.1 is not integral in binary floating point.
    ("1.6", "SetChargingProfile", True, {"connectorId": 1, "csChargingProfiles": {
        "chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Absolute", "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": [
            {"startPeriod": 0, "limit": 21.4}, {"startPeriod": 60, "limit": 0.3}, {"startPeriod": 120, "limit": 8.7},
            {"startPeriod": 180, "limit": 32}, {"startPeriod": 240, "limit": 1.1},
        ]},
    }}),
    ("1.6", "GetCompositeSchedule", False, {"status": "Accepted", "connectorId": 1, "chargingSchedule": {
        "chargingRateUnit": "W", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 7360.1}],
    }}),
    # OCPP 2.0.1
    ("2.0.1", "BootNotification", True, {
        "reason": "PowerUp",
        "chargingStation": {"model": "SingleSocketCharger", "vendorName": "VendorX", "serialNumber": "SN-1",
                            "modem": {"iccid": "8931", "imsi": "2040"}, "firmwareVersion": "1.2.3"},
    }),
    ("2.0.1", "BootNotification", False, {"currentTime": TS, "interval": 300, "status": "Accepted"}),
    ("2.0.1", "Heartbeat", True, {}),
    ("2.0.1", "Heartbeat", False, {"currentTime": TS}),
    ("2.0.1", "Authorize", True, {"idToken": {"idToken": "04A2B3C4D5E6F7", "type": "ISO14443"}}),
    ("2.0.1", "Authorize", False,
     {"idTokenInfo": {"status": "Accepted", "groupIdToken": {"idToken": "FLEET-1", "type": "Central"}}}),
    ("2.0.1", "TransactionEvent", True, {
        "eventType": "Started", "timestamp": TS, "triggerReason": "Authorized", "seqNo": 0,
        "transactionInfo": {"transactionId": "tx-0001", "chargingState": "Charging"},
        "idToken": {"idToken": "04A2B3C4D5E6F7", "type": "ISO14443",
                    "additionalInfo": [{"additionalIdToken": "EMP-77", "type": "ContractId"}]},
        "evse": {"id": 1, "connectorId": 1},
        "meterValue": [{"timestamp": TS, "sampledValue": [
            {"value": 2935.6, "measurand": "Energy.Active.Import.Register", "unitOfMeasure": {"unit": "kWh"}},
        ]}],
    }),
    ("2.0.1", "TransactionEvent", False,
     {"idTokenInfo": {"status": "Accepted", "groupIdToken": {"idToken": "FLEET-1", "type": "Central"}}}),
    ("2.0.1", "MeterValues", True, {"evseId": 1, "meterValue": [
        {"timestamp": TS, "sampledValue": [{"value": 230.1, "measurand": "Voltage", "phase": "L1-N"}]}]}),
    ("2.0.1", "RequestStartTransaction", True, {
        "remoteStartId": 7, "evseId": 1, "idToken": {"idToken": "APP-1", "type": "Central"},
        "groupIdToken": {"idToken": "FLEET-1", "type": "Central"},
    }),
    # OCPP 2.1
    ("2.1", "BootNotification", True, {"reason": "PowerUp", "chargingStation": {"model": "M", "vendorName": "V"}}),
    ("2.1", "Heartbeat", True, {}),
    ("2.1", "NotifyPeriodicEventStream", True, {"id": 1, "pending": 0, "basetime": TS, "data": [{"t": 0.5, "v": "1"}]}),
]


@pytest.mark.parametrize(("version", "action", "is_request", "payload"), VALID)
def test_real_payloads_validate(version: str, action: str, is_request: bool, payload: dict[str, Any]) -> None:
    validate_payload(version, action, is_request, payload)


# --- payloads that must fail, and how -----------------------------------------------------------

INVALID: list[tuple[str, str, bool, dict[str, Any], ErrorKind, str]] = [
    # missing required member: 1.6 ProtocolError ("Payload for Action is incomplete"), 2.x occurrence
    ("1.6", "BootNotification", True, {"chargePointVendor": "V"}, ErrorKind.PROTOCOL, "$.chargePointModel"),
    ("2.0.1", "BootNotification", True, {"reason": "PowerUp", "chargingStation": {"model": "M"}},
     ErrorKind.OCCURRENCE_CONSTRAINT, "$.chargingStation.vendorName"),
    ("2.1", "BootNotification", True, {"reason": "PowerUp"}, ErrorKind.OCCURRENCE_CONSTRAINT, "$.chargingStation"),
    ("1.6", "StartTransaction", False, {"transactionId": 42}, ErrorKind.PROTOCOL, "$.idTagInfo"),
    ("2.0.1", "TransactionEvent", True, {"eventType": "Started", "timestamp": TS, "triggerReason": "Authorized",
                                         "seqNo": 0}, ErrorKind.OCCURRENCE_CONSTRAINT, "$.transactionInfo"),
    # undefined member: 1.6 FormationViolation, 2.x ProtocolError
    ("1.6", "Heartbeat", True, {"foo": 1}, ErrorKind.FORMAT, "'foo'"),
    ("2.0.1", "Heartbeat", True, {"foo": 1}, ErrorKind.PROTOCOL, "'foo'"),
    ("2.1", "Heartbeat", False, {"currentTime": TS, "bar": 2}, ErrorKind.PROTOCOL, "'bar'"),
    # wrong JSON type
    ("1.6", "StartTransaction", True, {"connectorId": "1", "idTag": "T", "meterStart": 0, "timestamp": TS},
     ErrorKind.TYPE, "$.connectorId"),
    ("1.6", "Heartbeat", False, {"currentTime": 1700000000}, ErrorKind.TYPE, "$.currentTime"),
    ("2.0.1", "Authorize", True, {"idToken": "04A2B3C4"}, ErrorKind.TYPE, "$.idToken"),
    ("2.0.1", "MeterValues", True, {"evseId": 1, "meterValue": [{"timestamp": TS, "sampledValue": [{"value": "230"}]}]},
     ErrorKind.TYPE, "$.meterValue[0].sampledValue[0].value"),
    # invalid value: length, enum, range, multipleOf
    ("1.6", "BootNotification", True, {"chargePointVendor": "V" * 21, "chargePointModel": "M"},
     ErrorKind.PROPERTY_CONSTRAINT, "$.chargePointVendor"),
    ("1.6", "StatusNotification", True, {"connectorId": 1, "errorCode": "NoError", "status": "Bogus"},
     ErrorKind.PROPERTY_CONSTRAINT, "$.status"),
    ("1.6", "BootNotification", False, {"status": "Maybe", "currentTime": TS, "interval": 300},
     ErrorKind.PROPERTY_CONSTRAINT, "$.status"),
    ("2.0.1", "TransactionEvent", True, {"eventType": "Begun", "timestamp": TS, "triggerReason": "Authorized",
                                         "seqNo": 0, "transactionInfo": {"transactionId": "t"}},
     ErrorKind.PROPERTY_CONSTRAINT, "$.eventType"),
    ("2.1", "VatNumberValidation", True, {"vatNumber": "DE123", "evseId": -1},
     ErrorKind.PROPERTY_CONSTRAINT, "$.evseId"),
    ("1.6", "SetChargingProfile", True, {"connectorId": 1, "csChargingProfiles": {
        "chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Absolute", "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": [
            {"startPeriod": 0, "limit": 21.45}]}}},
     ErrorKind.PROPERTY_CONSTRAINT, "chargingSchedulePeriod[0].limit"),
    # cardinality
    ("2.0.1", "MeterValues", True, {"evseId": 1, "meterValue": []}, ErrorKind.OCCURRENCE_CONSTRAINT, "$.meterValue"),
    # payload is not an object at all
    ("1.6", "Heartbeat", True, [], ErrorKind.TYPE, "$"),  # type: ignore[list-item]
]


@pytest.mark.parametrize(("version", "action", "is_request", "payload", "kind", "where"), INVALID)
def test_invalid_payload_gets_the_versions_error_kind_and_names_the_path(
    version: str, action: str, is_request: bool, payload: dict[str, Any], kind: ErrorKind, where: str
) -> None:
    with pytest.raises(FrameError) as exc:
        validate_payload(version, action, is_request, payload)
    err = exc.value
    assert err.kind is kind
    assert where in err.detail
    assert err.detail.startswith(f"{action} {'request' if is_request else 'response'}: ")
    assert err.unique_id is None and err.message_type is None
    error_code_for(err.kind, version)  # every kind we produce has a code in that version


def test_missing_member_codes_follow_each_version() -> None:
    codes = {}
    for version, payload in [
        ("1.6", {"chargePointVendor": "V"}),
        ("2.0.1", {"reason": "PowerUp"}),
        ("2.1", {"reason": "PowerUp"}),
    ]:
        with pytest.raises(FrameError) as exc:
            validate_payload(version, "BootNotification", True, payload)
        codes[version] = error_code_for(exc.value.kind, version)
    assert codes == {
        "1.6": "ProtocolError",
        "2.0.1": "OccurenceConstraintViolation",
        "2.1": "OccurrenceConstraintViolation",
    }


@pytest.mark.parametrize(
    ("version", "payload"),
    [
        ("1.6", {"idTag": "SECRET-TAG-0042-TOO-LONG"}),
        ("1.6", {"idTag": 4242424242}),
        ("2.0.1", {"idToken": {"idToken": "SECRET-TAG-0042", "type": "SECRET-TYPE"}}),
        ("2.0.1", {"idToken": {"idToken": "SECRET-TAG-0042" * 3, "type": "ISO14443"}}),
        ("2.0.1", {"idToken": {"idToken": "SECRET-TAG-0042", "type": "ISO14443", "SECRETKEY": 1}}),
    ],
)
def test_detail_never_echoes_the_offending_value(version: str, payload: dict[str, Any]) -> None:
    with pytest.raises(FrameError) as exc:
        validate_payload(version, "Authorize", True, payload)
    assert "SECRET-TAG" not in exc.value.detail and "4242" not in exc.value.detail
    assert "SECRET-TYPE" not in exc.value.detail


def test_undefined_member_names_are_clipped() -> None:
    with pytest.raises(FrameError) as exc:
        validate_payload("1.6", "Heartbeat", True, {"k" * 10_000: 1})
    assert len(exc.value.detail) < 200


# --- unknown actions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "action", "is_request"),
    [
        ("1.6", "FlyToTheMoon", True),
        ("2.0.1", "FlyToTheMoon", False),
        ("2.1", "", True),
        ("1.6", "../../../etc/passwd", True),
        ("1.6", "BootNotificationResponse", True),  # a schema file name, not an action
        ("2.0.1", "BootNotificationRequest", True),
        ("2.0.1", "TransactionEvent".lower(), True),
        ("1.6", "TransactionEvent", True),  # 2.x action on 1.6
        ("2.1", "NotifyPeriodicEventStream", False),  # SEND: never answered
    ],
)
def test_unknown_action_is_not_implemented(version: str, action: str, is_request: bool) -> None:
    with pytest.raises(FrameError) as exc:
        validate_payload(version, action, is_request, {})
    assert exc.value.kind is ErrorKind.NOT_IMPLEMENTED
    assert error_code_for(exc.value.kind, version) == "NotImplemented"


def test_unknown_version_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        validate_payload("2.0", "Heartbeat", True, {})


def test_catalogue_knows_each_versions_actions() -> None:
    v16, v201, v21 = known_actions("1.6"), known_actions("2.0.1"), known_actions("2.1")
    assert {"BootNotification", "StartTransaction", "StopTransaction", "DataTransfer"} <= v16
    assert {"BootNotification", "TransactionEvent", "RequestStartTransaction"} <= v201
    assert "TransactionEvent" not in v16 and "StartTransaction" not in v201
    assert v201 <= v21  # 2.1 is a superset of 2.0.1's messages
    assert has_schema("2.1", "NotifyPeriodicEventStream", True)
    assert not has_schema("2.1", "NotifyPeriodicEventStream", False)
    assert all(has_schema("1.6", a, True) and has_schema("1.6", a, False) for a in v16)


def test_each_schema_is_compiled_once() -> None:
    validate_payload("2.0.1", "Heartbeat", True, {})
    before = schemas._compiled.cache_info()
    for _ in range(50):
        validate_payload("2.0.1", "Heartbeat", True, {})
    after = schemas._compiled.cache_info()
    assert after.misses == before.misses and after.hits == before.hits + 50


def test_schemas_are_validated_with_their_declared_draft() -> None:
    def draft(version: str, name: str) -> str:
        return str(type(schemas._compiled(version, name)).META_SCHEMA["$schema"])

    assert "draft-04" in draft("1.6", "BootNotification")
    assert "draft-06" in draft("2.0.1", "BootNotificationRequest")
    assert "draft-06" in draft("2.1", "BootNotificationRequest")


def test_every_shipped_schema_compiles() -> None:
    for version in ("1.6", "2.0.1", "2.1"):
        for action in known_actions(version):
            for is_request in (True, False):
                if has_schema(version, action, is_request):
                    try:
                        validate_payload(version, action, is_request, {})
                    except FrameError as err:  # most need members; compiling is what we test
                        assert err.kind is not ErrorKind.NOT_IMPLEMENTED


def test_inlined_refs_give_the_same_verdicts_as_plain_jsonschema() -> None:
    """Our compile step (ref inlining, decimal multipleOf) must not change any verdict.

    SetChargingProfile is left out: there plain float arithmetic wrongly rejects limit 21.4,
    which is the reason for our decimal multipleOf (tested above).
    """
    samples = [(v, a, r, p) for v, a, r, p in VALID] + [(v, a, r, p) for v, a, r, p, _, _ in INVALID]
    samples = [s for s in samples if s[:2] != ("1.6", "SetChargingProfile")]
    for version, action, is_request, payload in samples:
        name = schemas._catalogue(version)[action][0 if is_request else 1]
        assert name is not None
        directory = {"1.6": "v16", "2.0.1": "v201", "2.1": "v21"}[version]
        raw = json.loads(resources.files("ocpp").joinpath(directory, "schemas", name + ".json")
                         .read_text(encoding="utf-8-sig"))
        plain = validator_for(raw, default=Draft4Validator)(raw)
        ours = schemas._compiled(version, name)
        assert plain.is_valid(payload) == ours.is_valid(payload), (version, action, is_request)
        if not ours.is_valid(payload):
            mine = {(e.json_path, e.validator) for e in ours.iter_errors(payload)}
            theirs = {(e.json_path, e.validator) for e in plain.iter_errors(payload)}
            assert mine == theirs, (version, action)
