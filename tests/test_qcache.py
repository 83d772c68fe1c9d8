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
    monkeypatch.setattr(qcache, "RACY_WINDOW_NS", -10**12, raising=False)  # the files were written a moment ago
    first = qcache.model_fingerprint(model, memo)
    assert sorted(hashed) == ["config.json", "model.safetensors"] and (memo / qcache.HASH_MEMO).is_file()
    hashed.clear()
    assert qcache.model_fingerprint(model, memo) == first and hashed == []
    (model / "model.safetensors").write_bytes(b"\x02" * 1001)
    second = qcache.model_fingerprint(model, memo)
    assert hashed == ["model.safetensors"] and second["model.safetensors"] != first["model.safetensors"]


def counting_hashes(monkeypatch) -> list[str]:
    hashed: list[str] = []
    real = qcache.file_sha256
    monkeypatch.setattr(qcache, "file_sha256", lambda p: hashed.append(Path(p).name) or real(p))
    monkeypatch.setattr(qcache, "RACY_WINDOW_NS", -10**12, raising=False)  # remember hashes of files written a moment ago
    return hashed


@pytest.mark.parametrize("replace", ["write in place", "copy over with cp -p", "rename over"])
def test_weights_replaced_with_the_same_size_and_mtime_are_hashed_again(tmp_path: Path, monkeypatch, replace) -> None:
    # issue 20 item 2: tar x, cp -p and rsync -a keep size and mtime; the memo must not hand back the old hash
    import shutil

    model = make_model(tmp_path / "m")
    weights = model / "model.safetensors"
    os.utime(weights, ns=(1_577_836_800_000_000_000,) * 2)  # 2020-01-01, as the sweep's `touch -d` set it
    memo = tmp_path / "memo"
    hashed = counting_hashes(monkeypatch)
    first = qcache.model_fingerprint(model, memo)
    hashed.clear()
    assert qcache.model_fingerprint(model, memo) == first and hashed == []  # the memo is in use
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"\x07" * weights.stat().st_size)
    assert other.stat().st_size == weights.stat().st_size and other.read_bytes() != weights.read_bytes()
    if replace == "write in place":
        weights.write_bytes(other.read_bytes())
    elif replace == "copy over with cp -p":
        shutil.copy2(other, weights)
    else:
        os.replace(other, weights)
    os.utime(weights, ns=(1_577_836_800_000_000_000,) * 2)
    second = qcache.model_fingerprint(model, memo)
    assert hashed == ["model.safetensors"]
    assert second["model.safetensors"] == qcache.file_sha256(weights) != first["model.safetensors"]


def test_a_hash_taken_right_after_a_change_is_not_remembered(tmp_path: Path, monkeypatch) -> None:
    model = make_model(tmp_path / "m")
    memo = tmp_path / "memo"
    hashed: list[str] = []
    real = qcache.file_sha256
    monkeypatch.setattr(qcache, "file_sha256", lambda p: hashed.append(Path(p).name) or real(p))
    qcache.model_fingerprint(model, memo)  # the files changed under RACY_WINDOW_NS ago: ctime may not move again
    qcache.model_fingerprint(model, memo)
    assert sorted(hashed) == ["config.json", "config.json", "model.safetensors", "model.safetensors"]


def test_a_memo_planted_as_a_symlink_is_ignored_and_replaced_by_a_file(tmp_path: Path, monkeypatch) -> None:
    model = make_model(tmp_path / "m")
    memo = tmp_path / "memo"
    memo.mkdir()
    victim = tmp_path / "victim.json"
    victim.write_text("{}")
    (memo / qcache.HASH_MEMO).symlink_to(victim)
    counting_hashes(monkeypatch)
    qcache.model_fingerprint(model, memo)
    assert victim.read_text() == "{}" and not (memo / qcache.HASH_MEMO).is_symlink()


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


def test_a_lock_file_planted_as_a_symlink_is_removed_and_its_target_left_alone(tmp_path: Path) -> None:
    # issue 20 item 6 (sweep case 40): open(".<key>.lock", "w") followed the link and truncated victim.txt
    root = tmp_path / "gptqmodel"
    root.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("a file the CI user can write\n")
    key = "k" * 32
    (root / f".{key}.lock").symlink_to(victim)
    with qcache.locked(root, key):
        lock = root / f".{key}.lock"
        assert lock.is_file() and not lock.is_symlink()
    assert victim.read_text() == "a file the CI user can write\n"


def test_a_lock_file_is_never_truncated(tmp_path: Path) -> None:
    key = "k" * 32
    (tmp_path / f".{key}.lock").write_text("held")
    with qcache.locked(tmp_path, key):
        pass
    assert (tmp_path / f".{key}.lock").read_text() == "held"


def test_an_entry_planted_as_a_symlink_is_rebuilt_without_touching_its_target(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    root.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    key = qcache.cache_key(INPUTS)
    (root / key).symlink_to(elsewhere, target_is_directory=True)
    assert "symbolic link" in qcache.lookup(root, key, INPUTS).problem

    def make(staged: Path) -> dict:
        (staged / "model.safetensors").write_bytes(b"\x05" * 64)
        return {"quantize_seconds": 0.1}

    with pytest.warns(qcache.CacheWarning, match="is rebuilt: .*symbolic link"):
        built = qcache.build(root, key, INPUTS, make)
    assert built.status == "rebuilt" and (root / key).is_dir() and not (root / key).is_symlink()
    assert (elsewhere / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("plant, problem", [
    (lambda entry, outside: (entry / "pytorch_model.bin").write_bytes(b"forged"), "pytorch_model.bin is not listed"),
    (lambda entry, outside: ((entry / "model.safetensors").unlink(), (entry / "model.safetensors").symlink_to(outside)),
     "model.safetensors is a symbolic link"),
])
def test_a_file_added_or_swapped_for_a_link_is_caught(tmp_path: Path, plant, problem: str) -> None:
    key = qcache.cache_key(INPUTS)
    entry = build_entry(tmp_path / "cache", key)
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"\x01" * 4096)
    plant(entry.path, outside)
    assert problem in qcache.lookup(tmp_path / "cache", key, INPUTS).problem


def test_a_damaged_entry_is_rebuilt_with_a_warning_saying_why(tmp_path: Path) -> None:
    key = qcache.cache_key(INPUTS)
    entry = build_entry(tmp_path, key)
    corrupt_flip_a_byte(entry.path)

    def make(staged: Path) -> dict:
        (staged / "model.safetensors").write_bytes(b"\x01" * 4096)
        return {}

    with pytest.warns(qcache.CacheWarning, match="does not match its sha256"):
        assert qcache.build(tmp_path, key, INPUTS, make).status == "rebuilt"
    assert qcache.lookup(tmp_path, key, INPUTS).status == "hit"


def test_a_cache_folder_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "gptqmodel").symlink_to(tmp_path / "real", target_is_directory=True)
    with pytest.raises(qcache.CacheError, match="is a symbolic link .*remove the link"):
        qcache.build(tmp_path / "gptqmodel", "k" * 32, INPUTS, lambda staged: {})
    assert list((tmp_path / "real").iterdir()) == []


def test_a_killed_builders_staging_folder_is_removed_by_the_next_build(tmp_path: Path) -> None:
    key = qcache.cache_key(INPUTS)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    from pytest_quant.atomic import host_tag

    left = tmp_path / f".staging-{key[:12]}.{host_tag()}.{pid}.abcd1234"
    left.mkdir()
    (left / "model.safetensors").write_bytes(b"\x00" * 100)
    old = time.time() - 3600
    os.utime(left, (old, old))
    live = qcache.staging_dir(tmp_path, "other" * 8)  # this process's own, in progress
    os.utime(live, (old, old))
    qcache.build(tmp_path, key, INPUTS, lambda staged: {"written": (staged / "a.bin").write_bytes(b"1")})
    assert not left.exists() and live.is_dir()


STALE_REFERENCE_TEST = """
import pytest

@pytest.mark.perplexity_delta(max_rel=0.05)
def test_q(quant_model):
    pass
"""


def negate_second_half(weights: Path) -> None:
    """Other weights of the same size: the fp16 values of the second half of the tensors negated."""
    import struct

    data = bytearray(weights.read_bytes())
    start = 8 + struct.unpack("<Q", data[:8])[0]
    for i in range(start + (len(data) - start) // 2 + 1, len(data), 2):
        data[i] ^= 0x80
    weights.write_bytes(bytes(data))


def test_weights_replaced_in_place_are_not_scored_against_the_old_reference(pytester: pytest.Pytester) -> None:
    # issue 20 item 2 (sweep case 10): new weights of the same size and mtime reused the cached reference
    # ("reference figures from the cache; not loaded") and gave a wrong delta and verdict
    import shutil

    from pytest_quant.models import TINY_DIR

    model = pytester.path / "model"
    model.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TINY_DIR / name, model / name)
    weights = model / "model.safetensors"
    stamp = 1_577_836_800_000_000_000  # 2020-01-01, as tar x / cp -p / rsync -a keep an old mtime
    os.utime(weights, ns=(stamp, stamp))
    pytester.makepyfile(STALE_REFERENCE_TEST)
    args = ("-p", "no:cacheprovider", "-s", "--quant-eval-tokens", "256", f"--quant-model={model}",
            "--quant-cache-dir=cache")
    assert pytester.runpytest(*args, "--quant-recipes=reference,bnb-nf4").ret == 0
    time.sleep(2.1)  # past qcache.RACY_WINDOW_NS: the weights' hash is remembered now
    again = pytester.runpytest(*args, "--quant-recipes=bnb-nf4")
    assert again.ret == 0 and "reference figures from the cache" in again.stdout.str()  # memo and cache in use
    negate_second_half(weights)
    os.utime(weights, ns=(stamp, stamp))
    changed = pytester.runpytest(*args, "--quant-recipes=bnb-nf4")
    # before: "reference figures from the cache", then QUANT GATE "perplexity ... over reference 148.114", exit 1
    assert "reference figures from the cache" not in changed.stdout.str()
    assert changed.ret == 0, changed.stdout.str()
    changed.stdout.fnmatch_lines(["*no cached reference for this run's inputs (the weights' content, *): measuring it "
                                  "again*", "*loading model under reference*"])
