"""ChargePointTracker on real-looking OCPP 1.6 and 2.0.1 sequences; BillingCrossCheck."""

import json

from appliance.health.cpstate import BillingCrossCheck, ChargePointTracker
from appliance.tap import TapRecord

S = 1_000_000_000


def f(t, d, *msg):  # noqa: ANN001, ANN201
    return TapRecord(t * S, "CP1", d, "frame", json.dumps(list(msg)))


def test_ocpp16_session() -> None:
    tr = ChargePointTracker()
    evs = []
    for r in [
        TapRecord(0, "CP1", "", "connect", extra={"subprotocol": "ocpp1.6"}),
        f(1, "up", 2, "b1", "BootNotification", {"chargePointVendor": "ABB", "chargePointModel": "Terra AC", "firmwareVersion": "1.8.2"}),
        f(1, "down", 3, "b1", {"status": "Accepted", "currentTime": "2025-01-01T00:00:00Z", "interval": 300}),
        f(2, "up", 2, "s1", "StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Preparing"}),
        f(3, "up", 2, "t1", "StartTransaction", {"connectorId": 1, "idTag": "hmac:0011", "meterStart": 10000, "timestamp": "2025-01-01T00:00:03Z"}),
        f(3, "down", 3, "t1", {"idTagInfo": {"status": "Accepted"}, "transactionId": 42}),
        f(60, "up", 2, "m1", "MeterValues", {"connectorId": 1, "transactionId": 42, "meterValue": [{"timestamp": "x", "sampledValue": [{"value": "10.5", "unit": "kWh"}, {"value": "16", "measurand": "Current.Import", "unit": "A"}]}]}),
        f(70, "up", 2, "s2", "StatusNotification", {"connectorId": 1, "errorCode": "GroundFailure", "status": "Faulted"}),
        f(71, "up", 2, "s3", "StatusNotification", {"connectorId": 1, "errorCode": "GroundFailure", "status": "Faulted"}),
        f(80, "up", 2, "t2", "StopTransaction", {"transactionId": 42, "meterStop": 11000, "timestamp": "x", "reason": "EVDisconnected"}),
        TapRecord(81 * S, "CP1", "", "stats", extra={"reconnects": 2, "csms_latency_ms": {"n": 5, "p50": 12.0, "p95": 30.0, "p99": 31.0}}),
    ]:
        evs += tr.apply(r)
    kinds = [e["kind"] for e in evs]
    assert kinds == ["transaction_started", "fault", "transaction_ended"]  # repeated Faulted: one event
    assert evs[2]["charger_energy_wh"] == 1000.0 and evs[2]["transaction_id"] == "42"
    st = tr.state("CP1")
    assert st["boot"]["vendor"] == "ABB" and st["boot"]["firmware"] == "1.8.2"
    assert st["heartbeat_interval_s"] == 300 and st["connected"]
    assert st["connectors"]["1"]["error_code"] == "GroundFailure"
    assert st["transaction"] is None and st["faults"] == 1
    assert st["reconnects"] == 2 and st["csms_latency_ms"]["p95"] == 30.0
    assert tr.changed() == ["CP1"] and tr.changed() == []
    json.dumps(st)


def test_ocpp201_transaction_event_and_garbage() -> None:
    tr = ChargePointTracker()
    mv = lambda wh: [{"timestamp": "x", "sampledValue": [{"value": wh, "measurand": "Energy.Active.Import.Register", "unitOfMeasure": {"unit": "kWh", "multiplier": 0}}]}]  # noqa: E731
    evs = []
    for r in [
        f(1, "up", 2, "b", "BootNotification", {"reason": "PowerUp", "chargingStation": {"vendorName": "Alfen", "model": "Eve", "firmwareVersion": "6.1"}}),
        f(1, "down", 3, "b", {"status": "Accepted", "currentTime": "x", "interval": 60}),
        f(2, "up", 2, "s", "StatusNotification", {"timestamp": "x", "connectorStatus": "Occupied", "evseId": 1, "connectorId": 1}),
        f(3, "up", 2, "e1", "TransactionEvent", {"eventType": "Started", "timestamp": "x", "triggerReason": "CablePluggedIn", "seqNo": 0, "transactionInfo": {"transactionId": "tx-a"}, "evse": {"id": 1, "connectorId": 1}, "meterValue": mv(5.0)}),
        f(30, "up", 2, "e2", "TransactionEvent", {"eventType": "Updated", "timestamp": "x", "triggerReason": "MeterValuePeriodic", "seqNo": 1, "transactionInfo": {"transactionId": "tx-a"}, "meterValue": mv(5.4)}),
        TapRecord(31 * S, "CP1", "up", "frame", "[2, not json"),
        f(32, "up", 2, "x", "StatusNotification", {"connectorStatus": "Faulted"}),  # missing evseId
        f(60, "up", 2, "e3", "TransactionEvent", {"eventType": "Ended", "timestamp": "x", "triggerReason": "EVDeparted", "seqNo": 2, "transactionInfo": {"transactionId": "tx-a", "stoppedReason": "EVDisconnected"}, "meterValue": mv(5.9)}),
    ]:
        evs += tr.apply(r)
    assert [e["kind"] for e in evs] == ["transaction_started", "transaction_ended"]
    assert abs(evs[1]["charger_energy_wh"] - 900.0) < 1e-6
    st = tr.state("CP1")
    assert st["boot"]["model"] == "Eve" and st["connectors"]["1/1"]["status"] == "Occupied"
    assert st["unparsed_frames"] == 2


def test_billing_deviation_raised_only_above_tolerance() -> None:
    bc = BillingCrossCheck({"CP1": "cp1_meter"}, abs_tolerance_wh=50, rel_tolerance=0.02)
    for t in range(0, 101):
        bc.meter_energy("CP1", t * S, 10_000 + 10 * t)  # 10 Wh/s
    start = {"kind": "transaction_started", "cp_id": "CP1", "transaction_id": "1", "started_ns": int(10.5 * S)}
    end = {"kind": "transaction_ended", "cp_id": "CP1", "transaction_id": "1", "ended_ns": 90 * S, "charger_energy_wh": 795.0}
    assert bc.on_event(start) == [] and bc.on_event(end) == []  # meter 795 Wh: fine
    assert bc.last_results["CP1"]["meter_wh"] == 795.0
    end2 = dict(end, transaction_id="2", ended_ns=105 * S, charger_energy_wh=1200.0)
    bc.on_event(dict(start, transaction_id="2"))
    assert bc.on_event(end2) == []  # end after the newest sample: waits for it
    evs = bc.meter_energy("CP1", 106 * S, 11_060)
    assert len(evs) == 1 and evs[0]["kind"] == "billing_deviation"
    assert evs[0]["meter_wh"] == 945.0 and evs[0]["deviation_wh"] == 255.0
