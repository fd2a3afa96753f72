"""Register words <-> numbers, the Modbus RTU CRC-16 and RTU frame sizes. Pure functions only.

Wire rules this module implements:

- A register is 16 bits sent high byte first (Modbus Application Protocol V1.1b3 §4.2). Byte order
  inside a register is therefore fixed; only the order of the *words* of a multi-register value
  varies between manufacturers: ``big`` = most significant word first (Eastron, ABB),
  ``little`` = least significant word first (Carlo Gavazzi). For ``uint64`` ``little`` reverses
  all four words.
- ``float32`` is IEEE 754 single precision. Real meters do send NaN and infinities (no voltage,
  overflow): :func:`decode` returns them unchanged; deciding what they mean is the reading's job.
- ``scale`` converts the raw number into the value's unit: ``value = raw * scale`` (ABB reports
  volts in 0.1 V steps: ``scale = 0.1``). When ``1 / scale`` is a whole number the division is done
  as ``raw / (1 / scale)`` so 2301 with scale 0.1 gives ``230.1``, not ``230.10000000000002``.
- CRC-16/MODBUS (Modbus over Serial Line V1.02 §6.2.2): polynomial 0x8005 reflected (0xA001),
  initial value 0xFFFF, no final XOR; appended to the frame low byte first.
- A read request (function 3 or 4) is 8 bytes: unit, function, address (2), count (2), CRC (2).
  Its normal response is 5 + 2·count bytes: unit, function, byte count, data, CRC (2).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from enum import IntEnum, StrEnum
from typing import Protocol

__all__ = [
    "DataType",
    "Function",
    "ScaledValue",
    "WordOrder",
    "append_crc",
    "crc16",
    "decode",
    "decode_raw",
    "encode",
    "encode_raw",
    "register_count",
    "rtu_frame_bytes",
]

MAX_READ_REGISTERS = 125  # Modbus Application Protocol V1.1b3 §6.3/§6.4: 1..125 registers per read


class Function(IntEnum):
    """The two Modbus read functions a meter value can live behind."""

    HOLDING = 3  # Read Holding Registers (4xxxx references)
    INPUT = 4  # Read Input Registers (3xxxx references)


class DataType(StrEnum):
    FLOAT32 = "float32"
    INT32 = "int32"
    UINT32 = "uint32"
    INT16 = "int16"
    UINT16 = "uint16"
    UINT64 = "uint64"


class WordOrder(StrEnum):
    BIG = "big"  # most significant register first ("ABCD")
    LITTLE = "little"  # least significant register first ("CDAB" for 32 bits)


# type -> (registers, struct format of the big-endian byte string)
_LAYOUT: dict[DataType, tuple[int, str]] = {
    DataType.FLOAT32: (2, ">f"),
    DataType.INT32: (2, ">i"),
    DataType.UINT32: (2, ">I"),
    DataType.INT16: (1, ">h"),
    DataType.UINT16: (1, ">H"),
    DataType.UINT64: (4, ">Q"),
}

_INT_RANGE: dict[DataType, tuple[int, int]] = {
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.UINT64: (0, 2**64 - 1),
}


class ScaledValue(Protocol):
    """What :func:`decode`/:func:`encode` need from a value definition (``regmap.ValueDef``)."""

    @property
    def type(self) -> DataType: ...
    @property
    def word_order(self) -> WordOrder: ...
    @property
    def scale(self) -> float: ...


def register_count(type: DataType | str) -> int:
    """Number of 16-bit registers a value of ``type`` occupies."""
    return _LAYOUT[DataType(type)][0]


def _words_to_bytes(type: DataType, word_order: WordOrder, regs: Sequence[int]) -> bytes:
    n = _LAYOUT[type][0]
    if len(regs) != n:
        raise ValueError(f"{type} needs {n} registers, got {len(regs)}")
    for w in regs:
        if not 0 <= w <= 0xFFFF:
            raise ValueError(f"register value {w!r} is not a 16-bit word")
    words = regs if word_order is WordOrder.BIG else list(reversed(regs))
    return b"".join(w.to_bytes(2, "big") for w in words)


def decode_raw(type: DataType | str, word_order: WordOrder | str, regs: Sequence[int]) -> int | float:
    """The unscaled number in ``regs`` (an ``int`` for integer types, exact even for ``uint64``)."""
    t = DataType(type)
    data = _words_to_bytes(t, WordOrder(word_order), regs)
    value: int | float = struct.unpack(_LAYOUT[t][1], data)[0]
    return value


def encode_raw(type: DataType | str, word_order: WordOrder | str, raw: int | float) -> list[int]:
    """Inverse of :func:`decode_raw`. Integer types need an integral ``raw`` within the type's range."""
    t = DataType(type)
    fmt = _LAYOUT[t][1]
    if t is DataType.FLOAT32:
        try:
            data = struct.pack(fmt, raw)
        except OverflowError:
            raise ValueError(f"{raw!r} is outside the float32 range") from None
    else:
        if isinstance(raw, float):
            if not raw.is_integer():
                raise ValueError(f"{t} needs an integral raw value, got {raw!r}")
            raw = int(raw)
        lo, hi = _INT_RANGE[t]
        if not lo <= raw <= hi:
            raise ValueError(f"{raw} is outside the {t} range {lo}..{hi}")
        data = struct.pack(fmt, raw)
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    return words if WordOrder(word_order) is WordOrder.BIG else words[::-1]


def _inverse_scale(scale: float) -> int | None:
    """``k`` when ``scale == 1/k`` for a whole ``k > 1`` (0.1 -> 10), else None."""
    if 0 < abs(scale) < 1:
        k = 1 / scale
        r = round(k)
        if r != 0 and abs(k - r) <= 1e-9 * abs(k):
            return int(r)
    return None


def decode(vdef: ScaledValue, regs: Sequence[int]) -> float:
    """The value in ``vdef``'s unit: word order applied, then ``scale``. NaN/inf pass through."""
    raw = decode_raw(vdef.type, vdef.word_order, regs)
    k = _inverse_scale(vdef.scale)
    if k is not None:
        return raw / k
    return float(raw) * vdef.scale if vdef.scale != 1 else float(raw)


def encode(vdef: ScaledValue, value: float) -> list[int]:
    """The registers a device would hold for ``value`` (inverse of :func:`decode`; for simulators).

    Integer types round to the nearest step of ``scale``; a value that does not fit the type, or a
    NaN/infinity for an integer type, raises ``ValueError``.
    """
    t = DataType(vdef.type)
    k = _inverse_scale(vdef.scale)
    raw = value * k if k is not None else value / vdef.scale
    if t is DataType.FLOAT32:
        return encode_raw(t, vdef.word_order, raw)
    if not math.isfinite(raw):
        raise ValueError(f"{value!r} cannot be encoded as {t}")
    return encode_raw(t, vdef.word_order, round(raw))


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """CRC-16/MODBUS of ``data``. The frame carries it low byte first: ``crc.to_bytes(2, "little")``.

    ``crc16(bytes.fromhex("01030000000A")) == 0xCDC5``, sent as ``C5 CD``.
    """
    crc = 0xFFFF
    for b in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ b) & 0xFF]
    return crc


def append_crc(frame: bytes) -> bytes:
    """``frame`` followed by its CRC-16, low byte first, as sent on the wire."""
    return frame + crc16(frame).to_bytes(2, "little")


def rtu_frame_bytes(function: int, count: int) -> tuple[int, int]:
    """``(request_bytes, response_bytes)`` of one RTU read of ``count`` registers (function 3 or 4)."""
    if function not in (Function.HOLDING, Function.INPUT):
        raise ValueError(f"function {function} is not a register read (3 or 4)")
    if not 1 <= count <= MAX_READ_REGISTERS:
        raise ValueError(f"count {count} is outside 1..{MAX_READ_REGISTERS}")
    return 8, 5 + 2 * count
