"""Pure edge debouncing: raw level changes with timestamps in, debounced edges out.

Why our own debouncer and not only gpiozero's ``bounce_time``: gpiozero passes the bounce time to
the pin backend, and backends differ. RPi.GPIO and the native backend ignore edges for a time after
an edge (a lock-out that can miss the final level), lgpio asks the kernel for a glitch filter, and
the mock backend ignores the setting altogether ("XXX Need to implement this" in
``gpiozero/pins/mock.py``). This class gives one behaviour everywhere and is unit-testable with
synthetic times.

Rule ("stable for a window"): a new level is accepted once the raw input has stayed at it for
``window_ns`` without another change. The accepted edge carries the time of the *first* raw
transition of the burst (``at_ns``), which is when the physical event happened (a relay opened, a
door moved), and the time it was confirmed (``confirmed_ns`` = last raw change + window). A burst
that ends where it started (a glitch) produces no edge and is counted in ``glitches``.

No clock, no I/O: the caller feeds ``change(at_ns, level)`` and calls ``poll(now_ns)`` at or after
``deadline_ns``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DebouncedEdge", "EdgeDebouncer"]


@dataclass(frozen=True)
class DebouncedEdge:
    """A debounced transition to ``active``; ``transitions`` counts the raw changes folded into it."""

    active: bool
    at_ns: int
    confirmed_ns: int
    transitions: int


class EdgeDebouncer:
    """State machine for one input. ``level`` is the debounced (stable) level."""

    def __init__(self, initial: bool, window_ns: int) -> None:
        if window_ns < 0:
            raise ValueError("window_ns must be >= 0")
        self.window_ns = window_ns
        self.level = initial
        self._raw = initial
        self._burst_start: int | None = None
        self._last_change = 0
        self._transitions = 0
        self.glitches = 0

    @property
    def raw(self) -> bool:
        return self._raw

    @property
    def deadline_ns(self) -> int | None:
        """When the current burst settles (call :meth:`poll` then), or None if nothing is pending."""
        return None if self._burst_start is None else self._last_change + self.window_ns

    def change(self, at_ns: int, level: bool) -> int | None:
        """Feed one raw level change (repeats of the current raw level are ignored). Returns the deadline."""
        if level != self._raw:
            at_ns = max(at_ns, self._last_change)  # out-of-order report: keep time monotonic
            self._raw = level
            self._last_change = at_ns
            if self._burst_start is None:
                self._burst_start = at_ns
                self._transitions = 0
            self._transitions += 1
        return self.deadline_ns

    def poll(self, now_ns: int) -> DebouncedEdge | None:
        """The debounced edge if the burst has settled by ``now_ns`` on a new level, else None."""
        deadline = self.deadline_ns
        if deadline is None or now_ns < deadline:
            return None
        assert self._burst_start is not None
        start, transitions = self._burst_start, self._transitions
        self._burst_start = None
        self._transitions = 0
        if self._raw == self.level:
            self.glitches += 1
            return None
        self.level = self._raw
        return DebouncedEdge(self._raw, start, deadline, transitions)
