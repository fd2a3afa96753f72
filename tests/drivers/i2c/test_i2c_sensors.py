"""SHT3x, SHT4x and BME280 drivers against the simulated chips: values, identity, faults, threads."""

from __future__ import annotations

import asyncio
import errno
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from smbus2 import i2c_msg

from drivers.i2c import (
    Bme280,
    I2cBus,
    I2cBusError,
    I2cDeviceMissing,
    I2cWrongChip,
    Oversampling,
    Quality,
    Sht3x,
    Sht4x,
)
from drivers.i2c.sensirion import encode_words
from drivers.sim.i2c import (
    ManualClock,
    SimulatedBme280,
    SimulatedI2cDevice,
    SimulatedSht3x,
    SimulatedSht4x,
    SimulatedSMBus,
)

SHT_T_LSB = 175 / 65535
SHT3X_RH_LSB = 100 / 65535
SHT4X_RH_LSB = 125 / 65535


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def rig(
    clock: ManualClock, devices: dict[int, SimulatedI2cDevice], number: int = 1, **bus: Any
) -> tuple[SimulatedSMBus, I2cBus, dict[str, Any]]:
    """A simulated bus, the I2cBus over it, and driver options that share the manual clock."""
    sim = SimulatedSMBus(devices, bus=number, **bus)
    return sim, I2cBus(lambda: sim, number), {"sleep": clock.sleep, "clock_ns": clock.time_ns}


# --------------------------------------------------------------------------------------------------
# Values match ground truth within the sensor's resolution


@pytest.mark.parametrize(
    ("t", "rh"), [(22.0, 45.0), (-39.5, 5.0), (85.0, 95.5), (0.0, 0.0), (124.0, 100.0)]
)
def test_sht3x_reading_matches_ground_truth_within_resolution(
    clock: ManualClock, t: float, rh: float
) -> None:
    chip = SimulatedSht3x(temperature_c=t, humidity_rh=rh, clock=clock.monotonic)
    _, bus, opts = rig(clock, {0x44: chip})
    reading = Sht3x(bus, 0x44, name="cabinet", **opts).measure()
    assert reading.quality is Quality.OK, reading.detail
    assert (reading.sensor, reading.model, reading.address) == ("cabinet", "SHT3x", 0x44)
    assert reading.temperature_c == pytest.approx(
        t, abs=3 * SHT_T_LSB
    )  # noise +-2 LSB, rounding 0.5
    assert reading.humidity_rh == pytest.approx(rh, abs=3 * SHT3X_RH_LSB)
    assert reading.pressure_hpa is None
    assert reading.timestamp_ns == clock.time_ns()


@pytest.mark.parametrize(("t", "rh"), [(22.0, 45.0), (-20.0, 12.5), (60.0, 80.0)])
def test_sht4x_reading_matches_ground_truth_within_resolution(
    clock: ManualClock, t: float, rh: float
) -> None:
    chip = SimulatedSht4x(temperature_c=t, humidity_rh=rh, clock=clock.monotonic)
    _, bus, opts = rig(clock, {0x44: chip})
    reading = Sht4x(bus, **opts).measure()
    assert reading.ok, reading.detail
    assert reading.temperature_c == pytest.approx(t, abs=3 * SHT_T_LSB)
    assert reading.humidity_rh == pytest.approx(rh, abs=3 * SHT4X_RH_LSB)


def test_sht4x_crops_humidity_above_100_percent(clock: ManualClock) -> None:
    chip = SimulatedSht4x(
        temperature_c=5.0, humidity_rh=104.0, clock=clock.monotonic
    )  # condensation
    _, bus, opts = rig(clock, {0x44: chip})
    assert Sht4x(bus, **opts).measure().humidity_rh == 100.0


@pytest.mark.parametrize(
    ("t", "rh", "p"),
    [
        (22.0, 45.0, 1013.25),
        (-20.0, 80.0, 1040.0),
        (60.0, 10.0, 850.0),
        (25.0, 99.0, 700.0),
        (0.5, 50.0, 990.0),
    ],
)
def test_bme280_reading_matches_ground_truth_within_resolution(
    clock: ManualClock, t: float, rh: float, p: float
) -> None:
    chip = SimulatedBme280(temperature_c=t, humidity_rh=rh, pressure_hpa=p, clock=clock.monotonic)
    _, bus, opts = rig(clock, {0x76: chip})
    reading = Bme280(bus, **opts).measure()
    assert reading.ok, reading.detail
    # x1 oversampling: T 16 bit (0.005 °C) reported in 0.01 °C; P 16 bit (2.6 Pa); H in 1/1024 %RH.
    assert reading.temperature_c == pytest.approx(t, abs=0.02)
    assert reading.pressure_hpa == pytest.approx(p, abs=0.1)
    assert reading.humidity_rh == pytest.approx(rh, abs=0.05)


def test_bme280_with_x16_oversampling_waits_longer_and_still_matches(clock: ManualClock) -> None:
    chip = SimulatedBme280(
        temperature_c=31.7, humidity_rh=62.0, pressure_hpa=1001.3, clock=clock.monotonic
    )
    _, bus, opts = rig(clock, {0x77: chip})
    sensor = Bme280(
        bus, 0x77, osrs_t=Oversampling.X16, osrs_p=Oversampling.X16, osrs_h=Oversampling.X16, **opts
    )
    assert sensor.measurement_delay_s == pytest.approx(0.1128)
    reading = sensor.measure()
    assert reading.ok
    assert reading.temperature_c == pytest.approx(31.7, abs=0.02)
    assert reading.pressure_hpa == pytest.approx(1001.3, abs=0.05)


def test_bme280_runs_one_forced_measurement_and_the_chip_returns_to_sleep(
    clock: ManualClock,
) -> None:
    chip = SimulatedBme280(clock=clock.monotonic)
    sim, bus, opts = rig(clock, {0x76: chip})
    Bme280(bus, **opts).measure()
    # ctrl_meas = osrs_t x1 << 5 | osrs_p x1 << 2 | forced (01) = 0x25
    assert (0x76, "w", bytes([0xF4, 0x25])) in sim.traffic
    assert (0x76, "w", bytes([0xF2, 0x01])) in sim.traffic  # ctrl_hum written before ctrl_meas
    assert chip.mode == 0 and chip.measurements == 1


def test_readings_follow_a_changing_ground_truth(clock: ManualClock) -> None:
    chip = SimulatedSht3x(clock=clock.monotonic)
    _, bus, opts = rig(clock, {0x44: chip})
    sensor = Sht3x(bus, **opts)
    chip.set_climate(30.0, 70.0)
    first = sensor.measure()
    chip.set_climate(10.0, 20.0)
    second = sensor.measure()
    assert first.temperature_c == pytest.approx(30.0, abs=0.01)
    assert second.temperature_c == pytest.approx(10.0, abs=0.01)
    assert second.humidity_rh == pytest.approx(20.0, abs=0.01)


# --------------------------------------------------------------------------------------------------
# Identity


def test_identity_reads_serial_numbers_and_chip_id(clock: ManualClock) -> None:
    _, bus, opts = rig(
        clock,
        {
            0x44: SimulatedSht3x(serial=0xDEADBEEF, clock=clock.monotonic),
            0x45: SimulatedSht4x(serial=0x01020304, clock=clock.monotonic),
            0x76: SimulatedBme280(clock=clock.monotonic),
        },
    )
    sht3 = Sht3x(bus, 0x44, **opts)
    assert sht3.read_serial() == 0xDEADBEEF
    assert sht3.identify() == "SHT3x serial 0xdeadbeef"
    assert sht3.read_status() & 0x0010  # "system reset detected" after power-up
    assert Sht4x(bus, 0x45, **opts).identify() == "SHT4x serial 0x01020304"
    bme = Bme280(bus, 0x76, **opts)
    assert bme.read_chip_id() == 0x60
    assert bme.identify() == "BME280 chip id 0x60"


def test_bme280_driver_refuses_a_bmp280(clock: ManualClock) -> None:
    _, bus, opts = rig(clock, {0x76: SimulatedBme280(chip_id=0x58, clock=clock.monotonic)})
    with pytest.raises(
        I2cWrongChip, match=r"bus 1 address 0x76: chip id 0x58 \(BMP280\), expected 0x60"
    ):
        Bme280(bus, **opts).measure()


# --------------------------------------------------------------------------------------------------
# Faults: CRC, missing, stuck, soft reset


def test_crc_error_once_is_retried_and_the_reading_is_ok(clock: ManualClock) -> None:
    chip = SimulatedSht3x(temperature_c=21.0, clock=clock.monotonic)
    _, bus, opts = rig(clock, {0x44: chip})
    sensor = Sht3x(bus, **opts)
    chip.corrupt_crc(1)
    reading = sensor.measure()
    assert reading.ok
    assert reading.temperature_c == pytest.approx(21.0, abs=0.01)
    assert chip.measurements == 2  # the corrupted one and the retry
    assert sensor.consecutive_failures == 0


@pytest.mark.parametrize(("model", "driver"), [(SimulatedSht3x, Sht3x), (SimulatedSht4x, Sht4x)])
def test_crc_error_always_gives_a_bad_reading_after_one_retry(
    clock: ManualClock, model: Callable[..., SimulatedI2cDevice], driver: Callable[..., Any]
) -> None:
    chip = model(clock=clock.monotonic)
    _, bus, opts = rig(clock, {0x44: chip})
    chip.corrupt_crc(None)  # type: ignore[attr-defined]
    reading = driver(bus, **opts).measure()
    assert reading.quality is Quality.CRC
    assert (reading.temperature_c, reading.humidity_rh) == (None, None)
    assert "CRC mismatch in word 0" in reading.detail and "after 1 retry" in reading.detail
    assert chip.measurements == 2


def test_missing_device_raises_an_error_naming_bus_address_and_chip(clock: ManualClock) -> None:
    _, bus, opts = rig(clock, {}, number=3)
    sensor = Sht3x(bus, 0x45, name="inlet", **opts)
    with pytest.raises(I2cDeviceMissing) as exc:
        sensor.measure()
    assert str(exc.value) == "bus 3 address 0x45: no ACK on command 0x2400 (SHT3x)"
    assert (exc.value.bus, exc.value.address, exc.value.chip) == (3, 0x45, "SHT3x")
    assert isinstance(exc.value.__cause__, OSError) and exc.value.__cause__.errno == errno.EREMOTEIO
    missing = sensor.missing_reading(exc.value)
    assert missing.quality is Quality.MISSING and missing.sensor == "inlet"
    assert missing.detail == str(exc.value)


def test_enxio_from_the_adapter_also_means_missing(clock: ManualClock) -> None:
    chip = SimulatedBme280(clock=clock.monotonic)
    chip.nack = True
    _, bus, opts = rig(clock, {0x76: chip}, nack_errno=errno.ENXIO)
    with pytest.raises(
        I2cDeviceMissing, match=r"^bus 1 address 0x76: no ACK on read 0xd0 \(BME280\)$"
    ):
        Bme280(bus, **opts).measure()


def test_a_missing_adapter_is_a_bus_error_naming_bus_and_address(clock: ManualClock) -> None:
    def no_adapter() -> SimulatedSMBus:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/dev/i2c-7")

    with pytest.raises(I2cBusError, match=r"^bus 7 address 0x44: .*ENOENT.* \(SHT4x\)$"):
        Sht4x(I2cBus(no_adapter, 7), sleep=clock.sleep).measure()


def test_a_read_before_the_measurement_is_done_is_nacked_like_the_real_chip(
    clock: ManualClock,
) -> None:
    # The simulated SHT3x NACKs its read header while measuring (12.5 ms typ); a driver that did
    # not wait would see that. Here the driver's sleep does not advance the chip's clock.
    _, bus, _ = rig(clock, {0x44: SimulatedSht3x(clock=clock.monotonic)})
    sensor = Sht3x(bus, sleep=lambda s: None, clock_ns=clock.time_ns)
    with pytest.raises(I2cDeviceMissing, match="no ACK on read"):
        sensor.measure()


def test_stuck_sensor_is_detected_after_n_identical_raw_values(clock: ManualClock) -> None:
    chip = SimulatedSht3x(clock=clock.monotonic)
    _, bus, opts = rig(clock, {0x44: chip})
    sensor = Sht3x(bus, stuck_after=4, reset_after=100, **opts)
    assert sensor.measure().ok
    chip.stick()
    qualities = [sensor.measure().quality for _ in range(5)]
    assert qualities == [Quality.OK] * 3 + [Quality.STUCK] * 2
    stuck = sensor.measure()
    assert stuck.temperature_c is not None  # values kept, flagged
    assert "unchanged for 6 readings" in stuck.detail


def test_stuck_bme280_is_detected(clock: ManualClock) -> None:
    chip = SimulatedBme280(clock=clock.monotonic)
    _, bus, opts = rig(clock, {0x76: chip})
    sensor = Bme280(bus, stuck_after=3, **opts)
    chip.stick()
    assert [sensor.measure().quality for _ in range(3)] == [Quality.OK, Quality.OK, Quality.STUCK]


def test_healthy_noisy_sensor_is_never_flagged_stuck(clock: ManualClock) -> None:
    _, bus, opts = rig(clock, {0x44: SimulatedSht4x(clock=clock.monotonic)})
    sensor = Sht4x(bus, stuck_after=5, **opts)
    assert all(sensor.measure().ok for _ in range(200))


def test_soft_reset_after_three_failed_readings_in_a_row(clock: ManualClock) -> None:
    chip = SimulatedSht3x(clock=clock.monotonic)
    _, bus, opts = rig(clock, {0x44: chip})
    sensor = Sht3x(bus, **opts)  # reset_after=3 by default
    chip.corrupt_crc(None)
    sensor.measure()
    sensor.measure()
    assert chip.soft_resets == 0
    sensor.measure()
    assert chip.soft_resets == 1 and sensor.soft_resets == 1
    for _ in range(3):
        sensor.measure()
    assert chip.soft_resets == 2  # again after each further 3 failures
    chip.clear_faults()
    assert sensor.measure().ok
    assert sensor.consecutive_failures == 0


def test_soft_reset_cures_a_hung_sensor(clock: ManualClock) -> None:
    chip = SimulatedSht4x(clock=clock.monotonic)
    _, bus, opts = rig(clock, {0x44: chip})
    sensor = Sht4x(bus, stuck_after=2, reset_after=2, **opts)
    chip.stick(clears_on_reset=True)
    qualities = [sensor.measure().quality for _ in range(4)]
    # ok (1st frozen value), stuck, stuck -> soft reset -> fresh values again
    assert qualities == [Quality.OK, Quality.STUCK, Quality.STUCK, Quality.OK]
    assert chip.soft_resets == 1


def test_soft_reset_of_a_missing_device_is_counted_not_raised(clock: ManualClock) -> None:
    chip = SimulatedSht3x(clock=clock.monotonic)
    chip.nack = True
    _, bus, opts = rig(clock, {0x44: chip})
    sensor = Sht3x(bus, **opts)
    for _ in range(3):
        with pytest.raises(I2cDeviceMissing):
            sensor.measure()
    assert sensor.consecutive_failures == 3
    assert sensor.failed_resets == 1 and sensor.soft_resets == 0
    assert sensor.last_reset_error == "bus 1 address 0x44: no ACK on command 0x30a2 (SHT3x)"


def test_bme280_soft_reset_restores_registers_and_the_driver_reconfigures(
    clock: ManualClock,
) -> None:
    chip = SimulatedBme280(humidity_rh=55.0, clock=clock.monotonic)
    _, bus, opts = rig(clock, {0x76: chip})
    sensor = Bme280(bus, **opts)
    assert sensor.measure().ok
    sensor.soft_reset()
    assert chip.soft_resets == 1 and chip.regs[0xF2] == 0  # ctrl_hum back to its reset value
    reading = sensor.measure()
    assert reading.ok, reading.detail
    assert reading.humidity_rh == pytest.approx(55.0, abs=0.05)


def test_sht3x_soft_reset_sets_the_reset_detected_status_bit(clock: ManualClock) -> None:
    chip = SimulatedSht3x(clock=clock.monotonic)
    _, bus, opts = rig(clock, {0x44: chip})
    sensor = Sht3x(bus, **opts)
    chip.status = 0
    sensor.soft_reset()
    assert sensor.read_status() & 0x0010


def test_out_of_range_temperature_is_flagged_but_kept(clock: ManualClock) -> None:
    chip = SimulatedSht3x(temperature_c=128.0, clock=clock.monotonic)
    _, bus, opts = rig(clock, {0x44: chip})
    reading = Sht3x(bus, **opts).measure()
    assert reading.quality is Quality.OUT_OF_RANGE
    assert reading.temperature_c == pytest.approx(128.0, abs=0.01)
    assert "outside -40..125 °C" in reading.detail


# --------------------------------------------------------------------------------------------------
# The simulated bus speaks smbus2


def test_simulated_bus_requires_real_i2c_msg_objects(clock: ManualClock) -> None:
    sim, _, _ = rig(clock, {0x45: SimulatedSht4x(serial=0xCAFEF00D, clock=clock.monotonic)})
    sim.i2c_rdwr(i2c_msg.write(0x45, [0x89]))
    msg = i2c_msg.read(0x45, 6)
    sim.i2c_rdwr(msg)
    assert bytes(msg) == encode_words([0xCAFE, 0xF00D])
    with pytest.raises(TypeError):
        sim.i2c_rdwr(b"\x89")  # type: ignore[arg-type]


def test_simulated_sht3x_nacks_unknown_commands_and_flags_the_status(clock: ManualClock) -> None:
    chip = SimulatedSht3x(clock=clock.monotonic)
    sim, _, _ = rig(clock, {0x44: chip})
    with pytest.raises(OSError) as exc:
        sim.i2c_rdwr(i2c_msg.write(0x44, [0x12, 0x34]))
    assert exc.value.errno == errno.EREMOTEIO
    assert chip.status & 0x0002


def test_simulated_bus_closes_like_smbus(clock: ManualClock) -> None:
    with SimulatedSMBus({0x44: SimulatedSht3x(clock=clock.monotonic)}) as sim:
        sim.write_quick(0x44)
    with pytest.raises(OSError) as exc:
        sim.write_quick(0x44)
    assert exc.value.errno == errno.EBADF


def test_i2c_bus_opens_lazily_once_and_closes(clock: ManualClock) -> None:
    opened: list[SimulatedSMBus] = []

    def factory() -> SimulatedSMBus:
        opened.append(SimulatedSMBus({0x44: SimulatedSht3x(clock=clock.monotonic)}))
        return opened[-1]

    bus = I2cBus(factory, 1)
    assert opened == []
    sensor = Sht3x(bus, sleep=clock.sleep)
    sensor.measure()
    sensor.measure()
    assert len(opened) == 1
    bus.close()
    assert opened[0].closed


# --------------------------------------------------------------------------------------------------
# Threads and asyncio


class OverlapDetectingSMBus(SimulatedSMBus):
    """Fails a test if two threads are inside the bus at once (what the I2cBus lock prevents)."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.inside = 0
        self.overlaps = 0
        self._count_lock = threading.Lock()

    def _enter(self) -> None:
        with self._count_lock:
            self.inside += 1
            if self.inside > 1:
                self.overlaps += 1
        time.sleep(0.0002)  # widen the window

    def _leave(self) -> None:
        with self._count_lock:
            self.inside -= 1

    def i2c_rdwr(self, *msgs: i2c_msg) -> None:
        self._enter()
        try:
            super().i2c_rdwr(*msgs)
        finally:
            self._leave()

    def read_byte_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int:
        self._enter()
        try:
            return super().read_byte_data(i2c_addr, register)
        finally:
            self._leave()


async def test_async_reads_of_three_sensors_share_one_bus_without_overlapping_transactions() -> (
    None
):
    sim = OverlapDetectingSMBus(
        {0x44: SimulatedSht3x(), 0x45: SimulatedSht4x(), 0x76: SimulatedBme280(pressure_hpa=960.0)}
    )
    bus = I2cBus(lambda: sim, 1)
    sensors = [Sht3x(bus, 0x44), Sht4x(bus, 0x45), Bme280(bus, 0x76)]
    for _ in range(5):
        readings = await asyncio.gather(*(s.read() for s in sensors))
        assert [r.quality for r in readings] == [Quality.OK] * 3
    assert readings[2].pressure_hpa == pytest.approx(960.0, abs=0.1)
    assert sim.overlaps == 0


async def test_async_read_does_not_block_the_event_loop_during_the_measurement_delay() -> None:
    sim = SimulatedSMBus({0x44: SimulatedSht3x()})
    sensor = Sht3x(I2cBus(lambda: sim, 1))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        reading = await sensor.read()  # waits >= 15.5 ms for the measurement, in a worker thread
    finally:
        task.cancel()
    assert reading.ok
    assert ticks >= 3
