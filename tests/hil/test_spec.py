"""The bench description: both shipped benches load; mistakes are reported with their key paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from hil import spec as S

BENCHES = Path(__file__).resolve().parents[2] / "hil" / "benches"


def test_shipped_benches_load() -> None:
    sim = S.load_bench(BENCHES / "sim.yaml")
    assert sim.simulated and sim.relay is not None and sim.relay.cp_id == "CP001"
    assert {m.feeds for m in sim.meters} == {"CP001", "CP002"}
    lab = S.load_bench(BENCHES / "lab-example.yaml")
    assert not lab.simulated and isinstance(lab.dut, S.SshDut) and lab.pki is not None
    assert isinstance(lab.meters[0].reference, S.ReferenceMeter) and isinstance(lab.meters[0].disconnect, S.Switch)
    assert lab.sensors[0].crc_faults is False


def _load(tmp_path: Path, text: str) -> S.Bench:
    p = tmp_path / "bench.yaml"
    p.write_text(text)
    return S.load_bench(p)


def test_errors_name_their_key_path(tmp_path: Path) -> None:
    with pytest.raises(S.BenchSpecError) as e:
        _load(tmp_path, "name: x\nmeters:\n  - name: m1\n    unit_id: 300\nrelay:\n  cp_id: CP9\n  relay_pin: PIN17\n")
    text = str(e.value)
    assert "meters[0].unit_id" in text and "relay.relay_pin" in text


def test_cross_checks(tmp_path: Path) -> None:
    with pytest.raises(S.BenchSpecError, match="relay.cp_id: 'CP9' is not one of the chargers"):
        _load(tmp_path, "name: x\nchargers: [{id: CP1}]\nrelay: {cp_id: CP9}\n")
    with pytest.raises(S.BenchSpecError, match="duplicate names"):
        _load(tmp_path, "name: x\nchargers: [{id: CP1}, {id: CP1}]\n")
    with pytest.raises(S.BenchSpecError, match="a local gateway uses simulated meters"):
        _load(tmp_path, "name: x\nmeters: [{name: m, unit_id: 1, port: /dev/ttyUSB0}]\n")
    with pytest.raises(S.BenchSpecError, match="pki: required"):
        _load(tmp_path, "name: x\ndut: {kind: ssh, host: h, charger_url: 'ws://h:9000/ocpp'}\n"
                        "csms: {port: 1}\nbroker: {port: 2}\n")


def test_unreadable_and_not_yaml(tmp_path: Path) -> None:
    with pytest.raises(S.BenchSpecError, match="cannot read"):
        S.load_bench(tmp_path / "absent.yaml")
    with pytest.raises(S.BenchSpecError, match="not valid YAML"):
        _load(tmp_path, "name: [unclosed\n")
    with pytest.raises(S.BenchSpecError, match="top level must be a mapping"):
        _load(tmp_path, "- a\n")
