"""``omgw demo``: the gateway on a simulated bench, on one machine, with nothing to configure.

See :mod:`appliance.demo.bench` (the peers and the two channel processes),
:mod:`appliance.demo.scenario` (chargers, the scripted fault) and :mod:`appliance.demo.view` (the
live view built from the gateway's MQTT topics).
"""

from __future__ import annotations

import asyncio


def run_demo(duration: float | None = None, chargers: int = 3) -> int:
    from .. import logfmt
    from .scenario import run_scenario

    logfmt.setup("warning")
    if chargers < 1:
        print("omgw demo: --chargers must be at least 1")
        return 2
    return asyncio.run(run_scenario(duration, chargers))
