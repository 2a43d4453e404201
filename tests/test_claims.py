"""Trial claims (bench.claims): one sweep per trial on a shared store; stale claims are taken over."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import stat
import subprocess
import sys
import time

import pytest

from bench.claims import LEASE_S, UNWRITTEN_S, ClaimSet, claim_path

RID = "0123456789abcdef0123"


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _plant(store, rid: str, *, host: str | None = None, pid: int | None = None, age: float = 0.0) -> None:
    """A claim as another sweep would have left it."""
    path = claim_path(store, rid)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid or os.getppid(),
                                "token": "other", "time": "2026-01-01T00:00:00Z"}))
    if age:
        t = time.time() - age
        os.utime(path, (t, t))


def test_claim_release_and_the_file_it_writes(tmp_path):
    old = os.umask(0o022)
    try:
        with ClaimSet(tmp_path) as c:
            assert c.claim(RID)
            path = claim_path(tmp_path, RID)
            doc = json.loads(path.read_text())
            assert doc["host"] == socket.gethostname() and doc["pid"] == os.getpid() and doc["token"] == c.token
            assert stat.S_IMODE(path.stat().st_mode) == 0o644  # the umask applies, as for every store file
            c.release(RID)
            assert not path.exists()
            assert c.claim(RID)
        assert not path.exists()  # released on exit
    finally:
        os.umask(old)


def test_a_live_other_sweep_keeps_its_claim(tmp_path):
    _plant(tmp_path, RID, pid=os.getppid())  # alive, on this host, another process
    c = ClaimSet(tmp_path)
    assert not c.claim(RID)
    assert "pid %d" % os.getppid() in c.owner(RID)
    c.release(RID)  # not ours: left alone
    assert claim_path(tmp_path, RID).exists()
    _plant(tmp_path, "b" * 20, host="other-node", age=LEASE_S / 2)  # another host within its lease
    assert not c.claim("b" * 20)


@pytest.mark.parametrize("how", ["dead pid on this host", "other host past the lease", "this process",
                                 "unwritten and old"])
def test_stale_claims_are_taken_over(tmp_path, how):
    if how == "dead pid on this host":
        _plant(tmp_path, RID, pid=_dead_pid())
    elif how == "other host past the lease":
        _plant(tmp_path, RID, host="other-node", age=LEASE_S + 5)
    elif how == "this process":  # an earlier sweep in this process that did not release it
        _plant(tmp_path, RID, pid=os.getpid())
    else:
        path = claim_path(tmp_path, RID)
        path.parent.mkdir(parents=True)
        path.write_text("")
        t = time.time() - UNWRITTEN_S - 5
        os.utime(path, (t, t))
    c = ClaimSet(tmp_path)
    assert c.claim(RID)
    assert json.loads(claim_path(tmp_path, RID).read_text())["token"] == c.token


def test_a_claim_being_written_counts_as_live(tmp_path):
    path = claim_path(tmp_path, RID)
    path.parent.mkdir(parents=True)
    path.write_text("")  # created, not yet filled
    assert not ClaimSet(tmp_path).claim(RID)


def test_the_heartbeat_keeps_claims_fresh_and_drops_lost_ones(tmp_path):
    with ClaimSet(tmp_path, heartbeat_s=0.05) as c:
        assert c.claim(RID) and c.claim("b" * 20)
        t = time.time() - 1000
        os.utime(claim_path(tmp_path, RID), (t, t))
        _plant(tmp_path, "b" * 20, host="other-node")  # taken over by another sweep after a lapse
        time.sleep(0.5)
        assert time.time() - claim_path(tmp_path, RID).stat().st_mtime < 100
        assert c.held == {RID}
    assert not claim_path(tmp_path, RID).exists()
    assert claim_path(tmp_path, "b" * 20).exists()  # the other sweep's claim is not removed


def _race(store: str, rid: str, start: float, out) -> None:
    while time.time() < start:
        time.sleep(0.001)
    c = ClaimSet(store)
    out.put((os.getpid(), c.claim(rid)))
    time.sleep(1.0)  # hold it while the others look


@pytest.mark.parametrize("stale", [False, True])
def test_exactly_one_of_many_concurrent_sweeps_wins(tmp_path, stale):
    if stale:
        _plant(tmp_path, RID, pid=_dead_pid())
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    start = time.time() + 0.5
    procs = [ctx.Process(target=_race, args=(str(tmp_path), RID, start, out)) for _ in range(6)]
    for p in procs:
        p.start()
    wins = [out.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(30)
    assert sum(won for _, won in wins) == 1, wins
