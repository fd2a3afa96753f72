"""ModbusBus under injected faults, over a pty against the RTU simulator: every fault kind maps to
its typed error, a dead meter costs only its own timeout x (retries + 1) per cycle while the others
are still read every cycle, and a late reply is never taken as another request's answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.modbus.bus import ModbusBus
from drivers.modbus.errors import ModbusCrcError, ModbusExceptionResponse, ModbusTimeout
from drivers.modbus.meter import Meter
from drivers.modbus.reading import Quality
from drivers.modbus.regmap import load_map
from drivers.sim.modbus_meter import ChargingProfile, SimulatedBus, SimulatedMeter


TIMEOUT_S = 0.15
MODELS = ["sdm630", "sdm120", "abb_b23", "em340"]
STEADY = ChargingProfile(max_current_a=16.0, idle_s=0, ramp_up_s=0)


@pytest.fixture
async def line(tmp_path: Path) -> AsyncIterator[tuple[SimulatedBus, ModbusBus]]:
    """Units 1..4 = the four models; units 5 and 6 = two SDM630s that differ (230 V vs 240 V)."""
    sims = [SimulatedMeter(load_map(n), u, STEADY) for u, n in enumerate(MODELS, start=1)]
    sims.append(SimulatedMeter(load_map("sdm630"), 5, STEADY, mains_v=230.0))
    sims.append(SimulatedMeter(load_map("sdm630"), 6, STEADY, mains_v=240.0))
    sim = SimulatedBus(sims, workdir=tmp_path / "line")
    await sim.start()
    try:
        bus = ModbusBus.serial(sim.port, 9600, timeout_s=TIMEOUT_S, retries=1)
        try:
            await bus.open()
            yield sim, bus
        finally:
            bus.close()
    finally:
        await sim.stop()


def _meters(bus: ModbusBus) -> list[Meter]:
    return [Meter(n, load_map(n), u, bus) for u, n in enumerate(MODELS, start=1)]


async def test_silent_meter_times_out_after_its_retries(line: tuple[SimulatedBus, ModbusBus]) -> None:
    sim, bus = line
    sim.set_fault(2, "silent")
    started = time.monotonic()
    with pytest.raises(ModbusTimeout) as err:
        await bus.read_registers(2, 4, 0, 2)
    elapsed = time.monotonic() - started
    assert err.value.unit == 2 and err.value.port == sim.port
    assert 2 * TIMEOUT_S <= elapsed < 2 * TIMEOUT_S + 0.1
    assert (bus.stats.timeouts, bus.stats.retries, bus.stats.units[2].timeouts) == (1, 1, 1)
    assert len([w for w in sim.wire if w.unit == 2]) == 2  # first attempt + one retry


async def test_crc_corruption_is_a_crc_error_known_before_the_timeout(
    line: tuple[SimulatedBus, ModbusBus],
) -> None:
    # pymodbus 3.16.1 silently drops a frame with a bad CRC and waits for its timeout; the bus
    # checks the CRC itself as soon as the frame is complete.
    sim, bus = line
    sim.set_fault(1, "crc")
    started = time.monotonic()
    with pytest.raises(ModbusCrcError):
        await bus.read_registers(1, 4, 0, 36)
    assert time.monotonic() - started < TIMEOUT_S
    assert bus.stats.crc_errors == 1 and bus.stats.retries == 1 and bus.stats.timeouts == 0
    sim.set_fault(1, "none")
    assert len(await bus.read_registers(1, 4, 0, 36)) == 36


async def test_crc_errors_show_as_crc_quality_in_the_reading(
    line: tuple[SimulatedBus, ModbusBus],
) -> None:
    sim, bus = line
    sim.set_fault(3, "crc")
    reading = await Meter("abb", load_map("abb_b23"), 3, bus).read()
    assert {v.quality for v in reading.values} == {Quality.CRC}


async def test_exception_response_carries_its_code_and_is_not_retried(
    line: tuple[SimulatedBus, ModbusBus],
) -> None:
    sim, bus = line
    sim.set_fault(4, "exception", exception_code=2)
    with pytest.raises(ModbusExceptionResponse) as err:
        await bus.read_registers(4, 4, 0, 10)
    assert err.value.exception_code == 2 and err.value.unit == 4
    sim.set_fault(4, "exception", exception_code=6)
    with pytest.raises(ModbusExceptionResponse) as err:
        await bus.read_registers(4, 4, 0, 10)
    assert err.value.exception_code == 6
    assert bus.stats.exceptions == 2 and bus.stats.retries == 0


async def test_a_real_illegal_address_answers_exception_2(line: tuple[SimulatedBus, ModbusBus]) -> None:
    _, bus = line
    with pytest.raises(ModbusExceptionResponse) as err:
        await bus.read_registers(1, 4, 0x1000, 4)  # nothing mapped there on an SDM630
    assert err.value.exception_code == 2


@pytest.mark.parametrize("model", MODELS)
async def test_wrong_word_order_is_caught_as_out_of_range(tmp_path: Path, model: str) -> None:
    # A frozen clock and a fixed seed make the served numbers (and so the swapped garbage)
    # reproducible: whether a swapped float lands inside a plausibility range is luck.
    regmap = load_map(model)
    sim = SimulatedBus([SimulatedMeter(regmap, 1, STEADY, seed=7, clock=lambda: 0.0)], workdir=tmp_path / "l")
    await sim.start()
    try:
        async with ModbusBus.serial(sim.port, 9600, timeout_s=TIMEOUT_S) as bus:
            sim.set_fault(1, "word_order")
            reading = await Meter(model, regmap, 1, bus).read()
            truth = sim.meter(1).truth()
            sim.set_fault(1, "none")
            healthy = await Meter(model, regmap, 1, bus).read()
    finally:
        await sim.stop()
    assert healthy.ok
    assert not reading.ok
    wide = [v for v in regmap.values if v.count > 1]
    by_name = {v.name: v for v in reading.values}
    flagged = [v.name for v in wide if by_name[v.name].quality is Quality.OUT_OF_RANGE]
    assert len(flagged) >= len(wide) / 2, (model, flagged)
    # Whatever slipped through is garbage, never the true number.
    for v in wide:
        got = by_name[v.name]
        if got.ok and truth[v.name] != 0:
            assert got.value != pytest.approx(truth[v.name], rel=0.01), v.name
    if regmap.values[0].type != "float32":
        # Integer voltages swap into megavolts: every one is caught.
        assert all(by_name[v.name].quality is Quality.OUT_OF_RANGE for v in wide if v.quantity == "voltage")


async def test_dead_meter_among_four_costs_only_its_own_timeout_each_cycle(
    line: tuple[SimulatedBus, ModbusBus],
) -> None:
    sim, bus = line
    meters = _meters(bus)

    async def cycle() -> tuple[float, list]:
        bus.cycle_begin()
        readings = [await m.read() for m in meters]
        return bus.cycle_end(), readings

    healthy = [(await cycle())[0] for _ in range(3)]
    baseline = max(healthy)
    dead = 2  # the SDM120: two requests in its plan
    sim.set_fault(dead, "silent")
    dead_cost = TIMEOUT_S * (bus.retries + 1)
    for _ in range(4):
        before = bus.stats.units[dead].bus_time_s
        used, readings = await cycle()
        spent_on_dead = bus.stats.units[dead].bus_time_s - before
        for m, r in zip(meters, readings, strict=True):
            if m.unit_id == dead:
                assert {v.quality for v in r.values} == {Quality.TIMEOUT}
            else:
                assert r.ok, (m, [v for v in r.values if not v.ok])
        # One timeout x (retries + 1) for the dead unit, not one per request of its plan ...
        assert dead_cost <= spent_on_dead < dead_cost + 0.05
        # ... and the others cost what they cost before.
        assert used - spent_on_dead < baseline + 0.05
    assert bus.stats.units[dead].skipped == 4 * (len(meters[1].plan) - 1)
    assert bus.stats.units[dead].timeouts == 4
    # Revived: read again on the next cycle, logged as up.
    sim.set_fault(dead, "none")
    _, readings = await cycle()
    assert all(r.ok for r in readings)


async def test_slow_meters_late_reply_is_not_taken_as_the_next_units_answer(
    line: tuple[SimulatedBus, ModbusBus],
) -> None:
    # Unit 5 answers after 0.25 s (timeout 0.15 s); unit 6 answers after 0.12 s, so unit 5's late
    # reply (same model, same request, same length, 230 V instead of 240 V) arrives while the
    # bus waits for unit 6.
    sim, bus = line
    sim.set_fault(5, "slow", slow_s=0.25)
    sim.set_fault(6, "slow", slow_s=0.12)
    with pytest.raises(ModbusTimeout):
        await bus.read_registers(5, 4, 0, 36, retries=0)
    regs = await bus.read_registers(6, 4, 0, 36, retries=0)
    from drivers.modbus.codec import decode

    v = load_map("sdm630").value("voltage_l1")
    assert decode(v, regs[0:2]) == pytest.approx(sim.meter(6).truth()["voltage_l1"], rel=1e-6)
    assert decode(v, regs[0:2]) > 235.0  # unit 6's 240 V, not unit 5's 230 V
    assert bus.stats.stray_frames == 1


async def test_late_reply_cannot_answer_the_same_units_next_request_in_a_cycle(
    line: tuple[SimulatedBus, ModbusBus],
) -> None:
    # RTU replies carry no address: a late reply to request A of unit 5 would fit request B of
    # unit 5 if B had the same length. Unit 5 answers after 0.2 s (timeout 0.15 s): the late
    # reply to attempt 1 answers the retry (the same request: correct data), and the reply to
    # the retry is still on its way, so the plan's other requests must not be sent this cycle.
    sim, bus = line
    sim.set_fault(5, "slow", slow_s=0.2)
    meter = Meter("m5", load_map("sdm630"), 5, bus)
    first = meter.plan.requests[0]
    bus.cycle_begin()
    reading = await meter.read()
    bus.cycle_end()
    by_name = {v.name: v for v in reading.values}
    for v in first.values:
        assert by_name[v.name].quality is Quality.OK
    voltage = by_name["voltage_l1"].value
    assert voltage is not None and 225 < voltage < 235
    others = [v for r in meter.plan.requests[1:] for v in r.values]
    assert {by_name[v.name].quality for v in others} == {Quality.TIMEOUT}
    assert [(w.address, w.count) for w in sim.wire if w.unit == 5] == [(first.address, first.count)] * 2
    assert bus.stats.units[5].skipped == len(meter.plan) - 1
    await asyncio.sleep(0.25)  # the retry's late reply arrives while nothing is pending
    sim.set_fault(5, "none")
    bus.cycle_begin()
    fresh = await meter.read()
    bus.cycle_end()
    assert fresh.ok
    truth = sim.meter(5).truth()
    for v in fresh.values:
        assert v.value == pytest.approx(truth[v.name], rel=1e-6, abs=1e-6)


async def test_partial_late_bytes_are_discarded_before_the_next_request(
    line: tuple[SimulatedBus, ModbusBus],
) -> None:
    sim, bus = line
    await bus.read_registers(1, 4, 0, 2)
    sim._write(b"\x01\x04\x48\x43\x66")  # the start of a 36-register reply, then nothing
    await asyncio.sleep(0.02)
    regs = await bus.read_registers(1, 4, 0, 36)
    assert len(regs) == 36 and bus.stats.frame_errors == 0 and bus.stats.timeouts == 0


async def test_request_waits_until_a_talker_has_finished(tmp_path: Path) -> None:
    # At 1200 baud t3.5 is 29 ms: the request must not start before the line has been quiet that
    # long after the last stray byte (the pty itself has no timing; the bus models the line).
    sim = SimulatedBus([SimulatedMeter(load_map("sdm120"), 1, STEADY)], workdir=tmp_path / "l")
    await sim.start()
    try:
        from pymodbus.client import AsyncModbusSerialClient

        client = AsyncModbusSerialClient(sim.port, baudrate=9600, timeout=2, retries=0)
        bus = ModbusBus(client, baud=1200, timeout_s=0.5, retries=0)
        try:
            await bus.open()
            await bus.read_registers(1, 4, 0, 2)
            last_byte = 0.0

            async def babble() -> None:
                nonlocal last_byte
                for _ in range(3):
                    sim._write(b"\x55")
                    last_byte = time.monotonic()
                    await asyncio.sleep(0.015)

            talker = asyncio.create_task(babble())
            await asyncio.sleep(0.001)
            await bus.read_registers(1, 4, 0, 2)
            await talker
            request_at = sim.wire[-1].time
            assert request_at - last_byte >= 0.9 * bus.gap_s, (request_at - last_byte, bus.gap_s)
        finally:
            bus.close()
    finally:
        await sim.stop()


async def test_fault_switched_at_run_time_and_statistics_per_unit(
    line: tuple[SimulatedBus, ModbusBus],
) -> None:
    sim, bus = line
    m = Meter("sdm630", load_map("sdm630"), 1, bus)
    assert (await m.read()).ok
    sim.set_fault(1, "silent")
    assert not (await m.read()).ok
    sim.set_fault(1, "exception", exception_code=4)
    assert {v.quality for v in (await m.read()).values} == {Quality.EXCEPTION}
    sim.clear_faults()
    assert (await m.read()).ok
    u = bus.stats.units[1]
    n = len(m.plan)
    # Outside a cycle nothing is skipped: every request of the silent read timed out.
    assert u.requests == 4 * n
    assert (u.ok, u.timeouts, u.exceptions, u.retries) == (2 * n, n, n, n)
    assert u.last_error == "ModbusExceptionResponse"
    assert bus.stats.requests == u.requests
