"""The run record: one JSON file per run, its versioned schema, the run id, atomic write, read and validate.

A record is the only thing the leaderboard reads (Ray's result folders never are). Its ``run_id`` is the hash of
the canonical *identity* of a run: exactly the fields that determine its numbers (task and its version, encoder
with version and resolved options, featurizer spec with version and table hash, fraction, seed, training
settings including epochs, subset limits, graph spec and graph code version). Where the record is stored,
whether a progress bar was shown and which device ran it are not part of it, so an identical re-run is
recognised and served from the store instead of being trained again (``bench.runner.run_one``).

Fields (schema_version 1; ``validate_record`` checks the required ones):

* every record: schema_version, run_id, identity (the hashed dict), status ("ok"/"failed"), created_at (UTC ISO),
  git_sha, versions (python, crysbench, torch, dgl, numpy, jarvis-tools), hardware (cpu, cpu_count,
  torch_threads, gpu), device, task, encoder, featurizer (the spec as given), features_label (display name),
  fraction, seed, wall_time_s; a failed record adds error (and traceback).
* ok records add: unit, dataset_key, encoder_version, encoder_options (resolved), featurizer_version,
  table_hash, train_settings (resolved), n_train/n_val/n_test, val_mae and test_mae (both at selected_epoch,
  1-based, chosen on validation MAE only), epochs (asked), epochs_run, n_params (trainable), predictions
  {ids, targets, predictions} (the test set, task unit), curve {train_loss (standardised units), val_mae,
  epoch_time_s, lr} one entry per epoch. Written by bench.runner also: data_source, limits, plugins,
  featurizer_coverage, n_params_total, target_mean/target_std (training subset), train_time_s.

Records live at ``<store>/records/<run_id>.json``: one file per run id, so a store never holds duplicates.
Aggregates (means, relative changes, significance) are never stored; they are computed when rendering.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench.config import canonical, config_hash
from bench.paths import atomic_path

SCHEMA_VERSION = 1
RUN_ID_LENGTH = 20
STATUSES = ("ok", "failed")
# Training settings that change how the same function is evaluated (float rounding only, like the device), not
# the protocol: left out of a run's identity and of the leaderboard's protocol grouping.
EVALUATION_ONLY_SETTINGS = ("symmetry_reduce", "message_passing")
# Training settings added after schema 1, with the value that reproduces what runs did before they existed: at
# that value they are left out of a run's identity and of the protocol grouping, so adding a setting does not
# change the run id of every earlier record (and a sweep in progress keeps pooling with its older records).
SETTINGS_ADDED_AT_DEFAULT: dict[str, Any] = {"lr_milestones": [], "lr_gamma": 0.1, "precision": "fp32"}


def identity_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The training settings that determine a run's numbers: without the evaluation-only ones and without
    later-added settings at their neutral default (``SETTINGS_ADDED_AT_DEFAULT``)."""
    out = {}
    for k, v in settings.items():
        if k in EVALUATION_ONLY_SETTINGS:
            continue
        if k in SETTINGS_ADDED_AT_DEFAULT and _plain(v) == _plain(SETTINGS_ADDED_AT_DEFAULT[k]):
            continue
        out[k] = v
    return out


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


class RecordError(ValueError):
    """A record that does not match the schema; the message names the file (if any) and the field."""


def run_id(identity: dict[str, Any]) -> str:
    """Hash of the canonical identity dict (sorted keys, no whitespace): stable across processes and machines."""
    if not isinstance(identity, dict):
        raise TypeError(f"run identity must be a dict, got {type(identity).__name__}")
    return config_hash(identity, RUN_ID_LENGTH)


# field -> allowed types, for every record (status ok or failed)
_COMMON: dict[str, tuple[type, ...]] = {
    "schema_version": (int,),
    "run_id": (str,),
    "status": (str,),
    "created_at": (str,),
    "identity": (dict,),
    "git_sha": (str, type(None)),
    "versions": (dict,),
    "hardware": (dict,),
    "device": (str,),
    "task": (str,),
    "encoder": (str,),
    "featurizer": (str,),
    "features_label": (str,),
    "fraction": (int, float),
    "seed": (int,),
    "wall_time_s": (int, float),
}
# field -> allowed types, additionally required when status == "ok"
_OK: dict[str, tuple[type, ...]] = {
    "unit": (str,),
    "dataset_key": (str,),
    "encoder_version": (str,),
    "encoder_options": (dict,),
    "featurizer_version": (str,),
    "table_hash": (str, type(None)),
    "train_settings": (dict,),
    "n_train": (int,),
    "n_val": (int,),
    "n_test": (int,),
    "val_mae": (int, float),
    "test_mae": (int, float),
    "selected_epoch": (int,),
    "epochs": (int,),
    "epochs_run": (int,),
    "n_params": (int,),
    "predictions": (dict,),
    "curve": (dict,),
}


def _check_type(rec: dict, key: str, types: tuple[type, ...], where: str) -> None:
    if key not in rec:
        raise RecordError(f"{where}: missing field {key!r}")
    v = rec[key]
    if isinstance(v, bool) and bool not in types:
        raise RecordError(f"{where}: field {key!r} must be {'/'.join(t.__name__ for t in types)}, got {v!r}")
    if not isinstance(v, types):
        names = "/".join(t.__name__ for t in types)
        raise RecordError(f"{where}: field {key!r} must be {names}, got {type(v).__name__} {v!r:.60}")


def validate_record(rec: Any, where: str = "record") -> dict:
    """Check ``rec`` against the schema; return it unchanged or raise ``RecordError`` naming the field."""
    if not isinstance(rec, dict):
        raise RecordError(f"{where}: a record is a JSON object, got {type(rec).__name__}")
    if "schema_version" in rec and rec["schema_version"] != SCHEMA_VERSION:
        raise RecordError(
            f"{where}: schema_version {rec['schema_version']!r} is not the supported version {SCHEMA_VERSION}; "
            "re-run it or convert the store"
        )
    for k, t in _COMMON.items():
        _check_type(rec, k, t, where)
    if rec["status"] not in STATUSES:
        raise RecordError(f"{where}: status must be one of {', '.join(STATUSES)}, got {rec['status']!r}")
    if rec["run_id"] != run_id(rec["identity"]):
        raise RecordError(f"{where}: run_id {rec['run_id']!r} does not match the hash of its identity")
    if not 0 < float(rec["fraction"]) <= 1:
        raise RecordError(f"{where}: fraction must be in (0, 1], got {rec['fraction']!r}")
    if rec["status"] == "failed":
        _check_type(rec, "error", (str,), where)
        return rec
    for k, t in _OK.items():
        _check_type(rec, k, t, where)
    for k in ("val_mae", "test_mae", "wall_time_s"):
        if not math.isfinite(float(rec[k])) or rec[k] < 0:
            raise RecordError(f"{where}: field {k!r} must be a finite non-negative number, got {rec[k]!r}")
    for k in ("n_train", "n_val", "n_test"):
        if rec[k] < 1:
            raise RecordError(f"{where}: field {k!r} must be >= 1, got {rec[k]!r}")
    if not 1 <= rec["selected_epoch"] <= rec["epochs_run"] <= rec["epochs"]:
        raise RecordError(
            f"{where}: need 1 <= selected_epoch <= epochs_run <= epochs, got "
            f"{rec['selected_epoch']}, {rec['epochs_run']}, {rec['epochs']}"
        )
    preds = rec["predictions"]
    for k in ("ids", "targets", "predictions"):
        if not isinstance(preds.get(k), list):
            raise RecordError(f"{where}: predictions.{k} must be a list")
        if len(preds[k]) != rec["n_test"]:
            raise RecordError(f"{where}: predictions.{k} has {len(preds[k])} entries for n_test = {rec['n_test']}")
    curve = rec["curve"]
    for k in ("train_loss", "val_mae"):
        if not isinstance(curve.get(k), list) or len(curve[k]) != rec["epochs_run"]:
            raise RecordError(f"{where}: curve.{k} must be a list with one entry per epoch run ({rec['epochs_run']})")
    return rec


def record_path(store: str | Path, rid: str) -> Path:
    return Path(store) / "records" / f"{rid}.json"


def write_record(store: str | Path, rec: dict, *, overwrite_ok: bool = False) -> Path:
    """Validate and write ``rec`` atomically to ``<store>/records/<run_id>.json``.

    One file per run id. A failed record never replaces a stored ok record (a crash on a re-run must not
    destroy a good result); an ok record replaces a failed one. An existing ok record is kept unless
    ``overwrite_ok`` (same run id means the same numbers, so keeping the first is the safe choice).
    """
    validate_record(rec)
    path = record_path(store, rec["run_id"])
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if isinstance(old, dict) and old.get("status") == "ok" and (rec["status"] == "failed" or not overwrite_ok):
            return path
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            # allow_nan=False: NaN/inf are not JSON; validation already refused them in the metrics.
            json.dump(rec, f, indent=1, sort_keys=True, allow_nan=False)
            f.write("\n")
    return path


def read_record(path: str | Path) -> dict:
    path = Path(path)
    try:
        rec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RecordError(f"{path}: not valid JSON ({e})") from None
    validate_record(rec, where=str(path))
    if path.stem != rec["run_id"]:
        raise RecordError(f"{path}: file name does not match run_id {rec['run_id']!r}")
    return rec


def find_record(store: str | Path, rid: str) -> dict | None:
    """The stored record for ``rid``, or None."""
    path = record_path(store, rid)
    return read_record(path) if path.exists() else None


def read_records(store: str | Path, *, status: str | None = None) -> list[dict]:
    """Every record under ``<store>/records``, validated, sorted by run id (deterministic order)."""
    root = Path(store) / "records"
    if not root.is_dir():
        return []
    recs = [read_record(p) for p in sorted(root.glob("*.json"))]
    if status is not None:
        recs = [r for r in recs if r["status"] == status]
    return recs


def identity_text(identity: dict[str, Any]) -> str:
    """The canonical text that ``run_id`` hashes (for debugging why two runs differ)."""
    return canonical(identity)


__all__ = [
    "SCHEMA_VERSION",
    "RecordError",
    "run_id",
    "validate_record",
    "write_record",
    "read_record",
    "read_records",
    "find_record",
    "record_path",
    "identity_text",
]
