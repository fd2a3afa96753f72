"""FrameInspector: latency matching, bounded pending table, and off/log/enforce behaviour."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.value.inspect import MAX_STORED_ACTION, Direction, FrameInspector, Mode, Observation
from appliance.ocppj import ErrorKind, MessageType, parse_frame

UP, DOWN = Direction.UP, Direction.DOWN
TS = "2026-11-25T17:10:51.123Z"

BOOT_16 = '[2,"b1","BootNotification",{"chargePointVendor":"VendorX","chargePointModel":"M1"}]'
BOOT_16_CONF = f'[3,"b1",{{"status":"Accepted","currentTime":"{TS}","interval":300}}]'
BOOT_16_MISSING_MODEL = '[2,"8","BootNotification",{"chargePointVendor":"V"}]'


def call(uid: str, action: str = "Heartbeat", payload: str = "{}") -> str:
    return f'[2,"{uid}","{action}",{payload}]'


def result(uid: str, payload: str = f'{{"currentTime":"{TS}"}}') -> str:
    return f'[3,"{uid}",{payload}]'


# --- latency and matching -----------------------------------------------------------------------


def test_csms_response_time_is_measured_on_the_result_travelling_down() -> None:
    insp = FrameInspector("1.6", "log")
    sent = insp.observe(UP, call("19223201"), now_ns=1_000_000)
    assert (sent.action, sent.latency_ns, sent.answered_direction) == ("Heartbeat", None, None)
    assert insp.pending_count() == 1
    got = insp.observe(DOWN, result("19223201"), now_ns=1_750_000)
    assert got.error is None and got.forward
    assert (got.action, got.latency_ns, got.answered_direction) == ("Heartbeat", 750_000, UP)
    assert insp.pending_count() == 0


def test_charger_response_time_is_measured_for_csms_calls_and_callerrors_match_too() -> None:
    insp = FrameInspector("1.6", "log")
    insp.observe(DOWN, call("r1", "RemoteStartTransaction", '{"idTag":"T1","connectorId":1}'), now_ns=10)
    insp.observe(DOWN, call("r2", "Reset", '{"type":"Soft"}'), now_ns=20)
    got = insp.observe(UP, '[4,"r1","NotSupported","no",{}]', now_ns=510)
    assert (got.action, got.latency_ns, got.answered_direction) == ("RemoteStartTransaction", 500, DOWN)
    assert got.frame is not None and got.frame.type is MessageType.CALLERROR
    got = insp.observe(UP, '[3,"r2",{"status":"Accepted"}]', now_ns=1020)
    assert (got.action, got.latency_ns, got.answered_direction) == ("Reset", 1000, DOWN)


def test_result_in_the_same_direction_as_the_call_does_not_match() -> None:
    insp = FrameInspector("1.6", "log")
    insp.observe(UP, call("1"), 0)
    got = insp.observe(UP, result("1"), 5)
    assert (got.action, got.latency_ns, got.answered_direction) == (None, None, None)
    assert insp.unmatched == 1 and insp.pending_count(UP) == 1


def test_unmatched_result_is_forwarded_without_latency_or_validation() -> None:
    insp = FrameInspector("1.6", "enforce")
    got = insp.observe(DOWN, result("nobody", '{"nonsense":true}'), 5)
    assert got == Observation(got.frame, None, None, None, None, True, None)
    assert insp.unmatched == 1


def test_same_unique_id_in_both_directions_is_kept_apart() -> None:
    insp = FrameInspector("1.6", "log")
    insp.observe(UP, call("1"), 100)
    insp.observe(DOWN, call("1", "ClearCache"), 200)
    assert insp.pending_count(UP) == 1 and insp.pending_count(DOWN) == 1
    assert insp.observe(UP, '[3,"1",{"status":"Accepted"}]', 250).action == "ClearCache"
    assert insp.observe(DOWN, result("1"), 400).latency_ns == 300


# --- bounded pending table ----------------------------------------------------------------------


def test_pending_table_evicts_the_oldest_call_when_full() -> None:
    insp = FrameInspector("1.6", "log", pending_max=3)
    for i in range(5):
        insp.observe(UP, call(f"c{i}"), now_ns=i)
    assert insp.pending_count(UP) == 3 and insp.evicted == 2
    assert insp.observe(DOWN, result("c0"), 10).latency_ns is None  # evicted
    assert insp.observe(DOWN, result("c1"), 10).latency_ns is None  # evicted
    assert insp.observe(DOWN, result("c2"), 10).latency_ns == 8
    assert insp.observe(DOWN, result("c4"), 10).latency_ns == 6
    assert insp.unmatched == 2


def test_each_direction_has_its_own_bound() -> None:
    insp = FrameInspector("1.6", "off", pending_max=2)
    for i in range(4):
        insp.observe(UP, call(f"u{i}"), i)
        insp.observe(DOWN, call(f"d{i}", "ClearCache"), i)
    assert insp.pending_count(UP) == 2 and insp.pending_count(DOWN) == 2 and insp.pending_count() == 4
    assert insp.evicted == 4


def test_reused_unique_id_replaces_the_older_call_without_eviction() -> None:
    insp = FrameInspector("1.6", "log", pending_max=2)
    insp.observe(UP, call("a"), 0)
    insp.observe(UP, call("b"), 1)
    insp.observe(UP, call("a", "Authorize", '{"idTag":"T"}'), 5)
    assert insp.evicted == 0 and insp.pending_count() == 2
    got = insp.observe(DOWN, result("a", '{"idTagInfo":{"status":"Accepted"}}'), 9)
    assert (got.action, got.latency_ns, got.error) == ("Authorize", 4, None)
    # "b" is now the oldest, and is what a third CALL evicts
    insp.observe(UP, call("c"), 10)
    insp.observe(UP, call("d"), 11)
    assert insp.evicted == 1 and insp.observe(DOWN, result("b"), 12).latency_ns is None


def test_stored_action_is_clipped_so_hostile_names_cannot_bloat_memory() -> None:
    insp = FrameInspector("1.6", "log")
    long_action = "A" * 100_000
    seen = insp.observe(UP, call("x", long_action), 0)
    assert seen.action == long_action and seen.error is not None  # the CALL is reported as is
    answered = insp.observe(DOWN, result("x", "{}"), 1)
    assert answered.action == "A" * MAX_STORED_ACTION
    assert answered.error is None  # unknown action: already reported on the CALL


# --- modes --------------------------------------------------------------------------------------


def test_off_mode_parses_for_latency_but_validates_no_payload() -> None:
    insp = FrameInspector("1.6", "off")
    got = insp.observe(UP, BOOT_16_MISSING_MODEL, 0)
    assert got.error is None and got.forward and got.reply is None
    assert insp.observe(DOWN, '[3,"8",{"bogus":1}]', 40).latency_ns == 40
    broken = insp.observe(UP, '[2,"7","Heartbeat"', 50)  # framing is still checked
    assert broken.error is not None and broken.forward and broken.reply is None
    assert (insp.frames, insp.invalid) == (3, 1)


def test_log_mode_reports_invalid_calls_but_forwards_and_tracks_them() -> None:
    insp = FrameInspector("1.6", "log")
    got = insp.observe(UP, BOOT_16_MISSING_MODEL, 0)
    assert got.forward and got.reply is None
    assert got.error is not None and got.error.kind is ErrorKind.PROTOCOL
    assert got.error.unique_id == "8" and got.error.message_type == 2
    assert "$.chargePointModel" in got.error.detail
    assert insp.observe(DOWN, BOOT_16_CONF.replace('"b1"', '"8"'), 7).latency_ns == 7
    assert (insp.frames, insp.invalid) == (2, 1)


def test_results_are_validated_against_the_response_schema_of_the_matched_call() -> None:
    insp = FrameInspector("1.6", "enforce")
    insp.observe(UP, BOOT_16, 0)
    got = insp.observe(DOWN, f'[3,"b1",{{"status":"Maybe","currentTime":"{TS}","interval":300}}]', 3)
    assert got.forward and got.reply is None  # results are never blocked
    assert got.action == "BootNotification" and got.latency_ns == 3
    assert got.error is not None and got.error.kind is ErrorKind.PROPERTY_CONSTRAINT
    assert got.error.unique_id == "b1" and got.error.message_type == 3


def test_enforce_mode_answers_an_invalid_call_instead_of_forwarding_it() -> None:
    insp = FrameInspector("1.6", "enforce")
    got = insp.observe(UP, BOOT_16_MISSING_MODEL, 0)
    assert not got.forward and got.reply is not None
    reply = parse_frame(got.reply)
    assert (reply.type, reply.unique_id, reply.error_code) == (MessageType.CALLERROR, "8", "ProtocolError")
    assert "$.chargePointModel" in (reply.error_description or "")
    assert insp.pending_count() == 0  # the gateway answered it; nothing will come back
    ok = insp.observe(UP, BOOT_16, 1)
    assert ok.forward and ok.error is None and insp.pending_count() == 1


@pytest.mark.parametrize(
    ("version", "frame", "uid", "code"),
    [
        ("1.6", '[2,"7","Heartbeat"', "-1", "FormationViolation"),
        ("2.0.1", '[2,"7","Heartbeat"', "-1", "RpcFrameworkError"),
        ("2.1", '{"not":"an array"}', "-1", "RpcFrameworkError"),
        ("2.0.1", "[]", "-1", "RpcFrameworkError"),
        ("2.0.1", '["2","1","Heartbeat",{}]', "-1", "RpcFrameworkError"),
        ("1.6", '[2,"5","Heartbeat"]', "5", "FormationViolation"),
        ("2.0.1", '[2,"5","Heartbeat"]', "5", "RpcFrameworkError"),
        ("2.0.1", '[2,5,"Heartbeat",{}]', "-1", "RpcFrameworkError"),
        ("2.0.1", '[2,"5","Heartbeat",[]]', "5", "FormatViolation"),
        ("1.6", '[2,"5","FlyToTheMoon",{}]', "5", "NotImplemented"),
        ("2.0.1", '[2,"5","Heartbeat",{"x":1}]', "5", "ProtocolError"),
        ("1.6", '[2,"5","Heartbeat",{"x":1}]', "5", "FormationViolation"),
        ("2.0.1", '[2,"5","Authorize",{"idToken":{"type":"ISO14443"}}]', "5", "OccurenceConstraintViolation"),
        ("2.1", '[2,"5","Authorize",{"idToken":{"type":"ISO14443"}}]', "5", "OccurrenceConstraintViolation"),
        ("2.0.1", '[2,"5","Authorize",{"idToken":"x"}]', "5", "TypeConstraintViolation"),
        ("2.0.1", '[2,"5","Authorize",{"idToken":{"idToken":"x","type":"Nope"}}]', "5", "PropertyConstraintViolation"),
    ],
)
def test_enforce_mode_reply_uses_the_versions_code(version: str, frame: str, uid: str, code: str) -> None:
    got = FrameInspector(version, "enforce").observe(UP, frame, 0)
    assert not got.forward and got.reply is not None and got.error is not None
    reply = json.loads(got.reply)
    assert reply[:3] == [4, uid, code] and reply[4] == {}


@pytest.mark.parametrize(
    "frame",
    [
        '[3,"1"]',  # broken CALLRESULT
        '[4,"1","GenericError","d"]',  # broken CALLERROR
        '[3,"1",[]]',
        '[7,"1",{}]',  # unknown message type: the receiver ignores or answers it itself
        '[1]',
    ],
)
def test_enforce_mode_forwards_broken_non_calls_and_reports_them(frame: str) -> None:
    insp = FrameInspector("2.0.1", "enforce")
    got = insp.observe(DOWN, frame, 0)
    assert got.forward and got.reply is None and got.error is not None
    assert insp.invalid == 1


def test_the_proxy_tests_malformed_set_under_enforce_on_ocpp16() -> None:
    insp = FrameInspector("1.6", "enforce")
    replies = []
    for frame in ['[2,"7","Heartbeat"', BOOT_16_MISSING_MODEL, '{"not":"an array"}']:
        got = insp.observe(UP, frame, 0)
        assert not got.forward and got.reply is not None
        replies.append(json.loads(got.reply))
    assert replies[0][1:3] == ["-1", "FormationViolation"]
    assert replies[1][1:3] == ["8", "ProtocolError"]
    assert replies[2][1:3] == ["-1", "FormationViolation"]
    assert insp.observe(UP, call("9"), 0).forward


@pytest.mark.parametrize("mode", ["off", "log"])
def test_off_and_log_modes_always_forward(mode: str) -> None:
    insp = FrameInspector("2.0.1", mode)
    for frame in ['[2,"7","Heartbeat"', "{}", '[2,"8","Heartbeat",{"x":1}]', '[2,"9","Nope",{}]', '[9]']:
        got = insp.observe(UP, frame, 0)
        assert got.forward and got.reply is None


# --- versions -----------------------------------------------------------------------------------


def test_without_a_known_version_payloads_are_not_validated_and_replies_use_16_codes() -> None:
    insp = FrameInspector(None, "enforce")
    assert insp.observe(UP, BOOT_16_MISSING_MODEL, 0).forward  # no schema set applies
    got = insp.observe(UP, "garbage", 1)
    assert not got.forward and json.loads(got.reply or "")[:3] == [4, "-1", "FormationViolation"]


def test_ocpp21_send_is_validated_never_tracked_and_never_answered() -> None:
    insp = FrameInspector("2.1", "enforce")
    stream = f'{{"id":1,"pending":0,"basetime":"{TS}","data":[{{"t":0.5,"v":"1"}}]}}'
    ok = insp.observe(UP, f'[6,"s1","NotifyPeriodicEventStream",{stream}]', 0)
    assert ok.forward and ok.error is None and ok.action == "NotifyPeriodicEventStream"
    assert insp.pending_count() == 0
    bad = insp.observe(UP, '[6,"s2","NotifyPeriodicEventStream",{"id":1}]', 1)
    assert bad.forward and bad.reply is None and bad.error is not None
    assert bad.error.kind is ErrorKind.OCCURRENCE_CONSTRAINT
    cre = insp.observe(DOWN, '[5,"r1","FormatViolation","bad result",{}]', 2)
    assert cre.forward and cre.error is None


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
def test_ocpp21_message_types_are_unknown_types_before_21(version: str) -> None:
    insp = FrameInspector(version, "enforce")
    for frame in ['[6,"s1","NotifyPeriodicEventStream",{}]', '[5,"r1","FormatViolation","x",{}]', '[6,"s1"]']:
        got = insp.observe(UP, frame, 0)
        assert got.forward and got.reply is None
        assert got.error is not None and got.error.kind is ErrorKind.MESSAGE_TYPE_NOT_SUPPORTED
    assert insp.pending_count() == 0


# --- construction and properties ----------------------------------------------------------------


def test_mode_compares_equal_to_its_config_string() -> None:
    insp = FrameInspector("1.6", "enforce")
    assert insp.mode == "enforce" and insp.mode is Mode.ENFORCE


@pytest.mark.parametrize(
    ("version", "mode", "pending_max"),
    [("1.6", "strict", 256), ("2.0", "log", 256), ("1.6", "log", 0)],
)
def test_bad_construction_is_refused(version: str, mode: str, pending_max: int) -> None:
    with pytest.raises(ValueError):
        FrameInspector(version, mode, pending_max)


@settings(max_examples=300)
@given(
    st.sampled_from(["1.6", "2.0.1", "2.1", None]),
    st.sampled_from(["off", "log", "enforce"]),
    st.lists(
        st.tuples(
            st.sampled_from([UP, DOWN]),
            st.one_of(
                st.text(max_size=60),
                st.sampled_from([call("1"), result("1"), BOOT_16, BOOT_16_CONF, '[4,"1","E","d",{}]', "[6]"]),
                st.builds(lambda n, uid: f'[{n},"{uid}","Heartbeat",{{}}]', st.integers(0, 7), st.sampled_from("123")),
            ),
        ),
        max_size=30,
    ),
)
def test_observe_never_raises_and_a_withheld_frame_always_has_a_callerror_reply(
    version: str | None, mode: str, frames: list[tuple[Direction, str]]
) -> None:
    insp = FrameInspector(version, mode, pending_max=4)
    for i, (direction, text) in enumerate(frames):
        got = insp.observe(direction, text, i)
        if not got.forward:
            assert mode == "enforce" and got.reply is not None and got.error is not None
            assert parse_frame(got.reply).type is MessageType.CALLERROR
        else:
            assert got.reply is None
        assert insp.pending_count(UP) <= 4 and insp.pending_count(DOWN) <= 4
    assert insp.frames == len(frames)


# --- account(): the proxy's per-frame path must agree with observe() exactly ---------------------

_LONG_UID = "u" * 37
_ACCOUNT_FRAMES = [
    call("1"), call("2"), result("1"), result("2"), result("3"), BOOT_16, BOOT_16_CONF, BOOT_16_MISSING_MODEL,
    call("1", "NoSuchAction"), result("1", "{}"), result("1", '{"currentTime":5}'),
    call(_LONG_UID), result(_LONG_UID), '[2.0,"1","Heartbeat",{}]', '[true,"1","Heartbeat",{}]',
    '[3.0,"1",{}]', '[2,1,"Heartbeat",{}]', '[3,"1",[]]', '[2,"1","Heartbeat",[]]', '[2,"1",7,{}]',
    '[4,"1","GenericError","d",{}]', '[4,"2","GenericError","d",{}]', '[6,"1","Heartbeat",{}]', "[5]",
    '[2,"1","Heartbeat",{},1]', "[NaN]", "not json", "", '[2,"x","Heartbeat",{"extra":1}]',
    '[2,"m","MeterValues",{"connectorId":1,"meterValue":[{"timestamp":"' + TS + '","sampledValue":[{"value":"1"}]}]}]',
    '[3,"m",{}]', '[2,"s","StatusNotification",{"connectorId":1,"errorCode":"NoError","status":"Available"}]',
    '[3,"s",{}]', '[2,"t","TransactionEvent",{}]', '[2,"a","Authorize",{"idToken":{"idToken":"X","type":"ISO14443"}}]',
    '[3,"a",{"idTokenInfo":{"status":"Accepted"}}]', '[3,"a",{"idTagInfo":{"status":"Accepted"}}]',
]


def _error_key(error: object) -> object:
    return None if error is None else (error.kind, error.detail, error.unique_id, error.message_type)  # type: ignore[attr-defined]


@settings(max_examples=400)
@given(
    st.sampled_from(["1.6", "2.0.1", "2.1", None]),
    st.sampled_from(["off", "log", "enforce"]),
    st.lists(st.tuples(st.sampled_from([UP, DOWN]), st.sampled_from(_ACCOUNT_FRAMES)), max_size=40),
)
def test_account_agrees_with_observe_on_every_frame_and_counter(
    version: str | None, mode: str, frames: list[tuple[Direction, str]]
) -> None:
    described = FrameInspector(version, mode, pending_max=3)
    accounted = FrameInspector(version, mode, pending_max=3)
    for i, (direction, text) in enumerate(frames):
        obs = described.observe(direction, text, 1000 * i)
        error, latency = accounted.account(direction, text, 1000 * i)
        assert (_error_key(error), latency) == (_error_key(obs.error), obs.latency_ns), text
    for name in ("frames", "invalid", "evicted", "unmatched"):
        assert getattr(accounted, name) == getattr(described, name), name
    assert accounted._pending == described._pending


def test_account_takes_the_short_path_for_valid_traffic_and_observe_for_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    insp = FrameInspector("1.6", "log")
    described: list[str] = []
    original = FrameInspector.observe
    monkeypatch.setattr(FrameInspector, "observe", lambda self, d, t, n: described.append(t) or original(self, d, t, n))
    assert insp.account(UP, call("1"), 10) == (None, None)
    assert insp.account(DOWN, result("1"), 25) == (None, 15)
    assert described == []
    error, latency = insp.account(UP, BOOT_16_MISSING_MODEL, 30)
    assert error is not None and error.kind is ErrorKind.PROTOCOL and latency is None
    assert described == [BOOT_16_MISSING_MODEL]
    assert insp.frames == 3 and insp.invalid == 1
