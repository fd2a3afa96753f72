"""decode_plan_results: registers or errors per request -> MeterReading with per-value quality."""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Mapping, Sequence

import pytest

from drivers.modbus.codec import encode, encode_raw
from drivers.modbus.errors import (
    EXCEPTION_NAMES,
    ModbusCrcError,
    ModbusError,
    ModbusExceptionResponse,
    ModbusFrameError,
    ModbusTimeout,
)
from drivers.modbus.plan import ReadPlan, ReadRequest, plan_for, plan_reads
from drivers.modbus.reading import MeterReading, Quality, ValueReading, decode_plan_results, quality_for
from drivers.modbus.regmap import Phase, Quantity, RegisterMap, ValueDef, load_map

TS = 1_764_090_651_123_456_789


def registers(req: ReadRequest, values: Mapping[str, float]) -> list[int]:
    """The reply a meter would give to ``req`` holding ``values`` (unlisted values and gaps: 0)."""
    regs = [0] * req.count
    for v in req.values:
        if v.name in values:
            i = req.offset(v)
            regs[i : i + v.count] = encode(v, values[v.name])
    return regs


def nominal(m: RegisterMap) -> dict[str, float]:
    typical = {
        Quantity.VOLTAGE: 230.1,
        Quantity.CURRENT: 15.5,
        Quantity.POWER_ACTIVE: 3500.5,
        Quantity.POWER_REACTIVE: -120.2,
        Quantity.POWER_APPARENT: 3600.3,
        Quantity.POWER_FACTOR: 0.97,
        Quantity.FREQUENCY: 50.0,
        Quantity.ENERGY_IMPORT: 12345.6,
        Quantity.ENERGY_EXPORT: 7.5,
    }
    return {v.name: typical[v.quantity] for v in m.values}


def run(plan: ReadPlan, results: Mapping[ReadRequest, Sequence[int] | ModbusError]) -> MeterReading:
    return decode_plan_results(plan, results, TS, "grid", "SDM630", 1)


def test_all_requests_ok_gives_every_value_in_plan_order() -> None:
    m = load_map("sdm630")
    plan = plan_for(m)
    want = nominal(m)
    reading = run(plan, {r: registers(r, want) for r in plan})
    assert reading.ok
    assert (reading.meter, reading.model, reading.unit_id, reading.timestamp_ns) == ("grid", "SDM630", 1, TS)
    assert [v.name for v in reading.values] == [v.name for v in plan.values]
    for v in reading.values:
        assert v.quality is Quality.OK and v.detail == ""
        assert v.value == pytest.approx(want[v.name], rel=1e-6)  # float32 precision
    assert reading.get("voltage", "L2") == ValueReading(
        "voltage_l2",
        Quantity.VOLTAGE,
        Phase.L2,
        "V",
        reading.get("voltage", "L2").value,
        Quality.OK,  # type: ignore[union-attr]
    )


def test_mixed_errors_cost_only_their_own_requests_values() -> None:
    m = load_map("sdm630")
    plan = plan_for(m)
    r0, r1, r2 = plan.requests
    want = nominal(m)
    reading = run(
        plan,
        {
            r0: registers(r0, want),
            r1: ModbusTimeout("/dev/ttyAMA0", 1, 4, r1.address, r1.count),
            r2: ModbusExceptionResponse("/dev/ttyAMA0", 1, 4, r2.address, r2.count, 2),
        },
    )
    assert not reading.ok
    q = {v.name: v.quality for v in reading.values}
    assert all(q[v.name] is Quality.OK for v in r0.values)
    assert all(q[v.name] is Quality.TIMEOUT for v in r1.values)
    assert all(q[v.name] is Quality.EXCEPTION for v in r2.values)
    assert reading.get("voltage", "L1").value == pytest.approx(230.1, rel=1e-6)  # type: ignore[union-attr]
    freq = reading.get("frequency")
    assert freq is not None and freq.value is None
    assert freq.detail == "timeout: port=/dev/ttyAMA0 unit=1 fc=4 addr=0x0034 count=24"
    e = reading.get("energy_export", "L3")
    assert e is not None and e.value is None
    assert (
        e.detail == "exception 2 (illegal data address): port=/dev/ttyAMA0 unit=1 fc=4 addr=0x015A count=12"
    )


@pytest.mark.parametrize(
    ("error", "quality"),
    [
        (ModbusTimeout("p", 1, 4, 0, 2), Quality.TIMEOUT),
        (ModbusCrcError("p", 1, 4, 0, 2), Quality.CRC),
        (ModbusExceptionResponse("p", 1, 4, 0, 2, 4), Quality.EXCEPTION),
        (ModbusFrameError("p", 1, 4, 0, 2, "byte count 3"), Quality.FRAME),
        (ModbusError("p", 1, 4, 0, 2, "port closed"), Quality.TIMEOUT),
    ],
)
def test_each_error_maps_to_its_quality(error: ModbusError, quality: Quality) -> None:
    vd = ValueDef("voltage_l1", "voltage", "L1", "V", 0)
    plan = plan_reads([vd])
    (value,) = run(plan, {plan.requests[0]: error}).values
    assert (value.quality, value.value, value.detail) == (quality, None, str(error))
    assert quality_for(error) is quality


@pytest.mark.parametrize("reply", [[0x4366], [0x4366, 0, 0], [], [0x4366, 0x10000], [0x4366, -1]])
def test_a_reply_of_the_wrong_size_or_with_non_words_is_a_frame_error(reply: list[int]) -> None:
    vd = ValueDef("voltage_l1", "voltage", "L1", "V", 0)
    plan = plan_reads([vd])
    (value,) = run(plan, {plan.requests[0]: reply}).values
    assert value.quality is Quality.FRAME and value.value is None and value.detail


@pytest.mark.parametrize(
    ("words", "detail"),
    [
        ([0x7FC0, 0x0000], "decoded nan outside [0, 500] V"),
        ([0x7F80, 0x0000], "decoded inf outside [0, 500] V"),
        (encode_raw("float32", "big", 600.0), "decoded 600 outside [0, 500] V"),
        (encode_raw("float32", "big", -1.0), "decoded -1 outside [0, 500] V"),
    ],
)
def test_nan_infinity_and_implausible_values_are_out_of_range(words: list[int], detail: str) -> None:
    vd = ValueDef("voltage_l1", "voltage", "L1", "V", 0)
    plan = plan_reads([vd])
    (value,) = run(plan, {plan.requests[0]: words}).values
    assert (value.quality, value.value, value.detail) == (Quality.OUT_OF_RANGE, None, detail)


def test_a_word_swapped_float32_that_decodes_tiny_is_out_of_range() -> None:
    vd = ValueDef("voltage_l1", "voltage", "L1", "V", 0)
    plan = plan_reads([vd])
    (req,) = plan.requests
    swapped = encode(vd, 230.0)[::-1]  # 0x0000 0x4366: 2.4e-41 V, inside 0..500 V
    (value,) = run(plan, {req: swapped}).values
    assert value.quality is Quality.OUT_OF_RANGE and value.value is None
    assert (
        value.detail
        == "decoded 2.41780037e-41: a non-zero float32 below 1e-09 is not a measurement (word order?)"
    )
    # Exactly zero (no voltage on the phase) and small real values stay OK.
    for x in (0.0, -0.0, 0.0001):
        assert run(plan, {req: encode(vd, x)}).values[0].quality is Quality.OK
    # Integer types never trip the float32 floor, whatever their scale.
    tiny = ValueDef("e", "energy_import", "total", "kWh", 0, type="uint32", scale=1e-12)
    p2 = plan_reads([tiny])
    assert run(p2, {p2.requests[0]: [0, 1]}).values[0].value == 1e-12


def test_an_unbounded_valid_range_still_rejects_nan_and_infinity() -> None:
    vd = ValueDef("x", "power_active", "total", "W", 0, valid_range=(-math.inf, math.inf))
    plan = plan_reads([vd])
    (req,) = plan.requests
    assert run(plan, {req: encode(vd, 1e30)}).values[0].quality is Quality.OK
    for words in ([0x7F80, 0], [0xFF80, 0], [0x7FC0, 0]):
        assert run(plan, {req: words}).values[0].quality is Quality.OUT_OF_RANGE


def test_boundaries_are_inclusive_and_valid_range_overrides_the_default() -> None:
    pf = ValueDef("pf", "power_factor", "total", "", 0, type="int16", scale=0.001)
    hz = ValueDef("hz", "frequency", None, "Hz", 1, type="uint16", scale=0.01, valid_range=(49.0, 51.0))
    plan = plan_reads([pf, hz])
    (req,) = plan.requests
    ok = run(plan, {req: encode(pf, -1.0) + encode(hz, 51.0)})
    assert [v.quality for v in ok.values] == [Quality.OK, Quality.OK]
    bad = run(plan, {req: encode_raw("int16", "big", 1001) + encode(hz, 52.0)})
    assert [(v.quality, v.detail) for v in bad.values] == [
        (Quality.OUT_OF_RANGE, "decoded 1.001 outside [-1, 1]"),
        (Quality.OUT_OF_RANGE, "decoded 52 outside [49, 51] Hz"),
    ]


def test_abb_not_available_sentinels_are_out_of_range() -> None:
    # ABB B-series: an unmeasured quantity reads all ones (unsigned) or 0x7FFF... (signed).
    m = load_map("abb_b23")
    plan = plan_for(m)
    results = {}
    for r in plan:
        regs = [0] * r.count
        for vd in r.values:
            sentinel = (
                [0x7FFF] + [0xFFFF] * (vd.count - 1) if vd.type.startswith("int") else [0xFFFF] * vd.count
            )
            regs[r.offset(vd) : r.offset(vd) + vd.count] = sentinel
        results[r] = regs
    reading = run(plan, results)
    assert {v.quality for v in reading.values} == {Quality.OUT_OF_RANGE}


def test_get_without_phase_finds_the_meter_level_value() -> None:
    three = plan_for(load_map("sdm630"))
    reading = run(three, {r: registers(r, nominal(load_map("sdm630"))) for r in three})
    assert reading.get(Quantity.FREQUENCY).name == "frequency"  # type: ignore[union-attr]
    assert reading.get("power_active").name == "power_active_total"  # type: ignore[union-attr]
    assert reading.get("current") is None  # three phases, no total: ambiguous
    assert reading.get("current", Phase.L3).name == "current_l3"  # type: ignore[union-attr]
    assert reading.get("frequency", "L1") is None

    one = load_map("sdm120")
    plan = plan_for(one)
    single = run(plan, {r: registers(r, nominal(one)) for r in plan})
    assert single.get("power_active").name == "power_active_l1"  # type: ignore[union-attr]
    assert single.get("energy_import").name == "energy_import_total"  # type: ignore[union-attr]


def test_by_phase_groups_values() -> None:
    m = load_map("em340")
    plan = plan_for(m)
    reading = decode_plan_results(plan, {r: registers(r, nominal(m)) for r in plan}, TS, "cp1", m.model, 7)
    groups = reading.by_phase()
    assert list(groups) == [Phase.L1, Phase.L2, Phase.L3, Phase.TOTAL, None]
    assert set(groups[Phase.L2]) == {
        Quantity.VOLTAGE,
        Quantity.CURRENT,
        Quantity.POWER_ACTIVE,
        Quantity.POWER_APPARENT,
        Quantity.POWER_REACTIVE,
        Quantity.POWER_FACTOR,
        Quantity.ENERGY_IMPORT,
    }
    assert groups[None][Quantity.FREQUENCY].value == 50.0
    assert groups[Phase.L1][Quantity.VOLTAGE].value == 230.1  # INT32 x10, exact
    assert groups[Phase.TOTAL][Quantity.ENERGY_EXPORT].value == 7.5


def test_to_dict_is_strict_json() -> None:
    m = load_map("sdm120")
    plan = plan_for(m)
    r0, r1 = plan.requests
    reading = run(
        plan, {r0: [0x7FC0, 0] * (r0.count // 2), r1: ModbusCrcError("/dev/ttyUSB0", 1, 4, 0x46, 6)}
    )
    d = reading.to_dict()
    text = json.dumps(d, allow_nan=False)
    assert json.loads(text) == d
    assert d["ok"] is False and d["timestamp_ns"] == TS
    assert d["values"]["voltage_l1"] == {
        "quantity": "voltage",
        "phase": "L1",
        "unit": "V",
        "value": None,
        "quality": "out_of_range",
        "detail": "decoded nan outside [0, 500] V",
    }
    assert d["values"]["frequency"]["phase"] is None
    assert d["values"]["frequency"]["quality"] == "crc"


def test_a_request_without_a_result_is_a_programming_error() -> None:
    plan = plan_for(load_map("sdm120"))
    with pytest.raises(KeyError):
        run(plan, {plan.requests[0]: [0] * plan.requests[0].count})


def test_errors_carry_context_print_it_and_pickle() -> None:
    e = ModbusExceptionResponse("/dev/ttyUSB0", 3, 4, 0x5B00, 45, 2)
    assert (e.port, e.unit, e.function, e.address, e.count, e.exception_code) == (
        "/dev/ttyUSB0",
        3,
        4,
        0x5B00,
        45,
        2,
    )
    assert str(e) == "exception 2 (illegal data address): port=/dev/ttyUSB0 unit=3 fc=4 addr=0x5B00 count=45"
    assert str(ModbusTimeout("/dev/ttyUSB0", 3, 3, 0, 1, "no reply in 0.5 s")) == (
        "timeout: port=/dev/ttyUSB0 unit=3 fc=3 addr=0x0000 count=1 (no reply in 0.5 s)"
    )
    assert str(ModbusExceptionResponse("p", 1, 3, 0, 1, 0x42)).startswith("exception 66 (unknown)")
    for err in (e, ModbusCrcError("p", 1, 4, 0, 2), ModbusFrameError("p", 1, 4, 0, 2, "short")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err) and back.__dict__ == err.__dict__
    assert issubclass(ModbusTimeout, ModbusError) and EXCEPTION_NAMES[1] == "illegal function"


def test_value_reading_to_dict_keeps_unit_and_quality_strings() -> None:
    v = ValueReading("frequency", Quantity.FREQUENCY, None, "Hz", 49.98, Quality.OK)
    assert v.ok and v.to_dict() == {
        "quantity": "frequency",
        "phase": None,
        "unit": "Hz",
        "value": 49.98,
        "quality": "ok",
        "detail": "",
    }
    assert not math.isnan(v.value or 0.0)
