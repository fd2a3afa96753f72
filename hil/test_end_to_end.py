"""Suite 4: charger -> gateway -> CSMS transaction completes; its telemetry and state reach the
broker within 2 s; the black box holds the frames, redacted."""

from __future__ import annotations

import secrets
import time
from typing import Any

from hil.bench import Bench, Broker, Csms, Gateway, until
from hil.report import Recorder

WITHIN_S = 2.0


def _metered_charger(bench: Bench) -> tuple[str, str]:
    """A charger a meter feeds, preferring one that is not behind the watchdog's relay."""
    relay_cp = bench.spec.relay.cp_id if bench.spec.relay else None
    pairs = [(m.feeds, m.name) for m in bench.spec.meters if m.feeds]
    assert pairs, "the bench has no meter that feeds a charger"
    pairs.sort(key=lambda p: p[0] == relay_cp)
    return pairs[0]  # type: ignore[return-value]


def _arrivals(broker: Broker, topic: str, since: float, pred: Any) -> list[float]:
    return [m.arrived for m in broker.observer.snapshot(broker.topic(topic)) if m.arrived >= since and pred(m.json())]


async def test_a_transaction_end_to_end(bench: Bench, gateway: Gateway, csms: Csms, broker: Broker, charger: Any,
                                        hil_record: Recorder) -> None:
    cp_id, meter = _metered_charger(bench)
    tag = "04" + secrets.token_hex(4).upper()
    async with charger(cp_id) as ch:
        since = time.time()
        v16 = ch.spec.version == "ocpp1.6"
        await ch.cp.session(tag, wh_start=1000, samples=2, interval_s=1.0)

        # the CSMS saw the whole transaction, in order
        if v16:
            t_start = csms.seen(cp_id, "StartTransaction", since)
            t_stop = csms.seen(cp_id, "StopTransaction", since)
            assert csms.seen(cp_id, "Authorize", since, lambda f: f.get("id_tag") == tag)
        else:
            t_start = csms.seen(cp_id, "TransactionEvent", since, lambda f: f.get("event_type") == "Started")
            t_stop = csms.seen(cp_id, "TransactionEvent", since, lambda f: f.get("event_type") == "Ended")
        assert t_start is not None and t_stop is not None and t_start < t_stop
        assert csms.seen(cp_id, "MeterValues", t_start) or not v16

        # its state and telemetry reached the broker within 2 s
        state_at = await until(lambda: _arrivals(broker, f"ocpp/{cp_id}/state", t_start - 0.5,
                                                 lambda s: bool(s.get("transaction"))), 10,
                               "the charger's state with the transaction")
        hil_record.note(f"transaction state on the broker {state_at[0] - t_start:+.3f} s after the CSMS saw it start")
        assert state_at[0] - t_start <= WITHIN_S
        tele_at = _arrivals(broker, "telemetry", t_start, lambda p: any(
            r["name"] == meter and r.get("values") for r in p.get("meters", [])))
        assert tele_at and tele_at[0] - t_start <= WITHIN_S, "no telemetry for the charger's meter within 2 s"
        ended_at = await until(lambda: _arrivals(broker, "event", t_stop - 0.5,
                                                 lambda e: e.get("kind") == "transaction_ended"
                                                 and e.get("cp_id") == cp_id), 10, "transaction_ended event")
        assert ended_at[0] - t_stop <= WITHIN_S

    # the black box holds the frames of the transaction, with the token pseudonymised
    def frames() -> list[dict[str, Any]]:
        recs = gateway.blackbox(since=since - 1, kinds="ocpp")
        return [r["data"] for r in recs if r["data"].get("cp") == cp_id and r["data"].get("ev") == "frame"]

    wanted = ('"Authorize"', '"StartTransaction"', '"StopTransaction"') if v16 else (
        '"Authorize"', '"Started"', '"Ended"')

    def complete() -> str | None:
        text = "\n".join(f["f"] for f in frames())
        return text if all(w in text for w in wanted) else None

    text = await until(complete, 10, f"the transaction's frames {wanted} in the black box")
    assert tag not in text and tag.lower() not in text, "the idTag left the value channel in clear"
    assert "hmac:" in text
