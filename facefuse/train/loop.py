"""The training loop of the fusion head: data, forward, loss, backward, step, eval, report.

It reads maps from ``facefuse.features`` objects and hands each epoch's metrics to a callback.
It does not know whether it runs in a Ray Tune trial, a Ray Train worker or a plain process.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from facefuse.errors import ConfigError, FacefuseError
from facefuse.features.dataset import EvalSet, TrainSet
from facefuse.train.evaluate import evaluate

logger = logging.getLogger(__name__)


class TrainingDiverged(FacefuseError):
    """The loss became NaN or infinite; the run cannot continue."""


@dataclass
class TrainConfig:
    """Optimisation settings of one run; model settings live in ``FusionConfig``."""

    epochs: int = 6
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adamw"  # adamw | sgd
    weight_decay: float = 0.05
    momentum: float = 0.9
    schedule: str = "cosine"  # cosine | step | constant
    warmup_epochs: float = 0.5
    grad_clip: float = 5.0
    seed: int = 0
    flip_augment: bool = True
    # None: 512 on a GPU, 32 on the CPU, where the head's attention runs about 1.8x faster per
    # sample at batch 32 than at 512 (cache-sized working set; benchmarks/README.md)
    eval_batch_size: Optional[int] = None
    max_steps_per_epoch: Optional[int] = None
    # Test hook, ignored unless set: fault tests need epochs slow enough to kill a worker inside one.
    _test_sleep_per_step_s: float = 0.0

    def __post_init__(self) -> None:
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(None, f"unknown optimizer {self.optimizer!r}", field="optimizer",
                              fix="use 'adamw' or 'sgd'")
        if self.schedule not in ("cosine", "step", "constant"):
            raise ConfigError(None, f"unknown schedule {self.schedule!r}", field="schedule",
                              fix="use 'cosine', 'step' or 'constant'")
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(None, f"{name} must be >= 1, got {getattr(self, name)}",
                                  field=name)
        if self.eval_batch_size is not None and int(self.eval_batch_size) < 1:
            raise ConfigError(None, f"eval_batch_size must be >= 1, got {self.eval_batch_size}",
                              field="eval_batch_size", fix="leave it unset for the device default")
        if not self.lr > 0:
            raise ConfigError(None, f"lr must be > 0, got {self.lr}", field="lr")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Returns a config from the keys of ``values`` that name TrainConfig fields."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass
class EpochState:
    """What a checkpoint holds: enough to resume and reproduce an uninterrupted run."""

    epoch: int  # epochs completed
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    best: Optional[float] = None
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EpochState":
        return cls(**d)


ReportFn = Callable[[dict[str, float], EpochState, dict[str, Any]], None]


def _lr_at(cfg: TrainConfig, step: int, total: int, steps_per_epoch: int) -> float:
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":
        epoch = step // max(steps_per_epoch, 1)
        return cfg.lr * (0.1 ** sum(epoch >= m for m in (int(cfg.epochs * 0.6), int(cfg.epochs * 0.85))))
    progress = (step - warm) / max(total - warm, 1)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or "pos_embed" in name or "source_embed" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _batch(train: TrainSet, idx: np.ndarray, flips: np.ndarray,
           device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (A maps, B maps, labels) for a batch, taking mirrored maps where flips is set."""
    order = np.argsort(idx, kind="stable")  # sorted reads are kinder to memory-mapped files
    idx, flips = idx[order], flips[order]
    a = np.empty((len(idx),) + tuple(train.maps.a.shape[1:]), dtype=np.float16)
    b = np.empty((len(idx),) + tuple(train.maps.b.shape[1:]), dtype=np.float16)
    for mask, src_a, src_b in ((~flips, train.maps.a, train.maps.b),
                               (flips, train.maps.a_flip, train.maps.b_flip)):
        if mask.any():
            a[mask] = src_a[idx[mask]]
            b[mask] = src_b[idx[mask]]
    labels = torch.from_numpy(train.labels[idx])
    return (torch.from_numpy(a).to(device, torch.float32), torch.from_numpy(b).to(device, torch.float32),
            labels.to(device))


def train(cfg: TrainConfig, model: torch.nn.Module, train_set: TrainSet,
          eval_sets: Sequence[EvalSet], report: Optional[ReportFn] = None,
          resume: Optional[EpochState] = None, device: Optional[torch.device] = None,
          objective: Optional[Callable[[dict[str, float]], float]] = None) -> list[dict[str, float]]:
    """Returns the per-epoch metrics after training ``model`` on ``train_set``.

    After every epoch the current embedding (mu) is evaluated on every set of ``eval_sets`` with
    the exact protocols, and ``report(metrics, state, extras)`` is called (extras holds ROC data).
    When torch.distributed is initialised the model is wrapped in DDP, each rank trains on its
    shard of every epoch, and rank 0 evaluates and shares the metrics with the other ranks.
    """
    device = device or torch.device("cpu")
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    model.to(device)
    if resume is not None:
        model.load_state_dict(resume.model)
    net: torch.nn.Module = model
    if distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = _make_optimizer(cfg, model)
    if resume is not None:
        # load_state_dict aliases the given tensors; a copy keeps the caller's state intact.
        optimizer.load_state_dict(copy.deepcopy(resume.optimizer))
    start_epoch = resume.epoch if resume is not None else 0
    history = list(resume.history) if resume is not None else []
    best = resume.best if resume is not None else None

    n = len(train_set.labels)
    per_rank = n // world
    steps_per_epoch = max(per_rank // cfg.batch_size, 1)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    total_steps = steps_per_epoch * cfg.epochs

    for epoch in range(start_epoch, cfg.epochs):
        # Seeding per epoch (not once) is what makes resume-at-epoch bit-identical.
        rng = np.random.default_rng([cfg.seed, epoch])
        torch.manual_seed(cfg.seed * 1_000_003 + epoch * 7919 + rank)
        perm = rng.permutation(n)[rank * per_rank:(rank + 1) * per_rank]
        use_flips = cfg.flip_augment and train_set.maps.a_flip is not None
        flips = rng.random(n) < 0.5 if use_flips else np.zeros(n, dtype=bool)
        flips = flips[rank * per_rank:(rank + 1) * per_rank]
        net.train()
        t_data = t_model = 0.0
        loss_sum = ce_sum = kl_sum = correct = seen = 0.0
        epoch_start = time.perf_counter()
        for step in range(steps_per_epoch):
            t0 = time.perf_counter()
            sl = slice(step * cfg.batch_size, (step + 1) * cfg.batch_size)
            a, b, labels = _batch(train_set, perm[sl], flips[sl], device)
            t1 = time.perf_counter()
            lr = _lr_at(cfg, epoch * steps_per_epoch + step, total_steps, steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            out = net(a, b, labels)
            loss = out.loss
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"loss became {loss.item()} at epoch {epoch + 1} step {step + 1} "
                    f"(ce={out.ce.item():.4g}, kl={out.kl.item():.4g}, lr={lr:.3g}); lower the "
                    "learning rate or beta")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            optimizer.step()
            if cfg._test_sleep_per_step_s:
                time.sleep(float(cfg._test_sleep_per_step_s))
            t2 = time.perf_counter()
            t_data += t1 - t0
            t_model += t2 - t1
            bs = len(labels)
            loss_sum += loss.item() * bs
            ce_sum += out.ce.item() * bs
            kl_sum += out.kl.item() * bs
            if out.logits is not None:
                correct += (out.logits.argmax(1) == labels).sum().item()
            seen += bs
        train_seconds = time.perf_counter() - epoch_start
        metrics: dict[str, float] = {
            "epoch": float(epoch + 1),
            "train/loss": loss_sum / seen,
            "train/ce": ce_sum / seen,
            "train/kl": kl_sum / seen,
            "train/acc": correct / seen,
            "train/lr": lr,
            "time/train_s": train_seconds,
            "time/data_share": t_data / max(t_data + t_model, 1e-9),
            "time/steps_per_s": steps_per_epoch / max(train_seconds, 1e-9),
        }
        extras: dict[str, Any] = {}
        if rank == 0:
            t_eval = time.perf_counter()
            eval_bs = cfg.eval_batch_size or (512 if device.type == "cuda" else 32)
            eval_metrics, extras = evaluate(model, eval_sets, eval_bs, device)
            metrics.update(eval_metrics)
            metrics["time/eval_s"] = time.perf_counter() - t_eval
            if objective is not None:
                metrics["objective"] = float(objective(metrics))
        if distributed:
            box = [metrics]
            dist.broadcast_object_list(box, src=0)
            metrics = box[0]
        if "objective" in metrics and (best is None or metrics["objective"] > best):
            best = metrics["objective"]
            extras["is_best"] = True
        history.append(metrics)
        logger.info("epoch %d/%d %s", epoch + 1, cfg.epochs,
                    " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if "/" in k and "time" not in k))
        if report is not None:
            # Copies, not views: the caller may keep a state (the best epoch) while training goes on.
            state = EpochState(epoch + 1,
                               {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                               copy.deepcopy(optimizer.state_dict()), best, list(history))
            report(metrics, state, extras)
    return history
