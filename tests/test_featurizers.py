"""Featurizers and per-element tables: widths, table loading, fallback rows for missing elements, hashes,
and named errors for bad table files."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from bench.embeddings import CRYSATOM_PUBLISHED, TableError, load_table, save_table, table_hash
from bench.featurizers import CoverageWarning, FeaturizerError, build_featurizer, random_vectors, task_coverage
from bench.registry import FEATURIZERS, RegistryError
from bench.structures import ELEMENTS

Z = torch.tensor([1, 8, 11, 17, 26, 29, 92])  # H O Na Cl Fe Cu U


def _quiet(spec, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_featurizer(spec, **kw)


def test_registered_names():
    assert set(FEATURIZERS.list()) >= {"onehot", "cgcnn", "learned", "random", "crysatom-published", "embedding",
                                       "embedding-init"}


def test_onehot_is_118_wide():
    f = build_featurizer("onehot")
    x = f(Z)
    assert f.dim == 118 and x.shape == (7, 118)
    assert torch.equal(x.argmax(1), Z - 1) and torch.equal(x.sum(1), torch.ones(7))
    assert f.table_hash is None and list(f.parameters()) == []
    with pytest.raises(FeaturizerError, match="1..118"):
        f(torch.tensor([0, 1]))
    with pytest.raises(FeaturizerError, match="1..118"):
        f(torch.tensor([119]))


def test_cgcnn_bits_from_jarvis_table():
    f = build_featurizer("cgcnn")
    x = f(Z)
    assert f.dim == 92 and x.shape == (7, 92)
    # the CGCNN bits are one-hot blocks: 9 blocks -> at most 9 ones per element, and only 0/1 values
    assert set(torch.unique(x).tolist()) <= {0.0, 1.0}
    assert torch.all(x.sum(1) <= 9) and torch.all(x.sum(1) >= 5)
    assert f.coverage["present"] == 100 and f.coverage["missing"][0] == "Md" and len(f.coverage["missing"]) == 18
    assert len(f.table_hash) == 64
    assert not any(p.requires_grad and n != "fallback" for n, p in f.named_parameters())


def test_learned_width_and_training():
    f = build_featurizer("learned", dim=24)
    assert f.dim == 24 and f(Z).shape == (7, 24)
    assert sum(p.numel() for p in f.parameters() if p.requires_grad) == 119 * 24
    assert build_featurizer("learned").dim == 64 and f.table_hash is None


def test_random_control_is_seeded_unit_vectors():
    f = build_featurizer("random")
    assert f.dim == 200
    x = f(Z)
    assert torch.allclose(x.norm(dim=1), torch.ones(7), atol=1e-5)
    assert list(f.parameters()) == []  # frozen, full coverage
    g = build_featurizer("random", dim=200)
    assert torch.equal(g(Z), x) and g.table_hash == f.table_hash
    h = build_featurizer("random:1")
    assert not torch.allclose(h(Z), x) and h.table_hash != f.table_hash
    # element Z's vector does not depend on which other elements exist
    assert np.allclose(random_vectors(16)["Fe"], random_vectors(16, seed=0)["Fe"])
    with pytest.raises(FeaturizerError, match="SEED"):
        build_featurizer("random:abc")
    # an explicit width, for a control matching a table of another width; same seed -> same directions source
    w = build_featurizer("random:0:64")
    assert w.dim == 64 and torch.allclose(w(Z).norm(dim=1), torch.ones(7), atol=1e-5)
    assert torch.equal(build_featurizer("random:0:200")(Z), x)
    with pytest.raises(FeaturizerError, match="64-d but 32-d"):
        build_featurizer("random:0:64", dim=32)
    with pytest.raises(FeaturizerError, match="SEED"):
        build_featurizer("random:0:64:1")


def test_crysatom_published_table():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # building announces nothing: coverage is counted per task (task_coverage)
        f = build_featurizer("crysatom-published")
    t = load_table(CRYSATOM_PUBLISHED)
    assert f.dim == 200 == t.dim and f.coverage["present"] == 89 == len(t.vectors)
    assert f.table_hash == t.hash == table_hash(t.vectors)
    assert "Po" in f.coverage["missing"] and "Fe" not in f.coverage["missing"]
    assert np.allclose(f(torch.tensor([26])).detach().numpy()[0], t.vectors["Fe"].astype(np.float32))
    # 29 trainable fallback rows, the table itself frozen (a buffer)
    assert f.fallback.shape == (29, 200) and "table" in dict(f.named_buffers())


def test_embedding_frozen_with_fallback_rows(tmp_path):
    vecs = {"H": [1.0, 0.0, 0.5], "O": [0.0, 1.0, -0.5], "Fe": [2.0, 2.0, 2.0]}
    path = tmp_path / "t.json"
    path.write_text(json.dumps(vecs))
    f = build_featurizer(f"embedding:{path}")
    assert f.dim == 3 and f.coverage == {"present": 3, "missing": [s for s in ELEMENTS[1:] if s not in vecs]}
    x = f(torch.tensor([1, 8, 26, 11]))
    assert torch.allclose(x[:3], torch.tensor([vecs["H"], vecs["O"], vecs["Fe"]]))
    # Na is missing: it gets its own trainable row; the table rows get no gradient (frozen)
    x.sum().backward()
    na_row = f.row[11] - 119
    assert f.fallback.grad[na_row].abs().sum() > 0
    assert f.fallback.grad.abs().sum() == f.fallback.grad[na_row].abs().sum()
    assert not f.table.requires_grad
    assert f.table_hash == load_table(path).hash
    with pytest.raises(FeaturizerError, match="width 3"):
        _quiet(f"embedding:{path}", dim=4)


def test_embedding_init_is_trainable(tmp_path):
    path = tmp_path / "t.json"
    save_table(path, {"H": [1.0, 2.0], "O": [3.0, 4.0]}, {"objective": "test"})
    f = _quiet(f"embedding-init:{path}")
    x = f(torch.tensor([1, 8]))
    assert torch.allclose(x, torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    x.sum().backward()
    assert f.weight.grad[1].abs().sum() > 0 and f.weight.grad[8].abs().sum() > 0
    assert f.coverage["present"] == 2 and len(f.coverage["missing"]) == 116


def test_save_load_roundtrip_and_hash(tmp_path):
    rng = np.random.default_rng(0)
    vecs = {s: rng.standard_normal(8).astype(np.float32) for s in ("Fe", "H", "O")}
    h = save_table(tmp_path / "a.json", vecs, {"objective": "unate", "seed": 1})
    t = load_table(tmp_path / "a.json")
    assert t.hash == h == table_hash(vecs) and t.meta["objective"] == "unate" and t.meta["hash"] == h
    assert list(json.loads((tmp_path / "a.json").read_text())["table"]) == ["H", "O", "Fe"]  # by Z
    for s in vecs:
        assert np.array_equal(t.vectors[s].astype(np.float32), vecs[s])
    # the hash ignores metadata and key order, and sees any change of a number
    save_table(tmp_path / "b.json", dict(reversed(list(vecs.items()))), {"other": True})
    assert load_table(tmp_path / "b.json").hash == h
    vecs["H"] = vecs["H"].copy()
    vecs["H"][0] += 1e-3
    assert table_hash(vecs) != h
    # plain {symbol: [...]} files load too
    (tmp_path / "plain.json").write_text(json.dumps({"H": [1, 2], "He": [3, 4]}))
    assert load_table(tmp_path / "plain.json").dim == 2


@pytest.mark.parametrize(
    "content,match",
    [
        ("[1, 2, 3]", "must be a JSON mapping"),
        ('{"H": [1, 2], "O": [1, 2, 3]}', "ragged table: 'O' has 3 values but 'H' has 2"),
        ('{"H": [1, 2], "Xx": [1, 2]}', "unknown element symbol 'Xx'"),
        ('{"H": [1, 2], "Fee": [1, 2]}', "Did you mean 'Fe'"),
        ('{"H": [1, "a"]}', "'H' holds a non-number"),
        ('{"H": []}', "'H' must be a non-empty list"),
        ("{}", "empty"),
        ('{"meta": {}, "table": [1]}', "'table' must be a mapping"),
        ("{not json", "not valid JSON"),
        ('{"H": [1, NaN]}', "NaN or inf"),
    ],
)
def test_bad_tables_give_named_errors(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(TableError, match=match) as e:
        load_table(path)
    assert str(path) in str(e.value)
    with pytest.raises(TableError):
        build_featurizer(f"embedding:{path}")


def test_unknown_and_malformed_specs(tmp_path):
    with pytest.raises(RegistryError, match="Did you mean 'onehot'"):
        build_featurizer("onehott")
    with pytest.raises(RegistryError, match="Did you mean 'embedding'"):
        build_featurizer("embeding:x.json")
    with pytest.raises(FeaturizerError, match="needs a table"):
        build_featurizer("embedding")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_featurizer(f"embedding:{tmp_path / 'nope.json'}")
    with pytest.raises(FeaturizerError, match="takes no"):
        build_featurizer("onehot:3")
    with pytest.raises(FeaturizerError, match="width 118"):
        build_featurizer("onehot", dim=10)
    with pytest.raises(FeaturizerError, match="positive"):
        build_featurizer("learned", dim=0)
    with pytest.raises(FeaturizerError, match="integer atomic numbers"):
        build_featurizer("learned")(torch.tensor([1.0]))


def test_save_refuses_bad_tables(tmp_path):
    with pytest.raises(TableError, match="unknown element"):
        save_table(tmp_path / "x.json", {"Q": [1.0]})
    assert not (tmp_path / "x.json").exists()


def test_coverage_is_counted_over_the_task_elements_and_announced_once(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"H": [1.0, 0.0], "O": [0.0, 1.0], "Fe": [2.0, 2.0]}))
    f = build_featurizer(f"embedding:{path}")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        cov = task_coverage(f, [8, 26, 8, 11, 1, 17], "my_task")
    assert cov == {"task_elements": 5, "present": 3, "missing": ["Na", "Cl"]}
    assert [str(w.message) for w in seen] == [
        "featurizer 'embedding:" + str(path) + "': 2 of the 5 elements of task 'my_task' are not in the table "
        "(Na, Cl); each gets a trainable fallback row"]
    assert seen[0].category is CoverageWarning
    # shown as one plain line, not with this module's file, line number and source line
    assert warnings.formatwarning(seen[0].message, CoverageWarning, "x.py", 1) == f"bench: {seen[0].message}\n"
    # full coverage: nothing to say; announce=False (run ids computed by the sweep driver): silent as well
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert task_coverage(f, [1, 8], "t")["missing"] == []
        assert task_coverage(f, [1, 11], "t", announce=False)["missing"] == ["Na"]
        assert task_coverage(build_featurizer("onehot"), [118, 1], "t")["present"] == 2


def test_a_table_covering_none_of_the_task_elements_is_refused(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"He": [1.0, 0.0], "Ne": [0.0, 1.0]}))
    f = build_featurizer(f"embedding:{path}")
    with pytest.raises(FeaturizerError, match=r"covers none of the 2 elements of task 'oxides' \(O, Fe\)"):
        task_coverage(f, [26, 8], "oxides", announce=False)


def test_random_control_is_the_same_on_every_machine():
    """np.linalg.norm's last bit depends on the BLAS kernel the CPU gets (AVX2 vs AVX-512), which changed the
    random control's hash and run ids between machines; the norm is now computed one fixed way (the AVX2
    kernel's order, in which the committed quick-cpu records were made)."""
    import subprocess
    import sys

    from bench.embeddings import table_hash

    assert table_hash(random_vectors(64)) == "a3f84359858c01b0b66a8cc9372e2a34b9e7aae4ecfadc2cdd9535d32cd7cd65"
    assert table_hash(random_vectors(200)) == "31656e720dd05e6b400d7a1bc4686e71b022df904842539a18c3e4aae642b5a4"
    code = ("from bench.featurizers import random_vectors; from bench.embeddings import table_hash;"
            "print(table_hash(random_vectors(17, 3)))")
    for core in ("Haswell", "SkylakeX"):  # OpenBLAS kernels with different summation orders
        env = {"OPENBLAS_CORETYPE": core, "PATH": "/usr/bin:/bin"}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.split()[-1] == "34dae51ce064c7e55e6be65d35a769d16e3ff2fb05244537106ed468231e4efc", core
