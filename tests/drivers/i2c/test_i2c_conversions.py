"""Pure core of the I2C drivers: CRC, conversions, BME280 compensation, dew point, stuck detection.

Datasheet vectors where the datasheets give them; property-based round trips everywhere else.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from drivers.i2c import bme280, sht3x, sht4x
from drivers.i2c.bme280 import (
    Bme280Calibration,
    Oversampling,
    compensate_humidity,
    compensate_pressure,
    compensate_temperature,
    decode_data,
    measurement_time_max_ms,
    measurement_time_typ_ms,
)
from drivers.i2c.reading import ClimateReading, Quality, StuckDetector, dew_point_c
from drivers.i2c.sensirion import CrcMismatch, crc8, decode_words, encode_words
from drivers.sim.i2c import (
    DATASHEET_CALIBRATION,
    encode_calibration,
    humidity_double,
    pressure_double_pa,
    t_fine_double,
)

CAL = Bme280Calibration(**DATASHEET_CALIBRATION)
words = st.integers(min_value=0, max_value=0xFFFF)

# --------------------------------------------------------------------------------------------------
# Sensirion CRC-8 (SHT3x datasheet §4.12 / SHT4x datasheet §4.4)


def test_crc8_matches_the_sensirion_datasheet_example() -> None:
    assert crc8(b"\xbe\xef") == 0x92


def test_crc8_of_empty_input_is_the_init_value() -> None:
    assert crc8(b"") == 0xFF


@given(st.lists(words, min_size=1, max_size=4))
def test_sensirion_words_round_trip_through_the_wire_format(ws: list[int]) -> None:
    wire = encode_words(ws)
    assert len(wire) == 3 * len(ws)
    assert decode_words(wire) == ws


@given(st.lists(words, min_size=1, max_size=3), st.data())
def test_any_single_bit_error_in_a_sensirion_word_is_detected(
    ws: list[int], data: st.DataObject
) -> None:
    wire = bytearray(encode_words(ws))
    bit = data.draw(st.integers(min_value=0, max_value=len(wire) * 8 - 1))
    wire[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(CrcMismatch) as exc:
        decode_words(bytes(wire))
    assert exc.value.index == (bit // 8) // 3


def test_crc_mismatch_names_word_and_both_crcs() -> None:
    wire = bytearray(encode_words([0xBEEF]))
    wire[2] = 0x00
    with pytest.raises(CrcMismatch, match=r"word 0 \(0xbeef\): received 0x00, expected 0x92"):
        decode_words(bytes(wire))


def test_decode_words_rejects_a_truncated_response() -> None:
    with pytest.raises(ValueError):
        decode_words(b"\xbe\xef")


# --------------------------------------------------------------------------------------------------
# SHT3x: T = -45 + 175 S/65535, RH = 100 S/65535


def test_sht3x_conversion_end_points() -> None:
    assert sht3x.temperature_c(0) == -45.0
    assert sht3x.temperature_c(0xFFFF) == 130.0
    assert sht3x.humidity_rh(0) == 0.0
    assert sht3x.humidity_rh(0xFFFF) == 100.0


def test_sht3x_conversion_of_a_known_code() -> None:
    # 0x6666 = 26214 = 0.4 * 65535: -45 + 175 * 0.4 = 25 °C; 100 * 0x8000 / 65535 = 50.0008 %RH
    assert sht3x.temperature_c(0x6666) == pytest.approx(25.0, abs=1e-12)
    assert sht3x.humidity_rh(0x8000) == pytest.approx(50.00076, abs=1e-5)


@given(words)
def test_sht3x_raw_to_physical_to_raw_is_identity(raw: int) -> None:
    assert sht3x.raw_from_temperature(sht3x.temperature_c(raw)) == raw
    assert sht3x.raw_from_humidity(sht3x.humidity_rh(raw)) == raw


@given(st.floats(min_value=-45, max_value=130), st.floats(min_value=0, max_value=100))
def test_sht3x_physical_to_raw_to_physical_is_within_half_a_code(t: float, rh: float) -> None:
    assert abs(sht3x.temperature_c(sht3x.raw_from_temperature(t)) - t) <= 175 / 65535 / 2 + 1e-9
    assert abs(sht3x.humidity_rh(sht3x.raw_from_humidity(rh)) - rh) <= 100 / 65535 / 2 + 1e-9


def test_sht3x_measurement_decoding_checks_both_crcs() -> None:
    wire = encode_words([0x6666, 0x8000])
    assert sht3x.decode_measurement(wire) == (0x6666, 0x8000)
    bad = bytearray(wire)
    bad[5] ^= 0x01
    with pytest.raises(CrcMismatch) as exc:
        sht3x.decode_measurement(bytes(bad))
    assert exc.value.index == 1


def test_sht3x_sample_flags_temperatures_outside_the_specified_range() -> None:
    assert sht3x.sample_from_raw(sht3x.raw_from_temperature(25.0), 0x8000).out_of_range == ""
    assert "outside -40..125" in sht3x.sample_from_raw(0, 0x8000).out_of_range
    assert "outside" in sht3x.sample_from_raw(0xFFFF, 0x8000).out_of_range


# --------------------------------------------------------------------------------------------------
# SHT4x: T = -45 + 175 S/65535, RH = -6 + 125 S/65535 cropped to 0..100


def test_sht4x_conversion_end_points_and_cropping() -> None:
    assert sht4x.temperature_c(0) == -45.0
    assert sht4x.temperature_c(0xFFFF) == 130.0
    assert sht4x.humidity_rh_unclamped(0) == -6.0
    assert sht4x.humidity_rh_unclamped(0xFFFF) == 119.0
    assert sht4x.humidity_rh(0) == 0.0  # cropped
    assert sht4x.humidity_rh(0xFFFF) == 100.0  # cropped
    assert sht4x.humidity_rh(0x8000) == pytest.approx(-6 + 125 * 32768 / 65535)


@given(words)
def test_sht4x_raw_to_physical_to_raw_is_identity(raw: int) -> None:
    assert sht4x.raw_from_temperature(sht4x.temperature_c(raw)) == raw
    assert sht4x.raw_from_humidity(sht4x.humidity_rh_unclamped(raw)) == raw


@given(words)
def test_sht4x_cropped_humidity_is_always_within_0_and_100(raw: int) -> None:
    rh = sht4x.humidity_rh(raw)
    assert 0.0 <= rh <= 100.0
    if 0.0 < sht4x.humidity_rh_unclamped(raw) < 100.0:
        assert rh == sht4x.humidity_rh_unclamped(raw)


# --------------------------------------------------------------------------------------------------
# BME280 (datasheet §4.2.3 integer compensation; worked example BMP280 datasheet §3.12, same T/P
# formulas: adc_T 519888 -> 25.08 °C, t_fine 128422; adc_P 415148 -> 100653.27 Pa (double),
# 100653 Pa (int32), 25767236/256 Pa (int64, "may deviate slightly due to integer rounding")).


def test_bme280_temperature_matches_the_bosch_worked_example() -> None:
    t_centi, t_fine = compensate_temperature(519888, CAL)
    assert t_centi == 2508
    assert t_fine == 128422


def test_bme280_pressure_matches_the_bosch_worked_example() -> None:
    p_q24_8 = compensate_pressure(415148, 128422, CAL)
    # The published 64-bit formula yields 25767233; the datasheet table prints 25767236 and says the
    # integer result may deviate slightly: 3/256 Pa = 0.012 Pa.
    assert p_q24_8 == 25767233
    assert abs(p_q24_8 - 25767236) <= 4
    assert p_q24_8 / 256 == pytest.approx(100653.27, abs=0.03)


def test_double_formulas_of_the_simulator_match_the_worked_example_intermediates() -> None:
    t_fine = t_fine_double(519888, DATASHEET_CALIBRATION)
    assert t_fine / 5120 == pytest.approx(25.08, abs=0.005)
    assert int(t_fine) == 128422
    assert pressure_double_pa(415148, t_fine, DATASHEET_CALIBRATION) == pytest.approx(
        100653.27, abs=0.005
    )


def test_bme280_pressure_with_zero_p1_returns_zero_instead_of_dividing_by_zero() -> None:
    broken = Bme280Calibration(**{**DATASHEET_CALIBRATION, "dig_P1": 0})
    assert compensate_pressure(415148, 128422, broken) == 0


def test_bme280_humidity_is_clamped_to_0_and_100_percent() -> None:
    _, t_fine = compensate_temperature(519888, CAL)
    assert compensate_humidity(0, t_fine, CAL) == 0
    assert compensate_humidity(0xFFFF, t_fine, CAL) == 100 * 1024  # 419430400 >> 12


@given(st.integers(min_value=313708, max_value=712471), st.integers(min_value=0, max_value=0xFFFF))
def test_bme280_integer_humidity_agrees_with_the_datasheet_double_formula(
    adc_t: int, adc_h: int
) -> None:
    # Two independent datasheet formulas (§4.2.3 int32, §8.1 double) over -40..85 °C and all codes.
    _, t_fine = compensate_temperature(adc_t, CAL)
    h_int = compensate_humidity(adc_h, t_fine, CAL) / 1024
    h_double = humidity_double(
        adc_h, t_fine_double(adc_t, DATASHEET_CALIBRATION), DATASHEET_CALIBRATION
    )
    assert h_int == pytest.approx(h_double, abs=0.02)


@given(
    st.integers(min_value=313708, max_value=712471), st.integers(min_value=361088, max_value=829551)
)
def test_bme280_integer_pressure_agrees_with_the_datasheet_double_formula(
    adc_t: int, adc_p: int
) -> None:
    _, t_fine = compensate_temperature(adc_t, CAL)
    p_double = pressure_double_pa(
        adc_p, t_fine_double(adc_t, DATASHEET_CALIBRATION), DATASHEET_CALIBRATION
    )
    assume(30000 <= p_double <= 110000)
    assert compensate_pressure(adc_p, t_fine, CAL) / 256 == pytest.approx(p_double, abs=0.5)


@given(st.integers(min_value=313708, max_value=712470))
def test_bme280_temperature_is_monotonic_in_the_adc_code(adc_t: int) -> None:
    assert compensate_temperature(adc_t + 16, CAL)[0] >= compensate_temperature(adc_t, CAL)[0]


def test_c_division_truncates_toward_zero() -> None:
    assert bme280._c_div(7, 2) == 3
    assert bme280._c_div(-7, 2) == -3
    assert bme280._c_div(7, -2) == -3
    assert bme280._c_div(-7, -2) == 3


def test_bme280_calibration_parses_the_datasheet_register_layout() -> None:
    block1, block2 = encode_calibration(DATASHEET_CALIBRATION)
    assert block1[:2] == bytes([0x70, 0x6B])  # dig_T1 = 27504 = 0x6B70, little-endian at 0x88
    assert len(block1) == 26 and len(block2) == 7
    assert Bme280Calibration.from_registers(block1, block2) == CAL


def test_bme280_h4_h5_nibble_packing_with_negative_values() -> None:
    # 0xE4 = 0xFF, 0xE5 = 0x8E, 0xE6 = 0xF0: dig_H4 = 0xFF<<4 | 0xE = -2, dig_H5 = 0xF0<<4 | 0x8 = -248
    block1, _ = encode_calibration(DATASHEET_CALIBRATION)
    cal = Bme280Calibration.from_registers(
        block1, bytes([0x6A, 0x01, 0x00, 0xFF, 0x8E, 0xF0, 0x1E])
    )
    assert (cal.dig_H2, cal.dig_H3, cal.dig_H4, cal.dig_H5, cal.dig_H6) == (362, 0, -2, -248, 30)


s16 = st.integers(min_value=-32768, max_value=32767)
u16 = st.integers(min_value=0, max_value=0xFFFF)
s12 = st.integers(min_value=-2048, max_value=2047)
u8 = st.integers(min_value=0, max_value=255)
s8 = st.integers(min_value=-128, max_value=127)


@given(st.fixed_dictionaries({
    "dig_T1": u16, "dig_T2": s16, "dig_T3": s16, "dig_P1": u16, "dig_P2": s16, "dig_P3": s16,
    "dig_P4": s16, "dig_P5": s16, "dig_P6": s16, "dig_P7": s16, "dig_P8": s16, "dig_P9": s16,
    "dig_H1": u8, "dig_H2": s16, "dig_H3": u8, "dig_H4": s12, "dig_H5": s12, "dig_H6": s8,
}))  # fmt: skip
def test_bme280_calibration_round_trips_through_the_registers(values: dict[str, int]) -> None:
    assert Bme280Calibration.from_registers(*encode_calibration(values)) == Bme280Calibration(
        **values
    )


def test_bme280_data_block_decoding() -> None:
    # press 0x65 0x5A 0xC0 -> 0x655AC = 415148; temp 0x7E 0xED 0x00 -> 0x7EED0 = 519888; hum 0x6B 0x4C
    assert decode_data(bytes([0x65, 0x5A, 0xC0, 0x7E, 0xED, 0x00, 0x6B, 0x4C])) == (
        415148,
        519888,
        0x6B4C,
    )


def test_bme280_measurement_time_follows_the_datasheet_formula() -> None:
    x1, x16, skip = Oversampling.X1, Oversampling.X16, Oversampling.SKIPPED
    # §9.1: typ 1 + 2T + (2P + 0.5) + (2H + 0.5); max 1.25 + 2.3T + (2.3P + 0.575) + (2.3H + 0.575)
    assert measurement_time_typ_ms(x1, x1, x1) == pytest.approx(8.0)
    assert measurement_time_max_ms(x1, x1, x1) == pytest.approx(9.3)
    assert measurement_time_max_ms(x16, x16, x16) == pytest.approx(112.8)
    assert measurement_time_max_ms(x1, skip, skip) == pytest.approx(3.55)
    assert measurement_time_typ_ms(Oversampling.X2, Oversampling.X16, skip) == pytest.approx(37.5)


def test_bme280_sample_marks_skipped_channels_and_out_of_range_values() -> None:
    sample = bme280.sample_from_raw(415148, 519888, 0x8000, CAL)
    assert sample.temperature_c == 25.08
    assert sample.humidity_rh is None
    assert "humidity not measured" in sample.out_of_range
    assert (
        "temperature not measured"
        in bme280.sample_from_raw(415148, 0x80000, 0x6000, CAL).out_of_range
    )
    hot = bme280.sample_from_raw(415148, 0xFFFFF, 0x6000, CAL)  # bus stuck at 0xFF
    assert "outside -40..85" in hot.out_of_range


# --------------------------------------------------------------------------------------------------
# Dew point (Magnus, Sensirion constants beta 17.62, lambda 243.12 °C)


def test_dew_point_of_a_known_condition() -> None:
    # 25 °C, 60 %RH: gamma = ln(0.6) + 17.62*25/268.12 = 1.13212...; Td = 243.12 g / (17.62 - g)
    assert dew_point_c(25.0, 60.0) == pytest.approx(16.693, abs=0.001)
    # 0 °C, 50 %RH: gamma = ln(0.5); Td = 243.12 * -0.693147 / (17.62 + 0.693147) = -9.2020
    assert dew_point_c(0.0, 50.0) == pytest.approx(-9.2020, abs=0.001)


@given(st.floats(min_value=-40, max_value=60))
def test_dew_point_equals_temperature_at_saturation(t: float) -> None:
    assert dew_point_c(t, 100.0) == pytest.approx(t, abs=1e-9)


@given(st.floats(min_value=-40, max_value=60), st.floats(min_value=1, max_value=99))
def test_dew_point_is_below_temperature_and_rises_with_humidity(t: float, rh: float) -> None:
    assert dew_point_c(t, rh) < t
    assert dew_point_c(t, rh) < dew_point_c(t, min(100.0, rh + 1.0))


@pytest.mark.parametrize("rh", [0.0, -1.0, 100.5, math.nan])
def test_dew_point_rejects_impossible_humidity(rh: float) -> None:
    with pytest.raises(ValueError):
        dew_point_c(20.0, rh)


# --------------------------------------------------------------------------------------------------
# Stuck detection (pure)


def test_stuck_detector_flags_after_n_identical_raw_values() -> None:
    d = StuckDetector(threshold=3)
    assert [d.observe((1, 2)) for _ in range(3)] == [1, 2, 3]
    assert d.is_stuck()
    assert d.observe((1, 3)) == 1
    assert not d.is_stuck()


def test_stuck_detector_reset_forgets_history() -> None:
    d = StuckDetector(threshold=2)
    d.observe(7)
    d.reset()
    assert d.observe(7) == 1


@given(
    st.lists(st.integers(min_value=0, max_value=2), max_size=40),
    st.integers(min_value=2, max_value=6),
)
def test_stuck_detector_count_is_the_length_of_the_trailing_run(
    values: list[int], threshold: int
) -> None:
    d = StuckDetector(threshold)
    for v in values:
        d.observe(v)
    run = 0
    for v in reversed(values):
        if v != values[-1]:
            break
        run += 1
    assert d.count == run
    assert d.is_stuck() == (run >= threshold)


def test_stuck_detector_needs_at_least_two_readings() -> None:
    with pytest.raises(ValueError):
        StuckDetector(1)


def test_missing_reading_has_no_values() -> None:
    r = ClimateReading.missing("cab", "SHT3x", 0x44, 1, "bus 1 address 0x44: no ACK (SHT3x)")
    assert r.quality is Quality.MISSING and not r.ok
    assert (r.temperature_c, r.humidity_rh, r.pressure_hpa) == (None, None, None)
