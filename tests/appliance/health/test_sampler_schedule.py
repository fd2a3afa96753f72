"""TickSchedule: anchored deadlines, late ticks counted and skipped, never bunched; re-anchoring."""

from appliance.health.schedule import TickSchedule


def test_deadlines_are_anchored_and_do_not_drift() -> None:
    s = TickSchedule(1.0, 100.0)
    for k in range(1000):
        assert s.next_deadline() == 100.0 + k
        s.on_tick(s.next_deadline() + 0.3)  # every tick 300 ms late: no accumulation
    assert s.next_deadline() == 1100.0
    assert s.skipped == 0


def test_a_stalled_tick_skips_missed_deadlines_instead_of_bunching() -> None:
    s = TickSchedule(1.0, 0.0)
    assert s.on_tick(0.0) == (0, 0.0, 0)
    tick, lateness, skipped = s.on_tick(3.5)  # due at 1.0, ran at 3.5
    assert (tick, skipped) == (3, 2)
    assert abs(lateness - 0.5) < 1e-9
    assert s.late_ticks == 1 and s.skipped == 2
    assert s.next_deadline() == 4.0  # in the future: no back-to-back catch-up ticks


def test_set_interval_reanchors_and_tick_numbers_keep_increasing() -> None:
    s = TickSchedule(1.0, 0.0)
    s.on_tick(0.0)
    s.on_tick(1.0)
    s.set_interval(0.5, 1.2)
    assert s.next_deadline() == 1.7
    tick, _, _ = s.on_tick(1.7)
    assert tick == 2
    assert s.next_deadline() == 2.2


def test_jitter_percentiles() -> None:
    s = TickSchedule(1.0, 0.0)
    for k in range(100):
        s.on_tick(k + (0.1 if k == 99 else 0.001))
    j = s.stats()["jitter_ms"]
    assert j["n"] == 100 and abs(j["p50"] - 1.0) < 1e-6 and abs(j["p99"] - 1.0) < 1e-6
    assert abs(j["max"] - 100.0) < 1e-6
