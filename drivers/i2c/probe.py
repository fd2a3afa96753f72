"""Scan an I2C bus and identify the climate sensors on it (field commissioning: ``omgw probe i2c``).

Presence test per address, as ``i2cdetect`` does in its default mode: an SMBus *receive byte* for
0x30..0x37 and 0x50..0x5F (where a quick write could corrupt EEPROMs or write-protect chips) and an
SMBus *quick write* elsewhere. A NACK (errno 121/6) means nothing is there. ``EBUSY`` means a kernel
driver owns the address (``UU`` in ``i2cdetect``).

Identification, only at the addresses these chips can use, with read-only commands:

- 0x44/0x45: SHT3x if the status register (0xF32D) answers with a valid CRC; its serial number
  (0x3780) is the identity. Otherwise SHT4x if the serial number command (0x89) answers with valid
  CRCs. 0x46: SHT4x only.
- 0x76/0x77: chip id register 0xD0: 0x60 BME280, 0x58 BMP280 (0x56/0x57 BMP280 samples), 0x61
  BME680.

Other responding addresses are listed with ``chip=None``. The probe takes the SMBus-compatible object
itself (``smbus2.SMBus(1)`` or the simulated bus); it does not take a lock, so run it while no
sampler uses the bus.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .bme280 import BME280_ADDRESSES, CHIP_IDS, REG_CHIP_ID
from .bus import SMBusLike
from .errors import NACK_ERRNOS
from .sensirion import CrcMismatch, decode_words, read_bytes, write_command
from .sht3x import CMD_READ_SERIAL as SHT3X_SERIAL
from .sht3x import CMD_READ_STATUS as SHT3X_STATUS
from .sht3x import COMMAND_S as SHT3X_COMMAND_S
from .sht4x import CMD_READ_SERIAL as SHT4X_SERIAL
from .sht4x import COMMAND_S as SHT4X_COMMAND_S

__all__ = ["DEFAULT_ADDRESSES", "ProbeResult", "probe_i2c"]

DEFAULT_ADDRESSES = range(
    0x03, 0x78
)  # 7-bit addresses outside the reserved ranges (I2C spec §3.1.12)
_READ_BYTE_RANGES = (range(0x30, 0x38), range(0x50, 0x60))


@dataclass(frozen=True)
class ProbeResult:
    """One responding address; ``chip`` and ``identity`` are ``None`` when not identified."""

    address: int
    chip: str | None
    identity: str | None

    def __str__(self) -> str:
        parts = [f"0x{self.address:02x}", self.chip or "-"]
        if self.identity:
            parts.append(self.identity)
        return "  ".join(parts)


def _present(smbus: SMBusLike, address: int) -> bool | None:
    """True if the address ACKs, False on NACK, None if a kernel driver holds it (EBUSY)."""
    try:
        if any(address in r for r in _READ_BYTE_RANGES):
            smbus.read_byte(address)
        else:
            smbus.write_quick(address)
    except OSError as exc:
        if exc.errno in NACK_ERRNOS:
            return False
        if exc.errno == errno.EBUSY:
            return None
        raise
    return True


def _sensirion_words(
    smbus: SMBusLike,
    address: int,
    command: bytes,
    count: int,
    wait_s: float,
    sleep: Callable[[float], None],
) -> list[int] | None:
    """Send a command and read ``count`` CRC-checked words; None if NACKed or corrupt."""
    try:
        write_command(smbus, address, command)
        sleep(wait_s)
        return decode_words(read_bytes(smbus, address, 3 * count))
    except OSError as exc:
        if exc.errno in NACK_ERRNOS:
            return None
        raise
    except CrcMismatch:
        return None


def _identify_sht(
    smbus: SMBusLike, address: int, sleep: Callable[[float], None]
) -> tuple[str, str] | None:
    if address in (0x44, 0x45):
        status = _sensirion_words(smbus, address, SHT3X_STATUS, 1, SHT3X_COMMAND_S, sleep)
        if status is not None:
            serial = _sensirion_words(smbus, address, SHT3X_SERIAL, 2, SHT3X_COMMAND_S, sleep)
            sn = f"serial 0x{(serial[0] << 16) | serial[1]:08x}" if serial else "serial unreadable"
            return "SHT3x", f"{sn} status 0x{status[0]:04x}"
    serial = _sensirion_words(smbus, address, SHT4X_SERIAL, 2, SHT4X_COMMAND_S, sleep)
    if serial is not None:
        return "SHT4x", f"serial 0x{(serial[0] << 16) | serial[1]:08x}"
    return None


def _identify_bosch(smbus: SMBusLike, address: int) -> tuple[str, str] | None:
    try:
        chip_id = smbus.read_byte_data(address, REG_CHIP_ID)
    except OSError as exc:
        if exc.errno in NACK_ERRNOS:
            return None
        raise
    chip = CHIP_IDS.get(chip_id)
    return (chip, f"chip id 0x{chip_id:02x}") if chip else None


def probe_i2c(
    smbus: SMBusLike,
    addresses: Iterable[int] = DEFAULT_ADDRESSES,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> list[ProbeResult]:
    """Responding addresses in ascending order, with the chips identified among them.

    Raises ``OSError`` only for adapter failures other than a NACK or EBUSY (e.g. a missing
    ``/dev/i2c-N`` has already failed when ``smbus`` was opened).
    """
    results = []
    for address in sorted(set(addresses)):
        present = _present(smbus, address)
        if present is None:
            results.append(ProbeResult(address, None, "in use by a kernel driver"))
            continue
        if not present:
            continue
        found: tuple[str, str] | None = None
        if address in (0x44, 0x45, 0x46):
            found = _identify_sht(smbus, address, sleep)
        elif address in BME280_ADDRESSES:
            found = _identify_bosch(smbus, address)
        results.append(ProbeResult(address, *found) if found else ProbeResult(address, None, None))
    return results
