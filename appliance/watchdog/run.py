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
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Final

from drivers.gpio import (
    ChargerRelay,
    DigitalInput,
    PowerCycle,
    PowerCycleInProgress,
    PowerCycleRefused,
    check_off_time,
)

from .policy import Action, ChargerObservation, Decision, Notice, PowerCyclePolicy

__all__ = ["EVENT_KINDS", "RelayWatchdog"]

_log = logging.getLogger("appliance.watchdog")

KIND_POWER_CYCLE: Final = "watchdog_power_cycle"
KIND_REFUSED: Final = "watchdog_refused"
KIND_SUSPECT: Final = "watchdog_suspect"
KIND_RECOVERED: Final = "watchdog_recovered"
#: Every ``kind`` the watchdog emits (``watchdog_power_cycle`` is a black-box snapshot trigger).
EVENT_KINDS: Final = frozenset({KIND_POWER_CYCLE, KIND_REFUSED, KIND_SUSPECT, KIND_RECOVERED})


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
    dict (see the module docstring).
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
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        # A configured off time the relay would refuse is a configuration error: say so at start,
        # not after the charger has hung. (PowerCycleRefused is a ValueError.)
        check_off_time(policy.settings.off_s, relay.min_off_s, relay.max_off_s)
        self.cp_id = cp_id
        self.policy = policy
        self.relay = relay
        self.interval_s = interval_s
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
