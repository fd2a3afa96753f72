"""``omgw probe modbus|i2c``: field commissioning against the simulated devices."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from drivers.modbus.regmap import load_map
from drivers.sim.modbus_meter import SimulatedBus, SimulatedMeter

OMGW = [sys.executable, "-m", "appliance.cli"]


async def _omgw(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*OMGW, *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode()


async def test_probe_modbus_finds_units_and_models_on_a_pty(tmp_path: Path) -> None:
    sims = [SimulatedMeter(load_map("sdm630"), 1), SimulatedMeter(load_map("em340"), 3)]
    async with SimulatedBus(sims, workdir=tmp_path / "line") as sim:
        rc, out = await _omgw("probe", "modbus", "--port", sim.port, "--units", "1-4", "--timeout", "0.1", "--json")
    assert rc == 0, out
    found = {r["unit"]: r["model"] for r in json.loads(out)}
    assert found == {1: "sdm630", 3: "em340"}


async def test_probe_modbus_nothing_answering_exits_1(tmp_path: Path) -> None:
    async with SimulatedBus([SimulatedMeter(load_map("sdm120"), 9)], workdir=tmp_path / "line") as sim:
        rc, out = await _omgw("probe", "modbus", "--port", sim.port, "--units", "1-2", "--timeout", "0.05")
    assert rc == 1 and "0 unit(s) answering of 2 probed" in out


async def test_probe_modbus_bad_unit_list_is_a_usage_error() -> None:
    rc, out = await _omgw("probe", "modbus", "--port", "/dev/null", "--units", "0-300")
    assert rc == 2 and "unit" in out


async def test_probe_i2c_lists_and_identifies_the_simulated_bench() -> None:
    rc, out = await _omgw("probe", "i2c", "--bus", "sim", "--json")
    assert rc == 0, out
    chips = {r["address"]: r["chip"] for r in json.loads(out)}
    assert chips == {0x44: "SHT3x", 0x45: "SHT4x", 0x76: "BME280"}


async def test_probe_i2c_missing_adapter_is_a_clear_error() -> None:
    rc, out = await _omgw("probe", "i2c", "--bus", "97")
    assert rc == 1 and "cannot open bus 97" in out
