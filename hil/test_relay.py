"""Suite 3: a relay power cycle's off time, measured through the loop-back input, is within
+-tolerance (50 ms) of ``off_s``; the charger behind it loses power and boots again."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from hil import spec as S
from hil.bench import Broker, until
from hil.report import Recorder

CYCLES = 3


async def test_relay_off_time_through_the_loopback_input(
        gateway: Any, broker: Broker, relay: S.Relay, charger: Any, hil_record: Recorder) -> None:
    async with charger(relay.cp_id) as ch:
        for i in range(CYCLES):
            boots = ch.boots
            since = time.time()
            reply = await asyncio.to_thread(broker.command, "relay_cycle", {"cp": relay.cp_id, "force": True},
                                            relay.off_s + 30)
            assert reply["ok"], reply
            result = reply["result"]
            assert result["kind"] == "watchdog_power_cycle" and result["phase"] == "done", result
            measured = result["detail"]["input_off_s"]
            hil_record.relay(relay.off_s, measured, source="input")
            assert abs(measured - relay.off_s) <= relay.tolerance_s, (
                f"cycle {i + 1}: off {measured:.3f} s through the input, want {relay.off_s} +- {relay.tolerance_s} s")
            # the relay's own timing agrees with what the input saw
            assert abs(result["off_s"] - measured) <= relay.tolerance_s, result
            # the same result went to the O&M centre and into the black box
            broker.wait("event", lambda e: e.get("kind") == "watchdog_power_cycle" and e.get("phase") == "done",
                        timeout=5, since=since)
            # the charger lost power (its connection dropped) and booted again
            await until(lambda: ch.boots > boots and ch.connected.is_set(), 30, "charger booted after the cycle")
            assert [p for _, p in ch.power_log[-2:]] == [False, True]
