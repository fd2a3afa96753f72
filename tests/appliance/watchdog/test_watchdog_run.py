"""The watchdog shell on gpiozero's MockFactory, with the relay looped back to the "alive" input."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from appliance.blackbox.triggers import FAULT_EVENT_KINDS
from appliance.watchdog import (
    EVENT_KINDS,
    ChargerObservation,
    PowerCyclePolicy,
    RelayWatchdog,
    WatchdogSettings,
    WatchdogState,
)
from drivers.gpio import ChargerRelay, DigitalInput, PowerCycleRefused
from drivers.sim.gpio import loop_back

RELAY_PIN, ALIVE_PIN = 17, 27
S = 1_000_000_000


@dataclass
class SimCharger:
    """What the observer reports: connected but silent (hung) unless told otherwise."""

    connected: bool = True
    last_frame_ns: int | None = field(default_factory=lambda: time.time_ns() - 3600 * S)
    transaction: bool = False

    def observe(self) -> ChargerObservation:
        return ChargerObservation(0, self.connected, self.last_frame_ns, None, self.transaction, None)


@dataclass
class Bench:
    factory: MockFactory
    relay: ChargerRelay
    alive: DigitalInput
    events: list[dict[str, Any]]
    got: asyncio.Event


@pytest.fixture
async def bench() -> AsyncIterator[Bench]:
    factory = MockFactory()
    loop_back(factory, RELAY_PIN, ALIVE_PIN, invert=True)  # NC relay, active-high coil
    relay = ChargerRelay(RELAY_PIN, pin_factory=factory, min_off_s=0.2)
    alive = DigitalInput("charger_alive", ALIVE_PIN, pin_factory=factory, bounce_time=0.005)
    yield Bench(factory, relay, alive, [], asyncio.Event())
    alive.close()
    relay.close()


def make_watchdog(
    bench: Bench, charger: SimCharger, settings: WatchdogSettings, **kw: Any
) -> RelayWatchdog:
    def sink(event: dict[str, Any]) -> None:
        bench.events.append(event)
        bench.got.set()

    return RelayWatchdog(
        "CP001", PowerCyclePolicy(settings), bench.relay, charger.observe, sink,
        interval_s=kw.pop("interval_s", 0.02), **kw,
    )


async def wait_for_event(bench: Bench, pred: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
    async def _wait() -> dict[str, Any]:
        while True:
            for e in bench.events:
                if pred(e):
                    return e
            bench.got.clear()
            await bench.got.wait()

    return await asyncio.wait_for(_wait(), timeout)


async def test_hung_charger_is_power_cycled_and_off_time_measured_on_the_alive_input(bench: Bench) -> None:
    settings = WatchdogSettings(hang_after_s=1, off_s=2.0, grace_after_cycle_s=60)
    wd = make_watchdog(bench, SimCharger(), settings)
    stop = asyncio.Event()
    task = asyncio.create_task(wd.run(stop))
    try:
        went_off = await bench.alive.next_edge(timeout=2)
        came_back = await bench.alive.next_edge(timeout=4)
        done = await wait_for_event(bench, lambda e: e.get("phase") == "done", timeout=2)
    finally:
        stop.set()
        await asyncio.wait_for(task, 2)
    assert not went_off.active and came_back.active and bench.relay.charger_powered
    measured = (came_back.monotonic_ns - went_off.monotonic_ns) / S
    assert abs(measured - 2.0) <= 0.05, measured
    assert abs(done["off_s"] - 2.0) <= 0.05
    kinds = [(e["kind"], e["phase"]) for e in bench.events]
    assert kinds == [("watchdog_power_cycle", "decided"), ("watchdog_power_cycle", "done")]
    decided = bench.events[0]
    assert decided["cp"] == "CP001" and decided["off_s"] == 2.0 and decided["cycle"] == 1
    assert decided["code"] == "hang" and decided["forced"] is False and decided["time_ns"] > 0
    assert done["cycle"] == 1 and done["interrupted"] is False and done["state"] == "grace"
    assert "watchdog_power_cycle" in FAULT_EVENT_KINDS and {e["kind"] for e in bench.events} <= EVENT_KINDS
    assert wd.policy.state is WatchdogState.GRACE and bench.relay.cycles == 1


async def test_refused_during_a_transaction_and_reported_once(bench: Bench) -> None:
    wd = make_watchdog(bench, SimCharger(transaction=True), WatchdogSettings(hang_after_s=1, off_s=0.3))
    stop = asyncio.Event()
    task = asyncio.create_task(wd.run(stop))
    await asyncio.sleep(0.5)  # ~25 ticks
    stop.set()
    await asyncio.wait_for(task, 2)
    assert [(e["kind"], e["code"]) for e in bench.events] == [("watchdog_refused", "transaction_active")]
    assert bench.events[0]["state"] == "held" and bench.events[0]["off_s"] is None
    assert bench.relay.cycles == 0 and bench.alive.active and bench.relay.charger_powered


async def test_manual_cycle_needs_force_during_a_transaction(bench: Bench) -> None:
    charger = SimCharger(transaction=True, last_frame_ns=time.time_ns())
    wd = make_watchdog(bench, charger, WatchdogSettings(off_s=0.3))
    refused = await wd.manual_cycle(force=False)
    assert refused["kind"] == "watchdog_refused" and refused["code"] == "transaction_active"
    assert refused["manual"] is True and bench.relay.cycles == 0
    done = await wd.manual_cycle(force=True)
    assert done["kind"] == "watchdog_power_cycle" and done["phase"] == "done" and done["forced"] is True
    assert abs(done["off_s"] - 0.3) <= 0.05 and done["cycle"] == 1
    assert [e["phase"] for e in bench.events] == [None, "decided", "done"]


async def test_suspect_then_recovered_with_the_alive_input_high(bench: Bench) -> None:
    charger = SimCharger()
    settings = WatchdogSettings(hang_after_s=1, require_alive_low=True, off_s=0.3)
    wd = make_watchdog(bench, charger, settings, alive_input=bench.alive)
    stop = asyncio.Event()
    task = asyncio.create_task(wd.run(stop))
    try:
        suspect = await wait_for_event(bench, lambda e: e["kind"] == "watchdog_suspect", timeout=2)
        assert suspect["code"] == "alive_input_high"
        charger.last_frame_ns = time.time_ns()  # it speaks again
        recovered = await wait_for_event(bench, lambda e: e["kind"] == "watchdog_recovered", timeout=2)
        assert recovered["state"] == "watching"
    finally:
        stop.set()
        await asyncio.wait_for(task, 2)
    assert bench.relay.cycles == 0


async def test_failing_sink_and_observer_do_not_stop_the_watchdog(bench: Bench) -> None:
    calls = {"n": 0}

    def observe() -> ChargerObservation:
        calls["n"] += 1
        if calls["n"] % 2:
            raise RuntimeError("value process state unavailable")
        return SimCharger(transaction=True).observe()

    def sink(event: dict[str, Any]) -> None:
        raise OSError("black box full")

    wd = RelayWatchdog(
        "CP001", PowerCyclePolicy(WatchdogSettings(hang_after_s=1, off_s=0.3)), bench.relay, observe, sink,
        interval_s=0.01,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(wd.run(stop))
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.wait_for(task, 2)
    assert wd.observe_errors > 0 and wd.sink_errors == 1 and wd.events == 1


async def test_cancelling_during_the_off_time_restores_power_and_reports(bench: Bench) -> None:
    charger = SimCharger(last_frame_ns=time.time_ns())
    wd = make_watchdog(bench, charger, WatchdogSettings(off_s=5))
    task = asyncio.create_task(wd.manual_cycle(force=False))
    await asyncio.sleep(0.2)
    assert not bench.relay.charger_powered
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert bench.relay.charger_powered
    last = bench.events[-1]
    assert last["phase"] == "interrupted" and last["interrupted"] is True and last["off_s"] < 1
    assert wd.policy.state is WatchdogState.BACKOFF


def test_off_time_the_relay_would_refuse_is_rejected_at_start() -> None:
    factory = MockFactory()
    relay = ChargerRelay(RELAY_PIN, pin_factory=factory)  # min_off_s = 2
    try:
        with pytest.raises(PowerCycleRefused):
            RelayWatchdog("CP1", PowerCyclePolicy(WatchdogSettings(off_s=1)), relay, SimCharger().observe, print)
    finally:
        relay.close()


# --------------------------------------------------------------------------------------------------
# The off time the gateway measures itself, through the alive input (detail.input_off_s)


async def test_cycle_result_carries_the_off_time_measured_on_the_alive_input(bench: Bench) -> None:
    wd = make_watchdog(bench, SimCharger(last_frame_ns=time.time_ns()), WatchdogSettings(off_s=0.3),
                       alive_input=bench.alive)
    done = await wd.manual_cycle(force=False)
    assert done["phase"] == "done" and "input_problem" not in done["detail"]
    assert abs(done["detail"]["input_off_s"] - done["off_s"]) <= 0.05, done
    assert bench.events[-1] is done and "input_off_s" not in bench.events[0]["detail"]  # not on "decided"
    assert bench.alive.edges.qsize() == 2  # the watchdog listens; the input's queue is left to others


async def test_input_off_time_with_relay_delay_and_contact_bounce_stays_within_50_ms() -> None:
    factory = MockFactory()
    pin = loop_back(factory, RELAY_PIN, ALIVE_PIN, invert=True, delay_s=0.01, bounces=4)
    relay = ChargerRelay(RELAY_PIN, pin_factory=factory, min_off_s=0.2)
    alive = DigitalInput("charger_alive", ALIVE_PIN, pin_factory=factory, bounce_time=0.005)
    events: list[dict[str, Any]] = []
    try:
        wd = RelayWatchdog("CP001", PowerCyclePolicy(WatchdogSettings(off_s=0.5)), relay,
                           SimCharger(last_frame_ns=time.time_ns()).observe, events.append, alive_input=alive)
        done = await wd.manual_cycle(force=False)
    finally:
        pin.join()
        alive.close()
        relay.close()
    assert abs(done["detail"]["input_off_s"] - done["off_s"]) <= 0.05, done


async def test_cancelled_cycle_still_reports_the_input_off_time(bench: Bench) -> None:
    wd = make_watchdog(bench, SimCharger(last_frame_ns=time.time_ns()), WatchdogSettings(off_s=5),
                       alive_input=bench.alive)
    task = asyncio.create_task(wd.manual_cycle(force=False))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    last = bench.events[-1]
    assert last["phase"] == "interrupted" and bench.relay.charger_powered
    assert abs(last["detail"]["input_off_s"] - last["off_s"]) <= 0.05, last


async def test_an_input_that_never_goes_inactive_reports_why() -> None:
    from drivers.sim.gpio import DrivenInputPin

    factory = MockFactory()
    factory.pin(ALIVE_PIN, pin_class=DrivenInputPin).drive_high()  # not wired to the relay: stays high
    relay = ChargerRelay(RELAY_PIN, pin_factory=factory, min_off_s=0.2)
    alive = DigitalInput("charger_alive", ALIVE_PIN, pin_factory=factory, bounce_time=0.005)
    try:
        wd = RelayWatchdog("CP001", PowerCyclePolicy(WatchdogSettings(off_s=0.2)), relay,
                           SimCharger(last_frame_ns=time.time_ns()).observe, lambda e: None, alive_input=alive)
        done = await wd.manual_cycle(force=False)
    finally:
        alive.close()
        relay.close()
    assert done["phase"] == "done" and done["detail"]["input_off_s"] is None
    assert "never went inactive" in done["detail"]["input_problem"]


def test_input_off_time_is_the_first_off_pulse() -> None:
    from appliance.watchdog.run import input_off_time
    from drivers.gpio import InputEdge

    def edge(active: bool, at_s: float) -> InputEdge:
        return InputEdge("alive", active, int(at_s * S), int(at_s * S), 1)

    assert input_off_time([edge(False, 1.0), edge(True, 3.25), edge(False, 4.0)], active_before=True) == (2.25, "")
    off, why = input_off_time([edge(False, 1.0)], active_before=True)
    assert off is None and "did not come back" in why
    off, why = input_off_time([edge(True, 3.0)], active_before=False)
    assert off is None and "already inactive" in why
