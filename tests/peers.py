"""Test peers and config builders shared by the value-channel tests (imported by conftest and tests)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from appliance import config as config_mod
from appliance.devpki import CertFiles, DevCA
from appliance.value.server import ValueChannel


class Pki:
    def __init__(self, root: Path):
        self.ca = DevCA(root / "ca")
        self.other_ca = DevCA(root / "other", name="omgw other CA")
        self.server = self.ca.issue("csms", hosts=("localhost", "127.0.0.1"))
        self.wrong_host = self.ca.issue("wronghost", hosts=("csms.example.org",))
        self.expired = self.ca.issue("expired", hosts=("localhost", "127.0.0.1"), days=-1, not_before_days=-30)
        self.untrusted = self.other_ca.issue("untrusted", hosts=("localhost", "127.0.0.1"))
        self.client = self.ca.issue("CP001", client=True)
        self.charger_side = self.ca.issue("gateway", hosts=("localhost", "127.0.0.1"))

    def server_context(self, leaf: CertFiles, require_client_cert: bool = False) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(leaf.cert, leaf.key)
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(self.ca.cert_file)
        return ctx


def write_secret(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


def make_config(tmp_path: Path, csms_url: str, **value: Any) -> config_mod.Config:
    """A valid config for the value channel on a free loopback port, files in tmp_path."""
    data: dict[str, Any] = {
        "gateway": {"id": "gw-test", "state_dir": str(tmp_path / "state")},
        "value": {
            "listen": "127.0.0.1:0",
            "csms_url": csms_url,
            "security_profile": 0,
            "allow_insecure": True,
            "ping_interval_s": 5,
            "connect_timeout_s": 3,
            "tap_socket": str(tmp_path / "tap.sock"),
            "status_socket": str(tmp_path / "value.sock"),
            "charge_points": [{"id": "CP001"}, {"id": "CP002"}, {"id": "CP003"}],
        },
    }
    data["value"].update(value)
    return config_mod.parse(data, "<test>")


def proxy_url(channel: ValueChannel, scheme: str = "ws") -> str:
    return f"{scheme}://127.0.0.1:{channel.port}/ocpp"
