"""Suite 1: the gateway's meter readings match the reference within the meter's accuracy class."""

from __future__ import annotations

import time
from typing import Any

from hil.bench import Broker, MeterPart
from hil.report import Recorder

# Quantities whose error the accuracy class bounds (percent of reading, EN 50470-3 / IEC 62053-21);
# the floor stands for the meter's resolution near zero (an idle charger draws ~0 A).
CLASS_BOUND = {"voltage": 0.1, "current": 0.01, "power_active": 1.0, "power_apparent": 1.0,
               "power_reactive": 1.0, "energy_import": 0.01, "energy_export": 0.01, "frequency": 0.01,
               "power_factor": 0.01}


def _quantity(key: str) -> str:
    for q in sorted(CLASS_BOUND, key=len, reverse=True):
        if key == q or key.startswith(q + "_"):
            return q
    return ""


def _readings(broker: Broker, name: str, n: int) -> list[dict[str, Any]]:
    """The next ``n`` readings of meter ``name`` published from now on."""
    out: list[dict[str, Any]] = []
    since = time.time()

    def enough(msgs: list[Any]) -> bool:
        out.clear()
        for m in msgs:
            if m.arrived < since:
                continue
            for r in m.json().get("meters", []):
                if r["name"] == name and r.get("values"):
                    out.append(r)
        return len(out) >= n

    broker.observer.wait_for(enough, timeout=n + 10, topic=broker.topic("telemetry"))
    return out[-n:]


def test_meter_readings_match_the_reference_within_the_accuracy_class(
        gateway: Any, broker: Broker, meters: list[MeterPart], hil_record: Recorder) -> None:
    assert meters, "the bench has no meters"
    for meter in meters:
        cls = meter.spec.accuracy_class
        compared = 0
        for reading in _readings(broker, meter.name, 5):
            values = reading["values"]
            bad = {k: v for k, v in values.items() if v["q"] != "ok"}
            assert not bad, f"{meter.name}: values not ok: {bad}"
            reference = meter.reference(reading["ts_ns"])
            assert reference, f"{meter.name}: no reference for the reading at {reading['ts_ns']}"
            for key, ref in sorted(reference.items()):
                q = _quantity(key)
                if not q or key not in values:
                    continue
                measured = values[key]["v"]
                tolerance = max(abs(ref) * cls / 100, CLASS_BOUND[q])
                hil_record.value(f"{meter.name} {key}", measured, ref, tolerance, values[key]["unit"])
                assert abs(measured - ref) <= tolerance, (
                    f"{meter.name} {key}: {measured} vs reference {ref} (class {cls}: +-{tolerance:.4g})")
                compared += 1
        assert compared >= 5 * 10, f"{meter.name}: only {compared} values compared"


def test_every_value_of_the_register_map_is_reported(broker: Broker, meters: list[MeterPart]) -> None:
    from appliance.health.sampler import _value_key
    from drivers.modbus.regmap import load_map

    for meter in meters:
        regmap = load_map(meter.spec.model)
        want = {_value_key(str(v.quantity), None if v.phase is None else str(v.phase)) for v in regmap.values}
        reading = _readings(broker, meter.name, 1)[0]
        assert want == set(reading["values"]), f"{meter.name}: {sorted(want ^ set(reading['values']))}"


def test_telemetry_is_published_at_1_hz(broker: Broker, meters: list[MeterPart], hil_record: Recorder) -> None:
    """15 ticks: each tick's start (``ts_ns``, the gateway's clock) and its arrival at the broker
    (the bench's clock) stay close to the 1 s grid; no tick is skipped."""
    since = time.time()
    msgs = broker.observer.wait_for(lambda ms: len([m for m in ms if m.arrived >= since]) >= 16, timeout=30,
                                    topic=broker.topic("telemetry"))
    msgs = [m for m in msgs if m.arrived >= since][:16]
    payloads = [m.json() for m in msgs]
    ticks = [p["ts_ns"] / 1e9 for p in payloads]
    hil_record.jitter("telemetry tick (gateway clock)", ticks)
    hil_record.jitter("telemetry arrival (broker)", [m.arrived for m in msgs])
    seqs = [p["seq"] for p in payloads]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    assert all(p["skipped"] == 0 for p in payloads)
    deviations = [abs(b - a - 1.0) for a, b in zip(ticks, ticks[1:])]
    assert max(deviations) <= 0.1, f"tick interval off by up to {max(deviations) * 1e3:.0f} ms"
    arrivals = [m.arrived for m in msgs]
    late = [b - t for b, t in zip(arrivals, ticks)]
    assert max(late) <= 1.0, f"telemetry reached the broker up to {max(late):.2f} s after its tick"
