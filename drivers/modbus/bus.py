"""One RS-485 Modbus RTU bus: a half-duplex line shared by every meter on it.

Why this module exists: an RS-485 segment carries one transaction at a time, so every
meter on a port must go through a single scheduler that serialises requests, keeps the
inter-frame silent interval, and keeps one faulty device from costing or corrupting the
others. ``ModbusBus`` is that scheduler, a thin I/O shell over pymodbus's
``AsyncModbusSerialClient`` (any pymodbus async client can be injected: tests and the demo
pass a client on a pseudo-terminal or a Modbus TCP client).

What it guarantees:

* **One request at a time** (an ``asyncio.Lock``); callers on the same bus queue up.
* **Silent interval**: a request is sent only after the line has been quiet for t3.5
  (3.5 character times; 1.75 ms above 19200 baud, Modbus over Serial Line V1.02 §2.5.1.1),
  measured from the end of the previous transaction *or the last byte heard*, whichever is
  later. While bytes keep arriving (a late reply in flight) the bus waits for them to end
  (bounded by ``max_drain_s``) and then discards everything buffered before it transmits.
* **Typed errors** from :mod:`drivers.modbus.errors`: no answer -> ``ModbusTimeout``, a
  reply for this unit with a bad CRC -> ``ModbusCrcError`` (detected as soon as the frame
  is complete, not after the timeout), truncated/garbled/mismatched reply ->
  ``ModbusFrameError``, exception reply -> ``ModbusExceptionResponse`` with its code.
* **Per-device isolation**: the bus owns the retry policy (the injected client's own
  retries are set to 0). A dead meter costs ``timeout_s * (retries + 1)`` once per poll
  cycle: once an attempt to a unit has timed out, only the retries of *that same* request
  go to it for the rest of the cycle (between ``cycle_begin()`` and ``cycle_end()``);
  its other requests fail at once as ``ModbusTimeout`` (counted as ``skipped``). So a map
  split into several requests does not multiply the cost, and a late reply (which answers
  the retried request correctly, as it is the same request) can never be taken for the
  answer to a *different* request of the same unit, which RTU could not tell apart when
  both replies have the same length (a reply carries no address). Late replies from another
  unit are rejected by unit id (pymodbus's framer skips them; the bus re-checks unit,
  function code and register count on every response). Outside cycles (probing) only the
  unit id, function code and length checks apply.

What pymodbus 3.16.1 does on its own (read from its source, checked against a pty):
``TransactionManager.execute`` clears its receive buffer before each attempt and retries
only on timeout, immediately, without a silent interval; ``FramerRTU.decode`` drops a frame
whose CRC fails and the request then simply times out (no CRC error is reported); a
response with another function code (e.g. 0x03 to a 0x04 request) is accepted as is; after
``retries + 3`` consecutive unanswered requests a TCP client closes its connection. The bus
covers each of those: its own retries and gaps, CRC detection via the client's
``trace_packet`` hook, its own response checks, and ``set_max_no_responses`` raised so a
dead unit behind a TCP gateway cannot drop the connection for the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Self

from drivers.modbus.codec import crc16 as codec_crc16
from drivers.modbus.errors import (
    ModbusCrcError,
    ModbusError,
    ModbusExceptionResponse,
    ModbusFrameError,
    ModbusTimeout,
)

log = logging.getLogger(__name__)

# Modbus application protocol V1.1b3 §6.3/§6.4: at most 125 registers per read request.
MAX_REGISTERS_PER_READ = 125
#: Above 19200 baud the spec fixes t3.5 at 1.750 ms instead of scaling with the baud rate.
FIXED_T35_ABOVE_19200_S = 0.00175


class BusUnavailable(ModbusError):
    """The port itself is unusable (cannot open, unplugged adapter, closed TCP gateway).

    Not a device fault: every unit on the bus is affected. Subclass of ``ModbusError`` so a
    meter that handles ``ModbusError`` turns it into a missing value with a reason.
    """


# --------------------------------------------------------------------------------------
# Line timing (pure)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LineTiming:
    """Character timing of an asynchronous serial line (start bit, data, parity, stop)."""

    baud: int
    bits_per_char: int

    @classmethod
    def of(cls, baud: int, parity: str = "N", stopbits: int = 1, bytesize: int = 8) -> LineTiming:
        if baud <= 0:
            raise ValueError(f"baud must be positive, got {baud}")
        if parity.upper() not in ("N", "E", "O"):
            raise ValueError(f"parity must be N, E or O, got {parity!r}")
        parity_bits = 0 if parity.upper() == "N" else 1
        return cls(baud, 1 + bytesize + parity_bits + int(stopbits))

    @property
    def char_s(self) -> float:
        return self.bits_per_char / self.baud

    @property
    def t35_s(self) -> float:
        """Inter-frame silent interval (§2.5.1.1: fixed 1.75 ms above 19200 baud)."""
        if self.baud > 19200:
            return FIXED_T35_ABOVE_19200_S
        return 3.5 * self.char_s

    def frame_s(self, nbytes: int) -> float:
        """Time on the wire for ``nbytes`` characters, back to back."""
        return nbytes * self.char_s


def read_request_bytes() -> int:
    """RTU request for function 3/4: unit, function, address (2), count (2), CRC (2)."""
    return 8


def read_response_bytes(count: int) -> int:
    """RTU response for function 3/4: unit, function, byte count, 2*count data, CRC (2)."""
    return 5 + 2 * count


def transaction_wire_s(count: int, timing: LineTiming) -> float:
    """Minimum bus time of one read transaction of ``count`` registers.

    Request frame + t3.5 (the slave may answer no sooner) + response frame + t3.5 (before
    the next request). Device processing time is not included (it is device specific).
    """
    return timing.frame_s(read_request_bytes() + read_response_bytes(count)) + 2 * timing.t35_s


# --------------------------------------------------------------------------------------
# Response scan (pure): what did we hear during one attempt?
# --------------------------------------------------------------------------------------


class HeardKind(Enum):
    NOTHING = "nothing"  # no byte attributable to anyone
    OURS_OK = "ours_ok"  # a complete frame for our unit with a good CRC
    OURS_BAD_CRC = "ours_bad_crc"  # a complete frame for our unit with a bad CRC
    OURS_PARTIAL = "ours_partial"  # the start of a frame for our unit, not complete
    GARBAGE = "garbage"  # bytes that are not a well-formed frame for anyone


@dataclass(frozen=True)
class Heard:
    kind: HeardKind
    stray_units: tuple[int, ...] = ()  # complete, CRC-valid frames from other units


def _rtu_crc_ok(frame: bytes, crc16: Callable[[bytes], int]) -> bool:
    # The CRC is sent low byte first (Modbus over Serial Line §2.5.1.2).
    return crc16(frame[:-2]) == int.from_bytes(frame[-2:], "little")


def scan_rtu_response(buf: bytes, unit: int, crc16: Callable[[bytes], int]) -> Heard:
    """Classify the bytes received for a pending function 3/4 request to ``unit``.

    Frames are recognised by shape: ``unit fc bytecount data crc`` for fc 3/4 and
    ``unit fc|0x80 code crc`` for exception replies. CRC-valid frames from other units are
    reported as strays (late replies); anything unframeable is garbage.
    """
    strays: list[int] = []
    garbage = False
    i = 0
    n = len(buf)
    while i < n:
        rest = n - i
        u = buf[i]
        if rest < 2:
            if u == unit:
                return Heard(HeardKind.OURS_PARTIAL, tuple(strays))
            garbage = True
            break
        f = buf[i + 1]
        if f in (3, 4):
            if rest < 3:
                if u == unit:
                    return Heard(HeardKind.OURS_PARTIAL, tuple(strays))
                garbage = True
                break
            length = 5 + buf[i + 2]
        elif f & 0x80 and (f & 0x7F) in (3, 4):
            length = 5
        else:
            garbage = True
            i += 1
            continue
        if rest < length:
            if u == unit:
                return Heard(HeardKind.OURS_PARTIAL, tuple(strays))
            garbage = True
            break
        frame = buf[i : i + length]
        if _rtu_crc_ok(frame, crc16):
            if u == unit:
                return Heard(HeardKind.OURS_OK, tuple(strays))
            strays.append(u)
            i += length
            continue
        if u == unit:
            return Heard(HeardKind.OURS_BAD_CRC, tuple(strays))
        garbage = True
        i += 1
    return Heard(HeardKind.GARBAGE if garbage else HeardKind.NOTHING, tuple(strays))


# --------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------


@dataclass
class UnitStats:
    """Counters for one unit id on the bus."""

    requests: int = 0  # logical requests put on the wire (retries not included)
    ok: int = 0
    timeouts: int = 0
    crc_errors: int = 0
    frame_errors: int = 0
    exceptions: int = 0
    retries: int = 0  # extra attempts after a failed one
    skipped: int = 0  # failed at once: the unit already timed out in this cycle
    bus_time_s: float = 0.0  # time the bus was held for this unit (gaps, attempts, retries)
    last_error: str | None = None


@dataclass
class BusStats:
    """Counters for the whole bus; ``units`` holds the same counters per unit id."""

    requests: int = 0
    ok: int = 0
    timeouts: int = 0
    crc_errors: int = 0
    frame_errors: int = 0
    exceptions: int = 0
    retries: int = 0
    skipped: int = 0
    stray_frames: int = 0  # CRC-valid frames from a unit other than the addressed one
    bus_time_s: float = 0.0
    cycles: int = 0
    last_cycle_s: float = 0.0
    units: dict[int, UnitStats] = field(default_factory=dict)

    def unit(self, unit: int) -> UnitStats:
        if unit not in self.units:
            self.units[unit] = UnitStats()
        return self.units[unit]

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "units"}
        out["units"] = {u: dict(s.__dict__) for u, s in sorted(self.units.items())}
        return out


# --------------------------------------------------------------------------------------
# The bus
# --------------------------------------------------------------------------------------


@dataclass
class _Pending:
    """Book-keeping for the attempt in flight (filled by the receive trace hook)."""

    unit: int
    function: int
    count: int
    abort: asyncio.Future[None]
    heard: Heard = field(default_factory=lambda: Heard(HeardKind.NOTHING))
    bad_crc: bool = False
    strays: int = 0


class ModbusBus:
    """Scheduler for one Modbus port shared by several meters (see module docstring).

    ``client`` is a pymodbus async client (serial RTU, or TCP for a gateway/demo). Serial
    line parameters are taken from the client when it is a serial client; ``baud`` etc.
    override them (useful for an RTU-over-pty client whose timing you want to model).
    """

    def __init__(
        self,
        client: Any,
        *,
        name: str | None = None,
        timeout_s: float = 0.3,
        retries: int = 1,
        baud: int | None = None,
        parity: str | None = None,
        stopbits: int | None = None,
        bytesize: int | None = None,
        max_drain_s: float | None = None,
        skip_failed_units_in_cycle: bool = True,
        crc16: Callable[[bytes], int] | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self._client = client
        self.timeout_s = timeout_s
        self.retries = retries
        self.skip_failed_units_in_cycle = skip_failed_units_in_cycle
        self.stats = BusStats()
        self._crc16 = crc16 or codec_crc16
        self._lock = asyncio.Lock()

        params = getattr(client, "comm_params", None)
        serial_client = params is not None and getattr(params.comm_type, "name", "") == "SERIAL"
        self.is_serial = serial_client or baud is not None
        if self.is_serial:
            line: dict[str, Any] = {"baudrate": 9600, "parity": "N", "stopbits": 1, "bytesize": 8}
            if serial_client and params is not None:
                line = {k: getattr(params, k) for k in line}
            self.timing: LineTiming | None = LineTiming.of(
                baud or line["baudrate"],
                parity or line["parity"],
                stopbits or line["stopbits"],
                bytesize or line["bytesize"],
            )
        else:
            self.timing = None
        self.gap_s = self.timing.t35_s if self.timing else 0.0
        # Longest frame a late talker can still be sending: 256 bytes.
        self.max_drain_s = (
            max_drain_s
            if max_drain_s is not None
            else (self.timing.frame_s(256) + self.gap_s if self.timing else 0.0)
        )
        if name is None and params is not None:
            name = params.host if serial_client else f"{params.host}:{params.port}"
        self.name = name or "modbus"

        ctx = getattr(client, "ctx", None)
        self._rtu = False
        if ctx is not None:
            from pymodbus.framer import FramerRTU

            self._rtu = isinstance(getattr(ctx, "framer", None), FramerRTU)
            # The bus owns retries, and a dead unit must not close a shared connection.
            ctx.retries = 0
            client.set_max_no_responses(1 << 30)
            previous = ctx.trace_packet
            ctx.trace_packet = self._tracer(previous)

        self._pending: _Pending | None = None
        self._last_end = 0.0  # monotonic time the previous transaction ended
        self._last_rx = 0.0  # monotonic time of the last received chunk
        self._failed_in_cycle: set[int] = set()
        self._in_cycle = False
        self._cycle_mark = 0.0
        self._unit_down: set[int] = set()
        self._seen_up: set[int] = set()

    # -- construction -----------------------------------------------------------------

    @classmethod
    def serial(
        cls,
        port: str,
        baud: int = 9600,
        parity: str = "N",
        stopbits: int = 1,
        timeout_s: float = 0.3,
        retries: int = 1,
        **kwargs: Any,
    ) -> ModbusBus:
        """A bus on a local serial port (RS-485 adapter), RTU framing, 8 data bits."""
        from pymodbus.client import AsyncModbusSerialClient
        from pymodbus.framer import FramerType

        client = AsyncModbusSerialClient(
            port,
            framer=FramerType.RTU,
            baudrate=baud,
            bytesize=8,
            parity=parity.upper(),
            stopbits=stopbits,
            # The bus enforces timeout_s itself; the client's own timeout only bounds
            # connect() and must not fire first.
            timeout=max(1.0, 4 * timeout_s),
            retries=0,
            reconnect_delay=0.1,
            reconnect_delay_max=5.0,
            name=port,
        )
        return cls(client, name=port, timeout_s=timeout_s, retries=retries, **kwargs)

    @property
    def client(self) -> Any:
        return self._client

    async def open(self) -> None:
        if not self._client.connected and not await self._client.connect():
            raise BusUnavailable(self.name, 0, 0, 0, 0, "cannot open port")

    def close(self) -> None:
        self._client.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # -- cycles -----------------------------------------------------------------------

    def cycle_begin(self) -> None:
        """Start a poll cycle: resets the per-cycle skip list and the bus-time mark."""
        self._in_cycle = True
        self._failed_in_cycle.clear()
        self._cycle_mark = self.stats.bus_time_s

    def cycle_end(self) -> float:
        """End a poll cycle; returns the bus time (s) used since ``cycle_begin()``."""
        used = self.stats.bus_time_s - self._cycle_mark
        self._in_cycle = False
        self._failed_in_cycle.clear()
        self.stats.cycles += 1
        self.stats.last_cycle_s = used
        return used

    # -- the request ------------------------------------------------------------------

    async def read_registers(
        self,
        unit: int,
        function: int,
        address: int,
        count: int,
        *,
        timeout_s: float | None = None,
        retries: int | None = None,
    ) -> list[int]:
        """Read ``count`` registers with function 3 (holding) or 4 (input).

        Returns the register values (0..65535). Raises a ``ModbusError`` subclass.
        ``timeout_s``/``retries`` override the bus defaults for this call (the probe uses a
        short timeout and no retry).
        """
        function = int(function)
        if function not in (3, 4):
            raise ValueError(f"function must be 3 or 4, got {function}")
        if not 1 <= count <= MAX_REGISTERS_PER_READ:
            raise ValueError(f"count must be 1..{MAX_REGISTERS_PER_READ}, got {count}")
        if not 0 <= address <= 0xFFFF or address + count > 0x10000:
            raise ValueError(f"address range {address}+{count} outside 0..65535")
        if not 0 <= unit <= 247:
            raise ValueError(f"unit must be 0..247, got {unit}")

        ustats = self.stats.unit(unit)
        if self._in_cycle and self.skip_failed_units_in_cycle and unit in self._failed_in_cycle:
            self.stats.skipped += 1
            ustats.skipped += 1
            raise self._err(
                ModbusTimeout, unit, function, address, count, "skipped: timed out earlier this cycle"
            )

        async with self._lock:
            if not getattr(self._client, "connected", True) and not await self._client.connect():
                # Port gone (USB adapter unplugged) or never opened: try again on the next request.
                raise self._err(BusUnavailable, unit, function, address, count, "port not open")
            held_from = time.monotonic()
            self.stats.requests += 1
            ustats.requests += 1
            try:
                return await self._transact(
                    unit,
                    function,
                    address,
                    count,
                    ustats,
                    self.timeout_s if timeout_s is None else timeout_s,
                    self.retries if retries is None else retries,
                )
            finally:
                held = time.monotonic() - held_from
                self.stats.bus_time_s += held
                ustats.bus_time_s += held

    async def _transact(
        self,
        unit: int,
        function: int,
        address: int,
        count: int,
        ustats: UnitStats,
        timeout_s: float,
        retries: int,
    ) -> list[int]:
        attempt = 0
        while True:
            try:
                regs = await self._attempt(unit, function, address, count, timeout_s)
            except ModbusExceptionResponse as exc:
                self.stats.exceptions += 1
                ustats.exceptions += 1
                self._note_error(unit, ustats, exc)
                self._mark_up(unit)  # it answered: it is alive
                raise
            except BusUnavailable as exc:
                self._note_error(unit, ustats, exc)
                raise
            except (ModbusTimeout, ModbusCrcError, ModbusFrameError) as exc:
                if isinstance(exc, ModbusTimeout) and self._in_cycle:
                    # The unit may still be answering this attempt. Its retry is the same
                    # request, so a late reply is a valid answer to it; a *different* request
                    # to this unit later in the cycle is not sent (RTU replies carry no
                    # address, so a late reply of the same length would be taken for it).
                    self._failed_in_cycle.add(unit)
                if attempt < retries:
                    attempt += 1
                    self.stats.retries += 1
                    ustats.retries += 1
                    log.debug(
                        "event=modbus_retry port=%s unit=%d fc=%d addr=%d count=%d attempt=%d reason=%s",
                        self.name,
                        unit,
                        function,
                        address,
                        count,
                        attempt,
                        type(exc).__name__,
                    )
                    continue
                if isinstance(exc, ModbusTimeout):
                    self.stats.timeouts += 1
                    ustats.timeouts += 1
                    self._mark_down(unit, exc)
                elif isinstance(exc, ModbusCrcError):
                    self.stats.crc_errors += 1
                    ustats.crc_errors += 1
                else:
                    self.stats.frame_errors += 1
                    ustats.frame_errors += 1
                self._note_error(unit, ustats, exc)
                raise
            self.stats.ok += 1
            ustats.ok += 1
            self._mark_up(unit)
            return regs

    async def _wait_line_quiet(self) -> None:
        """Wait until the line has been silent for t3.5, then drop anything buffered."""
        if not self.is_serial:
            return
        started = time.monotonic()
        while True:
            now = time.monotonic()
            quiet_from = max(self._last_end, self._last_rx)
            wait = quiet_from + self.gap_s - now
            if wait <= 0 or now - started >= self.max_drain_s:
                break
            await asyncio.sleep(wait)
        self._discard_input()

    def _discard_input(self) -> None:
        ctx = getattr(self._client, "ctx", None)
        if ctx is None:
            return
        ctx.recv_buffer = b""
        transport = getattr(ctx, "transport", None)
        port = getattr(transport, "sync_serial", None)
        if port is not None:
            try:
                port.reset_input_buffer()
            except (OSError, ValueError) as exc:  # a pty or an unplugged adapter
                log.debug("event=modbus_flush_failed port=%s error=%s", self.name, exc)

    async def _attempt(
        self, unit: int, function: int, address: int, count: int, timeout_s: float
    ) -> list[int]:
        from pymodbus.exceptions import ConnectionException, ModbusIOException

        await self._wait_line_quiet()
        loop = asyncio.get_running_loop()
        pending = _Pending(unit, function, count, loop.create_future())
        self._pending = pending
        read = self._client.read_holding_registers if function == 3 else self._client.read_input_registers
        try:
            request = read(address, count=count, device_id=unit)
        except ConnectionException as exc:  # pymodbus raises this before any await
            self._pending = None
            raise self._err(BusUnavailable, unit, function, address, count, str(exc)) from exc
        task = asyncio.ensure_future(request)
        try:
            done, _ = await asyncio.wait(
                {task, pending.abort}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for fut in (task, pending.abort):
                if not fut.done():
                    fut.cancel()
            # Let pymodbus unwind (release its own lock) before the next attempt.
            await asyncio.gather(task, return_exceptions=True)
            self._pending = None
            self._last_end = time.monotonic()
            if pending.strays:
                self.stats.stray_frames += pending.strays

        if task in done and not task.cancelled():
            failure = task.exception()
            if failure is None:
                return self._check_response(task.result(), unit, function, address, count)
            if isinstance(failure, ConnectionException | OSError):
                raise self._err(BusUnavailable, unit, function, address, count, str(failure)) from failure
            if isinstance(failure, ModbusIOException) and "No response" not in str(failure):
                # e.g. pymodbus could not decode a CRC-valid frame
                raise self._err(ModbusFrameError, unit, function, address, count, str(failure)) from failure
            if not isinstance(failure, ModbusIOException):
                raise failure
            # pymodbus's own timeout fired first: same as ours, classify what we heard.
        if pending.bad_crc:
            raise self._err(ModbusCrcError, unit, function, address, count, "reply CRC mismatch")
        if pending.heard.kind is HeardKind.OURS_PARTIAL:
            raise self._err(ModbusFrameError, unit, function, address, count, "truncated reply")
        if pending.heard.kind is HeardKind.GARBAGE:
            raise self._err(ModbusFrameError, unit, function, address, count, "unframed bytes")
        raise self._err(ModbusTimeout, unit, function, address, count, f"no reply in {timeout_s:g} s")

    def _check_response(self, rsp: Any, unit: int, function: int, address: int, count: int) -> list[int]:
        if rsp.isError():
            code = int(getattr(rsp, "exception_code", 0))
            if (int(rsp.function_code) & 0x7F) != function:
                raise self._err(
                    ModbusFrameError,
                    unit,
                    function,
                    address,
                    count,
                    f"exception reply for function {int(rsp.function_code) & 0x7F}",
                )
            raise self._exc_response(unit, function, address, count, code)
        if int(rsp.function_code) != function or (rsp.dev_id and rsp.dev_id != unit):
            # e.g. a late 0x03 reply while a 0x04 request is pending: pymodbus accepts it.
            raise self._err(
                ModbusFrameError,
                unit,
                function,
                address,
                count,
                f"reply from unit {rsp.dev_id} function {int(rsp.function_code)}",
            )
        regs = list(rsp.registers)
        if len(regs) != count:
            raise self._err(
                ModbusFrameError,
                unit,
                function,
                address,
                count,
                f"{len(regs)} registers in reply",
            )
        return regs

    # -- receive hook -----------------------------------------------------------------

    def _tracer(self, previous: Callable[[bool, bytes], bytes]) -> Callable[[bool, bytes], bytes]:
        def trace(sending: bool, data: bytes) -> bytes:
            data = previous(sending, data)
            if not sending:
                self._on_receive(data)
            return data

        return trace

    def _on_receive(self, buf: bytes) -> None:
        """Called by pymodbus with its (cumulative) receive buffer on every chunk."""
        self._last_rx = time.monotonic()
        pending = self._pending
        if pending is None or not self._rtu:
            return
        heard = scan_rtu_response(buf, pending.unit, self._crc16)
        pending.strays = max(pending.strays, len(heard.stray_units))
        pending.heard = heard
        if heard.kind is HeardKind.OURS_BAD_CRC:
            pending.bad_crc = True
            # The whole frame is in: no need to wait for the timeout to know it is bad.
            if not pending.abort.done():
                pending.abort.set_result(None)

    # -- helpers ----------------------------------------------------------------------

    def _err(
        self,
        cls: type[ModbusError],
        unit: int,
        function: int,
        address: int,
        count: int,
        detail: str = "",
    ) -> ModbusError:
        return cls(self.name, unit, function, address, count, detail)

    def _exc_response(
        self, unit: int, function: int, address: int, count: int, code: int
    ) -> ModbusExceptionResponse:
        return ModbusExceptionResponse(self.name, unit, function, address, count, code)

    def _note_error(self, unit: int, ustats: UnitStats, exc: ModbusError) -> None:
        ustats.last_error = type(exc).__name__
        log.debug("event=modbus_error port=%s unit=%d error=%s", self.name, unit, exc)

    def _mark_down(self, unit: int, exc: ModbusError) -> None:
        # One line per state change, not per failed request (rate limiting by state). A unit
        # that never answered is only worth a warning while polling, not while probing.
        if unit not in self._unit_down:
            self._unit_down.add(unit)
            level = logging.WARNING if (self._in_cycle or unit in self._seen_up) else logging.DEBUG
            log.log(
                level,
                "event=modbus_unit_down port=%s unit=%d error=%s",
                self.name,
                unit,
                type(exc).__name__,
            )

    def _mark_up(self, unit: int) -> None:
        self._seen_up.add(unit)
        if unit in self._unit_down:
            self._unit_down.discard(unit)
            log.info("event=modbus_unit_up port=%s unit=%d", self.name, unit)
