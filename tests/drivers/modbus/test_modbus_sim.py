"""The Modbus meter simulator: physics and register space (pure), the RTU slave core (pure), and
its I/O shells: socat pty pair (cleaned up on failure too), baud-rate timing, Modbus TCP."""

from __future__ import annotations

import asyncio
import math
import os
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

from drivers.modbus.codec import append_crc, crc16, decode
from drivers.modbus.regmap import load_map
from drivers.sim.modbus_meter import (
    ChargingProfile,
    Fault,
    ModbusSlaveError,
    Reply,
    RtuRequestFramer,
    SimulatedBus,
    SimulatedMeter,
    SimulatedTcpGateway,
    handle_request,
    rtu_reply_frame,
)



class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _request(unit: int, fc: int, address: int, count: int) -> bytes:
    return append_crc(bytes([unit, fc]) + address.to_bytes(2, "big") + count.to_bytes(2, "big"))


# -- physics ---------------------------------------------------------------------------


def test_charging_profile_idles_ramps_holds_and_ramps_down() -> None:
    p = ChargingProfile(max_current_a=32, idle_s=10, ramp_up_s=10, hold_s=100, ramp_down_s=10)
    assert p.current_at(5) == 0
    assert p.current_at(15) == pytest.approx(16)
    assert p.current_at(50) == 32
    assert p.current_at(125) == pytest.approx(16)
    assert p.current_at(p.period_s + 5) == 0  # sessions repeat


def test_power_is_voltage_times_current_times_power_factor() -> None:
    m = SimulatedMeter(load_map("sdm630"), 1, ChargingProfile(idle_s=0, ramp_up_s=0), seed=3)
    m.read(4, 0, 0x4C)
    t = m.truth()
    for ph in ("l1", "l2", "l3"):
        assert t[f"power_active_{ph}"] == pytest.approx(
            t[f"voltage_{ph}"] * t[f"current_{ph}"] * t[f"power_factor_{ph}"]
        )
        assert t[f"power_apparent_{ph}"] == pytest.approx(t[f"voltage_{ph}"] * t[f"current_{ph}"])
        assert 225 < t[f"voltage_{ph}"] < 235
        assert t[f"current_{ph}"] == pytest.approx(16, rel=0.05)
    assert t["power_active_total"] == pytest.approx(sum(t[f"power_active_{p}"] for p in ("l1", "l2", "l3")))
    assert abs(t["frequency"] - 50) <= 0.02


def test_energy_integrates_power_over_time() -> None:
    clock = FakeClock()
    m = SimulatedMeter(
        load_map("sdm120"),
        1,
        ChargingProfile(max_current_a=10, idle_s=0, ramp_up_s=0, current_noise=0),
        clock=clock,
        voltage_noise_v=0.0,
        energy_import_kwh=100.0,
    )
    m.read(4, 0x46, 6)
    e0 = m.truth()["energy_import_total"]
    clock.t += 3600.0  # one hour at 230 V x 10 A x 0.98
    m.read(4, 0x46, 6)
    assert m.truth()["energy_import_total"] - e0 == pytest.approx(230 * 10 * 0.98 / 1000, rel=1e-9)
    assert e0 == pytest.approx(100.0)


def test_single_phase_map_makes_a_single_phase_meter() -> None:
    assert SimulatedMeter(load_map("sdm120"), 1).phases == ("L1",)
    assert len(SimulatedMeter(load_map("abb_b23"), 1).phases) == 3


def test_registers_decode_back_to_the_truth_for_every_shipped_map() -> None:
    for name in ("sdm630", "sdm120", "abb_b23", "em340"):
        regmap = load_map(name)
        m = SimulatedMeter(regmap, 1, ChargingProfile(idle_s=0, ramp_up_s=0))
        for v in regmap.values:
            regs = m.read(int(v.function), v.register, v.count)
            want = m.truth()[v.name]
            tol = 1e-6 * abs(want) + (abs(v.scale) / 2 if v.type != "float32" else 1e-6)
            assert abs(decode(v, regs) - want) <= tol, (name, v.name)


def test_truth_holds_only_the_values_actually_served() -> None:
    m = SimulatedMeter(load_map("sdm630"), 1)
    m.read(4, 0, 2)
    assert set(m.truth()) == {"voltage_l1"}


def test_unmapped_ranges_answer_illegal_data_address_and_small_gaps_read_zero() -> None:
    m = SimulatedMeter(load_map("sdm630"), 1)
    with pytest.raises(ModbusSlaveError) as err:
        m.read(4, 0x100, 2)
    assert err.value.code == 2
    assert m.read(4, 0x24, 4) == [0, 0, 0, 0]  # between L3 power factor and total power
    with pytest.raises(ModbusSlaveError):
        m.read(4, 0x4A, 0x15A - 0x4A + 2)  # spans a 270-register hole


def test_identify_register_holds_the_model_code() -> None:
    assert SimulatedMeter(load_map("sdm630"), 1).read(3, 0xFC02, 1) == [112]
    assert SimulatedMeter(load_map("sdm120"), 1).read(3, 0xFC02, 1) == [32]
    assert SimulatedMeter(load_map("abb_b23"), 1).read(3, 0x8960, 2) == [0x4232, 0x3320]
    assert SimulatedMeter(load_map("em340"), 1, model_code=341).read(3, 0x000B, 1) == [341]


def test_word_order_fault_reverses_multi_register_values() -> None:
    regmap = load_map("sdm630")
    m = SimulatedMeter(regmap, 1, seed=1)
    clean = m.read(4, 0, 2)
    m.set_fault("word_order")
    m2 = SimulatedMeter(regmap, 1, seed=1)
    m2.set_fault(Fault.WORD_ORDER)
    assert m2.read(4, 0, 2) == clean[::-1]


# -- protocol core ---------------------------------------------------------------------


def test_absent_unit_and_silent_fault_do_not_answer() -> None:
    meters = {1: SimulatedMeter(load_map("sdm120"), 1)}
    assert handle_request(meters, 2, bytes([4, 0, 0, 0, 2])) is None
    meters[1].set_fault("silent")
    assert handle_request(meters, 1, bytes([4, 0, 0, 0, 2])) is None


def test_exception_responses_for_bad_requests_and_injected_exceptions() -> None:
    meters = {1: SimulatedMeter(load_map("sdm120"), 1)}
    assert handle_request(meters, 1, bytes([6, 0, 0, 0, 1])) == Reply(bytes([0x86, 1]))
    assert handle_request(meters, 1, bytes([4, 0, 0, 0, 0])) == Reply(bytes([0x84, 3]))
    assert handle_request(meters, 1, bytes([4, 0, 0, 0, 126])) == Reply(bytes([0x84, 3]))
    assert handle_request(meters, 1, bytes([4, 0x10, 0, 0, 2])) == Reply(bytes([0x84, 2]))
    meters[1].set_fault("exception", exception_code=4)
    assert handle_request(meters, 1, bytes([3, 0xFC, 2, 0, 1])) == Reply(bytes([0x83, 4]))


def test_slow_and_crc_faults_shape_the_reply() -> None:
    meters = {1: SimulatedMeter(load_map("sdm120"), 1)}
    meters[1].set_fault("slow", slow_s=0.7)
    r = handle_request(meters, 1, bytes([4, 0, 0, 0, 2]))
    assert r is not None and r.delay_s == 0.7 and not r.corrupt
    meters[1].set_fault("crc")
    r = handle_request(meters, 1, bytes([4, 0, 0, 0, 2]))
    assert r is not None and r.corrupt
    frame = rtu_reply_frame(1, r)
    assert frame[:3] == bytes([1, 4, 4])  # shape intact ...
    assert crc16(frame[:-2]) != int.from_bytes(frame[-2:], "little")  # ... CRC broken


def test_framer_splits_chunks_and_drops_bad_crc_frames() -> None:
    f = RtuRequestFramer(t35_s=0.005)
    a, b = _request(1, 4, 0, 2), _request(2, 3, 0xFC02, 1)
    assert f.feed(a[:3], 0.0) == []
    assert f.feed(a[3:] + b, 0.001) == [(1, a[1:-2]), (2, b[1:-2])]
    bad = bytearray(_request(3, 4, 0, 2))
    bad[3] ^= 1
    assert f.feed(bytes(bad), 0.002) == []
    assert f.bad_frames >= 1
    assert f.feed(_request(4, 4, 0, 1), 0.003) == [(4, _request(4, 4, 0, 1)[1:-2])]


def test_a_silence_longer_than_t35_ends_a_partial_frame() -> None:
    f = RtuRequestFramer(t35_s=0.005)
    a = _request(1, 4, 0, 2)
    assert f.feed(a[:5], 0.0) == []
    assert f.feed(a, 0.5) == [(1, a[1:-2])]  # the stale half frame was dropped


@given(st.binary(max_size=300))
def test_framer_never_crashes_on_line_noise(noise: bytes) -> None:
    f = RtuRequestFramer(t35_s=0.005)
    for unit, pdu in f.feed(noise, 0.0) + f.feed(_request(9, 4, 0, 1), 0.001):
        assert 0 <= unit <= 255 and pdu


# -- shells ----------------------------------------------------------------------------


async def test_socat_is_stopped_even_when_the_body_raises(tmp_path: Path) -> None:
    sim = SimulatedBus([SimulatedMeter(load_map("sdm120"), 1)], workdir=tmp_path / "l")
    with pytest.raises(RuntimeError, match="boom"):
        async with sim:
            proc = sim._proc
            assert proc is not None and proc.returncode is None
            pgid = os.getpgid(proc.pid)
            raise RuntimeError("boom")
    assert proc.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


async def test_several_units_answer_on_one_pty_with_a_plain_pymodbus_client(tmp_path: Path) -> None:
    sims = [SimulatedMeter(load_map("sdm630"), 1), SimulatedMeter(load_map("em340"), 7)]
    async with SimulatedBus(sims, workdir=tmp_path / "l") as sim:
        client = AsyncModbusSerialClient(sim.port, baudrate=9600, timeout=1, retries=0)
        try:
            assert await client.connect()
            r1 = await client.read_input_registers(0, count=2, device_id=1)
            r7 = await client.read_holding_registers(0x000B, count=1, device_id=7)
            r1e = await client.read_input_registers(0x300, count=2, device_id=1)
        finally:
            client.close()
    v = load_map("sdm630").value("voltage_l1")
    assert decode(v, r1.registers) == pytest.approx(sims[0].truth()["voltage_l1"], rel=1e-6)
    assert r7.registers == [340]
    assert r1e.isError() and r1e.exception_code == 2
    assert [(w.unit, w.function) for w in sim.wire] == [(1, 4), (7, 3), (1, 4)]


async def test_baud_emulation_delays_the_reply_by_its_time_on_the_wire(tmp_path: Path) -> None:
    sims = [SimulatedMeter(load_map("sdm630"), 1)]
    async with SimulatedBus(sims, baud=9600, parity="E", workdir=tmp_path / "l") as sim:
        client = AsyncModbusSerialClient(sim.port, baudrate=9600, timeout=2, retries=0)
        try:
            assert await client.connect()
            durations = []
            for _ in range(5):
                t = time.monotonic()
                await client.read_input_registers(0, count=76, device_id=1)
                durations.append(time.monotonic() - t)
        finally:
            client.close()
    char = 11 / 9600
    expected = (8 + 5 + 2 * 76) * char + 3.5 * char  # request, t3.5, response
    assert min(durations) >= expected * 0.98
    assert sorted(durations)[2] < expected + 0.02


async def test_tcp_gateway_serves_units_and_faults() -> None:
    sims = [SimulatedMeter(load_map("abb_b23"), 3), SimulatedMeter(load_map("sdm120"), 4)]
    async with SimulatedTcpGateway(sims) as gw:
        client = AsyncModbusTcpClient("127.0.0.1", port=gw.port, timeout=0.3, retries=0)
        try:
            assert await client.connect()
            r = await client.read_holding_registers(0x8960, count=2, device_id=3)
            assert r.registers == [0x4232, 0x3320]
            gw.set_fault(4, "exception", exception_code=2)
            e = await client.read_input_registers(0, count=2, device_id=4)
            assert e.isError() and e.exception_code == 2
            gw.set_fault(4, "none")
            ok = await client.read_input_registers(0, count=2, device_id=4)
            v = load_map("sdm120").value("voltage_l1")
            assert math.isclose(decode(v, ok.registers), sims[1].truth()["voltage_l1"], rel_tol=1e-6)
        finally:
            client.close()
    await asyncio.sleep(0)
