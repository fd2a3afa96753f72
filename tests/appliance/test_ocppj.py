"""OCPP-J envelope codec: frame shapes, error kinds, per-version codes, CALLERROR building."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.ocppj import (
    VERSIONS,
    ErrorKind,
    Frame,
    FrameError,
    MessageType,
    build_callerror,
    error_code_for,
    parse_frame,
    version_of,
)

# --- well-formed frames -------------------------------------------------------------------------


def test_call_is_parsed_into_type_id_action_and_payload() -> None:
    frame = parse_frame('[2,"19223201","BootNotification",{"chargePointVendor":"VendorX","chargePointModel":"M"}]')
    assert frame == Frame(
        MessageType.CALL, "19223201", "BootNotification", {"chargePointVendor": "VendorX", "chargePointModel": "M"}
    )
    assert frame.error_code is None and frame.error_details is None


def test_callresult_has_payload_and_no_action() -> None:
    frame = parse_frame('[3, "19223201", {"status": "Accepted", "interval": 300}]')
    assert frame.type is MessageType.CALLRESULT
    assert (frame.unique_id, frame.action, frame.payload) == ("19223201", None, {"status": "Accepted", "interval": 300})


def test_callerror_has_code_description_details_and_no_payload() -> None:
    frame = parse_frame('[4,"162376037","NotSupported","SetDisplayMessageRequest not implemented",{"x":1}]')
    assert frame.type is MessageType.CALLERROR
    assert frame.payload is None and frame.action is None
    assert (frame.error_code, frame.error_description, frame.error_details) == (
        "NotSupported", "SetDisplayMessageRequest not implemented", {"x": 1},
    )


def test_ocpp21_send_and_callresulterror_are_parsed() -> None:
    send = parse_frame('[6,"a","NotifyPeriodicEventStream",{"id":1,"pending":0,"basetime":"t","data":[]}]')
    assert (send.type, send.action) == (MessageType.SEND, "NotifyPeriodicEventStream")
    cre = parse_frame('[5,"b","FormatViolation","bad result",{}]')
    assert (cre.type, cre.error_code, cre.error_description, cre.error_details) == (
        MessageType.CALLRESULTERROR, "FormatViolation", "bad result", {},
    )


def test_whitespace_and_unicode_are_accepted() -> None:
    frame = parse_frame(' [ 2 , "ü-1" , "DataTransfer" , { "vendorId" : "Müller" } ] \n')
    assert frame.unique_id == "ü-1" and frame.payload == {"vendorId": "Müller"}


def test_bytes_are_decoded_as_utf8() -> None:
    assert parse_frame(b'[2,"1","Heartbeat",{}]') == Frame(MessageType.CALL, "1", "Heartbeat", {})


def test_unique_id_of_36_characters_is_accepted_and_37_is_not() -> None:
    ok = "a" * 36
    assert parse_frame(f'[2,"{ok}","Heartbeat",{{}}]').unique_id == ok
    with pytest.raises(FrameError) as exc:
        parse_frame(f'[2,"{ok}x","Heartbeat",{{}}]')
    assert exc.value.kind is ErrorKind.RPC_FRAMEWORK
    assert exc.value.unique_id is None  # unusable as a reply id
    assert exc.value.message_type == 2


# --- malformed frames ---------------------------------------------------------------------------

BROKEN = [
    # (text, kind, unique_id readable, message_type read)
    ("", ErrorKind.RPC_FRAMEWORK, None, None),
    ("not json", ErrorKind.RPC_FRAMEWORK, None, None),
    ('[2,"7","Heartbeat"', ErrorKind.RPC_FRAMEWORK, None, None),
    ('[2,"1","Heartbeat",{}] trailing', ErrorKind.RPC_FRAMEWORK, None, None),
    ('[2,"1","Heartbeat",{"a":NaN}]', ErrorKind.RPC_FRAMEWORK, None, None),
    ('[2,"1","Heartbeat",{"a":Infinity}]', ErrorKind.RPC_FRAMEWORK, None, None),
    ('{"not":"an array"}', ErrorKind.RPC_FRAMEWORK, None, None),
    ('"just a string"', ErrorKind.RPC_FRAMEWORK, None, None),
    ("[]", ErrorKind.RPC_FRAMEWORK, None, None),
    ('["2","1","Heartbeat",{}]', ErrorKind.RPC_FRAMEWORK, None, None),
    ('[2.0,"1","Heartbeat",{}]', ErrorKind.RPC_FRAMEWORK, None, None),
    ('[true,"1","Heartbeat",{}]', ErrorKind.RPC_FRAMEWORK, None, None),
    ('[null]', ErrorKind.RPC_FRAMEWORK, None, None),
    ('[7,"1",{}]', ErrorKind.MESSAGE_TYPE_NOT_SUPPORTED, "1", 7),
    ('[1]', ErrorKind.MESSAGE_TYPE_NOT_SUPPORTED, None, 1),
    ('[-2,"x"]', ErrorKind.MESSAGE_TYPE_NOT_SUPPORTED, "x", -2),
    ('[2]', ErrorKind.RPC_FRAMEWORK, None, 2),
    ('[2,"1","Heartbeat"]', ErrorKind.RPC_FRAMEWORK, "1", 2),
    ('[2,"1","Heartbeat",{},{}]', ErrorKind.RPC_FRAMEWORK, "1", 2),
    ('[2,1,"Heartbeat",{}]', ErrorKind.RPC_FRAMEWORK, None, 2),
    ('[2,null,"Heartbeat",{}]', ErrorKind.RPC_FRAMEWORK, None, 2),
    ('[2,"1",5,{}]', ErrorKind.RPC_FRAMEWORK, "1", 2),
    ('[2,"1","Heartbeat",[]]', ErrorKind.FORMAT, "1", 2),
    ('[2,"1","Heartbeat",null]', ErrorKind.FORMAT, "1", 2),
    ('[3,"1"]', ErrorKind.RPC_FRAMEWORK, "1", 3),
    ('[3,"1","x"]', ErrorKind.FORMAT, "1", 3),
    ('[3,["1"],{}]', ErrorKind.RPC_FRAMEWORK, None, 3),
    ('[4,"1","GenericError","d"]', ErrorKind.RPC_FRAMEWORK, "1", 4),
    ('[4,"1",5,"d",{}]', ErrorKind.RPC_FRAMEWORK, "1", 4),
    ('[4,"1","GenericError",null,{}]', ErrorKind.RPC_FRAMEWORK, "1", 4),
    ('[4,"1","GenericError","d",[]]', ErrorKind.FORMAT, "1", 4),
    ('[6,"1","NotifyPeriodicEventStream"]', ErrorKind.RPC_FRAMEWORK, "1", 6),
]


@pytest.mark.parametrize(("text", "kind", "unique_id", "message_type"), BROKEN)
def test_malformed_frame_raises_frame_error_with_kind_and_context(
    text: str, kind: ErrorKind, unique_id: str | None, message_type: int | None
) -> None:
    with pytest.raises(FrameError) as exc:
        parse_frame(text)
    err = exc.value
    assert (err.kind, err.unique_id, err.message_type) == (kind, unique_id, message_type)
    assert err.detail and str(err) == err.detail


def test_invalid_utf8_bytes_are_an_rpc_framework_error() -> None:
    with pytest.raises(FrameError) as exc:
        parse_frame(b'[2,"1","Authorize",{"idTag":"\xff\xfe"}]')
    assert exc.value.kind is ErrorKind.RPC_FRAMEWORK


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,  # deeper than the recursion limit
        "[2" + "0" * 5000 + "]",  # beyond sys.int_info.default_max_str_digits
        '[2,"1","Heartbeat",{"a":' * 50_000,
    ],
)
def test_pathological_input_is_still_only_a_frame_error(text: str) -> None:
    with pytest.raises(FrameError):
        parse_frame(text)


def test_huge_message_type_number_is_not_echoed_into_the_detail() -> None:
    with pytest.raises(FrameError) as exc:
        parse_frame("[" + "9" * 4000 + ',"1",{}]')
    assert exc.value.kind is ErrorKind.MESSAGE_TYPE_NOT_SUPPORTED
    assert len(exc.value.detail) < 100


@pytest.mark.parametrize(
    "text",
    [
        '[2,"1","Authorize",["SECRET-TAG-0042"]]',
        '[3,"1","SECRET-TAG-0042"]',
        '[4,"1","GenericError","d","SECRET-TAG-0042"]',
        '[2,"1","Authorize",{"idTag":"SECRET-TAG-0042"},"extra"]',
        '[2,"1","Authorize",{"idTag":"SECRET-TAG-0042"}',
    ],
)
def test_error_detail_never_quotes_payload_values(text: str) -> None:
    with pytest.raises(FrameError) as exc:
        parse_frame(text)
    assert "SECRET" not in exc.value.detail and "SECRET" not in repr(exc.value)


# --- error codes per version --------------------------------------------------------------------

CODES = {
    ErrorKind.RPC_FRAMEWORK: ("FormationViolation", "RpcFrameworkError", "RpcFrameworkError"),
    ErrorKind.MESSAGE_TYPE_NOT_SUPPORTED: ("GenericError", "MessageTypeNotSupported", "MessageTypeNotSupported"),
    ErrorKind.FORMAT: ("FormationViolation", "FormatViolation", "FormatViolation"),
    ErrorKind.PROTOCOL: ("ProtocolError", "ProtocolError", "ProtocolError"),
    ErrorKind.TYPE: ("TypeConstraintViolation",) * 3,
    ErrorKind.PROPERTY_CONSTRAINT: ("PropertyConstraintViolation",) * 3,
    ErrorKind.OCCURRENCE_CONSTRAINT: (
        "OccurenceConstraintViolation",  # 1.6 spelling, kept by the 1.6J errata
        "OccurenceConstraintViolation",  # still one "r" in 2.0.1
        "OccurrenceConstraintViolation",  # fixed in 2.1
    ),
    ErrorKind.NOT_IMPLEMENTED: ("NotImplemented",) * 3,
    ErrorKind.NOT_SUPPORTED: ("NotSupported",) * 3,
}


def test_code_table_covers_every_kind() -> None:
    assert set(CODES) == set(ErrorKind)


@pytest.mark.parametrize("kind", list(ErrorKind))
@pytest.mark.parametrize("index,version", list(enumerate(VERSIONS)))
def test_error_code_for_names_the_versions_code(kind: ErrorKind, index: int, version: str) -> None:
    assert error_code_for(kind, version) == CODES[kind][index]


def test_codes_are_ones_the_ocpp_library_knows() -> None:
    from ocpp.exceptions import OCPPError

    library = {cls.code for cls in OCPPError.__subclasses__()}
    ours = {error_code_for(k, v) for k in ErrorKind for v in VERSIONS}
    # The library has no RpcFrameworkError / MessageTypeNotSupported (2.0.1 Part 4 §4.3 has).
    assert ours - library == {"RpcFrameworkError", "MessageTypeNotSupported"}


@pytest.mark.parametrize("version", ["2.0", "1.5", "", "ocpp1.6"])
def test_error_code_for_rejects_unknown_versions(version: str) -> None:
    with pytest.raises(ValueError):
        error_code_for(ErrorKind.TYPE, version)


# --- CALLERROR building -------------------------------------------------------------------------


def test_build_callerror_is_compact_and_parses_back() -> None:
    text = build_callerror("19223201", "NotImplemented", "unknown action", {"hint": "x"})
    assert text == '[4,"19223201","NotImplemented","unknown action",{"hint":"x"}]'
    assert parse_frame(text) == Frame(
        MessageType.CALLERROR, "19223201", None, None, "NotImplemented", "unknown action", {"hint": "x"}
    )


def test_unreadable_id_is_answered_with_minus_one_and_empty_details() -> None:
    assert build_callerror(None, "RpcFrameworkError", "frame is not valid JSON") == (
        '[4,"-1","RpcFrameworkError","frame is not valid JSON",{}]'
    )


def test_description_is_cut_to_255_characters() -> None:
    frame = parse_frame(build_callerror("1", "GenericError", "x" * 1000))
    assert frame.error_description == "x" * 255


def test_lone_surrogate_id_still_gives_utf8_encodable_reply() -> None:
    uid = parse_frame('[2,"\\ud800","Heartbeat",{}]').unique_id
    text = build_callerror(uid, "GenericError", "d")
    assert text.isascii()
    text.encode("utf-8")
    assert parse_frame(text).unique_id == uid


# --- subprotocols -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subprotocol", "version"),
    [
        ("ocpp1.6", "1.6"),
        ("ocpp2.0.1", "2.0.1"),
        ("ocpp2.1", "2.1"),
        ("ocpp2.0", None),
        ("OCPP1.6", None),
        ("ocpp1.5", None),
        ("", None),
        (None, None),
    ],
)
def test_version_of_maps_negotiated_subprotocol(subprotocol: str | None, version: str | None) -> None:
    assert version_of(subprotocol) == version


# --- properties ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=20,
)


@given(st.text())
def test_parse_frame_raises_only_frame_error_on_arbitrary_text(text: str) -> None:
    with contextlib.suppress(FrameError):
        parse_frame(text)


@given(st.binary())
def test_parse_frame_raises_only_frame_error_on_arbitrary_bytes(data: bytes) -> None:
    with contextlib.suppress(FrameError):
        parse_frame(data)


@given(json_values)
def test_parse_frame_raises_only_frame_error_on_arbitrary_json(value: object) -> None:
    with contextlib.suppress(FrameError):
        parse_frame(json.dumps(value))


@given(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7]), st.lists(json_values, max_size=6))
def test_frame_like_arrays_parse_or_raise_frame_error(number: int, rest: list[object]) -> None:
    text = json.dumps([number, *rest])
    try:
        frame = parse_frame(text)
    except FrameError as err:
        assert isinstance(err.kind, ErrorKind)
        return
    assert int(frame.type) == number and isinstance(frame.unique_id, str)


@settings(max_examples=200)
@given(
    st.none() | st.text(max_size=36),
    st.text(),
    st.text(),
    st.none() | st.dictionaries(st.text(), json_values, max_size=4),
)
def test_build_callerror_output_always_parses_back(
    uid: str | None, code: str, description: str, details: dict[str, object] | None
) -> None:
    frame = parse_frame(build_callerror(uid, code, description, details))
    assert frame.type is MessageType.CALLERROR
    assert frame.unique_id == ("-1" if uid is None else uid)
    assert frame.error_code == code
    assert frame.error_description == description[:255]
    assert frame.error_details == ({} if details is None else details)
