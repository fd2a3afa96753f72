"""SnapshotScheduler: windows, merging of fault storms, the span bound and the rate limit (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.blackbox.snapshot import SnapshotScheduler, SnapshotWindow

S = 1_000_000_000
T0 = 1_764_090_651 * S


def sched(**kw: object) -> SnapshotScheduler:
    return SnapshotScheduler(kw.pop("pre_s", 60), kw.pop("post_s", 30), **kw)  # type: ignore[arg-type]


def test_a_trigger_asks_for_pre_and_post_seconds_around_it() -> None:
    s = sched()
    s.trigger(T0, "fault")
    assert s.pending() == [SnapshotWindow(T0 - 60 * S, T0 + 30 * S, T0, ("fault",))]


def test_a_window_is_due_only_once_its_end_has_passed_and_is_then_removed() -> None:
    s = sched()
    s.trigger(T0, "fault")
    assert s.due(T0 + 30 * S) == []
    [w] = s.due(T0 + 30 * S + 1)
    assert (w.start_ns, w.end_ns) == (T0 - 60 * S, T0 + 30 * S)
    assert s.pending() == [] and s.due(T0 + 3600 * S) == []


def test_a_fault_storm_merges_into_one_window_with_all_reasons_once() -> None:
    s = sched()
    for i, reason in enumerate(["ocpp_faulted cp=CP1", "watchdog_power_cycle cp=CP1", "ocpp_faulted cp=CP1"]):
        s.trigger(T0 + i * 10 * S, reason)
    [w] = s.pending()
    assert w == SnapshotWindow(T0 - 60 * S, T0 + 50 * S, T0,
                               ("ocpp_faulted cp=CP1", "watchdog_power_cycle cp=CP1"), triggers=3)
    assert s.stats() == {"pending": 1, "started": 1, "merged": 2, "dropped": 0}


def test_adjacent_windows_merge_and_separate_ones_do_not() -> None:
    s = sched()
    s.trigger(T0, "a")
    s.trigger(T0 + 90 * S + 1, "b")  # its start (t - 60 s) is 1 ns after the first window's end
    assert len(s.pending()) == 1
    s.trigger(T0 + 1000 * S, "c")
    assert [w.reasons for w in s.pending()] == [("a", "b"), ("c",)]


def test_a_window_stops_growing_at_the_span_bound_and_the_next_one_continues_after_it() -> None:
    s = sched(max_span_factor=2)  # max span 180 s
    for i in range(10):  # one fault every 20 s for 200 s
        s.trigger(T0 + i * 20 * S, f"f{i}")
    first, second = s.pending()
    assert first.end_ns - first.start_ns <= 180 * S
    assert first.start_ns == T0 - 60 * S
    assert second.start_ns == first.end_ns + 1  # contiguous: no record in two archives
    assert second.end_ns == T0 + 9 * 20 * S + 30 * S
    assert second.end_ns - second.start_ns <= 180 * S
    assert first.triggers + second.triggers == 10


def test_windows_come_out_due_in_time_order() -> None:
    s = sched()
    s.trigger(T0 + 500 * S, "late")
    s.trigger(T0, "early")
    assert [w.reasons for w in s.due(T0 + 10_000 * S)] == [("early",), ("late",)]


def test_out_of_order_trigger_merges_backwards() -> None:
    s = sched()
    s.trigger(T0, "now")
    s.trigger(T0 - 20 * S, "earlier")
    [w] = s.pending()
    assert (w.start_ns, w.end_ns, w.trigger_ns) == (T0 - 80 * S, T0 + 30 * S, T0)


def test_rate_limit_drops_new_windows_beyond_n_per_hour_and_counts_them() -> None:
    s = sched(max_per_hour=3)
    for i in range(5):
        s.trigger(T0 + i * 600 * S, f"f{i}")  # 10 min apart: never merge
    assert [w.reasons[0] for w in s.pending()] == ["f0", "f1", "f2"]
    assert s.dropped == 2
    s.trigger(T0 + 3601 * S, "next hour")  # f0 is now more than an hour old
    assert s.pending()[-1].reasons == ("next hour",)
    assert s.dropped == 2


def test_rate_limit_never_drops_merges() -> None:
    s = sched(max_per_hour=1)
    s.trigger(T0, "a")
    s.trigger(T0 + 5 * S, "b")
    assert s.dropped == 0 and s.pending()[0].reasons == ("a", "b")


def test_forced_requests_pass_the_rate_limit_but_count_toward_it() -> None:
    s = sched(max_per_hour=1)
    s.trigger(T0, "fault")
    s.trigger(T0 + 600 * S, "operator", force=True)
    s.trigger(T0 + 1200 * S, "fault again")
    assert [w.reasons for w in s.pending()] == [("fault",), ("operator",)]
    assert s.dropped == 1


def test_reasons_are_capped_but_triggers_are_counted() -> None:
    s = sched(max_reasons=3)
    for i in range(10):
        s.trigger(T0 + i * S, f"r{i}")
    [w] = s.pending()
    assert w.reasons == ("r0", "r1", "r2") and w.triggers == 10


def test_cut_returns_pending_windows_clipped_to_now() -> None:
    s = sched()
    s.trigger(T0, "a")
    [w] = s.cut(T0 + 5 * S)
    assert (w.start_ns, w.end_ns) == (T0 - 60 * S, T0 + 5 * S)
    assert s.pending() == []


@pytest.mark.parametrize("kw", [{"pre_s": -1}, {"post_s": -1}, {"max_span_factor": 0.5},
                                {"max_per_hour": 0}])
def test_bad_parameters_are_refused(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        sched(**kw)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=1200), min_size=1, max_size=60))
def test_pending_windows_never_overlap_and_never_exceed_the_span(offsets_s: list[int]) -> None:
    s = sched(max_span_factor=2, max_per_hour=1000)
    for i, off in enumerate(offsets_s):
        s.trigger(T0 + off * S, f"r{i % 5}")
    windows = s.pending()
    for w in windows:
        assert w.start_ns <= w.end_ns
        assert w.end_ns - w.start_ns <= s.max_span_ns
    for a, b in zip(windows, windows[1:], strict=False):
        assert a.end_ns < b.start_ns
    assert sum(w.triggers for w in windows) == len(offsets_s)
    for off in offsets_s:  # no drops here, so every fault moment is in some archive
        assert any(w.start_ns <= T0 + off * S <= w.end_ns for w in windows)
