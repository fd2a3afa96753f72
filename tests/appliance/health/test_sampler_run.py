"""Sampler against a real SimulatedBus (pty) and SimulatedSMBus: cadence and per-device isolation."""

from __future__ import annotations

import asyncio
from pathlib import Path

from appliance.health.sampler import Sample, Sampler
from drivers.i2c import I2cBus, Sht3x
from drivers.modbus.bus import ModbusBus
from drivers.modbus.meter import Meter
from drivers.modbus.regmap import load_map
from drivers.sim.i2c import SimulatedSht3x, SimulatedSMBus
from drivers.sim.modbus_meter import ChargingProfile, SimulatedBus, SimulatedMeter

STEADY = ChargingProfile(max_current_a=16.0, idle_s=0, ramp_up_s=0)


async def test_one_hz_cadence_and_faulty_devices_only_cost_their_own_values(tmp_path: Path) -> None:
    sim = SimulatedBus(
        [SimulatedMeter(load_map("sdm630"), 1, STEADY), SimulatedMeter(load_map("sdm120"), 2, STEADY)],
        workdir=tmp_path / "line",
    )
    await sim.start()
    bus = ModbusBus.serial(sim.port, 9600, timeout_s=0.15, retries=1)
    await bus.open()
    try:
        smbus = SimulatedSMBus({0x44: SimulatedSht3x(), 0x45: SimulatedSht3x()})
        i2c = I2cBus(lambda: smbus, 1)
        good, bad = Sht3x(i2c, 0x44, name="cab_top"), Sht3x(i2c, 0x45, name="cab_bottom")
        smbus.devices[0x45].corrupt_crc(None)
        sim.set_fault(2, "silent")
        meters = [Meter("main", load_map("sdm630"), 1, bus), Meter("cp2", load_map("sdm120"), 2, bus)]
        samples: list[Sample] = []
        stop = asyncio.Event()

        def on_sample(s: Sample) -> None:
            samples.append(s)
            if len(samples) == 5:
                stop.set()

        sampler = Sampler(meters, [good, bad], lambda: {"uptime_s": 1.0}, on_sample=on_sample)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.wait_for(sampler.run(stop), 10)
        elapsed = loop.time() - t0
    finally:
        bus.close()
        await sim.stop()

    assert [s.seq for s in samples] == [0, 1, 2, 3, 4]
    assert 3.9 < elapsed < 5.0  # ticks at 0,1,2,3,4 s
    st = sampler.stats()
    assert st["skipped"] == 0 and st["jitter_ms"]["p99"] < 100
    for s in samples:
        p = s.to_payload()
        assert p["schema"] == 1 and p["gateway"] == {"uptime_s": 1.0}
        main, cp2 = p["meters"]
        assert main["values"]["voltage_L1"]["q"] == "ok" and 200 < main["values"]["voltage_L1"]["v"] < 260
        assert all(v["q"] == "timeout" and v["reason"] for v in cp2["values"].values())
        top, bottom = p["sensors"]
        assert top["q"] == "ok" and top["temperature_c"] is not None and top["dew_point_c"] is not None
        assert bottom["q"] == "crc" and bottom["temperature_c"] is None and "retry" in bottom["reason"]
    assert bus.stats.cycles == 5


class HangingSensor:
    name = "hung"
    model = "SHT3x"
    address = 0x44

    async def read(self):  # type: ignore[no-untyped-def]
        await asyncio.sleep(10)


async def test_device_timeout_becomes_missing_with_reason() -> None:
    sampler = Sampler([], [HangingSensor()], None, on_sample=lambda s: None, device_timeout_s=0.05)
    s = await sampler.sample_once(7)
    assert s.sensors[0]["q"] == "timeout" and "0.05" in s.sensors[0]["reason"]
    s2 = await sampler.sample_once(8)
    assert s2.sensors[0]["reason"] == "previous read still running"
    assert sampler.device_failures == {"hung": 2}
