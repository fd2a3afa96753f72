"""The ``omgw`` command: wires config, channels and tools together (nothing imports the CLI)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import socket
import sys
from pathlib import Path
from typing import Any

from . import __version__, config as config_mod
from . import logfmt

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2


def _load_config(path: Path) -> config_mod.Config:
    try:
        return config_mod.load(path)
    except config_mod.ConfigError as e:
        print(f"omgw: invalid config {e.source}:", file=sys.stderr)
        for p in e.problems:
            print(f"  {p}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def run_loop(main: Any) -> Any:
    """uvloop where installed (about half the event-loop overhead per forwarded frame), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config_mod.load(args.config, check_files=not args.no_files)
    except config_mod.ConfigError as e:
        for p in e.problems:
            print(p)
        print(f"{e.source}: {len(e.problems)} error(s)", file=sys.stderr)
        return EXIT_CONFIG
    print(f"{args.config}: ok")
    return EXIT_OK


def cmd_value(args: argparse.Namespace) -> int:
    cfg = _load_config(args.config)
    if cfg.value is None:
        print("omgw value: the config has no [value] section", file=sys.stderr)
        return EXIT_CONFIG
    logfmt.setup(args.log_level)
    from .value.run import serve_value

    try:
        run_loop(serve_value(cfg))
    except OSError as e:  # e.g. the listen port is taken, or a TLS file went missing after validation
        logfmt.get_logger("value").error("value_start_failed", error=str(e))
        return EXIT_FAIL
    return EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    cfg = _load_config(args.config)
    if cfg.health is None:
        print("omgw health: the config has no [health] section", file=sys.stderr)
        return EXIT_CONFIG
    logfmt.setup(args.log_level)
    from drivers.sim import SimulationRefused

    from .health.run import serve_health

    try:
        run_loop(serve_health(cfg))
    except OSError as e:
        logfmt.get_logger("health").error("health_start_failed", error=str(e))
        return EXIT_FAIL
    except SimulationRefused as e:  # a simulated-bench hook in the environment of a real gateway
        logfmt.get_logger("health").error("health_start_failed", error=str(e))
        print(f"omgw health: {e}", file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """Both channels as supervised child processes (development; the image uses two systemd units)."""
    cfg = _load_config(args.config)
    channels = [name for name in ("value", "health") if getattr(cfg, name) is not None]
    if not channels:
        print("omgw run: the config has neither a [value] nor a [health] section", file=sys.stderr)
        return EXIT_CONFIG
    logfmt.setup(args.log_level)
    from .runtime import Supervisor, channel_specs

    async def supervise() -> int:
        return await Supervisor(channel_specs(args.config, channels, args.log_level)).run()

    return int(run_loop(supervise()))


def cmd_hash_password(args: argparse.Namespace) -> int:
    from .passwords import hash_password

    if args.stdin or not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Charger password: ")
        if getpass.getpass("Again: ") != password:
            print("omgw: passwords differ", file=sys.stderr)
            return EXIT_FAIL
    if not password:
        print("omgw: empty password", file=sys.stderr)
        return EXIT_FAIL
    print(hash_password(password))
    return EXIT_OK


def read_status_socket(path: Path, timeout: float = 2.0) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return json.loads(b"".join(chunks))


def channel_status(name: str, path: Path) -> dict[str, Any]:
    """One channel's status document with ``state`` ("up" | "degraded" | "down") and ``reasons``.

    The health channel judges itself (appliance/health/status.py); the value channel is "up" when
    its socket answers (its tap losses are judged on the health side, over a window). A channel
    that does not answer, or answers as another channel, is "down".
    """
    try:
        doc = read_status_socket(path)
    except (OSError, ValueError) as e:
        return {"state": "down", "reasons": [f"no answer on {path}: {e}"], "error": str(e)}
    if not isinstance(doc, dict) or doc.get("channel") != name:
        return {"state": "down", "reasons": [f"{path} is not the {name} channel's status socket"]}
    doc.setdefault("state", "up")
    doc.setdefault("reasons", [])
    return doc


def _print_value(ch: dict[str, Any]) -> None:
    line = f"  value   {ch['state']}  chargers connected: {ch['connected']}/{len(ch['charge_points'])}"
    tap = ch.get("tap", {})
    if tap:
        line += f"  tap dropped: {tap.get('dropped', tap.get('dropped_queue', 0) + tap.get('dropped_socket', 0))}"
    print(line)
    for cp in ch["charge_points"]:
        lat = cp["csms_latency_ms"]
        print(
            f"    {cp['cp_id']:16} {'connected' if cp['connected'] else 'offline':9} "
            f"{cp['subprotocol'] or '-':10} up {cp['frames_up']} down {cp['frames_down']} "
            f"invalid {cp['invalid_frames']} reconnects {cp['reconnects']} "
            f"csms p50 {lat['p50']} ms"
        )


def _print_health(ch: dict[str, Any]) -> None:
    up, tap, smp = ch["uplink"], ch["tap"], ch["sampler"]
    print(f"  health  {ch['state']}  uplink {up['transport']} {'connected' if up['connected'] else 'DISCONNECTED'}"
          f" (spool {up['spool_pending']}, dropped {up['dropped']})  sampler ticks {smp.get('ticks')} late "
          f"{smp.get('late')} skipped {smp.get('skipped')}  tap rx {tap.get('received', 0)} lost "
          f"{tap.get('lost', 0)} malformed {tap.get('malformed', 0)}")
    for name, d in ch["devices"].items():
        print(f"    {name:24} {d['quality']}" + (f"  ({d['reason']})" if d.get("reason") else ""))
    if ch.get("watchdog"):
        wd = ch["watchdog"]
        print(f"    watchdog {wd['cp_id']}: {wd['state']}, relay cycles {wd['relay_cycles']}")


def cmd_status(args: argparse.Namespace) -> int:
    """Exit 0 only when every configured channel is "up"; 1 when one is down or degraded."""
    cfg = _load_config(args.config)
    result: dict[str, Any] = {"gateway_id": cfg.gateway.id, "channels": {}}
    if cfg.value is not None:
        result["channels"]["value"] = channel_status("value", cfg.value.status_socket)
    if cfg.health is not None:
        result["channels"]["health"] = channel_status("health", cfg.health.status_socket)
    if not result["channels"]:
        print(f"omgw status: {args.config} configures neither [value] nor [health]", file=sys.stderr)
        return EXIT_CONFIG
    states = [ch["state"] for ch in result["channels"].values()]
    result["state"] = "down" if "down" in states else "degraded" if "degraded" in states else "up"
    result["healthy"] = healthy = result["state"] == "up"
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        bad = ", ".join(f"{n} {ch['state']}" for n, ch in result["channels"].items() if ch["state"] != "up")
        print(f"gateway {cfg.gateway.id}: " + ("healthy" if healthy else f"DEGRADED ({bad})"))
        for name, ch in result["channels"].items():
            if ch["state"] == "down":
                print(f"  {name:7} down")
            elif name == "value":
                _print_value(ch)
            else:
                _print_health(ch)
            for reason in ch["reasons"]:
                print(f"    ! {reason}")
    return EXIT_OK if healthy else EXIT_FAIL


def cmd_probe_modbus(args: argparse.Namespace) -> int:
    """Field commissioning: which unit ids answer on this RS-485 port, and which meter each is."""
    from drivers.modbus.bus import ModbusBus
    from drivers.modbus.errors import ModbusError
    from drivers.modbus.probe import parse_units, probe_modbus

    try:
        units = parse_units(args.units)
    except ValueError as e:
        print(f"omgw probe modbus: {e}", file=sys.stderr)
        return EXIT_CONFIG

    async def run() -> list[Any]:
        bus = ModbusBus.serial(args.port, baud=args.baud, parity=args.parity, stopbits=args.stopbits,
                               timeout_s=args.timeout, retries=0)
        async with bus:
            return await probe_modbus(bus, units, timeout_s=args.timeout)

    try:
        results = asyncio.run(run())
    except ModbusError as e:
        print(f"omgw probe modbus: {args.port}: {e}", file=sys.stderr)
        return EXIT_FAIL
    found = [r for r in results if r.responding]
    if args.json:
        print(json.dumps([r.__dict__ for r in found], indent=2))
    else:
        print(f"{args.port} {args.baud} baud {args.parity}{args.stopbits}: {len(found)} unit(s) answering "
              f"of {len(units)} probed")
        for r in found:
            print(f"  unit {r.unit:3}  {r.model or 'unknown model':10}  {r.detail}")
    return EXIT_OK if found else EXIT_FAIL


def cmd_probe_i2c(args: argparse.Namespace) -> int:
    """Field commissioning: which addresses answer on this I2C bus, and which chip each is."""
    from drivers.i2c.probe import probe_i2c

    if args.bus == "sim":  # the simulated bench (demo, HIL in CI): SHT3x 0x44, SHT4x 0x45, BME280 0x76
        from drivers.sim.i2c import SimulatedBme280, SimulatedSht3x, SimulatedSht4x, SimulatedSMBus

        smbus: Any = SimulatedSMBus({0x44: SimulatedSht3x(), 0x45: SimulatedSht4x(), 0x76: SimulatedBme280()})
    else:
        from smbus2 import SMBus

        try:
            smbus = SMBus(int(args.bus))
        except (OSError, ValueError) as e:
            print(f"omgw probe i2c: cannot open bus {args.bus}: {e}", file=sys.stderr)
            return EXIT_FAIL
    try:
        results = probe_i2c(smbus)
    finally:
        smbus.close()
    if args.json:
        print(json.dumps([{"address": r.address, "chip": r.chip, "identity": r.identity} for r in results], indent=2))
    else:
        print(f"i2c bus {args.bus}: {len(results)} device(s)")
        for r in results:
            print(f"  {r}")
    return EXIT_OK if results else EXIT_FAIL


def _time_arg(text: str) -> int:
    """``--since``/``--until``: ISO 8601 (``2026-11-25T17:10:00Z``), epoch seconds, or ``-10m``/``-2h``
    relative to now; returns ns."""
    import datetime as dt
    import re
    import time as _time

    m = re.fullmatch(r"-(\d+(?:\.\d+)?)([smhd])", text.strip())
    if m:
        scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return _time.time_ns() - int(float(m.group(1)) * scale * 1e9)
    try:
        return int(float(text) * 1e9)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ISO 8601, epoch seconds or -10m/-2h, got {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return int(when.timestamp() * 1e9)


def cmd_blackbox_verify(args: argparse.Namespace) -> int:
    from .blackbox.store import verify

    try:
        report = verify(args.dir)
    except FileNotFoundError:
        print(f"omgw blackbox verify: {args.dir}: no such directory", file=sys.stderr)
        return EXIT_FAIL
    for p in report.problems:
        print(f"CORRUPT {p}")
    for n in report.notes:
        print(f"note    {n}")
    print(f"{args.dir}: {report.segments} segment(s), {report.records} intact record(s), "
          f"{len(report.problems)} problem(s)")
    return EXIT_OK if report.ok else EXIT_FAIL


def cmd_blackbox_dump(args: argparse.Namespace) -> int:
    from .blackbox.snapshot import dump_jsonl, parse_kinds
    from .blackbox.store import BlackBox

    try:
        kinds = parse_kinds(args.kind) if args.kind else None
    except ValueError as e:
        print(f"omgw blackbox dump: {e}", file=sys.stderr)
        return EXIT_CONFIG
    store = BlackBox(args.dir)
    try:
        store.open(read_only=True)
        dump_jsonl(store, args.since, args.until, kinds, sys.stdout)
    except FileNotFoundError:
        print(f"omgw blackbox dump: {args.dir}: no such directory", file=sys.stderr)
        return EXIT_FAIL
    except BrokenPipeError:  # `| head`
        return EXIT_OK
    return EXIT_OK


def cmd_blackbox_snapshot(args: argparse.Namespace) -> int:
    from .blackbox.snapshot import snapshot_now

    out = args.out or args.dir / "snapshots"
    try:
        path = snapshot_now(args.dir, out, args.gateway_id, args.reason, args.pre)
    except FileNotFoundError:
        print(f"omgw blackbox snapshot: {args.dir}: no such directory", file=sys.stderr)
        return EXIT_FAIL
    print(path)
    return EXIT_OK


def cmd_keygen(args: argparse.Namespace) -> int:
    from .health.keys_cli import keygen

    try:
        keygen(args.prefix, kid=args.kid)
    except FileExistsError as e:
        print(f"omgw keygen: {e} (refusing to overwrite a key)", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK


def cmd_sign_command(args: argparse.Namespace) -> int:
    from .health.keys_cli import KeyFileError, sign

    try:
        envelope = sign(args.key, args.kid, args.gateway, args.name, args.args, args.ttl)
    except (KeyFileError, ValueError) as e:
        print(f"omgw sign-command: {e}", file=sys.stderr)
        return EXIT_CONFIG
    sys.stdout.write(envelope.decode() + "\n")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omgw", description="OCPP Secure O&M Gateway")
    parser.add_argument("--version", action="version", version=f"omgw {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("-c", "--config", type=Path, default=config_mod.DEFAULT_PATH,
                       help=f"config file (default {config_mod.DEFAULT_PATH})")
        return p

    p = with_config(sub.add_parser("check-config", help="validate the config file"))
    p.add_argument("--no-files", action="store_true", help="do not check that referenced files exist")
    p.set_defaults(func=cmd_check_config)

    p = with_config(sub.add_parser("value", help="run the value channel (OCPP proxy)"))
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_value)

    p = with_config(sub.add_parser("health", help="run the health channel (telemetry, black box, uplink)"))
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_health)

    p = with_config(sub.add_parser("run", help="both channels as supervised child processes (development)"))
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("hash-password", help="hash a password (charger_password_hash, health.web.users)")
    p.add_argument("--stdin", action="store_true", help="read the password from stdin")
    p.set_defaults(func=cmd_hash_password)

    p = with_config(sub.add_parser("status", help="one-shot summary of the channels"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    probe = sub.add_parser("probe", help="scan a bus and identify devices (field commissioning)")
    probe_sub = probe.add_subparsers(dest="bus_kind", required=True)
    p = probe_sub.add_parser("modbus", help="find responding Modbus RTU unit ids and meter models")
    p.add_argument("--port", required=True, help="serial device, e.g. /dev/ttyUSB0")
    p.add_argument("--baud", type=int, default=9600)
    p.add_argument("--parity", choices=["N", "E", "O"], default="N")
    p.add_argument("--stopbits", type=int, choices=[1, 2], default=1)
    p.add_argument("--units", default="1-247", help="unit ids, e.g. 1-247 or 1,3,5-9")
    p.add_argument("--timeout", type=float, default=0.2, help="seconds to wait per unit")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_probe_modbus)
    p = probe_sub.add_parser("i2c", help="list I2C addresses and identified chips")
    p.add_argument("--bus", default="1", help='bus number (/dev/i2c-N), or "sim" for the simulated bench')
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_probe_i2c)

    bb = sub.add_parser("blackbox", help="check, export or cut snapshots of a black-box store")
    bb_sub = bb.add_subparsers(dest="bb_command", required=True)
    p = bb_sub.add_parser("verify", help="check every record's CRC; exit 1 on corruption, printing where")
    p.add_argument("dir", type=Path)
    p.set_defaults(func=cmd_blackbox_verify)
    p = bb_sub.add_parser("dump", help="export records as JSON lines")
    p.add_argument("dir", type=Path)
    p.add_argument("--since", type=_time_arg, default=None, help="ISO 8601, epoch seconds, or -10m")
    p.add_argument("--until", type=_time_arg, default=None)
    p.add_argument("--kind", action="append", help="telemetry, ocpp, event, command, soh, mark (repeatable)")
    p.set_defaults(func=cmd_blackbox_dump)
    p = bb_sub.add_parser("snapshot", help="cut a snapshot of the last --pre seconds now")
    p.add_argument("dir", type=Path)
    p.add_argument("--reason", required=True)
    p.add_argument("--pre", type=float, default=60.0, help="seconds before now (default 60)")
    p.add_argument("--out", type=Path, default=None, help="archive directory (default DIR/snapshots)")
    p.add_argument("--gateway-id", default=socket.gethostname())
    p.set_defaults(func=cmd_blackbox_snapshot)

    p = sub.add_parser("keygen", help="make an Ed25519 key pair for signing remote commands")
    p.add_argument("prefix", type=Path, help="writes PREFIX.key (0600) and PREFIX.pub")
    p.add_argument("--kid", default=None, help="key id (default: the prefix's file name)")
    p.set_defaults(func=cmd_keygen)
    p = sub.add_parser("sign-command", help="operator side: sign a remote command for one gateway")
    p.add_argument("--key", type=Path, required=True, help="private key file from omgw keygen")
    p.add_argument("--kid", required=True)
    p.add_argument("--gateway", required=True)
    p.add_argument("--ttl", type=int, default=300, help="validity in seconds (default 300)")
    p.add_argument("name", help="ping, snapshot, read_registers, relay_cycle, set_sample_interval, selftest, get_config")
    p.add_argument("args", nargs="?", default="{}", help="arguments as a JSON object")
    p.set_defaults(func=cmd_sign_command)

    p = sub.add_parser("demo", help="the gateway on simulated hardware with simulated CSMS and chargers")
    p.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    p.add_argument("--chargers", type=int, default=3)
    p.set_defaults(func=cmd_demo)
    return parser


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo.run import run_demo

    return run_demo(duration=args.duration, chargers=args.chargers)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
