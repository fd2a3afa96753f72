"""Security profiles 0-3 upstream with a CA and certificates generated per test session."""

from __future__ import annotations

import base64
import logging
import ssl

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from appliance import logfmt
from appliance.demo.chargers import connect_charger
from appliance.demo.csms import SimulatedCsms
from peers import Pki, proxy_url, write_secret


def _basic(cp_id: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{cp_id}:{password}".encode()).decode()


async def _boot_through(proxy, cp_id: str = "CP001") -> None:
    cp, ws, task = await connect_charger(proxy_url(proxy), cp_id)
    try:
        assert (await cp.boot()).status == "Accepted"
    finally:
        task.cancel()
        await ws.close()


async def test_profile0_plain_ws_without_auth(csms: SimulatedCsms, start_proxy) -> None:
    proxy = await start_proxy(csms.url, security_profile=0)
    await _boot_through(proxy)
    assert "Authorization" not in csms.connection_for("CP001").headers


async def test_profile1_sends_basic_auth(start_proxy, tmp_path) -> None:
    pw = write_secret(tmp_path / "cp1.pass", "upstream-pass-1")
    async with SimulatedCsms(basic_auth={"CP001": "upstream-pass-1"}) as csms:
        proxy = await start_proxy(csms.url, security_profile=1,
                                  charge_points=[{"id": "CP001", "password_file": str(pw)}])
        await _boot_through(proxy)
        assert csms.connection_for("CP001").headers["Authorization"] == _basic("CP001", "upstream-pass-1")


async def test_profile2_tls_verified_with_basic_auth(pki: Pki, start_proxy, tmp_path) -> None:
    pw = write_secret(tmp_path / "cp1.pass", "tls-pass")
    ctx = pki.server_context(pki.server)
    async with SimulatedCsms(ssl_context=ctx, basic_auth={"CP001": "tls-pass"}) as csms:
        proxy = await start_proxy(csms.url, security_profile=2, allow_insecure=False, ca_file=str(pki.ca.cert_file),
                                  charge_points=[{"id": "CP001", "password_file": str(pw)}])
        await _boot_through(proxy)
        seen = csms.connection_for("CP001")
        assert seen.connection.transport.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")


async def test_profile3_presents_client_certificate(pki: Pki, start_proxy) -> None:
    ctx = pki.server_context(pki.server, require_client_cert=True)
    async with SimulatedCsms(ssl_context=ctx) as csms:
        proxy = await start_proxy(csms.url, security_profile=3, allow_insecure=False, ca_file=str(pki.ca.cert_file),
                                  charge_points=[{"id": "CP001", "client_cert": str(pki.client.cert),
                                                  "client_key": str(pki.client.key)}])
        await _boot_through(proxy)
        seen = csms.connection_for("CP001")
        assert "commonName=CP001" in seen.client_cert_subject
        assert "Authorization" not in seen.headers


@pytest.mark.parametrize("leaf,reason", [
    ("untrusted", "unable to get local issuer certificate"),
    ("wrong_host", "Hostname mismatch"),
    ("expired", "certificate has expired"),
])
async def test_bad_csms_certificate_refuses_the_charger(pki: Pki, start_proxy, tmp_path, caplog, leaf, reason) -> None:
    pw = write_secret(tmp_path / "cp1.pass", "never-sent")
    caplog.set_level(logging.INFO)
    async with SimulatedCsms(ssl_context=pki.server_context(getattr(pki, leaf))) as csms:
        proxy = await start_proxy(csms.url, security_profile=2, allow_insecure=False, ca_file=str(pki.ca.cert_file),
                                  charge_points=[{"id": "CP001", "password_file": str(pw)}])
        with pytest.raises(InvalidStatus) as e:
            await connect(proxy_url(proxy) + "/CP001", subprotocols=["ocpp1.6"])
        assert e.value.response.status_code == 502
        assert csms.connections == []
    refusals = [r for r in caplog.records if r.getMessage() == "charger_refused"]
    assert refusals and reason in refusals[-1].kv["detail"]
    assert refusals[-1].kv["reason"] == "upstream: tls_verify_failed"
    formatted = "\n".join(logfmt.LogfmtFormatter().format(r) for r in caplog.records)
    assert "tls_verify_failed" in formatted
    assert "never-sent" not in formatted  # the password is never logged


async def test_profile3_without_client_cert_is_refused_by_csms(pki: Pki, start_proxy) -> None:
    """A CSMS that requires mTLS refuses profile 2 style connections: no silent downgrade."""
    ctx = pki.server_context(pki.server, require_client_cert=True)
    async with SimulatedCsms(ssl_context=ctx) as csms:
        other = pki.other_ca.issue("CP001-foreign", client=True)  # not issued by the CA the CSMS trusts
        proxy = await start_proxy(csms.url, security_profile=3, allow_insecure=False, ca_file=str(pki.ca.cert_file),
                                  charge_points=[{"id": "CP001", "client_cert": str(other.cert),
                                                  "client_key": str(other.key)}])
        with pytest.raises(InvalidStatus) as e:
            await connect(proxy_url(proxy) + "/CP001", subprotocols=["ocpp1.6"])
        assert e.value.response.status_code in (502, 503)
        assert csms.connections == []


async def test_charger_side_wss(pki: Pki, csms: SimulatedCsms, start_proxy) -> None:
    proxy = await start_proxy(csms.url, charger_tls={"cert_file": str(pki.charger_side.cert),
                                                     "key_file": str(pki.charger_side.key)})
    client_ctx = ssl.create_default_context(cafile=str(pki.ca.cert_file))
    async with connect(f"wss://localhost:{proxy.port}/ocpp/CP001", ssl=client_ctx, subprotocols=["ocpp1.6"]) as ws:
        await ws.send('[2,"1","Heartbeat",{}]')
        assert (await ws.recv()).startswith('[3,"1",')
