"""Simulated GPIO wiring on gpiozero's ``MockFactory``: relay -> charger -> "alive" input loop-back.

On the bench, the relay cuts the charger and the charger's "alive" signal (or a spare relay contact)
comes back to a GPIO input, so the gateway can see the off time it produced. ``loop_back`` builds
the same thing in software: the relay's output pin becomes a :class:`LoopbackPin` which, whenever
its state changes, drives the input pin high or low (through ``MockPin.drive_high``/``drive_low``,
so the input device's edge callbacks fire as they would on hardware). Optional ``delay_s`` (relay
operate time plus the charger's reaction) and ``bounces`` (contact bounce) make it realistic; with
either set, the input is driven from a helper thread, as gpiozero's real backends call back from
their own threads.

``chatter(pin, level, ...)`` drives an input through a bouncing transition, for debounce tests.

Call ``loop_back`` *before* constructing the relay and the input on those pins: ``MockFactory`` keeps
one pin object per GPIO, and the devices must get the loop-back pins. The input side is a
:class:`DrivenInputPin`, whose level (like a driven line's) does not follow the pull setting.

A separate process (``omgw health`` on the simulated HIL bench) is wired from the environment:
``OMGW_SIM_GPIO_LOOPBACK="GPIO17>GPIO27,invert,delay_ms=10,bounces=3"`` (output ``>`` input, the
options optional; :func:`parse_loopback`, :func:`loop_back_from_env`). The variable is refused
(:class:`SimulationRefused`) unless the pin factory is gpiozero's ``MockFactory``, so it can never
act on real hardware.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from gpiozero.exc import PinError, PinFixedPull, PinInvalidPull  # type: ignore[import-untyped]
from gpiozero.pins.mock import MockFactory, MockPin  # type: ignore[import-untyped]

from . import SimulationRefused

__all__ = [
    "LOOPBACK_ENV",
    "DrivenInputPin",
    "LoopbackPin",
    "LoopbackSpec",
    "SimulationRefused",
    "chatter",
    "loop_back",
    "loop_back_from_env",
    "parse_loopback",
]

#: The environment variable that wires a relay output back to an input in a separate process.
LOOPBACK_ENV: Final = "OMGW_SIM_GPIO_LOOPBACK"


def chatter(pin: MockPin, level: bool, *, bounces: int = 0, interval_s: float = 0.001) -> None:
    """Drive ``pin`` to ``level`` after ``bounces`` extra back-and-forth changes ``interval_s`` apart.

    Blocking (it sleeps between changes): call it from a thread, or with ``bounces=0``.
    """
    for _ in range(bounces):
        _drive(pin, level)
        time.sleep(interval_s)
        _drive(pin, not level)
        time.sleep(interval_s)
    _drive(pin, level)


def _drive(pin: MockPin, level: bool) -> None:
    if level:
        pin.drive_high()
    else:
        pin.drive_low()


class DrivenInputPin(MockPin):  # type: ignore[misc]
    """An input pin driven by a push-pull source: its level ignores the pull resistor setting.

    A plain ``MockPin`` jumps to its pull level whenever a device sets the pull (as an unconnected
    pin would); a line driven by the charger's opto-coupler or a relay contact does not.
    """

    def _set_pull(self, value: str) -> None:
        if self._function != "input":
            raise PinFixedPull(f"cannot set pull on non-input pin {self!r}")
        if value not in ("floating", "up", "down"):
            raise PinInvalidPull("pull must be floating, up, or down")
        self._pull = value


class LoopbackPin(MockPin):  # type: ignore[misc]
    """A mock output pin whose every state change is mirrored onto ``target`` (an input pin)."""

    def __init__(
        self,
        factory: MockFactory,
        info: Any,
        target: MockPin | None = None,
        invert: bool = False,
        delay_s: float = 0.0,
        bounces: int = 0,
        bounce_interval_s: float = 0.001,
    ) -> None:
        super().__init__(factory, info)
        self.target = target
        self.invert = invert
        self.delay_s = delay_s
        self.bounces = bounces
        self.bounce_interval_s = bounce_interval_s
        self._threads: list[threading.Thread] = []

    def _change_state(self, value: bool) -> bool:
        changed: bool = super()._change_state(value)
        if changed and self.target is not None and self._function == "output":
            level = bool(value) != self.invert
            if self.delay_s or self.bounces:
                t = threading.Thread(target=self._propagate, args=(level,), daemon=True)
                self._threads = [th for th in self._threads if th.is_alive()] + [t]
                t.start()
            else:
                _drive(self.target, level)
        return changed

    def _propagate(self, level: bool) -> None:
        if self.delay_s:
            time.sleep(self.delay_s)
        assert self.target is not None
        chatter(self.target, level, bounces=self.bounces, interval_s=self.bounce_interval_s)

    def join(self, timeout: float = 1.0) -> None:
        """Wait for pending delayed propagations (tests call this before tearing down)."""
        for t in self._threads:
            t.join(timeout)


def loop_back(
    factory: MockFactory,
    output_pin: int | str,
    input_pin: int | str,
    *,
    invert: bool = False,
    delay_s: float = 0.0,
    bounces: int = 0,
    bounce_interval_s: float = 0.001,
) -> LoopbackPin:
    """Wire ``output_pin`` to ``input_pin`` on ``factory`` (``invert``: input = not output).

    For a normally-closed charger relay with an active-high coil, the charger's "alive" line is the
    inverse of the coil pin: ``loop_back(factory, 17, 27, invert=True)``.
    The input pin starts at the level the output pin currently implies.
    """
    target = factory.pin(input_pin, pin_class=DrivenInputPin)
    if not isinstance(target, DrivenInputPin):
        raise TypeError(
            f"pin {input_pin} already exists as {type(target).__name__}; call loop_back first"
        )
    existing = factory.pin(
        output_pin,
        pin_class=LoopbackPin,
        target=target,
        invert=invert,
        delay_s=delay_s,
        bounces=bounces,
        bounce_interval_s=bounce_interval_s,
    )
    if not isinstance(existing, LoopbackPin):
        raise TypeError(
            f"pin {output_pin} already exists as {type(existing).__name__}; call loop_back first"
        )
    existing.target, existing.invert = target, invert
    existing.delay_s, existing.bounces, existing.bounce_interval_s = (
        delay_s,
        bounces,
        bounce_interval_s,
    )
    _drive(target, bool(existing.state) != invert)
    return existing


# --------------------------------------------------------------------------------------------------
# The loop-back of a separate process, from the environment


@dataclass(frozen=True)
class LoopbackSpec:
    """``output_pin`` wired to ``input_pin`` (see :func:`loop_back` for the options)."""

    output_pin: str
    input_pin: str
    invert: bool = False
    delay_s: float = 0.0
    bounces: int = 0


def parse_loopback(text: str) -> LoopbackSpec:
    """``"GPIO17>GPIO27[,invert][,delay_ms=N][,bounces=N]"``; ``ValueError`` says what is wrong."""
    head, *options = [part.strip() for part in text.split(",")]
    out, sep, inp = head.partition(">")
    out, inp = out.strip(), inp.strip()
    if not sep or not out or not inp:
        raise ValueError(f'expected "OUTPUT>INPUT" first (e.g. "GPIO17>GPIO27"), got "{head}"')
    invert, delay_s, bounces = False, 0.0, 0
    for opt in options:
        key, eq, value = opt.partition("=")
        try:
            if opt == "invert":
                invert = True
            elif key == "delay_ms" and eq:
                delay_s = float(value) / 1000.0
                if not (math.isfinite(delay_s) and 0 <= delay_s <= 10):
                    raise ValueError
            elif key == "bounces" and eq:
                bounces = int(value)
                if not 0 <= bounces <= 100:
                    raise ValueError
            else:
                raise KeyError(opt)
        except KeyError:
            known = "invert, delay_ms=N, bounces=N"
            raise ValueError(f'unknown option "{opt}" (known: {known})') from None
        except ValueError:
            ranges = "delay_ms: 0..10000, bounces: 0..100"
            raise ValueError(f'bad value in "{opt}" ({ranges})') from None
    return LoopbackSpec(out, inp, invert, delay_s, bounces)


def loop_back_from_env(factory: object, environ: Mapping[str, str]) -> LoopbackPin | None:
    """Apply ``OMGW_SIM_GPIO_LOOPBACK`` from ``environ`` to ``factory``; None when it is not set.

    Raises :class:`SimulationRefused` when ``factory`` is not a ``MockFactory`` (never simulate
    wiring on real pins) or the value cannot be used. Call it before the devices on those pins
    exist.
    """
    text = environ.get(LOOPBACK_ENV)
    if text is None:
        return None
    if not isinstance(factory, MockFactory):
        raise SimulationRefused(
            f"{LOOPBACK_ENV} is set but the GPIO pin factory is {type(factory).__name__}, not "
            "gpiozero's MockFactory: refusing to simulate wiring on real hardware "
            "(unset it, or run with GPIOZERO_PIN_FACTORY=mock)"
        )
    try:
        spec = parse_loopback(text)
        return loop_back(factory, spec.output_pin, spec.input_pin, invert=spec.invert,
                         delay_s=spec.delay_s, bounces=spec.bounces)  # fmt: skip
    except (ValueError, TypeError, PinError) as exc:
        raise SimulationRefused(f'{LOOPBACK_ENV}="{text}": {exc}') from exc
