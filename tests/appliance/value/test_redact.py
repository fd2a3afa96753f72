"""Redactor: every token field of 1.6, 2.0.1 and 2.1 frames is pseudonymised, keyed and stable."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.value.redact import Redactor

KEY = b"k" * 32
PSEUDONYM = re.compile(r"^hmac:[0-9a-f]{16}$")
TS = "2026-11-25T17:10:51.123Z"


@pytest.fixture
def redactor() -> Redactor:
    return Redactor(KEY)


def frame(*elements: Any) -> str:
    return json.dumps(list(elements))


def redacted(redactor: Redactor, *elements: Any) -> Any:
    text = frame(*elements)
    out = redactor.redact(text)
    return json.loads(out), out


# Each case: (frame elements, secrets that must vanish, json pointers to pseudonymised values)
CASES: dict[str, tuple[list[Any], list[str], list[tuple[Any, ...]]]] = {
    "1.6 Authorize.req": (
        [2, "1", "Authorize", {"idTag": "TAG-AUTH-0001"}],
        ["TAG-AUTH-0001"],
        [(3, "idTag")],
    ),
    "1.6 Authorize.conf": (
        [3, "1", {"idTagInfo": {"status": "Accepted", "expiryDate": TS, "parentIdTag": "TAG-PARENT-01"}}],
        ["TAG-PARENT-01"],
        [(2, "idTagInfo", "parentIdTag")],
    ),
    "1.6 StartTransaction.req": (
        [2, "2", "StartTransaction", {"connectorId": 1, "idTag": "TAG-START-001", "meterStart": 0, "timestamp": TS}],
        ["TAG-START-001"],
        [(3, "idTag")],
    ),
    "1.6 StartTransaction.conf": (
        [3, "2", {"transactionId": 42, "idTagInfo": {"status": "Accepted", "parentIdTag": "TAG-PARENT-02"}}],
        ["TAG-PARENT-02"],
        [(2, "idTagInfo", "parentIdTag")],
    ),
    "1.6 StopTransaction.req": (
        [2, "3", "StopTransaction", {"transactionId": 42, "idTag": "TAG-STOP-0001", "meterStop": 10, "timestamp": TS,
                                     "transactionData": [{"timestamp": TS, "sampledValue": [{"value": "10"}]}]}],
        ["TAG-STOP-0001"],
        [(3, "idTag")],
    ),
    "1.6 RemoteStartTransaction.req": (
        [2, "4", "RemoteStartTransaction", {"connectorId": 1, "idTag": "TAG-REMOTE-01"}],
        ["TAG-REMOTE-01"],
        [(3, "idTag")],
    ),
    "1.6 ReserveNow.req": (
        [2, "5", "ReserveNow", {"connectorId": 1, "expiryDate": TS, "idTag": "TAG-RESERVE-1",
                                "parentIdTag": "TAG-PARENT-03", "reservationId": 9}],
        ["TAG-RESERVE-1", "TAG-PARENT-03"],
        [(3, "idTag"), (3, "parentIdTag")],
    ),
    "1.6 SendLocalList.req": (
        [2, "6", "SendLocalList", {"listVersion": 3, "updateType": "Full", "localAuthorizationList": [
            {"idTag": "TAG-LIST-0001", "idTagInfo": {"status": "Accepted", "parentIdTag": "TAG-PARENT-04"}},
            {"idTag": "TAG-LIST-0002", "idTagInfo": {"status": "Blocked"}},
        ]}],
        ["TAG-LIST-0001", "TAG-LIST-0002", "TAG-PARENT-04"],
        [(3, "localAuthorizationList", 0, "idTag"), (3, "localAuthorizationList", 0, "idTagInfo", "parentIdTag"),
         (3, "localAuthorizationList", 1, "idTag")],
    ),
    "2.0.1 AuthorizeRequest": (
        [2, "7", "Authorize", {"idToken": {"idToken": "TOK-AUTH-0001", "type": "ISO14443",
                                           "additionalInfo": [{"additionalIdToken": "TOK-ADD-00001", "type": "Car"}]},
                               "certificate": "-----BEGIN CERTIFICATE-----\nCONTRACT-CERT-EMAID\n"
                                              "-----END CERTIFICATE-----"}],
        ["TOK-AUTH-0001", "TOK-ADD-00001", "CONTRACT-CERT-EMAID"],
        [(3, "idToken", "idToken"), (3, "idToken", "additionalInfo", 0, "additionalIdToken"), (3, "certificate")],
    ),
    "2.0.1 AuthorizeResponse": (
        [3, "7", {"idTokenInfo": {"status": "Accepted",
                                  "groupIdToken": {"idToken": "TOK-GROUP-001", "type": "Central"}}}],
        ["TOK-GROUP-001"],
        [(2, "idTokenInfo", "groupIdToken", "idToken")],
    ),
    "2.0.1 TransactionEventRequest": (
        [2, "8", "TransactionEvent", {
            "eventType": "Started", "timestamp": TS, "triggerReason": "Authorized", "seqNo": 0,
            "transactionInfo": {"transactionId": "tx-1"},
            "idToken": {"idToken": "TOK-TX-000001", "type": "eMAID",
                        "additionalInfo": [{"additionalIdToken": "TOK-ADD-00002", "type": "ContractId"}]},
            "meterValue": [{"timestamp": TS, "sampledValue": [{"value": 2935.6}]}],
        }],
        ["TOK-TX-000001", "TOK-ADD-00002"],
        [(3, "idToken", "idToken"), (3, "idToken", "additionalInfo", 0, "additionalIdToken")],
    ),
    "2.0.1 TransactionEventResponse": (
        [3, "8", {"idTokenInfo": {"status": "Accepted",
                                  "groupIdToken": {"idToken": "TOK-GROUP-002", "type": "Central"}}}],
        ["TOK-GROUP-002"],
        [(2, "idTokenInfo", "groupIdToken", "idToken")],
    ),
    "2.0.1 RequestStartTransactionRequest": (
        [2, "9", "RequestStartTransaction", {"remoteStartId": 1,
                                             "idToken": {"idToken": "TOK-RST-00001", "type": "Central"},
                                             "groupIdToken": {"idToken": "TOK-GROUP-003", "type": "Central"}}],
        ["TOK-RST-00001", "TOK-GROUP-003"],
        [(3, "idToken", "idToken"), (3, "groupIdToken", "idToken")],
    ),
    "2.0.1 SendLocalListRequest": (
        [2, "10", "SendLocalList", {"versionNumber": 2, "updateType": "Full", "localAuthorizationList": [
            {"idToken": {"idToken": "TOK-LIST-0001", "type": "ISO14443"},
             "idTokenInfo": {"status": "Accepted", "groupIdToken": {"idToken": "TOK-GROUP-004", "type": "Central"}}},
        ]}],
        ["TOK-LIST-0001", "TOK-GROUP-004"],
        [(3, "localAuthorizationList", 0, "idToken", "idToken"),
         (3, "localAuthorizationList", 0, "idTokenInfo", "groupIdToken", "idToken")],
    ),
    "2.0.1 CustomerInformationRequest": (
        [2, "11", "CustomerInformation", {"requestId": 1, "report": True, "clear": False,
                                          "customerIdentifier": "CUSTOMER-0042",
                                          "idToken": {"idToken": "TOK-CUST-0001", "type": "ISO14443"}}],
        ["CUSTOMER-0042", "TOK-CUST-0001"],
        [(3, "customerIdentifier"), (3, "idToken", "idToken")],
    ),
    "2.1 GetTariffsResponse": (
        [3, "12", {"status": "Accepted", "tariffAssignments": [
            {"tariffId": "t1", "tariffKind": "DriverTariff", "idTokens": ["TOK-TARIFF-01", "TOK-TARIFF-02"]}]}],
        ["TOK-TARIFF-01", "TOK-TARIFF-02"],
        [(2, "tariffAssignments", 0, "idTokens", 0), (2, "tariffAssignments", 0, "idTokens", 1)],
    ),
    "2.1 VatNumberValidationRequest": (
        [2, "13", "VatNumberValidation", {"vatNumber": "VAT-DE-12345", "evseId": 1}],
        ["VAT-DE-12345"],
        [(3, "vatNumber")],
    ),
    "CALLERROR details": (
        [4, "14", "GenericError", "tag rejected",
         {"idTag": "TAG-IN-ERROR1", "nested": {"idToken": {"idToken": "TOK-ERR-1", "type": "Local"}}}],
        ["TAG-IN-ERROR1", "TOK-ERR-1"],
        [(4, "idTag"), (4, "nested", "idToken", "idToken")],
    ),
}


def pointer(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        value = value[step]
    return value


@pytest.mark.parametrize("name", list(CASES))
def test_every_token_field_is_pseudonymised_and_the_tag_text_is_gone(redactor: Redactor, name: str) -> None:
    elements, secrets, paths = CASES[name]
    parsed, out = redacted(redactor, *elements)
    for secret in secrets:
        assert secret not in out
        assert secret.lower() not in out.lower()
    for path in paths:
        assert PSEUDONYM.match(pointer(parsed, path)), path
    # Everything else is untouched: put the originals back and compare.
    restored = json.loads(frame(*elements))
    for path in paths:
        pointer(parsed, path[:-1])[path[-1]] = pointer(restored, path)
    assert parsed == restored


def test_token_type_stays_readable(redactor: Redactor) -> None:
    parsed, _ = redacted(redactor, 2, "1", "Authorize", {"idToken": {"idToken": "TOK-1", "type": "ISO14443"}})
    assert parsed[3]["idToken"]["type"] == "ISO14443"


def test_same_tag_gives_same_pseudonym_across_messages_and_instances(redactor: Redactor) -> None:
    auth, _ = redacted(redactor, 2, "1", "Authorize", {"idTag": "04A2B3C4D5"})
    start, _ = redacted(Redactor(KEY), 2, "2", "StartTransaction",
                        {"connectorId": 1, "idTag": "04A2B3C4D5", "meterStart": 0, "timestamp": TS})
    assert auth[3]["idTag"] == start[3]["idTag"] == redactor.pseudonym("04A2B3C4D5")


def test_pseudonym_is_case_insensitive_like_ocpp_identifiers(redactor: Redactor) -> None:
    assert redactor.pseudonym("04a2b3c4d5") == redactor.pseudonym("04A2B3C4D5")
    assert redactor.pseudonym("04A2B3C4D5") != redactor.pseudonym("04A2B3C4D6")


def test_pseudonym_is_keyed(redactor: Redactor) -> None:
    tag = "04A2B3C4D5"
    other = Redactor(b"q" * 32)
    assert redactor.pseudonym(tag) != other.pseudonym(tag)
    unkeyed = hashlib.sha256(tag.lower().encode()).hexdigest()[:16]
    assert redactor.pseudonym(tag) != "hmac:" + unkeyed
    expected = hmac.new(KEY, tag.casefold().encode(), hashlib.sha256).hexdigest()[:16]
    assert redactor.pseudonym(tag) == "hmac:" + expected


def test_numeric_id_tag_is_redacted_too(redactor: Redactor) -> None:
    parsed, out = redacted(redactor, 2, "1", "Authorize", {"idTag": 987654321})
    assert "987654321" not in out and parsed[3]["idTag"] == redactor.pseudonym("987654321")


def test_json_inside_a_datatransfer_string_is_redacted(redactor: Redactor) -> None:
    data = json.dumps({"idTag": "TAG-IN-DATA-1", "list": [{"parentIdTag": "TAG-IN-DATA-2"}]})
    parsed, out = redacted(redactor, 2, "1", "DataTransfer", {"vendorId": "ACME", "data": data})
    assert "TAG-IN-DATA" not in out
    inner = json.loads(parsed[3]["data"])
    assert PSEUDONYM.match(inner["idTag"]) and PSEUDONYM.match(inner["list"][0]["parentIdTag"])


def test_strings_without_tokens_are_left_byte_for_byte(redactor: Redactor) -> None:
    data = '{ "temperature" : 21.50 }'
    parsed, _ = redacted(redactor, 2, "1", "DataTransfer", {"vendorId": "ACME", "data": data})
    assert parsed[3]["data"] == data
    parsed, _ = redacted(redactor, 2, "1", "DataTransfer", {"vendorId": "ACME", "data": "[not json"})
    assert parsed[3]["data"] == "[not json"


def test_output_is_compact_ascii_json(redactor: Redactor) -> None:
    out = redactor.redact('[2, "1", "DataTransfer", {"vendorId": "Müller", "data": "\\ud800"}]')
    assert out.isascii() and " " not in out
    assert json.loads(out)[3]["vendorId"] == "Müller"


@pytest.mark.parametrize(
    "text",
    [
        '[2,"1","Authorize",{"idTag":"SECRET-TAG-0042"}',  # truncated
        '[2,"1","Authorize",{"idTag":"SECRET-TAG-0042"}] trailing',
        '[2,"1","Authorize",{"idTag":"SECRET-TAG-0042","x":NaN}]',
        '[2,"1","Authorize",{"idTag":"SECRET-TAG-0042","x":1e999}]',  # parses to inf: not re-encodable
        "SECRET-TAG-0042",
        "",
    ],
)
def test_unparseable_text_becomes_a_placeholder_never_the_original(redactor: Redactor, text: str) -> None:
    out = redactor.redact(text)
    assert "SECRET" not in out
    assert json.loads(out) == {"unparsed": True, "bytes": len(text.encode())}


def test_pathologically_deep_json_becomes_a_placeholder(redactor: Redactor) -> None:
    text = '{"idTag":"SECRET-TAG-0042","x":' + "[" * 5000 + "]" * 5000 + "}"
    out = redactor.redact(text)
    assert "SECRET" not in out


def test_short_keys_are_refused() -> None:
    with pytest.raises(ValueError):
        Redactor(b"short")


tags = st.text(alphabet="GHIJKLMNOPQRSTUVWXYZ-", min_size=6, max_size=20)
json_leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
json_values = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=15,
)


# Noise never contains the tags' alphabet, so a tag found in the output can only be a leak.
noise_text = st.text(alphabet=st.characters(exclude_characters="GHIJKLMNOPQRSTUVWXYZ-"), max_size=8)
noise_values = st.recursive(
    st.none() | st.booleans() | st.integers() | noise_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(noise_text, children, max_size=4),
    max_leaves=15,
)


@given(tags, st.sampled_from(["idTag", "parentIdTag", "idToken", "groupIdToken", "additionalIdToken"]), noise_values)
def test_a_tag_under_any_token_key_never_survives(tag: str, key: str, noise: Any) -> None:
    redactor = Redactor(KEY)
    out = redactor.redact(frame(2, "1", "X", {"noise": noise, "deep": [{key: tag}], key: {key: tag}}))
    assert tag not in out
    assert redactor.pseudonym(tag) in out


@given(json_values)
def test_any_json_redacts_to_json(value: Any) -> None:
    out = Redactor(KEY).redact(json.dumps(value))
    json.loads(out)


@given(st.text())
def test_any_text_redacts_to_json(text: str) -> None:
    json.loads(Redactor(KEY).redact(text))
