"""What every climate driver shares: retry, stuck detection, soft reset, and the async shell.

A concrete driver (``Sht3x``, ``Sht4x``, ``Bme280``) implements three blocking hooks that talk to
the chip: ``_measure_raw()`` (one complete measurement, returning raw codes and converted values),
``_soft_reset()`` and ``identify()``. This base class turns them into the driver's behaviour:

- **CRC**: a measurement whose data fails its CRC is repeated once; if the repeat fails too, the
  reading has quality ``crc`` and no values.
- **Missing device / bus error**: ``measure()`` raises the ``I2cError`` (``I2cDeviceMissing`` names
  bus, address and chip). The caller that can do something about it (the sampler) turns it into a
  ``missing`` reading with :meth:`ClimateSensor.missing_reading`.
- **Stuck**: a :class:`~drivers.i2c.reading.StuckDetector` watches the raw codes; after
  ``stuck_after`` identical raw tuples the reading has quality ``stuck``.
- **Out of range**: values outside the sensor's specified range have quality ``out_of_range``.
- **Soft reset**: after ``reset_after`` consecutive failed readings (any quality other than ``ok``,
  or a raised ``I2cError``) the driver sends the chip's soft-reset command, then again after each
  further ``reset_after`` failures. A reset that itself fails is counted and logged, never raised.

Every transaction runs under the bus lock (:class:`~drivers.i2c.bus.I2cBus`); the waits between a
command and its read do not hold the lock. One sensor runs one measurement at a time (its own lock).
``read()`` is the async face: it runs ``measure()`` in a worker thread with ``asyncio.to_thread``.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from .bus import I2cBus, SMBusLike
from .errors import I2cCrcError, I2cError, from_oserror
from .reading import ClimateReading, Quality, StuckDetector
from .sensirion import CrcMismatch, decode_words, read_bytes, write_command

__all__ = ["ClimateSensor", "RawSample", "SensirionSensor"]

_log = logging.getLogger("drivers.i2c")
T = TypeVar("T")


@dataclass(frozen=True)
class RawSample:
    """One decoded measurement: the raw ADC codes and the values converted from them.

    ``out_of_range`` is empty when the values are within the sensor's specified range, otherwise it
    says which value is outside and why.
    """

    raw: tuple[int, ...]
    temperature_c: float | None
    humidity_rh: float | None
    pressure_hpa: float | None = None
    out_of_range: str = ""


class ClimateSensor(abc.ABC):
    """Base of the climate drivers. Not instantiated directly."""

    model: ClassVar[str]

    def __init__(
        self,
        bus: I2cBus,
        address: int,
        *,
        name: str | None = None,
        reset_after: int = 3,
        stuck_after: int = 10,
        sleep: Callable[[float], None] = time.sleep,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        if not 0x03 <= address <= 0x77:
            raise ValueError(f"7-bit I2C address out of range: 0x{address:02x}")
        if reset_after < 1:
            raise ValueError("reset_after must be at least 1")
        self.bus = bus
        self.address = address
        self.name = name or f"{self.model.lower()}@{bus.number}:0x{address:02x}"
        self.reset_after = reset_after
        self._sleep = sleep
        self._clock_ns = clock_ns
        self._stuck = StuckDetector(stuck_after)
        self._lock = threading.Lock()
        self.consecutive_failures = 0
        self.soft_resets = 0
        self.failed_resets = 0
        self.last_reset_error = ""

    # ---------------------------------------------------------------------------------------------
    # Hooks for the concrete chip (blocking; called with the sensor lock held, not the bus lock).

    @abc.abstractmethod
    def _measure_raw(self) -> RawSample:
        """One full measurement. Raises ``CrcMismatch`` (bad data) or ``I2cError`` (no answer)."""

    @abc.abstractmethod
    def _soft_reset(self) -> None:
        """Send the chip's soft-reset command and wait its start-up time."""

    @abc.abstractmethod
    def identify(self) -> str:
        """A short identity string read from the chip (serial number or chip id)."""

    # ---------------------------------------------------------------------------------------------

    def _xfer(self, action: str, fn: Callable[[SMBusLike], T]) -> T:
        """Run one bus transaction under the bus lock; map ``OSError`` to ``I2cError``.

        Opening the adapter happens here too (first use), so a missing ``/dev/i2c-N`` becomes an
        ``I2cBusError`` naming bus and address like any other bus failure.
        """
        try:
            with self.bus.transaction() as smbus:
                return fn(smbus)
        except OSError as exc:
            raise from_oserror(exc, self.bus.number, self.address, self.model, action) from exc

    def measure(self) -> ClimateReading:
        """One reading (blocking, includes the measurement delays). Raises ``I2cError`` if no answer."""
        with self._lock:
            try:
                reading = self._measure_checked()
            except I2cError as exc:
                self._record_failure(str(exc))
                raise
            if reading.ok:
                if self.consecutive_failures:
                    _log.info(
                        "i2c_sensor_recovered",
                        extra={"kv": self._kv(after_failures=self.consecutive_failures)},
                    )
                self.consecutive_failures = 0
            else:
                self._record_failure(f"{reading.quality.value}: {reading.detail}")
            return reading

    async def read(self) -> ClimateReading:
        """``measure()`` in a worker thread, so the event loop never blocks on the bus."""
        return await asyncio.to_thread(self.measure)

    def soft_reset(self) -> None:
        """Soft-reset the chip now (blocking). Raises ``I2cError`` if it does not answer."""
        with self._lock:
            self._reset_now()

    def missing_reading(self, error: I2cError) -> ClimateReading:
        """The reading that stands for a failed ``measure()``: quality ``missing``, detail = the error."""
        return ClimateReading.missing(
            self.name, self.model, self.address, self._clock_ns(), str(error)
        )

    # ---------------------------------------------------------------------------------------------

    def _measure_checked(self) -> ClimateReading:
        try:
            sample = self._measure_raw()
        except CrcMismatch as first:
            _log.info("i2c_crc_retry", extra={"kv": self._kv(detail=str(first))})
            try:
                sample = self._measure_raw()
            except CrcMismatch as second:
                return self._reading(None, Quality.CRC, f"{second} (after 1 retry)")
        seen = self._stuck.observe(sample.raw)
        if seen >= self._stuck.threshold:
            raw = " ".join(f"0x{r:x}" for r in sample.raw)
            return self._reading(
                sample, Quality.STUCK, f"raw values ({raw}) unchanged for {seen} readings"
            )
        if sample.out_of_range:
            return self._reading(sample, Quality.OUT_OF_RANGE, sample.out_of_range)
        return self._reading(sample, Quality.OK, "")

    def _reading(self, sample: RawSample | None, quality: Quality, detail: str) -> ClimateReading:
        return ClimateReading(
            sensor=self.name,
            model=self.model,
            address=self.address,
            timestamp_ns=self._clock_ns(),
            temperature_c=sample.temperature_c if sample else None,
            humidity_rh=sample.humidity_rh if sample else None,
            pressure_hpa=sample.pressure_hpa if sample else None,
            quality=quality,
            detail=detail,
        )

    def _record_failure(self, reason: str) -> None:
        self.consecutive_failures += 1
        if self.consecutive_failures == 1:
            # One line when a failure streak starts, one when it ends: repeated errors are not logged.
            _log.warning("i2c_sensor_failed", extra={"kv": self._kv(reason=reason)})
        if self.consecutive_failures % self.reset_after == 0:
            try:
                self._reset_now()
            except I2cError as exc:
                self.failed_resets += 1
                self.last_reset_error = str(exc)
                _log.warning("i2c_soft_reset_failed", extra={"kv": self._kv(error=str(exc))})
            else:
                _log.warning(
                    "i2c_soft_reset",
                    extra={"kv": self._kv(after_failures=self.consecutive_failures, reason=reason)},
                )

    def _reset_now(self) -> None:
        self._soft_reset()
        self.soft_resets += 1
        self._stuck.reset()

    def _kv(self, **fields: object) -> dict[str, object]:
        return {
            "sensor": self.name,
            "model": self.model,
            "bus": self.bus.number,
            "addr": f"0x{self.address:02x}",
            **fields,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, bus={self.bus.number}, address=0x{self.address:02x})"


class SensirionSensor(ClimateSensor):
    """Shared transfers of the Sensirion chips: a command, a wait, then CRC-protected words.

    A chip module supplies its command table as class attributes and ``mode`` (the measurement
    command and its maximum duration: SHT3x repeatability, SHT4x precision)."""

    SOFT_RESET_COMMAND: ClassVar[bytes]
    SOFT_RESET_S: ClassVar[float]
    SERIAL_COMMAND: ClassVar[bytes]
    COMMAND_S: ClassVar[float]
    sample_from_raw: ClassVar[Callable[[int, int], RawSample]]
    decode_measurement: ClassVar[Callable[[bytes], tuple[int, int]]]
    mode: Any

    @property
    def measurement_delay_s(self) -> float:
        return float(self.mode.max_duration_s)

    def _measure_raw(self) -> RawSample:
        self._command(self.mode.command)
        self._sleep(self.mode.max_duration_s)
        cls = type(self)
        return cls.sample_from_raw(*cls.decode_measurement(self._read(6)))

    def _soft_reset(self) -> None:
        self._command(self.SOFT_RESET_COMMAND)
        self._sleep(self.SOFT_RESET_S)

    def read_serial(self) -> int:
        """The 32-bit serial number. Raises ``I2cError``."""
        with self._lock:
            hi, lo = self._query_words(self.SERIAL_COMMAND, 2, self.COMMAND_S)
        return (hi << 16) | lo

    def _command(self, command: bytes) -> None:
        self._xfer(f"command 0x{command.hex()}", lambda b: write_command(b, self.address, command))

    def _read(self, length: int) -> bytes:
        return self._xfer("read", lambda b: read_bytes(b, self.address, length))

    def _query_words(self, command: bytes, count: int, wait_s: float) -> list[int]:
        """Command, wait, read ``count`` words; a CRC failure raises ``I2cCrcError`` (identity reads)."""
        self._command(command)
        self._sleep(wait_s)
        data = self._read(3 * count)
        try:
            return decode_words(data)
        except CrcMismatch as exc:
            raise I2cCrcError(self.bus.number, self.address, self.model, str(exc)) from exc
