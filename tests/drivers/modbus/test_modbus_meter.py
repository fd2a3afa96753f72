"""Meter: runs its plan on an injected bus, one request at a time, errors per request."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from drivers.modbus.codec import Function, encode
from drivers.modbus.errors import ModbusCrcError, ModbusError, ModbusExceptionResponse, ModbusTimeout
from drivers.modbus.meter import Meter
from drivers.modbus.reading import Quality
from drivers.modbus.regmap import RegisterMap, load_map


class FakeBus:
    """An in-memory register bank per (unit, function) with scripted failures; records each call."""

    port = "/dev/fake"

    def __init__(self) -> None:
        self.banks: dict[tuple[int, int], dict[int, int]] = {}
        self.failures: dict[tuple[int, int], list[type[ModbusError] | Exception]] = {}
        self.calls: list[tuple[int, int, int, int]] = []

    def load(self, unit: int, regmap: RegisterMap, values: dict[str, float]) -> None:
        for v in regmap.values:
            if v.name in values:
                bank = self.banks.setdefault((unit, int(v.function)), {})
                for i, w in enumerate(encode(v, values[v.name])):
                    bank[v.register + i] = w

    def fail(self, function: int, address: int, *errors: type[ModbusError] | Exception) -> None:
        self.failures[(function, address)] = list(errors)

    async def read_registers(self, unit: int, function: int, address: int, count: int) -> list[int]:
        self.calls.append((unit, function, address, count))
        await asyncio.sleep(0)  # a real bus yields while the frame is on the wire
        pending = self.failures.get((function, address))
        if pending:
            err = pending.pop(0)
            if isinstance(err, Exception):
                raise err
            if err is ModbusExceptionResponse:
                raise ModbusExceptionResponse(self.port, unit, function, address, count, 2)
            raise err(self.port, unit, function, address, count)
        bank = self.banks.get((unit, function))
        if bank is None:
            raise ModbusTimeout(self.port, unit, function, address, count, "no such unit")
        return [bank.get(a, 0) for a in range(address, address + count)]


VALUES_3P = {
    "voltage_l1": 230.5,
    "voltage_l2": 231.0,
    "voltage_l3": 229.5,
    "current_l1": 16.0,
    "current_l2": 15.5,
    "current_l3": 0.25,
    "power_active_l1": 3600.0,
    "power_active_l2": 3500.0,
    "power_active_l3": 50.0,
    "power_active_total": 7150.0,
    "power_factor_total": 0.98,
    "frequency": 50.0,
    "energy_import_total": 1234.5,
    "energy_export_total": 0.0,
}


def counter() -> Iterator[int]:
    t = 1_700_000_000_000_000_000
    while True:
        yield t
        t += 1_000_000_000


@pytest.fixture
def clock() -> Iterator[int]:
    return counter()


async def test_read_executes_the_plan_once_per_request_and_decodes(clock: Iterator[int]) -> None:
    m = load_map("sdm630")
    bus = FakeBus()
    bus.load(5, m, VALUES_3P)
    meter = Meter("grid", m, 5, bus, clock=lambda: next(clock))
    reading = await meter.read()
    assert bus.calls == [(5, 4, r.address, r.count) for r in meter.plan]
    assert len(bus.calls) == 3
    assert (reading.meter, reading.model, reading.unit_id) == ("grid", "SDM630", 5)
    assert reading.timestamp_ns == 1_700_000_000_000_000_000
    assert reading.ok
    assert reading.get("voltage", "L1").value == 230.5  # type: ignore[union-attr]
    assert reading.get("power_active").value == 7150.0  # type: ignore[union-attr]
    assert reading.get("energy_import").value == 1234.5  # type: ignore[union-attr]
    # Registers the test did not load read as 0.0: plausible, so OK.
    assert reading.get("power_reactive", "L2").value == 0.0  # type: ignore[union-attr]


async def test_plan_is_computed_once_and_reused(clock: Iterator[int]) -> None:
    m = load_map("sdm120")
    bus = FakeBus()
    bus.load(1, m, {"voltage_l1": 229.0, "frequency": 49.9})
    meter = Meter("cp1", m, 1, bus, clock=lambda: next(clock))
    plan = meter.plan
    first, second = await meter.read(), await meter.read()
    assert meter.plan is plan
    assert len(bus.calls) == 2 * len(plan) == 4
    assert second.timestamp_ns - first.timestamp_ns == 1_000_000_000
    assert "requests=2" in repr(meter)


async def test_one_failed_request_does_not_lose_the_others(clock: Iterator[int]) -> None:
    m = load_map("sdm630")
    bus = FakeBus()
    bus.load(1, m, VALUES_3P)
    meter = Meter("grid", m, 1, bus, clock=lambda: next(clock))
    first, second, third = meter.plan.requests
    bus.fail(4, second.address, ModbusTimeout)
    bus.fail(4, third.address, ModbusCrcError)
    reading = await meter.read()
    assert len(bus.calls) == 3  # the later requests still ran
    by_name = {v.name: v for v in reading.values}
    assert all(by_name[v.name].quality is Quality.OK for v in first.values)
    assert all(by_name[v.name].quality is Quality.TIMEOUT for v in second.values)
    assert all(by_name[v.name].quality is Quality.CRC for v in third.values)
    assert by_name["voltage_l3"].value == 229.5
    assert by_name["frequency"].detail.startswith("timeout: port=/dev/fake unit=1 fc=4 addr=0x0034")
    # The failure was transient: the next read is complete again.
    assert (await meter.read()).ok


async def test_exception_response_and_absent_unit(clock: Iterator[int]) -> None:
    m = load_map("abb_b23")
    bus = FakeBus()
    bus.load(2, m, {"voltage_l1": 231.4, "frequency": 50.01, "energy_import_total": 98765.43})
    meter = Meter("site", m, 2, bus, clock=lambda: next(clock))
    assert {r.function for r in meter.plan} == {Function.HOLDING}
    bus.fail(3, 0x5460, ModbusExceptionResponse)
    reading = await meter.read()
    assert reading.get("voltage", "L1").value == 231.4  # type: ignore[union-attr]
    assert reading.get("frequency").value == 50.01  # type: ignore[union-attr]
    assert reading.get("energy_import").value == 98765.43  # type: ignore[union-attr]
    assert reading.get("energy_import", "L1").quality is Quality.EXCEPTION  # type: ignore[union-attr]

    absent = Meter("other", m, 9, bus, clock=lambda: next(clock))
    gone = await absent.read()
    assert {v.quality for v in gone.values} == {Quality.TIMEOUT}
    assert [c[0] for c in bus.calls[-len(absent.plan) :]] == [9] * len(absent.plan)


async def test_little_endian_meter_through_the_bus(clock: Iterator[int]) -> None:
    m = load_map("em340")
    bus = FakeBus()
    values = {**VALUES_3P, "power_factor_l1": -0.5, "current_l1": 63.999}
    bus.load(1, m, values)
    reading = await Meter("em", m, 1, bus, clock=lambda: next(clock)).read()
    assert bus.calls == [(1, 4, 0x0000, 50), (1, 4, 0x0033, 29)]
    for name, x in values.items():
        vd = m.value(name)
        assert reading.get(vd.quantity, vd.phase).value == x, name  # type: ignore[union-attr]


async def test_non_modbus_errors_propagate(clock: Iterator[int]) -> None:
    m = load_map("sdm120")
    bus = FakeBus()
    bus.load(1, m, {})
    bus.fail(4, 0, RuntimeError("bus closed by test"))
    with pytest.raises(RuntimeError, match="bus closed by test"):
        await Meter("cp", m, 1, bus, clock=lambda: next(clock)).read()


async def test_cancellation_propagates() -> None:
    m = load_map("sdm120")

    class Stuck:
        async def read_registers(self, unit: int, function: int, address: int, count: int) -> list[int]:
            await asyncio.Event().wait()
            return []

    task = asyncio.ensure_future(Meter("cp", m, 1, Stuck()).read())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_unit_id_must_be_a_unicast_address() -> None:
    m = load_map("sdm120")
    for bad in (0, 248):
        with pytest.raises(ValueError, match="unit id"):
            Meter("cp", m, bad, FakeBus())


def test_gap_cost_can_be_tuned_per_meter() -> None:
    m = load_map("sdm630")
    assert len(Meter("a", m, 1, FakeBus()).plan) == 3
    # Bridging the 16 unused registers at 0x24..0x33 merges the first two requests (76 <= 80).
    assert len(Meter("b", m, 1, FakeBus(), gap_cost_registers=16).plan) == 2
