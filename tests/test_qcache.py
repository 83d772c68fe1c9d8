"""The quantized-model cache: stable keys, atomic publishing, and stale or corrupt entries caught."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pytest_quant import qcache

INPUTS = {
    "model": {"config.json": "a" * 64, "model.safetensors": "b" * 64},
    "quantize": {"method": "gptq", "bits": 4, "group_size": 128},
    "calibration": {"sha256": "c" * 64, "samples": 32, "seq_len": 256},
    "versions": {"gptqmodel": "7.7.0", "transformers": "5.23.0", "torch": "2.14.1"},
}


def build_entry(root: Path, key: str, inputs=INPUTS, files=None) -> qcache.Entry:
    staged = qcache.staging_dir(root, key)
    for name, data in (files or {"model.safetensors": b"\x01" * 4096, "config.json": b"{}"}).items():
        (staged / name).parent.mkdir(parents=True, exist_ok=True)
        (staged / name).write_bytes(data)
    return qcache.publish(root, key, staged, inputs, {"quantize_seconds": 1.5})


def test_importing_the_cache_does_not_import_torch() -> None:
    code = "import sys, pytest_quant.qcache, pytest_quant.calibration; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_key_is_stable_and_changes_with_every_input() -> None:
    key = qcache.cache_key(INPUTS)
    assert key == qcache.cache_key(json.loads(json.dumps(INPUTS)))
    assert key == qcache.cache_key(dict(reversed(list(INPUTS.items()))))  # order does not matter
    variants = [
        {**INPUTS, "model": {**INPUTS["model"], "model.safetensors": "d" * 64}},
        {**INPUTS, "quantize": {**INPUTS["quantize"], "bits": 8}},
        {**INPUTS, "calibration": {**INPUTS["calibration"], "sha256": "e" * 64}},
        {**INPUTS, "versions": {**INPUTS["versions"], "gptqmodel": "7.8.0"}},
        {**INPUTS, "versions": {**INPUTS["versions"], "torch": "2.15.0"}},
    ]
    keys = {qcache.cache_key(v) for v in variants}
    assert len(keys) == len(variants) and key not in keys


def test_publish_then_lookup_hits(tmp_path: Path) -> None:
    key = qcache.cache_key(INPUTS)
    assert qcache.lookup(tmp_path, key, INPUTS).status == "absent"
    entry = build_entry(tmp_path, key)
    assert entry.path == tmp_path / key
    found = qcache.lookup(tmp_path, key, INPUTS)
    assert found.status == "hit" and found.entry.path == entry.path
    manifest = json.loads((entry.path / qcache.MANIFEST).read_text())
    assert manifest["inputs"] == INPUTS and manifest["key"] == key and manifest["info"] == {"quantize_seconds": 1.5}
    assert manifest["files"]["model.safetensors"]["size"] == 4096
    # Nothing of the staging folder is left beside the entry.
    assert [p.name for p in tmp_path.iterdir()] == [key]


def test_an_unpublished_staging_folder_is_not_an_entry(tmp_path: Path) -> None:
    key = qcache.cache_key(INPUTS)
    staged = qcache.staging_dir(tmp_path, key)
    (staged / "model.safetensors").write_bytes(b"partial")
    assert qcache.lookup(tmp_path, key, INPUTS).status == "absent"


def corrupt_truncate(path: Path) -> None:
    with open(path / "model.safetensors", "r+b") as f:
        f.truncate(100)


def corrupt_flip_a_byte(path: Path) -> None:
    data = bytearray((path / "model.safetensors").read_bytes())
    data[2000] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(data))


def corrupt_remove_file(path: Path) -> None:
    (path / "config.json").unlink()


def corrupt_remove_manifest(path: Path) -> None:
    (path / qcache.MANIFEST).unlink()


def corrupt_garble_manifest(path: Path) -> None:
    (path / qcache.MANIFEST).write_text("{not json")


@pytest.mark.parametrize(
    ("corrupt", "problem"),
    [
        (corrupt_truncate, "model.safetensors has 100 bytes, the manifest says 4096"),
        (corrupt_flip_a_byte, "model.safetensors does not match its sha256"),
        (corrupt_remove_file, "config.json is missing"),
        (corrupt_remove_manifest, "no manifest"),
        (corrupt_garble_manifest, "unreadable manifest"),
    ],
)
def test_corrupt_entries_are_reported_and_replaced(tmp_path: Path, corrupt, problem: str) -> None:
    key = qcache.cache_key(INPUTS)
    corrupt(build_entry(tmp_path, key).path)
    found = qcache.lookup(tmp_path, key, INPUTS)
    assert found.status == "invalid" and found.entry is None and problem in found.problem
    build_entry(tmp_path, key)  # publishing over an invalid entry replaces it
    assert qcache.lookup(tmp_path, key, INPUTS).status == "hit"


def test_an_entry_made_from_other_inputs_is_stale(tmp_path: Path) -> None:
    key = qcache.cache_key(INPUTS)
    build_entry(tmp_path, key, inputs={**INPUTS, "quantize": {**INPUTS["quantize"], "bits": 8}})
    found = qcache.lookup(tmp_path, key, INPUTS)
    assert found.status == "invalid" and "stale" in found.problem


def test_files_in_subfolders_are_covered(tmp_path: Path) -> None:
    key = qcache.cache_key(INPUTS)
    entry = build_entry(tmp_path, key, files={"model.safetensors": b"w" * 64, "extra/adapter.bin": b"x" * 64})
    assert "extra/adapter.bin" in entry.manifest["files"]
    (entry.path / "extra" / "adapter.bin").write_bytes(b"y" * 64)
    assert "extra/adapter.bin does not match" in qcache.lookup(tmp_path, key, INPUTS).problem


def test_publishing_nothing_is_an_error(tmp_path: Path) -> None:
    staged = qcache.staging_dir(tmp_path, "k" * 32)
    with pytest.raises(ValueError, match="nothing was written"):
        qcache.publish(tmp_path, "k" * 32, staged, INPUTS)


def make_model(path: Path) -> Path:
    path.mkdir()
    (path / "config.json").write_text('{"model_type": "llama"}')
    (path / "model.safetensors").write_bytes(b"\x00" * 1000)
    (path / "PROVENANCE.json").write_text("{}")
    (path / "README.md").write_text("notes")
    return path


def test_fingerprint_covers_weights_and_config_only(tmp_path: Path) -> None:
    model = make_model(tmp_path / "m")
    first = qcache.model_fingerprint(model)
    assert sorted(first) == ["config.json", "model.safetensors"]
    (model / "README.md").write_text("other notes")
    (model / "PROVENANCE.json").write_text('{"measured": 1}')
    assert qcache.model_fingerprint(model) == first
    (model / "model.safetensors").write_bytes(b"\x01" * 1000)
    assert qcache.model_fingerprint(model)["model.safetensors"] != first["model.safetensors"]


def test_fingerprint_needs_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no weight files"):
        qcache.model_fingerprint(tmp_path)


def test_fingerprint_memo_skips_unchanged_files_and_rehashes_rewritten_ones(tmp_path: Path, monkeypatch) -> None:
    model = make_model(tmp_path / "m")
    memo = tmp_path / "memo"
    hashed: list[str] = []
    real = qcache.file_sha256
    monkeypatch.setattr(qcache, "file_sha256", lambda p: hashed.append(Path(p).name) or real(p))
    first = qcache.model_fingerprint(model, memo)
    assert sorted(hashed) == ["config.json", "model.safetensors"] and (memo / qcache.HASH_MEMO).is_file()
    hashed.clear()
    assert qcache.model_fingerprint(model, memo) == first and hashed == []
    (model / "model.safetensors").write_bytes(b"\x02" * 1001)
    second = qcache.model_fingerprint(model, memo)
    assert hashed == ["model.safetensors"] and second["model.safetensors"] != first["model.safetensors"]


def test_builders_of_one_key_take_turns(tmp_path: Path) -> None:
    events: list[str] = []

    def builder(name: str, hold: float) -> None:
        with qcache.locked(tmp_path, "k" * 32):
            events.append(f"{name} in")
            time.sleep(hold)
            events.append(f"{name} out")

    first = threading.Thread(target=builder, args=("a", 0.3))
    first.start()
    time.sleep(0.1)
    second = threading.Thread(target=builder, args=("b", 0.0))
    second.start()
    first.join()
    second.join()
    assert events == ["a in", "a out", "b in", "b out"]


def test_discard_leaves_nothing_behind(tmp_path: Path) -> None:
    entry = build_entry(tmp_path, qcache.cache_key(INPUTS))
    qcache.discard(entry.path)
    assert os.listdir(tmp_path) == []
    qcache.discard(entry.path)  # already gone: nothing to do
    assert os.listdir(tmp_path) == []
