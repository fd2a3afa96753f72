"""Sensirion SHT3x (SHT30/31/35) temperature and humidity sensor, single-shot, no clock stretching.

Why no clock stretching: the Raspberry Pi's I2C controller (i2c-bcm2835) does not handle clock
stretching reliably, so the driver sends a single-shot command with clock stretching *disabled*
(0x2400 for high repeatability), waits the datasheet maximum (15.5 ms), then reads six bytes:
``T_msb T_lsb CRC RH_msb RH_lsb CRC``. Reading earlier gets a NACK (the sensor is busy).

Conversions (SHT3x-DIS datasheet §4.13)::

    T  = -45 + 175 * S_T  / 65535     (°C)
    RH =       100 * S_RH / 65535     (%RH)

The conversions and their inverses are pure functions; :class:`Sht3x` is the thin I/O part.
"""

from __future__ import annotations

import enum
from typing import Any

from .bus import I2cBus
from .sensirion import decode_words
from .sensor import RawSample, SensirionSensor

__all__ = [
    "SHT3X_ADDRESSES",
    "Repeatability",
    "Sht3x",
    "decode_measurement",
    "humidity_rh",
    "raw_from_humidity",
    "raw_from_temperature",
    "temperature_c",
]

SHT3X_ADDRESSES = (0x44, 0x45)  # ADDR pin low / high

# Commands (datasheet Table 9 ff.); 16-bit, sent MSB first.
CMD_SOFT_RESET = b"\x30\xa2"
CMD_READ_STATUS = b"\xf3\x2d"
CMD_CLEAR_STATUS = b"\x30\x41"
CMD_READ_SERIAL = b"\x37\x80"  # serial number, clock stretching disabled (two words + CRCs)
SOFT_RESET_S = 0.0015  # t_SR max 1.5 ms
COMMAND_S = 0.001  # wait before reading the answer to a status/serial command (Sensirion's driver)

TEMPERATURE_SPEC_C = (-40.0, 125.0)  # specified operating range


class Repeatability(enum.Enum):
    """Single-shot measurement, clock stretching disabled: (command, maximum duration in seconds)."""

    HIGH = (b"\x24\x00", 0.0155)
    MEDIUM = (b"\x24\x0b", 0.0065)
    LOW = (b"\x24\x16", 0.0045)

    @property
    def command(self) -> bytes:
        return self.value[0]

    @property
    def max_duration_s(self) -> float:
        return self.value[1]


def temperature_c(raw: int) -> float:
    """SHT3x temperature code to °C: ``-45 + 175 * raw / 65535``."""
    return -45.0 + 175.0 * raw / 65535.0


def humidity_rh(raw: int) -> float:
    """SHT3x humidity code to %RH: ``100 * raw / 65535``."""
    return 100.0 * raw / 65535.0


def raw_from_temperature(t_c: float) -> int:
    """Inverse of :func:`temperature_c`, rounded to the nearest code and clamped to 16 bits."""
    return min(0xFFFF, max(0, round((t_c + 45.0) * 65535.0 / 175.0)))


def raw_from_humidity(rh: float) -> int:
    """Inverse of :func:`humidity_rh`, rounded to the nearest code and clamped to 16 bits."""
    return min(0xFFFF, max(0, round(rh * 65535.0 / 100.0)))


def decode_measurement(data: bytes) -> tuple[int, int]:
    """Six response bytes to ``(raw_t, raw_rh)``; raises ``CrcMismatch`` on a bad CRC."""
    if len(data) != 6:
        raise ValueError(f"SHT3x measurement is 6 bytes, got {len(data)}")
    raw_t, raw_rh = decode_words(data)
    return raw_t, raw_rh


def sample_from_raw(raw_t: int, raw_rh: int) -> RawSample:
    """Pure: raw codes to a :class:`RawSample` with the range check."""
    t = temperature_c(raw_t)
    rh = humidity_rh(raw_rh)
    lo, hi = TEMPERATURE_SPEC_C
    why = "" if lo <= t <= hi else f"temperature {t:.2f} °C outside {lo:g}..{hi:g} °C"
    return RawSample((raw_t, raw_rh), t, rh, None, why)


class Sht3x(SensirionSensor):
    """SHT3x on an :class:`~drivers.i2c.bus.I2cBus` at 0x44 (default) or 0x45.

    ``options`` are those of :class:`~drivers.i2c.sensor.ClimateSensor`: ``name``, ``reset_after``,
    ``stuck_after``, ``sleep``, ``clock_ns``.
    """

    model = "SHT3x"
    SOFT_RESET_COMMAND = CMD_SOFT_RESET
    SOFT_RESET_S = SOFT_RESET_S
    SERIAL_COMMAND = CMD_READ_SERIAL
    COMMAND_S = COMMAND_S
    sample_from_raw = staticmethod(sample_from_raw)
    decode_measurement = staticmethod(decode_measurement)

    @property
    def mode(self) -> Any:
        return self.repeatability

    def __init__(
        self,
        bus: I2cBus,
        address: int = 0x44,
        *,
        repeatability: Repeatability = Repeatability.HIGH,
        **options: Any,
    ) -> None:
        super().__init__(bus, address, **options)
        self.repeatability = repeatability

    def read_status(self) -> int:
        """The 16-bit status register (command 0xF32D). Raises ``I2cError``."""
        with self._lock:
            (status,) = self._query_words(CMD_READ_STATUS, 1, COMMAND_S)
        return status

    def identify(self) -> str:
        return f"SHT3x serial 0x{self.read_serial():08x}"
