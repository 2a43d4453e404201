"""``run_one(config: dict) -> record``: the one function a Ray trial, a subprocess or ``bench train`` calls.

A run is (task, encoder, featurizer, label fraction, seed, settings) -> one record (bench/records.py), following
../shared/spec/protocol.md: train on a seeded fraction of the training split, select the epoch on validation MAE,
report the test MAE at that epoch.

The config is a plain dict (names and values only, never classes) so that it pickles to any worker. A fresh worker
starts with empty registries, so the first thing done here is ``load_plugins(config["plugins"])``. The dict is
then parsed strictly into the frozen ``RunConfig`` (an unknown key is an error with a suggestion) and every
component is resolved *before* any training: a bad fraction, encoder, task, featurizer, train option or device
fails fast with a named error.

Idempotency: the run id is the hash of everything that determines the numbers (records.run_id); when the store
already holds an ok record with this id it is returned without training.
"""

from __future__ import annotations

import datetime as _dt
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.config import ConfigError, from_dict, to_dict
from bench.plugins import load_plugins
from bench import records
from bench.records import SCHEMA_VERSION, find_record, identity_settings, write_record
from bench.registry import suggest

# Bump when the training loop or the record-building changes numbers for an otherwise identical config.
RUN_CODE_VERSION = "1"


@dataclass(frozen=True)
class RunConfig:
    """One run. ``features`` is a featurizer spec (``onehot``, ``cgcnn``, ``embedding:<path.json>``, ...)."""

    task: str
    encoder: str
    features: str
    features_label: str | None = None  # display name; default: the table's objective, else the spec
    fraction: float = 1.0
    seed: int = 0
    epochs: int | None = None  # None: the encoder's reference (configs/encoders/<name>.yaml)
    device: str = "auto"
    data_dir: str | None = None
    plugins: tuple[str, ...] = ()
    encoder_options: dict[str, Any] = field(default_factory=dict)
    train_options: dict[str, Any] = field(default_factory=dict)  # overrides of TrainSettings keys
    train_limit: int | None = None
    val_limit: int | None = None
    test_limit: int | None = None
    store: str | None = None
    progress: bool = False


def parse_config(config: dict[str, Any]) -> RunConfig:
    """Strict: unknown keys (did-you-mean), wrong types and out-of-range values are ``ConfigError``s."""
    if not isinstance(config, dict):
        raise ConfigError(f"run config must be a mapping, got {type(config).__name__}")
    cfg = from_dict(RunConfig, config, "run config")
    if not 0.0 < cfg.fraction <= 1.0:
        raise ConfigError(f"run config: fraction must be in (0, 1] (a fraction of the training split), got {cfg.fraction!r}")
    if cfg.seed < 0:
        raise ConfigError(f"run config: seed must be >= 0, got {cfg.seed}")
    if cfg.epochs is not None and cfg.epochs < 1:
        raise ConfigError(f"run config: epochs must be >= 1, got {cfg.epochs}")
    for k in ("train_limit", "val_limit", "test_limit"):
        v = getattr(cfg, k)
        if v is not None and v < 1:
            raise ConfigError(f"run config: {k} must be a positive integer or null, got {v}")
    for k in ("task", "encoder", "features"):
        if not getattr(cfg, k):
            raise ConfigError(f"run config: {k} must be a non-empty string")
    return cfg


# ---- component resolution ---------------------------------------------------------------------------------


@dataclass
class Prepared:
    """Everything resolved from a RunConfig before data is loaded."""

    cfg: RunConfig
    device: Any
    featurizer: Any
    featurizer_kind: str
    features_label: str
    encoder_cls: Any
    encoder_version: str
    encoder_options: dict[str, Any]  # fully resolved Config
    settings: Any  # TrainSettings
    graph_spec: str
    coverage: dict | None = None  # the featurizer's coverage of the task's elements (set once the data is loaded)


def _table_meta(spec: str) -> dict:
    kind, _, arg = spec.partition(":")
    if kind not in ("embedding", "embedding-init") or not arg:
        return {}
    from bench.embeddings import load_table

    try:
        return dict(load_table(arg).meta or {})
    except Exception:
        return {}


def _default_label(spec: str) -> str:
    kind, _, arg = spec.partition(":")
    if kind in ("embedding", "embedding-init"):
        meta = _table_meta(spec)
        base = str(meta.get("objective") or meta.get("name") or Path(arg).stem)
        return base if kind == "embedding" else f"{base}-init"
    return spec


def encoder_reference(encoder: str):
    """(model options, TrainSettings) from configs/encoders/<encoder>.yaml. An encoder without a yaml (a
    plugin's) gets its Config defaults and the default TrainSettings, with a notice."""
    from bench.encoders.base import TrainSettings, load_encoder_config

    try:
        return load_encoder_config(encoder)
    except FileNotFoundError:
        print(f"bench: encoder {encoder!r} has no configs/encoders/{encoder}.yaml; using its Config defaults "
              "and the default TrainSettings", file=sys.stderr)
        return {}, TrainSettings()


def resolve_train_settings(settings: Any, epochs: int | None, overrides: dict[str, Any]):
    """The reference TrainSettings with ``overrides`` and ``epochs`` applied (unknown keys: did-you-mean)."""
    base = to_dict(settings)
    for k in overrides:
        if k not in base:
            raise ConfigError("run config train_options: " + suggest(k, list(base), "train setting"))
    merged = {**base, **overrides}
    if epochs is not None:
        merged["epochs"] = epochs
    return from_dict(type(settings), merged, "train settings")


def prepare(cfg: RunConfig) -> Prepared:
    from bench.devices import resolve_device
    from bench.encoders import build_encoder  # noqa: F401  (import registers the built-in encoders)
    from bench.registry import ENCODERS

    device = resolve_device(cfg.device)
    _check_task(cfg)
    entry = ENCODERS.entry(cfg.encoder)
    encoder_cls = entry.obj
    model_options, reference_settings = encoder_reference(cfg.encoder)
    opts = {**model_options, **cfg.encoder_options}
    resolved = to_dict(from_dict(encoder_cls.Config, opts, f"encoder {cfg.encoder!r} options"))
    settings = resolve_train_settings(reference_settings, cfg.epochs, cfg.train_options)
    kind = cfg.features.partition(":")[0]
    featurizer = make_featurizer(cfg, resolved)
    label = cfg.features_label or _default_label(cfg.features)
    return Prepared(
        cfg=cfg,
        device=device,
        featurizer=featurizer,
        featurizer_kind=kind,
        features_label=label,
        encoder_cls=encoder_cls,
        encoder_version=entry.version,
        encoder_options=resolved,
        settings=settings,
        graph_spec=encoder_cls.graph_spec,
    )


def make_featurizer(cfg: RunConfig, encoder_options: dict[str, Any]):
    """The run's featurizer; ``learned`` gets the encoder's reference input width."""
    from bench.featurizers import build_featurizer

    dim = None
    if cfg.features.partition(":")[0] == "learned":
        from bench.encoders import reference_feature_dim

        dim = reference_feature_dim(cfg.encoder, encoder_options)
    return build_featurizer(cfg.features, dim=dim)


def _check_task(cfg: RunConfig) -> None:
    from bench.tasks import get_task

    get_task(cfg.task, cfg.data_dir)  # looks in custom tasks too; unknown -> RegistryError with suggestion


def identity(p: Prepared, dataset_key: str) -> dict[str, Any]:
    """Exactly the fields that determine a run's numbers (store, progress, device and paths are not)."""
    from bench.graphs import GRAPH_CODE_VERSION
    from bench.registry import FEATURIZERS, TASKS

    cfg = p.cfg
    return {
        "task": cfg.task,
        "task_version": TASKS.version(cfg.task),
        "dataset_key": dataset_key,
        "encoder": cfg.encoder,
        "encoder_version": p.encoder_version,
        "encoder_options": p.encoder_options,
        # the table's hash identifies its numbers; the path it was read from does not matter
        "featurizer": p.featurizer_kind if p.featurizer.table_hash else cfg.features,
        "featurizer_version": FEATURIZERS.version(p.featurizer_kind),
        "featurizer_dim": int(p.featurizer.dim),
        "table_hash": p.featurizer.table_hash,
        **({"featurizer_policy": p.featurizer.policy} if getattr(p.featurizer, "policy", None) else {}),
        "fraction": float(cfg.fraction),
        "seed": int(cfg.seed),
        # the reference featurizer named in the encoder yaml is a default, not a number-determining setting;
        # symmetry_reduce changes how the same function is evaluated (float rounding only), like the device
        "train_settings": {k: v for k, v in identity_settings(to_dict(p.settings)).items() if k != "featurizer"},
        "limits": {"train": cfg.train_limit, "val": cfg.val_limit, "test": cfg.test_limit},
        "graph_spec": p.graph_spec,
        "graph_code_version": GRAPH_CODE_VERSION,
        "run_code_version": RUN_CODE_VERSION,
    }




# ---- data -------------------------------------------------------------------------------------------------

_GRAPH_MEMO: dict[tuple[str, str], Any] = {}
_GRAPH_MEMO_MAX = 1  # full-size ALIGNN line graphs are large; sweeps go task by task


def task_graphs(data, spec: str, progress: bool):
    """Graphs for every entry of ``data`` (memoised in-process per dataset key and spec; cached on disk)."""
    from bench.graphs import load_graphs

    key = (data.dataset_key, spec)
    if key not in _GRAPH_MEMO:
        graphs = load_graphs(data.structures, spec, key=data.dataset_key, progress=progress)
        while len(_GRAPH_MEMO) >= _GRAPH_MEMO_MAX:
            _GRAPH_MEMO.pop(next(iter(_GRAPH_MEMO)))
        _GRAPH_MEMO[key] = graphs
    return _GRAPH_MEMO[key]


def _split(data, graphs, idx):
    from bench.train import Split

    return Split([graphs[i] for i in idx], data.targets[idx], [data.ids[i] for i in idx])


# ---- provenance -------------------------------------------------------------------------------------------


def git_sha() -> str | None:
    repo = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and sha else None


def package_versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in ("crysbench", "torch", "dgl", "numpy", "jarvis-tools"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


# ---- the run ----------------------------------------------------------------------------------------------


def _resolve(config: dict[str, Any], announce: bool = True):
    """Plugins, strict config, components and task data (with limits applied): (RunConfig, Prepared, TaskData).
    A featurizer covering none of the task's elements is refused here; with ``announce`` one warning names the
    elements it lacks."""
    if not isinstance(config, dict):
        raise ConfigError(f"run config must be a mapping, got {type(config).__name__}")
    plugins = config.get("plugins") or ()
    if isinstance(plugins, str):
        plugins = [plugins]
    resolved_plugins = load_plugins(list(plugins))
    cfg = parse_config({**config, "plugins": resolved_plugins})
    p = prepare(cfg)

    from bench.tasks import load_task

    data = load_task(cfg.task, cfg.data_dir)
    if any(v is not None for v in (cfg.train_limit, cfg.val_limit, cfg.test_limit)):
        data = data.limited(train=cfg.train_limit, val=cfg.val_limit, test=cfg.test_limit, seed=cfg.seed)
    from bench.featurizers import task_coverage

    p.coverage = task_coverage(p.featurizer, (z for s in data.structures for z in set(s.numbers.tolist())),
                               cfg.task, announce=announce)
    return cfg, p, data


def run_id(config: dict[str, Any]) -> str:
    """The run id ``run_one(config)`` would give its record (loads the task's data, trains nothing)."""
    _, p, data = _resolve(config, announce=False)
    return records.run_id(identity(p, data.dataset_key))


def run_one(config: dict[str, Any]) -> dict[str, Any]:
    """Run (or fetch from the store) one training run; return its record. See the module docstring."""
    t0 = time.perf_counter()
    cfg, p, data = _resolve(config)
    ident = identity(p, data.dataset_key)
    rid = records.run_id(ident)
    replace_bad = False
    if cfg.store:
        try:
            old = find_record(cfg.store, rid)
        except records.RecordError as e:
            if _other_schema(records.record_path(cfg.store, rid)):
                raise  # another version's record: convert the store, never overwrite it
            # unreadable or invalid (e.g. a truncated copy): run again and replace it, as the sweep's resume expects
            print(f"bench: re-running {rid}: the stored record is unusable ({e})", file=sys.stderr)
            old, replace_bad = None, True
        if old is not None and old["status"] == "ok":
            return old

    from bench.devices import describe_hardware

    base = {
        "schema_version": SCHEMA_VERSION,
        "run_id": rid,
        "identity": ident,
        "created_at": _now(),
        "git_sha": git_sha(),
        "versions": package_versions(),
        "hardware": describe_hardware(p.device),
        "device": str(p.device),
        "task": cfg.task,
        "unit": data.unit,
        "dataset_key": data.dataset_key,
        "data_source": data.source,
        "skipped_entries": len(data.skipped),  # bad entries a --skip-bad custom task (or on_error='skip') left out
        "encoder": cfg.encoder,
        "encoder_version": p.encoder_version,
        "encoder_options": p.encoder_options,
        "featurizer": cfg.features,
        "featurizer_version": ident["featurizer_version"],
        "features_label": p.features_label,
        "table_hash": p.featurizer.table_hash,
        "featurizer_coverage": p.coverage,
        # the featurizer this run used, not the encoder yaml's default (not part of the identity, see above)
        "train_settings": {**to_dict(p.settings), "featurizer": cfg.features},
        "fraction": float(cfg.fraction),
        "seed": int(cfg.seed),
        "limits": ident["limits"],
        "plugins": list(cfg.plugins),
    }
    try:
        rec = _train(p, data, base, t0)
    except Exception as e:
        if cfg.store:
            failed = {**base, "status": "failed", "error": f"{type(e).__name__}: {e}",
                      "traceback": traceback.format_exc(limit=8), "wall_time_s": time.perf_counter() - t0}
            try:
                write_record(cfg.store, failed)
            except Exception:  # never hide the original error behind a record-writing one
                pass
        raise
    if cfg.store:
        write_record(cfg.store, rec, overwrite_ok=replace_bad)
    return rec


def _other_schema(path: Path) -> bool:
    """True when ``path`` is a JSON record of another schema version (not merely broken)."""
    import json

    try:
        v = json.loads(path.read_text()).get("schema_version", SCHEMA_VERSION)
    except (OSError, ValueError, AttributeError):
        return False
    return v != SCHEMA_VERSION


def _train(p: Prepared, data, base: dict, t0: float) -> dict:
    import numpy as np

    from bench.encoders import build_encoder
    from bench.registry import ENCODERS
    from bench.tasks import label_fraction
    from bench.train import seed_everything, train_supervised, uses_quotient

    cfg = p.cfg
    train_idx = label_fraction(data.splits["train"], cfg.fraction, cfg.seed)
    graphs = task_graphs(data, p.graph_spec, cfg.progress)
    if len(graphs) != len(data.structures):  # load_graphs raises on failures by default; belt and braces
        raise RuntimeError(f"graph building kept {len(graphs)} of {len(data.structures)} structures")
    if uses_quotient(ENCODERS.get(cfg.encoder), p.settings):
        # symmetry classes of every graph, stored beside the graph cache: once per dataset, not once per trial
        from bench.graphs import cache_path
        from bench.quotient import ensure_classes

        ensure_classes(graphs, cache_path(data.structures, p.graph_spec, data.dataset_key))
    tr, va, te = (_split(data, graphs, np.asarray(i)) for i in (train_idx, data.splits["val"], data.splits["test"]))
    # Model initialisation is part of the seeded run: the featurizer is rebuilt after seeding because learned
    # tables and the fallback rows for elements a table lacks are randomly initialised.
    seed_everything(cfg.seed)
    encoder = build_encoder(cfg.encoder, make_featurizer(cfg, p.encoder_options), p.encoder_options)
    res = train_supervised(
        encoder, tr, va, te, p.settings, cfg.seed, p.device, progress=cfg.progress,
        desc=f"{cfg.encoder}/{p.features_label}/{cfg.task} f={cfg.fraction:g} s={cfg.seed}",
    )
    return {
        **base,
        "status": "ok",
        "n_train": len(tr),
        "n_val": len(va),
        "n_test": len(te),
        "val_mae": res.val_mae,
        "test_mae": res.test_mae,
        "selected_epoch": res.selected_epoch,
        "epochs": res.epochs,
        "epochs_run": res.epochs_run,
        "n_params": res.n_params,
        "n_params_total": res.n_params_total,
        "target_mean": res.target_mean,
        "target_std": res.target_std,
        "train_time_s": res.wall_time_s,
        "wall_time_s": time.perf_counter() - t0,
        "predictions": {"ids": res.test_ids, "targets": res.test_targets, "predictions": res.test_predictions},
        "curve": {"train_loss": res.train_loss, "val_mae": res.val_curve, "epoch_time_s": res.epoch_time_s,
                  "lr": res.lr},
        "symmetry_reduction": res.extra.get("symmetry_reduction"),
        # the kernels that ran (bench.graphops; train_settings.message_passing is what was asked for)
        "message_passing": res.extra.get("message_passing"),
        "precision": res.extra.get("precision"),
    }
