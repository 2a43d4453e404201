"""The shared pretraining loop: corpus -> graphs -> objective.loss steps -> per-element embedding table.

Both seed papers (UNATE, Sole et al., arXiv 2605.25866, 2026; CrysAtom, Mukherjee et al., LoG 2024) exchange a
**per-element table**. How an objective's table is made is part of its definition, so each objective declares
the epoch selection and the extraction its reference uses (``Objective.default_selection`` /
``default_extraction``, see objectives/unate.py and objectives/crysatom.py for the seed code they follow), and
``PretrainConfig.selection`` / ``extraction`` override them:

- selection ``validation`` (UNATE): a seeded ``val_fraction`` (10 %) of the corpus is held out; its batches are
  corrupted once (every epoch sees the same views, as the reference pre-augments them) and scored in eval mode
  after every epoch; the epoch with the lowest validation loss is kept. ``train-loss`` (CrysAtom): the epoch with
  the lowest mean training loss over its batches. ``last``: the last epoch (crysbench's original protocol);
- extraction ``mean`` (UNATE): the kept model in eval mode on the clean graphs of the training corpus, the mean of
  each element's *raw* final node embeddings, then L2. ``last-batch`` (CrysAtom): per element, the L2-normalised
  mean over its atoms in the last training batch of the kept epoch that contains it, from that batch's clean
  forward pass in training mode (``Objective.extraction_nodes``). ``uniform`` (crysbench's original extraction,
  the base default for plugin objectives): eval mode, each atom's embedding L2-normalised, averaged per element,
  then L2 (``extract_table``).

Neither reference normalises each atom's vector before averaging; ``uniform`` does (so that atoms with large
embeddings do not dominate the mean), which is why it is an option and not a default for the two references.
The table metadata records the rule, the selected epoch and the loss histories. Elements never seen get no row;
downstream, ``bench.featurizers`` gives each missing element a trainable fallback row and reports coverage.

``pretrain(config)`` trains with a progress bar and periodic checkpoints (``<table>.ckpt.pt``: torch state dicts,
plain Python numbers and strings only, read back with ``weights_only=True``); rerunning the same configuration
resumes from it (the epoch order and every corruption are seeded by (seed, epoch), the corruption RNG state, the
kept epoch and a partial ``last-batch`` table are stored, so a resumed run draws what an uninterrupted one would;
with one CPU thread the resumed table is bit-identical, while multi-threaded CPU backward passes sum scatter-adds
in a varying order). ``ensure_table(config)`` caches tables under ``cache_dir()/tables/<objective>-<hash>.json``
keyed by the canonical resolved configuration plus the objective and encoder versions, so one pretraining serves
every encoder and later run.

The cache key leaves out where things are (``data_dir``, ``plugins``, ``device``) and how often to checkpoint: the
same configuration on the same data gives the same table wherever it runs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.cli import UserError
from bench.config import ConfigError, canonical, config_hash, from_dict, to_dict
from bench.settings import MESSAGE_PASSING, PRECISIONS
from bench.paths import atomic_path, cache_dir

DEFAULT_CORPUS = ("dft_3d_2021", "megnet", "perov5", "carbon24")
# The name of the width option of each built-in encoder's Config, tried in this order for any encoder.
WIDTH_OPTIONS = ("dim", "hidden", "width")
PRETRAIN_CODE_VERSION = "2"  # bump when the loop or extraction changes what a configuration produces
SELECTIONS = ("validation", "train-loss", "last")
EXTRACTIONS = ("mean", "last-batch", "uniform")
EXTRACTION_TEXT = {
    "mean": "eval mode, no corruption, training corpus; mean of each element's raw final node embeddings, "
            "L2-normalised (UNATE's extraction)",
    "last-batch": "per element, the L2-normalised mean of its atoms' raw final node embeddings in the last "
                  "training batch of the selected epoch that contains it, from that batch's clean training-mode "
                  "forward pass (CrysAtom's extraction)",
    "uniform": "eval mode, no corruption, training corpus; per-atom L2-normalised final node embeddings averaged "
               "per element, mean L2-normalised (crysbench's uniform extraction)",
}
SELECTION_TEXT = {
    "validation": "the epoch with the lowest loss on a seeded held-out part of the corpus, its corruptions drawn "
                  "once, eval mode (UNATE's selection)",
    "train-loss": "the epoch with the lowest mean training loss over its batches (CrysAtom's selection)",
    "last": "the last epoch",
}
# message_passing changes float rounding only (bench.graphops), like the device; precision is hashed when not fp32
_NOT_IN_HASH = ("data_dir", "plugins", "device", "checkpoint_seconds", "message_passing", "precision")


class PretrainError(UserError, ValueError):
    pass


@dataclass(frozen=True)
class PretrainConfig:
    """One pretraining run. ``None`` fields resolve to the objective's defaults (``resolve``)."""

    objective: str
    encoder: str | None = None  # None -> the objective's default encoder
    dim: int | None = None  # node-embedding width; None -> the objective's Config.dim
    featurizer: str | None = None  # None -> the objective's default featurizer
    epochs: int | None = None  # None -> the objective's reference budget (Objective.reference_epochs)
    batch_size: int = 128
    lr: float = 0.03  # both references: Adam, lr 0.03, no scheduler
    seed: int = 0
    corpus: tuple[str, ...] = DEFAULT_CORPUS  # or ("sample",)
    corpus_limit: int | None = None
    exclude_tasks: tuple[str, ...] | None = None  # None -> all nine registered JARVIS/MP tasks; () -> none
    # Also drop corpus structures that match an excluded val/test structure from another source (same reduced
    # composition, volume per atom within 2 %), e.g. the MP copy of a JARVIS test material. False: ids only.
    match_structures: bool = True
    selection: str | None = None  # validation | train-loss | last; None -> the objective's default_selection
    extraction: str | None = None  # mean | last-batch | uniform; None -> the objective's default_extraction
    val_fraction: float = 0.1  # the held-out part of the corpus for selection "validation"
    data_dir: str | None = None
    objective_options: dict = field(default_factory=dict)
    encoder_options: dict = field(default_factory=dict)
    plugins: tuple[str, ...] = ()
    device: str = "auto"
    checkpoint_seconds: float = 300.0  # also checkpointed at the end of every epoch
    message_passing: str = "auto"  # auto | dgl | torch (bench.graphops); recorded, not part of the table's key
    precision: str = "fp32"  # fp32 | bf16 autocast of the training and validation passes; part of the key if bf16

    def __post_init__(self) -> None:
        from bench.registry import suggest

        if (self.epochs is not None and self.epochs < 1) or self.batch_size < 2:
            raise ConfigError("PretrainConfig: epochs must be >= 1 and batch_size >= 2 (the contrastive losses "
                              "need two crystals per batch)")
        if self.selection is not None and self.selection not in SELECTIONS:
            raise ConfigError("PretrainConfig.selection: " + suggest(self.selection, list(SELECTIONS), "selection"))
        if self.extraction is not None and self.extraction not in EXTRACTIONS:
            raise ConfigError("PretrainConfig.extraction: " + suggest(self.extraction, list(EXTRACTIONS),
                                                                      "extraction"))
        if self.precision not in PRECISIONS:
            raise ConfigError("PretrainConfig.precision: " + suggest(self.precision, list(PRECISIONS), "precision"))
        if self.message_passing not in MESSAGE_PASSING:
            raise ConfigError("PretrainConfig.message_passing: " + suggest(self.message_passing,
                                                                           list(MESSAGE_PASSING), "value"))
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"PretrainConfig.val_fraction must be in (0, 1), got {self.val_fraction}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"PretrainConfig.lr must be a positive number, got {self.lr}")
        if self.dim is not None and self.dim < 1:
            raise ConfigError(f"PretrainConfig.dim must be positive, got {self.dim}")


def as_config(config: PretrainConfig | dict) -> PretrainConfig:
    if isinstance(config, PretrainConfig):
        return config
    if isinstance(config, dict):
        return from_dict(PretrainConfig, config, what="pretrain config")
    raise TypeError(f"expected a PretrainConfig or a dict, got {type(config).__name__}")


@dataclass(frozen=True)
class Resolved:
    """A configuration with every default filled in: what actually runs, and what the cache key hashes."""

    config: PretrainConfig
    objective_cls: Any
    objective_config: Any
    encoder: str
    encoder_options: dict
    featurizer: str
    dim: int
    exclude_tasks: tuple[str, ...]
    identity: dict
    hash: str
    epochs: int = 0
    selection: str = "last"
    extraction: str = "uniform"


def _width_option(encoder: str) -> str:
    from bench.encoders.base import encoder_class

    names = {f.name for f in dataclasses.fields(encoder_class(encoder).Config)}
    for w in WIDTH_OPTIONS:
        if w in names:
            return w
    raise PretrainError(f"encoder {encoder!r}: no width option (looked for {', '.join(WIDTH_OPTIONS)}); set the "
                        "width through --encoder-set and leave --dim out")


def resolve(config: PretrainConfig | dict) -> Resolved:
    from bench.encoders.base import encoder_class
    from bench.objectives.base import check_objective_class
    from bench.plugins import load_plugins
    from bench.registry import ENCODERS, OBJECTIVES

    config = as_config(config)
    load_plugins(list(config.plugins))
    cls = OBJECTIVES.get(config.objective)
    check_objective_class(config.objective, cls)
    obj_opts = dict(config.objective_options)
    obj_fields = {f.name for f in dataclasses.fields(cls.Config)}
    if config.dim is not None and "dim" in obj_fields:
        if "dim" in obj_opts and int(obj_opts["dim"]) != config.dim:
            raise PretrainError(f"dim {config.dim} conflicts with objective option dim={obj_opts['dim']}")
        obj_opts["dim"] = config.dim
    obj_cfg = from_dict(cls.Config, obj_opts, what=f"objective {config.objective!r} options")
    encoder = config.encoder or cls.default_encoder
    ecls = encoder_class(encoder)
    enc_opts = dict(cls.default_encoder_options or {}) if encoder == cls.default_encoder else {}
    enc_opts.update(config.encoder_options)
    dim = config.dim if config.dim is not None else getattr(obj_cfg, "dim", None)
    if dim is not None:
        w = _width_option(encoder)
        if w in config.encoder_options and int(config.encoder_options[w]) != dim:
            raise PretrainError(f"dim {dim} conflicts with encoder option {w}={config.encoder_options[w]}")
        enc_opts[w] = dim
    enc_cfg = from_dict(ecls.Config, enc_opts, what=f"encoder {encoder!r} options")
    enc_full = to_dict(enc_cfg)
    featurizer = config.featurizer or getattr(cls, "default_featurizer", "learned")
    if config.exclude_tasks is None:
        from bench.tasks.corpus import BUILTIN_TASKS

        exclude = tuple(BUILTIN_TASKS)
    else:
        exclude = tuple(t for t in config.exclude_tasks if t and t != "none")
    epochs = int(config.epochs if config.epochs is not None else getattr(cls, "reference_epochs", 10))
    selection = config.selection or getattr(cls, "default_selection", "last")
    extraction = config.extraction or getattr(cls, "default_extraction", "uniform")
    for value, allowed, what in ((selection, SELECTIONS, "default_selection"),
                                 (extraction, EXTRACTIONS, "default_extraction")):
        if value not in allowed:
            raise PretrainError(f"objective {config.objective!r}: {what} {value!r} is not one of {', '.join(allowed)}")
    identity = {
        "pretrain_code_version": PRETRAIN_CODE_VERSION,
        "objective": config.objective,
        "objective_version": OBJECTIVES.version(config.objective),
        "objective_options": to_dict(obj_cfg),
        "encoder": encoder,
        "encoder_version": ENCODERS.version(encoder),
        "encoder_options": enc_full,
        "featurizer": featurizer,
        "epochs": epochs,
        "selection": selection,
        "extraction": extraction,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "seed": config.seed,
        "corpus": list(config.corpus),
        "corpus_limit": config.corpus_limit,
        "exclude_tasks": sorted(exclude),
    }
    if config.match_structures:  # only when set, so ids-only tables keep the key they had before the option
        identity["match_structures"] = True
    if selection == "validation":
        identity["val_fraction"] = config.val_fraction
    if config.precision != "fp32":  # only when set, so fp32 tables keep the key they had before the option
        identity["precision"] = config.precision
    # the width the encoder actually has (an encoder without a width option keeps its own)
    if dim is None:
        try:
            width = enc_full.get(_width_option(encoder))
        except PretrainError:  # an encoder without a width option: known only once built
            width = None
    else:
        width = dim
    return Resolved(config, cls, obj_cfg, encoder, enc_full, featurizer, int(width or 0), exclude, identity,
                    config_hash(identity), epochs, selection, extraction)


@functools.lru_cache(maxsize=1)
def _load_corpus(sources: tuple, exclude: tuple, data_dir, limit, seed: int, match: bool):
    from bench.tasks.corpus import load_corpus

    return load_corpus(list(sources), exclude_tasks=list(exclude), data_dir=data_dir, limit=limit, seed=seed,
                       match_structures=match)


def corpus_of(r: Resolved):
    """The pretraining corpus of a resolved configuration (the last one stays in memory: ensure_table keys on it,
    then pretrain trains on it)."""
    c = r.config
    return _load_corpus(tuple(c.corpus), tuple(r.exclude_tasks), c.data_dir, c.corpus_limit, c.seed,
                        c.match_structures)


def cache_key(r: Resolved) -> str:
    """The configuration hash plus the identity of the structures the corpus holds (data files' content, ids,
    exclusions), so another or an updated data directory never reuses a table pretrained on other structures."""
    return config_hash({"config": r.hash, "corpus": corpus_of(r).key})


def table_path(config: PretrainConfig | dict) -> Path:
    r = resolve(config)
    return cache_dir() / "tables" / f"{r.config.objective}-{cache_key(r)}.json"


# ---- model construction -----------------------------------------------------------------------------------
def build_models(r: Resolved):
    """(featurizer, encoder, objective) for a resolved configuration."""
    from bench.encoders.base import build_encoder, reference_feature_dim
    from bench.featurizers import FeaturizerError, build_featurizer

    feat_dim = reference_feature_dim(r.encoder, r.encoder_options)
    try:
        featurizer = build_featurizer(r.featurizer, dim=feat_dim)
    except FeaturizerError:
        # a fixed-width featurizer (cgcnn bits, one-hot, a table) keeps its own width; the encoder's input
        # layer maps it to the encoder width
        featurizer = build_featurizer(r.featurizer)
    encoder = build_encoder(r.encoder, featurizer, r.encoder_options)
    objective = r.objective_cls(r.objective_config, encoder.embedding_dim)
    return featurizer, encoder, objective


def _batches(n: int, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """Index batches; a final batch of one crystal joins the previous one (the contrastive losses need two)."""
    order = rng.permutation(n) if rng is not None else np.arange(n)
    out = [order[k:k + batch_size] for k in range(0, n, batch_size)]
    if len(out) > 1 and len(out[-1]) < 2:
        out[-2] = np.concatenate([out[-2], out.pop()])
    return out


# ---- extraction ---------------------------------------------------------------------------------------------
def extract_table(encoder, graphs, *, batch_size: int = 256, device=None, progress: bool = False,
                  per_atom_l2: bool = True):
    """Per-element mean of the final node embeddings, L2-normalised; no corruption, eval mode, fixed order
    (deterministic). ``per_atom_l2=True`` (extraction ``uniform``) L2-normalises each atom's vector before the
    mean; ``False`` (``mean``, UNATE's extraction) averages the raw vectors. Returns (vectors {symbol: float64
    array}, atom counts {symbol: int})."""
    import torch
    import torch.nn.functional as F

    from bench.graphs import collate
    from bench.structures import MAX_Z

    device = device or torch.device("cpu")
    was_training = encoder.training
    encoder.eval()
    sums = None
    counts = torch.zeros(MAX_Z + 1, dtype=torch.float64)
    batches = _batches(len(graphs), batch_size, None)
    it = _bar(batches, progress, "extract")
    try:
        with torch.no_grad():
            for idx in it:
                b = collate([(graphs[i], None) for i in idx]).to(device)
                h = encoder(b).node.to(torch.float64).cpu()
                z = b.graph.ndata["Z"].cpu()
                if per_atom_l2:
                    h = F.normalize(h, dim=-1)
                if sums is None:
                    sums = torch.zeros(MAX_Z + 1, h.shape[1], dtype=torch.float64)
                sums.index_add_(0, z, h)
                counts.index_add_(0, z, torch.ones(len(z), dtype=torch.float64))
    finally:
        encoder.train(was_training)
    if sums is None:
        raise PretrainError("extract_table: no graphs")
    return _rows(sums / counts.clamp(min=1).unsqueeze(1), counts)


def _rows(means, counts) -> tuple[dict, dict]:
    """{symbol: L2-normalised row} and {symbol: atoms} for every element with a count (rows indexed by Z)."""
    import torch.nn.functional as F

    from bench.structures import ELEMENTS, MAX_Z

    vectors, atoms = {}, {}
    for zz in range(1, MAX_Z + 1):
        if counts[zz] > 0:
            vectors[ELEMENTS[zz]] = F.normalize(means[zz].double(), dim=0).numpy()
            atoms[ELEMENTS[zz]] = int(counts[zz])
    return vectors, atoms


class LastBatchTable:
    """CrysAtom's extraction during training: after every step, each element present in the batch gets the
    L2-normalised mean of its atoms' clean node embeddings from that step (later batches overwrite earlier ones),
    so at the end of an epoch each element holds the vector of the last batch that contained it."""

    def __init__(self, dim: int, state: dict | None = None) -> None:
        import torch

        from bench.structures import MAX_Z

        if state is not None:
            self.vectors, self.atoms = state["vectors"].clone(), state["atoms"].clone()
        else:
            self.vectors = torch.zeros(MAX_Z + 1, dim, dtype=torch.float64)
            self.atoms = torch.zeros(MAX_Z + 1, dtype=torch.float64)

    def update(self, nodes, z) -> None:
        import torch
        import torch.nn.functional as F

        h = nodes.detach().to(torch.float64).cpu()
        z = z.cpu()
        sums = torch.zeros_like(self.vectors).index_add_(0, z, h)
        cnt = torch.bincount(z, minlength=len(self.atoms)).to(torch.float64)
        here = cnt > 0
        self.vectors[here] = F.normalize(sums[here] / cnt[here].unsqueeze(1), dim=1)
        self.atoms[here] = cnt[here]

    def state(self) -> dict:
        return {"vectors": self.vectors.clone(), "atoms": self.atoms.clone()}

    def table(self) -> tuple[dict, dict]:
        return _rows(self.vectors, self.atoms)


def split_corpus(n: int, r: Resolved) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) graph indices: with selection ``validation`` a seeded ``val_fraction`` is held out (UNATE's
    rule, int(n * fraction) structures, loader/loader.py:192-201 in its seed code), else all of it trains."""
    if r.selection != "validation":
        return np.arange(n), np.zeros(0, dtype=np.int64)
    n_val = int(n * r.config.val_fraction)
    if n_val < 2 or n - n_val < 2:
        raise PretrainError(
            f"selection 'validation' holds out {r.config.val_fraction:g} of the corpus: {n} usable structures give "
            f"{n_val} for validation and {n - n_val} for training; each needs at least 2. Use a larger corpus, a "
            "larger val_fraction, or --selection train-loss / last")
    order = np.random.default_rng([r.config.seed, 3]).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _bar(items, progress: bool, desc: str):
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False, dynamic_ncols=True)


def _code_version() -> str:
    import subprocess

    import bench

    v = bench.__version__
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(bench.__file__).parent,
                             capture_output=True, text=True, timeout=5).stdout.strip()
        if sha:
            v += "+g" + sha
    except (OSError, subprocess.SubprocessError):
        pass
    return v


# ---- the loop -----------------------------------------------------------------------------------------------
def _state_copy(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def pretrain(config: PretrainConfig | dict, out: str | Path | None = None, progress: bool = True) -> Path:
    """Pretrain, select the epoch, extract and write the per-element table (JSON with metadata); returns its
    path."""
    from bench import graphops

    with graphops.use_implementation(as_config(config).message_passing):
        return _pretrain(config, out, progress)


def _pretrain(config: PretrainConfig | dict, out: str | Path | None, progress: bool) -> Path:
    import torch

    from bench import graphops
    from bench.devices import resolve_device
    from bench.embeddings import save_table
    from bench.graphs import collate, load_graphs
    from bench.train import autocast
    r = resolve(config)
    c = r.config
    out = Path(out) if out is not None else cache_dir() / "tables" / f"{c.objective}-{cache_key(r)}.json"
    ckpt_path = out.with_name(out.name + ".ckpt.pt")
    device = resolve_device(c.device)
    t0 = time.time()

    corpus = corpus_of(r)
    torch.manual_seed(c.seed)
    featurizer, encoder, objective = build_models(r)
    graphs = load_graphs(corpus.structures, encoder.graph_spec, key=corpus.key, progress=progress, on_error="skip")
    if len(graphs) < 2:
        raise PretrainError(f"pretraining corpus has {len(graphs)} usable structures; need at least 2")
    train_idx, val_idx = split_corpus(len(graphs), r)
    train = [graphs[i] for i in train_idx]
    # validation batches in a fixed order; their corruptions are drawn from a fixed seed per batch at every
    # evaluation, so every epoch is scored on the same views (UNATE pre-augments its validation set once)
    val_batches = [collate([(graphs[val_idx[i]], None) for i in idx])
                   for idx in _batches(len(val_idx), c.batch_size, None)] if len(val_idx) else []
    encoder.to(device)
    objective.to(device)
    params = [p for p in list(encoder.parameters()) + list(objective.parameters()) if p.requires_grad]
    opt = torch.optim.Adam(params, lr=c.lr)

    start_epoch, start_step, history, partial = 0, 0, [], {}
    rng_state = None
    best: dict = {"epoch": 0, "score": math.inf}
    val_history: list[float] = []
    train_scores: list[float] = []
    epoch_table_state = None
    if ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        if state.get("config_hash") != r.hash:
            _say(progress, f"ignoring checkpoint {ckpt_path}: it belongs to another configuration")
        else:
            encoder.load_state_dict(state["encoder"])
            objective.load_state_dict(state["objective"])
            opt.load_state_dict(state["optimizer"])
            start_epoch, start_step = int(state["epoch"]), int(state["step"])
            history, partial, rng_state = list(state["history"]), dict(state["partial"]), state["rng"]
            best, val_history, train_scores = dict(state["best"]), list(state["val_history"]), list(state["train_scores"])
            epoch_table_state = state.get("epoch_table")
            torch.set_rng_state(state["torch_rng"].cpu())
            _say(progress, f"resuming from {ckpt_path} at epoch {start_epoch + 1}, step {start_step}")

    epoch_table = LastBatchTable(encoder.embedding_dim, epoch_table_state if start_step else None) \
        if r.extraction == "last-batch" else None

    def save_ckpt(epoch: int, step: int, sums: dict) -> None:
        state = {
            "config_hash": r.hash,
            "epoch": epoch,
            "step": step,
            "encoder": encoder.state_dict(),
            "objective": objective.state_dict(),
            "optimizer": opt.state_dict(),
            "history": history,
            "partial": dict(sums),
            "rng": objective.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "best": best,
            "val_history": val_history,
            "train_scores": train_scores,
            "epoch_table": epoch_table.state() if epoch_table is not None and step else None,
        }
        with atomic_path(ckpt_path) as tmp:
            torch.save(state, tmp)

    def validation_loss() -> float:
        encoder.eval()
        objective.eval()
        total, n = 0.0, 0
        try:
            with torch.no_grad():
                for k, vb in enumerate(val_batches):
                    objective.rng = np.random.default_rng([c.seed, 4, k])
                    with autocast(device, c.precision):
                        loss = objective.loss(encoder, vb.to(device))["total"]
                    total += float(loss) * vb.num_graphs
                    n += vb.num_graphs
        finally:
            encoder.train()
            objective.train()
            objective.extraction_nodes = None
        return total / n

    encoder.train()
    objective.train()
    last_save = time.time()
    for epoch in range(start_epoch, r.epochs):
        batches = _batches(len(train), c.batch_size, np.random.default_rng([c.seed, epoch, 1]))
        objective.rng = np.random.default_rng([c.seed, epoch, 2])
        sums: dict[str, float] = {}
        first = 0
        if epoch == start_epoch and start_step:
            first, sums = start_step, dict(partial)
            objective.rng.bit_generator.state = rng_state
        elif epoch_table is not None:
            epoch_table = LastBatchTable(encoder.embedding_dim)
        bar = _bar(range(first, len(batches)), progress, f"pretrain {c.objective} epoch {epoch + 1}/{r.epochs}")
        for step in bar:
            idx = batches[step]
            b = collate([(train[i], None) for i in idx]).to(device)
            objective.extraction_nodes = None
            with autocast(device, c.precision):  # the backward pass runs outside, as torch.autocast asks
                parts = objective.loss(encoder, b)
            if not isinstance(parts, dict) or "total" not in parts:
                raise PretrainError(f"objective {c.objective!r}: loss() must return a dict with a 'total' key, "
                                    f"got {type(parts).__name__} {list(parts) if isinstance(parts, dict) else ''}")
            total = parts["total"]
            if not torch.isfinite(total):
                raise PretrainError(f"objective {c.objective!r}: non-finite loss at epoch {epoch + 1}, step {step} "
                                    f"({ {k: float(v) for k, v in parts.items()} }); try a smaller --lr")
            if epoch_table is not None:
                nodes = objective.extraction_nodes
                if nodes is None or nodes.shape[0] != b.graph.num_nodes():
                    raise PretrainError(
                        f"extraction 'last-batch' needs objective {c.objective!r} to set self.extraction_nodes to "
                        "the node embeddings of the clean batch in loss(); it does not: use --extraction mean or "
                        "uniform")
                epoch_table.update(nodes, b.graph.ndata["Z"])
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            sums["_n"] = sums.get("_n", 0.0) + len(idx)
            sums["_steps"] = sums.get("_steps", 0.0) + 1
            sums["_batch_total"] = sums.get("_batch_total", 0.0) + float(total.detach())
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(idx)
            if progress and hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{float(total):.4f}")
            if time.time() - last_save > c.checkpoint_seconds and step + 1 < len(batches):
                save_ckpt(epoch, step + 1, sums)
                last_save = time.time()
        n = sums.pop("_n", 1.0)
        train_scores.append(sums.pop("_batch_total", 0.0) / max(sums.pop("_steps", 1.0), 1.0))
        history.append({k: v / n for k, v in sums.items()})
        if r.selection == "validation":
            val_history.append(validation_loss())
            score = val_history[-1]
        elif r.selection == "train-loss":
            score = train_scores[-1]
        else:
            score = -float(epoch)  # every epoch beats the one before it
        if score < best["score"]:  # strictly lower: the first of equal epochs, as both references keep it
            best = {"epoch": epoch + 1, "score": score}
            if epoch_table is not None:
                best["table"] = epoch_table.state()
            elif r.selection != "last":
                best["encoder"] = _state_copy(encoder)
        save_ckpt(epoch + 1, 0, {})
        last_save = time.time()
        line = ", ".join(f"{k} {v:.4f}" for k, v in history[-1].items())
        if val_history and r.selection == "validation":
            line += f"; validation {val_history[-1]:.4f}"
        _say(progress, f"epoch {epoch + 1}/{r.epochs}: {line} (selected: epoch {best['epoch']})")

    if r.extraction == "last-batch":
        vectors, atoms = LastBatchTable(encoder.embedding_dim, best["table"]).table()
    else:
        if "encoder" in best:
            encoder.load_state_dict(best["encoder"])
        vectors, atoms = extract_table(encoder, train, batch_size=max(c.batch_size, 64), device=device,
                                       progress=progress, per_atom_l2=r.extraction == "uniform")
    if not vectors:
        raise PretrainError("pretraining produced an empty table")
    info = corpus.info
    selection = {"rule": r.selection, "description": SELECTION_TEXT[r.selection], "epoch": best["epoch"],
                 "score": None if not math.isfinite(best["score"]) or r.selection == "last" else best["score"],
                 "train_loss_per_epoch": train_scores}
    if r.selection == "validation":
        selection.update(val_fraction=c.val_fraction, val_size=int(len(val_idx)), train_size=int(len(train_idx)),
                         val_loss_per_epoch=val_history)
    meta = {
        "kind": "pretrained",
        "objective": c.objective,
        "objective_version": r.identity["objective_version"],
        "objective_options": r.identity["objective_options"],
        "encoder": r.encoder,
        "encoder_version": r.identity["encoder_version"],
        "encoder_options": r.encoder_options,
        "featurizer": r.featurizer,
        "dim": len(next(iter(vectors.values()))),
        "corpus": {
            "sources": info.get("sources_requested"),
            "sources_found": info.get("sources_found"),
            "sources_missing": info.get("sources_missing"),
            "size": len(graphs),
            "structures": len(corpus),
            "graphs_skipped": len(getattr(graphs, "skipped", [])),
            "limit": c.corpus_limit,
            "exclude_tasks": list(r.exclude_tasks),
            "exclusion_rule": info.get("leakage_rule"),
            "match_structures": bool(c.match_structures),
            "excluded": info.get("excluded"),
            "per_source": info.get("per_source"),
        },
        "seed": c.seed,
        "epochs": r.epochs,
        "batch_size": c.batch_size,
        "lr": c.lr,
        "selected_epoch": best["epoch"],
        "selection": selection,
        "final_losses": history[-1] if history else {},
        "loss_history": history,
        "extraction": EXTRACTION_TEXT[r.extraction] + "; elements absent from the corpus have no row",
        "extraction_rule": r.extraction,
        "atoms_per_element": atoms,
        "coverage": len(vectors),
        "code_version": _code_version(),
        "config_hash": r.hash,
        "config": r.identity,
        "checkpoint": str(ckpt_path),
        "device": str(device),
        "message_passing": graphops.resolve(device),  # the kernels that ran (c.message_passing: what was asked)
        "precision": c.precision,  # mean/uniform extraction runs in fp32; last-batch reads the training passes
        "wall_time_s": round(time.time() - t0, 2),
    }
    save_table(out, vectors, meta)
    _say(progress, f"wrote {out} ({len(vectors)} elements, {meta['dim']}-d, epoch {best['epoch']} of {r.epochs})")
    return out


def ensure_table(config: PretrainConfig | dict, progress: bool = True) -> Path:
    """The cached table of ``config`` (pretraining it first if absent); see the module docstring."""
    path = table_path(config)
    if path.is_file():
        from bench.embeddings import TableError, load_table

        try:
            load_table(path)
            return path
        except TableError as e:
            _say(True, f"cached table {path} is unreadable ({e}); pretraining again")
    return pretrain(config, out=path, progress=progress)


def _say(progress: bool, msg: str) -> None:
    if progress:
        import sys

        print(f"bench pretrain: {msg}", file=sys.stderr)


def canonical_identity(config: PretrainConfig | dict) -> str:
    """The canonical JSON the cache key hashes (for inspection)."""
    return canonical(resolve(config).identity)
