"""Typed config: every error with its key path; check-config exits 2 or 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from appliance import config as config_mod
from appliance.passwords import hash_password, verify_password

GOOD = """
[gateway]
id = "gw-0001"
state_dir = "{tmp}/state"

[value]
listen = "0.0.0.0:9000"
csms_url = "wss://csms.example.com/ocpp"
security_profile = 2
ca_file = "{tmp}/ca.pem"

[[value.charge_points]]
id = "CP001"
password_file = "{tmp}/CP001.pass"
"""


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "ca.pem").write_text("ca")
    (tmp_path / "CP001.pass").write_text("pw")
    (tmp_path / "CP001.pass").chmod(0o600)
    return tmp_path


def check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "omgw.toml"
    path.write_text(text)
    return subprocess.run([sys.executable, "-m", "appliance.cli", "check-config", "-c", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_good_config_loads_typed(files: Path) -> None:
    path = files / "omgw.toml"
    path.write_text(GOOD.format(tmp=files))
    cfg = config_mod.load(path)
    assert cfg.value is not None
    assert cfg.value.security_profile == 2 and cfg.value.listen_host_port() == ("0.0.0.0", 9000)
    assert cfg.value.charge_point("CP001").password_file == files / "CP001.pass"
    assert check(files, GOOD.format(tmp=files)).returncode == 0


def test_every_error_is_printed_with_its_key_path(files: Path) -> None:
    text = GOOD.format(tmp=files) + """
[[value.charge_points]]
id = "CP7"
password_file = "{tmp}/CP001.pass"
[[value.charge_points]]
id = "CP7"
password_file = "{tmp}/missing.pass"
""".format(tmp=files)
    text = text.replace('security_profile = 2', 'security_profile = 2\nvalidation = "strict"\nping_interval_s = -1')
    result = check(files, text)
    assert result.returncode == 2
    lines = result.stdout.splitlines()
    assert "value.validation: Input should be 'off', 'log' or 'enforce'" in lines
    assert any(line.startswith("value.ping_interval_s: ") for line in lines)
    # Structural errors are reported first; fix them and the cross-field checks show up.
    text = text.replace('validation = "strict"\nping_interval_s = -1', "")
    lines = check(files, text).stdout.splitlines()
    assert 'value.charge_points[2].id: duplicate id "CP7" (also at [1])' in lines
    assert f'value.charge_points[2].password_file: file not found "{files}/missing.pass"' in lines


@pytest.mark.parametrize("change,expected", [
    (('security_profile = 2', 'security_profile = 0'),
     "value.security_profile: profile 0 sends OCPP unencrypted; set value.allow_insecure = true to accept that"),
    (('wss://', 'ws://'), "value.csms_url: security profile 2 needs a wss:// URL, got ws://"),
    (('ca_file = ', 'xca_file = '), "value.xca_file: unknown key (check the spelling)"),
    (('id = "gw-0001"', 'id = "gw 0001"'), "gateway.id: String should match pattern '^[A-Za-z0-9._-]+$'"),
    (('listen = "0.0.0.0:9000"', 'listen = "nowhere"'), 'value.listen: expected "HOST:PORT", got "nowhere"'),
    (('csms_url', 'csms_uri'), "value.csms_url: required key is missing"),
])
def test_specific_errors(files: Path, change: tuple[str, str], expected: str) -> None:
    result = check(files, GOOD.format(tmp=files).replace(*change))
    assert result.returncode == 2
    assert expected in result.stdout.splitlines()


def test_secret_file_readable_by_others_is_an_error(files: Path) -> None:
    (files / "CP001.pass").chmod(0o644)
    result = check(files, GOOD.format(tmp=files))
    assert result.returncode == 2
    assert "value.charge_points[0].password_file: secret file" in result.stdout


def test_broken_toml_and_missing_file(files: Path) -> None:
    result = check(files, "[gateway\nid=")
    assert result.returncode == 2 and "not valid TOML" in result.stdout
    result = subprocess.run([sys.executable, "-m", "appliance.cli", "check-config", "-c", str(files / "nope.toml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "cannot read config" in result.stdout


def test_value_refuses_to_start_on_bad_config(files: Path) -> None:
    path = files / "omgw.toml"
    path.write_text(GOOD.format(tmp=files).replace("security_profile = 2", "security_profile = 1"))
    result = subprocess.run([sys.executable, "-m", "appliance.cli", "value", "-c", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "value.security_profile: profile 1 sends OCPP unencrypted" in result.stderr


def test_hash_password_round_trip() -> None:
    result = subprocess.run([sys.executable, "-m", "appliance.cli", "hash-password", "--stdin"],
                            input="charger-pw\n", capture_output=True, text=True, timeout=60)
    encoded = result.stdout.strip()
    assert result.returncode == 0 and encoded.startswith("scrypt$")
    assert verify_password("charger-pw", encoded)
    assert not verify_password("charger-pW", encoded)
    assert hash_password("same") != hash_password("same")  # salted
    assert not verify_password("x", "garbage")


def test_sample_interval_allows_20_hz_and_no_faster() -> None:
    from pydantic import ValidationError

    from appliance.config import HealthConfig

    assert HealthConfig(sample_interval_s=0.05).sample_interval_s == 0.05
    with pytest.raises(ValidationError, match="greater than or equal to 0.05"):
        HealthConfig(sample_interval_s=0.04)
