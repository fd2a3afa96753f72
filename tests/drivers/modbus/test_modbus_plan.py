"""Read planner: concrete plans for the shipped maps, the gap rule, properties, bus-time arithmetic."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.codec import DataType, Function, register_count
from drivers.modbus.plan import (
    DEFAULT_GAP_COST_REGISTERS,
    ReadPlan,
    ReadRequest,
    break_even_gap,
    bus_time_s,
    char_time_s,
    interframe_s,
    per_value_plan,
    plan_for,
    plan_reads,
)
from drivers.modbus.regmap import ValueDef, available_maps, load_map


def shape(plan: ReadPlan) -> list[tuple[int, int, int, int]]:
    return [(int(r.function), r.address, r.count, len(r.values)) for r in plan]


def v(register: int, type_: str = "float32", function: int = 4, name: str | None = None) -> ValueDef:
    return ValueDef(
        name or f"v{function}_{register}_{type_}", "power_active", None, "W", register, function, type_
    )


# --- the shipped maps -------------------------------------------------------------------------


def test_sdm630_plans_to_three_requests() -> None:
    m = load_map("sdm630")
    plan = plan_for(m)
    # 0x00..0x23 (per phase), 0x34..0x4B (totals, frequency, energies; gap 0x40..0x45 bridged),
    # 0x15A..0x165 (per-phase energies). The 16 unused registers 0x24..0x33 cost more than a request.
    assert shape(plan) == [(4, 0x0000, 36, 18), (4, 0x0034, 24, 7), (4, 0x015A, 12, 6)]
    assert (len(m.values), len(plan), plan.total_registers) == (31, 3, 72)


def test_sdm120_plans_to_two_requests() -> None:
    plan = plan_for(load_map("sdm120"))
    assert shape(plan) == [(4, 0x0000, 32, 6), (4, 0x0046, 6, 3)]


def test_abb_b23_plans_to_four_requests() -> None:
    plan = plan_for(load_map("abb_b23"))
    assert shape(plan) == [(3, 0x5000, 8, 2), (3, 0x5460, 24, 6), (3, 0x5B00, 45, 19), (3, 0x5B3A, 4, 4)]


def test_em340_respects_its_50_register_limit() -> None:
    plan = plan_for(load_map("em340"))
    assert shape(plan) == [(4, 0x0000, 50, 22), (4, 0x0033, 29, 6)]


@pytest.mark.parametrize("name", available_maps())
def test_shipped_maps_plan_to_far_fewer_requests_than_values(name: str) -> None:
    m = load_map(name)
    plan, naive = plan_for(m), per_value_plan(m.values)
    assert len(naive) == len(m.values)
    assert len(plan) <= len(m.values) // 4 + 1
    for baud in (2400, 9600, 19200, 38400, 115200):
        assert bus_time_s(plan, baud) < bus_time_s(naive, baud)


# --- the gap rule -----------------------------------------------------------------------------


def test_default_break_even_is_ten_registers() -> None:
    assert DEFAULT_GAP_COST_REGISTERS == 10
    assert break_even_gap(9600, 10) == 10 == break_even_gap(19200, 11)


def test_gap_of_break_even_is_bridged_and_one_more_is_not() -> None:
    # v(0) ends at 2: a value at 12 leaves a gap of 10, one at 13 a gap of 11.
    assert shape(plan_reads([v(0), v(12)])) == [(4, 0, 14, 2)]
    assert shape(plan_reads([v(0), v(13)])) == [(4, 0, 2, 1), (4, 13, 2, 1)]


def test_gap_cost_and_max_gap_are_configurable() -> None:
    values = [v(0), v(5), v(20)]  # gaps of 3 and 13
    assert shape(plan_reads(values, gap_cost_registers=13)) == [(4, 0, 22, 3)]
    assert shape(plan_reads(values, gap_cost_registers=0)) == [(4, 0, 2, 1), (4, 5, 2, 1), (4, 20, 2, 1)]
    assert shape(plan_reads(values, gap_cost_registers=13, max_gap=3)) == [(4, 0, 7, 2), (4, 20, 2, 1)]
    # no_gaps: only adjacent values share a request.
    assert shape(plan_reads([v(0), v(2), v(5)], max_gap=0)) == [(4, 0, 4, 2), (4, 5, 2, 1)]


def test_map_no_gaps_option_reaches_the_planner() -> None:
    # SDM120 with no_gaps: the six values 0x00..0x1F are 4 registers apart, only frequency and
    # the two energies (0x46, 0x48, 0x4A) are adjacent.
    plan = plan_for(replace(load_map("sdm120"), max_gap=0))
    assert len(plan) == 7
    assert shape(plan)[-1] == (4, 0x0046, 6, 3)


def test_max_registers_splits_requests() -> None:
    values = [v(r) for r in range(0, 20, 2)]  # ten adjacent float32s, 20 registers
    assert shape(plan_reads(values, max_registers=8)) == [(4, 0, 8, 4), (4, 8, 8, 4), (4, 16, 4, 2)]
    with pytest.raises(ValueError, match="needs 4 registers"):
        plan_reads([v(0, "uint64")], max_registers=3)
    with pytest.raises(ValueError):
        plan_reads([v(0)], max_registers=126)


def test_functions_are_never_mixed_even_at_adjacent_addresses() -> None:
    plan = plan_reads([v(0, function=4), v(2, function=3), v(4, function=4)])
    assert shape(plan) == [(3, 2, 2, 1), (4, 0, 6, 2)]


def test_equal_values_are_read_once_and_request_offsets_index_the_reply() -> None:
    a, b = v(10), v(14, "int16")
    plan = plan_reads([b, a, a])
    (req,) = plan.requests
    assert (req.address, req.count, req.values) == (10, 5, (a, b))
    assert (req.offset(a), req.offset(b), req.end) == (0, 4, 15)
    assert plan.values == (a, b)


def test_empty_plan() -> None:
    plan = plan_reads([])
    assert (len(plan), plan.total_registers, bus_time_s(plan, 9600)) == (0, 0, 0.0)


# --- properties -------------------------------------------------------------------------------


@st.composite
def value_sets(draw: st.DrawFn) -> list[ValueDef]:
    n = draw(st.integers(min_value=0, max_value=40))
    out = []
    for i in range(n):
        t = draw(st.sampled_from(list(DataType)))
        f = draw(st.sampled_from([Function.HOLDING, Function.INPUT]))
        r = draw(st.integers(min_value=0, max_value=0x10000 - register_count(t)))
        out.append(ValueDef(f"v{i}", "current", None, "A", r, f, t))
    return out


@settings(max_examples=300)
@given(
    values=value_sets(),
    max_registers=st.integers(min_value=4, max_value=125),
    gap_cost=st.one_of(st.none(), st.integers(min_value=0, max_value=30)),
    max_gap=st.one_of(st.none(), st.integers(min_value=0, max_value=30)),
    seed=st.integers(),
)
def test_plan_properties(
    values: list[ValueDef], max_registers: int, gap_cost: int | None, max_gap: int | None, seed: int
) -> None:
    plan = plan_reads(values, max_registers=max_registers, gap_cost_registers=gap_cost, max_gap=max_gap)
    allowed = DEFAULT_GAP_COST_REGISTERS if gap_cost is None else gap_cost
    if max_gap is not None:
        allowed = min(allowed, max_gap)

    # Every value is covered by exactly one request, and lies entirely inside it.
    covering = [[r for r in plan if vd in r.values] for vd in values]
    assert all(len(c) == 1 for c in covering)
    assert sorted(vd.name for r in plan for vd in r.values) == sorted(vd.name for vd in values)
    for r in plan:
        assert 1 <= r.count <= max_registers
        assert r.address >= 0 and r.end <= 0x10000
        # Requests never mix functions.
        assert all(vd.function == r.function for vd in r.values)
        assert all(r.address <= vd.register and vd.end <= r.end for vd in r.values)
        # The request starts at its first value and ends at its last value's end: no padding.
        assert r.address == min(vd.register for vd in r.values) and r.end == max(vd.end for vd in r.values)
        # No bridged gap is larger than allowed.
        reach = r.values[0].end
        for vd in r.values[1:]:
            assert vd.register - reach <= allowed
            reach = max(reach, vd.end)

    # Requests come in (function, address) order; greedy is maximal: the next request's first
    # value could not have joined the previous request.
    keys = [(int(r.function), r.address) for r in plan]
    assert keys == sorted(keys)
    for a, b in zip(plan.requests, plan.requests[1:], strict=False):
        if a.function == b.function:
            first = b.values[0]
            assert first.register - a.end > allowed or max(a.end, first.end) - a.address > max_registers

    # Deterministic: the same plan whatever the input order.
    shuffled = list(values)
    random.Random(seed).shuffle(shuffled)
    assert (
        plan_reads(shuffled, max_registers=max_registers, gap_cost_registers=gap_cost, max_gap=max_gap)
        == plan
    )


@given(
    values=value_sets(),
    baud=st.sampled_from([1200, 4800, 9600, 19200, 38400, 57600, 115200]),
    bits=st.sampled_from([10, 11]),
    turnaround=st.sampled_from([0.0, 0.002, 0.01]),
)
def test_coalescing_never_costs_more_bus_time_than_one_request_per_value(
    values: list[ValueDef], baud: int, bits: int, turnaround: float
) -> None:
    planned = bus_time_s(plan_reads(values), baud, bits, turnaround)
    naive = bus_time_s(per_value_plan(values), baud, bits, turnaround)
    assert planned <= naive + 1e-12


def test_per_value_plan_is_one_request_per_value_in_order() -> None:
    plan = per_value_plan([v(4), v(0, "uint64", 3), v(0)])
    assert shape(plan) == [(3, 0, 4, 1), (4, 0, 2, 1), (4, 4, 2, 1)]


def test_requests_are_hashable_for_result_mappings() -> None:
    plan = plan_for(load_map("abb_b23"))
    assert len({r: None for r in plan}) == len(plan)
    assert isinstance(plan.requests[0], ReadRequest)


# --- bus time ---------------------------------------------------------------------------------


def one_request(count: int, function: int = 4) -> ReadPlan:
    return ReadPlan((ReadRequest(Function(function), 0, count, ()),))


def test_bus_time_at_9600_8n1_by_hand() -> None:
    # 10 registers: request 8 bytes, response 5 + 20 = 25 bytes, 2 x 3.5 chars of silence:
    # 40 characters of 10 bits at 9600 baud = 41.667 ms.
    assert bus_time_s(one_request(10), 9600, 10) == pytest.approx(40 * 10 / 9600)
    assert bus_time_s(one_request(10), 9600, 10) == pytest.approx(0.0416667, abs=1e-7)
    # A 5 ms device turnaround adds 5 ms per request.
    assert bus_time_s(one_request(10), 9600, 10, turnaround_s=0.005) == pytest.approx(0.0466667, abs=1e-7)


def test_bus_time_at_19200_8e1_and_default_framing() -> None:
    # 11-bit characters (8E1, the Modbus default): 1 register = 8 + 7 + 7 = 22 chars.
    expected = 22 * 11 / 19200
    assert bus_time_s(one_request(1), 19200, 11) == pytest.approx(expected)
    assert bus_time_s(one_request(1), 19200) == pytest.approx(expected)


def test_bus_time_above_19200_uses_fixed_1_75_ms_silences() -> None:
    # 38400 8N1, 10 registers: 2 x 1.75 ms + (8 + 25) chars x 10 bits / 38400 = 12.094 ms.
    assert bus_time_s(one_request(10), 38400, 10) == pytest.approx(0.0035 + 33 * 10 / 38400)
    assert interframe_s(38400) == 0.00175 == interframe_s(115200, 10)
    assert interframe_s(19200, 11) == pytest.approx(3.5 * 11 / 19200)


def test_bus_time_sums_requests() -> None:
    plan = plan_for(load_map("sdm630"))  # 36 + 24 + 12 registers in 3 requests
    chars = 3 * (8 + 5 + 7) + 2 * 72
    assert bus_time_s(plan, 9600, 10) == pytest.approx(chars * 10 / 9600)
    assert bus_time_s(plan, 9600, 10, 0.004) == pytest.approx(chars * 10 / 9600 + 3 * 0.004)


def test_break_even_gap_depends_on_the_line() -> None:
    # 38400 8N1: overhead 13 chars + 3.5 ms = 6.885 ms; a register 0.521 ms -> 13.
    assert break_even_gap(38400, 10) == 13
    # 19200 8E1 with a 5 ms turnaround: (20 x 0.573 + 5) ms / 1.146 ms = 14.4 -> 14.
    assert break_even_gap(19200, 11, 0.005) == 14
    assert char_time_s(9600, 10) == pytest.approx(1 / 960)
    with pytest.raises(ValueError):
        char_time_s(0)
