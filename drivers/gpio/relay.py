"""The charger power relay: a gpiozero ``OutputDevice`` that can power-cycle a hung charger.

Safe state = **charger powered**. The gateway's job is to keep chargers up; cutting a charger is the
exception, done only on request and always undone. Everything here is arranged so that the relay
rests in the state that powers the charger:

- **Wiring** (:class:`RelayWiring`): the recommended wiring is ``NORMALLY_CLOSED``: the charger's
  supply (or its contactor/aux supply) runs through the relay's NC contact, so the charger is
  powered while the coil is *de-energised*. If the gateway crashes, reboots, is unplugged, or the GPIO
  returns to an input at boot, the coil drops and the charger stays powered. ``NORMALLY_OPEN`` is
  supported (powered = coil energised) but is not fail-safe: any gateway reset cuts the charger.
  Choose a GPIO whose power-on pull keeps the relay board's input in the coil-off state
  (BCM2711: GPIO0-8 pull up, GPIO9-27 pull down; an active-low board needs a pull-up pin).
- **Construction** drives the output straight to the powered state (gpiozero ``initial_value``).
- **Close** restores the powered state before releasing the pin.
- **A power cycle always ends powered**, even when the task running it is cancelled: the restore is
  in a ``finally`` block.

``power_cycle(off_s)`` refuses off times below ``min_off_s`` (default 2 s: shorter cuts may not
discharge the charger's supply capacitors, so it would not actually reboot, and rapid cycling wears
the contacts and the charger's input stage) and above ``max_off_s`` (default 600 s: a typo must not
leave a charger dark for hours). It refuses a second cycle while one is running. The cycle count
(mechanical operations, for state of health) starts at ``initial_cycles`` so the health layer can
persist it across restarts.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from gpiozero import Factory, OutputDevice  # type: ignore[import-untyped]

__all__ = [
    "ChargerRelay",
    "PowerCycle",
    "PowerCycleInProgress",
    "PowerCycleRefused",
    "RelayWiring",
    "check_off_time",
]

_log = logging.getLogger("drivers.gpio")


class RelayWiring(enum.Enum):
    """Which relay contact carries the charger's supply."""

    NORMALLY_CLOSED = "nc"  # powered while the coil is off (fail-safe, recommended)
    NORMALLY_OPEN = "no"  # powered while the coil is on (a gateway reset cuts the charger)


class PowerCycleRefused(ValueError):
    """The requested off time is outside ``min_off_s .. max_off_s``."""


class PowerCycleInProgress(RuntimeError):
    """A power cycle is already running on this relay."""


@dataclass(frozen=True)
class PowerCycle:
    """One completed (or interrupted) power cycle.

    ``start_ns``/``end_ns`` are wall-clock times (``time.time_ns()`` scale) of the off and on
    switching; ``off_s`` is the off time measured on the monotonic clock between the two output
    writes. ``cycle_number`` is the relay's cycle count after this cycle. ``interrupted`` is True when
    the task was cancelled during the off time (power was restored early).
    """

    relay: str
    requested_off_s: float
    start_ns: int
    end_ns: int
    off_s: float
    cycle_number: int
    interrupted: bool = False


def check_off_time(off_s: float, min_off_s: float, max_off_s: float) -> None:
    """Pure check of a requested off time; raises :class:`PowerCycleRefused` with the reason."""
    if math.isnan(off_s):
        raise PowerCycleRefused("off time is not a number")
    if off_s < min_off_s:
        raise PowerCycleRefused(
            f"off time {off_s:g} s is below the minimum {min_off_s:g} s (min_off_s): the charger's "
            "supply may not discharge and the charger would not reboot"
        )
    if off_s > max_off_s:
        raise PowerCycleRefused(f"off time {off_s:g} s is above the maximum {max_off_s:g} s")


class ChargerRelay:
    """The relay on GPIO ``pin`` that powers one charger (or a group of chargers)."""

    def __init__(
        self,
        pin: int | str,
        *,
        pin_factory: Factory,
        name: str = "charger",
        active_high: bool = True,
        wiring: RelayWiring = RelayWiring.NORMALLY_CLOSED,
        min_off_s: float = 2.0,
        max_off_s: float = 600.0,
        initial_cycles: int = 0,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        wall_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        if pin_factory is None:
            raise ValueError(
                "pin_factory is required (drivers never use gpiozero's global factory)"
            )
        if not 0 < min_off_s <= max_off_s:
            raise ValueError("need 0 < min_off_s <= max_off_s")
        if initial_cycles < 0:
            raise ValueError("initial_cycles must be >= 0")
        self.name = name
        self.pin = pin
        self.wiring = wiring
        self.min_off_s = min_off_s
        self.max_off_s = max_off_s
        self._clock_ns = clock_ns
        self._wall_ns = wall_ns
        self._cycles = initial_cycles
        self._cycling = False
        self.last_cycle: PowerCycle | None = None
        # The device's "value" is the coil: True = energised. Start in the state that powers the charger.
        self._device = OutputDevice(
            pin,
            active_high=active_high,
            initial_value=self._coil_for(powered=True),
            pin_factory=pin_factory,
        )

    def _coil_for(self, *, powered: bool) -> bool:
        return (not powered) if self.wiring is RelayWiring.NORMALLY_CLOSED else powered

    @property
    def coil_energized(self) -> bool:
        return bool(self._device.value)

    @property
    def charger_powered(self) -> bool:
        return self._coil_for(powered=True) == self.coil_energized

    @property
    def cycles(self) -> int:
        """Power cycles performed over the relay's life (``initial_cycles`` + this process's)."""
        return self._cycles

    @property
    def cycling(self) -> bool:
        return self._cycling

    def _set_powered(self, powered: bool) -> None:
        if self._coil_for(powered=powered):
            self._device.on()
        else:
            self._device.off()

    async def power_cycle(self, off_s: float | None = None) -> PowerCycle:
        """Cut the charger for ``off_s`` seconds (default ``min_off_s``), then power it again.

        Raises :class:`PowerCycleRefused` for an off time outside the limits and
        :class:`PowerCycleInProgress` if a cycle is already running. If cancelled during the off
        time, power is restored at once, the (interrupted) cycle is recorded in ``last_cycle`` and
        ``CancelledError`` propagates.
        """
        off = self.min_off_s if off_s is None else float(off_s)
        check_off_time(off, self.min_off_s, self.max_off_s)
        if self._cycling:
            raise PowerCycleInProgress(f"relay {self.name}: a power cycle is already running")
        self._cycling = True
        interrupted = True
        start_wall = self._wall_ns()
        try:
            self._set_powered(False)
        except BaseException:
            self._cycling = False  # nothing switched: no cycle to undo or count
            raise
        t_off = self._clock_ns()
        _log.warning(
            "relay_power_off", extra={"kv": {"relay": self.name, "pin": self.pin, "off_s": off}}
        )
        try:
            await asyncio.sleep(off)
            interrupted = False
        finally:
            self._set_powered(True)
            t_on = self._clock_ns()
            end_wall = self._wall_ns()
            self._cycles += 1
            self._cycling = False
            self.last_cycle = PowerCycle(
                self.name,
                off,
                start_wall,
                end_wall,
                (t_on - t_off) / 1e9,
                self._cycles,
                interrupted,
            )
            _log.warning(
                "relay_power_on",
                extra={
                    "kv": {
                        "relay": self.name,
                        "pin": self.pin,
                        "off_s": round((t_on - t_off) / 1e9, 3),
                        "cycles": self._cycles,
                        "interrupted": interrupted,
                    }
                },
            )
        return self.last_cycle

    def close(self) -> None:
        """Leave the charger powered, then release the pin."""
        if not self._device.closed:
            self._set_powered(True)
            self._device.close()

    def __repr__(self) -> str:
        return (
            f"ChargerRelay(name={self.name!r}, pin={self.pin!r}, wiring={self.wiring.value}, "
            f"powered={self.charger_powered}, cycles={self._cycles})"
        )
