"""Digital inputs (charger "alive" line, cabinet door, surge protector status) with debounced edges.

A :class:`DigitalInput` wraps a gpiozero ``DigitalInputDevice`` on the injected pin factory (never
the global one) and reports every debounced edge, with the time it happened, to an
``asyncio.Queue`` (``edges``) and optionally a callback.

Threads: gpiozero calls ``when_activated``/``when_deactivated`` from its own thread (lgpio, pigpio)
or from whoever changed a mock pin. The callback only timestamps the change and hands it to the
event loop with ``loop.call_soon_threadsafe``; debouncing (:mod:`drivers.gpio.debounce`), the timer,
the queue and the listeners (``add_edge_listener``: observers that must not take edges from the
queue's consumer, e.g. the watchdog timing a power cycle) live in the loop thread only. So the
object must be created in the loop that consumes it (or be given that loop).

Debounce: ``bounce_time`` (seconds) is the window of our own "stable for a window" debouncer, which
behaves the same on every backend. ``backend_bounce_time`` is passed to gpiozero as its
``bounce_time`` if you also want the backend to filter (default: off, because backends implement it
differently and the mock backend not at all).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from gpiozero import DigitalInputDevice, Factory  # type: ignore[import-untyped]

from .debounce import DebouncedEdge, EdgeDebouncer

__all__ = ["DigitalInput", "InputEdge"]

_log = logging.getLogger("drivers.gpio")


@dataclass(frozen=True)
class InputEdge:
    """A debounced edge of input ``name``: it became ``active`` at ``monotonic_ns``.

    ``timestamp_ns`` is the same instant on the wall clock (``time.time_ns()`` scale);
    ``transitions`` is the number of raw changes (bounces) folded into this edge.
    """

    name: str
    active: bool
    monotonic_ns: int
    timestamp_ns: int
    transitions: int


class DigitalInput:
    """One debounced input on a gpiozero pin factory.

    ``pull_up``/``active_state`` are gpiozero's: ``pull_up=True`` with a switch to ground makes
    "closed" active; ``pull_up=None`` (external resistor) requires ``active_state``.
    """

    def __init__(
        self,
        name: str,
        pin: int | str,
        *,
        pin_factory: Factory,
        pull_up: bool | None = False,
        active_state: bool | None = None,
        bounce_time: float = 0.02,
        backend_bounce_time: float | None = None,
        on_edge: Callable[[InputEdge], None] | None = None,
        queue_size: int = 256,
        loop: asyncio.AbstractEventLoop | None = None,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        if pin_factory is None:
            raise ValueError(
                "pin_factory is required (drivers never use gpiozero's global factory)"
            )
        if bounce_time < 0:
            raise ValueError("bounce_time must be >= 0")
        self.name = name
        self.pin = pin
        self._loop = loop or asyncio.get_running_loop()
        self._clock_ns = clock_ns
        self._wall_ns = wall_ns
        self._on_edge = on_edge
        self._listeners: list[Callable[[InputEdge], None]] = []
        self._timer: asyncio.TimerHandle | None = None
        self.edges: asyncio.Queue[InputEdge] = asyncio.Queue(maxsize=queue_size)
        self.dropped_edges = 0
        self.lost_changes = 0
        self._device = DigitalInputDevice(
            pin,
            pull_up=pull_up,
            active_state=active_state,
            bounce_time=backend_bounce_time,
            pin_factory=pin_factory,
        )
        self._debouncer = EdgeDebouncer(bool(self._device.is_active), int(bounce_time * 1e9))
        self._device.when_activated = lambda: self._from_backend(True)
        self._device.when_deactivated = lambda: self._from_backend(False)

    @property
    def active(self) -> bool:
        """The debounced level."""
        return self._debouncer.level

    @property
    def raw_active(self) -> bool:
        """The level the backend reports right now (not debounced)."""
        return bool(self._device.is_active)

    @property
    def glitches(self) -> int:
        """Bursts that returned to the stable level within the window (no edge reported)."""
        return self._debouncer.glitches

    def add_edge_listener(self, listener: Callable[[InputEdge], None]) -> Callable[[], None]:
        """Also call ``listener(edge)`` (in the loop thread) for every debounced edge, without
        taking edges from ``edges``. Returns the function that removes it again."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    async def next_edge(self, timeout: float | None = None) -> InputEdge:
        """The next debounced edge (``TimeoutError`` after ``timeout`` seconds)."""
        if not self.edges.empty():
            return self.edges.get_nowait()
        return await asyncio.wait_for(self.edges.get(), timeout)

    def close(self) -> None:
        self._device.when_activated = None
        self._device.when_deactivated = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._device.close()

    # -- backend thread ------------------------------------------------------------------------------

    def _from_backend(self, active: bool) -> None:
        at = self._clock_ns()
        try:
            self._loop.call_soon_threadsafe(self._on_raw, at, active)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.lost_changes += 1

    # -- loop thread ---------------------------------------------------------------------------------

    def _on_raw(self, at_ns: int, active: bool) -> None:
        deadline = self._debouncer.change(at_ns, active)
        self._schedule(deadline)

    def _schedule(self, deadline_ns: int | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if deadline_ns is not None:
            delay = max(0.0, (deadline_ns - self._clock_ns()) / 1e9)
            self._timer = self._loop.call_later(delay, self._settle)

    def _settle(self) -> None:
        self._timer = None
        edge = self._debouncer.poll(self._clock_ns())
        if edge is not None:
            self._emit(edge)
        else:
            self._schedule(self._debouncer.deadline_ns)  # woke a little early, or a glitch ended

    def _emit(self, edge: DebouncedEdge) -> None:
        now_mono, now_wall = self._clock_ns(), self._wall_ns()
        record = InputEdge(
            self.name, edge.active, edge.at_ns, now_wall - (now_mono - edge.at_ns), edge.transitions
        )
        if self.edges.full():
            self.edges.get_nowait()  # keep the newest edges; the level itself is always in .active
            self.dropped_edges += 1
        self.edges.put_nowait(record)
        _log.info(
            "gpio_input_edge",
            extra={
                "kv": {
                    "input": self.name,
                    "pin": self.pin,
                    "active": edge.active,
                    "transitions": edge.transitions,
                }
            },
        )
        if self._on_edge is not None:
            self._on_edge(record)
        for listener in list(self._listeners):
            listener(record)

    def __repr__(self) -> str:
        return f"DigitalInput(name={self.name!r}, pin={self.pin!r}, active={self.active})"
