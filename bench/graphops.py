"""The graph operations every encoder's message passing goes through, in two implementations: DGL's fused
kernels (Wang et al., "Deep Graph Library", arXiv 1909.01315, 2019: ``dgl.ops.u_add_v``, ``u_mul_e_sum``,
``copy_e_sum``, ``copy_e_mean``, ``segment_reduce``) and plain torch (``index_select`` / ``index_add_``), as
pure-PyTorch GNN code does it (e.g. alignn 2026's ``alignn_atomwise_pure``; Fey & Lenssen's scatter ops in PyG).

A batch carries ``Graph`` objects: plain index tensors (``src``, ``dst``, per-graph node and edge counts) and
feature dicts (``ndata``, ``edata``). The torch implementation needs nothing else, so it runs on any device and
without DGL installed; the DGL implementation builds a DGL graph from the same tensors once per ``Graph``
(cached) and calls DGL's kernels, which are the numbers crysbench has always produced on CPU.

Which implementation runs (``use_implementation`` / ``TrainSettings.message_passing``):

- ``auto`` (default): DGL's kernels for tensors on the CPU where ``import dgl`` works, plain torch on any other
  device (the PyPI DGL wheel is a CPU build) and wherever DGL is absent (Python 3.13, current torch);
- ``dgl`` / ``torch``: forced. Both compute the same function; sums over edges are accumulated in a different
  order, so results agree to float rounding (tests/test_graphops.py checks every encoder in float64).

No module imports dgl unless the DGL implementation is used (or ``Graph.dgl()`` is asked for).

Mixed precision (bf16 autocast): sums over edges and segments accumulate in float32 (``upcast``), as mixed
precision training keeps reductions in full precision (Micikevicius et al., ICLR 2018); gathers keep the inputs'
common dtype. DGL's CPU kernels have no bf16 segment sum, so the DGL path computes low-precision inputs in
float32 throughout. float32 and float64 inputs are never converted.

Edge convention as in ``bench.graphs``: edge j -> i has ``src = j``, ``dst = i``; messages aggregate at dst.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterator, Literal, Sequence

import torch

from bench.cli import UserError
from bench.settings import MESSAGE_PASSING as IMPLEMENTATIONS  # one list for training, pretraining and this module

Implementation = Literal["dgl", "torch"]

_setting: str = "auto"


class GraphOpsError(UserError, RuntimeError):
    """The DGL implementation was asked for where DGL cannot be imported (or a bad setting): the CLI prints the
    message, no traceback."""


@functools.lru_cache(maxsize=1)
def dgl_available() -> bool:
    """Whether ``import dgl`` works here (it fails on Python 3.13 and with any torch but 2.0-2.2.1 for 2.1.0)."""
    try:
        import dgl  # noqa: F401
    except Exception:  # noqa: BLE001  (DGL raises OSError/ImportError/FileNotFoundError on a mismatched torch)
        return False
    return True


def check_setting(name: str) -> str:
    if name not in IMPLEMENTATIONS:
        from bench.registry import suggest

        raise GraphOpsError("message_passing: " + suggest(name, list(IMPLEMENTATIONS), "value"))
    return name


def set_implementation(name: str) -> None:
    """Process-wide choice: ``auto`` | ``dgl`` | ``torch`` (see module docstring)."""
    global _setting
    _setting = check_setting(name)


def current_setting() -> str:
    return _setting


@contextlib.contextmanager
def use_implementation(name: str) -> Iterator[None]:
    """``with use_implementation("torch"): ...``: the choice for the duration of the block."""
    global _setting
    old, _setting = _setting, check_setting(name)
    try:
        yield
    finally:
        _setting = old


def resolve(device: torch.device | str, setting: str | None = None) -> Implementation:
    """The implementation that runs for tensors on ``device`` under ``setting`` (default: the current one)."""
    setting = check_setting(setting or _setting)
    if setting == "dgl":
        if not dgl_available():
            raise GraphOpsError("message_passing='dgl' but dgl cannot be imported here; use 'auto' or 'torch'")
        return "dgl"
    if setting == "torch":
        return "torch"
    return "dgl" if torch.device(device).type == "cpu" and dgl_available() else "torch"


# ---- graphs as index tensors -------------------------------------------------------------------------------
class Graph:
    """A batched graph as index tensors: ``src``, ``dst`` (E,) int64, ``num_nodes`` N, per-graph
    ``node_counts`` / ``edge_counts`` (B,) int64, ``ndata`` / ``edata`` feature dicts. It answers the subset of
    DGLGraph's methods that objectives and tests use (``num_nodes()``, ``edges()``, ``batch_num_nodes()``,
    ``ndata``, ``local_var()``, ...), so code written against a batched DGL graph mostly works unchanged;
    ``dgl()`` gives the DGL graph itself (built once, on this graph's device)."""

    def __init__(self, src: torch.Tensor, dst: torch.Tensor, num_nodes: int, node_counts: torch.Tensor,
                 edge_counts: torch.Tensor, ndata: dict[str, torch.Tensor] | None = None,
                 edata: dict[str, torch.Tensor] | None = None) -> None:
        self.src, self.dst = src, dst
        self._num_nodes = int(num_nodes)
        self.node_counts, self.edge_counts = node_counts, edge_counts
        self.ndata: dict[str, torch.Tensor] = dict(ndata or {})
        self.edata: dict[str, torch.Tensor] = dict(edata or {})
        self._cache: dict[str, Any] = {}  # structure-derived: segment ids, in-degrees, the DGL structure

    # -- construction --
    @classmethod
    def single(cls, src: torch.Tensor, dst: torch.Tensor, num_nodes: int, **kw: Any) -> "Graph":
        return cls(src, dst, num_nodes, torch.tensor([num_nodes], dtype=torch.int64, device=src.device),
                   torch.tensor([len(src)], dtype=torch.int64, device=src.device), **kw)

    @classmethod
    def from_dgl(cls, g: Any) -> "Graph":
        src, dst = g.edges()
        return cls(src, dst, g.num_nodes(), g.batch_num_nodes(), g.batch_num_edges(), dict(g.ndata),
                   dict(g.edata))

    @staticmethod
    def batch(graphs: Sequence["Graph"]) -> "Graph":
        """One graph holding all of ``graphs`` in order (as ``dgl.batch``): node ids offset, counts and the
        features every part has concatenated."""
        base = 0
        src, dst = [], []
        for g in graphs:
            src.append(g.src + base)
            dst.append(g.dst + base)
            base += g.num_nodes()

        def cat(dicts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
            keys = set(dicts[0]).intersection(*dicts[1:])
            return {k: torch.cat([d[k] for d in dicts]) for k in dicts[0] if k in keys}

        return Graph(torch.cat(src), torch.cat(dst), base, torch.cat([g.node_counts for g in graphs]),
                     torch.cat([g.edge_counts for g in graphs]), cat([g.ndata for g in graphs]),
                     cat([g.edata for g in graphs]))

    # -- the DGLGraph subset --
    def num_nodes(self) -> int:
        return self._num_nodes

    def num_edges(self) -> int:
        return int(self.src.shape[0])

    def edges(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.src, self.dst

    def batch_num_nodes(self) -> torch.Tensor:
        return self.node_counts

    def batch_num_edges(self) -> torch.Tensor:
        return self.edge_counts

    @property
    def batch_size(self) -> int:
        return int(self.node_counts.shape[0])

    @property
    def device(self) -> torch.device:
        return self.src.device

    def in_degrees(self) -> torch.Tensor:
        if "in_deg" not in self._cache:  # index_add_, not bincount: no host sync on a GPU
            ones = torch.ones_like(self.dst)
            self._cache["in_deg"] = torch.zeros(self._num_nodes, dtype=torch.int64,
                                                device=self.device).index_add_(0, self.dst, ones)
        return self._cache["in_deg"]

    def local_var(self) -> "Graph":
        """A view sharing structure and feature tensors whose feature dicts can be changed without touching
        this graph (``DGLGraph.local_var``)."""
        out = Graph(self.src, self.dst, self._num_nodes, self.node_counts, self.edge_counts, self.ndata, self.edata)
        # the DGL forms with features ("dgl", "host") stay behind; the structure-only one is shared
        out._cache = {k: v for k, v in self._cache.items() if k not in ("dgl", "host")}
        return out

    def to(self, device: torch.device | str) -> "Graph":
        device = torch.device(device)
        if self.src.device == device:  # keeps the cache (segment ids, the DGL structure)
            return self
        out = Graph(self.src.to(device), self.dst.to(device), self._num_nodes, self.node_counts.to(device),
                    self.edge_counts.to(device), {k: v.to(device) for k, v in self.ndata.items()},
                    {k: v.to(device) for k, v in self.edata.items()})
        return out

    # -- segment ids --
    def node_graph_ids(self) -> torch.Tensor:
        """(N,) the graph index of each node."""
        if "node_seg" not in self._cache:
            self._cache["node_seg"] = _segment_ids(self.node_counts, self._num_nodes)
        return self._cache["node_seg"]

    def edge_graph_ids(self) -> torch.Tensor:
        """(E,) the graph index of each edge."""
        if "edge_seg" not in self._cache:
            self._cache["edge_seg"] = _segment_ids(self.edge_counts, self.num_edges())
        return self._cache["edge_seg"]

    # -- edits (for the corruptions; in DGL's order conventions) --
    def remove_edges(self, eids: torch.Tensor) -> "Graph":
        """Without the edges ``eids``; the rest keep their order (``dgl.remove_edges``)."""
        keep = torch.ones(self.num_edges(), dtype=torch.bool, device=self.device)
        keep[eids] = False
        counts = torch.zeros_like(self.edge_counts).index_add_(0, self.edge_graph_ids()[keep],
                                                               torch.ones_like(self.src[keep]))
        return Graph(self.src[keep], self.dst[keep], self._num_nodes, self.node_counts, counts, self.ndata,
                     {k: v[keep] for k, v in self.edata.items()})

    def remove_nodes(self, nids: torch.Tensor) -> "Graph":
        """Without the nodes ``nids`` and every edge touching them; the other nodes keep their order and are
        renumbered, the remaining edges come in ``dgl.remove_nodes``' order (stably sorted by source), so sums
        over them round as they did with DGL."""
        keep = torch.ones(self._num_nodes, dtype=torch.bool, device=self.device)
        keep[nids] = False
        new_id = torch.cumsum(keep.to(torch.int64), 0) - 1
        eids = torch.nonzero(keep[self.src] & keep[self.dst]).squeeze(1)
        eids = eids[torch.sort(self.src[eids], stable=True).indices]
        ncounts = torch.zeros_like(self.node_counts).index_add_(0, self.node_graph_ids()[keep],
                                                                torch.ones_like(new_id[keep]))
        ecounts = torch.zeros_like(self.edge_counts).index_add_(0, self.edge_graph_ids()[eids],
                                                                torch.ones_like(eids))
        return Graph(new_id[self.src[eids]], new_id[self.dst[eids]], int(keep.sum()), ncounts, ecounts,
                     {k: v[keep] for k, v in self.ndata.items()}, {k: v[eids] for k, v in self.edata.items()})

    # -- DGL --
    def dgl_structure(self) -> Any:
        """The DGL graph of this structure (no features), built once, on this graph's device."""
        g = self._cache.get("dgl_struct")
        if g is None:
            import dgl

            g = dgl.graph((self.src, self.dst), num_nodes=self._num_nodes)
            g.set_batch_num_nodes(self.node_counts)
            g.set_batch_num_edges(self.edge_counts)
            self._cache["dgl_struct"] = g
        return g

    def dgl(self) -> Any:
        """The batched DGL graph with this graph's features (the same tensors), built once."""
        g = self._cache.get("dgl")
        if g is None:
            g = self.dgl_structure().local_var()
            for k, v in self.ndata.items():
                g.ndata[k] = v
            for k, v in self.edata.items():
                g.edata[k] = v
            self._cache["dgl"] = g
        return g

    def __repr__(self) -> str:
        return (f"Graph(num_nodes={self._num_nodes}, num_edges={self.num_edges()}, batch_size={self.batch_size}, "
                f"ndata={sorted(self.ndata)}, edata={sorted(self.edata)}, device={self.device})")


def _segment_ids(counts: torch.Tensor, total: int) -> torch.Tensor:
    # output_size given: no host sync on a GPU
    return torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts, output_size=total)


_LOW = (torch.bfloat16, torch.float16)


def upcast(x: torch.Tensor) -> torch.Tensor:
    """float32 for a bf16/fp16 tensor (the accumulation dtype of sums); any other tensor unchanged."""
    return x.float() if x.dtype in _LOW else x


def _pair(a: torch.Tensor, b: torch.Tensor, full: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Both at their common dtype (float32 where ``full`` and either is low precision)."""
    if full:
        a, b = upcast(a), upcast(b)
    if a.dtype != b.dtype:
        dt = torch.promote_types(a.dtype, b.dtype)
        a, b = a.to(dt), b.to(dt)
    return a, b


def _w(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x * weight.view((-1,) + (1,) * (x.dim() - 1))


def _scatter_sum(x: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    return x.new_zeros((n,) + x.shape[1:]).index_add_(0, index, x)


# ---- the operations ----------------------------------------------------------------------------------------
def gather_src(g: Graph, x: torch.Tensor) -> torch.Tensor:
    """(E, ...) x[src]."""
    return x.index_select(0, g.src)


def gather_dst(g: Graph, x: torch.Tensor) -> torch.Tensor:
    """(E, ...) x[dst]."""
    return x.index_select(0, g.dst)


def src_add_dst(g: Graph, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(E, ...) a[src] + b[dst] (``dgl.ops.u_add_v``)."""
    if resolve(a.device) == "dgl":
        import dgl

        a, b = _pair(a, b, full=True)
        return dgl.ops.u_add_v(g.dgl_structure(), a, b)
    a, b = _pair(a, b, full=False)
    return a.index_select(0, g.src) + b.index_select(0, g.dst)


def sum_in(g: Graph, e: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """(N, ...) sum over each node's incoming edges of e (times ``weight`` (E,): the multiplicities of a
    symmetry-reduced graph) (``dgl.ops.copy_e_sum``)."""
    e = upcast(e)
    if weight is not None:
        e = _w(e, weight)
    if resolve(e.device) == "dgl":
        import dgl

        return dgl.ops.copy_e_sum(g.dgl_structure(), e)
    return _scatter_sum(e, g.dst, g.num_nodes())


def src_mul_edge_sum(g: Graph, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """(N, d) sum over incoming edges of x[src] * e (``dgl.ops.u_mul_e_sum``)."""
    x, e = _pair(x, e, full=True)
    if resolve(x.device) == "dgl":
        import dgl

        return dgl.ops.u_mul_e_sum(g.dgl_structure(), x, e)
    return _scatter_sum(x.index_select(0, g.src) * e, g.dst, g.num_nodes())


def mean_in(g: Graph, e: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """(N, ...) mean over each node's incoming edges (0 for a node without any) (``dgl.ops.copy_e_mean``).
    With ``weight`` (multiplicities, which add up to the in-degree of the full graph): sum(w e) / sum(w)."""
    e = upcast(e)
    if weight is not None:
        w = weight.view((-1,) + (1,) * (e.dim() - 1))
        return sum_in(g, e * w) / sum_in(g, w).clamp_min(1.0)
    if resolve(e.device) == "dgl":
        import dgl

        return dgl.ops.copy_e_mean(g.dgl_structure(), e)
    deg = g.in_degrees().clamp_min(1).to(e.dtype).view((-1,) + (1,) * (e.dim() - 1))
    return _scatter_sum(e, g.dst, g.num_nodes()) / deg


def node_sum(g: Graph, x: torch.Tensor) -> torch.Tensor:
    """(B, ...) per-graph sum of node rows (``dgl.ops.segment_reduce(batch_num_nodes, x, "sum")``)."""
    x = upcast(x)
    if resolve(x.device) == "dgl":
        import dgl

        return dgl.ops.segment_reduce(g.node_counts, x, "sum")
    return _scatter_sum(x, g.node_graph_ids(), g.batch_size)


def node_mean(g: Graph, x: torch.Tensor) -> torch.Tensor:
    """(B, ...) per-graph mean of node rows (0 for an empty graph)."""
    x = upcast(x)
    if resolve(x.device) == "dgl":
        import dgl

        return dgl.ops.segment_reduce(g.node_counts, x, "mean")
    n = g.node_counts.clamp_min(1).to(x.dtype).view((-1,) + (1,) * (x.dim() - 1))
    return _scatter_sum(x, g.node_graph_ids(), g.batch_size) / n


def segment_sum(x: torch.Tensor, seg: torch.Tensor, n: int, weight: torch.Tensor | None = None) -> torch.Tensor:
    """(n, ...) sum of rows of x per segment id ``seg`` (M,) (optionally weighted); plain torch on every path."""
    x = upcast(x)
    return _scatter_sum(x if weight is None else _w(x, weight), seg, n)
