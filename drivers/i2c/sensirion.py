"""Sensirion I2C framing shared by SHT3x and SHT4x: the CRC-8 and the command/read transactions.

Sensirion sensors send data as 16-bit big-endian words, each followed by a CRC-8 (SHT3x datasheet
§4.12, SHT4x datasheet §4.4: polynomial 0x31 (x^8 + x^5 + x^4 + 1), initialisation 0xFF, no
reflection, no final XOR; example 0xBEEF -> 0x92). The pure part (``crc8``, ``encode_words``,
``decode_words``) is what the simulated sensors use too, so both ends agree on the wire format.

A measurement in "no clock stretching" mode is two separate I2C transfers: write the command, wait
for the measurement, then read the words. While the sensor is still measuring it NACKs its read
header, so the caller must wait the datasheet maximum before reading. The transfer helpers take an
SMBus-compatible object and use ``i2c_rdwr`` with real ``smbus2.i2c_msg`` messages (plain I2C, not
SMBus protocol, because the commands are 8 or 16 bits with no register byte).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from smbus2 import i2c_msg

__all__ = [
    "CrcMismatch",
    "RdwrBus",
    "crc8",
    "decode_words",
    "encode_words",
    "read_bytes",
    "write_command",
]

CRC8_POLYNOMIAL = 0x31
CRC8_INIT = 0xFF


class RdwrBus(Protocol):
    """The one smbus2 call the Sensirion transfers need."""

    def i2c_rdwr(self, *i2c_msgs: i2c_msg) -> None: ...


class CrcMismatch(ValueError):
    """Pure-core error: word ``index`` of a response carried CRC ``received``, not ``expected``."""

    def __init__(self, index: int, word: int, received: int, expected: int) -> None:
        super().__init__(index, word, received, expected)
        self.index = index
        self.word = word
        self.received = received
        self.expected = expected

    def __str__(self) -> str:
        return (
            f"CRC mismatch in word {self.index} (0x{self.word:04x}): "
            f"received 0x{self.received:02x}, expected 0x{self.expected:02x}"
        )


def crc8(data: bytes) -> int:
    """Sensirion CRC-8 over ``data`` (poly 0x31, init 0xFF, MSB first, no final XOR)."""
    crc = CRC8_INIT
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ CRC8_POLYNOMIAL) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def encode_words(words: Sequence[int]) -> bytes:
    """16-bit words to the wire: ``MSB LSB CRC`` per word."""
    out = bytearray()
    for w in words:
        if not 0 <= w <= 0xFFFF:
            raise ValueError(f"word out of range: {w}")
        pair = w.to_bytes(2, "big")
        out += pair
        out.append(crc8(pair))
    return bytes(out)


def decode_words(data: bytes) -> list[int]:
    """The wire to 16-bit words, checking every CRC. Raises :class:`CrcMismatch` on the first bad one."""
    if len(data) % 3:
        raise ValueError(f"Sensirion response length must be a multiple of 3, got {len(data)}")
    words = []
    for i in range(0, len(data), 3):
        pair = data[i : i + 2]
        word = int.from_bytes(pair, "big")
        expected = crc8(pair)
        if data[i + 2] != expected:
            raise CrcMismatch(i // 3, word, data[i + 2], expected)
        words.append(word)
    return words


def write_command(smbus: RdwrBus, address: int, command: bytes) -> None:
    """One I2C write transfer carrying the command bytes (raises ``OSError`` on NACK)."""
    smbus.i2c_rdwr(i2c_msg.write(address, command))


def read_bytes(smbus: RdwrBus, address: int, length: int) -> bytes:
    """One I2C read transfer of ``length`` bytes (raises ``OSError`` on NACK)."""
    msg = i2c_msg.read(address, length)
    smbus.i2c_rdwr(msg)
    return bytes(msg)
