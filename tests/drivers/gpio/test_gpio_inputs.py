"""Debounced digital inputs on gpiozero mock pins: edges, timestamps, thread hand-over, queue bound."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import pytest
from gpiozero.pins.mock import MockFactory

from drivers.gpio import DigitalInput, InputEdge
from drivers.sim.gpio import chatter

DOOR_PIN = 22


@pytest.fixture
def factory() -> MockFactory:
    return MockFactory()


async def test_a_bouncing_transition_gives_one_edge_timed_at_its_first_change(
    factory: MockFactory,
) -> None:
    door = DigitalInput("cabinet_door", DOOR_PIN, pin_factory=factory, bounce_time=0.02)
    pin = factory.pin(DOOR_PIN)
    assert not door.active
    t_mono, t_wall = time.monotonic_ns(), time.time_ns()
    worker = threading.Thread(
        target=chatter, args=(pin, True), kwargs={"bounces": 3, "interval_s": 0.002}
    )
    worker.start()  # gpiozero backends call back from their own threads; so does this
    try:
        edge = await door.next_edge(timeout=1)
    finally:
        worker.join()
    assert edge.name == "cabinet_door" and edge.active
    assert edge.transitions == 7  # 3 bounces (6 changes) and the final change
    assert (
        0 <= edge.monotonic_ns - t_mono < 5_000_000
    )  # stamped at the first change, not when settled
    assert abs(edge.timestamp_ns - t_wall) < 5_000_000
    await asyncio.sleep(0.05)
    assert door.edges.empty()  # exactly one edge
    assert door.active
    door.close()


async def test_a_glitch_shorter_than_the_bounce_time_is_not_an_edge(factory: MockFactory) -> None:
    spd = DigitalInput("surge_protector", DOOR_PIN, pin_factory=factory, bounce_time=0.02)
    pin = factory.pin(DOOR_PIN)
    pin.drive_high()
    await asyncio.sleep(0.005)
    pin.drive_low()
    await asyncio.sleep(0.05)
    assert spd.edges.empty()
    assert not spd.active and spd.glitches == 1
    spd.close()


async def test_edges_alternate_with_increasing_timestamps_and_reach_the_callback(
    factory: MockFactory,
) -> None:
    seen: list[tuple[InputEdge, int]] = []
    loop_thread = threading.get_ident()
    door = DigitalInput(
        "cabinet_door",
        DOOR_PIN,
        pin_factory=factory,
        bounce_time=0.005,
        on_edge=lambda e: seen.append((e, threading.get_ident())),
    )
    pin = factory.pin(DOOR_PIN)

    def toggle() -> None:
        for level in (True, False, True):
            chatter(pin, level)
            time.sleep(0.03)

    await asyncio.to_thread(toggle)
    edges = [await door.next_edge(timeout=1) for _ in range(3)]
    assert [e.active for e in edges] == [True, False, True]
    gaps = [(b.monotonic_ns - a.monotonic_ns) / 1e9 for a, b in itertools.pairwise(edges)]
    assert all(g == pytest.approx(0.03, abs=0.02) for g in gaps)
    assert [e for e, _ in seen] == edges
    assert {tid for _, tid in seen} == {loop_thread}  # callbacks run in the event loop thread
    door.close()


async def test_pull_up_input_with_a_switch_to_ground_is_active_when_closed(
    factory: MockFactory,
) -> None:
    door = DigitalInput(
        "door_switch", DOOR_PIN, pin_factory=factory, pull_up=True, bounce_time=0.005
    )
    pin = factory.pin(DOOR_PIN)
    assert pin.pull == "up" and not door.active
    pin.drive_low()  # switch closes to ground
    edge = await door.next_edge(timeout=1)
    assert edge.active and door.active and door.raw_active
    door.close()


async def test_a_full_queue_keeps_the_newest_edges_and_counts_the_dropped(
    factory: MockFactory,
) -> None:
    door = DigitalInput("door", DOOR_PIN, pin_factory=factory, bounce_time=0.0, queue_size=2)
    pin = factory.pin(DOOR_PIN)
    for level in (True, False, True, False):
        chatter(pin, level)
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.01)
    assert door.dropped_edges == 2
    assert [(await door.next_edge(0)).active for _ in range(2)] == [True, False]
    door.close()


async def test_input_requires_an_explicit_pin_factory() -> None:
    with pytest.raises(ValueError, match="pin_factory is required"):
        DigitalInput("x", DOOR_PIN, pin_factory=None)  # type: ignore[arg-type]


async def test_closing_stops_edge_reporting(factory: MockFactory) -> None:
    door = DigitalInput("door", DOOR_PIN, pin_factory=factory, bounce_time=0.0)
    door.close()
    factory.pin(DOOR_PIN).drive_high()
    await asyncio.sleep(0.01)
    assert door.edges.empty()
