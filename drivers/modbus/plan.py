"""Read planning: a meter's values coalesced into the fewest Modbus read requests. Pure.

A plan is computed once per configuration (``Meter.__init__``) and executed every sample.

Rules (:func:`plan_reads`):

1. Values are grouped by function (a request reads either holding or input registers, never both)
   and sorted by register.
2. Walking up the registers, the next value joins the current request when the request stays
   within ``max_registers`` (at most 125 by the Modbus specification; less when the device says so,
   e.g. 80 for Eastron, 50 for Carlo Gavazzi EM3xx) and the unused registers between them (the
   *gap*) are at most ``allowed_gap`` registers; otherwise a new request starts.
3. ``allowed_gap`` is the bus-time break-even ``gap_cost_registers`` (below), further capped by the
   map's ``max_gap`` for devices that answer an exception when a read spans unmapped registers
   (``no_gaps = true`` means ``max_gap = 0``: only adjacent values share a request).

Greedy extension is optimal here: any sub-range of a feasible request is itself feasible, so
extending each request as far as the rules allow gives the fewest requests.

Break-even arithmetic (Modbus over Serial Line V1.02 §2.5.1.1; RTU, all times in character times
of ``bits_per_char / baud`` seconds):

- a separate read request costs its 8 request bytes + the 5 bytes of response overhead
  (unit, function, byte count, CRC) + 3.5 character times of silence before each of the two frames
  + the device's turnaround: ``8 + 5 + 2 * 3.5 = 20`` character times (turnaround 0);
- bridging a gap costs 2 bytes (one register in the response) per unused register;
- so bridging ``g`` registers is no slower than a separate request while ``2 * g <= 20``, i.e.
  ``g <= 10``: :data:`DEFAULT_GAP_COST_REGISTERS`. At a tie the gap is bridged: fewer
  transactions means fewer chances to time out.

Above 19,200 baud the specification fixes the silence at 1.75 ms instead of 3.5 character times,
and a real device adds its turnaround, both of which make a request dearer; :func:`break_even_gap`
computes the break-even for a given line (e.g. 13 registers at 38,400 baud 8N1).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from drivers.modbus.codec import MAX_READ_REGISTERS, Function, rtu_frame_bytes
from drivers.modbus.regmap import RegisterMap, ValueDef

__all__ = [
    "DEFAULT_GAP_COST_REGISTERS",
    "ReadPlan",
    "ReadRequest",
    "break_even_gap",
    "bus_time_s",
    "char_time_s",
    "interframe_s",
    "per_value_plan",
    "plan_for",
    "plan_reads",
]

REQUEST_BYTES = 8  # unit, function, address (2), count (2), CRC (2)
RESPONSE_OVERHEAD_BYTES = 5  # unit, function, byte count, CRC (2)
BYTES_PER_REGISTER = 2
INTERFRAME_CHARS = 3.5  # t3.5: silence that delimits RTU frames
INTERFRAME_FIXED_S = 0.00175  # t3.5 above 19,200 baud (fixed by the specification)
FIXED_INTERFRAME_ABOVE_BAUD = 19200

#: Break-even gap at <= 19,200 baud with no turnaround: (8 + 5 + 2 * 3.5) / 2 = 10 registers.
DEFAULT_GAP_COST_REGISTERS = int(
    (REQUEST_BYTES + RESPONSE_OVERHEAD_BYTES + 2 * INTERFRAME_CHARS) // BYTES_PER_REGISTER
)


@dataclass(frozen=True)
class ReadRequest:
    """One Modbus read: ``count`` registers from ``address`` with ``function``, carrying ``values``
    (sorted by register; each lies entirely inside the request)."""

    function: Function
    address: int
    count: int
    values: tuple[ValueDef, ...]

    @property
    def end(self) -> int:
        """First register after the request."""
        return self.address + self.count

    def offset(self, vdef: ValueDef) -> int:
        """Index of ``vdef``'s first register in this request's response."""
        return vdef.register - self.address


@dataclass(frozen=True)
class ReadPlan:
    """The requests that read a meter, in execution order (by function, then address)."""

    requests: tuple[ReadRequest, ...]

    def __len__(self) -> int:
        return len(self.requests)

    def __iter__(self) -> Iterator[ReadRequest]:
        return iter(self.requests)

    @property
    def total_registers(self) -> int:
        """Registers transferred per execution (values plus bridged gaps)."""
        return sum(r.count for r in self.requests)

    @property
    def values(self) -> tuple[ValueDef, ...]:
        return tuple(v for r in self.requests for v in r.values)


def _sorted_unique(values: Iterable[ValueDef]) -> list[ValueDef]:
    seen: set[ValueDef] = set()
    out = []
    for v in values:
        if v not in seen:
            seen.add(v)
            out.append(v)
    # Deterministic whatever the input order: ties on register break on width, then name.
    return sorted(out, key=lambda v: (int(v.function), v.register, v.count, v.name))


def plan_reads(
    values: Iterable[ValueDef],
    *,
    max_registers: int = MAX_READ_REGISTERS,
    gap_cost_registers: int | None = None,
    max_gap: int | None = None,
) -> ReadPlan:
    """Coalesce ``values`` into the fewest requests (rules and arithmetic: module docstring).

    ``gap_cost_registers`` (default :data:`DEFAULT_GAP_COST_REGISTERS`) is the largest gap worth
    bridging; ``max_gap`` (the device's limit, if any) caps it. Equal values are read once.
    """
    if not 1 <= max_registers <= MAX_READ_REGISTERS:
        raise ValueError(f"max_registers {max_registers} is outside 1..{MAX_READ_REGISTERS}")
    allowed_gap = DEFAULT_GAP_COST_REGISTERS if gap_cost_registers is None else gap_cost_registers
    if max_gap is not None:
        allowed_gap = min(allowed_gap, max_gap)
    if allowed_gap < 0:
        raise ValueError("gap limits must be >= 0")

    requests: list[ReadRequest] = []
    current: list[ValueDef] = []
    start = end = 0

    def close() -> None:
        if current:
            requests.append(ReadRequest(current[0].function, start, end - start, tuple(current)))

    for v in _sorted_unique(values):
        if v.count > max_registers:
            raise ValueError(f"{v.name} needs {v.count} registers, more than max_registers {max_registers}")
        if (
            current
            and v.function == current[0].function
            and v.register - end <= allowed_gap
            and max(end, v.end) - start <= max_registers
        ):
            current.append(v)
            end = max(end, v.end)
            continue
        close()
        current = [v]
        start, end = v.register, v.end
    close()
    return ReadPlan(tuple(requests))


def per_value_plan(values: Iterable[ValueDef]) -> ReadPlan:
    """One request per value: the naive baseline the benchmark compares :func:`plan_reads` with."""
    return ReadPlan(tuple(ReadRequest(v.function, v.register, v.count, (v,)) for v in _sorted_unique(values)))


def plan_for(regmap: RegisterMap, *, gap_cost_registers: int | None = None) -> ReadPlan:
    """:func:`plan_reads` with the map's own ``max_registers`` and ``max_gap``."""
    return plan_reads(
        regmap.values,
        max_registers=regmap.max_registers,
        gap_cost_registers=gap_cost_registers,
        max_gap=regmap.max_gap,
    )


def char_time_s(baud: int, bits_per_char: int = 11) -> float:
    """Time of one character on the line (start + 8 data + parity/stop bits)."""
    if baud <= 0 or bits_per_char <= 0:
        raise ValueError("baud and bits_per_char must be positive")
    return bits_per_char / baud


def interframe_s(baud: int, bits_per_char: int = 11) -> float:
    """t3.5, the silence before each frame: 3.5 character times, fixed at 1.75 ms above 19,200 baud."""
    if baud > FIXED_INTERFRAME_ABOVE_BAUD:
        return INTERFRAME_FIXED_S
    return INTERFRAME_CHARS * char_time_s(baud, bits_per_char)


def break_even_gap(baud: int, bits_per_char: int = 11, turnaround_s: float = 0.0) -> int:
    """The largest gap (in registers) whose extra bytes cost no more bus time than a separate
    request on this line: ``floor(request overhead / time of one register)``."""
    c = char_time_s(baud, bits_per_char)
    overhead = (
        (REQUEST_BYTES + RESPONSE_OVERHEAD_BYTES) * c + 2 * interframe_s(baud, bits_per_char) + turnaround_s
    )
    # The tiny epsilon keeps an exact tie (20 chars / 2 chars = 10) from flooring to 9.
    return math.floor(overhead / (BYTES_PER_REGISTER * c) + 1e-9)


def bus_time_s(plan: ReadPlan, baud: int, bits_per_char: int = 11, turnaround_s: float = 0.0) -> float:
    """Theoretical minimum time to execute ``plan`` once on a half-duplex RTU line.

    Per request: t3.5 + request bytes + t3.5 + ``turnaround_s`` + response bytes, with bytes
    costing ``bits_per_char / baud`` each. ``bits_per_char`` is 11 for 8E1 or 8N2 (the Modbus
    default framing) and 10 for 8N1.
    """
    c = char_time_s(baud, bits_per_char)
    t35 = interframe_s(baud, bits_per_char)
    total = 0.0
    for r in plan.requests:
        req, resp = rtu_frame_bytes(r.function, r.count)
        total += t35 + req * c + t35 + turnaround_s + resp * c
    return total
