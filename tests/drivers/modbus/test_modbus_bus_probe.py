"""Commissioning: ``parse_units`` and ``probe_modbus`` finding and identifying simulated meters over
a pty (and the bus over a Modbus TCP gateway, as the demo uses it)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient

from drivers.modbus.bus import ModbusBus
from drivers.modbus.errors import ModbusTimeout
from drivers.modbus.meter import Meter
from drivers.modbus.probe import ProbeResult, parse_units, probe_modbus
from drivers.modbus.regmap import load_map
from drivers.sim.modbus_meter import SimulatedBus, SimulatedMeter, SimulatedTcpGateway



def test_parse_units_accepts_ranges_and_lists() -> None:
    assert parse_units("1-5,7") == [1, 2, 3, 4, 5, 7]
    assert parse_units(" 7, 3-4 ,3") == [3, 4, 7]
    assert parse_units("1-247") == list(range(1, 248))
    assert parse_units("12") == [12]


@pytest.mark.parametrize("bad", ["", "0", "248", "1-300", "5-3", "a", "1,,2", "1-", "-3"])
def test_parse_units_rejects_what_is_not_a_unit_list(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_units(bad)


async def test_probe_finds_every_unit_and_identifies_each_model(tmp_path: Path) -> None:
    placed = {2: "sdm630", 5: "sdm120", 9: "abb_b23", 11: "em340"}
    sims = [SimulatedMeter(load_map(name), unit) for unit, name in placed.items()]
    sims.append(SimulatedMeter(load_map("sdm630"), 12, model_code=121))  # the MCT variant
    async with SimulatedBus(sims, workdir=tmp_path / "l") as sim:
        async with ModbusBus.serial(sim.port, 9600, timeout_s=0.3, retries=2) as bus:
            started = time.monotonic()
            results = await probe_modbus(bus, parse_units("1-12"), timeout_s=0.05)
            elapsed = time.monotonic() - started
            # The bus keeps its own defaults after the probe.
            assert (bus.timeout_s, bus.retries) == (0.3, 2)
    assert [r.unit for r in results] == list(range(1, 13))
    found = {r.unit: r.model for r in results if r.responding}
    assert found == {**placed, 12: "sdm630"}
    for r in results:
        if not r.responding:
            assert r.model is None and "no reply" in r.detail
    assert "Eastron SDM630" in next(r.detail for r in results if r.unit == 12)
    # An absent unit costs one short timeout, no retries: 7 absent units ~ 7 x 50 ms.
    assert elapsed < 7 * 0.05 + 1.0


async def test_probe_reports_a_responding_unit_it_cannot_identify(tmp_path: Path) -> None:
    sims = [SimulatedMeter(load_map("sdm630"), 1), SimulatedMeter(load_map("sdm120"), 2)]
    async with SimulatedBus(sims, workdir=tmp_path / "l") as sim, ModbusBus.serial(sim.port, 9600) as bus:
        # Only the ABB map is a candidate: the SDM630 answers (exceptions), is not an ABB.
        only_abb = await probe_modbus(bus, [1], timeout_s=0.05, maps=["abb_b23"])
        # A meter that answers every request with an exception: alive, not identified.
        sim.meter(2).set_fault("exception", exception_code=2)
        dead_ident = await probe_modbus(bus, [2], timeout_s=0.05, maps=["sdm120"])
    assert (
        only_abb == [ProbeResult(1, True, None, only_abb[0].detail)] and "exception 2" in only_abb[0].detail
    )
    assert dead_ident[0].responding and dead_ident[0].model is None


async def test_probe_guesses_the_model_from_plausible_registers(tmp_path: Path) -> None:
    # An SDM630 with an unknown meter code: identify does not match, its registers decode as a
    # plausible SDM630.
    sims = [SimulatedMeter(load_map("sdm630"), 1, model_code=999)]
    async with SimulatedBus(sims, workdir=tmp_path / "l") as sim, ModbusBus.serial(sim.port, 9600) as bus:
        [r] = await probe_modbus(bus, [1], timeout_s=0.05)
    assert r.responding and r.model in ("sdm630", "sdm120")
    assert r.detail.startswith("guess:") and "= 999" in r.detail


async def test_bus_over_a_modbus_tcp_gateway_reads_meters_and_isolates_a_dead_one() -> None:
    sims = [SimulatedMeter(load_map("sdm630"), 1), SimulatedMeter(load_map("em340"), 2)]
    async with SimulatedTcpGateway(sims) as gw:
        client = AsyncModbusTcpClient("127.0.0.1", port=gw.port, timeout=2, retries=3)
        bus = ModbusBus(client, timeout_s=0.1, retries=1)
        try:
            await bus.open()
            assert bus.gap_s == 0 and bus.name == f"127.0.0.1:{gw.port}"
            m1 = Meter("a", load_map("sdm630"), 1, bus)
            m2 = Meter("b", load_map("em340"), 2, bus)
            gw.set_fault(2, "silent")
            for _ in range(6):  # more than pymodbus's retries + 3 unanswered requests
                bus.cycle_begin()
                r1, r2 = await m1.read(), await m2.read()
                bus.cycle_end()
                assert r1.ok and not r2.ok
            assert client.connected  # a dead unit did not get the shared connection closed
            with pytest.raises(ModbusTimeout):
                await bus.read_registers(2, 4, 0, 2)
            results = await probe_modbus(bus, [1, 2, 3], timeout_s=0.05)
        finally:
            bus.close()
    assert [(r.unit, r.responding, r.model) for r in results] == [
        (1, True, "sdm630"),
        (2, False, None),
        (3, False, None),
    ]
