"""Simulated charge points on the ``ocpp`` library: realistic sessions for the demo and the tests."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from ocpp.v16 import ChargePoint as _Cp16
from ocpp.v16 import call as c16
from ocpp.v201 import ChargePoint as _Cp201
from ocpp.v201 import call as c201
from websockets.asyncio.client import ClientConnection, connect

from .csms import now_iso


class Charger16(_Cp16):
    """OCPP 1.6J charge point: one connector, Authorize -> Start -> MeterValues -> Stop."""

    version = "ocpp1.6"

    async def boot(self) -> Any:
        return await self.call(c16.BootNotification(charge_point_vendor="omgw-sim", charge_point_model="AC22-16",
                                                    firmware_version="1.6.3"))

    async def heartbeat(self) -> Any:
        return await self.call(c16.Heartbeat())

    async def status(self, status: str, connector_id: int = 1, error_code: str = "NoError") -> Any:
        return await self.call(c16.StatusNotification(connector_id=connector_id, error_code=error_code, status=status,
                                                      timestamp=now_iso()))

    async def session(self, id_tag: str, wh_start: int = 0, samples: int = 3, interval_s: float = 0.0,
                      power_w: float = 11000) -> int:
        await self.call(c16.Authorize(id_tag=id_tag))
        await self.status("Preparing")
        start = await self.call(c16.StartTransaction(connector_id=1, id_tag=id_tag, meter_start=wh_start,
                                                     timestamp=now_iso()))
        tx = start.transaction_id
        await self.status("Charging")
        wh = wh_start
        for _ in range(samples):
            await asyncio.sleep(interval_s)
            wh += int(power_w * max(interval_s, 1.0) / 3600)
            await self.call(c16.MeterValues(connector_id=1, transaction_id=tx, meter_value=[{
                "timestamp": now_iso(),
                "sampledValue": [
                    {"value": str(wh), "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
                    {"value": f"{power_w * random.uniform(0.97, 1.0):.0f}", "measurand": "Power.Active.Import",
                     "unit": "W"},
                ],
            }]))
        await self.call(c16.StopTransaction(meter_stop=wh, timestamp=now_iso(), transaction_id=tx, id_tag=id_tag,
                                            reason="Local"))
        await self.status("Finishing")
        await self.status("Available")
        return wh


class Charger201(_Cp201):
    """OCPP 2.0.1 charging station: one EVSE, Authorize -> TransactionEvent Started/Updated/Ended."""

    version = "ocpp2.0.1"

    async def boot(self) -> Any:
        return await self.call(c201.BootNotification(
            charging_station={"model": "DC50-201", "vendor_name": "omgw-sim", "firmware_version": "2.0.1-4"},
            reason="PowerUp"))

    async def heartbeat(self) -> Any:
        return await self.call(c201.Heartbeat())

    async def status(self, status: str, connector_id: int = 1) -> Any:
        return await self.call(c201.StatusNotification(timestamp=now_iso(), connector_status=status, evse_id=1,
                                                       connector_id=connector_id))

    async def session(self, id_tag: str, wh_start: int = 0, samples: int = 3, interval_s: float = 0.0,
                      power_w: float = 50000) -> int:
        token = {"id_token": id_tag, "type": "ISO14443"}
        await self.call(c201.Authorize(id_token=token))
        tx_id = f"tx-{random.randrange(1 << 32):08x}"
        seq = 0

        def meter(wh: int) -> list[dict[str, Any]]:
            return [{"timestamp": now_iso(), "sampled_value": [
                {"value": wh, "measurand": "Energy.Active.Import.Register", "unit_of_measure": {"unit": "Wh"}}]}]

        await self.status("Occupied")
        await self.call(c201.TransactionEvent(event_type="Started", timestamp=now_iso(), trigger_reason="Authorized",
                                              seq_no=seq, transaction_info={"transaction_id": tx_id},
                                              id_token=token, evse={"id": 1, "connector_id": 1},
                                              meter_value=meter(wh_start)))
        wh = wh_start
        for _ in range(samples):
            await asyncio.sleep(interval_s)
            seq += 1
            wh += int(power_w * max(interval_s, 1.0) / 3600)
            await self.call(c201.TransactionEvent(event_type="Updated", timestamp=now_iso(),
                                                  trigger_reason="MeterValuePeriodic", seq_no=seq,
                                                  transaction_info={"transaction_id": tx_id,
                                                                    "charging_state": "Charging"},
                                                  meter_value=meter(wh)))
        seq += 1
        await self.call(c201.TransactionEvent(event_type="Ended", timestamp=now_iso(), trigger_reason="StopAuthorized",
                                              seq_no=seq, transaction_info={"transaction_id": tx_id,
                                                                            "stopped_reason": "Local"},
                                              id_token=token, meter_value=meter(wh)))
        await self.status("Available")
        return wh


async def connect_charger(url: str, cp_id: str, version: str = "ocpp1.6", **kwargs: Any
                          ) -> tuple[Charger16 | Charger201, ClientConnection, asyncio.Task[None]]:
    """Open a charger's WebSocket to ``url/cp_id`` and start its receive loop."""
    ws = await connect(f"{url.rstrip('/')}/{cp_id}", subprotocols=[version], compression=None, **kwargs)
    cls = Charger201 if version == "ocpp2.0.1" else Charger16
    cp = cls(cp_id, ws, response_timeout=10)
    task = asyncio.create_task(cp.start())
    # The receive loop ends with ConnectionClosed when the leg closes: expected, not an error.
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    return cp, ws, task
