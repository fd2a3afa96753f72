"""The demo's picture of the gateway is folded from MQTT messages alone (pure, no broker needed)."""

from __future__ import annotations

import io

from rich.console import Console

from appliance.demo.view import BenchPicture, render

ROOT = "omgw/v1/gw-demo"


def _meter(name: str, kw: float, kwh: float) -> dict:
    return {"name": name, "model": "SDM630", "unit_id": 1, "ts_ns": 1,
            "values": {"power_active_total": {"v": kw * 1000, "unit": "W", "q": "ok"},
                       "energy_import_total": {"v": kwh, "unit": "kWh", "q": "ok"},
                       "voltage_L1": {"v": None, "unit": "V", "q": "timeout", "reason": "no reply"}}}


def test_picture_reports_telemetry_transactions_watchdog_and_snapshots() -> None:
    pic = BenchPicture(ROOT)
    assert pic.update(f"{ROOT}/status", {"state": "online", "boot_id": "b1"}) == [
        "event=gateway_status state=online boot_id=b1"]
    lines = pic.update(f"{ROOT}/telemetry", {"seq": 0, "meters": [_meter("meter-CP001", 11.04, 1234.5)],
                                              "sensors": [{"name": "cabinet", "temperature_c": 21.96, "q": "ok"}]})
    assert lines == ["event=telemetry seq=0 meter-CP001=11.0kW/1234.50kWh cabinet=22.0C/ok"]
    assert pic.update(f"{ROOT}/telemetry", {"seq": 1, "meters": [], "sensors": []}) == []  # every 5th only
    pic.update(f"{ROOT}/event", {"kind": "transaction_started", "cp_id": "CP001", "transaction_id": "7",
                                 "energy_start_wh": 5.0})
    assert pic.transactions_seen == {"CP001/7"}
    assert pic.update(f"{ROOT}/ocpp/CP001/state", {"cp_id": "CP001", "connected": True, "subprotocol": "ocpp1.6",
                                                   "transaction": None}) == [
        "event=charger_connected cp=CP001 subprotocol=ocpp1.6"]
    lines = pic.update(f"{ROOT}/event", {"kind": "watchdog_power_cycle", "cp": "CP001", "phase": "decided",
                                         "code": "hang", "time_ns": 0})
    assert lines == ["event=watchdog_power_cycle cp=CP001 phase=decided code=hang"]
    lines = pic.update(f"{ROOT}/blackbox/S1", {"snapshot_id": "S1", "trigger": {"reasons": ["watchdog_power_cycle"]},
                                               "records": {"total": 3}})
    assert lines == ["event=snapshot id=S1 reasons=watchdog_power_cycle records=3"]
    # Transactions stay out of the events panel; the watchdog and the snapshot are in it, newest first.
    assert [e.split(" ", 1)[1] for e in pic.events] == [
        "SNAPSHOT S1", "watchdog_power_cycle CP001 phase=decided code=hang"]
    # The live view draws partial data (a meter value without a reading, a sensor without pressure).
    console = Console(file=io.StringIO(), width=120)
    console.print(render(pic, 1.0, "title"))
    text = console.file.getvalue()
    assert "meter-CP001" in text and "11.04" in text and "SNAPSHOT S1" in text
