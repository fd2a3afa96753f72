"""FrameInspector: what one proxied charge-point conversation looks like, frame by frame.

Why this exists: the proxy forwards bytes; this sans-I/O state machine tells it, per frame, what
it just carried (parsed frame, protocol error, matched CALL and its latency) and, in enforce mode,
whether a CALL may pass at all and what CALLERROR answers it instead. It never sleeps, reads a
clock (``now_ns`` comes in) or touches a socket, so the same object serves the live proxy, the
simulators and replay tools.

Guarantees:
- One JSON parse per frame; payload validation uses the cached validators of :mod:`.schemas`.
- Memory is bounded: at most ``pending_max`` outstanding CALLs per direction (the oldest is evicted
  and counted), and a stored action name is clipped to :data:`MAX_STORED_ACTION`.
- Modes: ``off`` parses (latency tracking, framing errors) but validates no payload; ``log``
  validates and reports; ``enforce`` also stops invalid CALLs. ``forward`` is False only in enforce
  mode, only for a frame that is, or may be, a CALL (see :meth:`FrameInspector.observe`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

from ..ocppj import (
    VERSIONS,
    MAX_UNIQUE_ID_LENGTH,
    ErrorKind,
    Frame,
    FrameError,
    MessageType,
    build_callerror,
    error_code_for,
    parse_frame,
)
from ..strictjson import decode as decode_json
from .schemas import fast_validator, fast_validators, validate_payload

__all__ = ["Direction", "FrameInspector", "MAX_STORED_ACTION", "Mode", "Observation"]

#: Longest action name kept in the pending table. OCPP action names are under 40 characters; a
#: frame's action is otherwise only bounded by the WebSocket frame size.
MAX_STORED_ACTION = 64


class Direction(Enum):
    """Which way a frame travels through the gateway."""

    UP = "up"  # charger -> CSMS
    DOWN = "down"  # CSMS -> charger


_OPPOSITE = {Direction.UP: Direction.DOWN, Direction.DOWN: Direction.UP}
_NOTHING: tuple[None, None] = (None, None)
_UNSEEN = object()
_V21_ONLY = (int(MessageType.CALLRESULTERROR), int(MessageType.SEND))


class Mode(StrEnum):
    """Validation mode (config ``validation``); a StrEnum so ``mode == "enforce"`` reads naturally."""

    OFF = "off"
    LOG = "log"
    ENFORCE = "enforce"


@dataclass(frozen=True, slots=True)
class Observation:
    """What :meth:`FrameInspector.observe` learnt about one frame.

    - ``frame``: the parsed frame, None when the envelope could not be parsed.
    - ``error``: the protocol or payload error, if any (also set for forwarded frames).
    - ``action``: the CALL's action; for a CALLRESULT/CALLERROR the action of the CALL it answers
      (None when no outstanding CALL matched).
    - ``latency_ns``: for a matched CALLRESULT/CALLERROR, ``now_ns`` minus the CALL's ``now_ns``.
    - ``answered_direction``: for a matched result, the direction of the CALL it answers:
      ``Direction.UP`` means a charger's CALL was answered by the CSMS (CSMS response time),
      ``Direction.DOWN`` a CSMS CALL answered by the charger.
    - ``forward``: False only in enforce mode for a frame that must not reach the other side.
    - ``reply``: in that case, the CALLERROR text to send back to the frame's sender.
    """

    frame: Frame | None
    error: FrameError | None = None
    action: str | None = None
    latency_ns: int | None = None
    answered_direction: Direction | None = None
    forward: bool = True
    reply: str | None = None


class FrameInspector:
    """Per-connection inspector of an OCPP-J conversation (one per proxied charge point).

    ``version`` is the negotiated OCPP version ("1.6", "2.0.1", "2.1", see
    :func:`~.ocppj.version_of`) or None when no known subprotocol was agreed; then payloads are not
    validated (no schema set is known to apply) and enforce-mode replies use the 1.6 codes, since
    a client that negotiates no subprotocol is in practice a legacy 1.6 charger.

    Counters (plain ints, read by the stats layer): ``frames`` observed, ``invalid`` frames with an
    error, ``evicted`` pending CALLs dropped because the table was full, ``unmatched`` results
    that answered no known CALL.
    """

    def __init__(self, version: str | None, mode: str, pending_max: int = 256) -> None:
        if version is not None and version not in VERSIONS:
            raise ValueError(f"unknown OCPP version {version!r}")
        if pending_max < 1:
            raise ValueError("pending_max must be at least 1")
        self.version = version
        self.mode = Mode(mode)
        self.pending_max = pending_max
        self.frames = 0
        self.invalid = 0
        self.evicted = 0
        self.unmatched = 0
        self._validate = version is not None and self.mode is not Mode.OFF
        self._enforce = self.mode is Mode.ENFORCE
        self._code_version = version or "1.6"
        self._version_name = f"OCPP {version}" if version else "a connection without OCPP subprotocol"
        # Outstanding CALLs per direction they travelled: unique id -> (action, now_ns).
        # dicts keep insertion order, so the first key is the oldest.
        self._pending: dict[Direction, dict[str, tuple[str, int]]] = {Direction.UP: {}, Direction.DOWN: {}}
        # account()'s lookups: fast validators by action (shared per version), the pending table a
        # result travelling each way answers.
        self._fast_requests = fast_validators(version, True) if self._validate else {}
        self._fast_responses = fast_validators(version, False) if self._validate else {}
        self._answers = {d: self._pending[_OPPOSITE[d]] for d in Direction}

    def pending_count(self, direction: Direction | None = None) -> int:
        """Outstanding CALLs travelling ``direction``, or in both directions when None."""
        if direction is not None:
            return len(self._pending[direction])
        return len(self._pending[Direction.UP]) + len(self._pending[Direction.DOWN])

    def observe(self, direction: Direction, text: str, now_ns: int) -> Observation:
        """Account for one text frame travelling ``direction`` at ``now_ns``.

        In enforce mode, ``forward`` is False (with a CALLERROR ``reply`` for the sender) for:
        a CALL whose envelope or payload is invalid, and a frame too broken to tell whether it was
        a CALL (not JSON, not an array, no integer message type), answered with id "-1" per 2.0.1
        Part 4 §4.2.3 (RpcFrameworkError; FormationViolation on 1.6). Everything else is forwarded
        with ``error`` set: a faulty CALLRESULT or CALLERROR cannot be answered (OCPP-J 1.6 §4.2.3 and
        2.0.1 Part 4 §4.2.3 define CALLERROR as a response to a CALL only), a SEND is never
        answered, and an unknown message type is for the receiver to ignore (OCPP-J 1.6 §4.1.3) or
        answer (2.0.1: MessageTypeNotSupported) itself.
        """
        self.frames += 1
        try:
            frame = parse_frame(text)
        except FrameError as err:
            return self._broken(err)
        mtype = frame.type
        if mtype is MessageType.CALL:
            return self._call(direction, frame, now_ns)
        if mtype is MessageType.CALLRESULT or mtype is MessageType.CALLERROR:
            return self._result(direction, frame, now_ns)
        # SEND or CALLRESULTERROR: defined by OCPP 2.1 only.
        if self.version != "2.1":
            self.invalid += 1
            unknown = FrameError(
                ErrorKind.MESSAGE_TYPE_NOT_SUPPORTED,
                f"{mtype.name} (message type {int(mtype)}) is not defined in {self._version_name}",
                unique_id=frame.unique_id,
                message_type=int(mtype),
            )
            return Observation(frame, unknown, frame.action)
        if mtype is MessageType.SEND and self._validate:
            assert frame.action is not None
            invalid = self._check(frame, frame.action, True)
            if invalid is not None:
                self.invalid += 1
                return Observation(frame, invalid, frame.action)
        return Observation(frame, None, frame.action)

    def account(self, direction: Direction, text: str, now_ns: int) -> tuple[FrameError | None, int | None]:
        """:meth:`observe` for a frame that is already forwarded: the same counters and pending table,
        but only ``(error, latency_ns)`` comes back.

        Why: this runs for every frame the proxy carries, and building the Frame and Observation
        (frozen dataclasses) cost more than the JSON parse. A well-formed CALL, or a CALLRESULT that
        answers a pending CALL, whose payload the fast validator accepts is accounted for here;
        anything else goes through :meth:`observe`, which decides and explains. Nothing is changed
        before that choice is made, so nothing is counted twice.
        """
        try:
            msg = decode_json(text)
        except (ValueError, RecursionError):
            msg = None
        if type(msg) is list:
            count = len(msg)
            if count == 4:
                mtype, uid, action, payload = msg
                if (mtype == 2 and type(mtype) is int and type(uid) is str and len(uid) <= MAX_UNIQUE_ID_LENGTH
                        and type(action) is str and type(payload) is dict):
                    if self._validate and not self._passes(self._fast_requests, action, True, payload):
                        return self._described(direction, text, now_ns)
                    self.frames += 1
                    self._track(direction, uid, action, now_ns)
                    return _NOTHING
            elif count == 3:
                mtype, uid, payload = msg
                if (mtype == 3 and type(mtype) is int and type(uid) is str and len(uid) <= MAX_UNIQUE_ID_LENGTH
                        and type(payload) is dict):
                    pending = self._answers[direction]
                    entry = pending.get(uid)
                    if entry is not None:
                        if self._validate and not self._passes(self._fast_responses, entry[0], False, payload):
                            return self._described(direction, text, now_ns)
                        del pending[uid]
                        self.frames += 1
                        return None, now_ns - entry[1]
        return self._described(direction, text, now_ns)

    def _passes(self, table: dict[str, Any], action: str, is_request: bool, payload: dict[str, Any]) -> bool:
        """Whether the fast validator for ``action`` exists and accepts ``payload``; False means
        "let observe() decide" (no fast path, an unknown action, or a rejection to explain)."""
        validate = table.get(action, _UNSEEN)
        if validate is _UNSEEN:
            validate = fast_validator(self.version, action, is_request)  # type: ignore[arg-type]
        if validate is None:
            return False
        try:
            validate(payload)
        except Exception:  # noqa: BLE001 - rejected, or the generated code failed
            return False
        return True

    def _described(self, direction: Direction, text: str, now_ns: int) -> tuple[FrameError | None, int | None]:
        obs = self.observe(direction, text, now_ns)
        return obs.error, obs.latency_ns

    def _broken(self, err: FrameError) -> Observation:
        """A frame whose envelope could not be parsed."""
        self.invalid += 1
        if err.message_type in _V21_ONLY and self.version != "2.1":
            # To 1.6 and 2.0.1 a type 5 or 6 frame is an unknown type, however broken its tail.
            err = FrameError(
                ErrorKind.MESSAGE_TYPE_NOT_SUPPORTED,
                f"message type {err.message_type} is not defined in {self._version_name}",
                unique_id=err.unique_id,
                message_type=err.message_type,
            )
        if self._enforce and (err.message_type is None or err.message_type == MessageType.CALL):
            reply = build_callerror(err.unique_id, error_code_for(err.kind, self._code_version), err.detail)
            return Observation(None, err, forward=False, reply=reply)
        return Observation(None, err)

    def _call(self, direction: Direction, frame: Frame, now_ns: int) -> Observation:
        action = frame.action
        assert action is not None
        if self._validate:
            err = self._check(frame, action, True)
            if err is not None:
                self.invalid += 1
                if self._enforce:
                    code = error_code_for(err.kind, self._code_version)
                    return Observation(
                        frame, err, action, forward=False, reply=build_callerror(frame.unique_id, code, err.detail)
                    )
                self._track(direction, frame.unique_id, action, now_ns)
                return Observation(frame, err, action)
        self._track(direction, frame.unique_id, action, now_ns)
        return Observation(frame, None, action)

    def _result(self, direction: Direction, frame: Frame, now_ns: int) -> Observation:
        answered = _OPPOSITE[direction]
        entry = self._pending[answered].pop(frame.unique_id, None)
        if entry is None:
            self.unmatched += 1
            return Observation(frame)
        action, sent_ns = entry
        err = None
        if self._validate and frame.type is MessageType.CALLRESULT:
            err = self._check(frame, action, False)
            # An unknown action was already reported on its CALL; its result adds nothing.
            if err is not None and err.kind is ErrorKind.NOT_IMPLEMENTED:
                err = None
            if err is not None:
                self.invalid += 1
        return Observation(frame, err, action, now_ns - sent_ns, answered)

    def _check(self, frame: Frame, action: str, is_request: bool) -> FrameError | None:
        """Schema-check a payload; return the error with the frame's id and type filled in."""
        assert self.version is not None
        try:
            validate_payload(self.version, action, is_request, frame.payload)
        except FrameError as err:
            return FrameError(err.kind, err.detail, unique_id=frame.unique_id, message_type=int(frame.type))
        return None

    def _track(self, direction: Direction, unique_id: str, action: str, now_ns: int) -> None:
        pending = self._pending[direction]
        if unique_id in pending:
            # A reused id replaces the older CALL (senders must not reuse an outstanding id;
            # the newer CALL is the one a result will answer).
            del pending[unique_id]
        elif len(pending) >= self.pending_max:
            del pending[next(iter(pending))]
            self.evicted += 1
        if len(action) > MAX_STORED_ACTION:
            action = action[:MAX_STORED_ACTION]
        pending[unique_id] = (action, now_ns)
