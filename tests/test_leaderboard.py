"""The leaderboard renderer: statistics, grouping that never mixes versions or protocols, determinism, the
golden rendering of fixed records (byte for byte) and `bench leaderboard --check`."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest

from bench import leaderboard as lb
from bench.records import SCHEMA_VERSION, RecordError, run_id, write_record

GOLDEN = Path(__file__).resolve().parent / "golden"


def make_record(task="dft_3d_formation_energy_peratom", encoder="cgcnn", label="onehot", fraction=1.0, seed=0,
                test_mae=0.1, *, unit="eV/atom", encoder_version="1", table_hash=None, epochs=3, n_test=4,
                n_val=4, dataset_key="sample", status="ok", featurizer=None, settings=None) -> dict:
    """A schema-valid record (bench.records.validate_record) with the fields the renderer reads."""
    featurizer = featurizer or (f"embedding:/tables/{label}.json" if table_hash else label)
    identity = {"task": task, "encoder": encoder, "encoder_version": encoder_version, "featurizer": featurizer,
                "table_hash": table_hash, "fraction": fraction, "seed": seed, "epochs": epochs,
                "dataset_key": dataset_key, "n_test": n_test, "settings": settings or {}}
    rec = {
        "schema_version": SCHEMA_VERSION, "run_id": run_id(identity), "status": status,
        "created_at": "2026-01-01T00:00:00Z", "identity": identity, "git_sha": None,
        "versions": {"crysbench": "0.1.0", "torch": "2.2.1", "dgl": "2.1.0"},
        "hardware": {"cpu": "test cpu", "gpu": None}, "device": "cpu", "task": task, "encoder": encoder,
        "featurizer": featurizer, "features_label": label, "fraction": fraction, "seed": seed,
        "wall_time_s": 1.0,
    }
    if status != "ok":
        rec["error"] = "RuntimeError: boom"
        return rec
    rec.update({
        "unit": unit, "dataset_key": dataset_key, "encoder_version": encoder_version, "encoder_options": {},
        "featurizer_version": "1", "table_hash": table_hash, "train_settings": settings or {"lr": 0.001},
        "n_train": 8, "n_val": n_val, "n_test": n_test, "val_mae": test_mae * 1.1, "test_mae": test_mae,
        "selected_epoch": 1, "epochs": epochs, "epochs_run": epochs, "n_params": 1000,
        "predictions": {"ids": [f"id{i}" for i in range(n_test)], "targets": [0.0] * n_test,
                        "predictions": [test_mae] * n_test},
        "curve": {"train_loss": [1.0] * epochs, "val_mae": [test_mae] * epochs},
    })
    return rec


def golden_records() -> list[dict]:
    """The fixed records behind tests/golden/leaderboard: two tasks, three seeds, two fractions, an embedding
    that helps, a control that does not, one single-seed column, a second protocol and a failed run."""
    recs = []
    base = {1.0: 0.080, 0.5: 0.110}
    shifts = {"onehot": 0.0, "crysatom": -0.012, "random": 0.004}
    wiggle = {"onehot": [0.0031, -0.0022, 0.0009], "crysatom": [0.0012, -0.0030, 0.0021],
              "random": [0.0040, -0.0051, -0.0003]}
    for frac, b in base.items():
        for label, d in shifts.items():
            for seed in range(3):
                th = {"crysatom": "a" * 64, "random": None}.get(label)
                recs.append(make_record(label=label, fraction=frac, seed=seed,
                                        test_mae=round(b + d + wiggle[label][seed] * (2 - frac), 6),
                                        table_hash=th, featurizer="random" if label == "random" else None))
        recs.append(make_record(label="cgcnn", fraction=frac, seed=0, test_mae=b - 0.001))
    for seed in range(2):
        for label, m in (("onehot", 0.61), ("crysatom", 0.58)):
            recs.append(make_record(task="dft_3d_optb88vdw_bandgap", unit="eV", label=label, seed=seed,
                                    test_mae=m + 0.01 * seed, table_hash="a" * 64 if label == "crysatom" else None))
    # the same task under a second protocol (more epochs): its own section, never averaged with the first
    recs.append(make_record(task="dft_3d_optb88vdw_bandgap", unit="eV", seed=0, test_mae=0.5, epochs=10))
    recs.append(make_record(task="dft_3d_optb88vdw_bandgap", label="crysatom", seed=2, status="failed",
                            table_hash="a" * 64))
    return recs


def _store(tmp_path: Path, recs: list[dict]) -> Path:
    store = tmp_path / "store"
    for r in recs:
        write_record(store, r)
    return store


# ------------------------------------------------------------------------------------------ statistics


def test_paired_test_matches_scipy_and_pairs_by_seed():
    from scipy.stats import ttest_rel

    base = {0: 0.10, 1: 0.12, 2: 0.11, 3: 0.13}
    other = {3: 0.125, 1: 0.113, 0: 0.092, 2: 0.104, 7: 0.5}  # seed 7 has no partner and is ignored
    n, p = lb.paired_test(base, other)
    assert n == 4
    assert p == pytest.approx(ttest_rel([0.092, 0.113, 0.104, 0.125], [0.10, 0.12, 0.11, 0.13]).pvalue)
    assert lb.paired_test({0: 0.1}, {0: 0.2}) == (1, None)  # n < 2 -> n/a
    assert lb.paired_test({0: 0.1, 1: 0.2}, {0: 0.2, 1: 0.3}) == (2, None)  # identical differences


def test_cell_text_mean_std_relative_change():
    cell = lb.cell_text({0: 0.09, 1: 0.11}, {0: 0.1, 1: 0.12})
    m, s = 0.1, math.sqrt(((0.09 - 0.1) ** 2 + (0.11 - 0.1) ** 2) / 1)
    assert cell.startswith(f"{lb.fmt(m)} ± {lb.fmt(s)} (2), ")
    assert "-9.1%" in cell  # (0.10 - 0.11) / 0.11
    assert lb.cell_text({0: 0.2}, None) == "0.2 ± n/a (1)"


# ------------------------------------------------------------------------------------------ grouping


def test_versions_and_protocols_are_never_mixed():
    recs = [make_record(seed=s, test_mae=0.1 + s / 100) for s in range(2)]
    recs += [make_record(seed=s, test_mae=0.2, encoder_version="2") for s in range(2)]
    recs += [make_record(label="t", seed=s, test_mae=0.3, table_hash=h, featurizer="embedding:/x.json")
             for s in range(2) for h in ("b" * 64, "c" * 64)]
    recs += [make_record(seed=0, test_mae=0.4, n_test=9)]
    page = lb.render(recs)["dft_3d_formation_energy_peratom.md"]
    assert page.count("## Protocol") == 2
    assert "cgcnn (v1, options" in page and "cgcnn (v2, options" in page
    assert "table bbbbbbbb" in page and "table cccccccc" in page
    assert "0.4 ± n/a (1)" in page  # the n_test=9 run sits alone in its own section


def test_duplicate_seed_under_identical_display_settings_is_an_error():
    a = make_record(seed=0, test_mae=0.1)
    b = make_record(seed=0, test_mae=0.2, settings={"lr": 0.001})
    b["identity"]["extra"] = 1
    b["run_id"] = run_id(b["identity"])
    with pytest.raises(lb.LeaderboardError, match="seed 0"):
        lb.render([a, b])


def test_other_schema_version_is_refused(tmp_path):
    store = _store(tmp_path, [make_record()])
    p = next((store / "records").glob("*.json"))
    rec = json.loads(p.read_text())
    rec["schema_version"] = SCHEMA_VERSION + 1
    p.write_text(json.dumps(rec))
    with pytest.raises(RecordError, match="schema_version"):
        lb.write_leaderboard(store, tmp_path / "out")


# ------------------------------------------------------------------------------------------ files


def test_golden_rendering_byte_for_byte():
    store = GOLDEN / "store"
    pages = lb.render(lb.load(store))
    expected_dir = GOLDEN / "leaderboard"
    if os.environ.get("CRYSBENCH_REGEN_GOLDEN") == "1":  # regenerate consciously, then review the diff
        shutil.rmtree(expected_dir, ignore_errors=True)
        lb.write_leaderboard(store, expected_dir, plots=False)
    assert sorted(p.name for p in expected_dir.glob("*.md")) == sorted(pages)
    for name, text in pages.items():
        assert (expected_dir / name).read_text() == text, f"{name} differs from the golden file"


def test_golden_records_are_the_documented_fixture():
    """tests/golden/store holds exactly golden_records() (so the fixture can be rebuilt and reviewed)."""
    stored = sorted(json.loads(p.read_text())["run_id"] for p in (GOLDEN / "store" / "records").glob("*.json"))
    assert stored == sorted(r["run_id"] for r in golden_records())


def test_write_is_deterministic_and_check_detects_drift(tmp_path):
    store = _store(tmp_path, golden_records())
    out1, out2 = tmp_path / "a", tmp_path / "b"
    lb.write_leaderboard(store, out1)
    lb.write_leaderboard(store, out2)
    files = sorted(p.name for p in out1.iterdir())
    assert any(f.endswith(".png") for f in files) and "README.md" in files
    for f in files:
        assert (out1 / f).read_bytes() == (out2 / f).read_bytes(), f
    assert lb.check_leaderboard(store, out1) == []
    # a new record changes what the records produce: --check must notice
    write_record(store, make_record(seed=5, test_mae=0.3))
    assert any("differs" in p for p in lb.check_leaderboard(store, out1))
    # and via the command line: exit 1, then 0 after a rebuild
    from bench.cli import main

    assert main(["leaderboard", "--store", str(store), "--out", str(out1), "--check"]) == 1
    assert main(["leaderboard", "--store", str(store), "--out", str(out1)]) == 0
    assert main(["leaderboard", "--store", str(store), "--out", str(out1), "--check"]) == 0
    # a hand edit is drift too
    readme = out1 / "README.md"
    readme.write_text(readme.read_text() + "edited\n")
    assert main(["leaderboard", "--store", str(store), "--out", str(out1), "--check"]) == 1


def test_check_defaults_to_the_leaderboard_bench_run_writes(tmp_path, monkeypatch, capsys):
    """`bench run --store S` writes S/leaderboard; `bench leaderboard --store S [--check]` must use the same
    directory, never ./leaderboard (in a checkout, the repository's committed leaderboard)."""
    from bench.cli import main

    store = _store(tmp_path, golden_records()[:4])
    monkeypatch.chdir(tmp_path)
    assert main(["leaderboard", "--store", str(store), "--no-plots"]) == 0
    assert (store / "leaderboard" / "README.md").is_file() and not (tmp_path / "leaderboard").exists()
    assert main(["leaderboard", "--store", str(store), "--check"]) == 0
    write_record(store, make_record(seed=5, test_mae=0.3))
    capsys.readouterr()
    assert main(["leaderboard", "--store", str(store), "--check"]) == 1
    # the suggested fix names the store's own leaderboard
    assert f"--out {store / 'leaderboard'}`" in capsys.readouterr().err
    assert not (tmp_path / "leaderboard").exists()
    # what `bench run --store S` writes (its sweep stubbed out) is what `--check` then finds up to date
    from bench import sweep

    shutil.rmtree(store / "leaderboard")
    monkeypatch.setattr(sweep, "run_sweep", lambda plan: sweep.SweepResult(0, 5, [], []))
    assert main(["run", "--encoder", "cgcnn", "--store", str(store)]) == 0
    assert main(["leaderboard", "--store", str(store), "--check"]) == 0
    assert not (tmp_path / "leaderboard").exists()


def test_missing_store_is_a_clear_error(tmp_path, capsys):
    from bench.cli import main

    assert main(["leaderboard", "--store", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "no records/ directory" in capsys.readouterr().err


def test_records_of_different_code_or_task_versions_are_never_averaged():
    """A run_code/graph_code/task version bump changes the numbers of an otherwise identical run: its records
    get their own section, never pooled with the old ones (disjoint seeds) or refused as duplicates (same seed)."""
    def rec(seed, mae, **versions):
        r = make_record(seed=seed, test_mae=mae)
        r["identity"].update({"task_version": "1", "graph_code_version": "1", "run_code_version": "1", **versions})
        r["run_id"] = run_id(r["identity"])
        return r

    old = [rec(s, 0.1) for s in range(2)]
    for bump in ({"run_code_version": "2"}, {"graph_code_version": "2"}, {"task_version": "2"}):
        new = [rec(s, 0.3, **bump) for s in range(3)]  # same seeds 0, 1 and a new seed 2
        page = lb.render(old + new)["dft_3d_formation_energy_peratom.md"]
        assert page.count("## Protocol") == 2, bump
        assert "0.1 ± 0 (2)" in page and "0.3 ± 0 (3)" in page, bump
        index = lb.render(old + new)["README.md"]  # the index counts each version's runs on its own row
        proto = index.split("## Protocol")[1].split("## Components")[0]
        rows = [line for line in proto.splitlines() if line.startswith("| dft_3d")]
        assert len(rows) == 2 and rows[0].rstrip(" |").endswith("2") and rows[1].rstrip(" |").endswith("3"), bump


def test_rebuild_removes_stale_plots_but_never_other_pngs(tmp_path):
    """--out may be a folder with the user's own figures: only PNGs of generated pages are cleaned up."""
    store = _store(tmp_path, [make_record(seed=s, test_mae=0.1 + s / 100) for s in range(2)])
    out = tmp_path / "out"
    out.mkdir()
    (out / "figure.png").write_bytes(b"\x89PNG mine")
    (out / "results_1.png").write_bytes(b"\x89PNG mine too")  # looks generated, but no generated page owns it
    (out / "old_task.md").write_text(lb.HEADER + "# old_task\n")  # a stale generated page and its plot
    (out / "old_task_1.png").write_bytes(b"\x89PNG stale")
    lb.write_leaderboard(store, out)
    names = {p.name for p in out.iterdir()}
    assert {"figure.png", "results_1.png", "dft_3d_formation_energy_peratom_1.png"} <= names
    assert not {"old_task.md", "old_task_1.png"} & names


def test_symmetry_reduce_does_not_split_a_protocol():
    """Records written before the setting existed, with it on, and with it off are one protocol (it changes float
    rounding only): their seeds pool in one section; any other setting still separates."""
    recs = [make_record(seed=0, test_mae=0.1, settings={"lr": 0.001}),
            make_record(seed=1, test_mae=0.2, settings={"lr": 0.001, "symmetry_reduce": True}),
            make_record(seed=2, test_mae=0.3, settings={"lr": 0.001, "symmetry_reduce": False})]
    page = lb.render(recs)["dft_3d_formation_energy_peratom.md"]
    assert page.count("## Protocol") == 1 and "0.2 ± 0.1 (3)" in page
    page = lb.render(recs + [make_record(seed=0, test_mae=0.5, settings={"lr": 0.01})])[
        "dft_3d_formation_energy_peratom.md"]
    assert page.count("## Protocol") == 2
