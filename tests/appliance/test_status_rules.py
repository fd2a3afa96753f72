"""The health channel's up/degraded rules (appliance/health/status.py): pure, no event loop."""

from __future__ import annotations

from appliance.health.status import StatusRules, StatusTracker, assess, meter_quality


def healthy_doc(**over: dict) -> dict:
    doc = {
        "uptime_s": 100.0,
        "uplink": {"connected": True, "down_for_s": None},
        "blackbox": {"write_failing": False, "errors": 0},
        "devices": {"meter:feed1": {"kind": "meter", "quality": "ok", "reason": None, "missing_cycles": 0}},
        "sampler": {"interval_s": 1.0, "last_sample_age_s": 0.4},
        "tap": {"silent_for_s": 100.0, "stats_interval_s": 10.0, "chargers_connected": 0, "losses_in_window": 0},
    }
    for k, v in over.items():
        doc[k] = {**doc[k], **v}
    return doc


def test_healthy_gateway_without_chargers_is_up_although_the_tap_is_silent() -> None:
    assert assess(healthy_doc()) == ("up", [])


def test_uplink_down_degrades_only_after_60_s() -> None:
    assert assess(healthy_doc(uplink={"connected": False, "down_for_s": 59.0}))[0] == "up"
    state, reasons = assess(healthy_doc(uplink={"connected": False, "down_for_s": 61.0}))
    assert state == "degraded" and reasons[0].startswith("uplink_down:")


def test_blackbox_write_failing_degrades() -> None:
    state, reasons = assess(healthy_doc(blackbox={"write_failing": True, "errors": 3}))
    assert state == "degraded" and reasons == ["blackbox_write_failing: 3 error(s)"]


def test_device_missing_for_n_cycles_degrades() -> None:
    dev = {"kind": "sensor", "quality": "missing", "reason": "no ack", "missing_cycles": 4}
    assert assess(healthy_doc(devices={"sensor:cab": dev}))[0] == "up"
    state, reasons = assess(healthy_doc(devices={"sensor:cab": {**dev, "missing_cycles": 5}}))
    assert state == "degraded" and reasons == ["device_missing: sensor:cab missing for 5 cycles (no ack)"]


def test_tap_silence_degrades_only_while_a_charger_is_connected() -> None:
    assert assess(healthy_doc(tap={"silent_for_s": 31.0, "chargers_connected": 0}))[0] == "up"
    assert assess(healthy_doc(tap={"silent_for_s": 29.0, "chargers_connected": 1}))[0] == "up"
    state, reasons = assess(healthy_doc(tap={"silent_for_s": 31.0, "chargers_connected": 1}))
    assert state == "degraded" and reasons[0].startswith("tap_silent:")


def test_tap_loss_in_window_and_sampler_stall_degrade() -> None:
    assert assess(healthy_doc(tap={"losses_in_window": 1}))[1][0].startswith("tap_loss:")
    assert assess(healthy_doc(sampler={"last_sample_age_s": 6.0}))[1][0].startswith("sampler_stalled:")
    just_started = {**healthy_doc(), "uptime_s": 2.0, "sampler": {"interval_s": 1.0, "last_sample_age_s": None}}
    assert assess(just_started)[0] == "up"


def test_tracker_counts_consecutive_missing_cycles_and_tap_loss_window() -> None:
    t = StatusTracker(started_s=0.0)
    missing = {"name": "feed1", "values": None, "missing": "timeout"}
    ok = {"name": "feed1", "values": {"voltage_L1": {"v": 230.0, "q": "ok"}}}
    for i in range(3):
        t.note_sample([missing], [{"name": "cab", "q": "ok"}], float(i))
    assert t.devices["meter:feed1"].missing_cycles == 3 and t.devices["meter:feed1"].reason == "timeout"
    t.note_sample([ok], [{"name": "cab", "q": "crc_error", "reason": "crc"}], 3.0)
    assert t.devices["meter:feed1"].missing_cycles == 0 and t.devices["sensor:cab"].missing_cycles == 1
    assert t.uplink_down_since_s == 0.0
    t.note_uplink(True, 2.0)
    t.note_uplink(False, 5.0)
    assert t.uplink_down_since_s == 5.0
    t.note_tap({"received": 1, "lost": 0}, 10.0)
    t.note_tap({"received": 2, "lost": 2}, 11.0)
    assert t.tap_last_datagram_s == 11.0
    assert t.tap_losses_within(StatusRules().tap_loss_window_s, 12.0) == 1
    assert t.tap_losses_within(StatusRules().tap_loss_window_s, 400.0) == 0


def test_meter_quality_partial_and_missing() -> None:
    vals = {"a": {"q": "ok"}, "b": {"q": "out_of_range", "reason": "x"}}
    assert meter_quality({"values": vals}) == ("partial", "1 value(s) not ok")
    assert meter_quality({"values": {"b": vals["b"]}}) == ("missing", "x")
