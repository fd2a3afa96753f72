"""The relay watchdog: power-cycle a hung charger through the relay, carefully and audibly.

- :mod:`appliance.watchdog.policy`: :class:`PowerCyclePolicy`, the pure state machine (time passed
  in, no I/O): hang/offline detection, transaction guard, rate limit, backoff, grace, quiet refusals.
- :mod:`appliance.watchdog.run`: :class:`RelayWatchdog`, the asyncio shell that observes, asks the
  policy, drives :class:`drivers.gpio.ChargerRelay` and reports every decision as an event dict.

See docs/watchdog.md.
"""

from .policy import (
    HOUR_NS,
    Action,
    ChargerObservation,
    Decision,
    Notice,
    PowerCyclePolicy,
    WatchdogSettings,
    WatchdogState,
)
from .run import EVENT_KINDS, RelayWatchdog

__all__ = [
    "EVENT_KINDS",
    "HOUR_NS",
    "Action",
    "ChargerObservation",
    "Decision",
    "Notice",
    "PowerCyclePolicy",
    "RelayWatchdog",
    "WatchdogSettings",
    "WatchdogState",
]
