"""A Modbus meter on a bus: the thin async shell around the sans-I/O core.

``Meter`` computes its read plan once, at construction, and on every :meth:`Meter.read` executes
the plan's requests in order on the bus it was given, then hands the registers (or errors) to
:func:`~drivers.modbus.reading.decode_plan_results`. It never opens a port: the bus (the real
half-duplex RS-485 ``ModbusBus``, the simulator's, or a test fake) is injected, and so is the
clock. A request that raises :class:`~drivers.modbus.errors.ModbusError` costs only its own values;
anything else (cancellation, programming errors) propagates.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

from drivers.modbus.errors import ModbusError
from drivers.modbus.plan import ReadPlan, ReadRequest, plan_for
from drivers.modbus.reading import MeterReading, decode_plan_results
from drivers.modbus.regmap import RegisterMap

__all__ = ["Meter", "RegisterBus"]


class RegisterBus(Protocol):
    """What a meter needs from a bus (``drivers.modbus.bus.ModbusBus`` implements it)."""

    async def read_registers(self, unit: int, function: int, address: int, count: int) -> list[int]:
        """The ``count`` registers from ``address``; raises a ``ModbusError`` subclass on failure."""
        ...


class Meter:
    """One meter: ``Meter(name, regmap, unit_id, bus)``; ``await meter.read()`` -> MeterReading."""

    def __init__(
        self,
        name: str,
        regmap: RegisterMap,
        unit_id: int,
        bus: RegisterBus,
        *,
        clock: Callable[[], int] = time.time_ns,
        gap_cost_registers: int | None = None,
    ) -> None:
        if not 1 <= unit_id <= 247:
            raise ValueError(f"unit id {unit_id} is outside 1..247")
        self.name = name
        self.regmap = regmap
        self.unit_id = unit_id
        self.bus = bus
        self._clock = clock
        self.plan: ReadPlan = plan_for(regmap, gap_cost_registers=gap_cost_registers)

    def __repr__(self) -> str:
        return (
            f"Meter({self.name!r}, model={self.regmap.model!r}, unit={self.unit_id}, "
            f"requests={len(self.plan)})"
        )

    async def read(self) -> MeterReading:
        """Execute the plan once; the timestamp is the clock when the first request is sent."""
        timestamp_ns = self._clock()
        results: dict[ReadRequest, Sequence[int] | ModbusError] = {}
        for req in self.plan.requests:
            try:
                results[req] = await self.bus.read_registers(
                    self.unit_id, int(req.function), req.address, req.count
                )
            except ModbusError as e:
                results[req] = e
        return decode_plan_results(
            self.plan, results, timestamp_ns, self.name, self.regmap.model, self.unit_id
        )
