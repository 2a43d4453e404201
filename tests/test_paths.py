"""bench.paths: atomic writes give files the mode an ordinary open would (the umask is honoured, not mkstemp's 0600)."""

from __future__ import annotations

import os
import stat

import pytest

from bench import paths


@pytest.fixture(params=[0o002, 0o022], ids=["umask002", "umask022"])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_current_umask_reads_without_changing_it(umask):
    assert paths.current_umask() == umask
    assert os.umask(umask) == umask  # unchanged by the read


def test_current_umask_without_proc(umask, monkeypatch):
    import builtins

    real_open = builtins.open

    def no_proc(file, *a, **k):
        if str(file).startswith("/proc/"):
            raise OSError("no /proc here")
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", no_proc)
    assert paths.current_umask() == umask
    assert os.umask(umask) == umask


def test_atomic_writes_honour_the_umask(umask, tmp_path):
    expected = 0o666 & ~umask
    paths.atomic_write_text(tmp_path / "a.txt", "x")
    with paths.atomic_path(tmp_path / "sub" / "b.bin") as tmp:
        tmp.write_bytes(b"y")
    with paths.atomic_path(tmp_path / "c.bin") as tmp:  # a writer that replaces the temporary file
        tmp.unlink()
        tmp.write_bytes(b"z")
    for name in ("a.txt", "sub/b.bin", "c.bin"):
        assert _mode(tmp_path / name) == expected, name
    # an ordinary open gives the same mode: the store looks as if written by any other tool
    (tmp_path / "plain").write_text("p")
    assert _mode(tmp_path / "plain") == expected


def test_records_honour_the_umask(umask, tmp_path):
    from bench.records import record_path, write_record
    from test_leaderboard import make_record

    rec = make_record()
    write_record(tmp_path / "store", rec)
    assert _mode(record_path(tmp_path / "store", rec["run_id"])) == 0o666 & ~umask
