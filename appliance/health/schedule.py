"""A drift-free periodic schedule anchored on the monotonic clock (pure: the caller passes ``now``).

Why this exists: ``while True: work(); await asyncio.sleep(1)`` drifts by the work's duration every
tick, and a loop that "catches up" after a stall fires a burst of back-to-back ticks. Telemetry at
1 Hz must do neither. :class:`TickSchedule` guarantees:

- **Anchored deadlines.** Deadline ``k`` is ``anchor + k * interval`` (``k = 0`` is the anchor
  itself), computed from the anchor each time, so rounding never accumulates and a slow tick does
  not shift the ones after it.
- **Late ticks are counted, never bunched.** When a tick runs after a later deadline has already
  passed (the loop stalled for more than an interval), the missed deadlines are skipped: the tick
  takes the number of the *latest* passed deadline, ``skipped`` says how many were dropped, and
  the next deadline is in the future. A tick that runs more than ``late_threshold_s`` after its
  deadline (default: half an interval) counts in ``late_ticks``.
- **Re-anchoring.** :meth:`TickSchedule.set_interval` starts a new anchor at ``now`` (next
  deadline ``now + new interval``); tick numbers keep increasing across it.
- **Jitter statistics.** The lateness of the last ``window`` ticks (after skipping) gives p50 and
  p99 in :meth:`TickSchedule.stats`.

Nothing here sleeps or reads a clock.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

__all__ = ["TickSchedule", "percentile"]


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..1) of an ascending list; None when empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class TickSchedule:
    """``TickSchedule(interval_s, start_monotonic)``: deadlines ``start + k * interval_s``."""

    def __init__(
        self,
        interval_s: float,
        start_monotonic: float,
        *,
        late_threshold_s: float | None = None,
        window: int = 3600,
    ) -> None:
        self._check(interval_s)
        self.interval_s = float(interval_s)
        self._late_threshold = late_threshold_s
        self._anchor = float(start_monotonic)
        self._base = 0  # tick number of the anchor
        self._k = 0  # index (from the anchor) of the next deadline
        self.ticks = 0  # ticks run
        self.late_ticks = 0  # ticks run more than late_threshold_s after their deadline
        self.skipped = 0  # deadlines skipped because a later one had already passed
        self.max_lateness_s = 0.0
        self._lateness: deque[float] = deque(maxlen=window)

    @staticmethod
    def _check(interval_s: float) -> None:
        if not (interval_s > 0 and math.isfinite(interval_s)):
            raise ValueError(f"interval must be a positive number of seconds, got {interval_s!r}")

    @property
    def late_threshold_s(self) -> float:
        return self.interval_s / 2 if self._late_threshold is None else self._late_threshold

    def next_deadline(self) -> float:
        """Monotonic time of the next tick."""
        return self._anchor + self._k * self.interval_s

    def next_tick_no(self) -> int:
        return self._base + self._k

    def on_tick(self, now: float) -> tuple[int, float, int]:
        """Account for a tick run at ``now``; returns ``(tick_no, lateness_s, skipped)``.

        ``now`` should be at or after :meth:`next_deadline`; a tick run early (an event loop may
        wake a hair before its timer) has a negative lateness and keeps its number.
        """
        deadline = self.next_deadline()
        lateness = now - deadline
        skipped = 0
        if lateness >= self.interval_s:
            # Jump to the latest deadline that has passed; the ones in between are not run.
            skipped = int(lateness // self.interval_s)
            # Floating point: make sure the chosen deadline really is <= now.
            while skipped > 0 and self._anchor + (self._k + skipped) * self.interval_s > now:
                skipped -= 1
            self._k += skipped
            self.skipped += skipped
        if lateness > self.late_threshold_s:
            self.late_ticks += 1
        tick_no = self._base + self._k
        lateness = now - self.next_deadline()
        self._k += 1
        self.ticks += 1
        self.max_lateness_s = max(self.max_lateness_s, lateness)
        self._lateness.append(lateness)
        return tick_no, lateness, skipped

    def set_interval(self, interval_s: float, now: float) -> None:
        """Change the interval and re-anchor at ``now``: the next tick is due at ``now + interval_s``."""
        self._check(interval_s)
        self._base += self._k
        self._anchor = now
        self.interval_s = float(interval_s)
        self._k = 1
        # the tick number of the anchor itself was never used: keep numbers strictly increasing
        self._base -= 1

    def stats(self) -> dict[str, Any]:
        """Counters and lateness percentiles (milliseconds) over the last ``window`` ticks."""
        lat = sorted(self._lateness)
        ms = lambda v: None if v is None else round(v * 1e3, 3)  # noqa: E731
        return {
            "interval_s": self.interval_s,
            "ticks": self.ticks,
            "late": self.late_ticks,
            "skipped": self.skipped,
            "jitter_ms": {
                "n": len(lat),
                "p50": ms(percentile(lat, 0.5)),
                "p99": ms(percentile(lat, 0.99)),
                "max": ms(self.max_lateness_s) if lat else None,
            },
        }
