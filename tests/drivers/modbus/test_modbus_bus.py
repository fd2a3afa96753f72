"""ModbusBus: line timing and response scanning (pure), then every meter model end to end over a
pty against the RTU simulator: decoded values match the simulator's ground truth, the planner's
requests are exactly what goes on the wire, the silent interval is kept, one request at a time."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.modbus.bus import (
    BusStats,
    BusUnavailable,
    HeardKind,
    LineTiming,
    ModbusBus,
    read_response_bytes,
    scan_rtu_response,
    transaction_wire_s,
)
from drivers.modbus.codec import DataType, append_crc, crc16
from drivers.modbus.errors import ModbusFrameError
from drivers.modbus.meter import Meter
from drivers.modbus.reading import Quality
from drivers.modbus.regmap import ValueDef, load_map
from drivers.sim.modbus_meter import ChargingProfile, SimulatedBus, SimulatedMeter


MODELS = ["sdm630", "sdm120", "abb_b23", "em340"]


def close_to_truth(v: ValueDef, got: float, want: float) -> bool:
    """Equal within what the wire format can carry: float32 rounding, or half a scale step."""
    if v.type is DataType.FLOAT32:
        return math.isclose(got, want, rel_tol=1.2e-7, abs_tol=1e-6)
    return abs(got - want) <= abs(v.scale) / 2 + 1e-9 * abs(want)


# -- pure: timing ------------------------------------------------------------------------


def test_line_timing_counts_start_parity_and_stop_bits() -> None:
    assert LineTiming.of(9600, "N", 1).bits_per_char == 10
    assert LineTiming.of(9600, "E", 1).bits_per_char == 11
    assert LineTiming.of(9600, "N", 2).bits_per_char == 11
    assert LineTiming.of(9600).t35_s == pytest.approx(3.5 * 10 / 9600)
    assert LineTiming.of(19200, "E").t35_s == pytest.approx(3.5 * 11 / 19200)


def test_silent_interval_is_fixed_at_1_75_ms_above_19200_baud() -> None:
    assert LineTiming.of(38400).t35_s == 0.00175
    assert LineTiming.of(115200, "E").t35_s == 0.00175


def test_transaction_wire_time_is_both_frames_plus_two_silences() -> None:
    t = LineTiming.of(9600, "E")
    assert read_response_bytes(36) == 77
    assert transaction_wire_s(36, t) == pytest.approx((8 + 77) * 11 / 9600 + 2 * 3.5 * 11 / 9600)


# -- pure: what did we hear? -----------------------------------------------------------


def _reply(unit: int, fc: int, words: list[int]) -> bytes:
    body = b"".join(w.to_bytes(2, "big") for w in words)
    return append_crc(bytes([unit, fc, len(body)]) + body)


def test_scan_recognises_our_good_frame() -> None:
    assert scan_rtu_response(_reply(5, 4, [1, 2]), 5, crc16).kind is HeardKind.OURS_OK


def test_scan_recognises_our_frame_with_a_bad_crc() -> None:
    frame = bytearray(_reply(5, 4, [1, 2]))
    frame[4] ^= 0x01
    assert scan_rtu_response(bytes(frame), 5, crc16).kind is HeardKind.OURS_BAD_CRC


def test_scan_reports_a_partial_frame_for_us() -> None:
    assert scan_rtu_response(_reply(5, 4, [1, 2])[:5], 5, crc16).kind is HeardKind.OURS_PARTIAL


def test_scan_skips_a_late_frame_from_another_unit_and_reports_it_as_stray() -> None:
    heard = scan_rtu_response(_reply(7, 4, [9, 9]) + _reply(5, 4, [1, 2]), 5, crc16)
    assert heard.kind is HeardKind.OURS_OK
    assert heard.stray_units == (7,)
    only_stray = scan_rtu_response(_reply(7, 4, [9, 9]), 5, crc16)
    assert only_stray.kind is HeardKind.NOTHING and only_stray.stray_units == (7,)


def test_scan_recognises_exception_frames_and_garbage() -> None:
    assert scan_rtu_response(append_crc(bytes([5, 0x84, 2])), 5, crc16).kind is HeardKind.OURS_OK
    assert scan_rtu_response(b"\x00\xff\x13", 5, crc16).kind is HeardKind.GARBAGE
    assert scan_rtu_response(b"", 5, crc16).kind is HeardKind.NOTHING


# -- response checks with an injected fake client -------------------------------------


class _FakeResponse:
    def __init__(self, fc: int, regs: list[int], dev_id: int = 1) -> None:
        self.function_code = fc
        self.registers = regs
        self.dev_id = dev_id

    def isError(self) -> bool:  # pymodbus's name
        return self.function_code & 0x80 != 0


class _FakeClient:
    """Answers every read with a preset response (what a confused device might send)."""

    def __init__(self, response: _FakeResponse) -> None:
        self.response = response
        self.connected = True

    async def read_input_registers(self, address: int, *, count: int, device_id: int) -> object:
        return self.response

    async def read_holding_registers(self, address: int, *, count: int, device_id: int) -> object:
        return self.response

    def close(self) -> None:
        pass


async def test_reply_with_another_function_code_is_a_frame_error() -> None:
    # pymodbus 3.16.1 hands a 0x03 response to a 0x04 request back as is; the bus must not.
    bus = ModbusBus(_FakeClient(_FakeResponse(3, [1, 2])), name="fake")
    with pytest.raises(ModbusFrameError, match="function 3"):
        await bus.read_registers(1, 4, 0, 2)
    assert bus.stats.frame_errors == 1


async def test_reply_with_the_wrong_register_count_is_a_frame_error() -> None:
    bus = ModbusBus(_FakeClient(_FakeResponse(4, [1, 2, 3])), name="fake", retries=2)
    with pytest.raises(ModbusFrameError, match="3 registers"):
        await bus.read_registers(1, 4, 0, 2)
    assert bus.stats.retries == 2 and bus.stats.frame_errors == 1


async def test_read_arguments_are_validated_before_the_wire() -> None:
    bus = ModbusBus(_FakeClient(_FakeResponse(4, [0])), name="fake")
    for args in [(1, 5, 0, 1), (1, 4, 0, 0), (1, 4, 0, 126), (1, 4, 65535, 2), (248, 4, 0, 1)]:
        with pytest.raises(ValueError):
            await bus.read_registers(*args)
    assert bus.stats.requests == 0


# -- end to end over a pty -------------------------------------------------------------


@pytest.fixture
async def line(tmp_path: Path) -> AsyncIterator[tuple[SimulatedBus, ModbusBus]]:
    """Four meters of the four models on one simulated line (units 1..4), a bus on it."""
    sims = [
        SimulatedMeter(
            load_map(name), unit, ChargingProfile(max_current_a=16.0 + 8 * unit, idle_s=0, ramp_up_s=0)
        )
        for unit, name in enumerate(MODELS, start=1)
    ]
    sim = SimulatedBus(sims, workdir=tmp_path / "line")
    await sim.start()
    try:
        bus = ModbusBus.serial(sim.port, 9600, timeout_s=0.2, retries=1)
        try:
            await bus.open()
            yield sim, bus
        finally:
            bus.close()
    finally:
        await sim.stop()


@pytest.mark.parametrize("model", MODELS)
async def test_each_model_decodes_to_the_simulators_ground_truth(
    line: tuple[SimulatedBus, ModbusBus], model: str
) -> None:
    sim, bus = line
    unit = MODELS.index(model) + 1
    regmap = load_map(model)
    meter = Meter(model, regmap, unit, bus)
    for _ in range(3):
        reading = await meter.read()
        truth = sim.meter(unit).truth()
        assert reading.ok, [v for v in reading.values if not v.ok]
        for v in regmap.values:
            got = reading.get(v.quantity, v.phase)
            assert got is not None and got.value is not None
            assert close_to_truth(v, got.value, truth[v.name]), (v.name, got.value, truth[v.name])
    # The simulated session is charging: the numbers are not trivially zero.
    assert truth[regmap.values[0].name] != 0
    currents = [v.value for v in reading.values if v.quantity == "current"]
    assert currents and all(c is not None and c > 1.0 for c in currents)


async def test_planned_requests_are_exactly_what_goes_on_the_wire(
    line: tuple[SimulatedBus, ModbusBus],
) -> None:
    sim, bus = line
    meters = [Meter(n, load_map(n), u, bus) for u, n in enumerate(MODELS, start=1)]
    expected = [(m.unit_id, int(r.function), r.address, r.count) for m in meters for r in m.plan.requests]
    for cycle in range(2):
        sim.wire.clear()
        bus.cycle_begin()
        for m in meters:
            await m.read()
        bus.cycle_end()
        assert [(w.unit, w.function, w.address, w.count) for w in sim.wire] == expected
        assert bus.stats.requests == len(expected) * (cycle + 1)
    assert bus.stats.ok == bus.stats.requests
    assert bus.stats.retries == bus.stats.timeouts == 0
    for m in meters:
        assert bus.stats.units[m.unit_id].requests == 2 * len(m.plan)


async def test_requests_are_separated_by_the_silent_interval(
    line: tuple[SimulatedBus, ModbusBus],
) -> None:
    sim, bus = line
    meter = Meter("m", load_map("sdm630"), 1, bus)
    for _ in range(5):
        await meter.read()
    times = [w.time for w in sim.wire]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.95 * bus.gap_s, gaps


async def test_concurrent_readers_are_serialised_and_all_read_correctly(
    line: tuple[SimulatedBus, ModbusBus],
) -> None:
    sim, bus = line
    meters = [Meter(n, load_map(n), u, bus) for u, n in enumerate(MODELS, start=1)]
    readings = await asyncio.gather(*(m.read() for m in meters for _ in range(3)))
    assert all(r.ok for r in readings)
    assert bus.stats.requests == 3 * sum(len(m.plan) for m in meters) == len(sim.wire)


async def test_bus_time_per_cycle_is_accounted_per_unit(
    line: tuple[SimulatedBus, ModbusBus],
) -> None:
    _, bus = line
    meters = [Meter(n, load_map(n), u, bus) for u, n in enumerate(MODELS, start=1)]
    bus.cycle_begin()
    started = time.monotonic()
    for m in meters:
        await m.read()
    wall = time.monotonic() - started
    used = bus.cycle_end()
    assert 0 < used <= wall + 1e-3
    assert bus.stats.last_cycle_s == used and bus.stats.cycles == 1
    assert sum(u.bus_time_s for u in bus.stats.units.values()) == pytest.approx(bus.stats.bus_time_s)
    d = bus.stats.as_dict()
    assert d["units"][1]["ok"] == len(meters[0].plan)
    assert isinstance(BusStats().unit(9), object)


async def test_meter_values_are_plausible_for_a_charging_session(
    line: tuple[SimulatedBus, ModbusBus],
) -> None:
    _, bus = line
    reading = await Meter("m", load_map("sdm630"), 1, bus).read()
    for phase in ("L1", "L2", "L3"):
        v = reading.get("voltage", phase)
        i = reading.get("current", phase)
        p = reading.get("power_active", phase)
        pf = reading.get("power_factor", phase)
        assert v and i and p and pf and v.value and i.value and p.value and pf.value
        assert 220 < v.value < 240
        assert i.value == pytest.approx(24.0, rel=0.1)
        assert p.value == pytest.approx(v.value * i.value * pf.value, rel=1e-5)
    f = reading.get("frequency")
    assert f is not None and f.value is not None and abs(f.value - 50.0) <= 0.0201
    assert all(v.quality is Quality.OK for v in reading.values)


async def test_a_missing_port_is_bus_unavailable_not_a_device_fault(tmp_path: Path) -> None:
    bus = ModbusBus.serial(str(tmp_path / "no-such-tty"), 9600, timeout_s=0.1)
    with pytest.raises(BusUnavailable):
        await bus.open()
    with pytest.raises(BusUnavailable):
        await bus.read_registers(1, 4, 0, 2)
    assert bus.stats.timeouts == 0
    bus.close()
