"""I2C climate sensors (Sensirion SHT3x/SHT4x, Bosch BME280) on any SMBus-compatible backend.

Drivers receive an :class:`I2cBus` built from an SMBus factory (``smbus2.SMBus`` on the gateway,
``drivers.sim.i2c.SimulatedSMBus`` in tests and the demo). They know the chips and nothing else:
no MQTT, no OCPP, no configuration files. See docs/drivers-i2c-gpio.md.
"""

from .bme280 import Bme280, Bme280Calibration, Oversampling
from .bus import I2cBus, SMBusLike
from .errors import (
    I2cBusError,
    I2cCrcError,
    I2cDeviceMissing,
    I2cError,
    I2cTimeout,
    I2cWrongChip,
)
from .probe import ProbeResult, probe_i2c
from .reading import ClimateReading, Quality, StuckDetector, dew_point_c
from .sensirion import crc8
from .sensor import ClimateSensor
from .sht3x import Repeatability, Sht3x
from .sht4x import Precision, Sht4x

__all__ = [
    "Bme280",
    "Bme280Calibration",
    "ClimateReading",
    "ClimateSensor",
    "I2cBus",
    "I2cBusError",
    "I2cCrcError",
    "I2cDeviceMissing",
    "I2cError",
    "I2cTimeout",
    "I2cWrongChip",
    "Oversampling",
    "Precision",
    "ProbeResult",
    "Quality",
    "Repeatability",
    "SMBusLike",
    "Sht3x",
    "Sht4x",
    "StuckDetector",
    "crc8",
    "dew_point_c",
    "probe_i2c",
]
