"""Sensirion SHT4x (SHT40/41/43/45) temperature and humidity sensor.

The SHT4x takes 8-bit commands and never stretches the clock: write 0xFD (high precision, no
heater), wait the datasheet maximum (8.3 ms), read six bytes ``T_msb T_lsb CRC RH_msb RH_lsb CRC``.
Serial number: command 0x89, two CRC-protected words. Soft reset: 0x94 (max 1 ms).

Conversions (SHT4x datasheet §4.6)::

    T  = -45 + 175 * S_T  / 65535     (°C)
    RH =  -6 + 125 * S_RH / 65535     (%RH), cropped to 0..100 as the datasheet recommends

The conversions and their inverses are pure functions; :class:`Sht4x` is the thin I/O part.
"""

from __future__ import annotations

import enum
from typing import Any

from .bus import I2cBus
from .sensirion import decode_words
from .sensor import RawSample, SensirionSensor

__all__ = [
    "SHT4X_ADDRESSES",
    "Precision",
    "Sht4x",
    "decode_measurement",
    "humidity_rh",
    "humidity_rh_unclamped",
    "raw_from_humidity",
    "raw_from_temperature",
    "temperature_c",
]

SHT4X_ADDRESSES = (0x44, 0x45, 0x46)  # SHT4x-A / -B / -C variants (fixed per part number)

CMD_READ_SERIAL = b"\x89"
CMD_SOFT_RESET = b"\x94"
SOFT_RESET_S = 0.001  # max 1 ms
COMMAND_S = 0.001  # wait before reading the serial number (Sensirion's driver uses 1 ms)

TEMPERATURE_SPEC_C = (-40.0, 125.0)


class Precision(enum.Enum):
    """Measurement without heater: (command, maximum duration in seconds), datasheet Table 4."""

    HIGH = (b"\xfd", 0.0083)
    MEDIUM = (b"\xf6", 0.0045)
    LOW = (b"\xe0", 0.0016)

    @property
    def command(self) -> bytes:
        return self.value[0]

    @property
    def max_duration_s(self) -> float:
        return self.value[1]


def temperature_c(raw: int) -> float:
    """SHT4x temperature code to °C: ``-45 + 175 * raw / 65535``."""
    return -45.0 + 175.0 * raw / 65535.0


def humidity_rh_unclamped(raw: int) -> float:
    """SHT4x humidity code to %RH without cropping: ``-6 + 125 * raw / 65535`` (-6 .. 119)."""
    return -6.0 + 125.0 * raw / 65535.0


def humidity_rh(raw: int) -> float:
    """SHT4x humidity code to %RH, cropped to 0..100 (datasheet §4.6)."""
    return min(100.0, max(0.0, humidity_rh_unclamped(raw)))


def raw_from_temperature(t_c: float) -> int:
    """Inverse of :func:`temperature_c`, rounded and clamped to 16 bits."""
    return min(0xFFFF, max(0, round((t_c + 45.0) * 65535.0 / 175.0)))


def raw_from_humidity(rh: float) -> int:
    """Inverse of :func:`humidity_rh_unclamped`, rounded and clamped to 16 bits."""
    return min(0xFFFF, max(0, round((rh + 6.0) * 65535.0 / 125.0)))


def decode_measurement(data: bytes) -> tuple[int, int]:
    """Six response bytes to ``(raw_t, raw_rh)``; raises ``CrcMismatch`` on a bad CRC."""
    if len(data) != 6:
        raise ValueError(f"SHT4x measurement is 6 bytes, got {len(data)}")
    raw_t, raw_rh = decode_words(data)
    return raw_t, raw_rh


def sample_from_raw(raw_t: int, raw_rh: int) -> RawSample:
    """Pure: raw codes to a :class:`RawSample` with the range check."""
    t = temperature_c(raw_t)
    lo, hi = TEMPERATURE_SPEC_C
    why = "" if lo <= t <= hi else f"temperature {t:.2f} °C outside {lo:g}..{hi:g} °C"
    return RawSample((raw_t, raw_rh), t, humidity_rh(raw_rh), None, why)


class Sht4x(SensirionSensor):
    """SHT4x on an :class:`~drivers.i2c.bus.I2cBus` at 0x44 (default), 0x45 or 0x46.

    ``options`` are those of :class:`~drivers.i2c.sensor.ClimateSensor`.
    """

    model = "SHT4x"
    SOFT_RESET_COMMAND = CMD_SOFT_RESET
    SOFT_RESET_S = SOFT_RESET_S
    SERIAL_COMMAND = CMD_READ_SERIAL
    COMMAND_S = COMMAND_S
    sample_from_raw = staticmethod(sample_from_raw)
    decode_measurement = staticmethod(decode_measurement)

    @property
    def mode(self) -> Any:
        return self.precision

    def __init__(
        self,
        bus: I2cBus,
        address: int = 0x44,
        *,
        precision: Precision = Precision.HIGH,
        **options: Any,
    ) -> None:
        super().__init__(bus, address, **options)
        self.precision = precision

    def identify(self) -> str:
        return f"SHT4x serial 0x{self.read_serial():08x}"
