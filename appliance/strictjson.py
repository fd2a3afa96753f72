"""Strict JSON (RFC 8259) for everything read from a peer: frames, tap records, black-box payloads.

Python's json accepts NaN, Infinity and -Infinity, which are not JSON; a peer that sends them gets
the same error as for any other malformed text.
"""

from __future__ import annotations

import json
from typing import Any, Final


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


#: Decode one JSON text; raises ValueError for anything that is not JSON (RecursionError for absurd
#: nesting). One decoder, built once: json.loads(..., parse_constant=...) would build one per call.
decode: Final = json.JSONDecoder(parse_constant=_reject_constant).decode
