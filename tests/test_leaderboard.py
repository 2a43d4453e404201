"""The leaderboard renderer: statistics, grouping that never mixes versions or protocols, determinism, the
golden rendering of fixed records (byte for byte) and `bench leaderboard --check`."""

from __future__ import annotations

import json
import math
import os
import re
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
    cell = lb.cell_text({0: 0.09, 1: 0.11}, {0: 0.1, 1: 0.12}, 4)
    m, s = 0.1, math.sqrt(((0.09 - 0.1) ** 2 + (0.11 - 0.1) ** 2) / 1)
    assert cell.startswith(f"{lb.fmt(m, 4)} ± {lb.fmt(s, 4)} (2), ") and cell.startswith("0.1000 ± 0.0141 (2), ")
    assert "-9.1%" in cell  # (0.10 - 0.11) / 0.11
    assert lb.cell_text({0: 0.2}, None, 3) == "0.200 ± n/a (1)"


def test_decimals_give_the_typical_mae_three_significant_digits():
    assert lb.decimals_for([0.0625]) == 4 and lb.decimals_for([0.231, 0.509, 0.453]) == 3
    assert lb.decimals_for([12.5, 15.1, 40.0]) == 1 and lb.decimals_for([150.0]) == 0
    assert lb.decimals_for([0.09996]) == 3  # rounds to 0.100 first
    assert lb.decimals_for([0.001, 0.2, 0.3]) == 3  # the median decides, not the smallest cell
    assert lb.fmt(3.609e-06, 4) == "0.0000" and lb.fmt(1234.4, 0) == "1234"  # never exponent notation


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
    assert "0.400 ± n/a (1)" in page  # the n_test=9 run sits alone in its own section


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
        assert "0.100 ± 0.000 (2)" in page and "0.300 ± 0.000 (3)" in page, bump
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
    assert page.count("## Protocol") == 1 and "0.200 ± 0.100 (3)" in page
    page = lb.render(recs + [make_record(seed=0, test_mae=0.5, settings={"lr": 0.01})])[
        "dft_3d_formation_energy_peratom.md"]
    assert page.count("## Protocol") == 2


# ------------------------------------------------------------------------------------------ pages: format, ranks

_MEAN_STD = re.compile(r"(\S+) ± (\S+) \(\d+\)")


def _decimals_of(page: str) -> set[int]:
    """Decimal places of every mean and std printed on a page (an exponent counts as a format of its own)."""
    out = set()
    for pair in _MEAN_STD.findall(page):
        for x in pair:
            if x != "n/a":
                out.add(-1 if "e" in x else len(x.partition(".")[2]))
    return out


def test_every_mean_and_std_of_a_task_has_the_same_decimals():
    """The issue's example: `0.8374 ± 3.609e-06` beside `0.8005 ± 0.05951` on one page. The per-task format
    prints both with the decimals that give the typical mean 3 significant digits, never in exponent notation."""
    recs = [make_record(seed=s, test_mae=0.8374 + d) for s, d in enumerate((0.0, 3.6e-6, 1.8e-6))]
    recs += [make_record(label="mine", seed=s, test_mae=v) for s, v in enumerate((0.75, 0.80, 0.85))]
    recs += [make_record(label="mine", fraction=0.1, seed=s, test_mae=v) for s, v in enumerate((1.2, 1.3))]
    recs += [make_record(task="dft_3d_bulk_modulus_kv", unit="GPa", seed=s, test_mae=v)
             for s, v in enumerate((14.2, 15.33, 16.01))]
    pages = lb.render(recs)
    fe = pages["dft_3d_formation_energy_peratom.md"]
    assert _decimals_of(fe) == {3}, fe
    assert "0.837 ± 0.000 (3)" in fe and "0.800 ± 0.050 (3)" in fe and "1.250 ± 0.071 (2)" in fe
    assert _decimals_of(pages["dft_3d_bulk_modulus_kv.md"]) == {1}
    assert "15.2 ± 0.9 (3)" in pages["dft_3d_bulk_modulus_kv.md"]
    # the golden pages too: one format per task, percentages with one decimal
    for name, page in lb.render(golden_records()).items():
        if name not in ("README.md", "SUMMARY.md"):
            assert len(_decimals_of(page)) == 1, name
            assert all(len(p.partition(".")[2]) == 1 for p in re.findall(r"[+-]\d+\.\d+(?=%)", page)), name


def _row(page: str, featurizer: str) -> list[str]:
    line = next(ln for ln in page.splitlines() if ln.startswith(f"| {featurizer} "))
    return [c.strip() for c in line.strip("|").split("|")]


def test_rows_are_featurizers_columns_fractions_with_ranks():
    means = {"onehot": (0.30, 0.10), "a": (0.25, 0.12), "b": (0.40, 0.10), "c": (0.25, 0.09)}
    recs = [make_record(label=lab, fraction=f, seed=s, test_mae=m + (0.001 if s else -0.001) * (1 + (lab == "a")))
            for lab, ms in means.items() for f, m in zip((0.1, 1.0), ms) for s in range(2)]
    page = lb.render(recs)["dft_3d_formation_energy_peratom.md"]
    header = next(ln for ln in page.splitlines() if ln.startswith("| featurizer"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "featurizer", "fraction 0.1 [eV/atom]", "fraction 1 [eV/atom]"]
    rows = [ln.split("|")[1].strip() for ln in page.splitlines() if ln.startswith("| ") and "±" in ln]
    assert rows == ["onehot", "a", "b", "c"]  # one-hot first, then by name
    # equal means share the better rank (competition ranking); 1 = lowest mean MAE
    assert [_row(page, f)[1].rsplit("rank ", 1)[1] for f in rows] == ["3", "1", "4", "1"]
    assert [_row(page, f)[2].rsplit("rank ", 1)[1] for f in rows] == ["2", "4", "2", "1"]
    assert _row(page, "onehot")[1] == "0.300 ± 0.001 (2), rank 3"
    assert _row(page, "b")[1].startswith("0.400 ± 0.001 (2), +33.3%, p n/a")  # identical differences: no test


def test_one_table_per_encoder_and_one_line_per_featurizer_in_the_plot():
    recs = [make_record(encoder=e, label=lab, fraction=f, seed=s, test_mae=0.1 + s / 100 + (lab == "x") / 50)
            for e in ("alignn", "cgcnn") for lab in ("onehot", "x") for f in (0.1, 1.0) for s in range(2)]
    page = lb.render(recs)["dft_3d_formation_energy_peratom.md"]
    assert page.count("### Encoder alignn") == 1 and page.count("### Encoder cgcnn") == 1
    figs = lb._plots(recs)
    try:
        ax = figs["dft_3d_formation_energy_peratom_1.png"].axes[0]
        assert ax.get_xscale() == "log"
        assert ax.get_legend_handles_labels()[1] == ["alignn / onehot", "alignn / x", "cgcnn / onehot", "cgcnn / x"]
    finally:
        import matplotlib.pyplot as plt

        for f in figs.values():
            plt.close(f)


# ------------------------------------------------------------------------------------------ summary page

_BASE = (0.100, 0.110, 0.105)
_NOISE = (0.0002, -0.0003, 0.0001)  # sums to 0: the mean change is exactly the scale factor


def summary_records() -> list[dict]:
    """Known effects on two tasks x two fractions: `good` is 10 % better (significant) except on the band gap at
    fraction 1 (no change), `bad` 20 % worse (significant), `same` unchanged on average (p = 1)."""
    recs = []
    for task, unit in (("dft_3d_formation_energy_peratom", "eV/atom"), ("dft_3d_mbj_bandgap", "eV")):
        for frac, scale in ((0.1, 3.0), (1.0, 1.0)):
            for s, b in enumerate(_BASE):
                b *= scale
                good = 0.9 if (task, frac) != ("dft_3d_mbj_bandgap", 1.0) else 1.0
                for lab, v in (("onehot", b), ("good", good * b + _NOISE[s]), ("bad", 1.2 * b + _NOISE[s]),
                               ("same", b + (0.01, -0.01, 0.0)[s])):
                    recs.append(make_record(task=task, unit=unit, label=lab, fraction=frac, seed=s, test_mae=v))
    return recs


def test_summary_marks_significance_and_reads_only_the_numbers():
    page = lb.render(summary_records())["SUMMARY.md"]
    assert "![% change of the mean test MAE against onehot](SUMMARY_1.png)" in page
    header = next(ln for ln in page.splitlines() if ln.startswith("| featurizer"))
    assert [c.strip() for c in header.strip("|").split("|")][1:] == [
        "dft_3d_formation_energy_peratom, 0.1", "dft_3d_formation_energy_peratom, 1",
        "dft_3d_mbj_bandgap, 0.1", "dft_3d_mbj_bandgap, 1"]
    assert _row(page, "onehot: test MAE")[1:] == ["0.315 eV/atom", "0.105 eV/atom", "0.315 eV", "0.105 eV"]
    assert _row(page, "good")[1:] == ["-10.0%*", "-10.0%*", "-10.0%*", "+0.0%"]
    assert _row(page, "bad")[1:] == ["+20.0%*"] * 4
    assert _row(page, "same")[1:] == ["+0.0%"] * 4
    reading = page.split("### Reading")[1]
    assert ("- 12 (featurizer, task, fraction) cells over 4 (task, fraction) columns: 3 significantly better than "
            "onehot") in reading and "4 significantly worse, 5 without a significant difference." in reading
    assert "with 12 tests at p < 0.05, about 0.6 would come out significant by chance" in reading
    assert _row(reading, "good")[1:4] == ["3 of 4", "0", "0"]
    assert _row(reading, "good")[4].startswith("-10.0% (dft_3d_formation_energy_peratom, 0.1; p=")
    assert _row(reading, "bad")[1:] == ["0 of 4", "4", "0", "none (mean never below onehot's)"]
    assert "- dft_3d_mbj_bandgap at fraction 1: no featurizer is significantly better than onehot; " \
           "significantly worse: bad (+20.0%, p" in reading
    assert "- dft_3d_formation_energy_peratom at fraction 1: significantly better than onehot: good (-10.0%, p" \
        in reading


def test_summary_heatmap_is_written_and_rendering_is_deterministic(tmp_path):
    recs = summary_records()
    assert lb.render(recs) == lb.render(list(reversed(recs)))  # record order never matters
    store = _store(tmp_path, recs)
    a, b = tmp_path / "a", tmp_path / "b"
    lb.write_leaderboard(store, a)
    lb.write_leaderboard(store, b)
    assert (a / "SUMMARY_1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    for p in a.iterdir():
        assert p.read_bytes() == (b / p.name).read_bytes(), p.name
    assert "(SUMMARY.md)" in (a / "README.md").read_text()  # linked from the index
    assert lb.check_leaderboard(store, a) == []


def test_summary_of_no_records():
    page = lb.render([])["SUMMARY.md"]
    assert page.startswith(lb.HEADER) and "(no completed runs)" in page


# ------------------------------------------------------------------------------------------ reference anchor


def _full(r: dict, limits: dict | None = None) -> dict:
    r = dict(r, dataset_key="dft_3d_2021-8577236-0b8e8b15777e", limits=limits or
             {"train": None, "val": None, "test": None})
    return r


def test_reference_anchor_only_for_full_official_runs():
    refs = {("dft_3d_formation_energy_peratom", "cgcnn"): lb.Reference(0.0625, "JARVIS-Leaderboard cgcnn_model",
                                                                       "cgcnn", "eV/atom")}
    recs = [_full(make_record(label=lab, fraction=f, seed=s, test_mae=m + s / 1000))
            for lab, m in (("onehot", 0.09), ("cgcnn", 0.08)) for f in (0.1, 1.0) for s in range(3)]
    page = lb.render(recs, refs)["dft_3d_formation_energy_peratom.md"]
    line = next(ln for ln in page.splitlines() if ln.startswith("Reference anchor"))
    assert line == ("Reference anchor: published cgcnn (JARVIS-Leaderboard cgcnn_model): 0.0625 eV/atom; ours "
                    "(cgcnn, cgcnn, fraction 1): 0.0810 ± 0.0010 eV/atom over 3 seed(s), ratio 1.30 (ours / "
                    "published).")
    assert "Reference anchor" not in lb.render(recs)["dft_3d_formation_energy_peratom.md"]  # no references given
    limited = [_full(r, {"train": None, "val": 500, "test": 1000}) for r in recs]
    assert "Reference anchor" not in lb.render(limited, refs)["dft_3d_formation_energy_peratom.md"]
    sample = [dict(r, dataset_key="dft_3d_2021-sample-1-abc") for r in recs]
    assert "Reference anchor" not in lb.render(sample, refs)["dft_3d_formation_energy_peratom.md"]
    no_bits = [r for r in recs if r["features_label"] != "cgcnn" or r["fraction"] != 1.0]
    assert "Reference anchor" not in lb.render(no_bits, refs)["dft_3d_formation_energy_peratom.md"]


def test_package_reference_csv():
    refs = lb.load_references()
    assert refs[("dft_3d_formation_energy_peratom", "cgcnn")][:1] == (0.0625,)
    assert refs[("dft_3d_mbj_bandgap", "cgcnn")].unit == "eV"
    assert all(r.featurizer == "cgcnn" and "57afc55f" in r.source for r in refs.values())
