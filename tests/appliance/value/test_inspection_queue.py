"""InspectionQueue: forwarded frames are inspected a moment later, in order, none lost; a link's
close record on the tap follows its frames."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import connect

from appliance.demo.csms import SimulatedCsms
from appliance.value.link import InspectionQueue
from peers import proxy_url


class _Link:
    def __init__(self, name: str, seen: list[tuple[str, int]]) -> None:
        self.name, self.seen = name, seen

    def _inspect(self, n: int) -> None:
        self.seen.append((self.name, n))


async def test_items_run_in_order_after_the_delay() -> None:
    loop = asyncio.get_running_loop()
    seen: list[tuple[str, int]] = []
    a, b = _Link("a", seen), _Link("b", seen)
    q = InspectionQueue(delay_s=0.01, max_batch=100)
    for n in range(5):
        q.add(loop, (a if n % 2 else b, n))
    await asyncio.sleep(0)
    assert seen == []  # not on the forwarding path
    await asyncio.sleep(0.05)
    assert seen == [("b", 0), ("a", 1), ("b", 2), ("a", 3), ("b", 4)]


async def test_a_full_batch_runs_at_once_and_flush_runs_nothing_twice() -> None:
    loop = asyncio.get_running_loop()
    seen: list[tuple[str, int]] = []
    a = _Link("a", seen)
    q = InspectionQueue(delay_s=10, max_batch=3)
    for n in range(3):
        q.add(loop, (a, n))
    await asyncio.sleep(0)
    assert [n for _, n in seen] == [0, 1, 2]
    q.add(loop, (a, 3))
    q.flush()
    q.flush()
    await asyncio.sleep(0)
    assert [n for _, n in seen] == [0, 1, 2, 3]


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
