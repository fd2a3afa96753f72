"""Typed climate readings and the pure checks around them (stuck detection, dew point).

Every climate driver (SHT3x, SHT4x, BME280) returns a :class:`ClimateReading`. A reading always
exists, even when the sensor misbehaves: its ``quality`` says whether the values can be used and
``detail`` says why not. Values are ``None`` when nothing trustworthy was received (CRC failure,
missing device); they are kept when the sensor answered consistently but the values are suspicious
(``stuck``, ``out_of_range``), so a person can still see what the sensor said.

Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Hashable
from dataclasses import dataclass

__all__ = [
    "ClimateReading",
    "Quality",
    "StuckDetector",
    "dew_point_c",
]


class Quality(str, enum.Enum):
    """How far a reading can be trusted."""

    OK = "ok"
    CRC = "crc"  # the data words failed their CRC twice in a row (one retry): values are None
    MISSING = "missing"  # the device did not answer (NACK) or the bus failed: values are None
    STUCK = "stuck"  # the raw values have not changed for N readings: values kept, not trusted
    OUT_OF_RANGE = "out_of_range"  # outside the sensor's specified range: values kept, not trusted


@dataclass(frozen=True)
class ClimateReading:
    """One measurement from one climate sensor.

    ``sensor`` is the configured name, ``model`` the chip family (``"SHT3x"``, ``"SHT4x"``,
    ``"BME280"``), ``address`` the 7-bit I2C address, ``timestamp_ns`` wall-clock time
    (``time.time_ns()``) when the data was read. ``pressure_hpa`` is ``None`` for sensors without a
    barometer.
    """

    sensor: str
    model: str
    address: int
    timestamp_ns: int
    temperature_c: float | None
    humidity_rh: float | None
    pressure_hpa: float | None
    quality: Quality
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.quality is Quality.OK

    @classmethod
    def missing(
        cls, sensor: str, model: str, address: int, timestamp_ns: int, detail: str
    ) -> ClimateReading:
        """A reading standing for a failed transaction (quality ``missing``, no values)."""
        return cls(sensor, model, address, timestamp_ns, None, None, None, Quality.MISSING, detail)


class StuckDetector:
    """Flags a sensor whose raw output has not changed for ``threshold`` consecutive readings.

    A healthy SHT3x/SHT4x/BME280 has a few LSB of noise on every channel, so several identical raw
    tuples in a row mean a hung sensor (or a bus returning a cached buffer). Feed it the raw values
    of every good reading (CRC-checked); a reading that could not be decoded should not be fed.

    ``observe(raw)`` returns the number of consecutive identical readings including this one; the
    reading is stuck when that number is ``>= threshold``. ``reset()`` forgets history (after a soft
    reset).
    """

    def __init__(self, threshold: int = 10) -> None:
        if threshold < 2:
            raise ValueError("threshold must be at least 2 readings")
        self.threshold = threshold
        self._last: Hashable | None = None
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    def observe(self, raw: Hashable) -> int:
        if self._count and raw == self._last:
            self._count += 1
        else:
            self._last = raw
            self._count = 1
        return self._count

    def is_stuck(self) -> bool:
        return self._count >= self.threshold

    def reset(self) -> None:
        self._last = None
        self._count = 0


# Sensirion application note "Introduction to Humidity" (Magnus formula), over water,
# valid for -45 .. 60 °C: beta = 17.62, lambda = 243.12 °C.
MAGNUS_BETA = 17.62
MAGNUS_LAMBDA_C = 243.12


def dew_point_c(temperature_c: float, humidity_rh: float) -> float:
    """Dew point (°C) from temperature (°C) and relative humidity (%RH), Magnus formula.

    ``Td = λ·(ln(RH/100) + β·T/(λ+T)) / (β − ln(RH/100) − β·T/(λ+T))`` with Sensirion's constants
    over water (β = 17.62, λ = 243.12 °C). Raises ``ValueError`` for RH <= 0 (no dew point) or > 100.
    """
    if not 0.0 < humidity_rh <= 100.0:
        raise ValueError(f"relative humidity must be in (0, 100] %RH, got {humidity_rh}")
    gamma = math.log(humidity_rh / 100.0) + MAGNUS_BETA * temperature_c / (
        MAGNUS_LAMBDA_C + temperature_c
    )
    return MAGNUS_LAMBDA_C * gamma / (MAGNUS_BETA - gamma)
