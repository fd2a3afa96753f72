r"""When to power-cycle a hung charger: the relay watchdog's policy, as a pure state machine.

Why this exists: cutting a charger's supply is the one thing the health channel does to the field
that can hurt (an interrupted charging session, a worn contact, a charger that never comes back).
So the rules live here, as a small state machine with time passed in, that reads no clock, does no
I/O and is tested exhaustively; :mod:`appliance.watchdog.run` is the thin asyncio shell around it.

A charger is **hung** when either

- it is connected but silent: no OCPP frame for ``hang_after_s`` (silence is measured from the last
  frame, or from the moment the policy saw the charger connect, whichever is later), or
- it is disconnected for ``offline_after_s`` (from ``disconnected_since_ns``, or from the first
  observation that saw it disconnected if the observer does not know),

and, with ``require_alive_low``, the "alive" input is also low (``False``; an unknown input,
``None``, does not confirm a hang).

Guarantees (checked by property tests over arbitrary observation sequences):

- **Rate limit**: at most ``max_cycles_per_hour`` power cycles (automatic and manual together) in
  any rolling hour. A cycle is counted when it is *decided*, so a shell that crashes between the
  decision and the relay cannot defeat the limit. ``force`` does not lift it: it protects the relay
  contacts and the charger's input stage.
- **Transactions**: never a cycle while ``transaction_active`` unless a manual request says
  ``force``. Automatic decisions are never forced.
- **Backoff**: after the n-th consecutive cycle that did not bring the charger back (no frame from a
  connected charger since the cycle started, by the end of ``grace_after_cycle_s``), the next
  automatic attempt waits ``min(backoff_max_s, grace_after_cycle_s * backoff_factor ** n)`` from
  the end of that cycle. The count resets when the charger is back.
- **Quiet refusals**: a refusal (transaction, rate limit, backoff) is a :class:`Decision` with
  ``Action.REFUSE`` so it can be audited, but :meth:`PowerCyclePolicy.decide` returns it only when
  the refusal changes (a new state, or a new refusal code), not on every tick. Manual requests are
  answered every time (each is its own command).

State machine (``decide`` drives the automatic transitions; the shell calls ``cycle_started`` /
``cycle_finished`` around the relay; ``manual_request`` starts a cycle from any state but CYCLING)::

                      condition cleared (RECOVERED)
          +-----------------------------------------------------+
          |                                                     |
          v      hung, alive input does not confirm (SUSPECT)   |
      WATCHING ---------------------------------------------> SUSPECT
       ^  |  |                                                  | alive input low
       |  |  |  hung, transaction active / rate limit (REFUSE)  v
       |  |  +---------------------------------------------->  HELD  (REFUSE again only when the
       |  |                                                     |      refusal code changes;
       |  |  hung and allowed: POWER_CYCLE (counted)            |      cleared: RECOVERED)
       |  +------------------------------+    +-----------------+ allowed again
       |                                 v    v
       |        manual_request ------> CYCLING
       |                                 |    \ cycle_finished(ok=False): failures += 1
       |                                 |     \
       |             cycle_finished(ok)  v      v
       +---- back (RECOVERED) ------- GRACE   BACKOFF <--+
       |                                 |                 |
       |                                 +-----------------+ grace over, not back:
       |                                                     failures += 1, REFUSE "backoff"
       +---- back (RECOVERED), or backoff over (then re-evaluated like WATCHING) --- BACKOFF

"Back" means: connected, and a frame at or after the start of the last cycle. Leaving SUSPECT or
HELD because the hang condition cleared, or seeing the charger back after a cycle, carries the
notice ``RECOVERED``; entering SUSPECT (or a new suspect code) carries ``SUSPECT``. Everything else
the shell can ignore (``Decision.noteworthy`` is False). See docs/watchdog.md.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "HOUR_NS",
    "Action",
    "ChargerObservation",
    "Decision",
    "Notice",
    "PowerCyclePolicy",
    "WatchdogSettings",
    "WatchdogState",
]

NS_PER_S: Final = 1_000_000_000
HOUR_NS: Final = 3600 * NS_PER_S


@dataclass(frozen=True)
class WatchdogSettings:
    """The ``[watchdog]`` config section, in seconds (the policy works in nanoseconds)."""

    hang_after_s: float = 300
    offline_after_s: float = 600
    require_alive_low: bool = False
    off_s: float = 10
    max_cycles_per_hour: int = 2
    backoff_factor: float = 2.0
    backoff_max_s: float = 3600
    grace_after_cycle_s: float = 180

    def __post_init__(self) -> None:
        for name in ("hang_after_s", "offline_after_s", "off_s"):
            value = getattr(self, name)
            if not value > 0:  # also rejects NaN
                raise ValueError(f"watchdog.{name} must be > 0, got {value!r}")
        for name in ("backoff_max_s", "grace_after_cycle_s"):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"watchdog.{name} must be >= 0, got {value!r}")
        if isinstance(self.max_cycles_per_hour, bool) or not isinstance(self.max_cycles_per_hour, int):
            raise ValueError("watchdog.max_cycles_per_hour must be an integer")
        if self.max_cycles_per_hour < 0:
            raise ValueError("watchdog.max_cycles_per_hour must be >= 0 (0 disables power cycles)")
        if not self.backoff_factor >= 1:
            raise ValueError(f"watchdog.backoff_factor must be >= 1, got {self.backoff_factor!r}")


@dataclass(frozen=True)
class ChargerObservation:
    """What the health process knows about one charger at ``now_ns`` (all times on one clock).

    ``last_frame_ns``: the last OCPP frame from the charger (None: none seen). ``disconnected_since_ns``:
    when its websocket went away (None while connected, or unknown). ``alive_input``: the debounced
    "alive" input (None: not wired or unknown).
    """

    now_ns: int
    connected: bool
    last_frame_ns: int | None
    disconnected_since_ns: int | None
    transaction_active: bool
    alive_input: bool | None = None


class WatchdogState(enum.Enum):
    WATCHING = "watching"  # nothing wrong (or not wrong for long enough)
    SUSPECT = "suspect"  # silent/offline past the threshold, but the alive input does not confirm
    HELD = "held"  # hung, but a cycle is refused (transaction active, rate limit)
    CYCLING = "cycling"  # a cycle was decided and the relay is (about to be) off
    GRACE = "grace"  # the cycle is done; the charger is given time to boot and reconnect
    BACKOFF = "backoff"  # the last cycle did not bring the charger back; waiting before the next


class Action(enum.Enum):
    NONE = "none"
    POWER_CYCLE = "power_cycle"
    REFUSE = "refuse"


class Notice(enum.Enum):
    """A state change worth an event although nothing is done (``Action.NONE``)."""

    SUSPECT = "suspect"
    RECOVERED = "recovered"


@dataclass(frozen=True)
class Decision:
    """One answer of the policy.

    ``code`` is a stable token for the reason (``hang``, ``offline``, ``manual``,
    ``transaction_active``, ``rate_limited``, ``backoff``, ``cycle_in_progress``,
    ``alive_input_high``, ``alive_input_unknown``, ``back``, ``cleared``, ...); ``reason`` is the same
    for humans. ``detail`` holds JSON-ready numbers (ages in seconds, cycles in the last hour, the next
    attempt time). ``forced`` is True only for a manual cycle that overrides an active transaction.
    """

    action: Action
    reason: str
    state: WatchdogState
    detail: Mapping[str, Any] = field(default_factory=dict)
    code: str = ""
    notice: Notice | None = None
    forced: bool = False
    manual: bool = False

    @property
    def noteworthy(self) -> bool:
        """True when the shell must emit an event for this decision."""
        return self.action is not Action.NONE or self.notice is not None


@dataclass(frozen=True)
class _Hang:
    code: str  # "hang" | "offline"
    reason: str
    age_s: float


class PowerCyclePolicy:
    """The relay watchdog's state machine for one charger (see the module docstring).

    ``history``: times (ns) of earlier cycles, so a restarted health process keeps the rate limit.
    """

    def __init__(self, settings: WatchdogSettings | None = None, *, history: Iterable[int] = ()) -> None:
        self.settings = settings or WatchdogSettings()
        s = self.settings
        self._hang_ns = round(s.hang_after_s * NS_PER_S)
        self._offline_ns = round(s.offline_after_s * NS_PER_S)
        self._grace_ns = round(s.grace_after_cycle_s * NS_PER_S)
        self._state = WatchdogState.WATCHING
        self._code = ""  # the refusal/suspect code of the current state (quiet refusals)
        self._history: deque[int] = deque(sorted(history))
        self._failures = 0  # consecutive cycles that did not bring the charger back
        self._cycle_start_ns: int | None = None  # start of the last cycle (decided or switched)
        self._cycle_end_ns: int | None = None
        self._grace_until_ns = 0
        self._backoff_until_ns = 0
        # Memory for what the observer may not know.
        self._was_connected: bool | None = None
        self._silence_floor_ns: int | None = None  # the charger (re)connected here
        self._offline_floor_ns: int | None = None  # first seen disconnected here

    # -- introspection -----------------------------------------------------------------------------

    @property
    def state(self) -> WatchdogState:
        return self._state

    @property
    def failures(self) -> int:
        """Consecutive cycles that did not bring the charger back."""
        return self._failures

    @property
    def backoff_until_ns(self) -> int:
        return self._backoff_until_ns

    @property
    def history(self) -> tuple[int, ...]:
        """Decision times of the cycles still inside the rolling hour (for persistence)."""
        return tuple(self._history)

    def cycles_in_window(self, now_ns: int) -> int:
        """Cycles decided in the rolling hour ending at ``now_ns`` (a clock step back counts them too)."""
        self._prune(now_ns)
        return len(self._history)

    def backoff_delay_s(self, failures: int) -> float:
        """Wait after the ``failures``-th consecutive unsuccessful cycle, from the end of that cycle."""
        s = self.settings
        delay = float(s.grace_after_cycle_s)
        for _ in range(max(0, failures)):
            delay *= s.backoff_factor
            if delay >= s.backoff_max_s:
                return float(s.backoff_max_s)
        return min(delay, float(s.backoff_max_s))

    # -- the automatic path ----------------------------------------------------------------------

    def decide(self, obs: ChargerObservation) -> Decision:
        """The decision for this observation; moves the state machine."""
        now = obs.now_ns
        self._remember(obs)
        back = self._back(obs)

        if self._state is WatchdogState.CYCLING:
            # The shell reports the end of a cycle; if it never does (a bug, a lost task), give up on
            # it after the off time plus the grace time rather than stay blind forever.
            started = self._cycle_start_ns if self._cycle_start_ns is not None else now
            if now - started <= round(self.settings.off_s * NS_PER_S) + self._grace_ns:
                return self._quiet("cycling", "power cycle in progress")
            self.cycle_finished(now, ok=False)

        if self._state is WatchdogState.GRACE:
            if back:
                return self._recovered("charger back after the power cycle")
            if now < self._grace_until_ns:
                return self._quiet("grace", "waiting for the charger to boot after the power cycle")
            return self._enter_backoff(now, "the power cycle did not bring the charger back")

        if self._state is WatchdogState.BACKOFF:
            if back:
                return self._recovered("charger back")
            if now < self._backoff_until_ns:
                return self._quiet("backoff", "waiting before the next power cycle")
            # Backoff over: evaluate as if watching (the failure count is kept).

        if back and self._failures:
            return self._recovered("charger back")

        hang = self._hang(obs)
        if hang is None:
            if self._state in (WatchdogState.SUSPECT, WatchdogState.HELD):
                return self._recovered("hang condition cleared", code="cleared")
            self._set(WatchdogState.WATCHING, "")
            return self._quiet("healthy", "charger is fine")

        detail: dict[str, Any] = {"trigger": hang.code, "age_s": round(hang.age_s, 3)}
        if self.settings.require_alive_low and obs.alive_input is not False:
            code = "alive_input_high" if obs.alive_input else "alive_input_unknown"
            why = "is high" if obs.alive_input else "is unknown"
            reason = f"{hang.reason}, but the alive input {why}"
            changed = self._set(WatchdogState.SUSPECT, code)
            return Decision(
                Action.NONE,
                reason,
                self._state,
                detail,
                code=code,
                notice=Notice.SUSPECT if changed else None,
            )

        refusal = self._refusal(now, obs.transaction_active, force=False)
        if refusal is not None:
            code, why = refusal
            detail["cycles_last_hour"] = len(self._history)
            changed = self._set(WatchdogState.HELD, code)
            return Decision(
                Action.REFUSE if changed else Action.NONE,
                f"{hang.reason}; not power-cycling: {why}",
                self._state,
                detail,
                code=code,
            )
        return self._start(now, hang.code, hang.reason, detail, forced=False, manual=False)

    # -- the shell's reports ---------------------------------------------------------------------

    def cycle_started(self, now_ns: int) -> None:
        """The relay switched off at ``now_ns``."""
        if self._state is WatchdogState.CYCLING:
            self._cycle_start_ns = now_ns

    def cycle_finished(self, now_ns: int, ok: bool) -> None:
        """The relay is on again (``ok``) or the cycle failed or was interrupted (``not ok``)."""
        if self._state is not WatchdogState.CYCLING:
            return
        self._cycle_end_ns = now_ns
        if ok:
            self._grace_until_ns = now_ns + self._grace_ns
            self._set(WatchdogState.GRACE, "")
        else:
            self._failures += 1
            self._backoff_until_ns = now_ns + round(self.backoff_delay_s(self._failures) * NS_PER_S)
            self._set(WatchdogState.BACKOFF, "backoff")

    # -- the remote command ----------------------------------------------------------------------

    def manual_request(self, now_ns: int, force: bool, transaction_active: bool) -> Decision:
        """The ``relay_cycle`` command: POWER_CYCLE or REFUSE, answered every time.

        Manual requests bypass the hang detection, the grace time and the backoff (an operator asked),
        but not the rate limit; ``force`` only overrides an active transaction.
        """
        self._prune(now_ns)
        detail: dict[str, Any] = {"trigger": "manual", "cycles_last_hour": len(self._history)}
        if self._state is WatchdogState.CYCLING:
            return Decision(
                Action.REFUSE,
                "a power cycle is already in progress",
                self._state,
                detail,
                code="cycle_in_progress",
                manual=True,
            )
        refusal = self._refusal(now_ns, transaction_active, force=force)
        if refusal is not None:
            code, why = refusal
            return Decision(
                Action.REFUSE, f"not power-cycling: {why}", self._state, detail, code=code, manual=True
            )
        reason = "manual request"
        if force and transaction_active:
            reason += " (forced during an active transaction)"
        return self._start(
            now_ns, "manual", reason, detail, forced=force and transaction_active, manual=True
        )

    # -- internals -------------------------------------------------------------------------------

    def _set(self, state: WatchdogState, code: str) -> bool:
        """Move to ``state``/``code``; True if either changed."""
        changed = (state, code) != (self._state, self._code)
        self._state, self._code = state, code
        return changed

    def _quiet(self, code: str, reason: str) -> Decision:
        return Decision(Action.NONE, reason, self._state, {}, code=code)

    def _recovered(self, reason: str, *, code: str = "back") -> Decision:
        self._failures = 0
        self._set(WatchdogState.WATCHING, "")
        return Decision(Action.NONE, reason, self._state, {}, code=code, notice=Notice.RECOVERED)

    def _enter_backoff(self, now: int, reason: str) -> Decision:
        self._failures += 1
        delay_s = self.backoff_delay_s(self._failures)
        end = self._cycle_end_ns if self._cycle_end_ns is not None else now
        self._backoff_until_ns = end + round(delay_s * NS_PER_S)
        self._set(WatchdogState.BACKOFF, "backoff")
        detail = {
            "failures": self._failures,
            "backoff_s": delay_s,
            "next_attempt_ns": self._backoff_until_ns,
        }
        return Decision(
            Action.REFUSE,
            f"{reason} ({self._failures} in a row); next attempt in {delay_s:g} s at the earliest",
            self._state,
            detail,
            code="backoff",
        )

    def _start(
        self, now: int, code: str, reason: str, detail: dict[str, Any], *, forced: bool, manual: bool
    ) -> Decision:
        self._history.append(now)
        self._cycle_start_ns = now
        self._cycle_end_ns = None
        self._set(WatchdogState.CYCLING, "")
        detail["cycles_last_hour"] = len(self._history)
        detail["off_s"] = self.settings.off_s
        return Decision(
            Action.POWER_CYCLE, reason, self._state, detail, code=code, forced=forced, manual=manual
        )

    def _refusal(self, now: int, transaction_active: bool, *, force: bool) -> tuple[str, str] | None:
        if transaction_active and not force:
            return "transaction_active", "a transaction is active"
        self._prune(now)
        limit = self.settings.max_cycles_per_hour
        if len(self._history) >= limit:
            return "rate_limited", f"{len(self._history)} power cycle(s) in the last hour (max {limit})"
        return None

    def _prune(self, now: int) -> None:
        # Keep cycles with now - t < 1 h; one "from the future" (clock stepped back) is kept too.
        self._history = deque(t for t in self._history if now - t < HOUR_NS)

    def _remember(self, obs: ChargerObservation) -> None:
        now = obs.now_ns
        if obs.connected:
            self._offline_floor_ns = None
            if self._was_connected is False or (
                self._was_connected is None and obs.last_frame_ns is None
            ):
                self._silence_floor_ns = now  # (re)connected here, or first sight without a frame
        else:
            self._silence_floor_ns = None
            if self._offline_floor_ns is None:
                self._offline_floor_ns = now
        self._was_connected = obs.connected

    def _back(self, obs: ChargerObservation) -> bool:
        return (
            obs.connected
            and self._cycle_start_ns is not None
            and obs.last_frame_ns is not None
            and obs.last_frame_ns >= self._cycle_start_ns
        )

    def _hang(self, obs: ChargerObservation) -> _Hang | None:
        now = obs.now_ns
        if obs.connected:
            refs = [t for t in (obs.last_frame_ns, self._silence_floor_ns) if t is not None]
            since = max(refs) if refs else now
            if now - since >= self._hang_ns:
                age = (now - since) / NS_PER_S
                return _Hang(
                    "hang",
                    f"connected but silent for {age:.0f} s (hang_after_s={self.settings.hang_after_s:g})",
                    age,
                )
            return None
        since = obs.disconnected_since_ns
        if since is None:
            since = self._offline_floor_ns if self._offline_floor_ns is not None else now
        if now - since >= self._offline_ns:
            age = (now - since) / NS_PER_S
            return _Hang(
                "offline",
                f"disconnected for {age:.0f} s (offline_after_s={self.settings.offline_after_s:g})",
                age,
            )
        return None
