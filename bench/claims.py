"""Trial claims: two sweeps on one store never train the same trial at once.

Before launching a trial, a sweep's driver creates ``<store>/claims/<run_id>.json`` with ``O_CREAT | O_EXCL`` (atomic
on local file systems and NFSv3+), holding its host, pid, a per-sweep token and the time. Another sweep that finds
the file skips that trial ("claimed by another live sweep"). A sweep claims every trial it will run when it starts,
so a second sweep runs only what the first does not plan to. The owner refreshes the file's mtime every
``HEARTBEAT_S`` and removes its claims when it ends. A claim is stale, and taken over, when its owner is a dead
process on this host, or when it has not been refreshed for ``LEASE_S`` (its driver died on another host). Stdlib
only: the driver uses it before Ray starts.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Iterable

LEASE_S = 600.0  # a claim its owner has not refreshed for this long is stale (a driver that died on another host)
HEARTBEAT_S = 60.0  # how often a live owner refreshes its claims: well inside the lease, even with clock skew
UNWRITTEN_S = 30.0  # an empty or unreadable claim this old was left by a crash between create and write
TAKEOVER_LOCK_S = 60.0  # a takeover lock this old was left by a crash mid-takeover


def claims_dir(store: str | os.PathLike) -> Path:
    return Path(store) / "claims"


def claim_path(store: str | os.PathLike, rid: str) -> Path:
    return claims_dir(store) / f"{rid}.json"


def read_claim(path: Path) -> dict | None:
    """The claim's content, or None when it is missing, empty (being written) or unreadable."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _age(path: Path, now: float) -> float | None:
    try:
        return now - path.stat().st_mtime
    except FileNotFoundError:
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except (OSError, OverflowError):
        return False
    return True


class ClaimSet:
    """The claims one sweep holds. Use as a context manager: the heartbeat runs inside, and every claim still
    held is removed on exit (also on an exception or an interrupt)."""

    def __init__(self, store: str | os.PathLike, *, lease_s: float = LEASE_S,
                 heartbeat_s: float = HEARTBEAT_S) -> None:
        self.store = Path(store)
        self.lease_s, self.heartbeat_s = lease_s, heartbeat_s
        self.host, self.pid, self.token = socket.gethostname(), os.getpid(), uuid.uuid4().hex
        self.held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------ liveness

    def is_live(self, path: Path, now: float | None = None) -> bool:
        """Whether the claim at ``path`` belongs to a sweep that may still be running (not this one)."""
        now = time.time() if now is None else now
        age = _age(path, now)
        if age is None:
            return False
        info = read_claim(path)
        if info is None:
            return age < UNWRITTEN_S
        if age > self.lease_s:
            return False
        if info.get("host") == self.host:
            pid = info.get("pid")
            if pid == self.pid:  # an earlier sweep of this process that did not release it
                return False
            return isinstance(pid, int) and pid_alive(pid)
        return True

    def owner(self, rid: str) -> str:
        """'host pid N since TIME' of a claim, for messages."""
        info = read_claim(claim_path(self.store, rid)) or {}
        return f"{info.get('host', '?')} pid {info.get('pid', '?')} since {info.get('time', '?')}"

    # ------------------------------------------------------------------------------------------ claiming

    def _create(self, path: Path) -> bool:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for records
        except FileExistsError:
            return False
        doc = {"host": self.host, "pid": self.pid, "token": self.token,
               "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(doc, sort_keys=True) + "\n")
        return True

    def _take_over(self, path: Path) -> None:
        """Remove a stale claim, under a lock file so that two sweeps judging it stale at once cannot both remove
        it (the second would remove the first one's fresh claim)."""
        lock = path.with_name(path.name + ".takeover")
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            age = _age(lock, time.time())
            if age is not None and age > TAKEOVER_LOCK_S:
                lock.unlink(missing_ok=True)
            return
        os.close(fd)
        try:
            if not self.is_live(path):  # judged again under the lock
                path.unlink(missing_ok=True)
        finally:
            lock.unlink(missing_ok=True)

    def claim(self, rid: str) -> bool:
        """Claim the trial ``rid``; False when a live other sweep holds it."""
        path = claim_path(self.store, rid)
        path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._create(path):
                with self._lock:
                    self.held.add(rid)
                return True
            if self.is_live(path):
                return False
            self._take_over(path)
        return False

    def _mine(self, path: Path) -> bool:
        info = read_claim(path)
        return info is not None and info.get("token") == self.token

    def release(self, rid: str) -> None:
        """Remove the claim if it is still this sweep's (after a lease lapse another sweep may have taken it)."""
        with self._lock:
            self.held.discard(rid)
        path = claim_path(self.store, rid)
        if self._mine(path):
            path.unlink(missing_ok=True)

    def release_all(self, rids: Iterable[str] | None = None) -> None:
        with self._lock:
            todo = list(self.held if rids is None else rids)
        for rid in todo:
            self.release(rid)

    # ------------------------------------------------------------------------------------------ heartbeat

    def refresh(self) -> None:
        """Touch every claim still held, so that other hosts see this sweep alive; drop any lost to another."""
        with self._lock:
            rids = list(self.held)
        for rid in rids:
            path = claim_path(self.store, rid)
            if self._mine(path):
                try:
                    os.utime(path)
                except FileNotFoundError:
                    pass
            else:
                with self._lock:
                    self.held.discard(rid)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.refresh()
            except OSError:  # a store briefly unreachable: try again next beat
                pass

    def __enter__(self) -> "ClaimSet":
        self._thread = threading.Thread(target=self._beat, name="crysbench-claims", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.release_all()
