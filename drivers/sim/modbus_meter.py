"""Simulated Modbus energy meters that speak the real wire protocol, with fault injection.

Three layers, the same split as the drivers (sans-I/O core, thin I/O shells):

1. :class:`SimulatedMeter` (pure but for its injectable clock): plausible physics for an EV
   charging session (per-phase mains voltage 230 V with noise, 50 Hz +- 0.02, current following a
   :class:`ChargingProfile`, P = V*I*pf, energy integrating P over time), written through the
   register map and :func:`drivers.modbus.codec.encode` into the register space the map defines
   (input or holding), recomputed on every request. ``truth()`` returns the values last served.
2. :class:`RtuRequestFramer` and :func:`handle_request`: Modbus RTU request framing (CRC checked,
   bad frames ignored as a real slave does, a silence longer than t3.5 ends a frame) and the
   request -> response logic for functions 3 and 4, including exception responses
   (0x83/0x84 with codes 1, 2, 3) and the injected faults.
3. I/O shells: :class:`SimulatedBus` (RTU on a socat pseudo-terminal pair, several units on one
   line, optional baud-rate timing emulation) and :class:`SimulatedTcpGateway` (Modbus TCP, MBAP
   framing, for the demo).

Why not pymodbus's server: the faults need per-unit control over what goes on the wire and
when. pymodbus 3.16.1's RTU server handles a request in a task but re-reads the handler's
``last_pdu`` after awaiting the datastore, and ``callback_data`` resets ``last_pdu`` to None on
every received chunk; so a delayed reply (slow device, baud emulation) that overlaps the next
request is sent with the *next* request's unit id, or crashes with ``AttributeError``. That would
fake exactly the cross-unit confusion the bus tests must detect. A 150-line slave on the pty with
the core's ``crc16`` is independent from the client under test (pymodbus), so a framing mistake
on either side shows up instead of cancelling out.

Faults, per unit, switchable at run time (:meth:`SimulatedMeter.set_fault`):
``silent`` (no reply), ``crc`` (one data byte of the reply flipped after the CRC is computed),
``slow`` (reply after ``slow_s``), ``exception`` (exception response with ``exception_code``),
``word_order`` (multi-register values served with their words reversed).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import os
import random
import shutil
import signal
import struct
import tempfile
import time
import tty
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Self

from drivers.modbus.codec import append_crc, crc16, encode
from drivers.modbus.regmap import Phase, Quantity, RegisterMap, ValueDef

__all__ = [
    "ChargingProfile",
    "Fault",
    "FaultConfig",
    "ModbusSlaveError",
    "Reply",
    "RtuRequestFramer",
    "SimulatedBus",
    "SimulatedMeter",
    "SimulatedTcpGateway",
    "handle_request",
]

log = logging.getLogger(__name__)

MAX_READ_REGISTERS = 125
#: Registers between two mapped values that a simulated device still serves (as 0) in one
#: read; further apart, the addresses in between answer "illegal data address".
DEFAULT_SERVED_GAP = 16


# --------------------------------------------------------------------------------------
# Physics
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChargingProfile:
    """A repeating charging session: idle, ramp up, hold at ``max_current_a``, ramp down."""

    max_current_a: float = 16.0
    idle_s: float = 2.0
    ramp_up_s: float = 5.0
    hold_s: float = 60.0
    ramp_down_s: float = 5.0
    power_factor: float = 0.98
    phases: int = 3  # phases the car charges on (1 or 3)
    current_noise: float = 0.01  # relative, per phase

    @property
    def period_s(self) -> float:
        return self.idle_s + self.ramp_up_s + self.hold_s + self.ramp_down_s

    def current_at(self, t: float) -> float:
        """Charging current (A, per phase) at ``t`` seconds since the meter started."""
        if self.period_s <= 0:
            return self.max_current_a
        x = t % self.period_s
        if x < self.idle_s:
            return 0.0
        x -= self.idle_s
        if x < self.ramp_up_s:
            return self.max_current_a * x / self.ramp_up_s
        x -= self.ramp_up_s
        if x < self.hold_s:
            return self.max_current_a
        x -= self.hold_s
        return self.max_current_a * max(0.0, 1.0 - x / self.ramp_down_s)


class Fault(StrEnum):
    NONE = "none"
    SILENT = "silent"
    CRC = "crc"
    SLOW = "slow"
    EXCEPTION = "exception"
    WORD_ORDER = "word_order"


@dataclass
class FaultConfig:
    kind: Fault = Fault.NONE
    slow_s: float = 1.0
    exception_code: int = 2


class ModbusSlaveError(Exception):
    """Raised by :meth:`SimulatedMeter.read` to make the slave answer an exception response."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


_PHASES = (Phase.L1, Phase.L2, Phase.L3)


class SimulatedMeter:
    """One simulated meter: ``SimulatedMeter(regmap, unit_id, profile)``.

    ``clock`` (seconds, monotonic) and ``seed`` make runs reproducible. A map with no L2/L3
    values (SDM120) is a single-phase meter. ``model_code`` is what the map's ``identify``
    register holds (default: the first value the map accepts).
    """

    def __init__(
        self,
        regmap: RegisterMap,
        unit_id: int,
        profile: ChargingProfile | None = None,
        *,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        mains_v: float = 230.0,
        voltage_noise_v: float = 0.8,
        energy_import_kwh: float = 1234.5,
        energy_export_kwh: float = 0.25,
        model_code: int | None = None,
        served_gap: int = DEFAULT_SERVED_GAP,
    ) -> None:
        if not 1 <= unit_id <= 247:
            raise ValueError(f"unit id {unit_id} is outside 1..247")
        self.regmap = regmap
        self.unit_id = unit_id
        self.profile = profile or ChargingProfile()
        self.fault = FaultConfig()
        self.mains_v = mains_v
        self.voltage_noise_v = voltage_noise_v
        self._clock = clock
        self._rng = random.Random(seed if seed is not None else unit_id)
        phases = {v.phase for v in regmap.values}
        self.phases: tuple[Phase, ...] = (
            _PHASES if (Phase.L2 in phases or Phase.L3 in phases) else (Phase.L1,)
        )
        n = len(self.phases)
        self._import_kwh = {p: energy_import_kwh / n for p in self.phases}
        self._export_kwh = {p: energy_export_kwh / n for p in self.phases}
        self._t0 = clock()
        self._t_last = self._t0
        self._truth: dict[str, float] = {}
        self.requests_served = 0

        # Register space: per function, the value defs, the identify words, the windows of
        # addresses that read without an exception.
        self._defs: dict[int, list[ValueDef]] = {3: [], 4: []}
        for v in regmap.values:
            self._defs[int(v.function)].append(v)
        self._fixed: dict[int, dict[int, int]] = {3: {}, 4: {}}
        spans: dict[int, list[tuple[int, int]]] = {3: [], 4: []}
        for f, defs in self._defs.items():
            spans[f] = [(v.register, v.end) for v in defs]
        ident = regmap.identify
        if ident is not None:
            code = model_code if model_code is not None else ident.values[0]
            words = _encode_int(ident.type.value, ident.word_order.value, code)
            for i, w in enumerate(words):
                self._fixed[int(ident.function)][ident.register + i] = w
            spans[int(ident.function)].append((ident.register, ident.register + len(words)))
        self._windows = {f: _merge(s, served_gap) for f, s in spans.items()}

    # -- faults ------------------------------------------------------------------------

    def set_fault(self, kind: Fault | str, **params: Any) -> None:
        """Switch the fault at run time: ``set_fault("slow", slow_s=0.5)``, ``set_fault("none")``."""
        self.fault = FaultConfig(Fault(kind), **params)

    # -- physics -----------------------------------------------------------------------

    def _state(self) -> dict[tuple[Quantity, Phase | None], float]:
        now = self._clock()
        dt = max(0.0, now - self._t_last)
        self._t_last = now
        t = now - self._t0
        prof = self.profile
        i_nominal = prof.current_at(t)
        s: dict[tuple[Quantity, Phase | None], float] = {}
        p_tot = q_tot = s_tot = 0.0
        for idx, ph in enumerate(self.phases):
            v = self.mains_v + self._rng.gauss(0.0, self.voltage_noise_v)
            charging = idx < prof.phases and i_nominal > 0.0
            i = i_nominal * (1.0 + self._rng.gauss(0.0, prof.current_noise)) if charging else 0.0
            i = max(0.0, i)
            pf = prof.power_factor if i > 0.05 else 1.0
            p = v * i * pf
            app = v * i
            q = math.sqrt(max(0.0, app * app - p * p))
            self._import_kwh[ph] += p * dt / 3.6e6
            s[(Quantity.VOLTAGE, ph)] = v
            s[(Quantity.CURRENT, ph)] = i
            s[(Quantity.POWER_ACTIVE, ph)] = p
            s[(Quantity.POWER_APPARENT, ph)] = app
            s[(Quantity.POWER_REACTIVE, ph)] = q
            s[(Quantity.POWER_FACTOR, ph)] = pf
            s[(Quantity.ENERGY_IMPORT, ph)] = self._import_kwh[ph]
            s[(Quantity.ENERGY_EXPORT, ph)] = self._export_kwh[ph]
            p_tot += p
            q_tot += q
            s_tot += app
        s[(Quantity.POWER_ACTIVE, Phase.TOTAL)] = p_tot
        s[(Quantity.POWER_REACTIVE, Phase.TOTAL)] = q_tot
        s[(Quantity.POWER_APPARENT, Phase.TOTAL)] = s_tot
        s[(Quantity.POWER_FACTOR, Phase.TOTAL)] = p_tot / s_tot if s_tot > 0 else 1.0
        s[(Quantity.ENERGY_IMPORT, Phase.TOTAL)] = sum(self._import_kwh.values())
        s[(Quantity.ENERGY_EXPORT, Phase.TOTAL)] = sum(self._export_kwh.values())
        f = 50.0 + self._rng.uniform(-0.02, 0.02)
        s[(Quantity.FREQUENCY, None)] = f
        s[(Quantity.FREQUENCY, Phase.TOTAL)] = f
        return s

    @staticmethod
    def _lookup(state: Mapping[tuple[Quantity, Phase | None], float], v: ValueDef) -> float:
        key = (v.quantity, v.phase)
        if key in state:
            return state[key]
        # A phase-less value of a per-phase quantity: the meter-level value (total or L1).
        for alt in ((v.quantity, Phase.TOTAL), (v.quantity, Phase.L1)):
            if alt in state:
                return state[alt]
        return 0.0

    # -- the register space --------------------------------------------------------------

    def read(self, function: int, address: int, count: int) -> list[int]:
        """Registers ``address..address+count-1`` of ``function`` 3/4, values computed now.

        Raises :class:`ModbusSlaveError` (code 2) if the range is not entirely inside one served
        window of the map.
        """
        function = int(function)
        if function not in (3, 4):
            raise ModbusSlaveError(1)
        end = address + count
        if not any(lo <= address and end <= hi for lo, hi in self._windows[function]):
            raise ModbusSlaveError(2)
        self.requests_served += 1
        words: dict[int, int] = {a: w for a, w in self._fixed[function].items() if address <= a < end}
        state = self._state()
        reverse = self.fault.kind is Fault.WORD_ORDER
        for v in self._defs[function]:
            if v.end <= address or v.register >= end:
                continue
            value = self._lookup(state, v)
            regs = encode(v, value)
            if reverse and len(regs) > 1:
                regs = regs[::-1]
            self._truth[v.name] = value
            for i, w in enumerate(regs):
                words[v.register + i] = w
        return [words.get(a, 0) for a in range(address, end)]

    def truth(self) -> dict[str, float]:
        """The value (in the map's unit, before encoding) of every value last served, by name."""
        return dict(self._truth)

    def __repr__(self) -> str:
        return f"SimulatedMeter({self.regmap.model!r}, unit={self.unit_id}, fault={self.fault.kind})"


def _encode_int(type_: str, word_order: str, value: int) -> list[int]:
    fmt = {"uint16": ">H", "int16": ">h", "uint32": ">I", "int32": ">i", "uint64": ">Q"}[type_]
    data = struct.pack(fmt, value)
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    return words if word_order == "big" else words[::-1]


def _merge(spans: Iterable[tuple[int, int]], gap: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if out and lo - out[-1][1] <= gap:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


# --------------------------------------------------------------------------------------
# Protocol core (sans-I/O)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """What a slave puts on the wire for one request: ``pdu`` after ``delay_s`` (fault-induced),
    ``corrupt`` asks the shell to flip a byte of the frame after the CRC is computed."""

    pdu: bytes
    delay_s: float = 0.0
    corrupt: bool = False


def handle_request(meters: Mapping[int, SimulatedMeter], unit: int, pdu: bytes) -> Reply | None:
    """The slave side of one request PDU addressed to ``unit``; None means no reply at all.

    Absent units and broadcasts (unit 0) do not answer (Modbus over Serial Line §2.1).
    """
    meter = meters.get(unit)
    if meter is None or not pdu:
        return None
    fault = meter.fault
    if fault.kind is Fault.SILENT:
        return None
    fc = pdu[0]
    delay = fault.slow_s if fault.kind is Fault.SLOW else 0.0
    corrupt = fault.kind is Fault.CRC
    if fault.kind is Fault.EXCEPTION:
        return Reply(bytes([fc | 0x80, fault.exception_code]), delay, corrupt)
    if fc not in (3, 4):
        return Reply(bytes([(fc | 0x80) & 0xFF, 1]), delay, corrupt)
    if len(pdu) != 5:
        return Reply(bytes([fc | 0x80, 3]), delay, corrupt)
    address = int.from_bytes(pdu[1:3], "big")
    count = int.from_bytes(pdu[3:5], "big")
    if not 1 <= count <= MAX_READ_REGISTERS:
        return Reply(bytes([fc | 0x80, 3]), delay, corrupt)  # illegal data value
    if address + count > 0x10000:
        return Reply(bytes([fc | 0x80, 2]), delay, corrupt)
    try:
        regs = meter.read(fc, address, count)
    except ModbusSlaveError as exc:
        return Reply(bytes([fc | 0x80, exc.code]), delay, corrupt)
    body = b"".join(w.to_bytes(2, "big") for w in regs)
    return Reply(bytes([fc, len(body)]) + body, delay, corrupt)


def rtu_reply_frame(unit: int, reply: Reply) -> bytes:
    """The RTU frame for ``reply``; with ``corrupt``, a data byte is flipped after the CRC."""
    frame = bytearray(append_crc(bytes([unit]) + reply.pdu))
    if reply.corrupt:
        # Flip a byte in the middle of the payload (not unit/function/byte count), so the frame
        # keeps its shape and only the CRC check can tell: a realistic noise hit.
        i = 3 + (len(frame) - 5) // 2 if len(frame) > 5 else 2
        frame[i] ^= 0xFF
    return bytes(frame)


def _request_length(buf: bytes | bytearray) -> int | None:
    """Length of the RTU request frame at the start of ``buf`` by its function code, if known."""
    if len(buf) < 2:
        return None
    fc = buf[1]
    if fc in (1, 2, 3, 4, 5, 6):
        return 8
    if fc in (15, 16):
        return 9 + buf[6] if len(buf) >= 7 else None
    return 0  # unknown function: find the frame by its CRC


class RtuRequestFramer:
    """Splits a byte stream into CRC-valid RTU request frames ``(unit, pdu)``.

    A silence of more than ``t35_s`` between chunks ends a frame (§2.5.1.1), so a partial frame
    never swallows the next request; frames with a bad CRC are dropped, as a slave must.
    """

    def __init__(self, t35_s: float) -> None:
        self.t35_s = t35_s
        self._buf = bytearray()
        self._last = -math.inf
        self.bad_frames = 0

    def feed(self, data: bytes, now: float) -> list[tuple[int, bytes]]:
        if self._buf and now - self._last > self.t35_s:
            self._buf.clear()
        self._last = now
        self._buf += data
        out: list[tuple[int, bytes]] = []
        while len(self._buf) >= 4:
            length = _request_length(self._buf)
            if length is None:
                break
            if length == 0:
                length = next((n for n in range(4, len(self._buf) + 1) if _crc_ok(self._buf[:n])), -1)
                if length < 0:
                    if len(self._buf) < 8:
                        break  # may still be arriving
                    del self._buf[:1]  # no frame starts here: hunt on
                    continue
            if len(self._buf) < length:
                break
            frame = bytes(self._buf[:length])
            if _crc_ok(frame):
                out.append((frame[0], frame[1:-2]))
                del self._buf[:length]
            else:
                self.bad_frames += 1
                del self._buf[:1]  # hunt for the next frame start
        return out


def _crc_ok(frame: bytes | bytearray) -> bool:
    return crc16(bytes(frame[:-2])) == int.from_bytes(frame[-2:], "little")


def _bits_per_char(parity: str, stopbits: int) -> int:
    return 1 + 8 + (0 if parity.upper() == "N" else 1) + stopbits


# --------------------------------------------------------------------------------------
# RTU shell: socat pseudo-terminal pair
# --------------------------------------------------------------------------------------


@dataclass
class WireRequest:
    """A request as the simulated line saw it (for tests: what is on the wire)."""

    time: float
    unit: int
    function: int
    address: int
    count: int


class SimulatedBus:
    """Several simulated meters on one RS-485 line, served on a socat pty pair.

    ``async with SimulatedBus([m1, m2]) as sim:`` then open a client on ``sim.port``. socat is
    started in its own process group and killed (group-wide) on exit, on errors too.

    ``baud``: if set, replies are timed as on a real line: a reply is written when its last byte
    would arrive, i.e. request frame + t3.5 + ``response_delay_s`` + response frame after the
    request was received (a pty itself has no baud-rate timing).
    """

    def __init__(
        self,
        meters: Iterable[SimulatedMeter],
        *,
        baud: int | None = None,
        parity: str = "N",
        stopbits: int = 1,
        response_delay_s: float = 0.0,
        workdir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.meters: dict[int, SimulatedMeter] = {}
        for m in meters:
            if m.unit_id in self.meters:
                raise ValueError(f"two simulated meters with unit id {m.unit_id}")
            self.meters[m.unit_id] = m
        self.baud = baud
        self.bits_per_char = _bits_per_char(parity, stopbits)
        self.response_delay_s = response_delay_s
        self.wire: list[WireRequest] = []
        self._workdir_arg = workdir
        self._own_dir: str | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._fd: int | None = None
        self._handles: set[asyncio.TimerHandle] = set()
        char = self.bits_per_char / (baud or 9600)
        t35 = 0.00175 if (baud or 9600) > 19200 else 3.5 * char
        # A pty delivers a request in one chunk or a few back-to-back chunks; keep a floor of
        # 5 ms so scheduler jitter cannot split a frame.
        self._framer = RtuRequestFramer(max(t35, 0.005))
        self.port = ""
        self.device_port = ""

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if shutil.which("socat") is None:
            raise RuntimeError("socat not found (Debian: apt-get install socat)")
        if self._workdir_arg is None:
            self._own_dir = tempfile.mkdtemp(prefix="omgw-simbus-")
            workdir = Path(self._own_dir)
        else:
            workdir = Path(self._workdir_arg)
            workdir.mkdir(parents=True, exist_ok=True)
        self.device_port = str(workdir / "meters")
        self.port = str(workdir / "gateway")
        logpath = workdir / "socat.log"
        try:
            logfd = os.open(logpath, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    "socat",
                    "-d",
                    "-d",
                    f"pty,raw,echo=0,link={self.device_port}",
                    f"pty,raw,echo=0,link={self.port}",
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=logfd,
                    start_new_session=True,  # own process group: killed as a group in stop()
                )
            finally:
                os.close(logfd)
            deadline = time.monotonic() + 5.0
            while not (os.path.exists(self.device_port) and os.path.exists(self.port)):
                if self._proc.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"socat did not create the pty pair: {logpath.read_text()}")
                await asyncio.sleep(0.01)
            fd = os.open(self.device_port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            tty.setraw(fd)
            self._fd = fd
            asyncio.get_running_loop().add_reader(fd, self._on_readable)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for h in self._handles:
            h.cancel()
        self._handles.clear()
        if self._fd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._fd)
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 3.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)
            self._own_dir = None

    # -- control -----------------------------------------------------------------------

    def meter(self, unit: int) -> SimulatedMeter:
        return self.meters[unit]

    def set_fault(self, unit: int, kind: Fault | str, **params: Any) -> None:
        self.meters[unit].set_fault(kind, **params)

    def clear_faults(self) -> None:
        for m in self.meters.values():
            m.set_fault(Fault.NONE)

    def char_s(self) -> float:
        return self.bits_per_char / self.baud if self.baud else 0.0

    # -- I/O ---------------------------------------------------------------------------

    def _on_readable(self) -> None:
        assert self._fd is not None
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.EIO:  # the other side of the pair went away
                return
            raise
        if not data:
            return
        now = time.monotonic()
        for unit, pdu in self._framer.feed(data, now):
            self._serve(unit, pdu, now, len(pdu) + 3)

    def _serve(self, unit: int, pdu: bytes, now: float, request_bytes: int) -> None:
        if len(pdu) == 5 and pdu[0] in (3, 4):
            self.wire.append(
                WireRequest(
                    now, unit, pdu[0], int.from_bytes(pdu[1:3], "big"), int.from_bytes(pdu[3:5], "big")
                )
            )
        reply = handle_request(self.meters, unit, pdu)
        if reply is None:
            return
        frame = rtu_reply_frame(unit, reply)
        delay = reply.delay_s + self.response_delay_s
        if self.baud:
            char = self.char_s()
            t35 = 0.00175 if self.baud > 19200 else 3.5 * char
            delay += request_bytes * char + t35 + len(frame) * char
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle | None = None

        def send() -> None:
            if handle is not None:
                self._handles.discard(handle)
            self._write(frame)

        handle = loop.call_later(delay, send)
        self._handles.add(handle)

    def _write(self, frame: bytes) -> None:
        if self._fd is None:
            return
        view = memoryview(frame)
        while view:
            try:
                n = os.write(self._fd, view)
            except BlockingIOError:
                log.warning("event=sim_write_dropped bytes=%d reason=pty_full", len(view))
                return
            except OSError as exc:
                if exc.errno == errno.EIO:
                    return
                raise
            view = view[n:]


# --------------------------------------------------------------------------------------
# TCP shell: a Modbus TCP gateway in front of the simulated meters (demo)
# --------------------------------------------------------------------------------------


class SimulatedTcpGateway:
    """The simulated meters behind a Modbus TCP server (MBAP framing, unit id selects the meter).

    For the demo and for clients that only speak TCP. The ``crc`` fault has no TCP equivalent
    (TCP has no CRC; a gateway drops bad RTU frames) and is served as a timeout.
    """

    def __init__(self, meters: Iterable[SimulatedMeter], host: str = "127.0.0.1", port: int = 0):
        self.meters = {m.unit_id: m for m in meters}
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        for w in list(self._writers):
            w.close()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def set_fault(self, unit: int, kind: Fault | str, **params: Any) -> None:
        self.meters[unit].set_fault(kind, **params)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                header = await reader.readexactly(7)
                tid, pid, length, unit = struct.unpack(">HHHB", header)
                if pid != 0 or not 2 <= length <= 254:
                    break
                pdu = await reader.readexactly(length - 1)
                reply = handle_request(self.meters, unit, pdu)
                if reply is None or reply.corrupt:
                    continue
                task = asyncio.create_task(self._reply(writer, tid, unit, reply))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _reply(self, writer: asyncio.StreamWriter, tid: int, unit: int, reply: Reply) -> None:
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if writer.is_closing():
            return
        writer.write(struct.pack(">HHHB", tid, 0, len(reply.pdu) + 1, unit) + reply.pdu)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
