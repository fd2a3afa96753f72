"""OCPP-J frame codec: the RPC envelope of OCPP 1.6J, 2.0.1 and 2.1, without I/O.

Why this exists: the value channel forwards frames byte-for-byte and only *looks* at them, after
forwarding (or before, in enforce mode, for CALLs). Looking needs one cheap, total parse of the
envelope ``[type, id, ...]`` and a table of which CALLERROR code each OCPP version prescribes for
each kind of fault. Payload schemas live in :mod:`.schemas`; this module never reads a file.

Guarantees:
- :func:`parse_frame` does exactly one ``json.loads``-equivalent pass and raises nothing but
  :class:`FrameError`, whatever the input (deep nesting, huge numbers, ``NaN``, lone surrogates).
- A :class:`FrameError`'s ``detail`` names positions and limits, never payload values: payloads
  carry idTags, and details end up in logs and in CALLERRORs.
- :func:`build_callerror` always returns ASCII-only compact JSON that parses back as a CALLERROR.

Spec references: "OCPP-J 1.6" means *OCPP JSON Specification 1.6* §4 (RPC framework);
"2.0.1 Part 4" means *OCPP 2.0.1 Part 4 - JSON over WebSockets implementation guide* §4;
"2.1 Part 4" likewise for OCPP 2.1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Any

from . import strictjson

__all__ = [
    "ErrorKind",
    "Frame",
    "FrameError",
    "MessageType",
    "UNKNOWN_UNIQUE_ID",
    "VERSIONS",
    "build_callerror",
    "error_code_for",
    "parse_frame",
    "version_of",
]


class MessageType(IntEnum):
    """The MessageTypeId, first element of every OCPP-J frame (OCPP-J 1.6 §4.1.3)."""

    CALL = 2
    CALLRESULT = 3
    CALLERROR = 4
    #: OCPP 2.1 only (2.1 Part 4 §4.2): a peer's objection to a CALLRESULT it received. Parsed by
    #: :func:`parse_frame` so a 2.1 link is not flagged on every such frame; the inspector treats it
    #: as an unknown message type on 1.6 and 2.0.1.
    CALLRESULTERROR = 5
    #: OCPP 2.1 only (2.1 Part 4 §4.2): an unconfirmed CALL that is never answered
    #: (e.g. NotifyPeriodicEventStream). Same shape as CALL.
    SEND = 6


class ErrorKind(Enum):
    """What is wrong with a frame, independent of the OCPP version that names it.

    :func:`error_code_for` turns a kind into the version's CALLERROR code. Kinds split by layer,
    because OCPP 2.x has a code for a broken envelope that 1.6 lacks:

    - ``RPC_FRAMEWORK``: the frame is not a readable OCPP-J RPC message: not JSON, not a
      non-empty array, the message type id is not an integer, the wrong number of elements, or the
      unique id / action / error code is not a string (or the id is longer than 36 characters).
    - ``MESSAGE_TYPE_NOT_SUPPORTED``: the message type id is an integer outside the known set.
    - The rest concern the *payload* of a well-formed frame: ``FORMAT`` (payload is not a JSON
      object, or does not match the PDU structure, e.g. nesting the validator cannot follow),
      ``PROTOCOL`` (payload incomplete (1.6) / not conform the PDU structure (2.x)), ``TYPE``,
      ``PROPERTY_CONSTRAINT``, ``OCCURRENCE_CONSTRAINT``, ``NOT_IMPLEMENTED`` (unknown action),
      ``NOT_SUPPORTED`` (known action the receiver does not support).

    Which schema failure becomes which kind is decided (per version) in :mod:`.schemas`.
    """

    RPC_FRAMEWORK = "rpc_framework"
    MESSAGE_TYPE_NOT_SUPPORTED = "message_type_not_supported"
    FORMAT = "format"
    PROTOCOL = "protocol"
    TYPE = "type"
    PROPERTY_CONSTRAINT = "property_constraint"
    OCCURRENCE_CONSTRAINT = "occurrence_constraint"
    NOT_IMPLEMENTED = "not_implemented"
    NOT_SUPPORTED = "not_supported"


class FrameError(Exception):
    """A frame or payload that breaks OCPP-J, with enough context to log it and answer it.

    ``unique_id`` is set when the frame's id could be read and is a valid id (a string of at most
    36 characters); ``message_type`` when the type element was an integer (known or not).
    ``detail`` is a short human reason that never quotes payload values.
    """

    __slots__ = ("detail", "kind", "message_type", "unique_id")

    def __init__(
        self,
        kind: ErrorKind,
        detail: str,
        *,
        unique_id: str | None = None,
        message_type: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.unique_id = unique_id
        self.message_type = message_type

    def __repr__(self) -> str:
        return (
            f"FrameError(kind={self.kind.name}, detail={self.detail!r}, "
            f"unique_id={self.unique_id!r}, message_type={self.message_type!r})"
        )


@dataclass(frozen=True, slots=True)
class Frame:
    """One parsed OCPP-J message.

    CALL and SEND carry ``action`` and ``payload``; CALLRESULT carries ``payload``; CALLERROR and
    CALLRESULTERROR carry ``error_code``, ``error_description`` and ``error_details`` (payload None).
    """

    type: MessageType
    unique_id: str
    action: str | None = None
    payload: Any = None
    error_code: str | None = None
    error_description: str | None = None
    error_details: Any = None


#: Versions this module knows, as returned by :func:`version_of`.
VERSIONS = ("1.6", "2.0.1", "2.1")

#: Reply id when the offending frame's id could not be read. 2.0.1 Part 4 §4.2.3 (CALLERROR)
#: prescribes "-1" for that case; OCPP-J 1.6 is silent, and we use the same value there (the
#: ocpp-rpc and ocpp-kit implementations do too) rather than inventing a second convention.
UNKNOWN_UNIQUE_ID = "-1"

#: OCPP-J 1.6 §4.1.4 and 2.0.1 Part 4 §4.1.4: "maximum of 36 characters, to allow for GUIDs".
MAX_UNIQUE_ID_LENGTH = 36

#: 2.0.1 Part 4 §4.2.3: errorDescription is at most 255 characters.
MAX_ERROR_DESCRIPTION_LENGTH = 255

_SUBPROTOCOLS = {"ocpp1.6": "1.6", "ocpp2.0.1": "2.0.1", "ocpp2.1": "2.1"}

# Element count per message type (OCPP-J 1.6 §4.2, 2.1 Part 4 §4.2).
_ARITY = {
    MessageType.CALL: 4,
    MessageType.CALLRESULT: 3,
    MessageType.CALLERROR: 5,
    MessageType.CALLRESULTERROR: 5,
    MessageType.SEND: 4,
}
_BY_NUMBER = {int(t): t for t in MessageType}


def parse_frame(text: str | bytes) -> Frame:
    """Parse one OCPP-J text frame; raise :class:`FrameError` for anything that is not one.

    Shapes (OCPP-J 1.6 §4.2, 2.0.1 Part 4 §4.2): CALL ``[2, id, action, {payload}]``, CALLRESULT
    ``[3, id, {payload}]``, CALLERROR ``[4, id, code, description, {details}]``; 2.1 adds
    CALLRESULTERROR ``[5, id, code, description, {details}]`` and SEND ``[6, id, action, {payload}]``.
    Element counts are checked exactly, as the specifications state them ("always consists of").
    ``bytes`` are accepted so a binary frame can be classified too; they must be UTF-8.
    """
    if not isinstance(text, str):
        try:
            text = bytes(text).decode("utf-8")
        except (UnicodeDecodeError, TypeError):
            raise FrameError(ErrorKind.RPC_FRAMEWORK, "frame is not UTF-8 text") from None
    try:
        msg = strictjson.decode(text)
    except (ValueError, RecursionError):
        # ValueError covers JSONDecodeError, NaN/Infinity and ints beyond sys.int_info limits.
        raise FrameError(ErrorKind.RPC_FRAMEWORK, "frame is not valid JSON") from None
    if type(msg) is not list or not msg:
        raise FrameError(ErrorKind.RPC_FRAMEWORK, "frame is not a non-empty JSON array")
    number = msg[0]
    if type(number) is not int:
        raise FrameError(ErrorKind.RPC_FRAMEWORK, "message type id is not an integer")
    count = len(msg)
    uid = msg[1] if count > 1 else None
    good_uid: str | None = uid if type(uid) is str and len(uid) <= MAX_UNIQUE_ID_LENGTH else None
    mtype = _BY_NUMBER.get(number)
    if mtype is None:
        raise FrameError(
            ErrorKind.MESSAGE_TYPE_NOT_SUPPORTED,
            f"message type id {number} is not one of 2-6" if -1000 < number < 1000
            else "message type id is out of range",
            unique_id=good_uid,
            message_type=number,
        )
    arity = _ARITY[mtype]
    if count != arity:
        raise FrameError(
            ErrorKind.RPC_FRAMEWORK,
            f"{mtype.name} must have {arity} elements, got {count}",
            unique_id=good_uid,
            message_type=number,
        )
    if good_uid is None:
        reason = "is not a string" if type(uid) is not str else f"is longer than {MAX_UNIQUE_ID_LENGTH}"
        raise FrameError(ErrorKind.RPC_FRAMEWORK, f"unique id {reason}", message_type=number)
    uid = good_uid
    if mtype is MessageType.CALL or mtype is MessageType.SEND:
        action, payload = msg[2], msg[3]
        if type(action) is not str:
            raise FrameError(ErrorKind.RPC_FRAMEWORK, "action is not a string", unique_id=uid, message_type=number)
        if type(payload) is not dict:
            raise FrameError(ErrorKind.FORMAT, "payload is not a JSON object", unique_id=uid, message_type=number)
        return Frame(mtype, uid, action, payload)
    if mtype is MessageType.CALLRESULT:
        payload = msg[2]
        if type(payload) is not dict:
            raise FrameError(ErrorKind.FORMAT, "payload is not a JSON object", unique_id=uid, message_type=number)
        return Frame(mtype, uid, None, payload)
    code, description, details = msg[2], msg[3], msg[4]
    if type(code) is not str:
        raise FrameError(ErrorKind.RPC_FRAMEWORK, "error code is not a string", unique_id=uid, message_type=number)
    if type(description) is not str:
        raise FrameError(
            ErrorKind.RPC_FRAMEWORK, "error description is not a string", unique_id=uid, message_type=number
        )
    if type(details) is not dict:
        raise FrameError(ErrorKind.FORMAT, "error details is not a JSON object", unique_id=uid, message_type=number)
    return Frame(mtype, uid, None, None, code, description, details)


# CALLERROR codes per version. Sources:
#   1.6:   OCPP-J 1.6 §4.2.3 table "Valid Error Codes", with the spellings the 1.6J errata sheet
#          (v1.0, §5 "Known issues that will not be fixed", 5.1 and 5.2) keeps: FormationViolation and
#          OccurenceConstraintViolation. 1.6 has no RpcFrameworkError or MessageTypeNotSupported.
#   2.0.1: 2.0.1 Part 4 §4.3 "RPC Framework Error Codes": FormatViolation replaces FormationViolation;
#          RpcFrameworkError and MessageTypeNotSupported are new. The occurrence code keeps the single
#          "r" in 2.0.1 (see ocpp/exceptions.py, mobilityhouse/ocpp#490, lorenzodonini/ocpp-go#331).
#   2.1:   2.1 Part 4 fixes the spelling: OccurrenceConstraintViolation (ocpp.exceptions says the same).
_CODES_16 = {
    ErrorKind.RPC_FRAMEWORK: "FormationViolation",
    ErrorKind.MESSAGE_TYPE_NOT_SUPPORTED: "GenericError",
    ErrorKind.FORMAT: "FormationViolation",
    ErrorKind.PROTOCOL: "ProtocolError",
    ErrorKind.TYPE: "TypeConstraintViolation",
    ErrorKind.PROPERTY_CONSTRAINT: "PropertyConstraintViolation",
    ErrorKind.OCCURRENCE_CONSTRAINT: "OccurenceConstraintViolation",
    ErrorKind.NOT_IMPLEMENTED: "NotImplemented",
    ErrorKind.NOT_SUPPORTED: "NotSupported",
}
_CODES_201 = {
    **_CODES_16,
    ErrorKind.RPC_FRAMEWORK: "RpcFrameworkError",
    ErrorKind.MESSAGE_TYPE_NOT_SUPPORTED: "MessageTypeNotSupported",
    ErrorKind.FORMAT: "FormatViolation",
}
_CODES_21 = {**_CODES_201, ErrorKind.OCCURRENCE_CONSTRAINT: "OccurrenceConstraintViolation"}
_CODES = {"1.6": _CODES_16, "2.0.1": _CODES_201, "2.1": _CODES_21}


def error_code_for(kind: ErrorKind, version: str) -> str:
    """The CALLERROR ``errorCode`` that ``version`` prescribes for ``kind``.

    ======================== ============================ ============================= ==============================
    kind                     1.6                          2.0.1                         2.1
    ======================== ============================ ============================= ==============================
    RPC_FRAMEWORK            FormationViolation [1]_      RpcFrameworkError [2]_        RpcFrameworkError
    MESSAGE_TYPE_NOT_SUPP.   GenericError [3]_            MessageTypeNotSupported       MessageTypeNotSupported
    FORMAT                   FormationViolation           FormatViolation               FormatViolation
    PROTOCOL                 ProtocolError                ProtocolError                 ProtocolError
    TYPE                     TypeConstraintViolation      TypeConstraintViolation       TypeConstraintViolation
    PROPERTY_CONSTRAINT      PropertyConstraintViolation  PropertyConstraintViolation   PropertyConstraintViolation
    OCCURRENCE_CONSTRAINT    OccurenceConstraintViolation OccurenceConstraintViolation  OccurrenceConstraintViolation
    NOT_IMPLEMENTED          NotImplemented               NotImplemented                NotImplemented
    NOT_SUPPORTED            NotSupported                 NotSupported                  NotSupported
    ======================== ============================ ============================= ==============================

    .. [1] OCPP-J 1.6 §4.2.3: "Payload for Action is syntactically incorrect or not conform the PDU
       structure for Action" is the closest 1.6 code for a frame that cannot be read; the ocpp
       library raises its FormationViolation equivalent for non-JSON input too.
    .. [2] 2.0.1 Part 4 §4.3: "Content of the call is not a valid RPC Request, for example:
       MessageId could not be read."
    .. [3] OCPP-J 1.6 §4.1.3 says a receiver SHALL ignore an unknown message type; should one need
       a code anyway, GenericError is the only 1.6 code for "anything else".

    Raises ValueError for a version outside :data:`VERSIONS`.
    """
    try:
        return _CODES[version][kind]
    except KeyError:
        raise ValueError(f"unknown OCPP version {version!r}") from None


def build_callerror(
    unique_id: str | None,
    code: str,
    description: str,
    details: dict[str, Any] | None = None,
) -> str:
    """A CALLERROR frame as compact JSON: ``[4, id, code, description, details]``.

    ``unique_id=None`` (the offending frame's id could not be read) becomes ``"-1"``, as 2.0.1
    Part 4 §4.2.3 prescribes; see :data:`UNKNOWN_UNIQUE_ID` for 1.6. The description is cut to 255
    characters (2.0.1 Part 4 §4.2.3); details default to ``{}``, which both versions require
    when there are none. The output is ASCII (``ensure_ascii``): an id received as a JSON escape
    for a lone surrogate must not make the reply unencodable as UTF-8.
    """
    frame = [
        int(MessageType.CALLERROR),
        UNKNOWN_UNIQUE_ID if unique_id is None else unique_id,
        code,
        description[:MAX_ERROR_DESCRIPTION_LENGTH],
        {} if details is None else details,
    ]
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def version_of(subprotocol: str | None) -> str | None:
    """The OCPP version a negotiated WebSocket subprotocol names, or None.

    The names are the ones OCPP-J 1.6 §3 and 2.0.1/2.1 Part 4 §3 register ("ocpp1.6",
    "ocpp2.0.1", "ocpp2.1"), matched exactly, as RFC 6455 subprotocol tokens are. Anything else
    (including "ocpp2.0", for which the ocpp package ships no schemas here) gives None.
    """
    if subprotocol is None:
        return None
    return _SUBPROTOCOLS.get(subprotocol)
