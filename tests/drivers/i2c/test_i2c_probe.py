"""``probe_i2c``: lists responding addresses and identifies SHT3x, SHT4x, BME280/BMP280 on the fake bus."""

from __future__ import annotations

import errno

import pytest

from drivers.i2c import ProbeResult, probe_i2c
from drivers.sim.i2c import (
    ManualClock,
    SimulatedBme280,
    SimulatedI2cDevice,
    SimulatedSht3x,
    SimulatedSht4x,
    SimulatedSMBus,
)


class Eeprom(SimulatedI2cDevice):
    """Some other chip (a 24C02 EEPROM): answers reads, knows nothing of climate."""

    chip = "24C02"

    def __init__(self) -> None:
        super().__init__()
        self.mem = bytearray(range(256))
        self.ptr = 0

    def write(self, data: bytes) -> None:
        if data:
            self.ptr = data[0]

    def read(self, length: int) -> bytes:
        out = bytes(self.mem[(self.ptr + i) & 0xFF] for i in range(length))
        self.ptr = (self.ptr + length) & 0xFF
        return out

    def set_climate(
        self, temperature_c: float, humidity_rh: float, pressure_hpa: float | None = None
    ) -> None:
        pass


class SpyBus(SimulatedSMBus):
    """Records which presence test the probe used per address; ``busy`` addresses answer EBUSY."""

    def __init__(self, *a: object, busy: tuple[int, ...] = (), **kw: object) -> None:
        super().__init__(*a, **kw)  # type: ignore[arg-type]
        self.calls: list[tuple[str, int]] = []
        self.busy = busy

    def write_quick(self, i2c_addr: int, force: bool | None = None) -> None:
        self.calls.append(("write_quick", i2c_addr))
        if i2c_addr in self.busy:
            raise OSError(errno.EBUSY, "Device or resource busy")
        super().write_quick(i2c_addr)

    def read_byte(self, i2c_addr: int, force: bool | None = None) -> int:
        self.calls.append(("read_byte", i2c_addr))
        return super().read_byte(i2c_addr)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def test_probe_lists_and_identifies_every_chip(clock: ManualClock) -> None:
    sim = SimulatedSMBus(
        {
            0x44: SimulatedSht3x(serial=0x11223344, clock=clock.monotonic),
            0x45: SimulatedSht4x(serial=0x55667788, clock=clock.monotonic),
            0x50: Eeprom(),
            0x76: SimulatedBme280(clock=clock.monotonic),
            0x77: SimulatedBme280(chip_id=0x58, clock=clock.monotonic),
        }
    )
    results = probe_i2c(sim, sleep=clock.sleep)
    assert results == [
        ProbeResult(0x44, "SHT3x", "serial 0x11223344 status 0x8010"),
        ProbeResult(0x45, "SHT4x", "serial 0x55667788"),
        ProbeResult(0x50, None, None),
        ProbeResult(0x76, "BME280", "chip id 0x60"),
        ProbeResult(0x77, "BMP280", "chip id 0x58"),
    ]
    assert str(results[0]) == "0x44  SHT3x  serial 0x11223344 status 0x8010"
    assert str(results[2]) == "0x50  -"


def test_probe_tells_an_sht4x_at_0x44_from_an_sht3x(clock: ManualClock) -> None:
    sim = SimulatedSMBus({0x44: SimulatedSht4x(serial=0xABCD0001, clock=clock.monotonic)})
    assert probe_i2c(sim, sleep=clock.sleep) == [ProbeResult(0x44, "SHT4x", "serial 0xabcd0001")]


def test_probe_finds_an_sht4x_c_variant_at_0x46(clock: ManualClock) -> None:
    sim = SimulatedSMBus({0x46: SimulatedSht4x(clock=clock.monotonic)})
    [result] = probe_i2c(sim, sleep=clock.sleep)
    assert (result.address, result.chip) == (0x46, "SHT4x")


def test_probe_skips_missing_and_nacking_devices(clock: ManualClock) -> None:
    dead = SimulatedSht3x(clock=clock.monotonic)
    dead.nack = True
    sim = SimulatedSMBus({0x44: dead})
    assert probe_i2c(sim, sleep=clock.sleep) == []


def test_probe_uses_read_byte_where_i2cdetect_does_and_quick_write_elsewhere(
    clock: ManualClock,
) -> None:
    sim = SpyBus({0x50: Eeprom()})
    probe_i2c(sim, addresses=[0x30, 0x44, 0x50, 0x5F, 0x60], sleep=clock.sleep)
    assert sim.calls == [
        ("read_byte", 0x30),
        ("write_quick", 0x44),
        ("read_byte", 0x50),
        ("read_byte", 0x5F),
        ("write_quick", 0x60),
    ]


def test_probe_scans_only_the_given_addresses_in_order(clock: ManualClock) -> None:
    sim = SimulatedSMBus(
        {0x44: SimulatedSht3x(clock=clock.monotonic), 0x76: SimulatedBme280(clock=clock.monotonic)}
    )
    assert [r.address for r in probe_i2c(sim, addresses=[0x76, 0x10, 0x76], sleep=clock.sleep)] == [
        0x76
    ]


def test_probe_reports_addresses_held_by_a_kernel_driver(clock: ManualClock) -> None:
    sim = SpyBus({}, busy=(0x68,))
    assert probe_i2c(sim, addresses=[0x68], sleep=clock.sleep) == [
        ProbeResult(0x68, None, "in use by a kernel driver")
    ]


def test_probe_lets_a_real_adapter_failure_surface(clock: ManualClock) -> None:
    class BrokenBus(SimulatedSMBus):
        def write_quick(self, i2c_addr: int, force: bool | None = None) -> None:
            raise OSError(errno.ETIMEDOUT, "Connection timed out")

    with pytest.raises(OSError):
        probe_i2c(BrokenBus(), addresses=[0x44], sleep=clock.sleep)
