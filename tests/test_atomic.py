"""The one atomic write, and the removal of temporary files that killed writers leave in the cache."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_quant import atomic

KILLED_WRITER = """
import os, signal, sys
from pytest_quant import atomic
os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)  # SIGKILL half-way, as the sweep's killer.sh did
atomic.atomic_write(sys.argv[1], b"x" * 1_000_000)
"""


def killed_write(target: Path) -> Path:
    """Run a writer that is SIGKILLed during atomic_write; the temporary file it leaves."""
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)], capture_output=True)
    assert done.returncode == -9
    (left,) = [p for p in target.parent.iterdir() if p.name != target.name]
    return left


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


def test_the_write_replaces_the_file_whole_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "ref.safetensors"
    target.write_text("old")
    atomic.atomic_write(target, "new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["ref.safetensors"]


def test_a_link_at_the_target_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "f.json").symlink_to(victim)
    atomic.atomic_write(tmp_path / "cache" / "f.json", "{}")
    assert victim.read_text() == "keep" and not (tmp_path / "cache" / "f.json").is_symlink()


def test_a_killed_writers_temporary_file_is_named_after_it_and_removed_once_old(tmp_path: Path) -> None:
    # sweep case 21: SIGKILL during a cache write left 60-115 MB .tmp files no later run removed
    left = killed_write(tmp_path / "tiny-7344.safetensors")
    assert left.name.startswith(f".tiny-7344.safetensors.{atomic.host_tag()}.") and left.name.endswith(".tmp")
    assert atomic.remove_stale_temps(tmp_path) == []  # too young to tell from a slow writer
    age(left, atomic.STALE_AFTER_S + 60)
    assert atomic.remove_stale_temps(tmp_path) == [left] and not left.exists()


def test_a_live_writers_temporary_file_is_kept_however_old(tmp_path: Path) -> None:
    live = tmp_path / f"{atomic.writer_prefix('ref.safetensors')}abcd1234.tmp"
    live.write_bytes(b"in progress")
    age(live, 3 * 3600)
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        other = tmp_path / f".ref.safetensors.{atomic.host_tag()}.{writer.pid}.zzzz1234.tmp"
        other.write_bytes(b"another process's write in progress")
        age(other, 3 * 3600)
        assert atomic.remove_stale_temps(tmp_path) == []
    finally:
        writer.kill()
        writer.wait()
    assert atomic.remove_stale_temps(tmp_path) == [other]  # its writer is gone now
    assert live.exists()


def test_files_whose_writer_cannot_be_asked_wait_a_day(tmp_path: Path) -> None:
    foreign = tmp_path / ".ref.safetensors.some-other-host.12345.abcd1234.tmp"
    legacy = tmp_path / ".ref.safetensors.7slqwtsl.tmp"  # the name an older version gave
    for path in (foreign, legacy):
        path.write_bytes(b"x")
        age(path, 3600)
    assert atomic.remove_stale_temps(tmp_path) == []
    for path in (foreign, legacy):
        age(path, atomic.FOREIGN_STALE_AFTER_S + 60)
    assert sorted(atomic.remove_stale_temps(tmp_path)) == sorted([foreign, legacy])


def test_only_temporary_names_are_touched_and_links_are_removed_as_links(tmp_path: Path) -> None:
    victim = tmp_path.parent / f"{tmp_path.name}-victim.txt"
    victim.write_text("keep")
    keep = [tmp_path / "tiny-ab.safetensors", tmp_path / "file-hashes.json", tmp_path / ".k.lock"]
    for path in keep:
        path.write_text("x")
        age(path, 10 * 86400)
    link = tmp_path / ".planted.tmp"
    link.symlink_to(victim)
    assert atomic.remove_stale_temps(tmp_path) == [link]
    assert all(p.exists() for p in keep) and victim.read_text() == "keep"


def test_a_lock_file_opens_without_following_or_truncating(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("49 bytes of someone's file")
    lock = tmp_path / ".k.lock"
    lock.symlink_to(victim)
    os.close(atomic.open_lock_file(lock))
    assert victim.read_text() == "49 bytes of someone's file" and lock.is_file() and not lock.is_symlink()
    lock.write_text("x")
    os.close(atomic.open_lock_file(lock))
    assert lock.read_text() == "x"


def test_a_lock_path_that_is_a_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / ".k.lock").mkdir()
    with pytest.raises(OSError):
        atomic.open_lock_file(tmp_path / ".k.lock")
    assert (tmp_path / ".k.lock").is_dir()


def test_atomic_write_respects_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        atomic.atomic_write(tmp_path / "b.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o640
