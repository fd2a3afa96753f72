"""Register codec, CRC-16/MODBUS and RTU frame sizes: known vectors and round-trip properties."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus.codec import (
    DataType,
    Function,
    WordOrder,
    append_crc,
    crc16,
    decode,
    decode_raw,
    encode,
    encode_raw,
    register_count,
    rtu_frame_bytes,
)
from drivers.modbus.regmap import ValueDef

INT_RANGES = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.UINT64: (0, 2**64 - 1),
}


def vdef(type_: str, order: str = "big", scale: float = 1.0) -> ValueDef:
    return ValueDef("x", "power_active", None, "W", 0, Function.INPUT, type_, order, scale)


words = st.integers(min_value=0, max_value=0xFFFF)


def test_register_counts() -> None:
    assert {t: register_count(t) for t in DataType} == {
        DataType.FLOAT32: 2,
        DataType.INT32: 2,
        DataType.UINT32: 2,
        DataType.INT16: 1,
        DataType.UINT16: 1,
        DataType.UINT64: 4,
    }
    assert register_count("uint64") == 4


def test_float32_230_volts_big_and_little_word_order() -> None:
    assert decode(vdef("float32"), [0x4366, 0x0000]) == 230.0
    assert decode(vdef("float32", "little"), [0x0000, 0x4366]) == 230.0
    assert encode(vdef("float32"), 230.0) == [0x4366, 0x0000]
    assert encode(vdef("float32", "little"), 230.0) == [0x0000, 0x4366]


def test_integer_vectors_and_word_order() -> None:
    assert decode_raw("int16", "big", [0xFFFE]) == -2
    assert decode_raw("uint16", "big", [0xFFFE]) == 0xFFFE
    assert decode_raw("int32", "big", [0xFFFF, 0xFFFF]) == -1
    assert decode_raw("int32", "big", [0x0001, 0x0002]) == 0x0001_0002
    assert decode_raw("int32", "little", [0x0001, 0x0002]) == 0x0002_0001
    assert decode_raw("uint32", "big", [0x8000, 0x0000]) == 2**31
    assert decode_raw("uint64", "big", [0x0001, 0x0002, 0x0003, 0x0004]) == 0x0001_0002_0003_0004
    assert decode_raw("uint64", "little", [0x0001, 0x0002, 0x0003, 0x0004]) == 0x0004_0003_0002_0001


def test_scale_gives_the_decimal_the_meter_meant() -> None:
    # Carlo Gavazzi EM340: 230.1 V as INT32 x10, least significant word first.
    assert decode(vdef("int32", "little", 0.1), [0x08FD, 0x0000]) == 230.1
    # ABB: current 12.34 A as UINT32 x100; energy 12345.67 kWh as UINT64 x100.
    assert decode(vdef("uint32", "big", 0.01), [0x0000, 1234]) == 12.34
    assert decode(vdef("uint64", "big", 0.01), encode_raw("uint64", "big", 1234567)) == 12345.67
    # Power factor -0.87 as INT16 x1000.
    assert decode(vdef("int16", "big", 0.001), [(-870) & 0xFFFF]) == -0.87
    assert encode(vdef("int16", "big", 0.001), -0.87) == [(-870) & 0xFFFF]
    # A scale above 1 (meter counts in kW, value in W).
    assert decode(vdef("int32", "big", 1000), [0, 7]) == 7000.0
    assert encode(vdef("int32", "big", 1000), 7000.0) == [0, 7]


def test_float32_nan_and_infinity_are_returned_not_rejected() -> None:
    assert math.isnan(decode(vdef("float32"), [0x7FC0, 0x0000]))
    assert decode(vdef("float32"), [0x7F80, 0x0000]) == math.inf
    assert decode(vdef("float32"), [0xFF80, 0x0000]) == -math.inf
    assert encode(vdef("float32"), math.inf) == [0x7F80, 0x0000]


@pytest.mark.parametrize(
    ("type_", "regs"),
    [("float32", [1]), ("int16", [1, 2]), ("uint64", [1, 2, 3]), ("uint16", [0x10000]), ("int32", [-1, 0])],
)
def test_decode_rejects_wrong_register_count_or_non_words(type_: str, regs: list[int]) -> None:
    with pytest.raises(ValueError):
        decode(vdef(type_), regs)


@pytest.mark.parametrize(
    ("type_", "value"),
    [
        ("int16", 32768.0),
        ("uint16", -1.0),
        ("uint32", 2.0**32),
        ("int32", math.nan),
        ("uint64", math.inf),
        ("float32", 1e39),
    ],
)
def test_encode_rejects_values_the_type_cannot_hold(type_: str, value: float) -> None:
    with pytest.raises(ValueError):
        encode(vdef(type_), value)


def test_encode_raw_rejects_fractional_raw_for_integer_types() -> None:
    with pytest.raises(ValueError):
        encode_raw("int32", "big", 1.5)
    assert encode_raw("int32", "big", 2.0) == [0, 2]


@given(
    type_=st.sampled_from(list(DataType)),
    order=st.sampled_from(list(WordOrder)),
    data=st.data(),
)
def test_registers_round_trip_through_decode_raw_and_encode_raw(
    type_: DataType, order: WordOrder, data: st.DataObject
) -> None:
    regs = data.draw(st.lists(words, min_size=register_count(type_), max_size=register_count(type_)))
    raw = decode_raw(type_, order, regs)
    if type_ is DataType.FLOAT32 and math.isnan(raw):
        # NaN payloads may be quietened by the float32 -> double conversion; NaN-ness survives.
        assert math.isnan(decode_raw(type_, order, encode_raw(type_, order, raw)))
        return
    assert encode_raw(type_, order, raw) == regs


@given(
    type_=st.sampled_from([t for t in DataType if t is not DataType.FLOAT32]),
    order=st.sampled_from(list(WordOrder)),
    scale=st.sampled_from([1.0, 0.1, 0.01, 0.001, 10.0, 0.5]),
    data=st.data(),
)
def test_integer_values_round_trip_through_encode_and_decode(
    type_: DataType, order: WordOrder, scale: float, data: st.DataObject
) -> None:
    lo, hi = INT_RANGES[type_]
    # Decoded values are floats: raw values within 2**53 (2**48 once scaled, leaving room for the
    # rounding of the multiplication) map back to the same registers.
    limit = 2**53 if scale == 1.0 else 2**48
    raw = data.draw(st.integers(min_value=max(lo, -limit), max_value=min(hi, limit)))
    v = vdef(type_, order, scale)
    regs = encode_raw(type_, order, raw)
    value = decode(v, regs)
    assert encode(v, value) == regs
    assert decode(v, encode(v, value)) == value


@given(
    order=st.sampled_from(list(WordOrder)),
    x=st.floats(width=32, allow_nan=False),
)
def test_float32_values_round_trip_exactly(order: WordOrder, x: float) -> None:
    v = vdef("float32", order)
    assert decode(v, encode(v, x)) == x


@given(order=st.sampled_from(list(WordOrder)), x=st.floats(allow_nan=False, allow_infinity=False, width=64))
def test_float32_encode_rounds_to_nearest_single(order: WordOrder, x: float) -> None:
    v = vdef("float32", order)
    try:
        expected = struct.unpack(">f", struct.pack(">f", x))[0]
    except OverflowError:
        with pytest.raises(ValueError):
            encode(v, x)
        return
    assert decode(v, encode(v, x)) == expected


# CRC-16/MODBUS vectors: the brief's read request, the Modbus over Serial Line V1.02 appendix
# example (02 07 -> 0x1241, sent 41 12) and the catalogue check value for "123456789" (0x4B37).
@pytest.mark.parametrize(
    ("frame", "crc", "wire"),
    [
        ("01030000000A", 0xCDC5, "C5CD"),
        ("0207", 0x1241, "4112"),
        ("313233343536373839", 0x4B37, "374B"),
        ("", 0xFFFF, "FFFF"),
    ],
)
def test_crc16_vectors(frame: str, crc: int, wire: str) -> None:
    data = bytes.fromhex(frame)
    assert crc16(data) == crc
    assert append_crc(data) == data + bytes.fromhex(wire)


@given(st.binary(max_size=256))
def test_a_frame_with_its_crc_appended_checks_to_zero(data: bytes) -> None:
    assert crc16(append_crc(data)) == 0


@given(st.binary(min_size=1, max_size=64), st.integers(min_value=0, max_value=7), st.data())
def test_crc16_detects_any_single_bit_flip(data: bytes, bit: int, d: st.DataObject) -> None:
    i = d.draw(st.integers(min_value=0, max_value=len(data) - 1))
    flipped = bytearray(data)
    flipped[i] ^= 1 << bit
    assert crc16(bytes(flipped)) != crc16(data)


def test_rtu_frame_bytes_for_reads() -> None:
    assert rtu_frame_bytes(3, 10) == (8, 25)
    assert rtu_frame_bytes(Function.INPUT, 1) == (8, 7)
    assert rtu_frame_bytes(4, 125) == (8, 255)
    # The request is really 8 bytes: unit, function, address, count, CRC.
    assert len(append_crc(bytes.fromhex("01030000000A"))) == rtu_frame_bytes(3, 10)[0]


@pytest.mark.parametrize(("function", "count"), [(6, 1), (16, 1), (3, 0), (4, 126)])
def test_rtu_frame_bytes_rejects_non_reads_and_bad_counts(function: int, count: int) -> None:
    with pytest.raises(ValueError):
        rtu_frame_bytes(function, count)
