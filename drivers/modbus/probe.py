"""Field commissioning: which unit ids answer on a bus, and which meter model each one is.

``omgw probe modbus --port /dev/ttyUSB0 --baud 9600 --units 1-247`` runs :func:`probe_modbus`.

How a unit is probed (one request at a time, through the same :class:`~drivers.modbus.bus.ModbusBus`
the sampler uses, with a short timeout and no retry):

1. The ``identify`` registers of the shipped maps, grouped by (function, register, width) so a
   register shared by several models (Eastron's meter code 0xFC02 for SDM630 and SDM120) is read
   once. The first group decides liveness: no reply there means "not responding" and the scan
   moves on (an absent unit costs one timeout). An exception reply ("illegal data address")
   proves the unit is alive and only rules that group out.
2. If no identify register matched, each map's first planned request is read and decoded; a map
   whose values all decode within their plausibility ranges (and whose voltages look like mains)
   is reported as a *guess*, said so in ``detail``.

A unit that answers something but matches nothing is ``responding=True, model=None``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from drivers.modbus.codec import decode, decode_raw
from drivers.modbus.errors import ModbusError, ModbusExceptionResponse, ModbusTimeout
from drivers.modbus.meter import RegisterBus
from drivers.modbus.plan import plan_for
from drivers.modbus.regmap import (
    Identify,
    Quantity,
    RegisterMap,
    ValueDef,
    available_maps,
    load_map,
)

__all__ = ["ProbeResult", "parse_units", "probe_modbus"]

MIN_UNIT, MAX_UNIT = 1, 247  # 0 is broadcast (no reply); 248..255 are reserved


@dataclass(frozen=True)
class ProbeResult:
    unit: int
    responding: bool
    model: str | None  # the register map name (``load_map`` / config ``model``), if identified
    detail: str


def parse_units(spec: str) -> list[int]:
    """``"1-5,7"`` -> ``[1, 2, 3, 4, 5, 7]``; sorted, without duplicates, each in 1..247."""
    out: set[int] = set()
    if not spec.strip():
        raise ValueError("empty unit list (expected e.g. 1-247 or 1,3,5-9)")
    for part in spec.split(","):
        part = part.strip()
        if not part:
            raise ValueError(f"empty element in unit list {spec!r}")
        lo_s, sep, hi_s = part.partition("-")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if sep else lo
        except ValueError:
            raise ValueError(f"{part!r} is not a unit id or a range like 1-10") from None
        if lo > hi:
            raise ValueError(f"{part!r}: range runs backwards")
        if lo < MIN_UNIT or hi > MAX_UNIT:
            raise ValueError(f"{part!r}: unit ids are {MIN_UNIT}..{MAX_UNIT}")
        out.update(range(lo, hi + 1))
    return sorted(out)


@dataclass(frozen=True)
class _IdentifyGroup:
    ident: Identify  # representative (function, register, type, word order)
    maps: tuple[tuple[str, RegisterMap], ...]


def _identify_groups(maps: Sequence[tuple[str, RegisterMap]]) -> list[_IdentifyGroup]:
    groups: dict[tuple[int, int, int, str], list[tuple[str, RegisterMap]]] = {}
    reps: dict[tuple[int, int, int, str], Identify] = {}
    for name, m in maps:
        if m.identify is None:
            continue
        i = m.identify
        key = (int(i.function), i.register, i.count, i.word_order.value)
        groups.setdefault(key, []).append((name, m))
        reps.setdefault(key, i)
    return [_IdentifyGroup(reps[k], tuple(v)) for k, v in groups.items()]


def _plausible(regs: Sequence[int], address: int, values: Sequence[ValueDef]) -> bool:
    voltages = 0
    for v in values:
        x = decode(v, regs[v.register - address : v.end - address])
        lo, hi = v.plausible_range
        if math.isnan(x) or not lo <= x <= hi:
            return False
        if v.quantity is Quantity.VOLTAGE:
            if not 80.0 <= x <= 300.0:
                return False
            voltages += 1
    return voltages > 0


def _supports_overrides(bus: RegisterBus) -> bool:
    try:
        params = inspect.signature(bus.read_registers).parameters
    except (TypeError, ValueError):
        return False
    return "timeout_s" in params and "retries" in params


async def _read(
    bus: RegisterBus, unit: int, function: int, address: int, count: int, timeout_s: float
) -> list[int]:
    if _supports_overrides(bus):
        return await bus.read_registers(  # type: ignore[call-arg]
            unit, function, address, count, timeout_s=timeout_s, retries=0
        )
    return await bus.read_registers(unit, function, address, count)  # e.g. a test fake


async def _probe_unit(
    bus: RegisterBus,
    unit: int,
    maps: Sequence[tuple[str, RegisterMap]],
    groups: Sequence[_IdentifyGroup],
    timeout_s: float,
) -> ProbeResult:
    responding = False
    notes: list[str] = []
    for n, g in enumerate(groups):
        i = g.ident
        try:
            regs = await _read(bus, unit, int(i.function), i.register, i.count, timeout_s)
        except ModbusTimeout:
            if n == 0 and not responding:
                return ProbeResult(unit, False, None, f"no reply in {timeout_s:g} s")
            notes.append(f"fc{int(i.function)} 0x{i.register:04X}: no reply")
            continue
        except ModbusExceptionResponse as exc:
            responding = True
            notes.append(f"fc{int(i.function)} 0x{i.register:04X}: exception {exc.exception_code}")
            continue
        except ModbusError as exc:
            # CRC or framing trouble: something is there, but the line is not clean.
            responding = True
            notes.append(f"fc{int(i.function)} 0x{i.register:04X}: {exc.kind}")
            continue
        responding = True
        code = decode_raw(i.type, i.word_order, regs)
        for name, m in g.maps:
            if m.identify is not None and m.identify.matches(regs):
                return ProbeResult(
                    unit,
                    True,
                    name,
                    f"{m.manufacturer} {m.model}: fc{int(i.function)} 0x{i.register:04X} = {code}",
                )
        notes.append(f"fc{int(i.function)} 0x{i.register:04X} = {code} (no map matches)")

    # No identify register matched: try each map's first planned request for plausibility.
    for name, m in maps:
        plan = plan_for(m)
        if not plan.requests:
            continue
        req = plan.requests[0]
        try:
            regs = await _read(bus, unit, int(req.function), req.address, req.count, timeout_s)
        except ModbusExceptionResponse:
            responding = True
            continue
        except ModbusError:
            continue
        responding = True
        if _plausible(regs, req.address, req.values):
            return ProbeResult(
                unit,
                True,
                name,
                f"guess: {m.manufacturer} {m.model} registers decode plausibly "
                f"(fc{int(req.function)} 0x{req.address:04X}+{req.count}); " + "; ".join(notes),
            )
    if responding:
        return ProbeResult(unit, True, None, "responds, model not identified; " + "; ".join(notes))
    return ProbeResult(unit, False, None, "no reply; " + "; ".join(notes))


async def probe_modbus(
    bus: RegisterBus,
    units: Iterable[int],
    timeout_s: float = 0.2,
    *,
    maps: Iterable[str] | None = None,
) -> list[ProbeResult]:
    """Probe each of ``units`` in turn on ``bus``; one :class:`ProbeResult` per unit, in order.

    ``maps`` restricts the candidate models (names for :func:`~drivers.modbus.regmap.load_map`;
    default: every shipped map). Worst case per absent unit: one ``timeout_s``.
    """
    names = list(maps) if maps is not None else available_maps()
    loaded = [(n, load_map(n)) for n in names]
    groups = _identify_groups(loaded)
    results = []
    for unit in units:
        if not MIN_UNIT <= unit <= MAX_UNIT:
            raise ValueError(f"unit id {unit} is outside {MIN_UNIT}..{MAX_UNIT}")
        results.append(await _probe_unit(bus, unit, loaded, groups, timeout_s))
    return results
