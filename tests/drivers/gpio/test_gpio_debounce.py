"""The pure edge debouncer: synthetic times, no event loop, no pins."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.gpio import DebouncedEdge, EdgeDebouncer

MS = 1_000_000


def test_a_clean_edge_is_reported_after_the_window_with_its_original_time() -> None:
    d = EdgeDebouncer(initial=False, window_ns=10 * MS)
    assert d.change(100 * MS, True) == 110 * MS
    assert d.poll(109 * MS) is None
    assert d.poll(110 * MS) == DebouncedEdge(
        active=True, at_ns=100 * MS, confirmed_ns=110 * MS, transitions=1
    )
    assert d.level is True
    assert d.deadline_ns is None


def test_a_bouncing_edge_becomes_one_edge_timed_at_the_first_transition() -> None:
    d = EdgeDebouncer(initial=True, window_ns=5 * MS)
    for t, level in [(0, False), (1, True), (2, False), (3, True), (4, False)]:
        d.change(t * MS, level)
    assert d.poll(8 * MS) is None  # 4 ms after the last bounce: not settled yet
    edge = d.poll(9 * MS)
    assert edge == DebouncedEdge(active=False, at_ns=0, confirmed_ns=9 * MS, transitions=5)


def test_a_glitch_shorter_than_the_window_produces_no_edge() -> None:
    d = EdgeDebouncer(initial=False, window_ns=10 * MS)
    d.change(0, True)
    d.change(3 * MS, False)
    assert d.poll(20 * MS) is None
    assert d.level is False
    assert d.glitches == 1


def test_repeated_reports_of_the_same_level_are_ignored() -> None:
    d = EdgeDebouncer(initial=False, window_ns=MS)
    assert d.change(0, False) is None
    d.change(5, True)
    d.change(500_000, True)  # no change: does not extend the window
    assert d.deadline_ns == 5 + MS


def test_zero_window_reports_at_once() -> None:
    d = EdgeDebouncer(initial=False, window_ns=0)
    d.change(42, True)
    assert d.poll(42) == DebouncedEdge(True, 42, 42, 1)


def test_out_of_order_times_do_not_move_time_backwards() -> None:
    d = EdgeDebouncer(initial=False, window_ns=MS)
    d.change(10 * MS, True)
    d.change(9 * MS, False)  # reported late by another thread
    d.change(9 * MS, True)
    assert d.deadline_ns == 11 * MS


def test_negative_window_is_rejected() -> None:
    with pytest.raises(ValueError):
        EdgeDebouncer(False, -1)


changes = st.lists(
    st.tuples(st.integers(min_value=0, max_value=20 * MS), st.booleans()), min_size=0, max_size=60
)


@given(st.booleans(), changes, st.integers(min_value=0, max_value=10 * MS))
def test_debounced_edges_alternate_and_end_at_the_final_raw_level(
    initial: bool, steps: list[tuple[int, bool]], window: int
) -> None:
    d = EdgeDebouncer(initial, window)
    t = 0
    edges: list[DebouncedEdge] = []
    for dt, level in steps:
        # poll at the deadline if it falls before the next change, as the event loop timer would
        if d.deadline_ns is not None and d.deadline_ns <= t + dt:
            e = d.poll(d.deadline_ns)
            if e:
                edges.append(e)
        t += dt
        d.change(t, level)
    if d.deadline_ns is not None:
        e = d.poll(d.deadline_ns)
        if e:
            edges.append(e)
    assert d.level == d.raw  # settled on the final raw level
    expected = initial
    for e in edges:
        assert e.active != expected  # every edge changes the level
        expected = e.active
        assert e.at_ns <= e.confirmed_ns
        assert e.confirmed_ns - e.at_ns >= window
    assert expected == d.level
    times = [e.at_ns for e in edges]
    assert times == sorted(times)
