"""The training-speed benchmark runs end to end on a tiny budget and reports what the README quotes (the numbers
themselves are measured by running it at full size, never asserted in a test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_train_speed_reports_alignn_against_the_reference(tmp_path):
    pytest.importorskip("alignn")
    out = tmp_path / "speed.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "train_speed.py"), "--encoders", "alignn", "--structures", "8",
           "--batch-size", "4", "--steps", "2", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (res,) = json.loads(out.read_text())
    ref = res["reference"]
    assert ref["params_match"] and ref["params_ours"] == 4_026_753
    assert ref["max_abs_pred_diff_eval"] < 1e-4 and ref["max_abs_pred_diff_eval_full_graphs"] < 1e-4
    assert res["symmetry_reduced"] and res["symmetry_reduction"]["triplets"] >= 1.0
    assert "speed-up" in proc.stdout and "symmetry reduction of this sample" in proc.stdout


@pytest.mark.slow
def test_gpu_check_runs_end_to_end_as_a_cpu_dry_run(tmp_path):
    """benchmarks/gpu_check.py is meant for a GPU machine; on CPU (--device cpu) every part but the sweep runs,
    the device side on plain torch, so the script stays ready. Its parity rows must hold there too."""
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--skip-sweep",
           "--structures", "8", "--batch-size", "4", "--steps", "1", "--hidden", "16", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert {r["encoder"] for r in res["parity"]} == {"alignn", "cartnet", "cgcnn", "megnet"}
    assert all(r["ok"] for r in res["parity"]) and len(res["throughput"]["rows"]) >= 4
