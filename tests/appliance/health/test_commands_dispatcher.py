"""CommandDispatcher: refused commands never run, every attempt is audited, replies carry the reason."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from appliance.health.commands import (
    MAX_ENVELOPE_BYTES,
    CommandDispatcher,
    CommandFailed,
    NonceStore,
    TrustedKey,
    generate_keypair,
    keyring,
    seal,
    sign_command,
)

NOW = 1_800_000_000.0
GW = "gw-0001"
PRIV, PUB = generate_keypair()
STRANGER_PRIV, _ = generate_keypair()
KEYS = keyring([TrustedKey("ops-2026", PUB, frozenset({"ping", "read_registers", "relay_cycle", "get_config"}))])


class Spy:
    def __init__(self, result: Any = None, exc: BaseException | None = None, delay: float = 0) -> None:
        self.calls: list[dict[str, Any]] = []
        self.result = {"pong": True} if result is None else result
        self.exc = exc
        self.delay = delay

    async def __call__(self, args: dict[str, Any]) -> Any:
        self.calls.append(args)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.exc is not None:
            raise self.exc
        return self.result


class Rig:
    def __init__(self, tmp_path: Path, **spies: Spy) -> None:
        self.now = NOW
        self.path = tmp_path / "nonces"
        self.audit: list[dict[str, Any]] = []
        self.spies = {name: Spy() for name in ("ping", "read_registers", "relay_cycle", "get_config")} | spies
        self.open()

    def open(self) -> None:
        self.store = NonceStore(self.path, clock=lambda: self.now)
        self.dispatcher = CommandDispatcher(KEYS, GW, self.store, self.spies, self.audit.append, clock=lambda: self.now)

    def reopen(self) -> None:
        self.store.close()
        self.open()

    def executed(self) -> int:
        return sum(len(s.calls) for s in self.spies.values())

    def sign(self, name: str = "ping", args: dict[str, Any] | None = None, **kw: Any) -> bytes:
        return sign_command(PRIV, "ops-2026", name, GW, args or {}, now_s=kw.pop("now_s", self.now), **kw)


def body(**over: Any) -> str:
    b: dict[str, Any] = {"name": "ping", "gateway": GW, "nonce": "ab" * 16, "iat": int(NOW), "exp": int(NOW) + 300,
                         "args": {}}  # fmt: skip
    b.update(over)
    return json.dumps(b)


def assert_clean_audit(record: dict[str, Any], raw: bytes) -> None:
    text = json.dumps(record)
    assert record["kind"] == "command" and isinstance(record["time_ns"], int)
    sig = json.loads(raw)["sig"] if raw.startswith(b"{") and b'"sig"' in raw else None
    if isinstance(sig, str) and sig:
        assert sig not in text
    assert PRIV not in text


async def test_accepted_command_runs_once_and_is_audited(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    raw = rig.sign("read_registers", {"meter": "m1", "function": 4, "address": 0, "count": 2})
    reply = await rig.dispatcher.handle("read_registers", raw)
    assert reply["ok"] is True and reply["result"] == {"pong": True} and reply["schema"] == 1
    assert reply["name"] == "read_registers" and reply["nonce"] == json.loads(json.loads(raw)["body"])["nonce"]
    assert rig.spies["read_registers"].calls == [{"meter": "m1", "function": 4, "address": 0, "count": 2}]
    decision, result = rig.audit
    assert decision["accepted"] is True and decision["phase"] == "decision" and decision["kid"] == "ops-2026"
    assert result["phase"] == "result" and result["ok"] is True and result["reason"] == "ok"
    for r in rig.audit:
        assert_clean_audit(r, raw)


UNAUTHENTICATED = [
    ("too_large", lambda: b"{" + b" " * MAX_ENVELOPE_BYTES + b"}"),
    ("malformed", lambda: b"{]"),
    ("unsigned", lambda: body().encode()),
    ("unknown_key", lambda: seal(PRIV, "stranger", body())),
    ("bad_signature", lambda: seal(STRANGER_PRIV, "ops-2026", body())),
]


@pytest.mark.parametrize(("expected", "make"), UNAUTHENTICATED, ids=[c for c, _ in UNAUTHENTICATED])
async def test_unauthenticated_commands_are_refused_audited_and_not_run(tmp_path: Path, expected: str, make: Any) -> None:
    rig = Rig(tmp_path)
    raw = make()
    reply = await rig.dispatcher.handle("ping", raw)
    assert reply["ok"] is False and reply["error"] == expected and "result" not in reply
    assert reply["nonce"] is None  # nothing from an unauthenticated body is echoed
    assert rig.executed() == 0
    (record,) = rig.audit
    assert record["accepted"] is False and record["reason"] == expected and record["authenticated"] is False
    assert record["args"] is None and record["nonce"] is None
    assert_clean_audit(record, raw)
    assert len(rig.store) == 0


AUTHENTICATED = [
    ("wrong_gateway", "ping", lambda r: sign_command(PRIV, "ops-2026", "ping", "gw-0002", {}, now_s=r.now)),
    ("expired", "ping", lambda r: r.sign(now_s=r.now - 400)),
    ("not_yet_valid", "ping", lambda r: r.sign(now_s=r.now + 400)),
    ("window_too_long", "ping", lambda r: seal(PRIV, "ops-2026", body(exp=int(NOW) + 7200))),
    ("not_allowed", "selftest", lambda r: r.sign("selftest")),
    ("topic_mismatch", "relay_cycle", lambda r: r.sign("ping")),
    ("unknown_command", "reboot", lambda r: seal(PRIV, "ops-2026", body(name="reboot"))),
    ("bad_arguments", "relay_cycle", lambda r: seal(PRIV, "ops-2026", body(name="relay_cycle", args={"cp": "CP7", "x": 1}))),
    ("malformed", "ping", lambda r: seal(PRIV, "ops-2026", "{oops")),
]


@pytest.mark.parametrize(("expected", "topic", "make"), AUTHENTICATED, ids=[c for c, _, _ in AUTHENTICATED])
async def test_authenticated_but_refused_commands_are_not_run(tmp_path: Path, expected: str, topic: str, make: Any) -> None:
    rig = Rig(tmp_path)
    raw = make(rig)
    reply = await rig.dispatcher.handle(topic, raw)
    assert reply["ok"] is False and reply["error"] == expected and reply["detail"]
    assert rig.executed() == 0
    (record,) = rig.audit
    assert record["accepted"] is False and record["reason"] == expected and record["kid"] == "ops-2026"
    assert_clean_audit(record, raw)
    assert rig.dispatcher.counters[expected] == 1


async def test_refused_authentic_command_cannot_be_replayed_into_acceptance(tmp_path: Path) -> None:
    """A command refused as not yet valid is consumed: replaying it once it is valid does nothing."""
    rig = Rig(tmp_path)
    raw = rig.sign(now_s=rig.now + 400)
    assert (await rig.dispatcher.handle("ping", raw))["error"] == "not_yet_valid"
    rig.now += 400
    assert (await rig.dispatcher.handle("ping", raw))["error"] == "replayed"
    assert rig.executed() == 0


async def test_replay_is_refused_even_after_the_store_is_reopened(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    raw = rig.sign()
    assert (await rig.dispatcher.handle("ping", raw))["ok"] is True
    assert (await rig.dispatcher.handle("ping", raw))["error"] == "replayed"
    rig.reopen()  # a restart (or power cut) of the health process
    rig.now += 30
    reply = await rig.dispatcher.handle("ping", raw)
    assert reply["error"] == "replayed"
    assert len(rig.spies["ping"].calls) == 1
    assert [r["reason"] for r in rig.audit if r["phase"] == "decision"] == ["accepted", "replayed", "replayed"]


async def test_concurrent_copies_run_once(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ping=Spy(delay=0.05))
    raw = rig.sign()
    replies = await asyncio.gather(*(rig.dispatcher.handle("ping", raw) for _ in range(5)))
    assert sorted(r["ok"] for r in replies) == [False] * 4 + [True]
    assert len(rig.spies["ping"].calls) == 1


async def test_handler_exception_is_handler_failed_and_audited(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ping=Spy(exc=RuntimeError("secret detail /dev/ttyUSB0")))
    reply = await rig.dispatcher.handle("ping", rig.sign())
    assert reply == {"schema": 1, "ok": False, "name": "ping", "nonce": reply["nonce"], "error": "handler_failed",
                     "detail": "RuntimeError"}  # fmt: skip
    decision, result = rig.audit
    assert decision["accepted"] is True
    assert result["phase"] == "result" and result["ok"] is False and result["reason"] == "handler_failed"
    assert "secret detail" not in json.dumps(rig.audit)


async def test_handler_refusal_code_is_passed_through(tmp_path: Path) -> None:
    guard = Spy(exc=CommandFailed("transaction_active", "CP7 is charging; use force"))
    rig = Rig(tmp_path, relay_cycle=guard)
    reply = await rig.dispatcher.handle("relay_cycle", rig.sign("relay_cycle", {"cp": "CP7"}))
    assert reply["error"] == "transaction_active" and reply["detail"] == "CP7 is charging; use force"
    assert guard.calls == [{"cp": "CP7", "force": False}]
    assert rig.audit[-1]["reason"] == "transaction_active"


async def test_handler_timeout(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ping=Spy(delay=5))
    rig.dispatcher.timeouts = {"ping": 0.05}
    reply = await rig.dispatcher.handle("ping", rig.sign())
    assert reply["error"] == "handler_timeout"
    assert rig.audit[-1]["reason"] == "handler_timeout"


async def test_non_dict_result_is_handler_failed(tmp_path: Path) -> None:
    rig = Rig(tmp_path, ping=Spy(result=[1, 2]))
    assert (await rig.dispatcher.handle("ping", rig.sign()))["error"] == "handler_failed"


async def test_missing_handler_is_unknown_command(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    del rig.spies["get_config"]
    reply = await rig.dispatcher.handle("get_config", rig.sign("get_config"))
    assert reply["error"] == "unknown_command"
    assert rig.audit[-1]["accepted"] is False


async def test_failing_audit_blocks_execution(tmp_path: Path) -> None:
    rig = Rig(tmp_path)

    def broken(record: dict[str, Any]) -> None:
        raise OSError("card full")

    rig.dispatcher.audit = broken
    reply = await rig.dispatcher.handle("ping", rig.sign())
    assert reply["error"] == "audit_failed"
    assert rig.executed() == 0


async def test_nonce_store_failure_blocks_execution(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.store.close()  # the store cannot persist any more
    reply = await rig.dispatcher.handle("ping", rig.sign())
    assert reply["error"] == "nonce_store_failed"
    assert rig.executed() == 0
    assert rig.audit[-1]["reason"] == "nonce_store_failed"


async def test_audited_arguments_are_redacted_and_bounded(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    raw = seal(PRIV, "ops-2026", body(name="relay_cycle", args={"cp": "CP7", "password": "hunter2", "junk": "x" * 5000}))
    reply = await rig.dispatcher.handle("relay_cycle", raw)
    assert reply["error"] == "bad_arguments"
    args = rig.audit[-1]["args"]
    assert args["password"] == "***" and len(args["junk"]) < 300
    assert "hunter2" not in json.dumps(rig.audit)


async def test_random_payloads_are_refused_without_raising(tmp_path: Path) -> None:
    import random

    rig = Rig(tmp_path)
    rnd = random.Random(7)
    for _ in range(300):
        raw = bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(0, 200)))
        assert (await rig.dispatcher.handle("ping", raw))["ok"] is False
    assert rig.executed() == 0 and len(rig.audit) == 300
