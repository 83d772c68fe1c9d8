"""The one atomic file write (a temporary file beside the target, then a rename), and the clean-up of the
temporary files a killed writer leaves behind.

A reader (or another pytest-xdist worker) sees the old file or the new one, never a torn one; the file gets
the permissions the umask gives a new file, not mkstemp's 0600. A temporary name carries its writer's host
and pid (``.<name>.<host>.<pid>.<random>.tmp``), so a later run can tell a dead writer's leftovers from a
concurrent writer's file in progress (``remove_stale_temps``). Nothing here follows a symbolic link it finds
where it writes: the rename replaces a link itself, never its target.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from pathlib import Path

TMP_SUFFIX = ".tmp"
STALE_AFTER_S = 10 * 60  # a dead writer's temporary file is removed once it is this old
FOREIGN_STALE_AFTER_S = 24 * 3600  # a file whose writer cannot be asked (another host, an older name): this old
# .<target name>.<host>.<pid>.<random>.tmp, and .staging-<key>.<host>.<pid>.<random> (qcache's folders)
_OWNED = re.compile(r"^\.(?:.+)\.(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>[0-9]+)\.[A-Za-z0-9_]+(?:\.tmp)?$")


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def host_tag() -> str:
    """This host's name as it appears in temporary names (letters, digits, ``-`` and ``_`` only)."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname() or "host")[:40]
    return name or "host"


def writer_prefix(name: str) -> str:
    """The start of a temporary name for ``name`` written by this process."""
    return f".{name}.{host_tag()}.{os.getpid()}."


def atomic_write(path: Path, data: str | bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=writer_prefix(path.name), suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def open_lock_file(path: Path) -> int:
    """A file descriptor of the regular file ``path`` (created if absent, never truncated), opened without
    following a symbolic link. A link planted there is removed (the link itself, never its target) and the
    file created in its place; anything else that is not a regular file is refused with OSError."""
    path = Path(path)
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    for _attempt in range(3):
        try:
            fd = os.open(path, flags, 0o666)
        except OSError as exc:
            if exc.errno == errno.ELOOP or (os.path.islink(path) and exc.errno in (errno.EMLINK, errno.EEXIST)):
                os.unlink(path)  # the link, not what it points at
                continue
            raise
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise OSError(errno.EINVAL, f"{path} is not a regular file; remove it")
        return fd
    raise OSError(errno.ELOOP, f"{path} keeps being replaced by a symbolic link")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OSError:
        return True
    return True


def is_stale(path: Path, now: float | None = None, min_age_s: float = STALE_AFTER_S) -> bool:
    """Whether a temporary file or folder left in a cache is a dead writer's: older than ``min_age_s`` and,
    where its name says its writer ran on this host, that process is gone. A name without a writer (one an
    older version wrote) or from another host is stale only after ``FOREIGN_STALE_AFTER_S``."""
    path = Path(path)
    now = time.time() if now is None else now
    try:
        age = now - path.lstat().st_mtime
    except FileNotFoundError:
        return False
    match = _OWNED.match(path.name)
    if match and match["host"] == host_tag():
        pid = int(match["pid"])
        return age > min_age_s and pid != os.getpid() and not _pid_alive(pid)
    return age > max(min_age_s, FOREIGN_STALE_AFTER_S)


def is_temporary_name(name: str) -> bool:
    """A name this package gives files and folders while it writes them (hidden, .tmp or staging/trash)."""
    return name.startswith(".") and (name.endswith(TMP_SUFFIX) or name.startswith((".staging-", ".trash-")))


def remove_stale_temps(folder: Path, now: float | None = None, min_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove the temporary files and folders of dead writers directly inside ``folder``; the removed paths.

    A concurrent writer's file (its pid alive, or too young to tell) is left alone; a symbolic link with
    such a name is removed as a link. Errors (a file removed meanwhile, no permission) are skipped.
    """
    removed: list[Path] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if not is_temporary_name(name):
            continue
        path = Path(folder) / name
        try:
            if path.is_symlink():
                path.unlink()
                removed.append(path)
            elif name.startswith(".trash-") or is_stale(path, now, min_age_s):
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed.append(path)
        except OSError:
            continue
    return removed
