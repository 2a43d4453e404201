"""The two message-passing implementations (bench/graphops.py) compute the same function: each operation, the
graph edits the corruptions use, and every encoder on full and symmetry-reduced graphs (predictions, node
outputs, gradients, running statistics, in float64). Plus the device rule, and that nothing imports dgl when
the torch implementation is used (or when dgl is absent, as on Python 3.13)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import graphops as ops
from bench.encoders import build_encoder
from bench.featurizers import build_featurizer
from bench.graphs import Batch, QuotientBatch, build_graph, collate
from bench.registry import ENCODERS
from fixture_data import load_fixture_structures

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"cgcnn": {}, "alignn": {"hidden": 24, "embedding_features": 8, "alignn_layers": 2, "gcn_layers": 2},
         "megnet": {}, "cartnet": {"dim": 32, "layers": 2}}
needs_dgl = pytest.mark.skipif(not ops.dgl_available(), reason="dgl is not importable here")


def _random_graph(seed: int = 0) -> ops.Graph:
    """Three graphs: 4 nodes (node 0 without incoming edges), 1 isolated node, 5 nodes; repeated edges."""
    rng = np.random.default_rng(seed)
    src = np.concatenate([[1, 2, 3, 1, 2], 5 + rng.integers(0, 5, 12)])
    dst = np.concatenate([[1, 1, 2, 3, 3], 5 + rng.integers(0, 5, 12)])
    return ops.Graph(torch.tensor(src), torch.tensor(dst), 10, torch.tensor([4, 1, 5]), torch.tensor([5, 0, 12]))


def _run_ops(g: ops.Graph, impl: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    x = torch.randn(g.num_nodes(), 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(g.num_nodes(), 3, dtype=torch.float64, requires_grad=True)
    e = torch.randn(g.num_edges(), 3, dtype=torch.float64, requires_grad=True)
    w = torch.rand(g.num_edges(), dtype=torch.float64) + 0.5
    with ops.use_implementation(impl):
        out = {
            "src_add_dst": ops.src_add_dst(g, x, y),
            "sum_in": ops.sum_in(g, e),
            "sum_in_w": ops.sum_in(g, e, w),
            "src_mul_edge_sum": ops.src_mul_edge_sum(g, x, e),
            "mean_in": ops.mean_in(g, e),
            "mean_in_w": ops.mean_in(g, e, w),
            "node_sum": ops.node_sum(g, x),
            "node_mean": ops.node_mean(g, x),
        }
        total = sum((v * torch.linspace(0.5, 1.5, v.numel(), dtype=v.dtype).view(v.shape)).sum() for v in out.values())
        gx, gy, ge = torch.autograd.grad(total, (x, y, e))
    return {**{k: v.detach() for k, v in out.items()}, "grad_x": gx, "grad_y": gy, "grad_e": ge}


def test_torch_operations_by_hand():
    g = _random_graph()
    got = _run_ops(g, "torch")
    torch.manual_seed(1)
    x = torch.randn(g.num_nodes(), 3, dtype=torch.float64)
    torch.randn(g.num_nodes(), 3, dtype=torch.float64)
    e = torch.randn(g.num_edges(), 3, dtype=torch.float64)
    src, dst = g.src.tolist(), g.dst.tolist()
    for i in range(g.num_nodes()):
        into = [k for k in range(len(dst)) if dst[k] == i]
        want = sum((e[k] for k in into), torch.zeros(3, dtype=torch.float64))
        assert torch.allclose(got["sum_in"][i], want)
        assert torch.allclose(got["mean_in"][i], want / max(len(into), 1))
        assert torch.allclose(got["src_mul_edge_sum"][i],
                              sum((x[src[k]] * e[k] for k in into), torch.zeros(3, dtype=torch.float64)))
    assert torch.equal(got["node_mean"][1], x[4]) and torch.allclose(got["node_sum"][2], x[5:].sum(0))
    assert (got["mean_in"][0] == 0).all()  # no incoming edge: 0, not NaN


@needs_dgl
def test_each_operation_is_the_same_in_both_implementations():
    g = _random_graph()
    a, b = _run_ops(g, "dgl"), _run_ops(g, "torch")
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-12, atol=1e-12), k


@needs_dgl
def test_graph_edits_match_dgl():
    import dgl

    g = _random_graph()
    g.ndata["x"] = torch.arange(10.0)
    g.edata["e"] = torch.arange(17.0)
    ref = g.dgl()
    cut = torch.tensor([0, 3, 7])
    for mine, theirs in ((g.remove_edges(cut), dgl.remove_edges(ref, cut)),
                         (g.remove_nodes(cut), dgl.remove_nodes(ref, cut)),
                         (ops.Graph.batch([g, g.remove_edges(cut)]), dgl.batch([ref, dgl.remove_edges(ref, cut)]))):
        assert mine.num_nodes() == theirs.num_nodes()
        assert all(torch.equal(p, q) for p, q in zip(mine.edges(), theirs.edges()))
        assert torch.equal(mine.batch_num_nodes(), theirs.batch_num_nodes())
        assert torch.equal(mine.batch_num_edges(), theirs.batch_num_edges())
        assert torch.equal(mine.ndata["x"], theirs.ndata["x"]) and torch.equal(mine.edata["e"], theirs.edata["e"])


def test_device_rule():
    assert ops.resolve("cpu", "torch") == "torch"
    assert ops.resolve("cuda", "auto") == "torch"  # the PyPI DGL build has no CUDA kernels
    assert ops.resolve("cpu", "auto") == ("dgl" if ops.dgl_available() else "torch")
    with pytest.raises(ops.GraphOpsError, match="Did you mean 'torch'"):
        ops.resolve("cpu", "troch")
    with ops.use_implementation("torch"):
        assert ops.current_setting() == "torch" and ops.resolve("cpu") == "torch"
    assert ops.current_setting() == "auto"


# ---- every encoder, both implementations, full and symmetry-reduced graphs --------------------------------
def _double_graph(g: ops.Graph | None) -> ops.Graph | None:
    if g is None:
        return None
    out = g.local_var()
    out.ndata = {k: v.double() if v.is_floating_point() else v for k, v in g.ndata.items()}
    out.edata = {k: v.double() if v.is_floating_point() else v for k, v in g.edata.items()}
    return out


def _double(batch: Batch) -> Batch:
    q = batch.q
    if q is not None:
        q = QuotientBatch(_double_graph(q.g), _double_graph(q.lg), q.atom_class)
    return Batch(_double_graph(batch.graph), _double_graph(batch.line), batch.y.double(), batch.num_graphs, q)


def _pass(model: torch.nn.Module, batch: Batch, impl: str) -> dict[str, torch.Tensor]:
    model.train()
    with ops.use_implementation(impl):
        out = model(batch)
        weights = torch.linspace(1.0, 2.0, batch.num_graphs, dtype=torch.float64)
        ((out.pred * weights).sum() + out.node.square().mean()).backward()
        model.eval()
        with torch.no_grad():
            ev = model(batch)
    res = {"pred": out.pred.detach(), "node": out.node.detach(), "eval_pred": ev.pred, "eval_node": ev.node}
    res.update({f"grad:{n}": p.grad for n, p in model.named_parameters() if p.grad is not None})
    res.update({f"buffer:{n}": b for n, b in model.named_buffers() if b.is_floating_point()})
    return res


@needs_dgl
@pytest.mark.parametrize("reduced", [False, True], ids=["full", "reduced"])
@pytest.mark.parametrize("name", ENCODERS.list())
def test_every_encoder_is_the_same_function_in_both_implementations(name, reduced):
    cls = ENCODERS.get(name)
    structs = load_fixture_structures()
    picked = [structs[1][0]] + [s for s, _ in structs if 8 <= len(s.numbers) <= 24][:5]  # classes of mixed sizes
    batch = _double(collate([(build_graph(s, cls.graph_spec), float(k)) for k, s in enumerate(picked)],
                            quotient=reduced))
    torch.manual_seed(0)
    model = build_encoder(name, build_featurizer("cgcnn"), SMALL.get(name)).double()
    with torch.no_grad():  # away from the initialisation, so every part of the function matters
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    a = _pass(copy.deepcopy(model), batch, "dgl")
    b = _pass(copy.deepcopy(model), batch, "torch")
    assert a.keys() == b.keys() and any(k.startswith("grad:") for k in a)
    for k in a:
        scale = float(a[k].abs().max()) + 1e-12
        assert torch.allclose(a[k], b[k], rtol=1e-9, atol=1e-10 * scale), (name, reduced, k)


# ---- no dgl unless it is used ------------------------------------------------------------------------------
_TRAIN_ONE_EPOCH = """
    import sys
    sys.path.insert(0, {tests!r})
    {block}
    import numpy as np
    import bench
    from bench import graphops
    from bench.encoders import build_encoder
    from bench.featurizers import build_featurizer
    from bench.graphs import build_graph, collate
    from bench.settings import TrainSettings
    from bench.train import Split, train_supervised
    from fixture_data import load_fixture_structures
    from bench.objectives.corruption import concat_batches, drop_edges, mask_atoms

    rows = load_fixture_structures()[:12]
    graphs = [build_graph(s, "cgcnn") for s, _ in rows]
    y = np.array([r["formation_energy_peratom"] for _, r in rows])
    ids = [s.id for s, _ in rows]
    split = lambda a, b: Split(graphs[a:b], y[a:b], ids[a:b])
    enc = build_encoder("cgcnn", build_featurizer("onehot"))
    res = train_supervised(enc, split(0, 8), split(8, 10), split(10, 12),
                           TrainSettings(epochs=1, batch_size=4, message_passing={setting!r}), seed=0, progress=False)
    graphops.set_implementation({setting!r})
    b = collate([(g, 0.0) for g in graphs[:4]], quotient=True)
    view = drop_edges(b, 0.1, np.random.default_rng(0))
    both = concat_batches(b, view)
    enc(both, mask_atoms(both, 0.1, np.random.default_rng(0))).pred.sum().backward()
    assert res.extra["message_passing"] == "torch", res.extra
    assert "dgl" not in sys.modules or sys.modules["dgl"] is None, "dgl was imported"
    print("ok", res.val_mae)
"""


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=env)


@pytest.mark.parametrize("case", ["torch-forced", "dgl-absent"])
def test_nothing_imports_dgl_when_the_torch_implementation_is_used(case):
    block = 'sys.modules["dgl"] = None  # import dgl now fails, as where no wheel installs' if case == "dgl-absent" else ""
    setting = "torch" if case == "torch-forced" else "auto"
    code = textwrap.dedent(_TRAIN_ONE_EPOCH).format(tests=str(ROOT / "tests"), block=block, setting=setting)
    out = _run(code)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]
