"""The relay watchdog policy with a fake clock: pure calls, no event loop, no sleeps."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from appliance.watchdog.policy import (
    HOUR_NS,
    Action,
    ChargerObservation,
    Decision,
    Notice,
    PowerCyclePolicy,
    WatchdogSettings,
    WatchdogState,
)

S = 1_000_000_000
T0 = 1_700_000_000 * S


@dataclass
class FakeCharger:
    """A charger as the observer sees it, on a fake clock."""

    now: int = T0
    connected: bool = True
    last_frame: int | None = T0
    disconnected_since: int | None = None
    transaction: bool = False
    alive: bool | None = None

    def advance(self, seconds: float) -> None:
        self.now += round(seconds * S)

    def speak(self) -> None:
        self.last_frame = self.now

    def disconnect(self) -> None:
        self.connected, self.disconnected_since = False, self.now

    def reconnect(self) -> None:
        self.connected, self.disconnected_since = True, None

    def obs(self) -> ChargerObservation:
        return ChargerObservation(
            self.now,
            self.connected,
            self.last_frame,
            self.disconnected_since,
            self.transaction,
            self.alive,
        )


def run_until(policy: PowerCyclePolicy, cp: FakeCharger, seconds: float, step: float = 1.0) -> list[Decision]:
    """Tick every ``step`` s for ``seconds``; returns the noteworthy decisions."""
    out = []
    for _ in range(round(seconds / step)):
        cp.advance(step)
        d = policy.decide(cp.obs())
        if d.noteworthy:
            out.append(d)
    return out


def do_cycle(policy: PowerCyclePolicy, cp: FakeCharger, off_s: float = 10) -> None:
    policy.cycle_started(cp.now)
    cp.advance(off_s)
    policy.cycle_finished(cp.now, ok=True)


def test_healthy_chatty_charger_is_never_cycled() -> None:
    policy, cp = PowerCyclePolicy(), FakeCharger()
    for _ in range(3600):
        cp.advance(1)
        if cp.now % (60 * S) == 0:
            cp.speak()
        assert policy.decide(cp.obs()).action is Action.NONE
    assert policy.state is WatchdogState.WATCHING


def test_connected_but_silent_for_hang_after_s_is_power_cycled() -> None:
    policy, cp = PowerCyclePolicy(WatchdogSettings(hang_after_s=300)), FakeCharger()
    assert run_until(policy, cp, 299) == []
    cp.advance(1)
    d = policy.decide(cp.obs())
    assert d.action is Action.POWER_CYCLE and d.code == "hang" and not d.forced
    assert d.state is WatchdogState.CYCLING
    assert d.detail["trigger"] == "hang" and d.detail["off_s"] == 10
    assert "silent for 300 s" in d.reason


def test_silence_counts_from_reconnect_not_from_a_stale_last_frame() -> None:
    policy, cp = PowerCyclePolicy(WatchdogSettings(hang_after_s=300, offline_after_s=600)), FakeCharger()
    cp.disconnect()
    assert run_until(policy, cp, 400) == []
    cp.reconnect()  # the last frame is 400 s old, but the charger has just connected
    assert run_until(policy, cp, 300) == []  # (the policy sees the reconnect at the next tick)
    assert [d.code for d in run_until(policy, cp, 1)] == ["hang"]


def test_no_frame_ever_seen_counts_from_the_first_observation() -> None:
    policy, cp = PowerCyclePolicy(WatchdogSettings(hang_after_s=300)), FakeCharger(last_frame=None)
    assert policy.decide(cp.obs()).action is Action.NONE  # first sight: a restart is not a hang
    assert run_until(policy, cp, 299) == []
    assert [d.action for d in run_until(policy, cp, 1)] == [Action.POWER_CYCLE]


def test_disconnected_for_offline_after_s_is_power_cycled() -> None:
    policy, cp = PowerCyclePolicy(WatchdogSettings(offline_after_s=600)), FakeCharger()
    cp.disconnect()
    assert run_until(policy, cp, 599) == []
    d = run_until(policy, cp, 1)
    assert [x.code for x in d] == ["offline"] and d[0].action is Action.POWER_CYCLE


def test_offline_with_unknown_disconnect_time_counts_from_first_sight() -> None:
    policy, cp = PowerCyclePolicy(WatchdogSettings(offline_after_s=600)), FakeCharger(connected=False, last_frame=None)
    assert policy.decide(cp.obs()).action is Action.NONE
    assert run_until(policy, cp, 599) == []
    assert [d.code for d in run_until(policy, cp, 1)] == ["offline"]


def test_require_alive_low_suspects_while_alive_is_high_and_cycles_when_it_drops() -> None:
    policy = PowerCyclePolicy(WatchdogSettings(hang_after_s=300, require_alive_low=True))
    cp = FakeCharger(alive=True)
    noted = run_until(policy, cp, 600)
    assert len(noted) == 1  # suspect once, not every second
    assert noted[0].notice is Notice.SUSPECT and noted[0].code == "alive_input_high"
    assert noted[0].action is Action.NONE and policy.state is WatchdogState.SUSPECT
    cp.alive = None
    assert [d.code for d in run_until(policy, cp, 5)] == ["alive_input_unknown"]
    cp.alive = False
    assert [d.action for d in run_until(policy, cp, 1)] == [Action.POWER_CYCLE]


def test_suspect_that_clears_is_reported_recovered() -> None:
    policy = PowerCyclePolicy(WatchdogSettings(hang_after_s=300, require_alive_low=True))
    cp = FakeCharger(alive=True)
    run_until(policy, cp, 300)
    cp.speak()
    d = run_until(policy, cp, 1)
    assert [(x.notice, x.code) for x in d] == [(Notice.RECOVERED, "cleared")]
    assert policy.state is WatchdogState.WATCHING


def test_transaction_active_refuses_once_then_cycles_when_it_ends() -> None:
    policy, cp = PowerCyclePolicy(), FakeCharger(transaction=True)
    noted = run_until(policy, cp, 1000)
    assert [(d.action, d.code) for d in noted] == [(Action.REFUSE, "transaction_active")]
    assert policy.state is WatchdogState.HELD
    cp.transaction = False
    assert [d.action for d in run_until(policy, cp, 1)] == [Action.POWER_CYCLE]


def test_manual_request_refused_during_transaction_unless_forced() -> None:
    policy = PowerCyclePolicy()
    d = policy.manual_request(T0, force=False, transaction_active=True)
    assert d.action is Action.REFUSE and d.code == "transaction_active" and d.manual
    assert policy.state is WatchdogState.WATCHING
    d = policy.manual_request(T0, force=True, transaction_active=True)
    assert d.action is Action.POWER_CYCLE and d.forced and d.manual and d.code == "manual"
    assert policy.state is WatchdogState.CYCLING
    again = policy.manual_request(T0 + S, force=True, transaction_active=False)
    assert again.action is Action.REFUSE and again.code == "cycle_in_progress"


def test_manual_request_without_transaction_is_not_marked_forced() -> None:
    d = PowerCyclePolicy().manual_request(T0, force=True, transaction_active=False)
    assert d.action is Action.POWER_CYCLE and not d.forced


def test_rate_limit_per_rolling_hour_holds_even_against_force() -> None:
    policy = PowerCyclePolicy(WatchdogSettings(max_cycles_per_hour=2))
    t = T0
    for _ in range(2):
        assert policy.manual_request(t, force=True, transaction_active=False).action is Action.POWER_CYCLE
        policy.cycle_started(t)
        policy.cycle_finished(t + 10 * S, ok=True)
        t += 60 * S
    d = policy.manual_request(t, force=True, transaction_active=False)
    assert d.action is Action.REFUSE and d.code == "rate_limited"
    assert policy.cycles_in_window(T0 + HOUR_NS - 1) == 2
    # the first cycle leaves the window exactly one hour after it was decided
    assert policy.manual_request(T0 + HOUR_NS, force=False, transaction_active=False).action is Action.POWER_CYCLE


def test_max_cycles_zero_disables_power_cycles() -> None:
    policy, cp = PowerCyclePolicy(WatchdogSettings(max_cycles_per_hour=0)), FakeCharger()
    noted = run_until(policy, cp, 2000)
    assert [(d.action, d.code) for d in noted] == [(Action.REFUSE, "rate_limited")]


def test_grace_after_cycle_then_recovered_when_charger_speaks() -> None:
    policy, cp = PowerCyclePolicy(WatchdogSettings(grace_after_cycle_s=180)), FakeCharger()
    run_until(policy, cp, 300)
    assert policy.state is WatchdogState.CYCLING
    do_cycle(policy, cp)
    assert policy.state is WatchdogState.GRACE
    cp.disconnect()
    assert run_until(policy, cp, 60) == []  # booting: no decisions, no hang evaluation
    cp.reconnect()
    cp.speak()  # BootNotification
    noted = run_until(policy, cp, 1)
    assert [(d.notice, d.code) for d in noted] == [(Notice.RECOVERED, "back")]
    assert policy.state is WatchdogState.WATCHING and policy.failures == 0


def test_cycle_that_does_not_bring_the_charger_back_backs_off_exponentially() -> None:
    settings = WatchdogSettings(
        hang_after_s=300, grace_after_cycle_s=180, backoff_factor=2.0, backoff_max_s=3600,
        max_cycles_per_hour=100,
    )
    policy, cp = PowerCyclePolicy(settings), FakeCharger()
    run_until(policy, cp, 300)
    gaps = []
    for n in range(1, 6):
        assert policy.state is WatchdogState.CYCLING
        do_cycle(policy, cp)
        end = cp.now
        noted = []
        while True:
            cp.advance(1)
            d = policy.decide(cp.obs())
            if d.noteworthy:
                noted.append(d)
            if d.action is Action.POWER_CYCLE:
                break
        assert [x.code for x in noted] == ["backoff", "hang"]  # one refusal, then the next cycle
        assert noted[0].detail["failures"] == n
        gaps.append((cp.now - end) / S)
    assert gaps == [360, 720, 1440, 2880, 3600]
    assert policy.backoff_delay_s(50) == 3600


def test_backoff_resets_when_the_charger_comes_back() -> None:
    policy, cp = PowerCyclePolicy(WatchdogSettings(max_cycles_per_hour=10)), FakeCharger()
    run_until(policy, cp, 300)
    do_cycle(policy, cp)
    run_until(policy, cp, 200)
    assert policy.state is WatchdogState.BACKOFF and policy.failures == 1
    cp.speak()
    assert [d.notice for d in run_until(policy, cp, 1)] == [Notice.RECOVERED]
    assert policy.failures == 0


def test_failed_relay_cycle_goes_to_backoff() -> None:
    policy, cp = PowerCyclePolicy(), FakeCharger()
    run_until(policy, cp, 300)
    policy.cycle_started(cp.now)
    policy.cycle_finished(cp.now, ok=False)
    assert policy.state is WatchdogState.BACKOFF and policy.failures == 1
    assert policy.backoff_until_ns == cp.now + 360 * S


def test_lost_cycle_report_does_not_leave_the_policy_blind() -> None:
    policy, cp = PowerCyclePolicy(WatchdogSettings(off_s=10, grace_after_cycle_s=180)), FakeCharger()
    run_until(policy, cp, 300)
    assert policy.state is WatchdogState.CYCLING
    run_until(policy, cp, 190)
    assert policy.state is WatchdogState.CYCLING
    run_until(policy, cp, 1)
    assert policy.state is WatchdogState.BACKOFF


def test_refusal_code_change_is_a_new_refusal() -> None:
    policy, cp = PowerCyclePolicy(WatchdogSettings(max_cycles_per_hour=1)), FakeCharger(transaction=True)
    policy.manual_request(cp.now, force=True, transaction_active=True)
    do_cycle(policy, cp)
    cp.speak()
    run_until(policy, cp, 1)  # back
    noted = run_until(policy, cp, 600)
    assert [d.code for d in noted] == ["transaction_active"]
    cp.transaction = False
    noted = run_until(policy, cp, 600)
    assert [d.code for d in noted] == ["rate_limited"]
    assert all(d.action is Action.REFUSE for d in noted)


def test_history_restores_the_rate_limit_after_restart() -> None:
    policy = PowerCyclePolicy(WatchdogSettings(max_cycles_per_hour=2), history=[T0, T0 + 60 * S])
    assert policy.manual_request(T0 + 120 * S, force=False, transaction_active=False).code == "rate_limited"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hang_after_s": 0},
        {"offline_after_s": -1},
        {"off_s": float("nan")},
        {"max_cycles_per_hour": -1},
        {"max_cycles_per_hour": 1.5},
        {"backoff_factor": 0.5},
        {"grace_after_cycle_s": -1},
    ],
)
def test_invalid_settings_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="watchdog"):
        WatchdogSettings(**kwargs)  # type: ignore[arg-type]
