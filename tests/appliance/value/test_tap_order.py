"""Inspection runs after forwarding, yet the tap still sees every frame, in order, before the
link's close record."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import connect

from appliance.demo.csms import SimulatedCsms
from peers import proxy_url


class _ListTap:
    def __init__(self) -> None:
        self.records: list[tuple[Any, ...]] = []

    def put(self, time_ns: int, cp_id: str, direction: str, event: str, frame: str | None = None, **extra: object) -> None:
        self.records.append((cp_id, direction, event, frame))


async def test_tap_gets_every_frame_before_the_close_record(start_proxy) -> None:
    async def echo(connection, cp_id):
        async for msg in connection:
            await connection.send(f'[3,"{json.loads(msg)[1]}",{{}}]')

    tap = _ListTap()
    async with SimulatedCsms(raw_handler=echo) as csms:
        proxy = await start_proxy(csms.url, tap=tap)
        async with connect(proxy_url(proxy) + "/CP001", subprotocols=["ocpp1.6"]) as ws:
            for i in range(20):
                await ws.send(f'[2,"{i}","Heartbeat",{{}}]')
            for _ in range(20):
                await ws.recv()
        for _ in range(100):
            if any(r[2] == "charger_closed" for r in tap.records):
                break
            await asyncio.sleep(0.02)
    events = [r[2] for r in tap.records if r[0] == "CP001"]
    assert events.count("frame") == 40
    assert events.index("charger_closed") > max(i for i, e in enumerate(events) if e == "frame")
    ups = [json.loads(r[3])[1] for r in tap.records if r[2] == "frame" and r[1] == "up"]
    assert ups == [str(i) for i in range(20)]
