"""Strict JSON (RFC 8259) for everything read from a peer: frames, tap records, black-box payloads.

Python's json accepts NaN, Infinity and -Infinity, which are not JSON; a peer that sends them gets
the same error as for any other malformed text.
"""

from __future__ import annotations

import json
from typing import Any, Final


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# One decoder, built once: json.loads(..., parse_constant=...) would build one per call.
_decoder: Final = json.JSONDecoder(parse_constant=_reject_constant)
_scan: Final = _decoder.scan_once
_full: Final = _decoder.decode


def decode(text: str) -> Any:
    """Decode one JSON text; raises ValueError for anything that is not JSON (RecursionError for
    absurd nesting).

    Why not just ``JSONDecoder.decode``: it wraps the C scanner in two Python calls and two regex
    matches for surrounding whitespace, which cost more than scanning an OCPP frame (~0.5 us of ~0.7
    per frame on the value channel's path). A text that the scanner takes whole from its first
    character is returned as scanned; anything else (surrounding whitespace, trailing data, no value
    at the start) goes to ``JSONDecoder.decode``, which accepts or explains it exactly as before.
    """
    try:
        obj, end = _scan(text, 0)
    except StopIteration:
        return _full(text)
    if end == len(text):
        return obj
    return _full(text)
