"""Exceptions raised by a Modbus bus for one failed read; each names where it happened.

A bus (``drivers.modbus.bus.ModbusBus`` on real or simulated RS-485) raises exactly one of these
per failed request. The meter layer catches them per request, so one failed request costs only
the values it carried (see :func:`drivers.modbus.reading.decode_plan_results`).

All of them carry ``port``, ``unit``, ``function``, ``address`` and ``count`` so a log line or a
value's ``detail`` can say which transaction failed without more context. They keep their
constructor arguments in ``args`` so they pickle and copy like any exception.
"""

from __future__ import annotations

__all__ = [
    "EXCEPTION_NAMES",
    "ModbusCrcError",
    "ModbusError",
    "ModbusExceptionResponse",
    "ModbusFrameError",
    "ModbusTimeout",
]

# Modbus Application Protocol Specification V1.1b3, §7 "MODBUS Exception Responses".
EXCEPTION_NAMES: dict[int, str] = {
    0x01: "illegal function",
    0x02: "illegal data address",
    0x03: "illegal data value",
    0x04: "server device failure",
    0x05: "acknowledge",
    0x06: "server device busy",
    0x08: "memory parity error",
    0x0A: "gateway path unavailable",
    0x0B: "gateway target device failed to respond",
}


class ModbusError(Exception):
    """One Modbus transaction failed. Base class; a bus raises one of the subclasses.

    ``ModbusError(port, unit, function, address, count, detail="")``.
    """

    kind = "error"

    def __init__(
        self, port: str, unit: int, function: int, address: int, count: int, detail: str = ""
    ) -> None:
        super().__init__(port, unit, function, address, count, detail)
        self.port = port
        self.unit = unit
        self.function = function
        self.address = address
        self.count = count
        self.detail = detail

    def _where(self) -> str:
        return (
            f"port={self.port} unit={self.unit} fc={self.function} "
            f"addr=0x{self.address:04X} count={self.count}"
        )

    def __str__(self) -> str:
        s = f"{self.kind}: {self._where()}"
        return f"{s} ({self.detail})" if self.detail else s


class ModbusTimeout(ModbusError):
    """No (complete) reply before the response timeout."""

    kind = "timeout"


class ModbusCrcError(ModbusError):
    """A reply arrived but its CRC-16 did not match (noise, collision, wrong baud or parity)."""

    kind = "crc"


class ModbusFrameError(ModbusError):
    """A reply with a valid CRC that is garbled or short: wrong unit, function, byte count, length."""

    kind = "frame"


class ModbusExceptionResponse(ModbusError):
    """The device answered with a Modbus exception (function code | 0x80, exception code).

    ``ModbusExceptionResponse(port, unit, function, address, count, exception_code, detail="")``.
    """

    kind = "exception"

    def __init__(
        self,
        port: str,
        unit: int,
        function: int,
        address: int,
        count: int,
        exception_code: int,
        detail: str = "",
    ) -> None:
        super().__init__(port, unit, function, address, count, detail)
        # Keep every constructor argument in args (in order) so pickling restores the object.
        self.args = (port, unit, function, address, count, exception_code, detail)
        self.exception_code = exception_code

    def __str__(self) -> str:
        name = EXCEPTION_NAMES.get(self.exception_code, "unknown")
        s = f"exception {self.exception_code} ({name}): {self._where()}"
        return f"{s} ({self.detail})" if self.detail else s
