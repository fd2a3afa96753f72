"""Operator-side key tools: key files, TOML snippet, signing from a file."""

from __future__ import annotations

import io
import json
import os
import time
import tomllib
from pathlib import Path

import pytest

from appliance.health.commands import TrustedKey, VerifiedCommand, verify_command
from appliance.health.keys_cli import KeyFileError, keygen, sign


def test_keygen_writes_private_key_0600_and_prints_toml(tmp_path: Path) -> None:
    out = io.StringIO()
    priv, pub = keygen(tmp_path / "ops-2026", out=out)
    assert priv.name == "ops-2026.key" and pub.name == "ops-2026.pub"
    assert priv.stat().st_mode & 0o777 == 0o600
    table = tomllib.loads(out.getvalue())["commands"]["keys"][0]
    assert table["kid"] == "ops-2026" and table["public_key"] == pub.read_text().strip()
    assert priv.read_text().strip() not in out.getvalue()


def test_keygen_never_overwrites(tmp_path: Path) -> None:
    keygen(tmp_path / "k", out=io.StringIO())
    (tmp_path / "k.pub").unlink()
    with pytest.raises(FileExistsError):
        keygen(tmp_path / "k", out=io.StringIO())


def test_sign_round_trips_through_verify(tmp_path: Path) -> None:
    priv, pub = keygen(tmp_path / "ops", out=io.StringIO())
    raw = sign(priv, "ops", "gw-0001", "relay_cycle", '{"cp": "CP7", "force": true}', 60)
    key = TrustedKey("ops", pub.read_text().strip(), frozenset({"relay_cycle"}))
    out = verify_command(raw, topic_name="relay_cycle", gateway_id="gw-0001", keys={"ops": key},
                         now_s=time.time(), seen_nonce=lambda n: False)  # fmt: skip
    assert isinstance(out, VerifiedCommand) and out.args == {"cp": "CP7", "force": True}
    assert out.exp - out.iat == 60
    assert "sig" in json.loads(raw)


def test_sign_refuses_a_readable_private_key(tmp_path: Path) -> None:
    priv, _ = keygen(tmp_path / "ops", out=io.StringIO())
    os.chmod(priv, 0o644)
    with pytest.raises(KeyFileError, match="too open"):
        sign(priv, "ops", "gw-0001", "ping", "{}", 60)


def test_sign_refuses_bad_args(tmp_path: Path) -> None:
    priv, _ = keygen(tmp_path / "ops", out=io.StringIO())
    with pytest.raises(ValueError, match="not JSON"):
        sign(priv, "ops", "gw-0001", "ping", "{", 60)
    with pytest.raises(ValueError, match="bad arguments"):
        sign(priv, "ops", "gw-0001", "read_registers", '{"meter": "m1", "function": 16, "address": 0, "count": 1}', 60)
