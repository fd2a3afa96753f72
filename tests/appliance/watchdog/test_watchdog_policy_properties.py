"""Property tests: the watchdog's safety guarantees hold for arbitrary observation sequences."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.watchdog.policy import (
    HOUR_NS,
    Action,
    ChargerObservation,
    PowerCyclePolicy,
    WatchdogSettings,
)

S = 1_000_000_000

step = st.tuples(
    st.integers(min_value=0, max_value=1200),  # seconds since the previous step
    st.booleans(),  # connected
    st.booleans(),  # the charger sent a frame at this step
    st.booleans(),  # transaction active
    st.sampled_from([None, True, False]),  # alive input
    st.sampled_from([None, False, True]),  # manual request: None, or its force flag
    st.booleans(),  # the relay cycle succeeds
)

watchdog_settings = st.builds(
    WatchdogSettings,
    hang_after_s=st.integers(1, 900),
    offline_after_s=st.integers(1, 900),
    require_alive_low=st.booleans(),
    off_s=st.integers(2, 30),
    max_cycles_per_hour=st.integers(0, 4),
    backoff_factor=st.sampled_from([1.0, 1.5, 2.0]),
    backoff_max_s=st.integers(0, 3600),
    grace_after_cycle_s=st.integers(0, 300),
)


@settings(max_examples=300, deadline=None)
@given(watchdog_settings, st.lists(step, max_size=150))
def test_safety_invariants_for_arbitrary_sequences(ws: WatchdogSettings, steps: list[tuple]) -> None:
    policy = PowerCyclePolicy(ws)
    now, last_frame, disconnected_since, was_connected = 0, None, None, True
    cycles: list[int] = []
    last_key = (policy.state, "")
    for dt, connected, spoke, tx, alive, manual, ok in steps:
        now += dt * S
        if connected and spoke:
            last_frame = now
        if not connected and was_connected:
            disconnected_since = now
        if connected:
            disconnected_since = None
        was_connected = connected
        obs = ChargerObservation(now, connected, last_frame, disconnected_since, tx, alive)
        if manual is not None:
            d = policy.manual_request(now, force=manual, transaction_active=tx)
            if d.action is Action.POWER_CYCLE:
                assert not tx or manual, "cycled during a transaction without force"
                assert d.forced == (tx and manual)
        else:
            d = policy.decide(obs)
            assert not d.forced
            if d.action is Action.POWER_CYCLE:
                assert not tx, "automatic cycle during a transaction"
            if d.action is Action.REFUSE:
                # a refusal is emitted only when the (state, code) pair changes
                assert (d.state, d.code) != last_key
            last_key = (d.state, d.code)
        if d.action is Action.POWER_CYCLE:
            cycles.append(now)
            policy.cycle_started(now)
            now += ws.off_s * S
            policy.cycle_finished(now, ok=ok)
            last_key = (policy.state, "")
    for i, start in enumerate(cycles):
        in_window = [t for t in cycles[i:] if t - start < HOUR_NS]
        assert len(in_window) <= ws.max_cycles_per_hour, (cycles, ws)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=400), min_size=1, max_size=300))
def test_hung_charger_with_irregular_ticks_never_exceeds_the_rate_limit(gaps: list[int]) -> None:
    ws = WatchdogSettings(hang_after_s=30, max_cycles_per_hour=2, grace_after_cycle_s=0, backoff_max_s=0)
    policy = PowerCyclePolicy(ws)
    now, cycles = 0, []
    for gap in gaps:
        now += gap * S
        d = policy.decide(ChargerObservation(now, True, 0, None, False, None))
        if d.action is Action.POWER_CYCLE:
            cycles.append(now)
            policy.cycle_started(now)
            policy.cycle_finished(now + S, ok=True)
    for i, start in enumerate(cycles):
        assert len([t for t in cycles[i:] if t - start < HOUR_NS]) <= 2
