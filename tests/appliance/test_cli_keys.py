"""``omgw keygen`` and ``omgw sign-command``: the operator's side of signed remote commands."""

from __future__ import annotations

import subprocess
import sys
import time
import tomllib
from pathlib import Path

from appliance.health.commands import TrustedKey, VerifiedCommand, verify_command

OMGW = [sys.executable, "-m", "appliance.cli"]


def test_keygen_then_signed_command_verifies_on_the_gateway(tmp_path: Path) -> None:
    out = subprocess.run([*OMGW, "keygen", str(tmp_path / "ops"), "--kid", "ops-1"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "ops.key").stat().st_mode & 0o777 == 0o600
    entry = tomllib.loads(out.stdout)["commands"]["keys"][0]
    key = TrustedKey(entry["kid"], entry["public_key"], frozenset({"ping", "relay_cycle"}))
    signed = subprocess.run([*OMGW, "sign-command", "--key", str(tmp_path / "ops.key"), "--kid", "ops-1",
                             "--gateway", "gw-7", "relay_cycle", '{"cp": "CP001", "force": true}'],
                            capture_output=True, timeout=60)
    assert signed.returncode == 0, signed.stderr
    result = verify_command(signed.stdout.strip(), topic_name="relay_cycle", gateway_id="gw-7", keys={"ops-1": key},
                            now_s=time.time(), seen_nonce=lambda n: False)
    assert isinstance(result, VerifiedCommand)
    assert result.args == {"cp": "CP001", "force": True}
    # The same envelope is refused by another gateway.
    other = verify_command(signed.stdout.strip(), topic_name="relay_cycle", gateway_id="gw-8", keys={"ops-1": key},
                           now_s=time.time(), seen_nonce=lambda n: False)
    assert getattr(other, "code", None) == "wrong_gateway"


def test_keygen_never_overwrites_a_key(tmp_path: Path) -> None:
    subprocess.run([*OMGW, "keygen", str(tmp_path / "k")], capture_output=True, timeout=60, check=True)
    again = subprocess.run([*OMGW, "keygen", str(tmp_path / "k")], capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
