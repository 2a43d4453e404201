"""The supervised loop of one run: train on the (fraction of the) training split, select the epoch on validation
MAE only, report test MAE once, at that epoch.

Protocol (../shared/spec/protocol.md; the JARVIS-Leaderboard / ALIGNN convention of Choudhary & DeCost, npj Comput.
Mater. 7, 185, 2021): targets are standardised with the mean and standard deviation of the *training subset*
(CGCNN's ``Normalizer``, Xie & Grossman, PRL 120, 145301, 2018), the loss is computed on standardised targets and
every MAE is reported in the task's unit. The model state of the epoch with the lowest validation MAE is kept
(ties: the earliest) and the test set is evaluated exactly once, with that state: never the best test MAE.

Optimiser, schedule, loss, batch size and epochs come from the encoder's ``TrainSettings``
(configs/encoders/<name>.yaml): SGD with momentum / Adam / AdamW; OneCycle (stepped per batch), cosine (stepped
per epoch, to ``lr * final_lr_fraction``), step decay (``lr_gamma`` at each of ``lr_milestones``) or constant;
MSE or L1.

Determinism: for a fixed seed on CPU two runs give bit-identical numbers (python, numpy and torch are seeded,
the shuffle uses its own seeded generator, data loading runs in-process, and
``torch.use_deterministic_algorithms`` is on for the duration of the loop; DGL's CPU kernels are deterministic).
On CUDA, scatter-adds use atomics, so GPU runs are reproducible only up to float rounding.

Message passing (``TrainSettings.message_passing``, bench/graphops.py): DGL's kernels on CPU where dgl imports,
plain torch on a GPU and wherever dgl is absent; the record says which ran. ``precision: bf16`` runs the forward
pass and the loss under ``torch.autocast`` with bfloat16 (Micikevicius et al., "Mixed Precision Training", ICLR
2018; bfloat16 needs no loss scaling), parameters, optimiser state and the selection metric staying float32.
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from bench import graphops
from bench.graphs import collate, collate_quotient


class TrainingError(RuntimeError):
    """Training could not produce a result (bad settings, a diverging loss); the message says which."""


@dataclass
class Split:
    """One split ready for training: graphs, targets in the task's unit (float64) and entry ids."""

    graphs: Sequence[Any]
    targets: np.ndarray
    ids: list[str]

    def __post_init__(self) -> None:
        self.targets = np.asarray(self.targets, dtype=np.float64)
        if not (len(self.graphs) == len(self.targets) == len(self.ids)):
            raise ValueError(
                f"split: {len(self.graphs)} graphs, {len(self.targets)} targets and {len(self.ids)} ids differ"
            )
        if len(self.graphs) == 0:
            raise TrainingError("split is empty")
        if not np.isfinite(self.targets).all():
            bad = [self.ids[i] for i in np.flatnonzero(~np.isfinite(self.targets))[:3]]
            raise TrainingError(f"split has non-finite targets (e.g. {', '.join(bad)})")

    def __len__(self) -> int:
        return len(self.graphs)


@dataclass
class TrainResult:
    val_mae: float  # at the selected epoch
    test_mae: float  # at the selected epoch (evaluated once)
    selected_epoch: int  # 1-based
    epochs: int  # asked for
    epochs_run: int
    train_loss: list[float]  # per epoch, mean over batches, standardised units
    val_curve: list[float]  # per epoch, task unit
    epoch_time_s: list[float]
    lr: list[float]  # learning rate at the end of each epoch
    test_ids: list[str]
    test_targets: list[float]
    test_predictions: list[float]
    target_mean: float
    target_std: float
    n_params: int  # trainable
    n_params_total: int
    wall_time_s: float
    extra: dict = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(device: torch.device, precision: str = "fp32"):
    """The forward-pass context of ``precision``: ``fp32`` none, ``bf16`` ``torch.autocast`` to bfloat16."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise TrainingError(f"precision must be fp32 or bf16, got {precision!r}")


@contextlib.contextmanager
def deterministic(device: torch.device):
    """Turn on torch's deterministic algorithms on CPU for the block, restoring the previous setting."""
    if device.type != "cpu":
        yield
        return
    old = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old, warn_only=old_warn)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return int(trainable), int(total)


def _setting(settings: Any, name: str, default: Any = None) -> Any:
    return getattr(settings, name, default)


def build_optimizer(params, settings: Any) -> torch.optim.Optimizer:
    name = str(_setting(settings, "optimizer", "adamw")).lower()
    lr = float(settings.lr)
    wd = float(_setting(settings, "weight_decay", 0.0) or 0.0)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(_setting(settings, "momentum", 0.9)), weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    from bench.registry import suggest

    raise TrainingError("train settings: " + suggest(name, ["sgd", "adam", "adamw"], "optimizer"))


def build_scheduler(opt, settings: Any, epochs: int, steps_per_epoch: int):
    """(scheduler or None, "batch" | "epoch")."""
    name = str(_setting(settings, "scheduler", "none")).lower()
    if name in ("none", "constant", ""):
        return None, "epoch"
    if name == "onecycle":
        pct = float(_setting(settings, "pct_start", 0.3))
        total = epochs * steps_per_epoch
        if total < 3:  # torch's OneCycleLR needs a non-empty warm-up and annealing phase
            return None, "epoch"
        # Only for tiny runs (pct_start * total < 1.5 steps, e.g. CartNet's 0.01 over a few batches): widen the
        # warm-up so that torch's phase boundaries (pct * total - 1) stay strictly inside the run.
        pct = min(max(pct, 1.5 / total), (total - 1.5) / total)
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=float(settings.lr), total_steps=total, pct_start=pct), "batch"
    if name == "step":
        milestones = [int(m) for m in _setting(settings, "lr_milestones", ())]
        gamma = float(_setting(settings, "lr_gamma", 0.1))
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=gamma), "epoch"
    if name == "cosine":
        ratio = float(_setting(settings, "final_lr_fraction", 0.01))
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs), eta_min=float(settings.lr) * ratio), "epoch"
    from bench.registry import suggest

    raise TrainingError("train settings: " + suggest(name, ["onecycle", "cosine", "step", "none"], "scheduler"))


def build_loss(settings: Any) -> nn.Module:
    name = str(_setting(settings, "loss", "mse")).lower()
    if name == "mse":
        return nn.MSELoss()
    if name in ("l1", "mae"):
        return nn.L1Loss()
    from bench.registry import suggest

    raise TrainingError("train settings: " + suggest(name, ["mse", "l1"], "loss"))


def _loader(split: Split, y: np.ndarray | None, batch_size: int, shuffle: bool, generator=None,
            quotient: bool = False):
    items = [(g, None if y is None else float(v)) for g, v in zip(split.graphs, y if y is not None else [None] * len(split))]
    return torch.utils.data.DataLoader(
        items, batch_size=batch_size, shuffle=shuffle, collate_fn=collate_quotient if quotient else collate,
        generator=generator, num_workers=0
    )


def uses_quotient(encoder: nn.Module, settings: Any = None) -> bool:
    """Whether batches for ``encoder`` get symmetry-reduced graphs: the encoder supports them and the settings
    (``symmetry_reduce``, default on) allow them."""
    return bool(getattr(encoder, "supports_quotient", False)) and bool(_setting(settings, "symmetry_reduce", True))


@torch.no_grad()
def predict(encoder: nn.Module, split: Split, device: torch.device, batch_size: int = 64,
            mean: float = 0.0, std: float = 1.0, quotient: bool | None = None,
            precision: str = "fp32") -> np.ndarray:
    """Predictions in the task's unit (de-standardised with ``mean`` and ``std``), in split order.
    ``quotient``: symmetry-reduced batches (default: whenever the encoder supports them)."""
    was_training = encoder.training
    encoder.eval()
    out = []
    if quotient is None:
        quotient = uses_quotient(encoder)
    try:
        for batch in _loader(split, None, batch_size, shuffle=False, quotient=quotient):
            with autocast(device, precision):
                pred = encoder(batch.to(device)).pred
            out.append(pred.detach().double().cpu().numpy().reshape(-1))
    finally:
        encoder.train(was_training)
    return np.concatenate(out) * std + mean


def train_supervised(
    encoder: nn.Module,
    train_data: Split,
    val_data: Split,
    test_data: Split,
    settings: Any,
    seed: int,
    device: torch.device | str = "cpu",
    progress: bool = True,
    epoch_callback: Callable[[int, nn.Module], None] | None = None,
    desc: str = "train",
) -> TrainResult:
    """Train ``encoder`` in place; return the metrics of the validation-selected epoch (see module docstring).

    ``settings`` is the encoder's ``TrainSettings`` (optimizer, lr, weight_decay, momentum, scheduler, loss,
    batch_size, epochs, ...). ``epoch_callback(epoch, encoder)`` is called after each epoch's validation (the
    tests use it to check the selection); the encoder holds that epoch's weights when it is called.
    """
    t0 = time.perf_counter()
    device = torch.device(device)
    epochs = int(settings.epochs)
    batch_size = int(settings.batch_size)
    if epochs < 1:
        raise TrainingError(f"epochs must be >= 1, got {epochs}")
    if batch_size < 1:
        raise TrainingError(f"batch_size must be >= 1, got {batch_size}")

    mean = float(train_data.targets.mean())
    std = float(train_data.targets.std())
    if not math.isfinite(std) or std < 1e-12:  # one training entry, or all targets equal
        std = 1.0
    y_train = (train_data.targets - mean) / std

    seed_everything(seed)
    encoder.to(device)
    n_params, n_total = count_parameters(encoder)
    params = [p for p in encoder.parameters() if p.requires_grad]
    if not params:
        raise TrainingError("the encoder has no trainable parameters")
    opt = build_optimizer(params, settings)
    loss_fn = build_loss(settings)
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    quotient = uses_quotient(encoder, settings)
    precision = str(_setting(settings, "precision", "fp32"))
    mp_setting = str(_setting(settings, "message_passing", "auto"))
    message_passing = graphops.resolve(device, mp_setting)  # recorded; raises early if 'dgl' cannot import
    symmetry = None
    if quotient:  # classes computed once per graph here (memoised), reported in the record
        from bench.quotient import quotient_of, reduction

        symmetry = reduction(quotient_of(g) for g in train_data.graphs)
    loader = _loader(train_data, y_train, batch_size, shuffle=True, generator=gen, quotient=quotient)
    sched, sched_every = build_scheduler(opt, settings, epochs, len(loader))
    eval_bs = max(batch_size, 64)

    best_val = math.inf
    best_epoch = 0
    best_state: dict[str, torch.Tensor] | None = None
    train_loss: list[float] = []
    val_curve: list[float] = []
    epoch_times: list[float] = []
    lrs: list[float] = []

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=epochs, desc=desc, unit="epoch", file=sys.stderr, leave=False, dynamic_ncols=True)
    try:
        with deterministic(device), graphops.use_implementation(mp_setting):
            for epoch in range(1, epochs + 1):
                te = time.perf_counter()
                encoder.train()
                total, count = 0.0, 0
                for batch in loader:
                    batch = batch.to(device)
                    with autocast(device, precision):
                        pred = encoder(batch).pred
                        loss = loss_fn(pred.reshape(-1).float(), batch.y)
                    if not torch.isfinite(loss):
                        raise TrainingError(f"the training loss became {loss.item()} at epoch {epoch}; lower lr?")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if sched is not None and sched_every == "batch":
                        sched.step()
                    total += float(loss.detach()) * batch.num_graphs
                    count += batch.num_graphs
                if sched is not None and sched_every == "epoch":
                    sched.step()
                val_pred = predict(encoder, val_data, device, eval_bs, mean, std, quotient, precision)
                val_mae = float(np.mean(np.abs(val_pred - val_data.targets)))
                if not math.isfinite(val_mae):
                    raise TrainingError(f"validation MAE became {val_mae} at epoch {epoch}")
                train_loss.append(total / max(count, 1))
                val_curve.append(val_mae)
                lrs.append(float(opt.param_groups[0]["lr"]))
                if val_mae < best_val:  # strict: ties keep the earliest epoch
                    best_val, best_epoch = val_mae, epoch
                    best_state = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
                epoch_times.append(time.perf_counter() - te)
                if epoch_callback is not None:
                    epoch_callback(epoch, encoder)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{train_loss[-1]:.4g}", val_mae=f"{val_mae:.4g}", best=best_epoch)
            assert best_state is not None
            encoder.load_state_dict(best_state)
            test_pred = predict(encoder, test_data, device, eval_bs, mean, std, quotient, precision)
    finally:
        if bar is not None:
            bar.close()
    test_mae = float(np.mean(np.abs(test_pred - test_data.targets)))
    return TrainResult(
        val_mae=best_val,
        test_mae=test_mae,
        selected_epoch=best_epoch,
        epochs=epochs,
        epochs_run=len(val_curve),
        train_loss=train_loss,
        val_curve=val_curve,
        epoch_time_s=epoch_times,
        lr=lrs,
        test_ids=list(test_data.ids),
        test_targets=[float(v) for v in test_data.targets],
        test_predictions=[float(v) for v in test_pred],
        target_mean=mean,
        target_std=std,
        n_params=n_params,
        n_params_total=n_total,
        wall_time_s=time.perf_counter() - t0,
        extra={"symmetry_reduction": symmetry, "message_passing": message_passing, "precision": precision},
    )
