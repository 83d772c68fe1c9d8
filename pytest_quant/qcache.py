"""An on-disk cache of quantized model folders, keyed by a hash of everything that shapes the result.

An entry is a folder ``<root>/<key>/`` holding the saved model and ``MANIFEST``: the key's inputs (model
file hashes, recipe, calibration digest, library versions) and the size and sha256 of every file in it.
An entry is built in a temporary sibling folder and renamed into place, so a reader never sees half of
one; on every lookup the files are hashed again, and an entry whose manifest or files do not match is
reported (and rebuilt by the caller). Builders of one key are serialised with a lock file, so parallel
workers (pytest-xdist) quantize once. Imports no torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

MANIFEST = "pytest-quant-manifest.json"
FORMAT = 1  # bump when the layout or the meaning of the key changes
HASH_MEMO = "file-hashes.json"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Entry:
    path: Path
    manifest: dict[str, Any]


@dataclass(frozen=True)
class Lookup:
    """What ``lookup`` found: a valid entry, nothing, or an entry that failed its check (and why)."""

    entry: Entry | None
    problem: str | None = None  # set when an entry exists but is stale or corrupt

    @property
    def status(self) -> str:
        return "hit" if self.entry else ("invalid" if self.problem else "absent")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def model_files(model_path: Path) -> list[Path]:
    """The files of a model folder that decide its weights: config.json and the weight files (and indexes).

    Notes, readmes and texts beside them are left out, so editing those does not throw the cache away;
    the tokenizer counts through the calibration tokens it produces.
    """
    return sorted(
        p
        for p in Path(model_path).iterdir()
        if p.is_file()
        and (p.name == "config.json" or p.name.endswith(WEIGHT_SUFFIXES) or p.name.endswith(".index.json"))
    )


def model_fingerprint(model_path: Path, memo_dir: Path | None = None) -> dict[str, str]:
    """``{file name: sha256}`` for a model folder.

    Hashing a multi-gigabyte checkpoint takes seconds, so hashes are remembered in ``memo_dir`` against
    each file's path, size and modification time; a rewritten file is hashed again.
    """
    memo_file = Path(memo_dir) / HASH_MEMO if memo_dir is not None else None
    memo: dict[str, Any] = {}
    if memo_file is not None:
        with contextlib.suppress(OSError, ValueError):
            memo = json.loads(memo_file.read_text())
    files = model_files(model_path)
    if not any(p.name != "config.json" and not p.name.endswith(".index.json") for p in files):
        raise ValueError(f"{model_path}: no weight files ({', '.join('*' + s for s in WEIGHT_SUFFIXES)}) to key the cache on")
    changed = False
    fingerprint = {}
    for path in files:
        st = path.stat()
        stamp = [st.st_size, st.st_mtime_ns]
        key = str(path.resolve())
        known = memo.get(key)
        if isinstance(known, dict) and known.get("stamp") == stamp:
            digest = known["sha256"]
        else:
            digest = file_sha256(path)
            memo[key] = {"stamp": stamp, "sha256": digest}
            changed = True
        fingerprint[path.name] = digest
    if memo_file is not None and changed:
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(memo_file, json.dumps(memo, indent=1, sort_keys=True))
    return fingerprint


def cache_key(inputs: Mapping[str, Any]) -> str:
    """A short, stable hash of the key's inputs (canonical JSON)."""
    canonical = json.dumps({"format": FORMAT, **inputs}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def lookup(root: Path, key: str, inputs: Mapping[str, Any]) -> Lookup:
    path = Path(root) / key
    if not path.exists():
        return Lookup(None)
    problem = verify(path, key, inputs)
    if problem:
        return Lookup(None, problem)
    return Lookup(Entry(path, json.loads((path / MANIFEST).read_text())))


def verify(path: Path, key: str, inputs: Mapping[str, Any]) -> str | None:
    """Why the entry at ``path`` cannot be used for ``key`` (None when it can)."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        return "no manifest (an unfinished or foreign folder)"
    except (OSError, ValueError) as exc:
        return f"unreadable manifest ({exc})"
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("key") != key:
        return "manifest of another format or key"
    if _canonical(manifest.get("inputs")) != _canonical(inputs):
        return "manifest inputs differ from this request (stale entry)"
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return "manifest lists no files"
    for name, expected in sorted(files.items()):
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        size = file.stat().st_size
        if size != expected.get("size"):
            return f"{name} has {size} bytes, the manifest says {expected.get('size')}"
        if file_sha256(file) != expected.get("sha256"):
            return f"{name} does not match its sha256 in the manifest"
    return None


def staging_dir(root: Path, key: str) -> Path:
    """A fresh temporary folder beside the entry, to build it in (same filesystem, so rename is atomic)."""
    Path(root).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".staging-{key[:12]}-", dir=root))


def publish(root: Path, key: str, staged: Path, inputs: Mapping[str, Any], info: Mapping[str, Any] | None = None) -> Entry:
    """Write the manifest into ``staged`` and rename it to the entry, replacing an invalid one."""
    staged = Path(staged)
    files = {
        p.relative_to(staged).as_posix(): {"size": p.stat().st_size, "sha256": file_sha256(p)}
        for p in sorted(staged.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    if not files:
        raise ValueError(f"cache entry {key}: nothing was written to {staged}")
    manifest = {
        "format": FORMAT,
        "key": key,
        "inputs": json.loads(_canonical(inputs)),
        "files": files,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **({"info": dict(info)} if info else {}),
    }
    (staged / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    final = Path(root) / key
    if final.exists():
        discard(final)
    os.replace(staged, final)
    return Entry(final, manifest)


def discard(path: Path) -> None:
    """Remove an entry: first renamed aside (so no reader sees it half deleted), then deleted."""
    path = Path(path)
    aside = path.with_name(f".trash-{path.name}-{os.getpid()}-{time.monotonic_ns()}")
    with contextlib.suppress(FileNotFoundError):
        os.replace(path, aside)
        shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def locked(root: Path, key: str) -> Iterator[None]:
    """Hold an exclusive lock for ``key`` (POSIX ``flock``; elsewhere no lock is taken)."""
    Path(root).mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: builders may race, and the last rename wins
        yield
        return
    with open(Path(root) / f".{key}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class Built:
    """What ``build`` hands back: the entry's folder, "hit"/"miss"/"rebuilt", the builder's info (fresh or as
    recorded when the entry was made) and, for a rebuilt entry, what was wrong with the old one."""

    path: Path
    status: str
    info: Mapping[str, Any]
    problem: str | None = None


def build(root: Path, key: str, inputs: Mapping[str, Any], make: "Callable[[Path], Mapping[str, Any]]") -> Built:
    """The entry for ``key`` under ``root``: reused when valid, else made by ``make(staging folder) -> info``
    and published; one process builds while others wait on the lock; a failed build leaves nothing behind."""
    import shutil

    with locked(root, key):
        found = lookup(root, key, inputs)
        if found.entry is not None:
            return Built(found.entry.path, "hit", dict(found.entry.manifest.get("info", {})))
        staged = staging_dir(root, key)
        try:
            info = dict(make(staged))
            path = publish(root, key, staged, inputs, info).path
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        return Built(path, "rebuilt" if found.problem else "miss", info, found.problem)
