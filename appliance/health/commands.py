"""Signed remote diagnostics (``omgw/v1/{gateway_id}/cmd/{name}``): verification, replay store, dispatch.

Why this exists: an operator must be able to ask a gateway in the field for a snapshot, a register
read or a relay power cycle, and nobody else may. Commands are Ed25519-signed by an operator key
listed in ``[commands]`` with the commands it may run; every attempt, accepted or refused, goes to
the black box. See docs/commands.md for the wire format and the threat model.

Guarantees:

- **Nothing unauthenticated is interpreted.** The envelope is size-checked before it is parsed, and
  the signed body is parsed only after its signature verified. The signature covers the exact UTF-8
  bytes of the body as transmitted (no canonical-JSON re-serialisation), prefixed with a domain
  separation tag, so an operator key cannot be tricked into signing anything else that verifies here.
- **At most once.** A command's nonce is persisted (fsync) *before* its handler runs, so a crash or a
  power cut cannot turn a captured command into a second execution. Nonces of authentic commands
  that were refused for a reason that could later go away (not allowed, topic mismatch, bad
  arguments, not yet valid) are remembered too, so a refusal can never be replayed into an
  acceptance later. Forgotten (compacted) nonces leave a persisted horizon: a command whose ``exp``
  is at or below it is refused, whatever the clock says.
- **Pure core.** :func:`verify_command` and :func:`validate_args` take bytes, keys and the time and
  return a result; they never read a clock, touch a file, or raise on input from the network.
- **No path to the value channel or the CSMS.** This module imports nothing from
  :mod:`appliance.value`; handlers are injected by the health process.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import os
import re
import secrets
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from ..logfmt import get_logger

log = get_logger("health.commands")

ENVELOPE_VERSION = 1
#: Signed message = SIGNING_CONTEXT + body bytes (domain separation: a signature made for anything
#: else, e.g. a file or a different protocol using the same key, never verifies as a command).
SIGNING_CONTEXT = b"omgw-cmd-v1\n"
MAX_ENVELOPE_BYTES = 16 * 1024
MAX_WINDOW_S = 3600
MAX_SKEW_S = 60
DEFAULT_TTL_S = 300
NONCE_RE = re.compile(r"^[0-9a-f]{32,128}$")  # 16..64 random bytes, lowercase hex
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")  # meter names, charge point ids
_CODE_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")

COMMANDS: frozenset[str] = frozenset(
    {"ping", "snapshot", "read_registers", "relay_cycle", "set_sample_interval", "selftest", "get_config"}
)

#: Refusal codes of :func:`verify_command` (see docs/commands.md for when each applies).
REFUSAL_CODES: frozenset[str] = frozenset(
    {
        "too_large", "malformed", "unsigned", "unknown_key", "bad_signature", "wrong_gateway",
        "expired", "not_yet_valid", "window_too_long", "replayed", "not_allowed", "topic_mismatch",
        "unknown_command", "bad_arguments",
    }
)  # fmt: skip
#: Per-command handler timeouts (seconds); anything not listed gets DEFAULT_TIMEOUT_S.
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_TIMEOUTS: Mapping[str, float] = {"snapshot": 60.0, "selftest": 30.0, "relay_cycle": 60.0}

_BODY_KEYS = frozenset({"name", "gateway", "nonce", "iat", "exp", "args"})
_ENVELOPE_KEYS = frozenset({"v", "kid", "sig", "body"})
_SECRET_KEY_RE = re.compile(r"pass(word|wd)?|secret|token|private|credential|psk|hash|api_?key|auth", re.I)
REDACTED = "***"


# --------------------------------------------------------------------------------------------- values


@dataclass(frozen=True)
class TrustedKey:
    """An operator public key from ``[[commands.keys]]`` and the commands it may run."""

    kid: str
    public_key_b64: str  # raw 32-byte Ed25519 public key, standard base64
    allowed: frozenset[str]

    def __post_init__(self) -> None:
        if not isinstance(self.kid, str) or not _ID_RE.match(self.kid):
            raise ValueError(f"kid {self.kid!r}: 1..64 characters of A-Z a-z 0-9 . _ : -")
        _public_key(self.public_key_b64)  # raises ValueError with the reason
        object.__setattr__(self, "allowed", frozenset(self.allowed))
        unknown = sorted(self.allowed - COMMANDS)
        if unknown:
            raise ValueError(f"kid {self.kid!r}: unknown commands in allowed: {unknown}")


@dataclass(frozen=True)
class VerifiedCommand:
    """An authentic, fresh, allowed command with validated (normalised) arguments."""

    kid: str
    name: str
    gateway: str
    nonce: str
    iat: int
    exp: int
    args: Mapping[str, Any]


@dataclass(frozen=True)
class Refusal:
    """Why a command was refused. Fields other than ``code``/``detail`` are set only as far as known.

    ``authenticated`` says whether the signature verified (then ``name``, ``nonce``, ``exp`` and
    ``args`` come from the signed body; otherwise they are None and nothing from the payload is
    trusted). ``consume_nonce`` says the caller should remember the nonce anyway (see module doc).
    """

    code: str
    detail: str
    kid: str | None = None
    name: str | None = None
    nonce: str | None = None
    exp: int | None = None
    args: Any = None
    authenticated: bool = False
    consume_nonce: bool = False


class CommandFailed(Exception):
    """Raised by a handler to refuse or fail with a specific code (e.g. ``transaction_active``)."""

    def __init__(self, code: str, detail: str = "") -> None:
        if not _CODE_RE.match(code):
            raise ValueError(f"bad error code {code!r}")
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail


# --------------------------------------------------------------------------------------------- keys


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


@lru_cache(maxsize=64)
def _public_key(public_key_b64: str) -> Ed25519PublicKey:
    try:
        raw = _b64decode(public_key_b64)
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise ValueError(f"public key is not base64: {exc}") from None
    if len(raw) != 32:
        raise ValueError(f"public key must be 32 raw bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def _private_key(private_key_b64: str) -> Ed25519PrivateKey:
    try:
        raw = _b64decode(private_key_b64.strip())
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise ValueError(f"private key is not base64: {exc}") from None
    if len(raw) != 32:
        raise ValueError(f"private key must be 32 raw bytes, got {len(raw)}")
    return Ed25519PrivateKey.from_private_bytes(raw)


def keyring(keys: Iterable[TrustedKey]) -> dict[str, TrustedKey]:
    """``{kid: key}`` for :func:`verify_command`; raises ValueError on a duplicate kid."""
    out: dict[str, TrustedKey] = {}
    for key in keys:
        if key.kid in out:
            raise ValueError(f"duplicate kid {key.kid!r}")
        out[key.kid] = key
    return out


def generate_keypair() -> tuple[str, str]:
    """A new Ed25519 key pair as (private, public): standard base64 of the raw 32-byte keys."""
    key = Ed25519PrivateKey.generate()
    priv = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(priv).decode(), base64.b64encode(pub).decode()


def public_key_of(private_key_b64: str) -> str:
    pub = _private_key(private_key_b64).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(pub).decode()


# --------------------------------------------------------------------------------------------- signing


def seal(private_key_b64: str, kid: str, body_text: str) -> bytes:
    """Low level: the envelope for ``body_text`` exactly as given (no validation of the body)."""
    sig = _private_key(private_key_b64).sign(SIGNING_CONTEXT + body_text.encode("utf-8"))
    envelope = {"v": ENVELOPE_VERSION, "kid": kid, "sig": base64.b64encode(sig).decode(), "body": body_text}
    return json.dumps(envelope, separators=(",", ":")).encode("ascii")


def sign_command(
    private_key_b64: str,
    kid: str,
    name: str,
    gateway_id: str,
    args: Mapping[str, Any],
    *,
    ttl_s: int = DEFAULT_TTL_S,
    now_s: float | None = None,
    nonce: str | None = None,
) -> bytes:
    """Operator side: a signed command envelope, ready to publish on ``.../cmd/{name}``.

    Raises ValueError for an unknown command, invalid arguments, a bad ttl or a bad nonce, so the
    operator learns about a mistake before the gateway refuses it.
    """
    if name not in COMMANDS:
        raise ValueError(f"unknown command {name!r}; known: {sorted(COMMANDS)}")
    if not (isinstance(ttl_s, int) and not isinstance(ttl_s, bool) and 1 <= ttl_s <= MAX_WINDOW_S):
        raise ValueError(f"ttl_s must be an integer in 1..{MAX_WINDOW_S}, got {ttl_s!r}")
    checked = validate_args(name, args)
    if isinstance(checked, str):
        raise ValueError(f"bad arguments for {name}: {checked}")
    nonce = secrets.token_hex(16) if nonce is None else nonce
    if not NONCE_RE.match(nonce):
        raise ValueError("nonce must be 32..128 lowercase hex digits")
    iat = int(time.time() if now_s is None else now_s)
    body = {"name": name, "gateway": gateway_id, "nonce": nonce, "iat": iat, "exp": iat + ttl_s, "args": dict(args)}
    return seal(private_key_b64, kid, json.dumps(body, separators=(",", ":"), sort_keys=True))


# --------------------------------------------------------------------------------------------- parsing


class _Malformed(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Malformed(f"duplicate key {k!r}")
        out[k] = v
    return out


def _reject_constant(name: str) -> Any:
    raise _Malformed(f"{name} is not JSON")


def _loads(text: str | bytes) -> Any:
    """Strict JSON: no duplicate keys, no NaN/Infinity; any failure becomes _Malformed."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except _Malformed:
        raise
    except (ValueError, RecursionError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
        raise _Malformed(f"not JSON: {type(exc).__name__}") from None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return True  # math.isfinite(int) would overflow for a 400-digit integer
    return isinstance(v, float) and math.isfinite(v)


# --------------------------------------------------------------------------------------------- arguments


def validate_args(name: str, args: Any) -> dict[str, Any] | str:
    """Validated, normalised arguments for ``name``, or a reason string. Pure; never raises."""
    if not isinstance(args, Mapping):
        return "args must be an object"
    spec = _ARG_SPECS.get(name)
    if spec is None:
        return f"unknown command {name!r}"
    unknown = sorted(str(k) for k in args if k not in spec)
    if unknown:
        return f"unknown arguments {unknown[:8]}"
    out: dict[str, Any] = {}
    for key, (required, check, default) in spec.items():
        if key not in args:
            if required:
                return f"missing argument {key!r}"
            if default is not None:
                out[key] = default
            continue
        problem = check(args[key])
        if problem:
            return f"{key}: {problem}"
        out[key] = args[key]
    if name == "read_registers" and out["address"] + out["count"] > 65536:
        return "address + count must not exceed 65536"
    return out


def _ident(v: Any) -> str | None:
    return None if isinstance(v, str) and _ID_RE.match(v) else "1..64 characters of A-Z a-z 0-9 . _ : -"


def _int_in(lo: int, hi: int, allowed: frozenset[int] | None = None) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        if not _is_int(v) or not lo <= v <= hi or (allowed is not None and v not in allowed):
            return f"integer in {sorted(allowed)}" if allowed else f"integer in {lo}..{hi}"
        return None

    return check


def _number_in(lo: float, hi: float) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if _is_number(v) and lo <= v <= hi else f"number in {lo}..{hi}"

    return check


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def _text(max_len: int) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        ok = isinstance(v, str) and len(v) <= max_len and v.isprintable()
        return None if ok else f"printable string of at most {max_len} characters"

    return check


# name -> {arg: (required, check, default)}
_ARG_SPECS: dict[str, dict[str, tuple[bool, Callable[[Any], str | None], Any]]] = {
    "ping": {},
    "selftest": {},
    "get_config": {},
    "snapshot": {
        "reason": (False, _text(128), None),
        "pre_s": (False, _number_in(0, 3600), None),
        "post_s": (False, _number_in(0, 3600), None),
    },
    "read_registers": {
        "meter": (True, _ident, None),
        "function": (True, _int_in(3, 4, frozenset({3, 4})), None),
        "address": (True, _int_in(0, 65535), None),
        "count": (True, _int_in(1, 125), None),
    },
    "relay_cycle": {
        "cp": (True, _ident, None),
        "force": (False, _bool, False),
    },
    "set_sample_interval": {"interval_s": (True, _number_in(0.05, 60.0), None)},
}
assert frozenset(_ARG_SPECS) == COMMANDS


# --------------------------------------------------------------------------------------------- verification


def verify_command(
    raw: bytes,
    *,
    topic_name: str,
    gateway_id: str,
    keys: Mapping[str, TrustedKey],
    now_s: float,
    seen_nonce: Callable[[str], bool],
    max_skew_s: float = MAX_SKEW_S,
    max_window_s: float = MAX_WINDOW_S,
    max_bytes: int = MAX_ENVELOPE_BYTES,
    nonce_horizon_s: float | None = None,
) -> VerifiedCommand | Refusal:
    """Verify one command payload received on ``.../cmd/{topic_name}``. Pure; never raises.

    Checks, in this order (the first failure is the refusal): size (``too_large``), envelope JSON
    (``malformed``), signature present (``unsigned``), envelope fields (``malformed``), key id
    (``unknown_key``), signature (``bad_signature``); then, on the authenticated body: shape
    (``malformed``), gateway (``wrong_gateway``), validity window (``window_too_long``,
    ``not_yet_valid``, ``expired``; also ``expired`` when ``exp <= nonce_horizon_s``), nonce
    (``replayed``), topic (``topic_mismatch``), command (``unknown_command``), key permission
    (``not_allowed``), arguments (``bad_arguments``).
    """
    try:
        return _verify(raw, topic_name, gateway_id, keys, now_s, seen_nonce, max_skew_s, max_window_s,
                       max_bytes, nonce_horizon_s)  # fmt: skip
    except Exception as exc:  # a bug must refuse, not crash the command loop; logged with its type
        log.error("command_verify_bug", error=type(exc).__name__)
        return Refusal("malformed", f"internal verification error ({type(exc).__name__})")


def _verify(
    raw: bytes,
    topic_name: str,
    gateway_id: str,
    keys: Mapping[str, TrustedKey],
    now_s: float,
    seen_nonce: Callable[[str], bool],
    max_skew_s: float,
    max_window_s: float,
    max_bytes: int,
    nonce_horizon_s: float | None,
) -> VerifiedCommand | Refusal:
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        return Refusal("malformed", "payload is not bytes")
    if len(raw) > max_bytes:
        return Refusal("too_large", f"{len(raw)} bytes > {max_bytes}")
    try:
        env = _loads(bytes(raw))
    except _Malformed as exc:
        return Refusal("malformed", f"envelope: {exc}")
    if not isinstance(env, dict):
        return Refusal("malformed", "envelope is not an object")
    if env.get("sig") in (None, ""):
        return Refusal("unsigned", "no signature")
    if not (_is_int(env.get("v")) and env["v"] == ENVELOPE_VERSION):
        return Refusal("malformed", f"envelope version must be {ENVELOPE_VERSION}")
    if set(env) != _ENVELOPE_KEYS:
        return Refusal("malformed", f"envelope keys must be {sorted(_ENVELOPE_KEYS)}")
    kid, sig_b64, body_text = env["kid"], env["sig"], env["body"]
    if not isinstance(kid, str) or not _ID_RE.match(kid):
        return Refusal("malformed", "kid must be 1..64 characters of A-Z a-z 0-9 . _ : -")
    if not isinstance(sig_b64, str) or not isinstance(body_text, str):
        return Refusal("malformed", "sig and body must be strings", kid=kid)
    key = keys.get(kid)
    if key is None or key.kid != kid:
        return Refusal("unknown_key", "key id not in [commands] keys", kid=kid)
    try:
        sig = _b64decode(sig_b64)
        body_bytes = body_text.encode("utf-8")  # a lone surrogate cannot be encoded
    except (binascii.Error, ValueError) as exc:
        return Refusal("bad_signature", f"undecodable signature or body ({type(exc).__name__})", kid=kid)
    if len(sig) != 64:
        return Refusal("bad_signature", f"signature must be 64 bytes, got {len(sig)}", kid=kid)
    try:
        _public_key(key.public_key_b64).verify(sig, SIGNING_CONTEXT + body_bytes)
    except InvalidSignature:
        return Refusal("bad_signature", "signature does not verify", kid=kid)

    # ---- authenticated from here on: the body is what the key holder signed ----
    try:
        body = _loads(body_bytes)
    except _Malformed as exc:
        return Refusal("malformed", f"body: {exc}", kid=kid, authenticated=True)
    shape = _body_problem(body)
    if shape:
        return Refusal("malformed", f"body: {shape}", kid=kid, authenticated=True)
    name, nonce, iat, exp, args = body["name"], body["nonce"], body["iat"], body["exp"], body["args"]
    known = {"kid": kid, "name": name, "nonce": nonce, "exp": exp, "args": args, "authenticated": True}
    if body["gateway"] != gateway_id:
        return Refusal("wrong_gateway", f"addressed to {body['gateway']!r}", **known)
    if exp - iat > max_window_s:
        return Refusal("window_too_long", f"exp - iat = {exp - iat} s > {max_window_s} s", **known)
    if iat > now_s + max_skew_s:
        return Refusal("not_yet_valid", f"iat is {iat - now_s:.0f} s in the future", consume_nonce=True, **known)
    if now_s > exp + max_skew_s:
        return Refusal("expired", f"expired {now_s - exp:.0f} s ago", **known)
    if nonce_horizon_s is not None and exp <= nonce_horizon_s:
        return Refusal("expired", "exp is at or before the nonce store's horizon", **known)
    if seen_nonce(nonce):
        return Refusal("replayed", "nonce already used", **known)
    consumed = {**known, "consume_nonce": True}
    if name != topic_name:
        return Refusal("topic_mismatch", f"signed for {name!r}, received on cmd/{topic_name[:40]!r}", **consumed)
    if name not in COMMANDS:
        return Refusal("unknown_command", f"{name!r} is not a command", **consumed)
    if name not in key.allowed:
        return Refusal("not_allowed", f"key {kid!r} may not run {name!r}", **consumed)
    checked = validate_args(name, args)
    if isinstance(checked, str):
        return Refusal("bad_arguments", checked, **consumed)
    return VerifiedCommand(kid=kid, name=name, gateway=gateway_id, nonce=nonce, iat=iat, exp=exp, args=checked)


def _body_problem(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "not an object"
    if set(body) != _BODY_KEYS:
        return f"keys must be {sorted(_BODY_KEYS)}"
    if not isinstance(body["name"], str) or not NAME_RE.match(body["name"]):
        return "name must match [a-z][a-z0-9_]{0,31}"
    if not isinstance(body["gateway"], str) or not 1 <= len(body["gateway"]) <= 64:
        return "gateway must be a string of 1..64 characters"
    if not isinstance(body["nonce"], str) or not NONCE_RE.match(body["nonce"]):
        return "nonce must be 32..128 lowercase hex digits"
    for k in ("iat", "exp"):
        if not _is_int(body[k]) or not 0 <= body[k] < 2**40:
            return f"{k} must be an integer unix time in seconds"
    if body["exp"] <= body["iat"]:
        return "exp must be after iat"
    if not isinstance(body["args"], dict):
        return "args must be an object"
    return None


# --------------------------------------------------------------------------------------------- redaction


def redact(obj: Any, *, max_depth: int = 8, max_str: int = 256, max_items: int = 64) -> Any:
    """A bounded copy of ``obj`` for logs and audit: secret-looking keys become ``"***"``, long strings
    and containers are cut, depth is limited. Used for audited arguments and ``get_config``."""
    if max_depth <= 0:
        return "…"
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for i, (k, v) in enumerate(obj.items()):
            if i >= max_items:
                out["…"] = f"{len(obj) - max_items} more"
                break
            ks = str(k)[:max_str]
            out[ks] = REDACTED if _SECRET_KEY_RE.search(ks) else redact(v, max_depth=max_depth - 1,
                                                                         max_str=max_str, max_items=max_items)
        return out
    if isinstance(obj, (list, tuple)):
        items = [redact(v, max_depth=max_depth - 1, max_str=max_str, max_items=max_items) for v in obj[:max_items]]
        return items + ([f"… {len(obj) - max_items} more"] if len(obj) > max_items else [])
    if isinstance(obj, str):
        return obj if len(obj) <= max_str else obj[:max_str] + "…"
    if isinstance(obj, int) and not isinstance(obj, bool) and abs(obj) >= 2**63:
        return redact(str(obj), max_depth=1, max_str=32)
    if obj is None or isinstance(obj, (bool, int, float)):
        return obj
    return redact(str(obj), max_depth=1, max_str=max_str)


# --------------------------------------------------------------------------------------------- nonce store


class NonceStore:
    """Persisted set of used nonces: an append-only text file, fsync-ed per entry, compacted on open.

    Line format (``\\n``-terminated; CRC-32 over the text before it, 8 lowercase hex digits)::

        N <nonce> <exp> <crc>      a remembered nonce and its command's expiry (unix s)
        H <horizon> <crc>          nonces with exp <= horizon may have been forgotten

    Compaction (on open, and after ``compact_every`` appends) drops entries with
    ``exp + retention_s < now`` and raises the horizon to the largest dropped ``exp``, so a later
    clock step backwards cannot resurrect a forgotten command (``verify_command(nonce_horizon_s=)``).
    It writes a temporary file, fsyncs it, renames it over the old one and fsyncs the directory.
    A torn last line (power cut in ``remember``) or a line whose CRC does not match is ignored: its
    command was never executed, because the dispatcher remembers before it executes.
    An unreadable file raises on open: commands are then disabled (fail closed), never unguarded.
    """

    def __init__(
        self,
        path: Path | str,
        retention_s: float = MAX_WINDOW_S + MAX_SKEW_S,
        *,
        clock: Callable[[], float] = time.time,
        compact_every: int = 4096,
    ) -> None:
        self.path = Path(path)
        self.retention_s = retention_s
        self._clock = clock
        self._compact_every = compact_every
        self._entries: dict[str, int] = {}
        self._horizon = 0
        self._appended = 0
        self._fd: int | None = None
        self.ignored_lines = 0  # torn or corrupt lines seen at the last open
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._load()
        self._compact()

    @property
    def horizon_s(self) -> int:
        return self._horizon

    def __len__(self) -> int:
        return len(self._entries)

    def seen(self, nonce: str) -> bool:
        return nonce in self._entries

    def remember(self, nonce: str, exp: int) -> None:
        """Persist ``nonce`` (durable when this returns). Raises OSError if the card refuses."""
        if not isinstance(nonce, str) or not NONCE_RE.match(nonce) or not _is_int(exp):
            raise ValueError("nonce must be 32..128 lowercase hex digits and exp an integer")
        if nonce in self._entries:
            return
        if self._fd is None:
            raise RuntimeError("nonce store is closed")
        os.write(self._fd, _line(f"N {nonce} {exp}"))
        os.fsync(self._fd)
        self._entries[nonce] = exp
        self._appended += 1
        if self._appended >= self._compact_every:
            self._compact()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> NonceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        lines = data.split(b"\n")
        if lines and lines[-1] != b"":
            self.ignored_lines += 1  # torn tail: no newline
        for raw in lines[:-1]:
            parsed = _parse_line(raw)
            if parsed is None:
                self.ignored_lines += 1
            elif parsed[0] == "H":
                self._horizon = max(self._horizon, parsed[2])
            else:
                self._entries[parsed[1]] = parsed[2]

    def _compact(self) -> None:
        cutoff = self._clock() - self.retention_s
        dropped = [exp for exp in self._entries.values() if exp < cutoff]
        if dropped:
            self._horizon = max(self._horizon, max(dropped))
            self._entries = {n: e for n, e in self._entries.items() if e >= cutoff}
        tmp = self.path.with_name(self.path.name + ".tmp")
        body = [_line(f"H {self._horizon}")] + [_line(f"N {n} {e}") for n, e in self._entries.items()]
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"".join(body))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        self.close()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND, 0o600)
        self._appended = 0


def _line(text: str) -> bytes:
    b = text.encode("ascii")
    return b + b" %08x\n" % zlib.crc32(b)


def _parse_line(raw: bytes) -> tuple[str, str, int] | None:
    text, sep, crc = raw.rpartition(b" ")
    if not sep or len(crc) != 8:
        return None
    try:
        if int(crc, 16) != zlib.crc32(text):
            return None
        parts = text.decode("ascii").split(" ")
    except (ValueError, UnicodeDecodeError):
        return None
    if parts[0] == "H" and len(parts) == 2 and parts[1].isdigit():
        return ("H", "", int(parts[1]))
    if parts[0] == "N" and len(parts) == 3 and NONCE_RE.match(parts[1]) and parts[2].isdigit():
        return ("N", parts[1], int(parts[2]))
    return None


# --------------------------------------------------------------------------------------------- dispatcher

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass
class CommandDispatcher:
    """The asyncio shell: verify, remember, audit, run the handler, build the reply.

    ``handle()`` never raises for anything a peer sends. The audit callable receives one
    ``{"kind": "command", "phase": "decision", ...}`` record per attempt (accepted or refused) and, for
    accepted commands, one ``"phase": "result"`` record when the handler finished. Audit records never
    contain the signature or anything from an unauthenticated body; arguments are redacted.
    If the decision record of an accepted command cannot be written, the command is not run.
    """

    keys: Mapping[str, TrustedKey]
    gateway_id: str
    nonce_store: NonceStore
    handlers: Mapping[str, Handler]
    audit: Callable[[dict[str, Any]], None]
    clock: Callable[[], float] = time.time
    max_skew_s: float = MAX_SKEW_S
    max_window_s: float = MAX_WINDOW_S
    timeouts: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TIMEOUTS))
    counters: dict[str, int] = field(default_factory=dict)

    async def handle(self, topic_name: str, raw: bytes) -> dict[str, Any]:
        now = self.clock()
        time_ns = int(now * 1_000_000_000)
        size = len(raw) if isinstance(raw, (bytes, bytearray, memoryview)) else -1
        topic = topic_name[:64] if isinstance(topic_name, str) else repr(topic_name)[:64]
        store = self.nonce_store
        # verify + remember run without an await in between: two copies of one command arriving
        # together cannot both pass the replay check.
        out = verify_command(
            raw, topic_name=topic, gateway_id=self.gateway_id, keys=self.keys, now_s=now,
            seen_nonce=store.seen, max_skew_s=self.max_skew_s, max_window_s=self.max_window_s,
            nonce_horizon_s=store.horizon_s,
        )  # fmt: skip
        if isinstance(out, Refusal):
            if out.consume_nonce and out.nonce is not None and out.exp is not None:
                try:
                    store.remember(out.nonce, out.exp)
                except (OSError, ValueError, RuntimeError) as exc:
                    log.error("nonce_store_failed", error=type(exc).__name__)
            return self._refuse(out, topic, size, time_ns)
        cmd = out
        handler = self.handlers.get(cmd.name)
        try:
            store.remember(cmd.nonce, cmd.exp)
        except (OSError, ValueError, RuntimeError) as exc:
            log.error("nonce_store_failed", error=type(exc).__name__)
            refusal = self._refusal_for(cmd, "nonce_store_failed", "cannot persist nonce")
            return self._refuse(refusal, topic, size, time_ns)
        if handler is None:
            refusal = self._refusal_for(cmd, "unknown_command", "no handler on this gateway")
            return self._refuse(refusal, topic, size, time_ns)
        record = self._record(time_ns, topic, size, accepted=True, reason="accepted", detail="", kid=cmd.kid,
                              name=cmd.name, nonce=cmd.nonce, args=cmd.args, authenticated=True)  # fmt: skip
        try:
            self.audit(record)
        except Exception as exc:  # the black box refused: do not run an unaudited command
            log.error("command_audit_failed", name=cmd.name, error=type(exc).__name__)
            self._count("refused")
            return _reply(False, cmd.name, cmd.nonce, error="audit_failed")
        self._count("accepted")
        log.info("command_accepted", name=cmd.name, kid=cmd.kid, nonce=cmd.nonce)
        return await self._run(cmd, handler, topic, size)

    async def _run(self, cmd: VerifiedCommand, handler: Handler, topic: str, size: int) -> dict[str, Any]:
        timeout = self.timeouts.get(cmd.name, DEFAULT_TIMEOUT_S)
        start = time.monotonic()
        error: str | None = None
        detail = ""
        result: Any = None
        try:
            result = await asyncio.wait_for(handler(dict(cmd.args)), timeout)
            if not isinstance(result, dict):
                raise TypeError(f"handler returned {type(result).__name__}, not dict")
            json.dumps(result, allow_nan=False)
        except TimeoutError:
            error, detail = "handler_timeout", f"no result within {timeout:g} s"
        except CommandFailed as exc:
            error, detail = exc.code, exc.detail
        except asyncio.CancelledError:
            self._audit_result(cmd, topic, size, ok=False, error="cancelled", detail="", start=start)
            raise
        except Exception as exc:  # a handler bug becomes a reply and an audit record, never a crash
            log.error("command_handler_failed", name=cmd.name, error=type(exc).__name__)
            error, detail = "handler_failed", type(exc).__name__
        self._audit_result(cmd, topic, size, ok=error is None, error=error, detail=detail, start=start)
        if error is not None:
            self._count(error)
            return _reply(False, cmd.name, cmd.nonce, error=error, detail=detail)
        return _reply(True, cmd.name, cmd.nonce, result=result)

    def _audit_result(
        self, cmd: VerifiedCommand, topic: str, size: int, *, ok: bool, error: str | None, detail: str, start: float
    ) -> None:
        record = self._record(int(self.clock() * 1_000_000_000), topic, size, accepted=True,
                              reason="ok" if ok else (error or "failed"), detail=detail[:256], kid=cmd.kid,
                              name=cmd.name, nonce=cmd.nonce, args=cmd.args, authenticated=True)  # fmt: skip
        record.update(phase="result", ok=ok, duration_ms=round((time.monotonic() - start) * 1000, 1))
        self._safe_audit(record)

    @staticmethod
    def _refusal_for(cmd: VerifiedCommand, code: str, detail: str) -> Refusal:
        return Refusal(code, detail, kid=cmd.kid, name=cmd.name, nonce=cmd.nonce, exp=cmd.exp, args=cmd.args,
                       authenticated=True)  # fmt: skip

    def _refuse(self, r: Refusal, topic: str, size: int, time_ns: int) -> dict[str, Any]:
        self._count(r.code)
        self._count("refused")
        name = r.name if r.authenticated else topic
        record = self._record(time_ns, topic, size, accepted=False, reason=r.code, detail=r.detail[:256], kid=r.kid,
                              name=name, nonce=r.nonce, args=r.args, authenticated=r.authenticated)  # fmt: skip
        self._safe_audit(record)
        log.warning("command_refused", reason=r.code, kid=(r.kid or "-")[:64], topic=topic)
        return _reply(False, name, r.nonce, error=r.code, detail=r.detail[:256])

    def _record(
        self, time_ns: int, topic: str, size: int, *, accepted: bool, reason: str, detail: str,
        kid: str | None, name: str | None, nonce: str | None, args: Any, authenticated: bool,
    ) -> dict[str, Any]:  # fmt: skip
        return {
            "kind": "command",
            "phase": "decision",
            "time_ns": time_ns,
            "name": name,
            "topic_name": topic,
            "kid": kid[:64] if isinstance(kid, str) else None,
            "accepted": accepted,
            "reason": reason,
            "detail": detail,
            "authenticated": authenticated,
            "nonce": nonce,
            "args": redact(args) if authenticated and args is not None else None,
            "size": size,
        }

    def _safe_audit(self, record: dict[str, Any]) -> None:
        try:
            self.audit(record)
        except Exception as exc:  # nothing to do but say so: the reply still goes out
            log.error("command_audit_failed", reason=record.get("reason"), error=type(exc).__name__)

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1


def _reply(ok: bool, name: str | None, nonce: str | None, *, error: str | None = None, detail: str = "",
           result: Any = None) -> dict[str, Any]:  # fmt: skip
    reply: dict[str, Any] = {"schema": 1, "ok": ok, "name": name, "nonce": nonce}
    if error is not None:
        reply["error"] = error
        if detail:
            reply["detail"] = detail
    if ok:
        reply["result"] = result
    return reply
