"""GPIO: the charger power relay and debounced digital inputs, on an injected gpiozero pin factory.

Drivers take ``pin_factory=`` (``gpiozero.pins.lgpio.LGPIOFactory()`` on the gateway,
``gpiozero.pins.mock.MockFactory()`` in tests and the demo) and never touch gpiozero's global
``Device.pin_factory``. See docs/drivers-i2c-gpio.md.
"""

from .debounce import DebouncedEdge, EdgeDebouncer
from .inputs import DigitalInput, InputEdge
from .relay import (
    ChargerRelay,
    PowerCycle,
    PowerCycleInProgress,
    PowerCycleRefused,
    RelayWiring,
    check_off_time,
)

__all__ = [
    "ChargerRelay",
    "DebouncedEdge",
    "DigitalInput",
    "EdgeDebouncer",
    "InputEdge",
    "PowerCycle",
    "PowerCycleInProgress",
    "PowerCycleRefused",
    "RelayWiring",
    "check_off_time",
]
