"""Exceptions raised by the I2C drivers; each names the bus, the address and the chip.

A driver turns every ``OSError`` that smbus2 raises into one of these, so a log line or a reading's
``detail`` says where the failure happened without more context:

- ``I2cDeviceMissing``: the device did not acknowledge (``EREMOTEIO`` 121 from most Linux adapters,
  ``ENXIO`` 6 from some). The device is absent, unpowered, on another address, or busy (Sensirion
  sensors NACK a read while they are still measuring).
- ``I2cBusError``: any other I/O failure on the adapter (timeout, arbitration lost, EIO, EBUSY).
- ``I2cCrcError``: a Sensirion word arrived with a bad CRC-8. Drivers retry once and then report a
  reading with quality ``crc``; they raise it only from identity reads (serial number).
- ``I2cWrongChip``: something answers at the address but it is not the chip the driver drives.
- ``I2cTimeout``: the device answered but did not finish a measurement in its datasheet time.

They keep their constructor arguments in ``args`` so they pickle and copy like any exception.
"""

from __future__ import annotations

import errno

__all__ = [
    "NACK_ERRNOS",
    "I2cBusError",
    "I2cCrcError",
    "I2cDeviceMissing",
    "I2cError",
    "I2cTimeout",
    "I2cWrongChip",
    "from_oserror",
]

# Linux i2c adapters report "no acknowledge" as EREMOTEIO (i2c-bcm2835, i2c-designware, ...) or
# ENXIO (a few adapters and the SMBus emulation path). Documentation/i2c/fault-codes.rst.
NACK_ERRNOS = frozenset({errno.EREMOTEIO, errno.ENXIO})


class I2cError(Exception):
    """One I2C operation failed. ``I2cError(bus, address, chip, detail)``; ``str()`` names all three."""

    def __init__(self, bus: int, address: int, chip: str, detail: str) -> None:
        super().__init__(bus, address, chip, detail)
        self.bus = bus
        self.address = address
        self.chip = chip
        self.detail = detail

    def __str__(self) -> str:
        return f"bus {self.bus} address 0x{self.address:02x}: {self.detail} ({self.chip})"


class I2cDeviceMissing(I2cError):
    """The address was not acknowledged (errno 121 EREMOTEIO or 6 ENXIO)."""


class I2cBusError(I2cError):
    """Any other adapter-level failure (``OSError`` with an errno that is not a NACK)."""


class I2cCrcError(I2cError):
    """A Sensirion data word failed its CRC-8 check."""


class I2cWrongChip(I2cError):
    """The device at the address identifies as another chip (e.g. a BMP280 where a BME280 was expected)."""


class I2cTimeout(I2cError):
    """The device kept reporting 'busy' beyond its datasheet maximum measurement time."""


def from_oserror(exc: OSError, bus: int, address: int, chip: str, action: str) -> I2cError:
    """Map an ``OSError`` from smbus2 to ``I2cDeviceMissing`` (NACK) or ``I2cBusError`` (anything else).

    ``action`` says what was being done, e.g. ``"read"`` or ``"command 0x2400"``.
    """
    if exc.errno in NACK_ERRNOS:
        detail = f"no ACK on {action}" if action else "no ACK"
        return I2cDeviceMissing(bus, address, chip, detail)
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return I2cBusError(
        bus, address, chip, f"{action or 'I/O'} failed: {name} {exc.strerror or exc}"
    )
