"""The strict decoder's shortcut (the C scanner alone) against the full ``JSONDecoder.decode``."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance import strictjson

REFERENCE = json.JSONDecoder(parse_constant=strictjson._reject_constant).decode

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_space = st.sampled_from(["", " ", "\n", "\t", "\r\n ", "x", "]", ",1", "  {}", "\x00"])


def _outcome(decode: object, text: str) -> tuple[str, object]:
    try:
        return "ok", decode(text)  # type: ignore[operator]
    except json.JSONDecodeError as e:
        return "error", (e.msg, e.pos)
    except ValueError as e:
        return "error", str(e)
    except RecursionError:
        return "recursion", None


@settings(max_examples=400, deadline=None)
@given(value=_json_values, before=_space, after=_space, compact=st.booleans())
def test_the_shortcut_decides_every_text_as_the_full_decoder_does(value, before, after, compact) -> None:
    body = json.dumps(value, separators=(",", ":") if compact else None, ensure_ascii=False)
    text = before + body + after
    assert _outcome(strictjson.decode, text) == _outcome(REFERENCE, text)


@settings(max_examples=400, deadline=None)
@given(text=st.text(alphabet=st.sampled_from('[]{}",:0123456789.eE+-tfnulraseNIiy \n\\u'), max_size=40))
def test_malformed_texts_get_the_same_error_at_the_same_place(text) -> None:
    assert _outcome(strictjson.decode, text) == _outcome(REFERENCE, text)


@pytest.mark.parametrize("text", ["NaN", "[NaN]", '{"a":Infinity}', "[-Infinity]", " NaN "])
def test_nan_and_infinity_are_not_json(text) -> None:
    with pytest.raises(ValueError, match="is not JSON"):
        strictjson.decode(text)


def test_ocpp_frames_decode_to_the_same_objects() -> None:
    frame = '[2,"19223201","MeterValues",{"connectorId":1,"meterValue":[{"sampledValue":[{"value":"1.5e3"}]}]}]'
    assert strictjson.decode(frame) == json.loads(frame)
    assert strictjson.decode(' [3,"1",{}] ') == [3, "1", {}]
    assert math.isclose(strictjson.decode("2.5"), 2.5)


def test_absurd_nesting_is_a_recursion_error_either_way() -> None:
    text = "[" * 100_000 + "]" * 100_000
    assert _outcome(strictjson.decode, text) == _outcome(REFERENCE, text) == ("recursion", None)
