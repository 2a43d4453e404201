"""Published element embeddings (``published:<name>``, read from the elementembeddings package's data files).

Every table loads with its documented width and coverage; the vectors match elementembeddings' own API (a
reference written by scripts/make_published_reference.py with the full package) and the raw files read
independently with pandas; the policy (standardisation, untrained rows, fallback counted over the task's
elements) is applied and is part of the run identity, while the run ids of existing featurizers do not change;
the tables list, report, export and train like any featurizer.
"""

from __future__ import annotations

import json
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import published
from bench.featurizers import CoverageWarning, FeaturizerError, build_featurizer
from bench.published import CATALOGUE, PublishedError
from bench.structures import ELEMENTS, Z_OF

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]
REFERENCE = json.loads((FIXTURES / "published_reference.json").read_text())
NAMES = list(CATALOGUE)

pytestmark = pytest.mark.skipif(published.package_version() is None,
                                reason=f"elementembeddings is not installed ({published.INSTALL_HINT})")


def test_the_catalogue_covers_what_the_issue_and_the_package_list():
    assert set(NAMES) == {"magpie", "magpie_sc", "oliynyk", "oliynyk_sc", "xenonpy", "megnet16", "mat2vec",
                          "matscholar", "skipatom", "random_200", "cgnf", "crystallm", "mace_mp0", "sevennet",
                          "orb_v2", "chgnet", "matscibert", "chemeleon"}
    assert set(REFERENCE["tables"]) == set(NAMES) and REFERENCE["package_version"] == published.PACKAGE_VERSION
    assert {n for n, t in CATALOGUE.items() if t.standardise} == {"magpie", "oliynyk", "xenonpy"}


@pytest.mark.parametrize("name", NAMES)
def test_every_table_loads_with_its_documented_width_and_coverage(name):
    doc = CATALOGUE[name]
    t = published.load(name)
    assert t.dim == doc.width and len(t.vectors) == doc.elements
    assert tuple(published.missing_z_le_94(t.vectors)) == doc.missing_z_le_94
    assert list(t.vectors) == sorted(t.vectors, key=Z_OF.get)  # Z order
    assert t.meta["file"].endswith(doc.file) and t.meta["policy"] == published.policy(doc)
    assert len(t.hash) == 64 and t.hash == published.load(name).hash  # deterministic
    for s in doc.untrained:
        assert s not in t.vectors


def test_measured_widths_and_missing_elements():
    measured = {n: (CATALOGUE[n].width, len(CATALOGUE[n].missing_z_le_94)) for n in NAMES}
    assert measured == {
        "magpie": (22, 0), "magpie_sc": (22, 0), "oliynyk": (44, 9), "oliynyk_sc": (44, 9), "xenonpy": (58, 0),
        "megnet16": (16, 5), "mat2vec": (200, 0), "matscholar": (200, 0), "skipatom": (200, 8),
        "random_200": (200, 0), "cgnf": (90, 0), "crystallm": (512, 5), "mace_mp0": (128, 7),
        "sevennet": (128, 7), "orb_v2": (256, 7), "chgnet": (64, 7), "matscibert": (768, 0), "chemeleon": (512, 7)}


@pytest.mark.parametrize("name", NAMES)
def test_vectors_match_the_package_api(name):
    """Against Embedding.load_data(name) (.standardise() for the standardised tables), element by element."""
    ref = REFERENCE["tables"][name]
    t = published.load(name)
    assert ref["dim"] == t.dim
    expected = [k for k in ref["keys"] if k in Z_OF and k not in CATALOGUE[name].untrained]
    assert sorted(expected, key=Z_OF.get) == list(t.vectors)
    direction = np.random.default_rng([7, t.dim]).standard_normal(t.dim)
    for s, v in t.vectors.items():
        # CSV numbers parsed by pandas may differ from Python's float() in the last bit
        assert v.sum() == pytest.approx(ref["sum"][s], rel=1e-12, abs=1e-12), s
        assert v @ direction == pytest.approx(ref["projection"][s], rel=1e-12, abs=1e-12), s
    assert np.allclose(t.vectors["Fe"][:8], ref["Fe_first8"], rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("name", ["magpie", "oliynyk", "xenonpy", "megnet16", "skipatom", "random_200"])
def test_vectors_match_the_raw_files_read_independently(name):
    import pandas as pd

    doc = CATALOGUE[name]
    path = published.data_path(doc)
    if path.suffix == ".csv":
        df = pd.read_csv(path, float_precision="round_trip").drop_duplicates("element", keep="last")
        raw = {r["element"]: r.drop("element").to_numpy(dtype=float) for _, r in df.iterrows()}
    else:
        raw = {k: np.asarray(v, dtype=float) for k, v in json.loads(path.read_text()).items()}
    raw = {k: v for k, v in raw.items() if k in Z_OF and k not in doc.untrained}
    if doc.standardise:
        m = np.stack(list(raw.values()))
        m = (m - m.mean(0)) / m.std(0)  # population std, as StandardScaler
        raw = dict(zip(raw, m))
    t = published.load(name)
    assert set(raw) == set(t.vectors)
    for s in raw:
        assert np.allclose(t.vectors[s], raw[s], rtol=1e-12, atol=1e-12), s


@pytest.mark.parametrize("name", ["magpie", "oliynyk", "xenonpy"])
def test_descriptor_tables_are_standardised_per_column(name):
    m = np.stack(list(published.load(name).vectors.values()))
    assert np.allclose(m.mean(0), 0, atol=1e-12) and np.allclose(m.std(0), 1, atol=1e-12)


def test_standardise_is_exact_and_leaves_constant_columns_centred():
    vecs = {"H": np.array([1.0, 5.0]), "He": np.array([3.0, 5.0]), "Li": np.array([8.0, 5.0])}
    out = published.standardise(vecs)
    col = np.array([1.0, 3.0, 8.0])
    assert np.allclose([out[s][0] for s in vecs], (col - col.mean()) / col.std())
    assert [out[s][1] for s in vecs] == [0.0, 0.0, 0.0]


def test_the_package_modules_are_never_imported():
    import sys

    published.load("mat2vec")
    build_featurizer("published:magpie")
    assert not any(m == "elementembeddings" or m.startswith("elementembeddings.") for m in sys.modules)


def test_featurizer_matches_the_table_and_is_frozen_with_fallback_rows():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # building announces nothing; the runner counts over the task
        f = build_featurizer("published:megnet16")
    t = published.load("megnet16")
    Z = torch.tensor([1, 8, 26, 84, 92])  # H O Fe Po U; Po's row is untrained in megnet16: a fallback
    x = f(Z).detach().numpy()
    for i, z in enumerate([1, 8, 26, 92]):
        assert np.allclose(x[[0, 1, 2, 4][i]], t.vectors[ELEMENTS[z]].astype(np.float32))
    assert f.dim == 16 and f.table_hash == t.hash and f.policy == t.meta["policy"]
    assert "Po" in f.coverage["missing"] and not f.covered(84) and f.covered(26)
    assert [n for n, p in f.named_parameters()] == ["fallback"]  # only fallback rows train
    assert f.fallback.shape[0] == 118 - 89
    with pytest.raises(FeaturizerError, match="has width 16"):
        build_featurizer("published:megnet16", dim=32)


def test_names_and_a_missing_package_give_clear_errors(monkeypatch):
    from bench.registry import RegistryError

    with pytest.raises(PublishedError, match="Did you mean 'mat2vec'"):
        build_featurizer("published:mat2vek")
    with pytest.raises(PublishedError, match="needs a table name: published:<name>, one of magpie"):
        build_featurizer("published")
    with pytest.raises(RegistryError, match="Did you mean 'published'"):
        build_featurizer("publishd:mat2vec")

    def absent(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(published.metadata, "distribution", absent)
    with pytest.raises(PublishedError, match=r"need the elementembeddings package .*pip install --no-deps "
                                             r"--ignore-requires-python 'elementembeddings==0\.8\.0'"):
        build_featurizer("published:mat2vec")


def test_bench_list_featurizers_shows_every_table_with_provenance(capsys):
    from bench.cli import main

    assert main(["list", "featurizers", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    for name, doc in CATALOGUE.items():
        r = rows[f"published:{name}"]
        assert (r["width"], r["elements"], r["missing_z_le_94"]) == (doc.width, doc.elements,
                                                                      list(doc.missing_z_le_94))
        assert r["paper"] and doc.file in r["origin"] and r["licence"].startswith("MIT")
    assert "GPL-3.0" in rows["published:megnet16"]["licence"] and "LGPL-3.0" in rows["published:matscholar"]["licence"]
    assert rows["crysatom-published"]["width"] == 200 and rows["crysatom-published"]["elements"] == 89
    assert "GPL-3.0" in rows["crysatom-published"]["licence"]
    assert rows["cgcnn"]["width"] == 92 and rows["cgcnn"]["missing_z_le_94"] == [] and "Xie" in rows["cgcnn"]["paper"]
    assert rows["onehot"]["width"] == 118
    assert main(["list", "featurizers", "published:m*"]) == 0
    out = capsys.readouterr().out
    assert "published:mat2vec" in out and "published:magpie" in out and "onehot" not in out


def test_embed_report_side_by_side_and_export(tmp_path, capsys):
    from bench.cli import main

    assert main(["embed", "report", "published:mat2vec", "published:skipatom", "published:random_200",
                 "--out", str(tmp_path / "cmp")]) == 0
    rep = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    rows = {r["table"]: r for r in rep["tables"]}
    assert rows["published:skipatom"]["missing_z_1_to_94"] == list(CATALOGUE["skipatom"].missing_z_le_94)
    assert len(rep["common_elements"]) == 86  # skipatom's elements: mat2vec and random_200 cover all of them
    # chemistry shows: mat2vec and SkipAtom far above chance, the random control near it
    for name in ("published:mat2vec", "published:skipatom"):
        ga = rows[name]["group_agreement_common"]["k1"]
        assert ga["fraction"] > 5 * ga["chance"]
    assert rows["published:random_200"]["group_agreement_common"]["k1"]["fraction"] < 0.15
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| published:skipatom | 200 | 86 | He Ne Ar Po At Rn Fr Ra |" in (tmp_path / "cmp" / "compare.md").read_text()
    capsys.readouterr()
    assert main(["embed", "export", "published:magpie", "--format", "atom_init", "--out", str(tmp_path / "a.json")]) == 0
    exported = json.loads((tmp_path / "a.json").read_text())
    assert len(exported) == 97 and np.allclose(exported["26"], published.load("magpie").vectors["Fe"])
    capsys.readouterr()
    assert main(["embed", "report", "published:chgnet", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dim"] == 64


# ---- runs: identity, the task's coverage, a short training ---------------------------------------------------

BASE = {
    "task": "dft_3d_formation_energy_peratom", "encoder": "cgcnn", "data_dir": "sample", "epochs": 2,
    "train_limit": 40, "val_limit": 16, "test_limit": 16, "device": "cpu", "seed": 0,
    "encoder_options": {"hidden": 16, "layers": 1, "fc_hidden": 16},
    "train_options": {"batch_size": 16, "optimizer": "adam", "scheduler": "none", "lr": 0.01},
}


def test_short_training_run_with_a_published_table_records_its_policy(tmp_path):
    from bench.runner import run_one

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        rec = run_one(dict(BASE, features="published:megnet16", store=str(tmp_path)))
    ident = rec["identity"]
    assert rec["status"] == "ok" and np.isfinite(rec["test_mae"]) and rec["epochs_run"] == 2
    assert rec["featurizer"] == "published:megnet16" and ident["featurizer"] == "published"
    assert ident["table_hash"] == published.load("megnet16").hash and ident["featurizer_dim"] == 16
    assert ident["featurizer_policy"] == published.policy(CATALOGUE["megnet16"])
    cov = rec["featurizer_coverage"]
    assert cov["present"] + len(cov["missing"]) == cov["task_elements"] < 118
    coverage_warnings = [w for w in seen if issubclass(w.category, CoverageWarning)]
    assert len(coverage_warnings) == (1 if cov["missing"] else 0)  # once per run, not once per build


def test_policy_and_table_are_part_of_the_identity_and_a_table_covering_nothing_is_refused(tmp_path):
    from bench.runner import run_id

    ids = {spec: run_id(dict(BASE, features=spec)) for spec in
           ("published:magpie", "published:magpie_sc", "published:mat2vec", "onehot")}
    assert len(set(ids.values())) == 4
    noble = tmp_path / "noble.json"
    noble.write_text(json.dumps({"He": [1.0, 0.0], "Ne": [0.0, 1.0]}))
    with pytest.raises(FeaturizerError, match=r"featurizer 'embedding:.*noble\.json' covers none of the \d+ "
                                              r"elements of task 'dft_3d_formation_energy_peratom'"):
        run_id(dict(BASE, features=f"embedding:{noble}"))


COMMITTED = REPO / "leaderboard" / "quick-cpu" / "records"


@pytest.mark.parametrize("featurizer", ["onehot", "cgcnn", "random", "crysatom-published"])
def test_committed_records_keep_their_run_ids(featurizer):
    """The identity of the existing featurizers (no policy field; same table hashes) is unchanged, computed
    without loading the task's data (the records' dataset key stands in)."""
    from bench import records, runner
    from bench.plugins import load_builtins

    load_builtins()
    recs = [json.loads(p.read_text()) for p in sorted(COMMITTED.glob("*.json"))]
    rec = next(r for r in recs if r["identity"]["featurizer"].partition(":")[0] == featurizer)
    ident = rec["identity"]
    settings = dict(ident["train_settings"])
    for k, v in records.SETTINGS_ADDED_AT_DEFAULT.items():  # settings added later ran at their neutral default
        settings.setdefault(k, v)
    cfg = runner.parse_config({
        "task": rec["task"], "encoder": rec["encoder"], "features": rec["featurizer"], "fraction": rec["fraction"],
        "seed": rec["seed"], "epochs": settings.pop("epochs"), "encoder_options": ident["encoder_options"],
        "train_options": settings, "train_limit": ident["limits"]["train"], "val_limit": ident["limits"]["val"],
        "test_limit": ident["limits"]["test"], "device": "cpu"})
    assert runner.identity(runner.prepare(cfg), rec["dataset_key"]) == ident
    assert records.run_id(ident) == rec["run_id"]


# ---- suites choose their featurizers -----------------------------------------------------------------------


def test_suites_choose_their_featurizers(tmp_path):
    from bench import sweep
    from bench.cli import build_parser
    from bench.commands.run import build_plan
    from bench.plugins import load_builtins

    load_builtins()
    assert sweep.load_suite("smoke").featurizers == ("onehot",)
    base = ["run", "--encoder", "cgcnn", "--store", str(tmp_path)]
    # default: one-hot plus the controls, as before
    plan = build_plan(build_parser().parse_args(base + ["--controls"]))
    assert [c["features"] for c in sweep.featurizer_columns({}, plan.controls, None, plan.suite.featurizers)] == [
        "onehot", "random", "crysatom-published", "cgcnn"]
    plan = build_plan(build_parser().parse_args(base + ["--features", "onehot,published:mat2vec,cgcnn", "--controls"]))
    cfgs = sweep.trial_configs(plan, {"crysatom": tmp_path / "t.json"}, 64)
    order = list(dict.fromkeys(c["features"] for c in cfgs))
    assert order == ["onehot", "published:mat2vec", "cgcnn", f"embedding:{(tmp_path / 't.json').resolve()}",
                     "random:0:64", "crysatom-published"]  # cgcnn once
    assert len(cfgs) == 6 * len(plan.suite.fractions) * len(plan.suite.seeds)
    suite_file = tmp_path / "mine.yaml"
    suite_file.write_text("tasks: [dft_3d_formation_energy_peratom]\nfractions: [1.0]\nseeds: [0]\n"
                          "featurizers: [onehot, published:skipatom, published:magpie]\n")
    s = sweep.load_suite(str(suite_file))
    assert s.featurizers == ("onehot", "published:skipatom", "published:magpie")
    for bad, message in [("published:skipatm", "Did you mean 'skipatom'"), ("onehott", "Did you mean 'onehot'"),
                         ("embedding:/no/such.json", "does not exist")]:
        with pytest.raises(Exception, match=message):
            build_plan(build_parser().parse_args(base + ["--features", bad]))
    with pytest.raises(sweep.SweepError, match="repeated"):
        sweep.override(s, featurizers=("onehot", "onehot"))
    with pytest.raises(sweep.SweepError, match="--features is empty"):
        build_plan(build_parser().parse_args(base + ["--features", ","]))
