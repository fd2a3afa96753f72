"""The fastjsonschema fast path of validate_payload: never more lenient than jsonschema, same errors.

The fast validator may only say "valid"; every rejection goes to jsonschema, which gives the verdict
and the error. So the property that matters is: fast accepts => jsonschema accepts. It is checked
here on every request and response schema of 1.6, 2.0.1 and 2.1, with instances built from each
schema and mutated at every node.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from appliance.ocppj import ErrorKind, FrameError
from appliance.value import schemas
from appliance.value.schemas import has_schema, known_actions, validate_payload

TS = "2026-11-25T17:10:51.123Z"
VERSIONS = ("1.6", "2.0.1", "2.1")


def _all_schemas() -> list[tuple[str, str, bool, str]]:
    out = []
    for version in VERSIONS:
        for action in sorted(known_actions(version)):
            for is_request in (True, False):
                if has_schema(version, action, is_request):
                    name = schemas._catalogue(version)[action][0 if is_request else 1]
                    assert name is not None
                    out.append((version, action, is_request, name))
    return out


ALL_SCHEMAS = _all_schemas()


# --- instance generator -------------------------------------------------------------------------


def _types(schema: dict[str, Any]) -> list[str]:
    t = schema.get("type", [])
    return t if isinstance(t, list) else [t]


def _number(schema: dict[str, Any], integer: bool) -> int | float:
    low = schema.get("minimum", 0)
    high = schema.get("maximum", math.inf)
    value: int | float = math.ceil(low) if integer else low
    if not integer and "multipleOf" not in schema and value + 0.5 <= high:
        value = value + 0.5  # a real fraction, where the schema allows one
    assert value <= high, schema
    return value


def build(schema: dict[str, Any], full: bool, root: bool = True) -> Any:
    """A valid instance of an inlined schema: required members only, or every member (``full``).

    2.x puts the same optional ``customData`` into every object; a full instance has it at the root
    only (mutating its hundreds of copies in the big 2.1 schemas would triple the run time).
    """
    if "enum" in schema:
        return schema["enum"][0]
    types = _types(schema)
    kind = types[0] if types else "object"
    if kind == "object":
        props = schema.get("properties", {})
        required = list(schema.get("required", []))
        keys = [k for k in props if root or k != "customData" or k in required] if full else required
        return {k: build(props.get(k, {}), full, root=False) for k in keys}
    if kind == "array":
        count = max(schema.get("minItems", 0), 1 if full else 0)
        return [build(schema.get("items", {}), full, root=False) for _ in range(count)]
    if kind == "string":
        if schema.get("format") == "date-time":
            return TS
        length = max(schema.get("minLength", 0), min(3, schema.get("maxLength", 3)))
        return "x" * length
    if kind == "integer":
        return _number(schema, integer=True)
    if kind == "number":
        return _number(schema, integer=False)
    if kind == "boolean":
        return True
    return None


# Values that try each weak spot: integral floats and bools for integers, numeric strings, NaN/inf,
# huge numbers (multipleOf), non-JSON Python types (tuple, Decimal, Fraction) for arrays and numbers.
_WRONG = [
    1, 0, -1, 1.0, 2.0, 1.5, -0.5, True, False, "1", "", "x", None, [], {}, [1], {"a": 1},
    10**30, 1e300, -1e300, math.nan, math.inf, -math.inf, Decimal("1"), Decimal("1.5"), Fraction(1, 3),
    (), ("x",),
]


def node_mutations(schema: dict[str, Any], value: Any) -> Iterator[Any]:
    """Replacements for ``value`` at its own node (valid ones too: edge values)."""
    yield from _WRONG
    if isinstance(value, dict):
        yield {**value, "zzUndefined": 1}
        for key in value:
            yield {k: v for k, v in value.items() if k != key}
        yield dict.fromkeys(schema.get("properties", {}), "x")
    if isinstance(value, list):
        yield tuple(value)
        yield []
        yield value + value
        if value:
            yield [value[0]] * (schema.get("maxItems", 3) + 1)
            if "maxItems" in schema:
                yield [value[0]] * schema["maxItems"]
            yield [value[0], None]
    for limit in ("maxLength", "minLength"):
        if limit in schema:
            for n in (schema[limit] - 1, schema[limit], schema[limit] + 1):
                if n >= 0:
                    yield "y" * n
                    yield "é" * n
    options = schema.get("enum", [])
    for option in options:
        if option in (options[0], options[-1]):  # two valid options suffice; the misses are the point
            yield option
        yield option.lower()
        yield option + " "
        yield option[:-1]
    for limit in ("minimum", "maximum"):
        if limit in schema:
            bound = schema[limit]
            for delta in (-1, -0.5, -0.05, 0, 0.05, 0.5, 1):
                yield bound + delta
            yield float(bound)
    if "multipleOf" in schema:
        yield from (21.4, 21.45, 0.3, 7360.1, 0.1 + 0.2, 1e20, 1e22 + 0.1, 3, 10**40)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        yield float(value)
        yield value + 0.1


def variants(schema: dict[str, Any], value: Any) -> Iterator[Any]:
    """Copies of ``value`` with one node (this one, or one below) replaced."""
    yield from node_mutations(schema, value)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key, sub in value.items():
            for replacement in variants(props.get(key, {}), sub):
                yield {**value, key: replacement}
    elif isinstance(value, list) and value:
        for replacement in variants(schema.get("items", {}), value[0]):
            yield [replacement, *value[1:]]


# --- oracles ------------------------------------------------------------------------------------


def fast_valid(version: str, name: str, payload: Any) -> bool:
    fast = schemas._fast_compiled(version, name)
    assert fast is not None, (version, name)
    try:
        fast(payload)
    except Exception:
        return False
    return True


def outcome(version: str, action: str, is_request: bool, payload: Any) -> tuple[ErrorKind, str] | None:
    try:
        validate_payload(version, action, is_request, payload)
    except FrameError as err:
        return err.kind, err.detail
    return None


# --- the differential test ----------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_fast_path_is_never_more_lenient_and_changes_no_outcome(version: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """fast accepts => jsonschema accepts, on every schema of ``version``; outcomes are unchanged.

    A payload the fast validator rejects goes through the very code that the reference runs, so the
    outcome comparison is done on every accepted payload and on every 25th rejected one (all of
    them would take minutes, mostly to compare a function with itself).
    """
    accepted = rejected = stricter = 0
    for v, action, is_request, name in ALL_SCHEMAS:
        if v != version:
            continue
        js = schemas._compiled(version, name)
        samples: dict[str, Any] = {}
        for full in (False, True):
            base = build(js.schema, full)
            assert js.is_valid(base), (version, name, full)
            # The fast path is used for real payloads: valid ones are accepted without jsonschema.
            assert fast_valid(version, name, base), (version, name, full)
            samples[repr(base)] = base
            for payload in variants(js.schema, base):
                samples.setdefault(repr(payload), payload)
        for snapshot, payload in samples.items():
            fast = fast_valid(version, name, payload)
            assert repr(payload) == snapshot, (version, name)  # never mutated (no defaults inserted)
            if fast:
                accepted += 1
                assert js.is_valid(payload), (version, name, snapshot)
                assert outcome(version, action, is_request, payload) is None
                continue
            rejected += 1
            if rejected % 25 == 0:
                got = outcome(version, action, is_request, payload)
                with monkeypatch.context() as m:
                    m.setattr(schemas, "_fast_compiled", lambda version, name: None)
                    want = outcome(version, action, is_request, payload)
                assert got == want, (version, name, snapshot)
                if got is None:
                    stricter += 1  # allowed (jsonschema decides), e.g. Decimal or Fraction numbers
    assert accepted > 500 and rejected > 5000
    # Stricter only on values json.loads never produces; real payloads take the fast path.
    assert stricter * 25 < accepted // 5


def test_every_shipped_schema_has_a_fast_validator() -> None:
    """None is excluded today; an ocpp update that brings an unvetted keyword would show up here."""
    excluded = {
        (version, name): schemas._fast_path_obstacle(schemas._compiled(version, name).schema)
        for version, _, _, name in ALL_SCHEMAS
        if schemas._fast_compiled(version, name) is None
    }
    assert excluded == {}


# --- the type rules that differ between drafts and between libraries ----------------------------


@pytest.mark.parametrize(
    ("version", "action", "payload", "valid"),
    [
        # Draft 4 (1.6 StartTransaction): 1.0 is not an integer.
        ("1.6", "StartTransaction", {"connectorId": 1.0, "idTag": "T", "meterStart": 0, "timestamp": TS}, False),
        # Draft 6 (2.0.1): an integral float is an integer.
        ("2.0.1", "MeterValues", {"evseId": 1.0, "meterValue": [{"timestamp": TS, "sampledValue": [{"value": 1}]}]}, True),
        ("2.0.1", "MeterValues", {"evseId": 1.5, "meterValue": [{"timestamp": TS, "sampledValue": [{"value": 1}]}]}, False),
        # bool is an int in Python, never a JSON number.
        ("1.6", "StartTransaction", {"connectorId": True, "idTag": "T", "meterStart": 0, "timestamp": TS}, False),
        ("2.0.1", "MeterValues", {"evseId": 1, "meterValue": [{"timestamp": TS, "sampledValue": [{"value": True}]}]}, False),
        # A tuple is not a JSON array (fastjsonschema alone would take it).
        ("2.0.1", "MeterValues", {"evseId": 1, "meterValue": ({"timestamp": TS, "sampledValue": [{"value": 1}]},)}, False),
    ],
)
def test_type_edges(version: str, action: str, payload: dict[str, Any], valid: bool) -> None:
    name = schemas._catalogue(version)[action][0]
    assert name is not None
    assert schemas._compiled(version, name).is_valid(payload) is valid
    if not valid:
        assert not fast_valid(version, name, payload)
    assert (outcome(version, action, True, payload) is None) is valid


def test_multiple_of_is_decided_like_jsonschema_path() -> None:
    def payload(limit: float) -> dict[str, Any]:
        return {"connectorId": 1, "csChargingProfiles": {
            "chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
            "chargingProfileKind": "Absolute", "chargingSchedule": {
                "chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}]}}}

    js = schemas._compiled("1.6", "SetChargingProfile")
    # 1e300: fastjsonschema's own multipleOf would divide and accept; our decimal rule rejects.
    for limit in (21.4, 0.3, 32, 21.45, 1e300, 0.1 + 0.2, math.nan, math.inf):
        assert fast_valid("1.6", "SetChargingProfile", payload(limit)) == js.is_valid(payload(limit)), limit


# --- fallback, mutation, cache ------------------------------------------------------------------


METER_VALUES_BAD = {"connectorId": 1, "meterValue": [{"timestamp": TS, "sampledValue": [
    {"value": "1", "unit": "kWh"}, {"value": "2", "measurand": "Flux.Capacitance"}]}]}


def test_fallback_keeps_the_jsonschema_error(monkeypatch: pytest.MonkeyPatch) -> None:
    assert schemas._fast_compiled("1.6", "MeterValues") is not None
    with_fast = outcome("1.6", "MeterValues", True, METER_VALUES_BAD)
    with monkeypatch.context() as m:
        m.setattr(schemas, "_fast_compiled", lambda version, name: None)
        reference = outcome("1.6", "MeterValues", True, METER_VALUES_BAD)
    assert with_fast == reference
    assert reference is not None and reference[0] is ErrorKind.PROPERTY_CONSTRAINT
    assert reference[1].startswith("MeterValues request: $.meterValue[0].sampledValue[1].measurand is not one of")


def test_a_failing_fast_validator_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(payload: Any) -> None:
        raise RecursionError("too deep")

    monkeypatch.setattr(schemas, "_fast_compiled", lambda version, name: broken)
    validate_payload("1.6", "Heartbeat", True, {})  # jsonschema says valid
    with pytest.raises(FrameError) as exc:
        validate_payload("1.6", "Heartbeat", True, {"foo": 1})
    assert exc.value.kind is ErrorKind.FORMAT and "'foo'" in exc.value.detail


def test_deeply_nested_payload_is_still_judged() -> None:
    deep: Any = "x"
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(FrameError):
        validate_payload("1.6", "DataTransfer", True, {"vendorId": "V", "data": deep})
    with pytest.raises(FrameError):
        validate_payload("2.0.1", "MeterValues", True, {"evseId": 1, "meterValue": deep})


def test_payload_is_not_mutated() -> None:
    # BootNotification 2.0.1 response and others carry "default"s; none may be inserted.
    for version, action, is_request, name in ALL_SCHEMAS:
        base = build(schemas._compiled(version, name).schema, full=False)
        before = copy.deepcopy(base)
        validate_payload(version, action, is_request, base)
        assert base == before, (version, name)


def test_fast_validator_is_compiled_once_and_used() -> None:
    validate_payload("2.0.1", "Heartbeat", False, {"currentTime": TS})
    before = schemas._fast_compiled.cache_info()
    for _ in range(50):
        validate_payload("2.0.1", "Heartbeat", False, {"currentTime": TS})
    after = schemas._fast_compiled.cache_info()
    assert after.misses == before.misses and after.hits == before.hits + 50


def test_valid_path_does_not_run_jsonschema(monkeypatch: pytest.MonkeyPatch) -> None:
    validator = schemas._compiled("1.6", "Heartbeat")
    calls = []
    monkeypatch.setattr(type(validator), "iter_errors", lambda self, instance: calls.append(1) or iter(()))
    validate_payload("1.6", "Heartbeat", False, {"currentTime": TS})
    assert calls == []


def test_obstacles_keep_a_schema_off_the_fast_path() -> None:
    ok = {"type": "object", "properties": {"a": {"type": "string", "maxLength": 3}}, "additionalProperties": False}
    assert schemas._fast_path_obstacle(ok) is None
    assert schemas._fast_path_obstacle({"type": "string", "pattern": "^a$"}) is not None
    assert schemas._fast_path_obstacle({"maxLength": 3}) is not None  # constraint without type
    assert schemas._fast_path_obstacle({"type": "integer", "enum": [1, 2]}) is not None
    assert schemas._fast_path_obstacle({"type": "array", "items": [{"type": "string"}]}) is not None
    assert schemas._fast_path_obstacle({"type": "array", "uniqueItems": True}) is not None
    assert schemas._fast_path_obstacle({"type": "object", "additionalProperties": {"type": "string"}}) is not None
    assert schemas._fast_path_obstacle({"$ref": "#/definitions/X"}) is not None
    assert schemas._fast_path_obstacle({"type": "object", "properties": {"a": {"$ref": "#/definitions/X"}}}) is not None
