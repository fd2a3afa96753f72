"""What one upstream TLS connection costs in memory, against a plain TCP connection in the same run.

    ./dev bench tls_memory [--n 1000]

Why: at 1,000 chargers on security profile 2 the value process holds 1,000 upstream TLS client
connections, and their state decides whether the process fits a memory budget. This opens N client
connections from this process to a TLS server in another process (its certificate from a test CA
made here) and reports the growth of this process's RSS per connection, for: plain TCP (the
baseline), TLS on uvloop (what ``omgw value`` runs), TLS on uvloop when the server sends no TLS 1.3
session tickets, TLS 1.2 only, and TLS on the stdlib asyncio loop. Each connection has sent 100
bytes, as a connection that has carried traffic would have. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.devpki import DevCA  # noqa: E402
from value_latency import proc_status_kb  # noqa: E402  (bench/ is this script's directory)

# The server: echo nothing, read until EOF. argv: certfile keyfile tickets ("-" = plain TCP).
SERVER = r"""
import asyncio, ssl, sys
async def main():
    ctx = None
    if sys.argv[1] != "-":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sys.argv[1], sys.argv[2])
        ctx.num_tickets = int(sys.argv[3])
    async def drain(reader, writer):
        while await reader.read(4096):
            pass
        writer.close()
    server = await asyncio.start_server(drain, "127.0.0.1", 0, ssl=ctx, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def rss_kb() -> int:
    kb = proc_status_kb(os.getpid(), "VmRSS")
    assert kb is not None
    return kb


async def per_connection_kb(n: int, port: int, ctx: ssl.SSLContext | None) -> float:
    before = rss_kb()
    conns: list[tuple[Any, Any]] = []
    for i in range(0, n, 50):
        conns += await asyncio.gather(*(
            asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1" if ctx else None)
            for _ in range(min(50, n - i))))
    for _, writer in conns:
        writer.write(b"x" * 100)
        await writer.drain()
    await asyncio.sleep(0.3)
    grown = (rss_kb() - before) / n
    for _, writer in conns:
        writer.close()
    return grown


def measure(case: str, n: int, loop: str, ca: DevCA, cert: Any, tickets: int, tls12: bool) -> float:
    args = ["-", "-", "0"] if case == "plain" else [str(cert.cert), str(cert.key), str(tickets)]
    server = subprocess.Popen([sys.executable, "-c", SERVER, *args], stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        # A fresh child per case, so earlier cases' freed memory cannot hide this one's growth.
        return float(subprocess.run(
            [sys.executable, __file__, "--child", loop, str(n), str(port),
             "-" if case == "plain" else str(ca.cert_file),
             "12" if tls12 else "13"],
            check=True, capture_output=True, text=True).stdout)
    finally:
        server.kill()
        server.wait()


def child(loop: str, n: int, port: int, cafile: str, version: str) -> None:
    ctx = None
    if cafile != "-":
        ctx = ssl.create_default_context(cafile=cafile)
        if version == "12":
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if loop == "uvloop":
        import uvloop
        print(uvloop.run(per_connection_kb(n, port, ctx)))
    else:
        print(asyncio.run(per_connection_kb(n, port, ctx)))


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="client connections per case")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="omgw-tlsmem-") as tmp:
        ca = DevCA(Path(tmp) / "pki")
        cert = ca.issue("csms", hosts=("localhost", "127.0.0.1"))
        cases = [
            ("plain TCP, uvloop (baseline)", "plain", "uvloop", 2, False),
            ("TLS 1.3, uvloop, 2 session tickets", "tls", "uvloop", 2, False),
            ("TLS 1.3, uvloop, no session tickets", "tls", "uvloop", 0, False),
            ("TLS 1.2, uvloop", "tls", "uvloop", 2, True),
            ("TLS 1.3, stdlib asyncio, 2 tickets", "tls", "asyncio", 2, False),
        ]
        print(f"RSS growth per client connection, {args.n:,} connections per case "
              f"(python {platform.python_version()}, {ssl.OPENSSL_VERSION})")
        base = 0.0
        for i, (label, case, loop, tickets, tls12) in enumerate(cases):
            kb = measure(case, args.n, loop, ca, cert, tickets, tls12)
            if i == 0:
                base = kb
            extra = f"   +{kb - base:.1f} KB over plain TCP" if i else ""
            print(f"  {label:40} {kb:6.1f} KB{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
