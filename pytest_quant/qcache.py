"""An on-disk cache of quantized model folders, keyed by a hash of everything that shapes the result.

An entry is a folder ``<root>/<key>/`` holding the saved model and ``MANIFEST``: the key's inputs (model
file hashes, recipe, calibration digest, library versions) and the size and sha256 of every file in it.
It is built in a temporary sibling folder and renamed into place, so a reader never sees half of one; on
every lookup the files are hashed again, and an entry whose files do not match (missing, changed, added, a
symbolic link) is rebuilt with a warning saying why. Builders of one key take turns on a lock file (xdist
workers quantize once). No link inside the cache is followed. Imports no torch. The hashes catch an entry
damaged or edited in part; one forged whole, manifest included, is as trusted as who can write the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from .atomic import atomic_write, open_lock_file, remove_stale_temps, writer_prefix

MANIFEST = "pytest-quant-manifest.json"
FORMAT = 1  # bump when the layout or the meaning of the key changes
HASH_MEMO = "file-hashes.json"
_CHUNK = 1 << 20
# A file changed within this long after its inode's last change may not show a new ctime on a filesystem
# with coarse timestamps (git's "racily clean" problem): such a hash is not remembered.
RACY_WINDOW_NS = 2_000_000_000


class CacheError(ValueError):
    """A cache folder that cannot be used as it is (a symbolic link where a folder should be); names it."""


class CacheWarning(UserWarning):
    """A cache entry that was found damaged or stale and is being rebuilt."""


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
    found = [Path(model_path)] if Path(model_path).is_file() else Path(model_path).iterdir()  # a .gguf file: itself
    return sorted(p for p in found if p.is_file() and (
        p.name == "config.json" or p.name.endswith(WEIGHT_SUFFIXES) or p.name.endswith(".index.json")))


def file_stamp(st: os.stat_result) -> list[int]:
    """What proves a file unchanged since it was hashed: inode, size, mtime and ctime. ``cp -p``, ``tar x`` and
    ``rsync -a`` keep size and mtime, but no one sets ctime: the kernel does, on every write or chmod/touch."""
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def model_fingerprint(model_path: Path, memo_dir: Path | None = None) -> dict[str, str]:
    """``{file name: sha256}`` of the files ``model_files`` lists. Hashes are remembered in ``memo_dir`` against
    each file's ``file_stamp``: a file rewritten, replaced or copied over (keeping its size and mtime) is hashed
    again; a hash taken within ``RACY_WINDOW_NS`` of the file's last change is not remembered."""
    memo_file = Path(memo_dir) / HASH_MEMO if memo_dir is not None else None
    memo: dict[str, Any] = {}
    if memo_file is not None and not memo_file.is_symlink():
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(memo_file.read_text())
            memo = loaded if isinstance(loaded, dict) else {}
    files = model_files(model_path)
    if not any(p.name != "config.json" and not p.name.endswith(".index.json") for p in files):
        raise ValueError(f"{model_path}: no weight files ({', '.join('*' + s for s in WEIGHT_SUFFIXES)}) to key the cache on")
    changed = False
    fingerprint = {}
    for path in files:
        key = str(path.resolve())
        stamp = file_stamp(path.stat())
        known = memo.get(key)
        if isinstance(known, dict) and known.get("stamp") == stamp and isinstance(known.get("sha256"), str):
            digest = known["sha256"]
        else:
            started_ns = time.time_ns()
            digest = file_sha256(path)
            after = file_stamp(path.stat())
            if after == stamp and started_ns - stamp[4] > RACY_WINDOW_NS:
                memo[key] = {"stamp": stamp, "sha256": digest}
                changed = True
            elif memo.pop(key, None) is not None:
                changed = True
        fingerprint[path.name] = digest
    if memo_file is not None and changed:
        with contextlib.suppress(OSError):  # a read-only or full cache: the hashes are taken again next time
            atomic_write(memo_file, json.dumps(memo, indent=1, sort_keys=True))
    return fingerprint


def cache_key(inputs: Mapping[str, Any]) -> str:
    """A short, stable hash of the key's inputs (canonical JSON)."""
    canonical = json.dumps({"format": FORMAT, **inputs}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def check_root(root: Path) -> Path:
    """``root`` (a folder inside the cache), created if absent; CacheError when it is a symbolic link."""
    root = Path(root)
    if root.is_symlink():
        raise CacheError(f"{root} is a symbolic link (to {os.readlink(root)}); pytest-quant does not follow links "
                         "inside its cache folder: remove the link (or point --quant-cache-dir elsewhere)")
    if root.exists() and not root.is_dir():
        raise CacheError(f"{root} is not a folder; remove it (or point --quant-cache-dir elsewhere)")
    root.mkdir(parents=True, exist_ok=True)
    return root


def lookup(root: Path, key: str, inputs: Mapping[str, Any]) -> Lookup:
    path = Path(root) / key
    if path.is_symlink():
        return Lookup(None, f"{key} is a symbolic link (to {os.readlink(path)}), not a cache entry")
    if not path.exists():
        return Lookup(None)
    if not path.is_dir():
        return Lookup(None, f"{key} is a file, not a cache entry folder")
    problem = verify(path, key, inputs)
    if problem:
        return Lookup(None, problem)
    return Lookup(Entry(path, json.loads((path / MANIFEST).read_text())))


def entry_files(path: Path) -> tuple[list[str], list[str]]:
    """The files of an entry folder as relative posix names (the manifest left out), and its symbolic links."""
    files, links = [], []
    for item in sorted(Path(path).rglob("*")):
        name = item.relative_to(path).as_posix()
        if item.is_symlink():
            links.append(name)
        elif item.is_file() and name != MANIFEST:
            files.append(name)
    return files, links


def verify(path: Path, key: str, inputs: Mapping[str, Any]) -> str | None:
    """Why the entry at ``path`` cannot be used for ``key`` (None when it can): every file is hashed and
    compared with the manifest, and the entry must hold exactly the files the manifest lists."""
    manifest_file = path / MANIFEST
    if manifest_file.is_symlink():
        return f"{MANIFEST} is a symbolic link"
    try:
        manifest = json.loads(manifest_file.read_text())
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
    present, links = entry_files(path)
    if links:
        return f"{links[0]} is a symbolic link (an entry holds only regular files)"
    extra = sorted(set(present) - set(files))
    if extra:
        return f"{extra[0]} is not listed in the manifest"
    for name, expected in sorted(files.items()):
        expected = expected if isinstance(expected, dict) else {}
        if name not in present:
            return f"{name} is missing"
        file = path / name
        size = file.stat().st_size
        if size != expected.get("size"):
            return f"{name} has {size} bytes, the manifest says {expected.get('size')}"
        if file_sha256(file) != expected.get("sha256"):
            return f"{name} does not match its sha256 in the manifest"
    return None


def staging_dir(root: Path, key: str) -> Path:
    """A fresh folder beside the entry to build it in (one filesystem: the rename is atomic), named after this
    host and pid so that a later run removes it if this one is killed."""
    check_root(root)
    return Path(tempfile.mkdtemp(prefix=writer_prefix(f"staging-{key[:12]}"), dir=root))


def publish(root: Path, key: str, staged: Path, inputs: Mapping[str, Any], info: Mapping[str, Any] | None = None) -> Entry:
    """Write the manifest into ``staged`` and rename it to the entry, replacing an invalid one."""
    staged = Path(staged)
    names, links = entry_files(staged)
    if links:
        raise ValueError(f"cache entry {key}: {links[0]} in {staged} is a symbolic link; an entry holds only files")
    files = {name: {"size": (staged / name).stat().st_size, "sha256": file_sha256(staged / name)} for name in names}
    if not files:
        raise ValueError(f"cache entry {key}: nothing was written to {staged}")
    manifest = {"format": FORMAT, "key": key, "inputs": json.loads(_canonical(inputs)), "files": files,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **({"info": dict(info)} if info else {})}
    (staged / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    final = Path(root) / key
    if os.path.lexists(final):
        discard(final)
    os.replace(staged, final)
    return Entry(final, manifest)


def discard(path: Path) -> None:
    """Remove an entry: first renamed aside (so no reader sees it half deleted), then deleted. A symbolic
    link is removed itself; what it points at is never touched."""
    path = Path(path)
    if path.is_symlink():
        return path.unlink(missing_ok=True)
    aside = path.with_name(f".trash-{path.name}-{os.getpid()}-{time.monotonic_ns()}")
    with contextlib.suppress(FileNotFoundError):
        os.replace(path, aside)
        shutil.rmtree(aside, ignore_errors=True) if aside.is_dir() else aside.unlink()


@contextlib.contextmanager
def locked(root: Path, key: str) -> Iterator[None]:
    """Hold an exclusive lock for ``key`` (POSIX ``flock``; elsewhere no lock is taken). The lock file is
    opened without following a link and never truncated (``atomic.open_lock_file``)."""
    check_root(root)
    try:
        import fcntl
    except ImportError:  # Windows: builders may race, and the last rename wins
        yield
        return
    fd = open_lock_file(Path(root) / f".{key}.lock")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


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
    and published (one process builds, others wait on the lock; a failed build leaves nothing behind). A
    damaged or stale entry is rebuilt with a ``CacheWarning`` saying why; dead builders' leftovers go first."""
    with locked(root, key):
        remove_stale_temps(root)
        found = lookup(root, key, inputs)
        if found.entry is not None:
            return Built(found.entry.path, "hit", dict(found.entry.manifest.get("info", {})))
        if found.problem:
            warnings.warn(CacheWarning(f"pytest-quant: cache entry {Path(root) / key} is rebuilt: {found.problem}"),
                          stacklevel=2)
        staged = staging_dir(root, key)
        try:
            info = dict(make(staged))
            path = publish(root, key, staged, inputs, info).path
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        return Built(path, "rebuilt" if found.problem else "miss", info, found.problem)
