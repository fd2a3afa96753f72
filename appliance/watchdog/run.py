"""The relay watchdog's asyncio shell: observe, ask the policy, drive the relay, report.

Why this exists: :class:`~appliance.watchdog.policy.PowerCyclePolicy` decides; something has to read
the clock, build the observation, switch the relay and tell the health process what happened. This
module is that something, and nothing more: every rule lives in the policy.

Guarantees:

- Every noteworthy decision (anything but a silent ``Action.NONE``) is reported through
  ``on_decision`` as one event dict, *before* the relay is touched, so a crash during the off time
  still leaves the decision in the black box. Each cycle's result (the off time the relay measured,
  the relay's cycle count, interrupted or failed) is a second ``watchdog_power_cycle`` event. Both
  fall inside one snapshot window (the black box merges overlapping triggers).
- The policy always hears how a cycle ended (``cycle_finished``), also when the relay refuses or the
  task is cancelled; the relay itself restores power in a ``finally`` block.
- A failing observer or event sink is logged and counted, and never stops the watchdog.

Event dict (the health process stores it as a black-box EVENT record and publishes it on
``omgw/v1/{gateway_id}/event``)::

    {"kind": "watchdog_power_cycle" | "watchdog_refused" | "watchdog_suspect" | "watchdog_recovered",
     "cp": cp_id, "reason": str, "code": str, "state": "watching" | "suspect" | ...,
     "off_s": float | None, "cycle": int, "forced": bool, "manual": bool, "time_ns": int,
     "phase": "decided" | "done" | "interrupted" | "failed" | None, "detail": {...}}

``off_s`` is the requested off time on a ``decided`` event and the measured one on the result;
``cycle`` is the relay's cycle count (the number this cycle gets, for ``decided``).

With an ``alive_input`` (on the bench and the gateway: the relay's switched output wired back to a
GPIO input), the result (``done``/``interrupted``) also says what the input saw:
``detail.input_off_s`` is the time from the input going inactive to it being active again, from the
debounced edges' first raw transitions (:func:`input_off_time`), measured independently of the
relay's own ``off_s``. It is ``None`` when the input did not show one complete off/on during the
cycle, and ``detail.input_problem`` then says what it saw instead (a welded contact never goes
inactive). The shell waits at most
``input_settle_s`` after power is restored for the input to come back (debounce plus relay operate
time); the input's ``edges`` queue is not consumed (a listener records the edges).
"""

from __future__ import annotations

import asyncio
import logging
import time
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Final

from drivers.gpio import (
    ChargerRelay,
    DigitalInput,
    InputEdge,
    PowerCycle,
    PowerCycleInProgress,
    PowerCycleRefused,
    check_off_time,
)

from .policy import Action, ChargerObservation, Decision, Notice, PowerCyclePolicy

__all__ = ["EVENT_KINDS", "RelayWatchdog", "input_off_time"]

_log = logging.getLogger("appliance.watchdog")

KIND_POWER_CYCLE: Final = "watchdog_power_cycle"
KIND_REFUSED: Final = "watchdog_refused"
KIND_SUSPECT: Final = "watchdog_suspect"
KIND_RECOVERED: Final = "watchdog_recovered"
#: Every ``kind`` the watchdog emits (``watchdog_power_cycle`` is a black-box snapshot trigger).
EVENT_KINDS: Final = frozenset({KIND_POWER_CYCLE, KIND_REFUSED, KIND_SUSPECT, KIND_RECOVERED})


def input_off_time(edges: Sequence[InputEdge], *, active_before: bool) -> tuple[float | None, str]:
    """The first off pulse of the alive input during a power cycle (pure).

    ``edges`` are the input's debounced edges seen from the moment the relay was told to switch off,
    in order; ``active_before`` is the input's level then. Returns (seconds from the first inactive
    edge to the next active edge, "") or (None, what was seen instead).
    """
    if not active_before:
        return None, "the alive input was already inactive when the relay switched off"
    went_off = next((e for e in edges if not e.active), None)
    if went_off is None:
        return None, (
            "the alive input never went inactive (welded relay contact, "
            "or the input is not wired to the relay output)"
        )
    since = went_off.monotonic_ns
    came_back = next((e for e in edges if e.active and e.monotonic_ns >= since), None)
    if came_back is None:
        return None, "the alive input did not come back active after power was restored"
    return (came_back.monotonic_ns - went_off.monotonic_ns) / 1e9, ""


class _InputWatch:
    """The alive input's edges during one cycle (a listener: the input's queue is left alone)."""

    def __init__(self, alive: DigitalInput) -> None:
        self.active_before = alive.active
        self.edges: list[InputEdge] = []
        self._back = asyncio.Event()
        self._remove = alive.add_edge_listener(self._on_edge)

    def _on_edge(self, edge: InputEdge) -> None:
        self.edges.append(edge)
        if edge.active and any(not e.active for e in self.edges):
            self._back.set()

    async def wait_back(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) for the input to come back, if it went off at all."""
        if self.active_before and any(not e.active for e in self.edges):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._back.wait(), timeout_s)

    def finish(self) -> dict[str, Any]:
        self._remove()
        off, problem = input_off_time(self.edges, active_before=self.active_before)
        out: dict[str, Any] = {"input_off_s": None if off is None else round(off, 3)}
        if problem:
            out["input_problem"] = problem
        return out


def _kind(decision: Decision) -> str:
    if decision.action is Action.POWER_CYCLE:
        return KIND_POWER_CYCLE
    if decision.action is Action.REFUSE:
        return KIND_REFUSED
    if decision.notice is Notice.SUSPECT:
        return KIND_SUSPECT
    return KIND_RECOVERED


class RelayWatchdog:
    """One charger's watchdog: ``await run(stop)`` in the health process.

    ``observe()`` returns the charger's current :class:`ChargerObservation`; its ``now_ns`` is
    replaced by ``clock()`` (the one time source of the policy) and, when ``alive_input`` is given,
    its ``alive_input`` by that input's debounced level. ``on_decision(event)`` receives every event
    dict (see the module docstring). ``input_settle_s`` bounds the wait for the alive input to come
    back after a cycle (its off time goes into the result event).
    """

    def __init__(
        self,
        cp_id: str,
        policy: PowerCyclePolicy,
        relay: ChargerRelay,
        observe: Callable[[], ChargerObservation],
        on_decision: Callable[[dict[str, Any]], None],
        alive_input: DigitalInput | None = None,
        clock: Callable[[], int] = time.time_ns,
        interval_s: float = 1.0,
        input_settle_s: float = 1.0,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        if not input_settle_s >= 0:
            raise ValueError(f"input_settle_s must be >= 0, got {input_settle_s!r}")
        # A configured off time the relay would refuse is a configuration error: say so at start,
        # not after the charger has hung. (PowerCycleRefused is a ValueError.)
        check_off_time(policy.settings.off_s, relay.min_off_s, relay.max_off_s)
        self.cp_id = cp_id
        self.policy = policy
        self.relay = relay
        self.interval_s = interval_s
        self.input_settle_s = input_settle_s
        self._observe = observe
        self._on_decision = on_decision
        self._alive = alive_input
        self._clock = clock
        self.events = 0
        self.observe_errors = 0
        self.sink_errors = 0

    # -- public ---------------------------------------------------------------------------------

    def observation(self) -> ChargerObservation:
        obs = self._observe()
        alive = self._alive.active if self._alive is not None else obs.alive_input
        return replace(obs, now_ns=self._clock(), alive_input=alive)

    async def step(self) -> dict[str, Any] | None:
        """One tick: observe, decide, act. Returns the last event emitted (None if nothing)."""
        try:
            obs = self.observation()
        except Exception as exc:  # the observer belongs to another module; keep watching
            self.observe_errors += 1
            if self.observe_errors == 1 or self.observe_errors % 60 == 0:  # rate-limited log
                _log.error(
                    "watchdog_observe_failed",
                    extra={"kv": {"cp": self.cp_id, "error": repr(exc), "count": self.observe_errors}},
                )
            return None
        decision = self.policy.decide(obs)
        if not decision.noteworthy:
            return None
        event = self._event(decision)
        self._emit(event)
        if decision.action is Action.POWER_CYCLE:
            return await self._cycle(decision)
        return event

    async def run(self, stop: asyncio.Event) -> None:
        """Tick every ``interval_s`` until ``stop`` is set (checked between ticks; a running cycle
        completes first, or cancel the task to end it early with power restored)."""
        _log.info(
            "watchdog_started",
            extra={"kv": {"cp": self.cp_id, "relay": self.relay.name, "interval_s": self.interval_s}},
        )
        while not stop.is_set():
            await self.step()
            try:
                await asyncio.wait_for(stop.wait(), self.interval_s)
            except TimeoutError:
                pass
        _log.info("watchdog_stopped", extra={"kv": {"cp": self.cp_id}})

    async def manual_cycle(self, force: bool) -> dict[str, Any]:
        """The ``relay_cycle`` remote command. Returns the refusal event, or the cycle's result event
        (after the off time) when the policy allows it."""
        obs = self.observation()
        decision = self.policy.manual_request(obs.now_ns, force, obs.transaction_active)
        event = self._event(decision)
        self._emit(event)
        if decision.action is Action.POWER_CYCLE:
            return await self._cycle(decision)
        return event

    # -- internals ------------------------------------------------------------------------------

    async def _cycle(self, decision: Decision) -> dict[str, Any]:
        off_s = self.policy.settings.off_s
        before = self.relay.last_cycle
        ok = False
        cycle: PowerCycle | None = None
        phase, reason = "interrupted", "power cycle interrupted (cancelled); power restored"
        self.policy.cycle_started(self._clock())
        watch = _InputWatch(self._alive) if self._alive is not None else None
        try:
            cycle = await self.relay.power_cycle(off_s)
            ok = not cycle.interrupted
            phase, reason = "done", f"power cycle done: off {cycle.off_s:.3f} s"
        except (PowerCycleRefused, PowerCycleInProgress, OSError) as exc:
            phase, reason = "failed", f"relay did not cycle: {exc}"
        finally:
            # Also on cancellation: the policy must leave CYCLING, and the result must be recorded.
            self.policy.cycle_finished(self._clock(), ok)
            if cycle is None and self.relay.last_cycle is not before:
                cycle = self.relay.last_cycle  # cancelled during the off time
            try:
                if watch is not None and cycle is not None:
                    # Power is back: give the input its debounce (and the relay its operate time).
                    # Also when cancelled: the wait is bounded, and a second cancel still reports.
                    await watch.wait_back(self.input_settle_s)
            finally:
                event = self._event(
                    decision,
                    kind=KIND_POWER_CYCLE,
                    phase=phase,
                    reason=reason,
                    off_s=None if cycle is None else round(cycle.off_s, 3),
                    cycle=self.relay.cycles if cycle is None else cycle.cycle_number,
                )
                event["requested_off_s"] = off_s
                event["interrupted"] = phase == "interrupted"
                if watch is not None:
                    measured = watch.finish()
                    if cycle is not None:
                        event["detail"].update(measured)
                self._emit(event)
        return event

    def _event(
        self,
        decision: Decision,
        *,
        kind: str | None = None,
        phase: str | None = None,
        reason: str | None = None,
        off_s: float | None = None,
        cycle: int | None = None,
    ) -> dict[str, Any]:
        cycling = decision.action is Action.POWER_CYCLE
        if cycling and phase is None:
            phase, off_s, cycle = "decided", self.policy.settings.off_s, self.relay.cycles + 1
        return {
            "kind": kind or _kind(decision),
            "cp": self.cp_id,
            "reason": reason or decision.reason,
            "code": decision.code,
            "state": self.policy.state.value,
            "off_s": off_s,
            "cycle": self.relay.cycles if cycle is None else cycle,
            "forced": decision.forced,
            "manual": decision.manual,
            "time_ns": self._clock(),
            "phase": phase,
            "detail": dict(decision.detail),
        }

    def _emit(self, event: dict[str, Any]) -> None:
        self.events += 1
        _log.warning(
            event["kind"],
            extra={
                "kv": {
                    "cp": self.cp_id,
                    "code": event["code"],
                    "state": event["state"],
                    "phase": event["phase"],
                    "off_s": event["off_s"],
                    "cycle": event["cycle"],
                    "forced": event["forced"],
                    **{k: v for k, v in event["detail"].items() if k == "input_off_s"},
                }
            },
        )
        try:
            self._on_decision(event)
        except Exception as exc:  # the sink (black box, publisher) must not stop the watchdog
            self.sink_errors += 1
            _log.error(
                "watchdog_event_sink_failed",
                extra={"kv": {"cp": self.cp_id, "kind": event["kind"], "error": repr(exc)}},
            )
