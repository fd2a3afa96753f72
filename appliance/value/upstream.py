"""The upstream leg: one WebSocket to the CSMS per charge point, at the configured security profile.

Profiles (OCPP 1.6 Security Whitepaper / OCPP 2.0.1 Part 2 A00):
  0  ws://,  no authentication                (only with allow_insecure)
  1  ws://,  HTTP Basic auth                  (only with allow_insecure)
  2  wss://, HTTP Basic auth, server certificate and hostname verified against ca_file, TLS >= 1.2
  3  wss://, client certificate (mTLS), server verified as in 2, TLS >= 1.2
There is no fallback: a TLS or certificate failure refuses the charger, it never retries weaker.
"""

from __future__ import annotations

import base64
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from ..config import ChargePointConfig, ValueConfig
from .link import RelayClientConnection


class UpstreamError(Exception):
    """The CSMS could not be reached or refused us; ``http_status`` is what the charger gets."""

    def __init__(self, http_status: int, reason: str, detail: str = ""):
        self.http_status = http_status
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def client_ssl_context(
    ca_file: Path, client_cert: Path | None = None, client_key: Path | None = None
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    if client_cert is not None and client_key is not None:
        ctx.load_cert_chain(str(client_cert), str(client_key))
    return ctx


def server_ssl_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_file), str(key_file))
    return ctx


@dataclass(frozen=True)
class UpstreamDialer:
    """Everything needed to open upstream legs, prepared once at start so bad files fail early."""

    cfg: ValueConfig
    _contexts: dict[tuple[Path | None, Path | None], ssl.SSLContext]

    @classmethod
    def create(cls, cfg: ValueConfig) -> UpstreamDialer:
        contexts: dict[tuple[Path | None, Path | None], ssl.SSLContext] = {}
        if cfg.security_profile >= 2:
            assert cfg.ca_file is not None  # enforced by config validation
            pairs = {(cfg.client_cert, cfg.client_key)} if cfg.security_profile == 3 else {(None, None)}
            if cfg.security_profile == 3:
                pairs |= {
                    (cp.client_cert or cfg.client_cert, cp.client_key or cfg.client_key)
                    for cp in cfg.charge_points
                }
            for cert, key in pairs:
                if cfg.security_profile == 3 and (cert is None or key is None):
                    continue  # unknown charge points without a default client cert are refused later
                contexts[(cert, key)] = client_ssl_context(cfg.ca_file, cert, key)
        return cls(cfg, contexts)

    def url_for(self, cp_id: str) -> str:
        return self.cfg.csms_url.rstrip("/") + "/" + quote(cp_id, safe="")

    def _ssl_for(self, cp: ChargePointConfig | None) -> ssl.SSLContext | None:
        p = self.cfg.security_profile
        if p < 2:
            return None
        if p == 2:
            return self._contexts[(None, None)]
        cert = (cp.client_cert if cp else None) or self.cfg.client_cert
        key = (cp.client_key if cp else None) or self.cfg.client_key
        ctx = self._contexts.get((cert, key))
        if ctx is None:
            raise UpstreamError(502, "no_client_certificate", "profile 3 needs a client certificate")
        return ctx

    def _auth_header(self, cp_id: str, cp: ChargePointConfig | None) -> dict[str, str]:
        if self.cfg.security_profile not in (1, 2):
            return {}
        if cp is None or cp.password_file is None:
            raise UpstreamError(502, "no_upstream_password", "profiles 1-2 need a password_file")
        try:
            password = cp.password_file.read_text().rstrip("\r\n")
        except OSError as e:
            raise UpstreamError(502, "password_file_unreadable", e.strerror or "") from None
        token = base64.b64encode(f"{cp_id}:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    async def open(
        self, cp_id: str, cp: ChargePointConfig | None, subprotocols: list[Subprotocol]
    ) -> ClientConnection:
        cfg = self.cfg
        ctx = self._ssl_for(cp)
        headers = self._auth_header(cp_id, cp)
        try:
            return await connect(
                self.url_for(cp_id),
                ssl=ctx,
                additional_headers=headers,
                subprotocols=subprotocols or None,
                compression=None,
                open_timeout=cfg.connect_timeout_s,
                **cfg.keepalive(),
                max_size=cfg.max_frame_bytes,
                max_queue=16,
                user_agent_header=None,
                create_connection=RelayClientConnection,
            )
        except ssl.SSLCertVerificationError as e:
            raise UpstreamError(502, "tls_verify_failed", e.verify_message or str(e)) from None
        except ssl.SSLError as e:
            raise UpstreamError(502, "tls_error", e.reason or str(e)) from None
        except InvalidStatus as e:
            status = e.response.status_code
            raise UpstreamError(502, "csms_refused", f"http {status}") from None
        except InvalidHandshake as e:
            raise UpstreamError(502, "csms_handshake_failed", str(e)) from None
        except TimeoutError:
            raise UpstreamError(503, "csms_timeout", f"no answer in {cfg.connect_timeout_s}s") from None
        except OSError as e:
            raise UpstreamError(503, "csms_unreachable", e.strerror or str(e)) from None
