"""Pure command verification: every refusal code with a real Ed25519 key pair, edges, fuzzing."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.health.commands import (
    COMMANDS,
    MAX_ENVELOPE_BYTES,
    MAX_SKEW_S,
    MAX_WINDOW_S,
    NonceStore,
    Refusal,
    TrustedKey,
    VerifiedCommand,
    generate_keypair,
    keyring,
    seal,
    sign_command,
    validate_args,
    verify_command,
)

NOW = 1_800_000_000
GW = "gw-0001"
PRIV, PUB = generate_keypair()
OTHER_PRIV, OTHER_PUB = generate_keypair()
KEYS = keyring(
    [
        TrustedKey("ops-2026", PUB, frozenset({"ping", "read_registers", "relay_cycle", "set_sample_interval"})),
        TrustedKey("viewer", OTHER_PUB, frozenset({"ping"})),
    ]
)
NONCE = "ab" * 16


def body(**over: Any) -> str:
    b: dict[str, Any] = {"name": "ping", "gateway": GW, "nonce": NONCE, "iat": NOW, "exp": NOW + 300, "args": {}}
    b.update(over)
    return json.dumps(b)


def verify(raw: bytes, topic: str = "ping", now: float = NOW, seen: set[str] | None = None, **kw: Any):
    seen = seen or set()
    return verify_command(raw, topic_name=topic, gateway_id=GW, keys=KEYS, now_s=now, seen_nonce=seen.__contains__, **kw)


def code(result: VerifiedCommand | Refusal) -> str:
    return result.code if isinstance(result, Refusal) else "accepted"


def test_valid_command_is_accepted_with_normalised_args() -> None:
    raw = sign_command(PRIV, "ops-2026", "relay_cycle", GW, {"cp": "CP7"}, now_s=NOW, nonce=NONCE)
    out = verify(raw, topic="relay_cycle")
    assert isinstance(out, VerifiedCommand)
    assert (out.kid, out.name, out.nonce, out.iat, out.exp) == ("ops-2026", "relay_cycle", NONCE, NOW, NOW + 300)
    assert out.args == {"cp": "CP7", "force": False}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"x" * (MAX_ENVELOPE_BYTES + 1), "too_large"),
        (b"{not json", "malformed"),
        (b"[1,2]", "malformed"),
        (b'{"v":1,"kid":"ops-2026","sig":"a","sig":"b","body":"{}"}', "malformed"),  # duplicate key
        (b'{"v":1,"kid":"ops-2026","sig":NaN,"body":"{}"}', "malformed"),
        (b"\xff\xfe", "malformed"),
        (b"[" * 5000 + b"]" * 5000, "malformed"),  # nesting deeper than the recursion limit
        (body().encode(), "unsigned"),  # a bare body, no envelope
        (json.dumps({"v": 1, "kid": "ops-2026", "body": body()}).encode(), "unsigned"),
        (json.dumps({"v": 1, "kid": "ops-2026", "sig": "", "body": body()}).encode(), "unsigned"),
        (json.dumps({"v": 2, "kid": "ops-2026", "sig": "AA==", "body": body()}).encode(), "malformed"),
        (json.dumps({"v": True, "kid": "ops-2026", "sig": "AA==", "body": body()}).encode(), "malformed"),
        (json.dumps({"v": 1, "kid": "ops-2026", "sig": "AA==", "body": json.loads(body())}).encode(), "malformed"),
        (json.dumps({"v": 1, "kid": "ops-2026", "sig": "AA==", "body": body(), "x": 1}).encode(), "malformed"),
        (seal(PRIV, "nobody", body()), "unknown_key"),
        (seal(PRIV, "viewer", body()), "bad_signature"),  # signed by another key than the kid's
        (json.dumps({"v": 1, "kid": "ops-2026", "sig": "!!notb64", "body": body()}).encode(), "bad_signature"),
        (json.dumps({"v": 1, "kid": "ops-2026", "sig": base64.b64encode(b"\0" * 63).decode(), "body": body()}).encode(), "bad_signature"),
    ],
)
def test_unauthenticated_refusals(raw: bytes, expected: str) -> None:
    out = verify(raw)
    assert isinstance(out, Refusal) and out.code == expected, out
    assert not out.authenticated and not out.consume_nonce
    assert out.nonce is None and out.args is None


def test_tampered_body_is_a_bad_signature() -> None:
    env = json.loads(seal(PRIV, "ops-2026", body()))
    env["body"] = env["body"].replace('"ping"', '"pinG"')
    assert code(verify(json.dumps(env).encode())) == "bad_signature"


def test_reserialised_body_is_a_bad_signature() -> None:
    """The signature is over the bytes as transmitted: reformatting the same JSON breaks it."""
    env = json.loads(seal(PRIV, "ops-2026", body()))
    env["body"] = json.dumps(json.loads(env["body"]), indent=1)
    assert code(verify(json.dumps(env).encode())) == "bad_signature"


def test_signature_without_domain_tag_does_not_verify() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(PRIV))
    text = body()
    sig = base64.b64encode(key.sign(text.encode())).decode()
    raw = json.dumps({"v": 1, "kid": "ops-2026", "sig": sig, "body": text}).encode()
    assert code(verify(raw)) == "bad_signature"


@pytest.mark.parametrize(
    ("text", "topic", "expected", "consumed"),
    [
        ("not json", "ping", "malformed", False),
        (json.dumps([1]), "ping", "malformed", False),
        (body(extra=1), "ping", "malformed", False),
        (body(nonce="short"), "ping", "malformed", False),
        (body(nonce="AB" * 16), "ping", "malformed", False),  # upper-case hex is not the format
        (body(iat=float(NOW)), "ping", "malformed", False),
        (body(exp=True), "ping", "malformed", False),
        (body(exp=NOW), "ping", "malformed", False),  # exp must be after iat
        (body(args=[]), "ping", "malformed", False),
        (body(gateway="gw-0002"), "ping", "wrong_gateway", False),
        (body(exp=NOW + MAX_WINDOW_S + 1), "ping", "window_too_long", False),
        (body(iat=NOW + MAX_SKEW_S + 1, exp=NOW + 600), "ping", "not_yet_valid", True),
        (body(iat=NOW - 400, exp=NOW - MAX_SKEW_S - 1), "ping", "expired", False),
        (body(), "snapshot", "topic_mismatch", True),
        (body(name="reboot"), "reboot", "unknown_command", True),
        (body(name="selftest"), "selftest", "not_allowed", True),
        (body(name="set_sample_interval", args={"interval_s": 0.01}), "set_sample_interval", "bad_arguments", True),
        (body(args={"echo": 1}), "ping", "bad_arguments", True),
    ],
)
def test_authenticated_refusals(text: str, topic: str, expected: str, consumed: bool) -> None:
    out = verify(seal(PRIV, "ops-2026", text), topic=topic)
    assert isinstance(out, Refusal) and out.code == expected, out
    assert out.authenticated and out.kid == "ops-2026"
    assert out.consume_nonce is consumed


def test_replayed_nonce_is_refused() -> None:
    raw = seal(PRIV, "ops-2026", body())
    assert code(verify(raw, seen={NONCE})) == "replayed"
    assert code(verify(raw, seen={"cd" * 16})) == "accepted"


def test_nonce_horizon_refuses_commands_that_may_have_been_forgotten() -> None:
    raw = seal(PRIV, "ops-2026", body())
    assert code(verify(raw, nonce_horizon_s=NOW + 300)) == "expired"
    assert code(verify(raw, nonce_horizon_s=NOW + 299)) == "accepted"


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (NOW - MAX_SKEW_S, "accepted"),  # gateway clock behind the operator's, within skew
        (NOW - MAX_SKEW_S - 1, "not_yet_valid"),
        (NOW + 300 + MAX_SKEW_S, "accepted"),  # just expired, within skew
        (NOW + 300 + MAX_SKEW_S + 0.5, "expired"),
    ],
)
def test_validity_edges(now: float, expected: str) -> None:
    assert code(verify(seal(PRIV, "ops-2026", body()), now=now)) == expected


def test_window_edge_exactly_max_is_accepted() -> None:
    assert code(verify(seal(PRIV, "ops-2026", body(exp=NOW + MAX_WINDOW_S)))) == "accepted"


def test_envelope_at_max_size_is_parsed() -> None:
    raw = seal(PRIV, "ops-2026", body())
    raw = raw[:-1] + b" " * (MAX_ENVELOPE_BYTES - len(raw)) + b"}"
    assert len(raw) == MAX_ENVELOPE_BYTES
    assert code(verify(raw)) == "accepted"


def test_non_ascii_body_round_trips() -> None:
    text = body(name="snapshot", args={"reason": "Überspannung ⚡"})
    keys = keyring([TrustedKey("ops-2026", PUB, frozenset({"snapshot"}))])
    out = verify_command(seal(PRIV, "ops-2026", text), topic_name="snapshot", gateway_id=GW, keys=keys,
                         now_s=NOW, seen_nonce=lambda n: False)  # fmt: skip
    assert isinstance(out, VerifiedCommand) and out.args == {"reason": "Überspannung ⚡"}


@pytest.mark.parametrize(
    ("name", "args", "ok"),
    [
        ("read_registers", {"meter": "m1", "function": 3, "address": 0, "count": 1}, True),
        ("read_registers", {"meter": "m1", "function": 4, "address": 65535, "count": 1}, True),
        ("read_registers", {"meter": "m1", "function": 4, "address": 65500, "count": 125}, False),
        ("read_registers", {"meter": "m1", "function": 6, "address": 0, "count": 1}, False),  # write: never
        ("read_registers", {"meter": "m1", "function": 3, "address": -1, "count": 1}, False),
        ("read_registers", {"meter": "m1", "function": 3, "address": 0, "count": 126}, False),
        ("read_registers", {"meter": "m1", "function": 3, "address": 0, "count": 0}, False),
        ("read_registers", {"meter": "m1", "function": 3, "address": 0, "count": True}, False),
        ("read_registers", {"meter": "../etc", "function": 3, "address": 0, "count": 1}, False),
        ("read_registers", {"meter": "m1", "function": 3, "address": 0}, False),
        ("set_sample_interval", {"interval_s": 0.05}, True),
        ("set_sample_interval", {"interval_s": 0.049}, False),
        ("set_sample_interval", {"interval_s": 60}, True),
        ("set_sample_interval", {"interval_s": 60.01}, False),
        ("set_sample_interval", {"interval_s": "1"}, False),
        ("set_sample_interval", {"interval_s": 10**400}, False),
        ("set_sample_interval", {"interval_s": float("inf")}, False),
        ("relay_cycle", {"cp": "CP7", "force": True}, True),
        ("relay_cycle", {"cp": "CP7", "force": "yes"}, False),
        ("relay_cycle", {"force": True}, False),
        ("snapshot", {}, True),
        ("snapshot", {"reason": "x" * 129}, False),
        ("get_config", {"section": "value"}, False),
        ("selftest", {}, True),
        ("nope", {}, False),
    ],
)
def test_argument_validation(name: str, args: dict[str, Any], ok: bool) -> None:
    assert isinstance(validate_args(name, args), dict) is ok


def test_sign_command_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown command"):
        sign_command(PRIV, "ops-2026", "reboot", GW, {})
    with pytest.raises(ValueError, match="bad arguments"):
        sign_command(PRIV, "ops-2026", "set_sample_interval", GW, {"interval_s": 100})
    with pytest.raises(ValueError, match="ttl_s"):
        sign_command(PRIV, "ops-2026", "ping", GW, {}, ttl_s=MAX_WINDOW_S + 1)


def test_trusted_key_validation() -> None:
    with pytest.raises(ValueError, match="32 raw bytes"):
        TrustedKey("k", base64.b64encode(b"x" * 31).decode(), frozenset())
    with pytest.raises(ValueError, match="unknown commands"):
        TrustedKey("k", PUB, frozenset({"reboot"}))
    with pytest.raises(ValueError, match="duplicate kid"):
        keyring([TrustedKey("k", PUB, frozenset()), TrustedKey("k", OTHER_PUB, frozenset())])


def test_key_registered_under_another_kid_is_unknown() -> None:
    keys = {"alias": TrustedKey("ops-2026", PUB, frozenset({"ping"}))}
    out = verify_command(seal(PRIV, "alias", body()), topic_name="ping", gateway_id=GW, keys=keys, now_s=NOW,
                         seen_nonce=lambda n: False)  # fmt: skip
    assert code(out) == "unknown_key"


# ---------------------------------------------------------------------------------------- fuzzing


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_never_raise(raw: bytes) -> None:
    out = verify(raw)
    assert isinstance(out, Refusal) and not out.detail.startswith("internal")


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={"v": _json, "kid": st.sampled_from(["ops-2026", "viewer", ""]) | _json, "sig": _json, "body": _json},
    )
)
def test_random_envelopes_never_raise(env: dict[str, Any]) -> None:
    out = verify(json.dumps(env).encode())
    assert isinstance(out, Refusal) and not out.detail.startswith("internal")


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={"name": _json | st.sampled_from(["ping", "read_registers"]), "gateway": _json | st.just(GW),
                  "nonce": _json | st.just(NONCE), "iat": _json | st.just(NOW), "exp": _json | st.just(NOW + 1),
                  "args": _json},  # fmt: skip
    )
)
def test_random_signed_bodies_never_raise(b: dict[str, Any]) -> None:
    out = verify(seal(PRIV, "ops-2026", json.dumps(b)), topic="read_registers")
    assert isinstance(out, (Refusal, VerifiedCommand))
    assert not (isinstance(out, Refusal) and out.detail.startswith("internal")), out


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(COMMANDS)), st.dictionaries(st.sampled_from(
    ["meter", "function", "address", "count", "cp", "force", "interval_s", "reason", "pre_s", "post_s", "x"]), _json))
def test_validate_args_never_raises(name: str, args: dict[str, Any]) -> None:
    assert isinstance(validate_args(name, args), (dict, str))


# ---------------------------------------------------------------------------------------- nonce store


def test_nonce_store_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state" / "nonces"
    with NonceStore(path, clock=lambda: NOW) as s:
        s.remember(NONCE, NOW + 300)
        assert s.seen(NONCE)
    with NonceStore(path, clock=lambda: NOW + 10) as s:
        assert s.seen(NONCE) and not s.seen("cd" * 16)
        assert s.ignored_lines == 0


def test_nonce_store_ignores_torn_and_corrupt_lines(tmp_path: Path) -> None:
    path = tmp_path / "nonces"
    with NonceStore(path, clock=lambda: NOW) as s:
        s.remember(NONCE, NOW + 300)
        s.remember("cd" * 16, NOW + 300)
    data = path.read_bytes()
    flipped = data.replace(b"N " + b"cd" * 16, b"N " + b"ce" + b"cd" * 15)  # bit rot: CRC no longer matches
    path.write_bytes(flipped + b"N " + b"ef" * 16 + b" 18000")  # torn tail, no newline
    with NonceStore(path, clock=lambda: NOW) as s:
        assert s.seen(NONCE)
        assert not s.seen("ce" + "cd" * 15) and not s.seen("ef" * 16)
        assert s.ignored_lines == 2
        s.remember("12" * 16, NOW + 300)  # appends cleanly after the compaction cut the torn tail
    with NonceStore(path, clock=lambda: NOW) as s:
        assert s.seen("12" * 16) and s.ignored_lines == 0


def test_nonce_store_compaction_drops_old_entries_and_raises_horizon(tmp_path: Path) -> None:
    path = tmp_path / "nonces"
    with NonceStore(path, retention_s=100, clock=lambda: NOW) as s:
        s.remember(NONCE, NOW + 10)
        s.remember("cd" * 16, NOW + 500)
        assert s.horizon_s == 0
    with NonceStore(path, retention_s=100, clock=lambda: NOW + 200) as s:
        assert not s.seen(NONCE) and s.seen("cd" * 16)
        assert s.horizon_s == NOW + 10
    # the clock steps back: the horizon survives and still covers the forgotten nonce
    with NonceStore(path, retention_s=100, clock=lambda: NOW) as s:
        assert s.horizon_s == NOW + 10
        raw = seal(PRIV, "ops-2026", body(exp=NOW + 10))
        assert code(verify(raw, seen=set(), nonce_horizon_s=s.horizon_s)) == "expired"


def test_nonce_store_rejects_injection(tmp_path: Path) -> None:
    with NonceStore(tmp_path / "nonces", clock=lambda: NOW) as s, pytest.raises(ValueError):
        s.remember("ab" * 16 + "\nN " + "cd" * 16, NOW)


def test_nonce_store_file_is_private(tmp_path: Path) -> None:
    with NonceStore(tmp_path / "nonces", clock=lambda: NOW) as s:
        s.remember(NONCE, NOW + 1)
    assert (tmp_path / "nonces").stat().st_mode & 0o077 == 0


def test_unreadable_nonce_file_fails_closed(tmp_path: Path) -> None:
    (tmp_path / "nonces").mkdir()
    with pytest.raises(OSError):
        NonceStore(tmp_path / "nonces")


def test_module_does_not_import_the_value_channel() -> None:
    import ast

    import appliance.health.commands as mod

    tree = ast.parse(Path(mod.__file__).read_text())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert imported and not [m for m in imported if m.startswith("appliance.value")]
