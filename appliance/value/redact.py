"""idTag / idToken redaction for the tap: frames leave the value process with tokens pseudonymised.

Why this exists: the tap ships copies of OCPP frames to the health side for diagnostics. Tokens
(RFID UIDs, eMAIDs, app tokens) are personal data and, for many chargers, bearer credentials; they
must not leave the value process. Keyed pseudonyms keep the tap useful: the same tag always maps to
the same ``hmac:<16 hex>`` under one gateway's secret, so an Authorize can be matched to its
StartTransaction, while without the key a pseudonym cannot be reversed or even tested against a
guessed tag (unkeyed hashes of 4-7 byte RFID UIDs would be brute-forced in seconds).

Fields redacted, by key, anywhere in the frame (payload, nested objects, arrays, CALLERROR details),
found by grepping the schemas of the installed ocpp package (v16, v201, v21):

- ``idTag``: 1.6 Authorize, StartTransaction, StopTransaction, RemoteStartTransaction, ReserveNow,
  SendLocalList ``localAuthorizationList[].idTag``.
- ``parentIdTag``: 1.6 IdTagInfo (Authorize/StartTransaction/StopTransaction conf,
  SendLocalList ``localAuthorizationList[].idTagInfo``), ReserveNow.
- ``idToken``: 2.x IdTokenType *objects* (Authorize, TransactionEvent, RequestStartTransaction,
  ReserveNow, SendLocalList, CustomerInformation) and the ``idToken`` string inside them. Objects
  are walked, so ``type`` (ISO14443, eMAID, ...) stays readable and only the value is replaced.
- ``groupIdToken``: 2.x IdTokenType objects in IdTokenInfo and RequestStartTransaction/ReserveNow.
- ``additionalIdToken``: 2.x ``idToken.additionalInfo[].additionalIdToken``.
- ``idTokens``: 2.1 GetTariffs ``tariffAssignments[].idTokens`` (an array of token strings).
- ``customerIdentifier``: 2.x CustomerInformation (names a customer).
- ``vatNumber``: 2.1 VatNumberValidation, NotifySettlement (names a company or person).
- ``certificate``: 2.x AuthorizeRequest carries the EV's contract certificate, whose subject holds
  the eMAID. The same key elsewhere (InstallCertificate) holds public CA certificates, which lose
  nothing useful by being pseudonymised.

A string value anywhere that is itself JSON (a DataTransfer ``data`` carrying ``{"idTag": ...}``)
is parsed and redacted the same way, two levels deep. Other vendor formats inside DataTransfer, and
values under keys not listed here, pass unchanged.

Pseudonyms are case-insensitive: OCPP defines identifiers as case-insensitive (1.6 ``idTag`` is a
CiString20Type; 2.0.1 IdTokenType: "IdToken is case insensitive"), so ``abc`` and ``ABC`` are one
token and get one pseudonym.

Output is the frame re-serialised as compact ASCII JSON (``ensure_ascii``, so even a lone surrogate
received as a JSON escape cannot make the text unencodable). Numbers go through Python floats, so
``2935.600`` becomes ``2935.6``: the same value, not the same bytes. Text that is not JSON becomes
``{"unparsed":true,"bytes":N}``, and so does JSON that cannot be re-encoded as JSON (a number
beyond float range, such as ``1e999``, parses to infinity); the original text is never returned.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from .. import strictjson

__all__ = ["PSEUDONYM_PREFIX", "Redactor", "TOKEN_KEYS"]

TOKEN_KEYS = frozenset({
    "idTag",
    "parentIdTag",
    "idToken",
    "groupIdToken",
    "additionalIdToken",
    "idTokens",
    "customerIdentifier",
    "vatNumber",
    "certificate",
})

PSEUDONYM_PREFIX = "hmac:"

#: Hex digits kept from the HMAC-SHA256: 64 bits, ample to tell a site's tags apart.
PSEUDONYM_HEX_DIGITS = 16

#: How many levels of JSON-inside-a-string are opened (DataTransfer data holding JSON).
_EMBEDDED_DEPTH = 2


# allow_nan=False: 1e999 parses to inf, which must not come out as the non-JSON "Infinity".
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)


class Redactor:
    """Replaces token values in OCPP-J frames with keyed, stable pseudonyms.

    ``key`` is the per-gateway secret (at least 16 bytes; ``load_tap_key`` makes 32 random bytes).
    """

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("redaction key must be at least 16 bytes")
        self._key = bytes(key)

    def pseudonym(self, value: str) -> str:
        """``hmac:`` + the first 16 hex digits of HMAC-SHA256(key, casefold(value))."""
        digest = hmac.digest(self._key, value.casefold().encode("utf-8", "surrogatepass"), "sha256")
        return PSEUDONYM_PREFIX + digest.hex()[:PSEUDONYM_HEX_DIGITS]

    def redact(self, text: str) -> str:
        """The frame with every token value pseudonymised, as compact JSON; never the input text."""
        try:
            value = strictjson.decode(text)
            redacted, _ = self._walk(value, _EMBEDDED_DEPTH)
            return _ENCODER.encode(redacted)
        except (ValueError, TypeError, RecursionError):
            # Not JSON (or nested beyond what we can walk): say how big it was, nothing more.
            size = len(text.encode("utf-8", "surrogatepass")) if isinstance(text, str) else len(text)
            return _ENCODER.encode({"unparsed": True, "bytes": size})

    def _walk(self, value: Any, embedded: int) -> tuple[Any, bool]:
        """Return ``(redacted copy, whether anything was replaced)``."""
        if isinstance(value, dict):
            changed = False
            out: dict[str, Any] = {}
            for k, v in value.items():
                if k in TOKEN_KEYS:
                    v, hit = self._token(v, embedded)
                else:
                    v, hit = self._walk(v, embedded)
                changed = changed or hit
                out[k] = v
            return out, changed
        if isinstance(value, list):
            changed = False
            items = []
            for v in value:
                v, hit = self._walk(v, embedded)
                changed = changed or hit
                items.append(v)
            return items, changed
        if isinstance(value, str) and embedded > 0 and value[:1] in ("{", "["):
            return self._embedded(value, embedded - 1)
        return value, False

    def _token(self, value: Any, embedded: int) -> tuple[Any, bool]:
        """A value under a token key: strings and numbers are replaced, containers walked."""
        if isinstance(value, str):
            return self.pseudonym(value), True
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # A charger that sends its idTag as a JSON number still sends an idTag.
            return self.pseudonym(repr(value)), True
        if isinstance(value, list):
            items = [self._token(v, embedded)[0] for v in value]
            return items, True
        return self._walk(value, embedded)

    def _embedded(self, text: str, embedded: int) -> tuple[Any, bool]:
        """A string that may hold JSON: redact inside it and re-encode, or leave it alone."""
        try:
            inner = strictjson.decode(text)
        except ValueError:
            return text, False
        redacted, changed = self._walk(inner, embedded)
        if not changed:
            return text, False
        return _ENCODER.encode(redacted), True
