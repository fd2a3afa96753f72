"""Which black-box records are snapshot triggers: a pure, total function over one record.

Why this exists: the health process appends every tap record, event and command to the black box and
hands each one to :class:`appliance.blackbox.snapshot.SnapshotRecorder`, which must decide, cheaply
and without ever failing, whether that record means "keep the minutes around this moment". The rule
lives here, as data and one function, so the web page, the HIL suite and the tests share it.

Guarantees:

- :func:`fault_reason` never raises, whatever the payload: OCPP frames in the black box are redacted
  and may be truncated by the tap (``"trunc"``), event payloads come from other modules, and a
  corrupt payload must never stop the recorder. Anything it cannot read is "not a trigger".
- It reads no clock and does no I/O. It parses an OCPP frame only when the frame text names one of
  the actions below (a substring test), so the usual traffic (MeterValues, Heartbeat) costs one
  ``json.loads`` of the small tap record and nothing more.
- A reason is one short ASCII line: a category token (used in the snapshot id, e.g.
  ``ocpp_faulted``) followed by ``key=value`` details whose values are reduced to
  ``[A-Za-z0-9._:-]`` and at most 40 characters. It never contains an idTag or free text from a
  frame (``info``, ``techInfo`` and ``actualValue`` are not copied, except the enumerated values that
  matched).

OCPP rules (only CALLs, ``[2, id, action, {payload}]``, sent by the charger: tap ``dir == "up"``):

OCPP 1.6 (§4.9 Status Notification; ChargePointStatus and ChargePointErrorCode in §7)
    ``StatusNotification`` with ``status == "Faulted"`` (category ``ocpp_faulted``) or with an
    ``errorCode`` other than ``"NoError"`` in any status (category ``ocpp_error``: 1.6 reports
    e.g. ``HighTemperature`` or ``EVCommunicationError`` while the connector stays usable).

OCPP 2.0.1 / 2.1 (schemas in ``ocpp/v201/schemas``)
    - ``StatusNotification`` with ``connectorStatus == "Faulted"`` (``ocpp_faulted``).
    - ``NotifyEvent``: the schema's ``trigger`` (``Alerting | Delta | Periodic``) says *how* a
      value was reported, not that it is a fault, so it is not used on its own. Instead an
      ``eventData`` entry that is not ``cleared`` counts when it reports the standardized variable
      ``AvailabilityState == "Faulted"`` (2.0.1 lets a station report connector status this way
      instead of StatusNotification; category ``ocpp_faulted``) or ``Problem == "true"``
      (the standardized boolean "component has a problem"; category ``ocpp_problem``).
    - ``TransactionEvent`` with ``triggerReason == "AbnormalCondition"`` ("an abnormal error or
      fault condition has occurred") or with ``transactionInfo.stoppedReason`` in
      :data:`FAULT_STOPPED_REASONS` (category ``ocpp_transaction_fault``).

Other records: EVENT records whose ``kind`` is in :data:`FAULT_EVENT_KINDS` (unless they carry
``"cleared": true``, a return to normal), and COMMAND records ``{"name": "snapshot", ...}`` that
were not rejected (``"accepted"``/``"verified"`` false or a ``"status"`` in
:data:`REJECTED_COMMAND_STATUSES` means the command was refused and triggers nothing).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from appliance import strictjson
from appliance.blackbox.record import Record, RecordKind

__all__ = [
    "FAULT_ACTIONS",
    "FAULT_EVENT_KINDS",
    "FAULT_STOPPED_REASONS",
    "REJECTED_COMMAND_STATUSES",
    "SNAPSHOT_COMMAND",
    "fault_reason",
    "reason_slug",
]

#: EVENT record kinds (``{"kind": ...}``) that cut a snapshot. Produced by the health process:
#: the relay watchdog power-cycled a charger, a temperature sensor crossed its threshold, a meter
#: stopped answering, a generic fault, and the billing cross-check (meter vs. OCPP energy) deviated.
FAULT_EVENT_KINDS: Final[frozenset[str]] = frozenset(
    {"watchdog_power_cycle", "over_temperature", "meter_lost", "fault", "billing_deviation"}
)

#: 2.0.1 ReasonEnumType values that mean the transaction was ended by a fault or a safety stop.
#: ``PowerLoss``, ``Reboot``, ``Other`` and the user/limit reasons are not faults by themselves.
FAULT_STOPPED_REASONS: Final[frozenset[str]] = frozenset(
    {"EmergencyStop", "GroundFault", "OvercurrentFault", "PowerQuality"}
)

#: OCPP actions whose CALL payload is inspected; any other action is not a trigger.
FAULT_ACTIONS: Final[frozenset[str]] = frozenset({"StatusNotification", "NotifyEvent", "TransactionEvent"})

#: The remote command (COMMAND record ``{"name": ...}``) that asks for a snapshot.
SNAPSHOT_COMMAND: Final = "snapshot"

#: COMMAND record ``status`` values meaning the command was refused (bad signature, not allowed).
REJECTED_COMMAND_STATUSES: Final[frozenset[str]] = frozenset(
    {"rejected", "refused", "denied", "invalid", "unauthorized", "forbidden"}
)

_CALL: Final = 2
_MAX_VALUE_CHARS: Final = 40
_UNSAFE = re.compile(r"[^A-Za-z0-9._:-]+")
_SLUG_UNSAFE = re.compile(r"[^a-z0-9_-]+")


# Substrings tested on the raw frame text before it is parsed (action names appear verbatim).
_ACTION_HINTS: Final = tuple(sorted(FAULT_ACTIONS))


def _loads(data: str | bytes | bytearray | memoryview) -> Any:
    """``json.loads`` that returns None instead of raising (bad UTF-8, bad JSON, deep nesting)."""
    try:
        if not isinstance(data, str):
            data = bytes(data).decode("utf-8")
        return strictjson.decode(data)
    except (ValueError, RecursionError, TypeError):
        return None


def _value(v: Any) -> str:
    """A detail value reduced to a safe token (no spaces, no quotes, bounded)."""
    if isinstance(v, bool) or v is None:
        text = str(v).lower()
    elif isinstance(v, (int, str)):
        text = str(v)
    else:
        text = type(v).__name__
    text = _UNSAFE.sub("_", text)[:_MAX_VALUE_CHARS]
    return text or "_"


def _reason(category: str, **details: Any) -> str:
    parts = [category]
    parts.extend(f"{k}={_value(v)}" for k, v in details.items() if v is not None and v != "")
    return " ".join(parts)


def reason_slug(reason: str, *, default: str = "snapshot", max_len: int = 32) -> str:
    """The category of a reason as a file-name-safe token: ``"ocpp_faulted cp=CP1"`` -> ``ocpp_faulted``.

    Used for snapshot ids. Lower case ``[a-z0-9_-]``, at most ``max_len`` characters; ``default``
    when nothing usable is left (e.g. a CLI reason made only of punctuation).
    """
    head = reason.strip().split(maxsplit=1)[0] if reason.strip() else ""
    slug = _SLUG_UNSAFE.sub("_", head.lower()).strip("_-")[:max_len].strip("_-")
    return slug or default


def _mapping(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


def fault_reason(record: Record) -> str | None:
    """The snapshot reason if ``record`` is a trigger, else None. Never raises (see module doc)."""
    try:
        kind = record.kind
        payload = record.payload
    except AttributeError:
        return None
    if kind == RecordKind.OCPP:
        return _ocpp_reason(payload)
    if kind == RecordKind.EVENT:
        return _event_reason(payload)
    if kind == RecordKind.COMMAND:
        return _command_reason(payload)
    return None


# ---- events and commands ---------------------------------------------------------------------


def _event_reason(payload: Any) -> str | None:
    event = _loads(payload)
    if not isinstance(event, dict):
        return None
    kind = event.get("kind")
    if type(kind) is not str or kind not in FAULT_EVENT_KINDS or event.get("cleared") is True:
        return None
    return _reason(kind, cp=event.get("cp"), connector=event.get("connector"),
                   meter=event.get("meter"), sensor=event.get("sensor"))


def _command_reason(payload: Any) -> str | None:
    command = _loads(payload)
    if not isinstance(command, dict) or command.get("name") != SNAPSHOT_COMMAND:
        return None
    if command.get("accepted") is False or command.get("verified") is False:
        return None
    status = command.get("status")
    if type(status) is str and status.lower() in REJECTED_COMMAND_STATUSES:
        return None
    return _reason("remote_command", by=command.get("operator") or command.get("key_id"))


# ---- OCPP ------------------------------------------------------------------------------------


def _ocpp_reason(payload: Any) -> str | None:
    tap = _loads(payload)
    if not isinstance(tap, dict) or tap.get("dir") != "up" or tap.get("ev", "frame") != "frame":
        return None
    frame_text = tap.get("f")
    if type(frame_text) is not str or not any(hint in frame_text for hint in _ACTION_HINTS):
        return None
    frame = _loads(frame_text)
    # A truncated frame (tap "trunc") is not valid JSON and ends here, as does anything that is not
    # a CALL. Element count is not checked strictly: a CALL is read if its first four are right.
    if type(frame) is not list or len(frame) < 4 or type(frame[0]) is not int or frame[0] != _CALL:
        return None
    action, body = frame[2], frame[3]
    if type(action) is not str or not isinstance(body, dict):
        return None
    cp = tap.get("cp")
    if action == "StatusNotification":
        return _status_notification(cp, body)
    if action == "NotifyEvent":
        return _notify_event(cp, body)
    if action == "TransactionEvent":
        return _transaction_event(cp, body)
    return None


def _status_notification(cp: Any, body: dict[str, Any]) -> str | None:
    # 2.0.1/2.1: connectorStatus, evseId, connectorId (no error code in this message).
    if "connectorStatus" in body:
        if body.get("connectorStatus") == "Faulted":
            return _reason("ocpp_faulted", cp=cp, evse=body.get("evseId"), connector=body.get("connectorId"))
        return None
    # 1.6: status, errorCode (required), vendorErrorCode.
    status = body.get("status")
    error = body.get("errorCode")
    error_detail = error if type(error) is str and error != "NoError" else None
    if status == "Faulted":
        return _reason("ocpp_faulted", cp=cp, connector=body.get("connectorId"), error=error_detail,
                       vendor_error=body.get("vendorErrorCode"))
    if error_detail is not None:
        return _reason("ocpp_error", cp=cp, connector=body.get("connectorId"), error=error_detail,
                       status=status if type(status) is str else None,
                       vendor_error=body.get("vendorErrorCode"))
    return None


def _notify_event(cp: Any, body: dict[str, Any]) -> str | None:
    events = body.get("eventData")
    if type(events) is not list:
        return None
    for event in events:
        if not isinstance(event, dict) or event.get("cleared") is True:
            continue
        component = _mapping(event.get("component"))
        variable = _mapping(event.get("variable"))
        name = variable.get("name")
        value = event.get("actualValue")
        if type(value) is not str:
            continue
        if name == "AvailabilityState" and value == "Faulted":
            category = "ocpp_faulted"
        elif name == "Problem" and value.strip().lower() == "true":
            category = "ocpp_problem"
        else:
            continue
        evse = _mapping(component.get("evse"))
        return _reason(category, cp=cp, component=component.get("name"), evse=evse.get("id"),
                       connector=evse.get("connectorId"), variable=name, tech_code=event.get("techCode"))
    return None


def _transaction_event(cp: Any, body: dict[str, Any]) -> str | None:
    trigger = body.get("triggerReason")
    info = _mapping(body.get("transactionInfo"))
    stopped = info.get("stoppedReason")
    stopped_fault = stopped if type(stopped) is str and stopped in FAULT_STOPPED_REASONS else None
    if trigger != "AbnormalCondition" and stopped_fault is None:
        return None
    evse = _mapping(body.get("evse"))
    return _reason("ocpp_transaction_fault", cp=cp, evse=evse.get("id"),
                   trigger=trigger if type(trigger) is str else None, stopped=stopped_fault)
