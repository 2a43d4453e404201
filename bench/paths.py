"""Where data and caches live.

Data directory: ``--data-dir``, else ``BENCH_DATA_DIR``, else the user cache directory. Cache directory (graphs,
pretrained tables): ``BENCH_CACHE_DIR``, else ``<user cache>/cache``.
"""

from __future__ import annotations

import os
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

PACKAGE_DIR = Path(__file__).resolve().parent


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "crysbench"


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("BENCH_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return user_cache_dir() / "data"


def data_dir_is_explicit(explicit: str | os.PathLike | None = None) -> bool:
    return bool(explicit) or bool(os.environ.get("BENCH_DATA_DIR"))


def cache_dir() -> Path:
    env = os.environ.get("BENCH_CACHE_DIR")
    return Path(env).expanduser() if env else user_cache_dir() / "cache"


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the kernel reports it (Linux >= 4.7), since setting
    it to read it back would briefly give files created by other threads the wrong mode."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only if the block succeeds.

    An interrupted write leaves no half-written ``target`` (at most a stray ``.tmp`` file, never read). The file
    gets the mode an ordinary ``open`` would give it (0o666 less the umask), not mkstemp's 0600, so a store
    shared by a group or by the nodes of a cluster stays readable to them.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)
