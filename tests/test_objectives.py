"""Objectives, corruptions, the pretraining loop and table extraction on real structures (bundled sample)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from bench.config import ConfigError
from bench.graphs import build_graph, collate, load_graphs
from bench.objectives.corruption import choose_edges, drop_edges, mask_atoms, with_atomic_numbers
from bench.objectives.losses import adjacency_targets
from bench.plugins import load_plugins
from bench.structures import Structure

load_plugins([])


@pytest.fixture
def one_thread():
    """Bit-identical training needs one CPU thread: multi-threaded scatter-add reductions (in backward) sum in a
    varying order. (Extraction, forward only, is deterministic either way; see test_extraction_is_deterministic.)"""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def sample_structures():
    from bench.tasks import load_task

    td = load_task("dft_3d_formation_energy_peratom", "sample")
    return td.structures[:48], td.dataset_key


def _targets(structure, spec, max_count=5):
    b = collate([(build_graph(structure, spec), None)])
    src, dst = b.graph.edges()
    return adjacency_targets(src, dst, b.graph.batch_num_nodes(), max_count).tolist()


# ---- adjacency multiplicity targets, counted by hand ------------------------------------------------------
def test_adjacency_targets_rock_salt_nacl():
    # Rock salt, a = 5.64 Å, 2-atom fcc primitive cell: Na at 0, Cl at (1/2,1/2,1/2) = (a/2, a/2, a/2) Cartesian,
    # an fcc translate of (a/2, 0, 0). CartNet graph: every image within 5 Å.
    #   Na <- Cl: 6 at a/2 = 2.82 Å, 8 at a*sqrt(3)/2 = 4.88 Å (next: a*sqrt(5)/2 = 6.31 > 5)   -> 14
    #   Na <- Na images: 12 fcc neighbours at a/sqrt(2) = 3.99 Å (next: a = 5.64 > 5)          -> 12
    #   and the same for Cl by symmetry. Pairs (i, j) in order (Na,Na) (Na,Cl) (Cl,Na) (Cl,Cl):
    a = 5.64
    lat = np.array([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])
    nacl = Structure(lat, np.array([[0, 0, 0], [0.5, 0.5, 0.5]]), np.array([11, 17]), id="NaCl")
    assert _targets(nacl, "cartnet", max_count=100) == [12, 14, 14, 12]
    assert _targets(nacl, "cartnet") == [5, 5, 5, 5]  # every count clamps to class 5


def test_adjacency_targets_tetragonal_two_atom_cell():
    # a = b = 4.5 Å, c = 10 Å; Si at (0,0,0), O at (0,0,0.25) -> 2.5 Å straight above. Radius 5 Å:
    #   Si <- Si images: (+-4.5, 0, 0), (0, +-4.5, 0) at 4.5 Å; diagonals 6.36 Å and c = 10 Å are out   -> 4
    #   Si <- O: the O at 2.5 Å; O shifted by a: sqrt(4.5^2 + 2.5^2) = 5.15 Å > 5; O - c at 7.5 Å         -> 1
    #   O <- Si: 1 by the same argument; O <- O images: 4
    s = Structure(np.diag([4.5, 4.5, 10.0]), np.array([[0, 0, 0], [0, 0, 0.25]]), np.array([14, 8]), id="tet")
    assert _targets(s, "cartnet") == [4, 1, 1, 4]


# ---- corruption rates ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cartnet_batch(sample_structures):
    structs, key = sample_structures
    gs = load_graphs(structs[:24], "cartnet", key=key, progress=False)
    return collate([(g, None) for g in gs])


def test_mask_atoms_batch_fraction(cartnet_batch):
    n = cartnet_batch.graph.num_nodes()
    for seed in range(3):
        m = mask_atoms(cartnet_batch, 0.1, np.random.default_rng(seed))
        assert m.dtype == torch.bool and m.shape == (n,)
        assert int(m.sum()) == round(0.1 * n)
    a = mask_atoms(cartnet_batch, 0.1, np.random.default_rng(0))
    b = mask_atoms(cartnet_batch, 0.1, np.random.default_rng(1))
    assert not torch.equal(a, b)  # the draw depends on the generator
    assert torch.equal(a, mask_atoms(cartnet_batch, 0.1, np.random.default_rng(0)))


def test_mask_atoms_per_graph_at_least_one(cartnet_batch):
    counts = cartnet_batch.graph.batch_num_nodes().tolist()
    m = mask_atoms(cartnet_batch, 0.1, np.random.default_rng(0), per_graph=True, at_least_one=True)
    start = 0
    for n in counts:
        k = int(m[start:start + n].sum())
        assert k == max(1, round(0.1 * n)), (n, k)
        start += n
    assert any(n < 5 for n in counts)  # small crystals exercise the at-least-one rule


def test_with_atomic_numbers_leaves_clean_batch_alone(cartnet_batch):
    z0 = cartnet_batch.graph.ndata["Z"].clone()
    m = mask_atoms(cartnet_batch, 0.3, np.random.default_rng(0))
    view = with_atomic_numbers(cartnet_batch, m, 0)
    assert torch.equal(cartnet_batch.graph.ndata["Z"], z0)
    assert (view.graph.ndata["Z"][m] == 0).all() and torch.equal(view.graph.ndata["Z"][~m], z0[~m])


def test_drop_edges_fraction_and_batch_membership(cartnet_batch):
    g = cartnet_batch.graph
    e = g.num_edges()
    view = drop_edges(cartnet_batch, 0.1, np.random.default_rng(0))
    assert view.graph.num_edges() == e - round(0.1 * e)
    assert view.graph.batch_size == g.batch_size and torch.equal(view.graph.batch_num_nodes(), g.batch_num_nodes())
    assert int(view.graph.batch_num_edges().sum()) == view.graph.num_edges()
    assert g.num_edges() == e  # the clean batch keeps every edge
    # the remaining edges keep their own distances
    kept = np.setdiff1d(np.arange(e), choose_edges(cartnet_batch, 0.1, np.random.default_rng(0)))
    assert torch.equal(view.graph.edata["d"], g.edata["d"][torch.from_numpy(kept)])


def test_drop_edges_per_node(cartnet_batch):
    g = cartnet_batch.graph
    dst = g.edges()[1].numpy()
    dropped = choose_edges(cartnet_batch, 0.1, np.random.default_rng(0), per_node=True)
    deg = np.bincount(dst, minlength=g.num_nodes())
    lost = np.bincount(dst[dropped], minlength=g.num_nodes())
    assert np.array_equal(lost, np.rint(0.1 * deg).astype(int))
    assert (deg - lost >= 1)[deg > 0].all()


def test_drop_edges_keeps_alignn_line_graph_consistent(sample_structures):
    from bench.graphs import _line_graph, bond_cosines

    structs, key = sample_structures
    gs = load_graphs(structs[:6], "alignn", key=key, progress=False)
    b = collate([(g, None) for g in gs])
    v = drop_edges(b, 0.1, np.random.default_rng(0))
    assert v.line.num_nodes() == v.graph.num_edges() < b.graph.num_edges()
    src, dst = (t.numpy() for t in v.graph.edges())
    e1, e2 = _line_graph(src, dst, v.graph.num_nodes())
    want = dict(zip(zip(e1.tolist(), e2.tolist()), bond_cosines(v.graph.edata["r"].numpy(), e1, e2).tolist()))
    got = dict(zip(zip(*[t.tolist() for t in v.line.edges()]), v.line.edata["cos"].tolist()))
    assert set(got) == set(want)
    assert all(abs(got[k] - want[k]) < 1e-5 for k in want)
    assert torch.equal(v.line.batch_num_nodes(), v.graph.batch_num_edges())


def test_concat_batches_keeps_crystals_in_order(cartnet_batch):
    from bench.objectives.corruption import concat_batches

    v = drop_edges(cartnet_batch, 0.1, np.random.default_rng(0))
    both = concat_batches(cartnet_batch, v)
    g = cartnet_batch.graph
    assert both.num_graphs == 2 * cartnet_batch.num_graphs and both.graph.batch_size == 2 * g.batch_size
    assert torch.equal(both.graph.batch_num_nodes(), torch.cat([g.batch_num_nodes(), v.graph.batch_num_nodes()]))
    assert torch.equal(both.graph.ndata["Z"], torch.cat([g.ndata["Z"], g.ndata["Z"]]))
    assert both.graph.num_edges() == g.num_edges() + v.graph.num_edges()


# ---- objectives on encoders ----------------------------------------------------------------------------------
COMBOS = [
    ("unate", "cartnet", {"layers": 2}),
    ("unate", "cgcnn", {"layers": 2}),
    ("crysatom", "cgcnn", {"layers": 2}),
    ("crysatom", "megnet", {}),
]


@pytest.mark.parametrize("objective,encoder,enc_opts", COMBOS)
def test_loss_goes_down_on_real_corpus(tmp_path, objective, encoder, enc_opts, one_thread):
    from bench.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(objective=objective, encoder=encoder, dim=32, epochs=8, batch_size=16, lr=3e-3,
                         corpus=("sample",), corpus_limit=48, encoder_options=enc_opts, device="cpu",
                         exclude_tasks=())
    path = pretrain(cfg, out=tmp_path / "t.json", progress=False)
    meta = json.loads(path.read_text())["meta"]
    hist = [h["total"] for h in meta["loss_history"]]
    assert len(hist) == 8 and all(np.isfinite(hist))
    assert np.mean(hist[-2:]) < np.mean(hist[:2]), hist
    assert meta["encoder"] == encoder and meta["objective"] == objective and meta["dim"] == 32


def test_unate_runs_on_line_graph_encoder(sample_structures):
    from bench.encoders.base import build_encoder, reference_feature_dim
    from bench.featurizers import build_featurizer
    from bench.objectives import build_objective

    structs, key = sample_structures
    opts = {"hidden": 16, "alignn_layers": 1, "gcn_layers": 1}
    enc = build_encoder("alignn", build_featurizer("learned-mask", dim=reference_feature_dim("alignn", opts)), opts)
    b = collate([(g, None) for g in load_graphs(structs[:8], "alignn", key=key, progress=False)])
    for ae_view in ("separate", "shared"):
        obj = build_objective("unate", {"dim": 16, "ae_view": ae_view}, enc.embedding_dim)
        enc.zero_grad()
        parts = obj.loss(enc, b)
        assert set(parts) == {"total", "node", "adjacency", "ssl"}
        assert all(torch.isfinite(v) for v in parts.values())
        parts["total"].backward()
        assert enc.featurizer.embedding.weight.grad[0].abs().sum() > 0  # the mask row (Z = 0) is used and trained


def test_objective_options_are_strict():
    from bench.objectives import build_objective

    with pytest.raises(ConfigError, match="Did you mean 'temperature'"):
        build_objective("unate", {"tempreature": 0.1}, 8)
    with pytest.raises(ConfigError, match="ssl"):
        build_objective("unate", {"ssl": "simclr"}, 8)
    with pytest.raises(ConfigError, match="mask_rate"):
        build_objective("crysatom", {"mask_rate": 1.5}, 8)


def test_crysatom_defaults_follow_the_reference():
    from bench.objectives.crysatom import CrysAtom
    from bench.objectives.unate import Unate

    c, u = CrysAtom.Config(), Unate.Config()
    assert (c.w_adj, c.w_feat, c.w_bt, c.barlow_lambda, c.dim) == (0.25, 0.25, 0.5, 0.0051, 200)
    assert (u.w_node, u.w_adj, u.w_ssl, u.temperature, u.mask_rate, u.drop_rate) == (0.25, 0.25, 0.5, 0.07, 0.1, 0.1)
    assert CrysAtom.default_encoder == "cgcnn" and CrysAtom.default_encoder_options["layers"] == 5
    assert Unate.default_encoder == "cartnet" and CrysAtom.default_featurizer == "cgcnn"


# ---- pretraining loop, extraction, cache ---------------------------------------------------------------------
SMALL = dict(objective="crysatom", dim=16, epochs=2, batch_size=16, corpus=("sample",), corpus_limit=40,
             encoder_options={"layers": 1}, device="cpu")


def test_extraction_is_deterministic(sample_structures):
    from bench.encoders.base import build_encoder
    from bench.featurizers import build_featurizer
    from bench.pretrain import extract_table

    structs, key = sample_structures
    torch.manual_seed(0)
    enc = build_encoder("cgcnn", build_featurizer("cgcnn"), {"hidden": 16, "layers": 2})
    gs = load_graphs(structs, "cgcnn", key=key, progress=False)
    v1, n1 = extract_table(enc, gs, batch_size=7)
    v2, n2 = extract_table(enc, gs, batch_size=7)
    assert n1 == n2 and set(v1) == set(v2)
    assert all(np.array_equal(v1[s], v2[s]) for s in v1)
    assert all(abs(np.linalg.norm(v) - 1) < 1e-9 for v in v1.values())
    present = {s for st in structs for s in st.symbols}
    assert set(v1) == present  # elements never seen get no row
    assert sum(n1.values()) == sum(st.num_atoms for st in structs)
    assert enc.training  # extraction restores the mode


def test_pretrain_metadata_and_same_seed_same_table(tmp_path, one_thread):
    from bench.embeddings import load_table
    from bench.pretrain import PretrainConfig, pretrain

    p1 = pretrain(PretrainConfig(**SMALL), out=tmp_path / "a.json", progress=False)
    p2 = pretrain(PretrainConfig(**SMALL), out=tmp_path / "b.json", progress=False)
    t1, t2 = load_table(p1), load_table(p2)
    assert t1.hash == t2.hash
    m = t1.meta
    for key in ("objective", "objective_version", "encoder", "dim", "corpus", "seed", "epochs", "final_losses",
                "code_version", "config_hash"):
        assert key in m, key
    assert m["corpus"]["excluded"] > 0 and m["corpus"]["size"] == 40 and len(m["corpus"]["exclude_tasks"]) == 9
    assert set(m["final_losses"]) == {"total", "adjacency", "features", "barlow_twins"}
    assert (tmp_path / "a.json.ckpt.pt").is_file()
    state = torch.load(tmp_path / "a.json.ckpt.pt", weights_only=True)
    assert state["epoch"] == 2
    # which epoch the table came from, and by which rules (CrysAtom's own by default)
    assert m["selection"]["rule"] == "train-loss" and m["extraction_rule"] == "last-batch"
    assert m["selected_epoch"] == m["selection"]["epoch"] in (1, 2)
    assert len(m["selection"]["train_loss_per_epoch"]) == 2


@pytest.mark.parametrize("checkpoint_seconds,ckpt_at", [(300.0, (1, 0)), (0.0, (1, 1))])
def test_resume_after_interruption_gives_the_same_table(tmp_path, monkeypatch, checkpoint_seconds, ckpt_at,
                                                        one_thread):
    # 40 structures, batch 16 -> 3 steps per epoch (the last batch of 8); interrupted at the 5th step (epoch 2,
    # step 2). With end-of-epoch checkpoints the run resumes at epoch 2 step 0; with a checkpoint after every
    # step (checkpoint_seconds = 0) it resumes mid-epoch, so the corruption RNG state must be restored too.
    import bench.graphs
    from bench.embeddings import load_table
    from bench.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(**{**SMALL, "epochs": 3, "checkpoint_seconds": checkpoint_seconds})
    ref = load_table(pretrain(cfg, out=tmp_path / "ref.json", progress=False))
    real = bench.graphs.collate
    calls = {"n": 0, "fail_at": 5}

    def counting(items):
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise KeyboardInterrupt
        return real(items)

    monkeypatch.setattr(bench.graphs, "collate", counting)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, out=tmp_path / "run.json", progress=False)
    assert not (tmp_path / "run.json").exists()
    state = torch.load(tmp_path / "run.json.ckpt.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == ckpt_at
    calls.update(n=0, fail_at=-1)
    resumed = load_table(pretrain(cfg, out=tmp_path / "run.json", progress=False))
    # it resumed rather than restarted: 9 training steps minus those done (CrysAtom's last-batch extraction reads
    # the table off the training steps, so there is no extraction pass; mid-epoch, the partial table is restored)
    assert calls["n"] == 9 - 3 * ckpt_at[0] - ckpt_at[1]
    assert resumed.hash == ref.hash and resumed.meta["selected_epoch"] == ref.meta["selected_epoch"]


def test_ensure_table_caches_by_configuration(monkeypatch):
    import bench.pretrain as bp

    cfg = {**SMALL, "corpus": ["sample"], "epochs": 1}
    p1 = bp.ensure_table(cfg, progress=False)
    assert p1.parent.name == "tables" and p1.name.startswith("crysatom-")
    monkeypatch.setattr(bp, "pretrain", lambda *a, **k: pytest.fail("should have been cached"))
    assert bp.ensure_table(bp.PretrainConfig(**{**SMALL, "epochs": 1}), progress=False) == p1
    # explicit defaults hash like omitted ones; a changed option is another table
    same = {**cfg, "objective_options": {"barlow_lambda": 0.0051}, "data_dir": "/elsewhere"}
    assert bp.table_path(same) == p1
    assert bp.table_path({**cfg, "objective_options": {"barlow_lambda": 0.01}}) != p1
    assert bp.table_path({**cfg, "seed": 1}) != p1


def test_table_cache_key_follows_the_corpus_content(monkeypatch):
    """Same configuration, different structures in the corpus (another or an updated data directory): another
    table, never the cached one."""
    import bench.pretrain as bp
    import bench.tasks.corpus as tc

    cfg = {**SMALL, "corpus": ["sample"], "epochs": 1}
    bp._load_corpus.cache_clear()
    p1 = bp.table_path(cfg)
    real = tc.load_corpus

    def one_fewer(*a, **k):
        c = real(*a, **k)
        return tc.Corpus(c.structures[1:], c.ids[1:], dict(c.info))

    monkeypatch.setattr(tc, "load_corpus", one_fewer)
    bp._load_corpus.cache_clear()
    try:
        assert bp.table_path(cfg) != p1
    finally:
        bp._load_corpus.cache_clear()


def test_structure_matching_is_the_default_and_ids_only_another_table():
    import bench.pretrain as bp

    cfg = {**SMALL, "corpus": ["sample"], "epochs": 1, "corpus_limit": None}
    matched, ids_only = bp.resolve(cfg), bp.resolve({**cfg, "match_structures": False})
    assert matched.identity["match_structures"] is True
    assert "match_structures" not in ids_only.identity  # ids-only keeps the key layout it always had
    n_ids, n_matched = len(bp.corpus_of(ids_only)), len(bp.corpus_of(matched))
    assert n_matched < n_ids
    assert bp.table_path({**cfg, "match_structures": False}) != bp.table_path(cfg)


def test_pretrain_config_is_strict():
    from bench.pretrain import PretrainConfig, resolve

    with pytest.raises(ConfigError, match="Did you mean 'epochs'"):
        resolve({"objective": "unate", "epoch": 3})
    with pytest.raises(ConfigError, match="batch_size"):
        PretrainConfig(objective="unate", batch_size=1)
    with pytest.raises(ConfigError, match="Did you mean 'layers'"):
        resolve({"objective": "crysatom", "encoder_options": {"layer": 3}})
    with pytest.raises(ConfigError, match="Did you mean 'train-loss'"):
        PretrainConfig(objective="crysatom", selection="train_loss")
    with pytest.raises(ConfigError, match="Did you mean 'last-batch'"):
        PretrainConfig(objective="crysatom", extraction="lastbatch")
    with pytest.raises(ConfigError, match="val_fraction"):
        PretrainConfig(objective="unate", val_fraction=1.0)
    r = resolve({"objective": "crysatom", "dim": 64})
    assert r.encoder == "cgcnn" and r.encoder_options["hidden"] == 64 and r.encoder_options["layers"] == 5
    assert dataclasses.asdict(r.objective_config)["dim"] == 64


# ---- export and report ---------------------------------------------------------------------------------------
def test_export_atom_init_and_reports(tmp_path):
    from bench.embed_report import export_atom_init, group_of, report, resolve_table
    from bench.embeddings import CRYSATOM_PUBLISHED, load_table

    t = load_table(CRYSATOM_PUBLISHED)
    out = export_atom_init(t.vectors, tmp_path / "atom_init.json")
    ai = json.loads(out.read_text())
    assert ai["8"] == [float(x) for x in t.vectors["O"]] and "O" not in ai and len(ai) == len(t.vectors)
    assert [int(k) for k in ai] == sorted(int(k) for k in ai)
    assert [group_of(z) for z in (1, 3, 8, 17, 26, 56, 79, 86)] == [1, 1, 16, 17, 8, 2, 11, 18]
    assert group_of(64) is None
    rep = report("crysatom-published", tmp_path / "rep")
    assert (tmp_path / "rep" / "projection.png").stat().st_size > 10_000
    assert rep["coverage"]["elements"] == 89 and set(rep["nearest"]) == {"Li", "O", "Fe", "Cl"}
    rnd = report("random", None)
    assert rnd["dim"] == 200 and rnd["coverage"]["elements"] == 118
    assert abs(rnd["cosine"]["mean"]) < 0.05  # random unit vectors are nearly orthogonal in 200-d
    # the published (learned) table has chemistry the random control lacks
    assert rep["group_agreement"]["k1"]["fraction"] > rnd["group_agreement"]["k1"]["fraction"]
    assert resolve_table("random:3", 8).dim == 8
    # the same random[:SEED[:WIDTH]] specs the featurizer takes (one parser: bench.featurizers.parse_random)
    from bench.featurizers import FeaturizerError, build_featurizer

    t = resolve_table("random:3:16")
    assert t.dim == 16 and t.hash == build_featurizer("random:3:16").table_hash
    with pytest.raises(FeaturizerError, match="16-d but --dim 8"):
        resolve_table("random:3:16", 8)
    with pytest.raises(FeaturizerError, match="SEED"):
        resolve_table("random:x")


def test_embed_cli_random_export_report(tmp_path, capsys):
    from bench.cli import main

    table = tmp_path / "random8.json"
    assert main(["embed", "random", "--dim", "8", "--seed", "2", "--out", str(table)]) == 0
    doc = json.loads(table.read_text())
    assert doc["meta"]["kind"] == "random control" and len(doc["table"]) == 118 and len(doc["table"]["Fe"]) == 8
    assert main(["embed", "export", str(table), "--format", "atom_init", "--out", str(tmp_path / "ai.json")]) == 0
    assert json.loads((tmp_path / "ai.json").read_text())["26"] == doc["table"]["Fe"]
    assert main(["embed", "report", str(table), "--out", str(tmp_path / "rep")]) == 0
    assert {p.name for p in (tmp_path / "rep").iterdir()} >= {"report.json", "report.md", "projection.png"}
    assert "| Fe |" in capsys.readouterr().out
    assert main(["embed", "report", str(tmp_path / "missing.json")]) == 2


# ---- the objectives' numbers, recomputed independently from the encoder's outputs (spec: objectives.md) -------
def _spy(enc):
    """Record every (view, atom_mask, node embeddings) the objective encodes."""
    calls, orig = [], enc.forward

    def forward(batch, atom_mask=None):
        out = orig(batch, atom_mask)
        calls.append((batch, atom_mask, out.node))
        return out

    enc.forward = forward
    return calls


def _adjacency_reference(adj_head, zn, b, weights=(0.1, 1, 1, 1, 1, 1)):
    """Weighted NLL over every ordered pair (i, j) of each crystal, i = j included; target = clean edges j -> i,
    clamped to 5; logits from the nn.Bilinear module itself."""
    src, dst = (t.numpy() for t in b.graph.edges())
    rows_i, rows_j, target, start = [], [], [], 0
    for n in b.graph.batch_num_nodes().tolist():
        m = np.zeros((n, n), dtype=int)
        np.add.at(m, (dst[(dst >= start) & (dst < start + n)] - start, src[(dst >= start) & (dst < start + n)] - start), 1)
        for i in range(n):
            for j in range(n):
                rows_i.append(start + i), rows_j.append(start + j), target.append(min(m[i, j], 5))
        start += n
    logp = torch.log_softmax(adj_head.out(adj_head.bilinear(zn[rows_i], zn[rows_j])), dim=-1)
    t, w = torch.tensor(target), torch.tensor(weights, dtype=logp.dtype)
    return float((-w[t] * logp[torch.arange(len(t)), t]).sum() / w[t].sum())


def test_unate_loss_matches_the_spec_recomputed(sample_structures):
    from bench.encoders.base import build_encoder
    from bench.featurizers import build_featurizer
    from bench.objectives import build_objective

    structs, key = sample_structures
    b = collate([(g, None) for g in load_graphs(structs[:6], "cartnet", key=key, progress=False)])
    torch.manual_seed(0)
    enc = build_encoder("cartnet", build_featurizer("learned-mask", dim=16), {"dim": 16, "layers": 2})
    obj = build_objective("unate", {"dim": 16}, enc.embedding_dim)
    calls = _spy(enc)
    parts = obj.loss(enc, b)
    n_atoms, n_edges, z = b.graph.num_nodes(), b.graph.num_edges(), b.graph.ndata["Z"]
    (ae, ae_mask, h_ae), (pair, pair_mask, h_pair) = calls
    # corruption: 10% of the batch's atoms to the mask token (row 0), 10% of the edges dropped, per view
    assert ae_mask is None and int((ae.graph.ndata["Z"] == 0).sum()) == round(0.1 * n_atoms)
    assert ae.graph.num_edges() == n_edges - round(0.1 * n_edges)
    assert int((pair.graph.ndata["Z"] == 0).sum()) == 2 * round(0.1 * n_atoms)
    assert pair.graph.num_edges() == 2 * (n_edges - round(0.1 * n_edges)) and pair.num_graphs == 2 * b.num_graphs
    # node head: per-atom L2-normalised embeddings -> Linear(d, 119), cross-entropy vs the clean Z
    zn = h_ae / h_ae.norm(dim=1, keepdim=True)
    assert obj.node_head.out_features == 119
    assert abs(float(torch.nn.functional.cross_entropy(obj.node_head(zn), z)) - float(parts["node"])) < 1e-5
    # adjacency: targets from the clean graph
    assert abs(_adjacency_reference(obj.adj_head, zn, b) - float(parts["adjacency"])) < 1e-4
    # NT-Xent: mean-pool -> projector, L2-normalised, T = 0.07, each anchor against its 2B - 2 negatives
    sizes = b.graph.batch_num_nodes().tolist()
    pools = [torch.stack([x.mean(0) for x in torch.split(h, sizes)]) for h in (h_pair[:n_atoms], h_pair[n_atoms:])]
    p = torch.nn.functional.normalize(torch.cat([obj.projector(q) for q in pools]), dim=1)
    sim, B = p @ p.t() / 0.07, len(sizes)
    loss = 0.0
    for a in range(2 * B):
        others = torch.cat([sim[a, :a], sim[a, a + 1:]])
        assert len(others) == 2 * B - 1  # the positive and 2B - 2 negatives
        loss += float(torch.logsumexp(others, 0) - sim[a, (a + B) % (2 * B)])
    assert abs(loss / (2 * B) - float(parts["ssl"])) < 1e-5
    want = 0.25 * parts["node"] + 0.25 * parts["adjacency"] + 0.5 * parts["ssl"]
    assert abs(float(want) - float(parts["total"])) < 1e-6


@pytest.mark.parametrize("normalize", [True, False])
def test_crysatom_loss_matches_the_spec_recomputed(sample_structures, normalize):
    from bench.encoders.base import build_encoder
    from bench.featurizers import build_featurizer
    from bench.objectives import build_objective

    structs, key = sample_structures
    b = collate([(g, None) for g in load_graphs(structs[:6], "cgcnn", key=key, progress=False)])
    torch.manual_seed(0)
    feat = build_featurizer("cgcnn")
    enc = build_encoder("cgcnn", feat, {"hidden": 16, "layers": 2, "input_bias": False})
    opts = {"dim": 16} if normalize else {"dim": 16, "normalize_projections": False}  # the default normalises
    obj = build_objective("crysatom", opts, enc.embedding_dim)
    calls = _spy(enc)
    parts = obj.loss(enc, b)
    sizes = b.graph.batch_num_nodes().tolist()
    (clean, clean_mask, h), views = calls[0], calls[1:]
    # adjacency and features on the clean graph (no corruption)
    assert clean is b and clean_mask is None and len(views) == 2
    zn = h / h.norm(dim=1, keepdim=True)
    assert abs(_adjacency_reference(obj.adj_head, zn, b) - float(parts["adjacency"])) < 1e-4
    bits = feat.table[b.graph.ndata["Z"]]
    assert obj.feat_head.out_features == 92 and set(torch.unique(bits).tolist()) <= {0.0, 1.0}
    bce = torch.nn.functional.binary_cross_entropy_with_logits(obj.feat_head(zn), bits)
    assert abs(float(bce) - float(parts["features"])) < 1e-6
    # views: 10% of each crystal's atoms zeroed (at least one), 10% of each atom's neighbour edges dropped
    deg = torch.bincount(b.graph.edges()[1], minlength=b.graph.num_nodes())
    for v, mask, _ in views:
        assert [int(m.sum()) for m in torch.split(mask, sizes)] == [max(1, round(0.1 * n)) for n in sizes]
        lost = deg - torch.bincount(v.graph.edges()[1], minlength=b.graph.num_nodes())
        assert torch.equal(lost, torch.from_numpy(np.rint(0.1 * deg.numpy()).astype(np.int64)))
    # Barlow Twins: mean-pool -> softplus -> Linear(F, 128) -> softplus -> projector; each view's outputs
    # L2-normalised as the reference does (AtomVectorExtractor.py:192-194); BN without affine;
    # C = z1^T z2 / B (the real batch size); lambda 0.0051
    sp = torch.nn.functional.softplus
    z1, z2 = (obj.projector(sp(obj.graph_fc(sp(torch.stack([x.mean(0) for x in torch.split(hv, sizes)])))))
              for _, _, hv in views)
    if normalize:
        z1, z2 = z1 / z1.norm(dim=1, keepdim=True), z2 / z2.norm(dim=1, keepdim=True)
    assert torch.equal(obj.extraction_nodes, h.detach())  # the clean pass, for last-batch extraction
    bn = torch.nn.BatchNorm1d(128, affine=False)
    c = bn(z1).t() @ bn(z2) / len(sizes)
    d = torch.diagonal(c)
    bt = float(((1 - d) ** 2).sum() + 0.0051 * ((c ** 2).sum() - (d ** 2).sum()))
    assert abs(bt - float(parts["barlow_twins"])) < 1e-4 * max(1.0, abs(bt))
    want = 0.25 * parts["adjacency"] + 0.25 * parts["features"] + 0.5 * parts["barlow_twins"]
    assert abs(float(want) - float(parts["total"])) < 1e-5


def test_uniform_extraction_matches_per_crystal_recomputation(sample_structures):
    from bench.encoders.base import build_encoder
    from bench.featurizers import build_featurizer
    from bench.pretrain import extract_table
    from bench.structures import ELEMENTS

    structs, key = sample_structures
    gs = load_graphs(structs[:20], "cgcnn", key=key, progress=False)
    torch.manual_seed(0)
    enc = build_encoder("cgcnn", build_featurizer("cgcnn"), {"hidden": 16, "layers": 2})
    enc(collate([(g, None) for g in gs]))  # a training-mode pass: BatchNorm running statistics are not trivial
    vectors, counts = extract_table(enc, gs, batch_size=7)
    enc.eval()
    per_element: dict[int, list] = {}
    with torch.no_grad():
        for g in gs:  # one crystal at a time, no corruption
            one = collate([(g, None)])
            for zz, row in zip(one.graph.ndata["Z"].tolist(), enc(one).node.double()):
                per_element.setdefault(zz, []).append(row / row.norm())  # per-atom L2 normalisation
    assert set(vectors) == {ELEMENTS[zz] for zz in per_element}
    for zz, rows in per_element.items():
        mean = torch.stack(rows).mean(0)
        assert counts[ELEMENTS[zz]] == len(rows)
        assert np.allclose(vectors[ELEMENTS[zz]], (mean / mean.norm()).numpy(), atol=1e-6)


# ---- each reference's epoch selection and extraction, reproduced on a tiny corpus ---------------------------
def test_reference_budgets_and_rules_are_the_objectives_defaults():
    from bench.pretrain import PretrainError, resolve

    u, c = resolve({"objective": "unate"}), resolve({"objective": "crysatom"})
    assert (u.epochs, u.selection, u.extraction, u.dim) == (120, "validation", "mean", 128)
    assert (c.epochs, c.selection, c.extraction, c.dim) == (110, "train-loss", "last-batch", 200)
    assert u.identity["val_fraction"] == 0.1 and "val_fraction" not in c.identity
    assert resolve({"objective": "unate", "epochs": 7, "selection": "last"}).identity["epochs"] == 7
    # crysbench's uniform protocol stays available, and is another table
    assert resolve({"objective": "unate", "extraction": "uniform"}).hash != u.hash
    r = resolve({"objective": "unate", "extraction": "last-batch", "epochs": 1, "batch_size": 8, "corpus": ["sample"],
                 "corpus_limit": 20, "dim": 8, "encoder": "cgcnn", "encoder_options": {"layers": 1},
                 "exclude_tasks": [], "device": "cpu", "selection": "last"})
    from bench.pretrain import pretrain

    with pytest.raises(PretrainError, match="extraction_nodes"):  # UNATE encodes no clean batch
        pretrain(r.config, out=None, progress=False)


UNATE_TINY = dict(objective="unate", encoder="cgcnn", dim=8, batch_size=8, lr=0.1, corpus=("sample",),
                  corpus_limit=40, encoder_options={"layers": 1}, device="cpu", exclude_tasks=())


def test_unate_keeps_the_lowest_validation_loss_epoch_and_averages_raw_embeddings(tmp_path, one_thread):
    """UNATE's rules: a seeded 10 % held out, the epoch with the lowest validation loss kept
    (train_contrastive.py:142, 158-172), the table the mean of raw node embeddings over the training split, then
    L2 (extreure_embeddings.py:133-154). At lr 0.1 on 40 structures the validation loss is lowest at epoch 3 of 5."""
    from bench.embeddings import load_table
    from bench.pretrain import PretrainConfig, pretrain

    five = load_table(pretrain(PretrainConfig(**UNATE_TINY, epochs=5), out=tmp_path / "five.json", progress=False))
    sel = five.meta["selection"]
    val = sel["val_loss_per_epoch"]
    assert sel["rule"] == "validation" and (sel["val_size"], sel["train_size"]) == (4, 36) and len(val) == 5
    assert five.meta["selected_epoch"] == int(np.argmin(val)) + 1 == 3  # not the last epoch
    assert sel["score"] == min(val)
    # the table is that epoch's model: a 3-epoch run (same seeds, so the same first three epochs) ends there
    three = load_table(pretrain(PretrainConfig(**UNATE_TINY, epochs=3), out=tmp_path / "three.json", progress=False))
    assert three.meta["selection"]["val_loss_per_epoch"] == val[:3] and three.meta["selected_epoch"] == 3
    assert three.hash == five.hash
    last = load_table(pretrain(PretrainConfig(**UNATE_TINY, epochs=5, selection="last"), out=tmp_path / "l.json",
                               progress=False))
    assert last.hash != five.hash
    # extraction over the training split only (36 structures); without a held-out part, over all 40
    assert sum(five.meta["atoms_per_element"].values()) < sum(last.meta["atoms_per_element"].values())


def test_validation_views_are_drawn_once(tmp_path, one_thread):
    """The validation batches are corrupted once and scored on the same views every epoch (UNATE pre-augments
    them, train_contrastive.py:42-57, 121): with frozen weights (lr ~ 0; MEGNet has no BatchNorm statistics to
    drift) every epoch's validation loss is the same number, although the training corruptions change."""
    from bench.embeddings import load_table
    from bench.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(objective="unate", encoder="megnet", batch_size=8, lr=1e-30, epochs=3, corpus=("sample",),
                         corpus_limit=40, device="cpu", exclude_tasks=())
    meta = load_table(pretrain(cfg, out=tmp_path / "t.json", progress=False)).meta
    val, train = meta["selection"]["val_loss_per_epoch"], meta["selection"]["train_loss_per_epoch"]
    assert val[0] == val[1] == val[2]
    assert len(set(train)) == 3
    assert meta["selected_epoch"] == 1  # ties keep the first epoch, as the reference's argmin does


def _mean_table(nodes, z):
    """{Z: L2(mean of raw rows)} of one batch, computed row by row."""
    out = {}
    for zz in sorted(set(z.tolist())):
        rows = [nodes[k].double() for k in range(len(z)) if int(z[k]) == zz]
        m = torch.stack(rows).mean(0)
        out[zz] = m / m.norm()
    return out


def test_crysatom_keeps_the_lowest_training_loss_epoch_and_each_elements_last_batch(tmp_path, monkeypatch,
                                                                                     one_thread):
    """CrysAtom's rules: the epoch with the lowest mean training loss over its batches (AtomVectorExtractor.py:
    94-104, the mean of per-batch losses, line 238) and, per element, the L2-normalised mean of its atoms' raw
    node embeddings from the last batch of that epoch that contains it, from the training-mode clean pass
    (lines 110-128, 186, 196, 212-213). At lr 1.0 the training loss is lowest before the last of 5 epochs; 42
    structures in batches of 8 leave a last batch of 2, so a per-structure mean would differ."""
    from bench.embeddings import load_table
    from bench.objectives.crysatom import CrysAtom
    from bench.pretrain import PretrainConfig, pretrain
    from bench.structures import ELEMENTS

    seen = []
    real = CrysAtom.loss

    def spy(self, encoder, batch):
        parts = real(self, encoder, batch)
        seen.append((encoder.training, self.extraction_nodes.clone(), batch.graph.ndata["Z"].clone(),
                     float(parts["total"])))
        return parts

    monkeypatch.setattr(CrysAtom, "loss", spy)
    cfg = PretrainConfig(objective="crysatom", encoder="cgcnn", dim=8, epochs=5, batch_size=8, lr=1.0,
                         corpus=("sample",), corpus_limit=42, encoder_options={"layers": 1},
                         objective_options={"w_bt": 0.0}, device="cpu", exclude_tasks=())
    t = load_table(pretrain(cfg, out=tmp_path / "t.json", progress=False))
    steps = 6  # 5 batches of 8 and one of 2
    assert len(seen) == 5 * steps and all(training for training, *_ in seen)
    per_epoch = [np.mean([loss for *_, loss in seen[e * steps:(e + 1) * steps]]) for e in range(5)]
    assert np.allclose(t.meta["selection"]["train_loss_per_epoch"], per_epoch, rtol=1e-6)
    best = int(np.argmin(per_epoch))
    assert t.meta["selected_epoch"] == best + 1 < 5  # not the last epoch
    want: dict[int, torch.Tensor] = {}
    for _, nodes, z, _ in seen[best * steps:(best + 1) * steps]:  # later batches overwrite earlier ones
        want.update(_mean_table(nodes, z))
    assert set(t.vectors) == {ELEMENTS[zz] for zz in want}
    for zz, v in want.items():
        assert np.allclose(t.vectors[ELEMENTS[zz]], v.numpy(), atol=1e-6), ELEMENTS[zz]
    # the first batch containing an element would give other vectors (the rule is not vacuous here)
    first: dict[int, torch.Tensor] = {}
    for _, nodes, z, _ in reversed(seen[best * steps:(best + 1) * steps]):
        first.update(_mean_table(nodes, z))
    assert any(not np.allclose(first[zz].numpy(), want[zz].numpy(), atol=1e-3) for zz in want)


def test_mean_extraction_matches_hand_computation(sample_structures):
    """``mean`` (UNATE): raw embeddings averaged per element, then L2; no per-atom normalisation."""
    from bench.encoders.base import build_encoder
    from bench.featurizers import build_featurizer
    from bench.pretrain import extract_table
    from bench.structures import ELEMENTS

    structs, key = sample_structures
    gs = load_graphs(structs[:20], "cgcnn", key=key, progress=False)
    torch.manual_seed(0)
    enc = build_encoder("cgcnn", build_featurizer("cgcnn"), {"hidden": 16, "layers": 2})
    enc(collate([(g, None) for g in gs]))  # non-trivial BatchNorm running statistics
    vectors, counts = extract_table(enc, gs, batch_size=7, per_atom_l2=False)
    uniform, _ = extract_table(enc, gs, batch_size=7)
    enc.eval()
    rows: dict[int, list] = {}
    with torch.no_grad():
        for g in gs:
            one = collate([(g, None)])
            for zz, row in zip(one.graph.ndata["Z"].tolist(), enc(one).node.double()):
                rows.setdefault(zz, []).append(row)
    for zz, rs in rows.items():
        mean = torch.stack(rs).mean(0)
        assert counts[ELEMENTS[zz]] == len(rs)
        assert np.allclose(vectors[ELEMENTS[zz]], (mean / mean.norm()).numpy(), atol=1e-6)
    assert any(not np.allclose(vectors[s], uniform[s], atol=1e-4) for s in vectors)  # the two rules differ


# ---- the UNATE ablation axis ---------------------------------------------------------------------------------
def test_unate_ablations_are_registered_and_compute_their_branches(sample_structures):
    from bench.encoders.base import build_encoder
    from bench.featurizers import build_featurizer
    from bench.objectives import build_objective
    from bench.objectives.losses import barlow_twins
    from bench.registry import OBJECTIVES

    assert {"unate-ae", "unate-contrastive", "unate-barlow", "unate-dgi"} <= set(OBJECTIVES)
    structs, key = sample_structures
    b = collate([(g, None) for g in load_graphs(structs[:6], "cartnet", key=key, progress=False)])
    n_atoms, sizes = b.graph.num_nodes(), b.graph.batch_num_nodes().tolist()
    pool = lambda h: torch.stack([x.mean(0) for x in torch.split(h, sizes)])  # noqa: E731
    for name, n_calls in (("unate-ae", 1), ("unate-contrastive", 1), ("unate-barlow", 3), ("unate-dgi", 3)):
        torch.manual_seed(0)
        enc = build_encoder("cartnet", build_featurizer("learned-mask", dim=16), {"dim": 16, "layers": 1})
        obj = build_objective(name, {"dim": 16}, enc.embedding_dim)
        assert OBJECTIVES.get(name).default_selection == "validation"
        calls = _spy(enc)
        parts = obj.loss(enc, b)
        assert len(calls) == n_calls, name
        c = obj.config
        assert abs(float(parts["total"]) - float(c.w_node * parts["node"] + c.w_adj * parts["adjacency"]
                                                 + c.w_ssl * parts["ssl"])) < 1e-5
        if name == "unate-ae":
            assert float(parts["ssl"]) == 0 and not hasattr(obj, "projector") and float(parts["node"]) > 0
        elif name == "unate-contrastive":
            assert float(parts["node"]) == float(parts["adjacency"]) == 0 and calls[0][0].num_graphs == 2 * len(sizes)
        elif name == "unate-barlow":  # two passes, L2-normalised projections (train/train.py:278-285)
            (_, _, h1), (_, _, h2) = calls[1], calls[2]
            p1, p2 = (torch.nn.functional.normalize(obj.projector(pool(h)), dim=1) for h in (h1, h2))
            assert abs(float(barlow_twins(p1, p2, 0.0051)) - float(parts["ssl"])) < 1e-4
        else:  # DGI: clean graph vs the same graph with its atoms' identities shuffled
            (clean, _, h), (neg, _, h_neg) = calls[1], calls[2]
            assert clean is b and torch.equal(torch.sort(neg.graph.ndata["Z"]).values, torch.sort(b.graph.ndata["Z"]).values)
            assert not torch.equal(neg.graph.ndata["Z"], b.graph.ndata["Z"]) and neg.graph.num_edges() == b.graph.num_edges()
            s = torch.sigmoid(pool(h))
            seg = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
            W, bias = obj.discriminator.weight[0], obj.discriminator.bias[0]
            pos = ((h @ W) * s[seg]).sum(1) + bias
            negs = ((h_neg @ W) * s[seg]).sum(1) + bias
            want = -(torch.nn.functional.logsigmoid(pos).sum() + torch.nn.functional.logsigmoid(-negs).sum())
            assert abs(float(want) / (2 * n_atoms) - float(parts["ssl"])) < 1e-5


def test_pretraining_precision_and_message_passing_are_applied_and_recorded(tmp_path, monkeypatch, one_thread):
    """bf16 runs the objective's loss under autocast and is another table; fp32 keeps the key it had before the
    option existed; message_passing picks the kernels, is recorded and never changes the key."""
    import bench.pretrain as bp
    from bench.embeddings import load_table
    from bench.objectives.crysatom import CrysAtom

    cfg = {**SMALL, "epochs": 1}
    assert "precision" not in bp.resolve(cfg).identity  # fp32: the key of tables made before the option
    assert bp.table_path({**cfg, "precision": "fp32", "message_passing": "torch"}) == bp.table_path(cfg)
    assert bp.table_path({**cfg, "precision": "bf16"}) != bp.table_path(cfg)
    with pytest.raises(bp.ConfigError, match="Did you mean 'bf16'"):
        bp.PretrainConfig(**{**cfg, "precision": "bf61"})
    with pytest.raises(bp.ConfigError, match="message_passing"):
        bp.PretrainConfig(**{**cfg, "message_passing": "cuda"})

    seen = []
    real = CrysAtom.loss

    def spy(self, encoder, batch):
        from bench import graphops
        from bench.encoders.layers import _autocast_on

        seen.append((_autocast_on(torch.device("cpu")), graphops.current_setting()))
        return real(self, encoder, batch)

    monkeypatch.setattr(CrysAtom, "loss", spy)
    table = load_table(bp.pretrain(bp.PretrainConfig(**cfg, precision="bf16", message_passing="torch"),
                                   out=tmp_path / "bf16.json", progress=False))
    assert seen and all(s == (True, "torch") for s in seen)
    assert table.meta["precision"] == "bf16" and table.meta["message_passing"] == "torch"
    assert table.meta["config"]["precision"] == "bf16"
    assert all(np.isfinite(v).all() for v in table.vectors.values())
    seen.clear()
    fp32 = load_table(bp.pretrain(bp.PretrainConfig(**cfg), out=tmp_path / "fp32.json", progress=False))
    assert seen and not any(s[0] for s in seen)
    assert fp32.meta["precision"] == "fp32" and fp32.meta["message_passing"] in ("dgl", "torch")
