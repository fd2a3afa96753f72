"""Typed meter readings with a quality per value, built purely from a plan and its results.

:func:`decode_plan_results` is the whole sans-I/O step between the bus and the rest of the
gateway: it takes what each request of a :class:`~drivers.modbus.plan.ReadPlan` returned (the
registers, or the :class:`~drivers.modbus.errors.ModbusError` it raised) and produces one
:class:`MeterReading`. A failed request costs exactly the values it carried; the others keep
their numbers.

Qualities (:class:`Quality`):

- ``ok``: decoded and within the value's plausibility range; ``value`` is the number.
- ``timeout``, ``crc``, ``exception``, ``frame``: the request carrying the value failed that way
  (``frame`` also covers a reply with the wrong number of registers).
- ``out_of_range``: decoded, but NaN, infinite or outside the plausibility range (default per
  quantity, :data:`~drivers.modbus.regmap.DEFAULT_RANGES`, or the value's ``valid_range``), or a
  ``float32`` that is non-zero but smaller in magnitude than :data:`FLOAT32_MIN_MAGNITUDE`.

Only ``ok`` values carry a number; every other quality has ``value = None`` and says why in
``detail`` (for ``out_of_range``, the decoded number and the range), so a consumer can never use a
bad number by forgetting to look at the quality.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from drivers.modbus.codec import DataType, decode
from drivers.modbus.errors import (
    ModbusCrcError,
    ModbusError,
    ModbusExceptionResponse,
    ModbusFrameError,
)
from drivers.modbus.plan import ReadPlan, ReadRequest
from drivers.modbus.regmap import Phase, Quantity, ValueDef

__all__ = [
    "FLOAT32_MIN_MAGNITUDE",
    "MeterReading",
    "Quality",
    "ValueReading",
    "decode_plan_results",
    "quality_for",
]

#: A float32 value whose magnitude is non-zero but below this (in the value's unit) is garbage:
#: a float32 read in the wrong word order, or an uninitialised register, decodes to such tiny
#: numbers (230.0 V word-swapped is 2.4e-41 V), while a meter reports exactly 0 below its starting
#: threshold (SDM630: about 9 W, so even its first energy step is about 1e-6 kWh).
FLOAT32_MIN_MAGNITUDE = 1e-9


class Quality(StrEnum):
    OK = "ok"
    TIMEOUT = "timeout"
    CRC = "crc"
    EXCEPTION = "exception"
    OUT_OF_RANGE = "out_of_range"
    FRAME = "frame"


@dataclass(frozen=True)
class ValueReading:
    name: str
    quantity: Quantity
    phase: Phase | None
    unit: str
    value: float | None  # None unless quality is OK
    quality: Quality
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.quality is Quality.OK

    def to_dict(self) -> dict[str, Any]:
        return {
            "quantity": str(self.quantity),
            "phase": None if self.phase is None else str(self.phase),
            "unit": self.unit,
            "value": self.value,
            "quality": str(self.quality),
            "detail": self.detail,
        }


@dataclass(frozen=True)
class MeterReading:
    """All values of one meter from one execution of its read plan."""

    meter: str  # the configured meter name
    model: str
    unit_id: int
    timestamp_ns: int  # wall clock (time.time_ns) when the read started
    values: tuple[ValueReading, ...]

    def get(self, quantity: Quantity | str, phase: Phase | str | None = None) -> ValueReading | None:
        """The reading of ``quantity`` on ``phase``, or None if the meter has no such value.

        Without a phase, the meter-level value: the phase-less one (frequency), else the
        ``total``, else the only value of that quantity (a single-phase meter's ``L1``).
        """
        q = Quantity(quantity)
        matching = [v for v in self.values if v.quantity is q]
        if phase is not None:
            p = Phase(phase)
            return next((v for v in matching if v.phase is p), None)
        for wanted in (None, Phase.TOTAL):
            found = next((v for v in matching if v.phase is wanted), None)
            if found is not None:
                return found
        return matching[0] if len(matching) == 1 else None

    def by_phase(self) -> dict[Phase | None, dict[Quantity, ValueReading]]:
        """``{phase: {quantity: reading}}``, phases and quantities in map order."""
        out: dict[Phase | None, dict[Quantity, ValueReading]] = {}
        for v in self.values:
            out.setdefault(v.phase, {})[v.quantity] = v
        return out

    @property
    def ok(self) -> bool:
        """Every value is OK."""
        return all(v.ok for v in self.values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: ``values`` keyed by value name (no NaN: only OK values carry numbers)."""
        return {
            "meter": self.meter,
            "model": self.model,
            "unit_id": self.unit_id,
            "timestamp_ns": self.timestamp_ns,
            "ok": self.ok,
            "values": {v.name: v.to_dict() for v in self.values},
        }


def quality_for(error: ModbusError) -> Quality:
    """The quality of values whose request raised ``error``.

    A bare :class:`ModbusError` (the bus could not talk to the device at all, e.g. the port is
    gone) counts as ``timeout``: no reply was received.
    """
    if isinstance(error, ModbusCrcError):
        return Quality.CRC
    if isinstance(error, ModbusExceptionResponse):
        return Quality.EXCEPTION
    if isinstance(error, ModbusFrameError):
        return Quality.FRAME
    return Quality.TIMEOUT  # ModbusTimeout, or a bare ModbusError


def _reading(v: ValueDef, value: float | None, quality: Quality, detail: str = "") -> ValueReading:
    return ValueReading(v.name, v.quantity, v.phase, v.unit, value, quality, detail)


def _fmt(x: float) -> str:
    return repr(x) if not math.isfinite(x) else f"{x:.10g}"


def _decode_value(v: ValueDef, regs: Sequence[int]) -> ValueReading:
    x = decode(v, regs)
    lo, hi = v.plausible_range
    if not math.isfinite(x) or not lo <= x <= hi:
        detail = f"decoded {_fmt(x)} outside [{_fmt(lo)}, {_fmt(hi)}] {v.unit}".rstrip()
        return _reading(v, None, Quality.OUT_OF_RANGE, detail)
    if v.type is DataType.FLOAT32 and 0 < abs(x) < FLOAT32_MIN_MAGNITUDE:
        detail = f"decoded {_fmt(x)}: a non-zero float32 below {FLOAT32_MIN_MAGNITUDE:g} is not a measurement"
        return _reading(v, None, Quality.OUT_OF_RANGE, detail + " (word order?)")
    return _reading(v, x, Quality.OK)


def _decode_request(req: ReadRequest, result: Sequence[int] | ModbusError) -> list[ValueReading]:
    if isinstance(result, ModbusError):
        q, detail = quality_for(result), str(result)
        return [_reading(v, None, q, detail) for v in req.values]
    regs = list(result)
    problem = ""
    if len(regs) != req.count:
        problem = f"expected {req.count} registers from 0x{req.address:04X}, got {len(regs)}"
    elif not all(isinstance(w, int) and 0 <= w <= 0xFFFF for w in regs):
        problem = "reply holds a value that is not a 16-bit register"
    if problem:
        return [_reading(v, None, Quality.FRAME, problem) for v in req.values]
    out = []
    for v in req.values:
        i = req.offset(v)
        out.append(_decode_value(v, regs[i : i + v.count]))
    return out


def decode_plan_results(
    plan: ReadPlan,
    results: Mapping[ReadRequest, Sequence[int] | ModbusError],
    timestamp_ns: int,
    meter: str,
    model: str,
    unit_id: int,
) -> MeterReading:
    """Turn each request's registers (or error) into :class:`ValueReading` s, in plan order.

    Every request of ``plan`` must have a result; a missing one is a programming error
    (``KeyError``).
    """
    values: list[ValueReading] = []
    for req in plan.requests:
        values.extend(_decode_request(req, results[req]))
    return MeterReading(meter, model, unit_id, timestamp_ns, tuple(values))
