"""Payload validation against the OCA JSON schemas shipped inside the ``ocpp`` package.

Why this exists: the value channel checks CALL and CALLRESULT payloads (log or enforce mode) with
the same schemas the ocpp library uses, and must say *which* CALLERROR code each failure deserves
in the negotiated OCPP version, without echoing the payload (it may hold idTags).

Guarantees:
- Schemas are read lazily from the installed package, once per file, and compiled once; unknown
  actions never touch the filesystem (names are looked up in a per-version catalogue built from
  the directory listing, so an action name from the network is never turned into a path).
- Each schema is validated with the draft its ``$schema`` declares (1.6: draft-04, 2.x: draft-06);
  the ocpp library uses Draft4Validator for all of them. Local ``$ref`` s are inlined at compile
  time (see :func:`_inline_local_refs`), which halves the cost of validating 2.x payloads.
- ``multipleOf`` is decided in decimal arithmetic. The ocpp library re-parses payload and schema
  with ``parse_float=decimal.Decimal`` for the three 1.6 schemas that use it (SetChargingProfile,
  RemoteStartTransaction, GetCompositeScheduleResponse: ``limit`` has ``multipleOf: 0.1``) because
  ``21.4 / 0.1`` is not integral in binary floating point. We get the same answer without a second
  parse: our ``multipleOf`` compares ``Decimal(repr(x))``, and ``repr`` of a float parsed from JSON
  is the shortest decimal that denotes it, i.e. the number the sender wrote.
- ``format`` (``date-time``) is not asserted, like the ocpp library, and jsonschema could not check
  it here anyway (it needs the optional rfc3339-validator). Many 1.6 chargers send timestamps
  without an offset; flagging those is a policy decision, not a schema fact.
- Error details name the JSON path and the violated limit, never the offending value.

Schema failure to :class:`~.ocppj.ErrorKind` (then :func:`~.ocppj.error_code_for` names the code):

===================== ======================== ============================ ==========================================
schema keyword        1.6                      2.0.1 / 2.1                  why
===================== ======================== ============================ ==========================================
(unknown action)      NOT_IMPLEMENTED          NOT_IMPLEMENTED              both: "Requested Action is not known by
                                                                            receiver"; the ocpp library does the same
type                  TYPE                     TYPE                         "violates data type constraints
                                                                            (e.g. "somestring": 12)"; = ocpp library
required              PROTOCOL                 OCCURRENCE_CONSTRAINT        1.6 ProtocolError is "Payload for Action is
                                                                            incomplete" (= ocpp library); 2.x reworded
                                                                            ProtocolError to "not conform the PDU
                                                                            structure", so a missing member is an
                                                                            occurrence violation there
additionalProperties  FORMAT                   PROTOCOL                     1.6 FormationViolation: "...or not conform
                                                                            the PDU structure" (= ocpp library); 2.x
                                                                            ProtocolError carries that phrase (the ocpp
                                                                            library sends FormatViolation here)
minItems, maxItems,   OCCURRENCE_CONSTRAINT    OCCURRENCE_CONSTRAINT        cardinality is what "occurrence" means
min/maxProperties
maxLength, minLength, PROPERTY_CONSTRAINT      PROPERTY_CONSTRAINT          "at least one field contains an invalid
enum, pattern,                                                              value" (the ocpp library sends
minimum, maximum,                                                           TypeConstraintViolation for maxLength and
exclusive*, multipleOf,                                                     FormatViolation for the others)
uniqueItems, const,
format
anything else         FORMAT                   FORMAT                       the ocpp library's catch-all
===================== ======================== ============================ ==========================================
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from decimal import Decimal, InvalidOperation
from functools import cache
from importlib import resources
from typing import Any

from fastjsonschema.draft04 import CodeGeneratorDraft04
from fastjsonschema.draft06 import CodeGeneratorDraft06
from fastjsonschema.ref_resolver import RefResolver
from jsonschema import Draft4Validator, Draft6Validator
from jsonschema.exceptions import ValidationError, best_match
from jsonschema.protocols import Validator
from jsonschema.validators import extend, validator_for

from ..ocppj import ErrorKind, FrameError

__all__ = ["has_schema", "known_actions", "validate_payload"]

# Package directory per version (ocpp/v16/schemas, ocpp/v201/schemas, ocpp/v21/schemas).
_SCHEMA_DIRS = {"1.6": "v16", "2.0.1": "v201", "2.1": "v21"}

_PROPERTY_KEYWORDS = frozenset({
    "maxLength", "minLength", "enum", "const", "pattern", "format", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "uniqueItems",
})
_OCCURRENCE_KEYWORDS = frozenset({
    "minItems", "maxItems", "minProperties", "maxProperties", "additionalItems", "contains",
})

# One catalogue entry: (request schema file, response schema file), either may be None.
_Entry = tuple[str | None, str | None]


@cache
def _catalogue(version: str) -> dict[str, _Entry]:
    """Map action name -> schema file names, from the package's directory listing.

    1.6 names requests ``<Action>.json``; 2.x names them ``<Action>Request.json``. 2.1's SEND
    messages (e.g. NotifyPeriodicEventStream) have a bare ``<Action>.json`` and no response.
    """
    try:
        directory = _SCHEMA_DIRS[version]
    except KeyError:
        raise ValueError(f"unknown OCPP version {version!r}") from None
    names = {
        entry.name[:-5]
        for entry in resources.files("ocpp").joinpath(directory, "schemas").iterdir()
        if entry.name.endswith(".json")
    }
    requests: dict[str, str] = {}
    responses: dict[str, str] = {}
    for name in names:
        if name.endswith("Response"):
            responses[name[: -len("Response")]] = name
        elif version != "1.6" and name.endswith("Request"):
            requests[name[: -len("Request")]] = name
        elif version == "1.6" or name + "Response" not in names:
            # 1.6 request, or a 2.1 SEND schema (bare name, never answered).
            requests.setdefault(name, name)
    return {
        action: (requests.get(action), responses.get(action))
        for action in requests.keys() | responses.keys()
    }


def _is_decimal_multiple(instance: Any, divisor: Any) -> bool:
    """``multipleOf`` in decimal arithmetic (see the module docstring); shared by both validators."""
    try:
        return bool(Decimal(repr(instance)) % Decimal(repr(divisor)) == 0)
    except (InvalidOperation, ValueError):
        return False  # inf, or a quotient beyond the decimal context: not a sane multiple either


def _multiple_of(validator: Validator, divisor: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "number") and not _is_decimal_multiple(instance, divisor):
        yield ValidationError(f"is not a multiple of {divisor}")


@cache
def _decimal_variant(cls: type[Validator]) -> Callable[[Any], Validator]:
    return extend(cls, {"multipleOf": _multiple_of})  # type: ignore[no-untyped-call,no-any-return]


def _inline_local_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """Replace each ``{"$ref": "#/definitions/X"}`` by a copy of definition X.

    Why: jsonschema resolves every ``$ref`` on every validation through the referencing library,
    which costs about half the time of validating a 2.x TransactionEventRequest. Inlining is exact
    for these schemas: in drafts 4 and 6 a ``$ref`` object's sibling keywords are ignored, so the
    object *is* its target, and instance paths in errors do not change. A definition that refers to
    itself (directly or not) keeps its ``$ref`` and is still resolved the normal way against the
    untouched ``definitions`` of the root.
    """
    definitions = schema.get("definitions", {})
    prefix = "#/definitions/"

    def walk(node: Any, expanding: frozenset[str]) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith(prefix):
                name = ref[len(prefix):]
                if name in definitions and name not in expanding:
                    return walk(definitions[name], expanding | {name})
                return node
            return {k: v if k == "definitions" else walk(v, expanding) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, expanding) for v in node]
        return node

    inlined: dict[str, Any] = walk(schema, frozenset())
    return inlined


@cache
def _compiled(version: str, schema_name: str) -> Validator:
    """Read, parse and compile one schema file (once per process)."""
    path = resources.files("ocpp").joinpath(_SCHEMA_DIRS[version], "schemas", schema_name + ".json")
    # The OCA 2.0 schemas start with a UTF-8 BOM (see ocpp.messages.get_validator).
    schema = json.loads(path.read_text(encoding="utf-8-sig"))
    cls = validator_for(schema, default=Draft4Validator)
    return _decimal_variant(cls)(_inline_local_refs(schema))


# --- fast path ---------------------------------------------------------------------------------
# Keywords whose fastjsonschema check (with the generator overrides below) accepts exactly the
# instances jsonschema accepts, given that every constrained node also has a ``type``:
# type (overridden: JSON-native Python types only, bool is never a number, Draft 6 integers include
# integral floats, as in jsonschema's type checkers), properties, additionalProperties (boolean),
# required, enum (string values: ``isinstance(x, str) and x == v``), max/minLength (``len`` of a
# str), minimum/maximum (plain comparison), multipleOf (overridden: the shared decimal rule),
# items (a single schema), additionalItems (ignored next to such ``items`` by both), min/maxItems.
_FAST_KEYWORDS = frozenset({
    "type", "properties", "additionalProperties", "required", "enum", "maxLength", "minLength",
    "minimum", "maximum", "multipleOf", "items", "additionalItems", "minItems", "maxItems",
})
# Asserted by neither validator here (format: not asserted; default: use_default=False).
_INERT_KEYWORDS = frozenset({
    "$schema", "$id", "id", "$comment", "comment", "description", "title", "javaType", "default",
    "format", "definitions",
})
_PYTHON_TYPES = {
    "null": "NoneType", "boolean": "bool", "number": "int, float", "integer": "int", "string": "str",
    "array": "list", "object": "dict",
}


def _fast_path_obstacle(node: Any, where: str = "$") -> str | None:
    """Why ``node`` (an inlined schema) may not be fast-validated, or None if it may.

    Anything outside the keywords and value shapes listed above sends the whole schema to
    jsonschema alone: an unmatched keyword would be ignored by the fast validator, i.e. lenient.
    """
    if not isinstance(node, dict):
        return f"{where} is not an object schema"
    unknown = sorted(k for k in node if k not in _FAST_KEYWORDS and k not in _INERT_KEYWORDS)
    if unknown:
        return f"{where} uses {', '.join(unknown)}"
    if "type" not in node and any(k in _FAST_KEYWORDS for k in node):
        return f"{where} has constraints but no type"
    if "type" in node:
        types = node["type"] if isinstance(node["type"], list) else [node["type"]]
        if not types or not all(isinstance(t, str) and t in _PYTHON_TYPES for t in types):
            return f"{where} has an unusual type"
    if "enum" in node and not (isinstance(node["enum"], list) and all(isinstance(v, str) for v in node["enum"])):
        return f"{where} has a non-string enum"
    if "required" in node and not (isinstance(node["required"], list) and all(isinstance(v, str) for v in node["required"])):
        return f"{where} has an unusual required"
    if not isinstance(node.get("additionalProperties", False), bool):
        return f"{where} has a schema for additionalProperties"
    for keyword in ("maxLength", "minLength", "minItems", "maxItems", "minimum", "maximum", "multipleOf"):
        value = node.get(keyword, 0)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{where} has a non-numeric {keyword}"
    properties = node.get("properties", {})
    if not isinstance(properties, dict):
        return f"{where} has unusual properties"
    for name, subschema in properties.items():
        if (reason := _fast_path_obstacle(subschema, f"{where}.{name}")) is not None:
            return reason
    if "items" in node:
        return _fast_path_obstacle(node["items"], f"{where}[]")
    return None


class _ExactChecks:
    """fastjsonschema generator overrides that make ``type`` and ``multipleOf`` mean what they mean
    for our jsonschema validator (fastjsonschema accepts tuples as arrays, Decimal as a number, and
    divides for ``multipleOf``, which accepts 1e300 where our decimal rule rejects it)."""

    _integral_floats = False  # Draft 4: 1.0 is not an integer; Draft 6: it is

    _definition: dict[str, Any]
    l: Any
    exc: Any

    def generate_type(self) -> None:
        types = self._definition["type"]
        types = types if isinstance(types, list) else [types]
        accept = f"isinstance({{variable}}, ({', '.join(_PYTHON_TYPES[t] for t in types)},))"
        if "integer" in types and self._integral_floats:
            accept += " or (isinstance({variable}, float) and {variable}.is_integer())"
        if ("number" in types or "integer" in types) and "boolean" not in types:
            accept = f"({accept}) and not isinstance({{variable}}, bool)"
        with self.l(f"if not ({accept}):"):
            self.exc("{name} must be {}", " or ".join(types), rule="type")

    def generate_multiple_of(self) -> None:
        with self.l(
            "if isinstance({variable}, (int, float)) and not isinstance({variable}, bool)"
            " and not _is_decimal_multiple({variable}, {multipleOf!r}):"
        ):
            self.exc("{name} must be multiple of {multipleOf}", rule="multipleOf")

    @property
    def global_state(self) -> dict[str, Any]:
        state: dict[str, Any] = super().global_state  # type: ignore[misc]
        state["_is_decimal_multiple"] = _is_decimal_multiple
        return state


class _FastDraft4(_ExactChecks, CodeGeneratorDraft04):
    pass


class _FastDraft6(_ExactChecks, CodeGeneratorDraft06):
    _integral_floats = True


_FAST_GENERATORS: dict[str, type[CodeGeneratorDraft04]] = {
    str(Draft4Validator.META_SCHEMA["$schema"]): _FastDraft4,
    str(Draft6Validator.META_SCHEMA["$schema"]): _FastDraft6,
}


@cache
def _fast_compiled(version: str, schema_name: str) -> Callable[[Any], Any] | None:
    """fastjsonschema code for the schema :func:`_compiled` validates with, or None (no fast path).

    The generated function raises on any payload it does not accept; it never inserts defaults.
    """
    validator = _compiled(version, schema_name)
    generator_class = _FAST_GENERATORS.get(str(type(validator).META_SCHEMA.get("$schema")))
    if generator_class is None or _fast_path_obstacle(validator.schema) is not None:
        return None
    # Ids and definitions dropped: nothing refers to them once refs are inlined (the obstacle check
    # admits no $ref), so the resolver has nothing it could fetch.
    definition = {
        k: v for k, v in copy.deepcopy(validator.schema).items() if k not in ("$id", "id", "$schema", "definitions")
    }
    try:
        resolver = RefResolver.from_schema(definition, store={})
        generator = generator_class(
            definition, resolver=resolver, use_default=False, use_formats=False, detailed_exceptions=False,
        )
        namespace = generator.global_state
        exec(generator.func_code, namespace)  # noqa: S102 - code generated from the package's schemas
        function: Callable[[Any], Any] = namespace[resolver.get_scope_name()]
    except Exception:  # noqa: BLE001 - a schema fastjsonschema cannot compile is validated by jsonschema
        return None
    return function


def known_actions(version: str) -> frozenset[str]:
    """Every action the installed ocpp package has a schema for in ``version``."""
    return frozenset(_catalogue(version))


def has_schema(version: str, action: str, is_request: bool) -> bool:
    """Whether ``action`` has a request (or response) schema in ``version``."""
    entry = _catalogue(version).get(action)
    return entry is not None and entry[0 if is_request else 1] is not None


def validate_payload(version: str, action: str, is_request: bool, payload: Any) -> None:
    """Check ``payload`` against the ``action`` request or response schema of ``version``.

    Raises :class:`~.ocppj.FrameError` (kind per the module table; ``unique_id`` and
    ``message_type`` are left None, the caller knows them) when the payload does not conform, and
    ValueError for a version outside ``"1.6"``, ``"2.0.1"``, ``"2.1"``.
    """
    entry = _catalogue(version).get(action)
    schema_name = None if entry is None else entry[0 if is_request else 1]
    role = "request" if is_request else "response"
    if schema_name is None:
        detail = (
            f"unknown action {_clip(action)} in OCPP {version}" if entry is None
            else f"action {action} has no {role} in OCPP {version}"
        )
        raise FrameError(ErrorKind.NOT_IMPLEMENTED, detail)
    validator = _compiled(version, schema_name)
    fast = _fast_compiled(version, schema_name)
    if fast is not None:
        try:
            fast(payload)
            return
        except Exception:  # noqa: BLE001 - rejected (or the fast code failed): jsonschema decides and explains
            pass
    try:
        first = next(validator.iter_errors(payload), None)
        if first is None:
            return
        error = best_match(validator.iter_errors(payload)) or first
    except RecursionError:
        raise FrameError(ErrorKind.FORMAT, f"{action} {role}: nested too deeply to validate") from None
    raise FrameError(_kind(str(error.validator), version), f"{action} {role}: {_describe(error)}")


def _kind(keyword: str, version: str) -> ErrorKind:
    if keyword == "type":
        return ErrorKind.TYPE
    if keyword == "required":
        return ErrorKind.PROTOCOL if version == "1.6" else ErrorKind.OCCURRENCE_CONSTRAINT
    if keyword == "additionalProperties":
        return ErrorKind.FORMAT if version == "1.6" else ErrorKind.PROTOCOL
    if keyword in _PROPERTY_KEYWORDS:
        return ErrorKind.PROPERTY_CONSTRAINT
    if keyword in _OCCURRENCE_KEYWORDS:
        return ErrorKind.OCCURRENCE_CONSTRAINT
    return ErrorKind.FORMAT


def _clip(name: str, limit: int = 40) -> str:
    """Quote a name taken from the wire, bounded so a hostile peer cannot bloat logs."""
    return repr(name if len(name) <= limit else name[:limit] + "...")


def _describe(error: ValidationError) -> str:
    """``<json path> <what is wrong>``, built from the schema side only (never the value)."""
    path = error.json_path
    keyword = str(error.validator)
    limit: Any = error.validator_value  # a schema value, safe to print
    instance: Any = error.instance  # the payload value: inspected, never printed
    if keyword == "required":
        missing = next((p for p in limit if isinstance(instance, dict) and p not in instance), "?")
        return f"{path}.{missing} is required but missing"
    if keyword == "type":
        expected = limit if isinstance(limit, str) else " or ".join(map(str, limit))
        return f"{path} is not of type {expected}"
    if keyword == "additionalProperties" and isinstance(instance, dict):
        defined = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
        extra = sorted(k for k in instance if k not in defined)
        shown = ", ".join(_clip(k) for k in extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        return f"{path} has properties the schema does not define: {shown}"
    if keyword == "maxLength":
        return f"{path} is longer than {limit} characters"
    if keyword == "minLength":
        return f"{path} is shorter than {limit} characters"
    if keyword == "enum":
        allowed = ", ".join(map(str, limit)) if len(limit) <= 8 else f"{len(limit)} values"
        return f"{path} is not one of the allowed values ({allowed})"
    if keyword == "maxItems":
        return f"{path} has more than {limit} items"
    if keyword == "minItems":
        return f"{path} has fewer than {limit} items"
    if keyword == "pattern":
        return f"{path} does not match the required pattern"
    if keyword == "multipleOf":
        return f"{path} is not a multiple of {limit}"
    if keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "const", "format"):
        return f"{path} violates {keyword} {limit}"
    return f"{path} violates {keyword}"
