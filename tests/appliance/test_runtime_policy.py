"""The pure restart policy of ``omgw run``: exponential backoff, a cap, a reset after a stable run,
and no give-up rule."""

from __future__ import annotations

import signal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.runtime import ChildExit, RestartPolicy, RestartTracker

POLICY = RestartPolicy(initial_delay_s=0.5, factor=2.0, max_delay_s=30.0, stable_after_s=60.0)


def test_delay_doubles_from_the_initial_delay_up_to_the_cap() -> None:
    assert [POLICY.delay(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]


def test_no_failure_means_no_delay() -> None:
    assert POLICY.delay(0) == 0.0


def test_the_cap_holds_for_a_streak_far_longer_than_a_float_exponent_allows() -> None:
    assert POLICY.delay(10_000) == 30.0


def test_a_crash_loop_keeps_retrying_at_the_cap_and_counts_every_restart() -> None:
    tracker = RestartTracker(POLICY)
    delays = [tracker.on_exit(ChildExit(1, ran_s=0.1)) for _ in range(1000)]
    assert delays[-1] == 30.0 and all(d > 0 for d in delays)  # never gives up, never hammers
    assert tracker.restarts == 1000 and tracker.consecutive_failures == 1000


def test_a_stable_run_resets_the_backoff() -> None:
    tracker = RestartTracker(POLICY)
    for _ in range(6):
        tracker.on_exit(ChildExit(1, ran_s=1.0))
    assert tracker.on_exit(ChildExit(-9, ran_s=59.9)) == 30.0  # just short of stable: still capped
    assert tracker.on_exit(ChildExit(-9, ran_s=60.0)) == 0.5  # ran long enough: streak forgotten
    assert tracker.on_exit(ChildExit(1, ran_s=0.2)) == 1.0
    assert tracker.restarts == 9


def test_a_requested_restart_is_immediate_and_does_not_lengthen_the_backoff() -> None:
    tracker = RestartTracker(POLICY)
    tracker.on_exit(ChildExit(1, ran_s=0.1))
    tracker.on_exit(ChildExit(1, ran_s=0.1))
    assert tracker.on_exit(ChildExit(-signal.SIGHUP, ran_s=5.0), requested=True) == 0.0
    assert tracker.consecutive_failures == 2 and tracker.restarts == 3
    assert tracker.on_exit(ChildExit(1, ran_s=0.1)) == 2.0


def test_child_exit_names_the_killing_signal() -> None:
    assert ChildExit(-9, 1.0).log_fields() == {"code": -9, "signal": "SIGKILL"}
    assert ChildExit(2, 1.0).log_fields() == {"code": 2}
    assert ChildExit(0, 1.0).signal is None


@pytest.mark.parametrize("kwargs", [
    {"initial_delay_s": -1}, {"initial_delay_s": 5, "max_delay_s": 1}, {"factor": 0.5}, {"stable_after_s": -1},
])
def test_nonsensical_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RestartPolicy(**kwargs)


@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), max_size=200))
def test_every_delay_is_between_zero_and_the_cap(run_times: list[float]) -> None:
    tracker = RestartTracker(POLICY)
    for ran in run_times:
        assert 0 < tracker.on_exit(ChildExit(1, ran)) <= POLICY.max_delay_s
    assert tracker.restarts == len(run_times)
