"""Bosch BME280 temperature, pressure and humidity sensor in forced mode, over SMBus byte reads.

Sequence (BME280 datasheet BST-BME280-DS002, §3.3.3 forced mode, §5 registers):

1. First use: chip id at 0xD0 must be 0x60 (0x58 is a BMP280, which has no humidity). Read the
   trimming parameters: 26 bytes at 0x88..0xA1 and 7 bytes at 0xE1..0xE7 (Table 16). Write
   ``config`` (0xF5: IIR filter off) and ``ctrl_hum`` (0xF2), which only takes effect with the next
   write to ``ctrl_meas``.
2. Each reading: write ``ctrl_meas`` (0xF4) = ``osrs_t << 5 | osrs_p << 2 | 0b01`` (forced mode),
   wait the maximum measurement time of Appendix B (§9.1), check ``status`` (0xF3) bit 3
   ``measuring`` is clear, then burst-read the eight data registers 0xF7..0xFE.
3. Compensate with the datasheet's integer formulas (§4.2.3 ``BME280_compensate_T_int32``,
   ``BME280_compensate_P_int64``, ``bme280_compensate_H_int32``). They are transcribed below with
   C semantics: ``>>`` is an arithmetic shift (Python's ``>>`` on ints is the same) and the one
   integer division truncates toward zero (``_c_div``). With real trimming values the intermediates
   stay inside the C types (int32 for T and H, int64 for P), so Python's ints give the C results.

The conversions are pure; :class:`Bme280` is the thin I/O part. Default oversampling is x1 for all
three channels, filter off: Bosch's recommended "weather monitoring" setting (§3.5.1).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from .bus import I2cBus
from .errors import I2cTimeout, I2cWrongChip
from .sensor import ClimateSensor, RawSample

__all__ = [
    "BME280_ADDRESSES",
    "CHIP_IDS",
    "Bme280",
    "Bme280Calibration",
    "Oversampling",
    "compensate_humidity",
    "compensate_pressure",
    "compensate_temperature",
    "decode_data",
    "measurement_time_max_ms",
    "measurement_time_typ_ms",
]

BME280_ADDRESSES = (0x76, 0x77)  # SDO to GND / VDDIO

# Registers (datasheet Table 18).
REG_CALIB_00 = 0x88  # 0x88..0xA1, 26 bytes (0xA0 unused, 0xA1 = dig_H1)
REG_CHIP_ID = 0xD0
REG_RESET = 0xE0
REG_CALIB_26 = 0xE1  # 0xE1..0xE7, 7 bytes
REG_CTRL_HUM = 0xF2
REG_STATUS = 0xF3
REG_CTRL_MEAS = 0xF4
REG_CONFIG = 0xF5
REG_DATA = 0xF7  # press_msb .. hum_lsb, 8 bytes
CALIB_00_LEN = 26
CALIB_26_LEN = 7
DATA_LEN = 8

CHIP_ID_BME280 = 0x60
CHIP_IDS = {0x60: "BME280", 0x58: "BMP280", 0x57: "BMP280", 0x56: "BMP280", 0x61: "BME680"}
RESET_WORD = 0xB6
STATUS_MEASURING = 0x08
STATUS_IM_UPDATE = 0x01
MODE_FORCED = 0b01
START_UP_S = 0.002  # t_startup max 2 ms (datasheet Table 1), also after soft reset
SKIPPED_20BIT = 0x80000  # value of a skipped (or never run) temperature/pressure measurement
SKIPPED_16BIT = 0x8000  # value of a skipped humidity measurement

TEMPERATURE_SPEC_C = (-40.0, 85.0)  # operating range, Table 1
PRESSURE_SPEC_HPA = (300.0, 1100.0)  # operating range, Table 2


class Oversampling(enum.IntEnum):
    """``osrs_x`` register codes (Tables 20, 22, 23). The factor is ``2 ** (code - 1)``."""

    SKIPPED = 0
    X1 = 1
    X2 = 2
    X4 = 3
    X8 = 4
    X16 = 5

    @property
    def factor(self) -> int:
        return 0 if self is Oversampling.SKIPPED else 1 << (self.value - 1)


def measurement_time_typ_ms(
    osrs_t: Oversampling, osrs_p: Oversampling, osrs_h: Oversampling
) -> float:
    """Typical measurement time, datasheet §9.1: ``1 + 2·T + (2·P + 0.5) + (2·H + 0.5)`` ms.

    ``T``, ``P``, ``H`` are the oversampling factors; a skipped channel adds nothing.
    """
    t = 1.0 + 2.0 * osrs_t.factor
    if osrs_p.factor:
        t += 2.0 * osrs_p.factor + 0.5
    if osrs_h.factor:
        t += 2.0 * osrs_h.factor + 0.5
    return t


def measurement_time_max_ms(
    osrs_t: Oversampling, osrs_p: Oversampling, osrs_h: Oversampling
) -> float:
    """Maximum measurement time, §9.1: ``1.25 + 2.3·T + (2.3·P + 0.575) + (2.3·H + 0.575)`` ms."""
    t = 1.25 + 2.3 * osrs_t.factor
    if osrs_p.factor:
        t += 2.3 * osrs_p.factor + 0.575
    if osrs_h.factor:
        t += 2.3 * osrs_h.factor + 0.575
    return t


def _u16(lo: int, hi: int) -> int:
    return lo | (hi << 8)


def _s16(lo: int, hi: int) -> int:
    v = _u16(lo, hi)
    return v - 0x10000 if v & 0x8000 else v


def _s8(v: int) -> int:
    return v - 0x100 if v & 0x80 else v


@dataclass(frozen=True)
class Bme280Calibration:
    """The trimming parameters (``dig_*``) of one part, as in datasheet Table 16."""

    dig_T1: int
    dig_T2: int
    dig_T3: int
    dig_P1: int
    dig_P2: int
    dig_P3: int
    dig_P4: int
    dig_P5: int
    dig_P6: int
    dig_P7: int
    dig_P8: int
    dig_P9: int
    dig_H1: int
    dig_H2: int
    dig_H3: int
    dig_H4: int
    dig_H5: int
    dig_H6: int

    @classmethod
    def from_registers(cls, calib00: bytes, calib26: bytes) -> Bme280Calibration:
        """Parse 0x88..0xA1 (26 bytes) and 0xE1..0xE7 (7 bytes).

        ``dig_H4`` = 0xE4[7:0] << 4 | 0xE5[3:0] and ``dig_H5`` = 0xE6[7:0] << 4 | 0xE5[7:4], both
        signed (the MSB byte carries the sign), as the datasheet and Bosch's BME280_SensorAPI do.
        """
        if len(calib00) != CALIB_00_LEN or len(calib26) != CALIB_26_LEN:
            raise ValueError(f"calibration blocks must be {CALIB_00_LEN} and {CALIB_26_LEN} bytes")
        c, e = calib00, calib26
        return cls(
            dig_T1=_u16(c[0], c[1]),
            dig_T2=_s16(c[2], c[3]),
            dig_T3=_s16(c[4], c[5]),
            dig_P1=_u16(c[6], c[7]),
            dig_P2=_s16(c[8], c[9]),
            dig_P3=_s16(c[10], c[11]),
            dig_P4=_s16(c[12], c[13]),
            dig_P5=_s16(c[14], c[15]),
            dig_P6=_s16(c[16], c[17]),
            dig_P7=_s16(c[18], c[19]),
            dig_P8=_s16(c[20], c[21]),
            dig_P9=_s16(c[22], c[23]),
            dig_H1=c[25],
            dig_H2=_s16(e[0], e[1]),
            dig_H3=e[2],
            dig_H4=(_s8(e[3]) * 16) | (e[4] & 0x0F),
            dig_H5=(_s8(e[5]) * 16) | (e[4] >> 4),
            dig_H6=_s8(e[6]),
        )


def _c_div(a: int, b: int) -> int:
    """C integer division (truncates toward zero), unlike Python's ``//`` (floors)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def compensate_temperature(adc_t: int, cal: Bme280Calibration) -> tuple[int, int]:
    """``BME280_compensate_T_int32``: returns ``(T in 0.01 °C, t_fine)``; 5123 means 51.23 °C."""
    var1 = (((adc_t >> 3) - (cal.dig_T1 << 1)) * cal.dig_T2) >> 11
    var2 = (((((adc_t >> 4) - cal.dig_T1) * ((adc_t >> 4) - cal.dig_T1)) >> 12) * cal.dig_T3) >> 14
    t_fine = var1 + var2
    return (t_fine * 5 + 128) >> 8, t_fine


def compensate_pressure(adc_p: int, t_fine: int, cal: Bme280Calibration) -> int:
    """``BME280_compensate_P_int64``: pressure in Pa as Q24.8 (divide by 256); 0 if trimming is bad."""
    var1 = t_fine - 128000
    var2 = var1 * var1 * cal.dig_P6
    var2 = var2 + ((var1 * cal.dig_P5) << 17)
    var2 = var2 + (cal.dig_P4 << 35)
    var1 = ((var1 * var1 * cal.dig_P3) >> 8) + ((var1 * cal.dig_P2) << 12)
    var1 = (((1 << 47) + var1) * cal.dig_P1) >> 33
    if var1 == 0:
        return 0  # avoid an exception caused by division by zero
    p = 1048576 - adc_p
    p = _c_div(((p << 31) - var2) * 3125, var1)
    var1 = (cal.dig_P9 * (p >> 13) * (p >> 13)) >> 25
    var2 = (cal.dig_P8 * p) >> 19
    return ((p + var1 + var2) >> 8) + (cal.dig_P7 << 4)


def compensate_humidity(adc_h: int, t_fine: int, cal: Bme280Calibration) -> int:
    """``bme280_compensate_H_int32``: humidity in %RH as Q22.10 (divide by 1024), 0..102400."""
    v = t_fine - 76800
    v = ((((adc_h << 14) - (cal.dig_H4 << 20) - (cal.dig_H5 * v)) + 16384) >> 15) * (
        (
            (((((v * cal.dig_H6) >> 10) * (((v * cal.dig_H3) >> 11) + 32768)) >> 10) + 2097152)
            * cal.dig_H2
            + 8192
        )
        >> 14
    )
    v = v - (((((v >> 15) * (v >> 15)) >> 7) * cal.dig_H1) >> 4)
    v = min(max(v, 0), 419430400)  # (v < 0 ? 0 : v); (v > 419430400 ? 419430400 : v)
    return v >> 12


def decode_data(data: bytes) -> tuple[int, int, int]:
    """The 8 data bytes (0xF7..0xFE) to ``(adc_P, adc_T, adc_H)`` (20, 20 and 16 bits)."""
    if len(data) != DATA_LEN:
        raise ValueError(f"BME280 data block is {DATA_LEN} bytes, got {len(data)}")
    d = data
    adc_p = (d[0] << 12) | (d[1] << 4) | (d[2] >> 4)
    adc_t = (d[3] << 12) | (d[4] << 4) | (d[5] >> 4)
    adc_h = (d[6] << 8) | d[7]
    return adc_p, adc_t, adc_h


def sample_from_raw(adc_p: int, adc_t: int, adc_h: int, cal: Bme280Calibration) -> RawSample:
    """Pure: ADC codes and trimming to a :class:`RawSample` with the range checks."""
    raw = (adc_p, adc_t, adc_h)
    if adc_t == SKIPPED_20BIT:
        return RawSample(
            raw, None, None, None, "temperature not measured (adc_T = 0x80000, reset value)"
        )
    t_centi, t_fine = compensate_temperature(adc_t, cal)
    t = t_centi / 100.0
    p = None if adc_p == SKIPPED_20BIT else compensate_pressure(adc_p, t_fine, cal) / 256.0 / 100.0
    h = None if adc_h == SKIPPED_16BIT else compensate_humidity(adc_h, t_fine, cal) / 1024.0
    why = []
    if not TEMPERATURE_SPEC_C[0] <= t <= TEMPERATURE_SPEC_C[1]:
        why.append(
            f"temperature {t:.2f} °C outside {TEMPERATURE_SPEC_C[0]:g}..{TEMPERATURE_SPEC_C[1]:g} °C"
        )
    if p is None:
        why.append("pressure not measured (adc_P = 0x80000)")
    elif not PRESSURE_SPEC_HPA[0] <= p <= PRESSURE_SPEC_HPA[1]:
        why.append(
            f"pressure {p:.2f} hPa outside {PRESSURE_SPEC_HPA[0]:g}..{PRESSURE_SPEC_HPA[1]:g} hPa"
        )
    if h is None:
        why.append("humidity not measured (adc_H = 0x8000)")
    return RawSample(raw, t, h, p, "; ".join(why))


class Bme280(ClimateSensor):
    """BME280 on an :class:`~drivers.i2c.bus.I2cBus` at 0x76 (default) or 0x77, forced mode.

    ``options`` are those of :class:`~drivers.i2c.sensor.ClimateSensor`.
    """

    model = "BME280"

    def __init__(
        self,
        bus: I2cBus,
        address: int = 0x76,
        *,
        osrs_t: Oversampling = Oversampling.X1,
        osrs_p: Oversampling = Oversampling.X1,
        osrs_h: Oversampling = Oversampling.X1,
        status_polls: int = 5,
        **options: Any,
    ) -> None:
        super().__init__(bus, address, **options)
        if osrs_t is Oversampling.SKIPPED:
            raise ValueError(
                "temperature oversampling cannot be skipped: P and H compensation need t_fine"
            )
        self.osrs_t, self.osrs_p, self.osrs_h = osrs_t, osrs_p, osrs_h
        self.status_polls = status_polls
        self.calibration: Bme280Calibration | None = None
        self._configured = False

    @property
    def measurement_delay_s(self) -> float:
        return measurement_time_max_ms(self.osrs_t, self.osrs_p, self.osrs_h) / 1000.0

    def _read_reg(self, register: int) -> int:
        return self._xfer(
            f"read 0x{register:02x}", lambda b: b.read_byte_data(self.address, register)
        )

    def _write_reg(self, register: int, value: int) -> None:
        self._xfer(
            f"write 0x{register:02x}", lambda b: b.write_byte_data(self.address, register, value)
        )

    def _read_block(self, register: int, length: int) -> bytes:
        return bytes(
            self._xfer(
                f"read 0x{register:02x}+{length}",
                lambda b: b.read_i2c_block_data(self.address, register, length),
            )
        )

    def read_chip_id(self) -> int:
        """Register 0xD0 (0x60 for a BME280). Raises ``I2cError``."""
        with self._lock:
            return self._read_reg(REG_CHIP_ID)

    def identify(self) -> str:
        chip_id = self.read_chip_id()
        return f"{CHIP_IDS.get(chip_id, 'unknown')} chip id 0x{chip_id:02x}"

    def _ensure_configured(self) -> None:
        if self._configured:
            return
        chip_id = self._read_reg(REG_CHIP_ID)
        if chip_id != CHIP_ID_BME280:
            other = CHIP_IDS.get(chip_id, "unknown chip")
            raise I2cWrongChip(
                self.bus.number,
                self.address,
                self.model,
                f"chip id 0x{chip_id:02x} ({other}), expected 0x{CHIP_ID_BME280:02x}",
            )
        self.calibration = Bme280Calibration.from_registers(
            self._read_block(REG_CALIB_00, CALIB_00_LEN),
            self._read_block(REG_CALIB_26, CALIB_26_LEN),
        )
        # config (filter, standby) is only written reliably in sleep mode, which forced mode returns to.
        self._write_reg(REG_CONFIG, 0x00)
        self._write_reg(REG_CTRL_HUM, int(self.osrs_h))
        self._configured = True

    def _measure_raw(self) -> RawSample:
        self._ensure_configured()
        assert self.calibration is not None
        self._write_reg(
            REG_CTRL_MEAS, (int(self.osrs_t) << 5) | (int(self.osrs_p) << 2) | MODE_FORCED
        )
        self._sleep(self.measurement_delay_s)
        for _ in range(self.status_polls):
            if not self._read_reg(REG_STATUS) & STATUS_MEASURING:
                break
            self._sleep(0.001)
        else:
            raise I2cTimeout(
                self.bus.number,
                self.address,
                self.model,
                f"still measuring {self.status_polls} ms after the maximum measurement time",
            )
        adc_p, adc_t, adc_h = decode_data(self._read_block(REG_DATA, DATA_LEN))
        return sample_from_raw(adc_p, adc_t, adc_h, self.calibration)

    def _soft_reset(self) -> None:
        self._configured = False  # registers return to their reset values: reconfigure next time
        self._write_reg(REG_RESET, RESET_WORD)
        self._sleep(START_UP_S)
