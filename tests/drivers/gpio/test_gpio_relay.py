"""The charger relay on gpiozero mock pins, with the loop-back that measures its off time."""

from __future__ import annotations

import asyncio
import time

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from drivers.gpio import (
    ChargerRelay,
    DigitalInput,
    PowerCycleInProgress,
    PowerCycleRefused,
    RelayWiring,
    check_off_time,
)
from drivers.sim.gpio import LoopbackPin, loop_back

RELAY_PIN, ALIVE_PIN = 17, 27


@pytest.fixture
def factory() -> MockFactory:
    return MockFactory()


@pytest.mark.parametrize(
    ("wiring", "active_high", "pin_level"),
    [
        (
            RelayWiring.NORMALLY_CLOSED,
            True,
            False,
        ),  # coil off = charger powered; active-high: pin low
        (RelayWiring.NORMALLY_CLOSED, False, True),  # active-low relay board: coil off = pin high
        (RelayWiring.NORMALLY_OPEN, True, True),  # NO contact: coil on = charger powered
        (RelayWiring.NORMALLY_OPEN, False, False),
    ],
)
def test_relay_starts_in_the_state_that_powers_the_charger(
    factory: MockFactory, wiring: RelayWiring, active_high: bool, pin_level: bool
) -> None:
    relay = ChargerRelay(RELAY_PIN, pin_factory=factory, wiring=wiring, active_high=active_high)
    pin = factory.pin(RELAY_PIN)
    assert relay.charger_powered
    assert pin.function == "output"
    assert bool(pin.state) is pin_level
    assert [s.state for s in pin.states][-1] is pin_level
    assert relay.coil_energized is (wiring is RelayWiring.NORMALLY_OPEN)
    relay.close()


def test_drivers_never_touch_the_global_pin_factory(factory: MockFactory) -> None:
    before = Device.pin_factory
    relay = ChargerRelay(RELAY_PIN, pin_factory=factory)
    relay.close()
    assert Device.pin_factory is before
    with pytest.raises(ValueError, match="pin_factory is required"):
        ChargerRelay(RELAY_PIN, pin_factory=None)  # type: ignore[arg-type]


async def test_power_cycle_off_time_measured_through_the_loop_back_input(
    factory: MockFactory,
) -> None:
    loop_back(
        factory, RELAY_PIN, ALIVE_PIN, invert=True
    )  # NC relay, active-high coil: alive = not coil
    relay = ChargerRelay(RELAY_PIN, pin_factory=factory, min_off_s=0.2)
    alive = DigitalInput("charger_alive", ALIVE_PIN, pin_factory=factory, bounce_time=0.005)
    assert alive.active and relay.charger_powered
    try:
        cycle = await relay.power_cycle(0.5)
        went_off = await alive.next_edge(timeout=1)
        came_back = await alive.next_edge(timeout=1)
        assert relay.charger_powered and alive.active
    finally:
        relay.close()
        alive.close()
    assert (went_off.active, came_back.active) == (False, True)
    measured = (came_back.monotonic_ns - went_off.monotonic_ns) / 1e9
    assert measured == pytest.approx(0.5, abs=0.05)
    assert cycle.off_s == pytest.approx(0.5, abs=0.05)
    assert cycle.requested_off_s == 0.5
    assert cycle.end_ns - cycle.start_ns == pytest.approx(0.5e9, abs=0.05e9)
    assert abs(went_off.timestamp_ns - cycle.start_ns) < 50_000_000
    assert cycle.cycle_number == 1 and relay.cycles == 1
    assert not cycle.interrupted


async def test_off_time_measured_through_a_bouncing_delayed_loop_back(factory: MockFactory) -> None:
    # 10 ms relay operate time and 4 contact bounces on each transition, driven from another thread.
    lb = loop_back(factory, RELAY_PIN, ALIVE_PIN, invert=True, delay_s=0.01, bounces=4)
    relay = ChargerRelay(RELAY_PIN, pin_factory=factory, min_off_s=0.2)
    alive = DigitalInput("charger_alive", ALIVE_PIN, pin_factory=factory, bounce_time=0.02)
    try:
        await relay.power_cycle(0.3)
        went_off = await alive.next_edge(timeout=1)
        came_back = await alive.next_edge(timeout=1)
    finally:
        lb.join()
        relay.close()
        alive.close()
    assert went_off.transitions == came_back.transitions == 9  # 4 bounces = 8 extra changes + 1
    assert (came_back.monotonic_ns - went_off.monotonic_ns) / 1e9 == pytest.approx(0.3, abs=0.05)
    assert alive.edges.empty()


async def test_off_time_below_the_minimum_is_refused_and_nothing_switches(
    factory: MockFactory,
) -> None:
    relay = ChargerRelay(RELAY_PIN, pin_factory=factory)
    assert relay.min_off_s == 2.0  # the default minimum
    history = list(factory.pin(RELAY_PIN).states)
    with pytest.raises(PowerCycleRefused, match=r"off time 1 s is below the minimum 2 s"):
        await relay.power_cycle(1.0)
    assert factory.pin(RELAY_PIN).states == history
    assert relay.cycles == 0 and relay.charger_powered
    relay.close()


async def test_off_time_above_the_maximum_is_refused(factory: MockFactory) -> None:
    relay = ChargerRelay(RELAY_PIN, pin_factory=factory, max_off_s=60)
    with pytest.raises(PowerCycleRefused, match="above the maximum 60 s"):
        await relay.power_cycle(3600)
    relay.close()


def test_check_off_time_is_pure_and_rejects_nan() -> None:
    check_off_time(2.0, 2.0, 10.0)
    for bad in (1.99, 10.01, float("nan")):
        with pytest.raises(PowerCycleRefused):
            check_off_time(bad, 2.0, 10.0)


def test_relay_limits_are_validated(factory: MockFactory) -> None:
    with pytest.raises(ValueError):
        ChargerRelay(RELAY_PIN, pin_factory=factory, min_off_s=0)
    with pytest.raises(ValueError):
        ChargerRelay(RELAY_PIN, pin_factory=factory, min_off_s=5, max_off_s=4)


async def test_default_off_time_is_the_minimum(factory: MockFactory) -> None:
    relay = ChargerRelay(RELAY_PIN, pin_factory=factory, min_off_s=0.1)
    cycle = await relay.power_cycle()
    assert cycle.requested_off_s == 0.1
    assert cycle.off_s >= 0.1
    relay.close()


async def test_a_second_concurrent_power_cycle_is_refused(factory: MockFactory) -> None:
    relay = ChargerRelay(RELAY_PIN, pin_factory=factory, min_off_s=0.1)
    first = asyncio.create_task(relay.power_cycle(0.2))
    await asyncio.sleep(0.02)
    assert relay.cycling and not relay.charger_powered
    with pytest.raises(PowerCycleInProgress):
        await relay.power_cycle(0.2)
    cycle = await first
    assert cycle.cycle_number == 1 and relay.cycles == 1
    assert relay.charger_powered and not relay.cycling
    second = await relay.power_cycle(0.1)  # allowed again once the first has finished
    assert second.cycle_number == 2
    relay.close()


async def test_cycle_count_starts_from_the_persisted_value(factory: MockFactory) -> None:
    relay = ChargerRelay(RELAY_PIN, pin_factory=factory, min_off_s=0.05, initial_cycles=41)
    assert relay.cycles == 41
    cycle = await relay.power_cycle(0.05)
    assert cycle.cycle_number == 42 and relay.cycles == 42
    relay.close()


async def test_cancelling_a_power_cycle_restores_power_at_once(factory: MockFactory) -> None:
    relay = ChargerRelay(RELAY_PIN, pin_factory=factory, min_off_s=0.1)
    task = asyncio.create_task(relay.power_cycle(5.0))
    await asyncio.sleep(0.05)
    assert not relay.charger_powered
    t0 = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - t0 < 0.5
    assert relay.charger_powered and not relay.cycling
    assert relay.last_cycle is not None and relay.last_cycle.interrupted
    assert relay.last_cycle.off_s < 1.0
    assert relay.cycles == 1  # the contacts did operate
    relay.close()


async def test_normally_open_wiring_energises_the_coil_only_while_powered(
    factory: MockFactory,
) -> None:
    relay = ChargerRelay(
        RELAY_PIN, pin_factory=factory, wiring=RelayWiring.NORMALLY_OPEN, min_off_s=0.05
    )
    pin = factory.pin(RELAY_PIN)
    await relay.power_cycle(0.05)
    assert [s.state for s in pin.states][-3:] == [True, False, True]  # on, off for the cycle, on
    relay.close()


def test_close_leaves_the_charger_powered_and_is_idempotent(factory: MockFactory) -> None:
    relay = ChargerRelay(RELAY_PIN, pin_factory=factory)
    relay.close()
    relay.close()
    assert [s.state for s in factory.pin(RELAY_PIN).states] == [False]  # never energised


def test_loop_back_must_be_wired_before_the_relay_takes_the_pin(factory: MockFactory) -> None:
    relay = ChargerRelay(RELAY_PIN, pin_factory=factory)
    with pytest.raises(TypeError, match="call loop_back first"):
        loop_back(factory, RELAY_PIN, ALIVE_PIN)
    relay.close()
    assert isinstance(loop_back(MockFactory(), RELAY_PIN, ALIVE_PIN), LoopbackPin)
