"""A simulated I2C bus with byte-level models of the SHT3x, SHT4x and BME280.

``SimulatedSMBus`` implements the smbus2 calls the drivers and the probe use (``i2c_rdwr`` with real
``smbus2.i2c_msg`` objects, ``read_byte``, ``write_quick``, ``read_byte_data``, ``write_byte_data``,
``read_i2c_block_data``, ``write_i2c_block_data``, ``close``, context manager), so one driver code
path runs on the gateway, in CI and in the demo. Every SMBus call is decomposed (once, in
``WireSMBus``) into what travels on the wire (a write of bytes, a read of N bytes) and handed to the
chip model at the address; ``drivers.sim.i2c_server`` sends the same transfers to another process.

The chip models behave like the datasheets say, including the parts drivers get wrong:

- **SHT3x / SHT4x**: commands are parsed; a measurement is ready only after its typical duration, and
  a read before that is NACKed (as the real chip does with clock stretching disabled); the data is
  read once; CRCs are real (Sensirion CRC-8); unknown commands are NACKed; serial numbers, status
  register (SHT3x) and soft reset are implemented.
- **BME280**: a register file with a real calibration block (default: the T/P trimming values of
  Bosch's worked example, BMP280 datasheet §3.12, plus humidity trimming representative of production
  parts); chip id 0x60; ``ctrl_hum`` latched by the next ``ctrl_meas`` write; forced mode sets
  ``status.measuring`` for the typical measurement time, then updates the data registers and returns
  to sleep; skipped channels read 0x80000/0x8000; soft reset (0xB6 to 0xE0) restores reset values.
  ADC codes are computed by inverting Bosch's floating-point compensation (datasheet §8.1) for the
  ground truth, independently of the integer formulas the driver uses, and quantised to the
  resolution the oversampling setting gives.

Ground truth: ``set_climate(t, rh, p)``. Noise: a few LSB (seeded, reproducible) so that a healthy
simulated sensor never looks stuck. Faults per device: ``nack`` (the address is not acknowledged:
``OSError(121)``), ``corrupt_crc(count)`` (Sensirion: corrupt a CRC byte of the next ``count``
measurements, ``None`` = always), ``stick()`` (the raw values freeze).
"""

from __future__ import annotations

import abc
import ctypes
import errno
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, ClassVar, Self

from smbus2 import i2c_msg
from smbus2.smbus2 import I2C_M_RD

from drivers.i2c.sensirion import encode_words

__all__ = [
    "DATASHEET_CALIBRATION",
    "ManualClock",
    "Nack",
    "SimulatedBme280",
    "SimulatedI2cDevice",
    "SimulatedSMBus",
    "SimulatedSht3x",
    "SimulatedSht4x",
    "WireSMBus",
    "encode_calibration",
    "humidity_double",
    "pressure_double_pa",
    "t_fine_double",
]

I2C_SMBUS_BLOCK_MAX = 32


class Nack(Exception):
    """Raised by a chip model to refuse a byte: the bus turns it into ``OSError(EREMOTEIO)``."""


class ManualClock:
    """Deterministic time for tests: ``sleep(s)`` advances ``monotonic()`` and ``time_ns()``.

    Pass ``clock=c.monotonic`` to the simulated devices and ``sleep=c.sleep, clock_ns=c.time_ns`` to
    a driver: measurements then take no real time and the chip still sees the driver's waits.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        with self._lock:
            return self._now

    def time_ns(self) -> int:
        with self._lock:
            return int(self._now * 1e9)

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self._now += max(0.0, seconds)

    advance = sleep


class SimulatedI2cDevice(abc.ABC):
    """One chip on the simulated bus: bytes in, bytes out, plus the faults common to every chip."""

    chip = "?"

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, noise_lsb: int = 2, seed: int = 0
    ) -> None:
        self.clock = clock
        self.noise_lsb = noise_lsb
        self._rng = random.Random(seed)
        self.nack = False  # fault: the chip does not acknowledge its address
        self._stuck = False
        self._stuck_clears_on_reset = False
        self.soft_resets = 0
        self.measurements = 0

    @abc.abstractmethod
    def write(self, data: bytes) -> None:
        """A write transfer (address ACKed already). Raise :class:`Nack` to refuse."""

    @abc.abstractmethod
    def read(self, length: int) -> bytes:
        """A read transfer of ``length`` bytes. Raise :class:`Nack` to refuse the read header."""

    @abc.abstractmethod
    def set_climate(
        self, temperature_c: float, humidity_rh: float, pressure_hpa: float | None = None
    ) -> None:
        """Set the ground truth the next measurements report."""

    def stick(self, *, clears_on_reset: bool = False) -> None:
        """Fault: from the next measurement on, the raw values never change (and carry valid CRCs)."""
        self._stuck = True
        self._stuck_clears_on_reset = clears_on_reset

    def clear_faults(self) -> None:
        self.nack = False
        self._stuck = False
        self._clear_stuck_values()

    def _on_soft_reset(self) -> None:
        self.soft_resets += 1
        if self._stuck and self._stuck_clears_on_reset:
            self._stuck = False
            self._clear_stuck_values()

    def _clear_stuck_values(self) -> None:
        """Forget frozen raw values (subclasses hold them)."""

    def _noise(self, lsb: int = 1) -> int:
        return self._rng.randint(-self.noise_lsb, self.noise_lsb) * lsb if self.noise_lsb else 0


class WireSMBus(abc.ABC):
    """The smbus2 calls the drivers and the probe use, decomposed into the two I2C wire transfers.

    A subclass supplies the wire: ``_write(address, data, stop=...)`` (address phase plus ``data``)
    and ``_read(address, length, stop=...)`` (address phase plus ``length`` bytes), each raising
    ``OSError`` as smbus2's ioctl does (a NACK is ``OSError(121)``). ``stop=False`` means a repeated
    START follows: the call's next transfer belongs to the same bus transaction (SMBus "read byte
    data" writes the register, then reads without releasing the bus). The decomposition is written
    once, here: :class:`SimulatedSMBus` hands the transfers to chip models in this process,
    :class:`drivers.sim.i2c_server.RemoteSMBus` sends them to a bench process over a socket.

    ``write_quick`` is a zero-length write (the SMBus Quick Command with the R/W bit clear).
    """

    def __init__(self, *, bus: int = 1) -> None:
        self.bus = bus
        self.closed = False
        self._lock = threading.RLock()

    # -- the wire (subclasses) ---------------------------------------------------------------------

    @abc.abstractmethod
    def _write(self, address: int, data: bytes, *, stop: bool = True) -> None:
        """One write transfer to ``address``; raise ``OSError`` (121 on NACK)."""

    @abc.abstractmethod
    def _read(self, address: int, length: int, *, stop: bool = True) -> bytes:
        """One read transfer of ``length`` bytes from ``address``; raise ``OSError`` (121: NACK)."""

    def _check(self, address: int) -> None:
        if self.closed:
            raise OSError(errno.EBADF, "bus is closed")
        if not 0 <= address <= 0x7F:
            raise ValueError(f"invalid 7-bit address {address}")

    # -- single transfers, locked (what a bus server calls) ----------------------------------------

    def wire_write(self, address: int, data: bytes, *, stop: bool = True) -> None:
        with self._lock:
            self._check(address)
            self._write(address, bytes(data), stop=stop)

    def wire_read(self, address: int, length: int, *, stop: bool = True) -> bytes:
        with self._lock:
            self._check(address)
            return self._read(address, length, stop=stop)

    # -- smbus2 API --------------------------------------------------------------------------------

    def i2c_rdwr(self, *i2c_msgs: i2c_msg) -> None:
        """Combined transfer: each message in turn; a NACK anywhere fails the whole call."""
        for msg in i2c_msgs:
            if not isinstance(msg, i2c_msg):
                raise TypeError(f"i2c_rdwr takes smbus2.i2c_msg objects, got {type(msg).__name__}")
        with self._lock:
            last = len(i2c_msgs) - 1
            for i, msg in enumerate(i2c_msgs):
                self._check(msg.addr)
                if msg.flags & I2C_M_RD:
                    data = self._read(msg.addr, msg.len, stop=i == last)
                    ctypes.memmove(msg.buf, data, msg.len)
                else:
                    self._write(msg.addr, bytes(msg), stop=i == last)

    def write_quick(self, i2c_addr: int, force: bool | None = None) -> None:
        self.wire_write(i2c_addr, b"")  # address phase only

    def read_byte(self, i2c_addr: int, force: bool | None = None) -> int:
        return self.wire_read(i2c_addr, 1)[0]

    def read_byte_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int:
        with self._lock:
            self.wire_write(i2c_addr, bytes([register]), stop=False)
            return self.wire_read(i2c_addr, 1)[0]

    def write_byte_data(
        self, i2c_addr: int, register: int, value: int, force: bool | None = None
    ) -> None:
        self.wire_write(i2c_addr, bytes([register, value]))

    def read_i2c_block_data(
        self, i2c_addr: int, register: int, length: int, force: bool | None = None
    ) -> list[int]:
        if length > I2C_SMBUS_BLOCK_MAX:
            raise ValueError(f"Desired block length over {I2C_SMBUS_BLOCK_MAX} bytes")
        with self._lock:
            self.wire_write(i2c_addr, bytes([register]), stop=False)
            return list(self.wire_read(i2c_addr, length))

    def write_i2c_block_data(
        self, i2c_addr: int, register: int, data: Sequence[int], force: bool | None = None
    ) -> None:
        if len(data) > I2C_SMBUS_BLOCK_MAX:
            raise ValueError(f"Data length cannot exceed {I2C_SMBUS_BLOCK_MAX} bytes")
        self.wire_write(i2c_addr, bytes([register, *data]))

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class SimulatedSMBus(WireSMBus):
    """An ``smbus2.SMBus`` stand-in hosting chip models by 7-bit address.

    ``nack_errno`` is the errno a missing address produces (121 EREMOTEIO like i2c-bcm2835; set 6
    ENXIO to imitate adapters that report that). ``traffic`` keeps the last transfers as
    ``(address, "w"|"r", bytes)`` for tests. To serve it to another process, see
    :class:`drivers.sim.i2c_server.I2cSimServer`.
    """

    def __init__(
        self,
        devices: Mapping[int, SimulatedI2cDevice] | None = None,
        *,
        bus: int = 1,
        nack_errno: int = errno.EREMOTEIO,
    ) -> None:
        super().__init__(bus=bus)
        self.nack_errno = nack_errno
        self.devices: dict[int, SimulatedI2cDevice] = dict(devices or {})
        self.traffic: deque[tuple[int, str, bytes]] = deque(maxlen=2000)

    # -- wiring ------------------------------------------------------------------------------------

    def attach(self, address: int, device: SimulatedI2cDevice) -> SimulatedI2cDevice:
        with self._lock:
            self.devices[address] = device
        return device

    def detach(self, address: int) -> None:
        with self._lock:
            self.devices.pop(address, None)

    # -- the wire ----------------------------------------------------------------------------------

    def _nack(self, address: int) -> OSError:
        return OSError(self.nack_errno, os.strerror(self.nack_errno))  # as smbus2's ioctl raises it

    def _device(self, address: int) -> SimulatedI2cDevice:
        self._check(address)
        dev = self.devices.get(address)
        if dev is None or dev.nack:
            raise self._nack(address)
        return dev

    def _write(self, address: int, data: bytes, *, stop: bool = True) -> None:
        dev = self._device(address)
        self.traffic.append((address, "w", data))
        try:
            dev.write(data)
        except Nack:
            raise self._nack(address) from None

    def _read(self, address: int, length: int, *, stop: bool = True) -> bytes:
        dev = self._device(address)
        try:
            data = dev.read(length)
        except Nack:
            raise self._nack(address) from None
        self.traffic.append((address, "r", data))
        return data


# --------------------------------------------------------------------------------------------------
# Sensirion


class _SimulatedSensirion(SimulatedI2cDevice):
    """Command/response state machine shared by the SHT3x and SHT4x models."""

    command_len = 2
    default_serial = 0

    def __init__(
        self,
        *,
        serial: int | None = None,
        temperature_c: float = 22.0,
        humidity_rh: float = 45.0,
        clock: Callable[[], float] = time.monotonic,
        noise_lsb: int = 2,
        seed: int = 0,
    ) -> None:
        super().__init__(clock=clock, noise_lsb=noise_lsb, seed=seed)
        self.serial = self.default_serial if serial is None else serial
        self.temperature_c = temperature_c
        self.humidity_rh = humidity_rh
        self.status = 0
        self._output: bytes | None = None
        self._ready_at = 0.0
        self._crc_faults: int | None = 0  # measurements left to corrupt; None = every one
        self._stuck_raw: tuple[int, int] | None = None

    def set_climate(
        self, temperature_c: float, humidity_rh: float, pressure_hpa: float | None = None
    ) -> None:
        self.temperature_c = temperature_c
        self.humidity_rh = humidity_rh

    def corrupt_crc(self, count: int | None = 1) -> None:
        """Fault: flip bits in a CRC byte of the next ``count`` measurements (``None``: all of them)."""
        self._crc_faults = count

    def clear_faults(self) -> None:
        super().clear_faults()
        self._crc_faults = 0

    def _clear_stuck_values(self) -> None:
        self._stuck_raw = None

    @property
    def busy(self) -> bool:
        return self._output is not None and self.clock() < self._ready_at

    # Chip-side encoding of the physical value (the inverse of the datasheet's conversion).
    @abc.abstractmethod
    def _raw_values(self) -> tuple[int, int]: ...

    @abc.abstractmethod
    def _command(self, cmd: int) -> None:
        """Execute one complete command word; raise :class:`Nack` if unknown."""

    def _respond(self, words: Iterable[int], delay_s: float = 0.0) -> None:
        self._output = encode_words(list(words))
        self._ready_at = self.clock() + delay_s

    def _measure(self, delay_s: float) -> None:
        self.measurements += 1
        if self._stuck:
            if self._stuck_raw is None:
                self._stuck_raw = self._raw_values()
            raw = self._stuck_raw
        else:
            raw = self._raw_values()
        out = bytearray(encode_words(raw))
        if self._crc_faults is None or self._crc_faults > 0:
            out[2] ^= 0x5A  # the temperature word's CRC
            if self._crc_faults:
                self._crc_faults -= 1
        self._output = bytes(out)
        self._ready_at = self.clock() + delay_s

    def _soft_reset(self) -> None:
        self._output = None
        self._on_soft_reset()

    def write(self, data: bytes) -> None:
        if self.busy:
            raise Nack  # busy measuring: no command is accepted
        if len(data) < self.command_len:
            return  # an incomplete command is ACKed byte by byte and then ignored at STOP
        self._command(int.from_bytes(data[: self.command_len], "big"))

    def read(self, length: int) -> bytes:
        if self._output is None or self.clock() < self._ready_at:
            raise Nack  # no data, or still measuring: the read header is not acknowledged
        data = self._output[:length] + b"\xff" * max(0, length - len(self._output))
        self._output = None  # data can be read once
        return data


def _clamp16(v: float) -> int:
    return min(0xFFFF, max(0, round(v)))


class SimulatedSht3x(_SimulatedSensirion):
    """SHT3x-DIS: 16-bit commands, status register, serial number 0x3780, single shot."""

    chip = "SHT3x"
    command_len = 2
    # Single shot: command -> typical duration (datasheet Table 4); with clock stretching the read
    # would be held until ready, which we model as ready at once.
    MEASURE: ClassVar[dict[int, float]] = {
        0x2400: 0.0125,
        0x240B: 0.0045,
        0x2416: 0.0025,
        0x2C06: 0.0,
        0x2C0D: 0.0,
        0x2C10: 0.0,
    }
    STATUS_ALERT = 0x8000
    STATUS_RESET_DETECTED = 0x0010
    STATUS_COMMAND_FAILED = 0x0002
    POWER_UP_STATUS = STATUS_ALERT | STATUS_RESET_DETECTED
    default_serial = 0x1A2B3C4D

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.status = self.POWER_UP_STATUS

    def _raw_values(self) -> tuple[int, int]:
        raw_t = _clamp16((self.temperature_c + 45.0) * 65535.0 / 175.0 + self._noise())
        raw_rh = _clamp16(self.humidity_rh * 65535.0 / 100.0 + self._noise())
        return raw_t, raw_rh

    def _command(self, cmd: int) -> None:
        if cmd in self.MEASURE:
            self.status &= ~self.STATUS_COMMAND_FAILED
            self._measure(self.MEASURE[cmd])
        elif cmd == 0xF32D:
            self._respond([self.status])
        elif cmd == 0x3780:
            self._respond([self.serial >> 16, self.serial & 0xFFFF])
        elif cmd == 0x3041:
            self.status = 0
        elif cmd == 0x30A2:
            self._soft_reset()
            self.status |= self.STATUS_RESET_DETECTED
        else:
            self.status |= self.STATUS_COMMAND_FAILED
            raise Nack


class SimulatedSht4x(_SimulatedSensirion):
    """SHT4x: 8-bit commands, serial number 0x89, soft reset 0x94, measurements without heater."""

    chip = "SHT4x"
    command_len = 1
    MEASURE: ClassVar[dict[int, float]] = {
        0xFD: 0.0069,
        0xF6: 0.0037,
        0xE0: 0.0013,
    }  # typical durations
    default_serial = 0x0E5C7A31

    def _raw_values(self) -> tuple[int, int]:
        raw_t = _clamp16((self.temperature_c + 45.0) * 65535.0 / 175.0 + self._noise())
        raw_rh = _clamp16((self.humidity_rh + 6.0) * 65535.0 / 125.0 + self._noise())
        return raw_t, raw_rh

    def _command(self, cmd: int) -> None:
        if cmd in self.MEASURE:
            self._measure(self.MEASURE[cmd])
        elif cmd == 0x89:
            self._respond([self.serial >> 16, self.serial & 0xFFFF])
        elif cmd == 0x94:
            self._soft_reset()
        else:
            raise Nack


# --------------------------------------------------------------------------------------------------
# Bosch BME280

# T/P trimming: Bosch's worked example (BMP280 datasheet §3.12; the BME280 uses the same T and P
# formulas). Humidity trimming: representative of production parts (no official worked example).
DATASHEET_CALIBRATION: dict[str, int] = {
    "dig_T1": 27504, "dig_T2": 26435, "dig_T3": -1000,
    "dig_P1": 36477, "dig_P2": -10685, "dig_P3": 3024, "dig_P4": 2855, "dig_P5": 140,
    "dig_P6": -7, "dig_P7": 15500, "dig_P8": -14600, "dig_P9": 6000,
    "dig_H1": 75, "dig_H2": 362, "dig_H3": 0, "dig_H4": 313, "dig_H5": 50, "dig_H6": 30,
}  # fmt: skip


def encode_calibration(values: Mapping[str, int]) -> tuple[bytes, bytes]:
    """Trimming values to register contents: (0x88..0xA1, 26 bytes), (0xE1..0xE7, 7 bytes).

    Little-endian 16-bit words; 0xA0 unused; dig_H4 is 0xE4[7:0]/0xE5[3:0] and dig_H5 is
    0xE6[7:0]/0xE5[7:4] (12-bit signed each), per datasheet Table 16.
    """
    v = values

    def le(x: int) -> bytes:
        return (x & 0xFFFF).to_bytes(2, "little")

    block1 = b"".join(
        le(v[k])
        for k in (
            "dig_T1",
            "dig_T2",
            "dig_T3",
            "dig_P1",
            "dig_P2",
            "dig_P3",
            "dig_P4",
            "dig_P5",
            "dig_P6",
            "dig_P7",
            "dig_P8",
            "dig_P9",
        )
    )
    block1 += bytes([0x00, v["dig_H1"] & 0xFF])
    h4, h5 = v["dig_H4"] & 0xFFF, v["dig_H5"] & 0xFFF
    block2 = le(v["dig_H2"]) + bytes(
        [v["dig_H3"] & 0xFF, h4 >> 4, ((h5 & 0x0F) << 4) | (h4 & 0x0F), h5 >> 4, v["dig_H6"] & 0xFF]
    )
    return block1, block2


def t_fine_double(adc_t: int, c: Mapping[str, int]) -> float:
    """Datasheet §8.1 ``BME280_compensate_T_double``, returning t_fine (T = t_fine / 5120)."""
    var1 = (adc_t / 16384.0 - c["dig_T1"] / 1024.0) * c["dig_T2"]
    var2 = (
        (adc_t / 131072.0 - c["dig_T1"] / 8192.0) * (adc_t / 131072.0 - c["dig_T1"] / 8192.0)
    ) * c["dig_T3"]
    return var1 + var2


def pressure_double_pa(adc_p: int, t_fine: float, c: Mapping[str, int]) -> float:
    """Datasheet §8.1 ``BME280_compensate_P_double`` (Pa)."""
    var1 = t_fine / 2.0 - 64000.0
    var2 = var1 * var1 * c["dig_P6"] / 32768.0
    var2 = var2 + var1 * c["dig_P5"] * 2.0
    var2 = var2 / 4.0 + c["dig_P4"] * 65536.0
    var1 = (c["dig_P3"] * var1 * var1 / 524288.0 + c["dig_P2"] * var1) / 524288.0
    var1 = (1.0 + var1 / 32768.0) * c["dig_P1"]
    if var1 == 0.0:
        return 0.0
    p = 1048576.0 - adc_p
    p = (p - var2 / 4096.0) * 6250.0 / var1
    var1 = c["dig_P9"] * p * p / 2147483648.0
    var2 = p * c["dig_P8"] / 32768.0
    return p + (var1 + var2 + c["dig_P7"]) / 16.0


def humidity_double(adc_h: int, t_fine: float, c: Mapping[str, int]) -> float:
    """Datasheet §8.1 ``bme280_compensate_H_double`` (%RH, clamped to 0..100)."""
    h = t_fine - 76800.0
    h = (adc_h - (c["dig_H4"] * 64.0 + c["dig_H5"] / 16384.0 * h)) * (
        c["dig_H2"]
        / 65536.0
        * (1.0 + c["dig_H6"] / 67108864.0 * h * (1.0 + c["dig_H3"] / 67108864.0 * h))
    )
    h = h * (1.0 - c["dig_H1"] * h / 524288.0)
    return min(100.0, max(0.0, h))


def _invert(f: Callable[[int], float], target: float, hi: int, increasing: bool) -> int:
    """The code in 0..hi whose value f(code) is closest to target, for a monotonic f (bisection)."""
    lo_c, hi_c = 0, hi
    while hi_c - lo_c > 1:
        mid = (lo_c + hi_c) // 2
        if (f(mid) < target) == increasing:
            lo_c = mid
        else:
            hi_c = mid
    return min((lo_c, hi_c), key=lambda code: abs(f(code) - target))


class SimulatedBme280(SimulatedI2cDevice):
    """BME280 register file with forced mode and real compensation inversion."""

    chip = "BME280"
    CHIP_ID = 0x60
    READ_ONLY = (
        frozenset(range(0x88, 0xA2))
        | frozenset(range(0xE1, 0xF2))
        | {0xD0, 0xF3}
        | frozenset(range(0xF7, 0x100))
    )

    def __init__(
        self,
        *,
        calibration: Mapping[str, int] = DATASHEET_CALIBRATION,
        chip_id: int = CHIP_ID,
        temperature_c: float = 22.0,
        humidity_rh: float = 45.0,
        pressure_hpa: float = 1013.25,
        clock: Callable[[], float] = time.monotonic,
        noise_lsb: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(clock=clock, noise_lsb=noise_lsb, seed=seed)
        self.calibration = dict(calibration)
        self.chip_id = chip_id
        self.temperature_c = temperature_c
        self.humidity_rh = humidity_rh
        self.pressure_hpa = pressure_hpa
        self.regs = bytearray(256)
        self._pointer = 0
        self._osrs_h_active = 0
        self._measuring_until: float | None = None
        self._stuck_adc: tuple[int, int, int] | None = None
        self._power_on_reset()

    def _power_on_reset(self) -> None:
        block1, block2 = encode_calibration(self.calibration)
        self.regs = bytearray(256)
        self.regs[0x88 : 0x88 + len(block1)] = block1
        self.regs[0xE1 : 0xE1 + len(block2)] = block2
        self.regs[0xD0] = self.chip_id
        self.regs[0xF7:0xFF] = bytes(
            [0x80, 0x00, 0x00, 0x80, 0x00, 0x00, 0x80, 0x00]
        )  # reset values
        self._osrs_h_active = 0
        self._measuring_until = None

    def set_climate(
        self, temperature_c: float, humidity_rh: float, pressure_hpa: float | None = None
    ) -> None:
        self.temperature_c = temperature_c
        self.humidity_rh = humidity_rh
        if pressure_hpa is not None:
            self.pressure_hpa = pressure_hpa

    def _clear_stuck_values(self) -> None:
        self._stuck_adc = None

    @property
    def mode(self) -> int:
        return self.regs[0xF4] & 0b11

    # -- conversion of the ground truth into ADC codes ---------------------------------------------

    def _adc_values(self, osrs_t: int, osrs_p: int, osrs_h: int) -> tuple[int, int, int]:
        c = self.calibration
        adc_t = _invert(lambda a: t_fine_double(a, c) / 5120.0, self.temperature_c, 0xFFFFF, True)
        adc_t = self._quantise20(adc_t, osrs_t)
        t_fine = t_fine_double(adc_t, c)
        adc_p = _invert(
            lambda a: pressure_double_pa(a, t_fine, c), self.pressure_hpa * 100.0, 0xFFFFF, False
        )
        adc_p = self._quantise20(adc_p, osrs_p)
        adc_h = _invert(lambda a: humidity_double(a, t_fine, c), self.humidity_rh, 0xFFFF, True)
        adc_h = min(0xFFFF, max(0, adc_h + self._noise()))
        return adc_t, adc_p, adc_h

    def _quantise20(self, adc: int, osrs: int) -> int:
        """Resolution of a 20-bit channel with the IIR filter off: 16 + (osrs - 1) bits (Table 13/14)."""
        step = 1 << (4 - min(4, osrs - 1))
        adc = (adc // step) * step + self._noise(step)
        return min(0xFFFFF, max(0, adc))

    def _complete_measurement(self) -> None:
        ctrl = self.regs[0xF4]
        osrs_t, osrs_p, osrs_h = ctrl >> 5, (ctrl >> 2) & 0b111, self._osrs_h_active
        self.measurements += 1
        if self._stuck:
            if self._stuck_adc is None:
                self._stuck_adc = self._adc_values(max(osrs_t, 1), max(osrs_p, 1), max(osrs_h, 1))
            adc_t, adc_p, adc_h = self._stuck_adc
        else:
            adc_t, adc_p, adc_h = self._adc_values(max(osrs_t, 1), max(osrs_p, 1), max(osrs_h, 1))
        adc_t = adc_t if osrs_t else 0x80000
        adc_p = adc_p if osrs_p else 0x80000
        adc_h = adc_h if osrs_h else 0x8000
        self.regs[0xF7:0xFA] = bytes([adc_p >> 12, (adc_p >> 4) & 0xFF, (adc_p & 0x0F) << 4])
        self.regs[0xFA:0xFD] = bytes([adc_t >> 12, (adc_t >> 4) & 0xFF, (adc_t & 0x0F) << 4])
        self.regs[0xFD:0xFF] = bytes([adc_h >> 8, adc_h & 0xFF])

    def _tick(self) -> None:
        """Advance the measurement state machine to the current time."""
        if self._measuring_until is not None and self.clock() >= self._measuring_until:
            self._measuring_until = None
            self._complete_measurement()
            if self.mode in (0b01, 0b10):
                self.regs[0xF4] &= ~0b11  # forced mode: back to sleep after one measurement
        if self.mode == 0b11 and self._measuring_until is None:
            self._complete_measurement()  # normal mode: fresh data on every access (no t_standby model)
        measuring = self._measuring_until is not None
        self.regs[0xF3] = 0x08 if measuring else 0x00

    # -- wire ----------------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        self._tick()
        if not data:
            return
        self._pointer = data[0]
        # Multi-byte writes are (register, value) pairs (datasheet §6.2.1); no auto-increment.
        pairs = [data[0], *data[1:]]
        for i in range(0, len(pairs) - 1, 2):
            self._write_register(pairs[i], pairs[i + 1])

    def _write_register(self, reg: int, value: int) -> None:
        if reg == 0xE0:
            if value == 0xB6:
                self._power_on_reset()
                self._on_soft_reset()
            return
        if reg in self.READ_ONLY:
            return
        self.regs[reg] = value
        if reg == 0xF4:
            self._osrs_h_active = self.regs[0xF2] & 0b111  # ctrl_hum takes effect with ctrl_meas
            if value & 0b11 in (0b01, 0b10):
                ctrl = value
                typ_ms = 1.0 + 2.0 * _factor(ctrl >> 5)
                for f in (_factor((ctrl >> 2) & 0b111), _factor(self._osrs_h_active)):
                    if f:
                        typ_ms += 2.0 * f + 0.5
                self._measuring_until = self.clock() + typ_ms / 1000.0

    def read(self, length: int) -> bytes:
        self._tick()
        start = self._pointer
        data = bytes(self.regs[(start + i) & 0xFF] for i in range(length))
        self._pointer = (start + length) & 0xFF
        return data


def _factor(code: int) -> int:
    return 0 if code == 0 else 1 << (min(code, 5) - 1)
