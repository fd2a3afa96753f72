"""Suite 6: a hung charger is power-cycled by the watchdog and reconnects; never during a transaction."""

from __future__ import annotations

import time
from typing import Any

from hil import spec as S
from hil.bench import Broker, Csms, until
from hil.report import Recorder


async def test_a_hung_charger_is_power_cycled_and_reconnects(
        gateway: Any, broker: Broker, csms: Csms, relay: S.Relay, charger: Any, hil_record: Recorder) -> None:
    async with charger(relay.cp_id) as ch:
        await ch.cp.heartbeat()
        since = time.time()
        ch.hang()  # connected, silent
        decided = await until(lambda: [e for e in broker.messages("event", since)
                                       if e.get("kind") == "watchdog_power_cycle" and e.get("phase") == "decided"],
                              relay.hang_after_s + 20, "the watchdog decided to power-cycle the hung charger")
        silent_for = decided[0]["time_ns"] / 1e9 - since
        assert silent_for >= relay.hang_after_s - 0.5, f"acted after {silent_for:.1f} s of silence"
        done = await until(lambda: [e for e in broker.messages("event", since)
                                    if e.get("kind") == "watchdog_power_cycle" and e.get("phase") == "done"],
                           relay.off_s + 20, "the power cycle finished")
        hil_record.relay(relay.off_s, done[0]["detail"]["input_off_s"], source="watchdog")
        # the charger boots again and the CSMS sees it
        await until(lambda: csms.seen(relay.cp_id, "BootNotification", since), 40, "BootNotification after the cycle")
        await ch.cp.heartbeat()
        # and the black box cut a snapshot for it
        manifests = await until(
            lambda: [m.json() for m in broker.observer.snapshot() if "/blackbox/" in m.topic and m.arrived >= since],
            30, "a black-box snapshot manifest for the power cycle")
        assert any("watchdog_power_cycle" in " ".join(m.get("trigger", {}).get("reasons", []))
                   for m in manifests), manifests


TAG = "04C0FFEE01"


async def _start_transaction(ch: Any) -> None:
    from appliance.demo.csms import now_iso

    if ch.spec.version == "ocpp1.6":
        from ocpp.v16 import call as c16

        await ch.cp.call(c16.Authorize(id_tag=TAG))
        await ch.cp.call(c16.StartTransaction(connector_id=1, id_tag=TAG, meter_start=0, timestamp=now_iso()))
        await ch.cp.status("Charging")
    else:
        from ocpp.v201 import call as c201

        await ch.cp.call(c201.TransactionEvent(
            event_type="Started", timestamp=now_iso(), trigger_reason="Authorized", seq_no=0,
            transaction_info={"transaction_id": "tx-hil-hang"}, id_token={"id_token": TAG, "type": "ISO14443"},
            evse={"id": 1, "connector_id": 1}))


async def _stop_transaction(ch: Any, tx_id: str) -> None:
    from appliance.demo.csms import now_iso

    if ch.spec.version == "ocpp1.6":
        from ocpp.v16 import call as c16

        await ch.cp.call(c16.StopTransaction(meter_stop=10, timestamp=now_iso(), transaction_id=int(tx_id),
                                             reason="Reboot"))
    else:
        from ocpp.v201 import call as c201

        await ch.cp.call(c201.TransactionEvent(
            event_type="Ended", timestamp=now_iso(), trigger_reason="ChargingStateChanged", seq_no=1,
            transaction_info={"transaction_id": tx_id, "stopped_reason": "Reboot"}))


async def test_no_power_cycle_during_a_transaction(
        gateway: Any, broker: Broker, relay: S.Relay, charger: Any) -> None:
    async with charger(relay.cp_id) as ch:
        since = time.time()
        await _start_transaction(ch)  # then hang in the middle of it
        states = await until(lambda: [s for s in broker.messages(f"ocpp/{relay.cp_id}/state", since)
                                      if s.get("transaction")], 10, "the transaction in the charger's state")
        hang_start = time.time()
        ch.hang()
        refused = await until(lambda: [e for e in broker.messages("event", hang_start)
                                       if e.get("kind") == "watchdog_refused"],
                              relay.hang_after_s + 20, "the watchdog refusing to cycle during the transaction")
        assert "transaction" in (refused[0].get("code", "") + refused[0].get("reason", "")).lower(), refused[0]
        # and it did not cycle for a while after the charger went silent
        await until(lambda: time.time() > hang_start + relay.hang_after_s + relay.off_s + 2, 60, "observation window")
        cycles = [e for e in broker.messages("event", hang_start) if e.get("kind") == "watchdog_power_cycle"]
        assert cycles == [], cycles
        assert ch.powered
        # the charger comes back (reboot) and ends the transaction, so no stale one outlives the test
        await ch.reboot()
        await _stop_transaction(ch, str(states[-1]["transaction"]["id"]))
