"""``omgw_toml``: render a dict (the ``omgw_config`` inventory variable) as a TOML document.

Scalars first, then sub-tables (``[a.b]``), then arrays of tables (``[[value.charge_points]]``),
so the output parses back to the same data with ``tomllib``. Strings are TOML basic strings with
every required escape; ``None`` values are left out (TOML has no null).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


class TomlError(ValueError):
    pass


def _key(k: Any) -> str:
    k = str(k)
    return k if _BARE_KEY.match(k) else _string(k)


def _string(s: str) -> str:
    out = []
    for ch in str(s):
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _is_table_list(v: Any) -> bool:
    return _is_list(v) and len(v) > 0 and all(isinstance(x, Mapping) for x in v)


def _is_list(v: Any) -> bool:
    return isinstance(v, Sequence) and not isinstance(v, (str, bytes))


def _value(v: Any, path: str) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(int(v))
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(float(v))
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, Mapping):
        items = [f"{_key(k)} = {_value(x, f'{path}.{k}')}" for k, x in v.items() if x is not None]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    if _is_list(v):
        return "[" + ", ".join(_value(x, f"{path}[]") for x in v if x is not None) + "]"
    raise TomlError(f"omgw_toml: cannot render {path} of type {type(v).__name__}")


def _table(data: Mapping[str, Any], prefix: list[str], lines: list[str]) -> None:
    tables, arrays = [], []
    for k, v in data.items():
        if v is None:
            continue
        if isinstance(v, Mapping):
            tables.append((k, v))
        elif _is_table_list(v):
            arrays.append((k, v))
        else:
            lines.append(f"{_key(k)} = {_value(v, '.'.join([*prefix, str(k)]))}")
    for k, v in tables:
        header = ".".join(_key(p) for p in [*prefix, k])
        lines.extend(["", f"[{header}]"])
        _table(v, [*prefix, k], lines)
    for k, v in arrays:
        header = ".".join(_key(p) for p in [*prefix, k])
        for item in v:
            lines.extend(["", f"[[{header}]]"])
            _table(item, [*prefix, k], lines)


def omgw_toml(data: Any) -> str:
    if not isinstance(data, Mapping):
        raise TomlError(f"omgw_toml: expected a dict, got {type(data).__name__}")
    lines: list[str] = []
    _table(data, [], lines)
    return "\n".join(lines).lstrip("\n") + "\n"


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"omgw_toml": omgw_toml}
