"""The technician page's auth core (appliance/health/web/auth.py): pure, no clock, no sockets."""

from __future__ import annotations

from appliance.health.web.auth import LoginThrottle, SessionStore, csrf_problem, origin_problem
from appliance.health.web.data import chart_point, chargers_doc, valid_snapshot_name, TelemetryHistory


def test_five_failures_lock_the_user_for_the_lockout_time() -> None:
    t = LoginThrottle(max_failures=5, lockout_s=60)
    for i in range(4):
        assert t.failed("tech", "10.0.0.1", 100.0 + i) == 0
    assert t.failed("tech", "10.0.0.2", 105.0) == 60  # the fifth failure for the name, from another address
    assert t.retry_after("tech", "10.0.0.9", 110.0) == 55
    assert t.retry_after("other", "10.0.0.9", 110.0) == 0
    assert t.retry_after("tech", "10.0.0.9", 165.0) == 0  # lock expired


def test_five_failures_lock_the_address_for_every_user_name() -> None:
    t = LoginThrottle(max_failures=5, lockout_s=60)
    for i in range(5):
        t.failed(f"name{i}", "10.0.0.1", 100.0)
    assert t.retry_after("tech", "10.0.0.1", 101.0) == 59
    assert t.retry_after("tech", "10.0.0.2", 101.0) == 0


def test_success_clears_the_counters_and_an_expired_lock_starts_a_fresh_count() -> None:
    t = LoginThrottle(max_failures=3, lockout_s=10)
    t.failed("a", "x", 0.0)
    t.failed("a", "x", 1.0)
    t.succeeded("a", "x")
    assert t.failed("a", "x", 2.0) == 0
    for i in range(2):
        t.failed("a", "x", 3.0 + i)
    assert t.retry_after("a", "x", 5.0) > 0
    assert t.failed("a", "x", 20.0) == 0  # after the lock: one failure, not locked again at once


def test_sessions_expire_when_idle_and_tokens_are_not_stored() -> None:
    s = SessionStore(idle_s=100)
    token, session = s.create("tech", "password", 0.0)
    assert s.get(token, 50.0) == session
    assert s.get(token, 140.0) == session  # used at 50: idle for 90 s only
    assert s.get(token, 241.0) is None
    assert s.get("not-a-token", 0.0) is None and s.get(None, 0.0) is None
    assert token.encode() not in repr(s._sessions).encode()


def test_session_store_is_bounded() -> None:
    s = SessionStore(idle_s=100, max_sessions=3)
    tokens = [s.create(f"u{i}", "password", float(i))[0] for i in range(5)]
    assert len(s) == 3
    assert s.get(tokens[0], 5.0) is None and s.get(tokens[4], 5.0) is not None


def test_csrf_needs_the_token_and_the_same_origin() -> None:
    _, session = SessionStore().create("tech", "password", 0.0)
    own = "https://gw.local:8443"
    assert csrf_problem(session, session.csrf, own, own) is None
    assert csrf_problem(session, session.csrf, None, own) is None  # non-browser client with the token
    assert "token" in (csrf_problem(session, None, own, own) or "")
    assert "token" in (csrf_problem(session, "x" * 43, own, own) or "")
    assert "cross-origin" in (csrf_problem(session, session.csrf, "https://evil.example", own) or "")
    assert "Sec-Fetch-Site" in (csrf_problem(session, session.csrf, None, own, "cross-site") or "")
    assert origin_problem("https://evil.example", own) is not None and origin_problem(own, own) is None


def test_snapshot_names_refuse_traversal_and_odd_characters() -> None:
    assert valid_snapshot_name("20261125T171051Z-watchdog_power_cycle-3f2a")
    for bad in ("../etc/passwd", "..", ".hidden", "a/b", "a\\b", "", "a..b", "x" * 201, "a\x00b", "%2e%2e"):
        assert not valid_snapshot_name(bad), bad


def _payload(ts_ms: int, volts: float | None) -> dict:
    q = "ok" if volts is not None else "timeout"
    return {"ts_ns": ts_ms * 1_000_000,
            "meters": [{"name": "m1", "values": {"voltage_L1": {"v": volts, "unit": "V", "q": q},
                                                 "current_L2": {"v": 7.5, "unit": "A", "q": "ok"}}},
                       {"name": "m2", "values": None, "missing": "timeout"}],
            "sensors": [{"name": "cab", "q": "ok", "temperature_c": 21.5, "humidity_rh": 40.0, "dew_point_c": 7.4},
                        {"name": "amb", "q": "crc", "temperature_c": None, "humidity_rh": None}]}


def test_chart_points_keep_ok_values_only() -> None:
    p = chart_point(_payload(1000, 230.1))
    assert p["t"] == 1000
    assert p["m"]["m1"] == {"V": [230.1, None, None], "I": [None, 7.5, None], "P": [None, None, None]}
    assert p["m"]["m2"]["V"] == [None, None, None]
    assert p["s"] == {"cab": {"t": 21.5, "rh": 40.0, "dp": 7.4}, "amb": {"t": None, "rh": None, "dp": None}}
    assert chart_point(_payload(2000, None))["m"]["m1"]["V"][0] is None


def test_history_is_bounded_and_cut_by_minutes() -> None:
    h = TelemetryHistory(minutes=1, interval_s=1.0)
    for i in range(200):
        h.add(_payload(i * 1000, 230.0))
    assert len(h) == 65
    assert [p["t"] for p in h.since(0.5, 199_000)][0] == 169_000
    assert len(h.since(99, 199_000)) == 61  # clamped to the history's own minutes


def test_chargers_doc_joins_the_tap_view_and_the_value_counters() -> None:
    states = {"CP1": {"connected": True, "subprotocol": "ocpp1.6", "last_frame_ns": 9 * 10**9, "connectors": {}}}
    value = {"uptime_s": 5, "connected": 2, "charge_points": [
        {"cp_id": "CP1", "connected": True, "frames_up": 10, "frames_down": 9},
        {"cp_id": "CP2", "connected": True, "subprotocol": "ocpp2.0.1", "frames_up": 1, "frames_down": 1}]}
    doc = chargers_doc(states, value, 10 * 10**9)
    cp1, cp2 = doc["chargers"]
    assert cp1["last_frame_age_s"] == 1.0 and cp1["value"]["frames_up"] == 10
    assert cp2["cp_id"] == "CP2" and cp2["connected"] and cp2["subprotocol"] == "ocpp2.0.1"
    assert chargers_doc(states, None, 0)["value_channel"] is None
