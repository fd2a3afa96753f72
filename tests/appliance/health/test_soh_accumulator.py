"""HealthAccumulator: error rates, plausibility, exceedance, dew margin, storage, reboots."""

from appliance.health.sampler import Sample
from appliance.health.soh import HealthAccumulator, SohLimits


def sample(seq: int, t: float, rh: float, dew: float, meter_ok: bool) -> Sample:
    values = {"voltage_L1": {"v": 230.0, "unit": "V", "q": "ok"}} if meter_ok else None
    m = {"name": "main", "model": "SDM630", "unit_id": 1, "values": values}
    if not meter_ok:
        m["missing"] = "timeout"
    s = {"name": "cab", "temperature_c": t, "humidity_rh": rh, "dew_point_c": dew, "q": "ok"}
    return Sample(seq, seq * 10**9, 0.0, [m], [s], {"write_bytes": 1000 + seq * 10, "boot_id": "b2", "uptime_s": 5.0})


def test_soh_window_values() -> None:
    acc = HealthAccumulator(SohLimits(cabinet_temp_max_c=40.0, max_rate_c_per_min=5.0))
    temps = [30.0] * 10 + [41.0] * 5  # jump of 11 °C in 1 s: impossible rate
    for i, t in enumerate(temps):
        acc.add_sample(sample(i, t, 50.0, t - 2.5, meter_ok=(i % 5 != 0)), float(i))
    acc.set_relay_cycles("contactor", 25_000)
    acc.set_blackbox_stats({"bytes_written": 100})
    acc.set_blackbox_stats({"bytes_written": 4196})
    acc.set_boot_history(["b1", "b2"])
    acc.set_chargers({"CP1": {"reconnects": 3, "faults": 1, "upstream_losses": 0}})
    acc.set_chargers({"CP1": {"reconnects": 4, "faults": 1, "upstream_losses": 0}})
    snap = acc.snapshot(15.0)
    assert snap["relays"]["contactor"]["life_used"] == 0.25
    assert snap["meters"]["main"]["error_rate"] == round(3 / 15, 4)
    cab = snap["sensors"]["cab"]
    assert cab["plausibility"]["rate_violations"] == 1 and not cab["plausibility"]["stuck"]
    assert cab["temp_exceed_s"] == 5.0
    assert cab["dew_margin_min_c"] == 2.5 and cab["condensation_risk_s"] == 14.0
    assert snap["storage"]["blackbox_bytes_written"] == 4096
    assert snap["storage"]["process_write_bytes"] == 140
    assert snap["system"]["reboots"] == 1
    assert snap["chargers"]["CP1"]["reconnects_window"] == 1
    assert acc.snapshot(75.0)["samples"] == 0  # new window


def test_stuck_sensor_detected() -> None:
    acc = HealthAccumulator(SohLimits(stuck_samples=5))
    for i in range(6):
        acc.add_sample(sample(i, 22.0, 40.0, 8.0, True), float(i))
    assert acc.snapshot(6.0)["sensors"]["cab"]["plausibility"]["stuck"]
