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
from facefuse.features.store import prefetch
from facefuse.model import FusionModel
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
    # evaluation fuses each image's embedding with its mirror's (the protocols' flip test)
    flip_test: bool = True
    # data.train_subset (None: the whole train set); here so that every trial records them
    train_subset_identities: Optional[int] = None
    train_subset_per_identity: Optional[int] = None
    train_subset_seed: Optional[int] = None
    # None: 512 on a GPU, 32 on the CPU, where the head's attention runs about 1.8x faster per
    # sample at batch 32 than at 512 (cache-sized working set; benchmarks/README.md)
    eval_batch_size: Optional[int] = None
    max_steps_per_epoch: Optional[int] = None
    # batches gathered ahead in a background thread (0: inline); the batches are the same
    prefetch_batches: int = 2
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
    # A mid-epoch checkpoint: steps done in epoch ``epoch + 1`` (0 at an epoch end) and what the
    # rest of that epoch needs to match an uninterrupted run: the running sums of its training
    # metrics, the learning rate and every rank's torch RNG state (the VIB samples from it).
    step: int = 0
    partial: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EpochState":
        return cls(**d)


ReportFn = Callable[[dict[str, float], EpochState, dict[str, Any]], None]
#: The Ray Train preemption query is a barrier across workers: asked every this many steps.
PREEMPTION_CHECK_STEPS = 10
_SUMS = ("loss_sum", "ce_sum", "kl_sum", "correct", "seen", "t_data", "t_model")


@dataclass
class StepCheckpoints:
    """When to write mid-epoch checkpoints and where they go.

    ``save`` receives the state (called on rank 0 only); a checkpoint is taken every
    ``every_steps`` training steps, when ``every_s`` seconds of training passed since the last
    one, and as soon as ``preempted()`` (asked every ``PREEMPTION_CHECK_STEPS`` steps on every
    rank) says a node is about to go. 0 turns a trigger off.
    """

    save: Callable[[EpochState], None]
    every_steps: int = 0
    every_s: float = 0.0
    preempted: Optional[Callable[[], bool]] = None


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


def _gather(train: TrainSet, idx: np.ndarray,
            flips: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (A maps, B maps, labels) of a batch as arrays, mirrored maps where flips is set."""
    order = np.argsort(idx, kind="stable")  # sorted reads are kinder to memory-mapped files
    idx, flips = idx[order], flips[order]
    a = np.empty((len(idx),) + tuple(train.maps.a.shape[1:]), dtype=np.float16)
    b = np.empty((len(idx),) + tuple(train.maps.b.shape[1:]), dtype=np.float16)
    for mask, src_a, src_b in ((~flips, train.maps.a, train.maps.b),
                               (flips, train.maps.a_flip, train.maps.b_flip)):
        if mask.any():
            a[mask] = src_a[idx[mask]]
            b[mask] = src_b[idx[mask]]
    return a, b, train.labels[idx]


def _to_device(batch: tuple[np.ndarray, np.ndarray, np.ndarray],
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns a gathered batch as float32 map tensors and int64 labels on ``device``."""
    a, b, labels = batch
    return (torch.from_numpy(a).to(device, torch.float32), torch.from_numpy(b).to(device, torch.float32),
            torch.from_numpy(labels).to(device))


def _rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    out = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def _set_rng_states(states: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(states["cpu"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def _agree(flag: bool, distributed: bool, device: torch.device) -> bool:
    """Returns whether any rank raised the flag (every rank must call this at the same step)."""
    if not distributed:
        return flag
    # NCCL reduces CUDA tensors only; gloo takes CPU ones (the device the ranks train on).
    box = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return bool(box.item())


def train(cfg: TrainConfig, model: torch.nn.Module, train_set: TrainSet,
          eval_sets: Sequence[EvalSet], report: Optional[ReportFn] = None,
          resume: Optional[EpochState] = None, device: Optional[torch.device] = None,
          objective: Optional[Callable[[dict[str, float]], float]] = None,
          step_checkpoints: Optional[StepCheckpoints] = None) -> list[dict[str, float]]:
    """Returns the per-epoch metrics after training ``model`` on ``train_set``.

    After every epoch the current embedding (mu) is evaluated on every set of ``eval_sets`` with
    the exact protocols, and ``report(metrics, state, extras)`` is called (extras holds ROC data).
    When torch.distributed is initialised the model is wrapped in DDP, each rank trains on its
    shard of every epoch, and rank 0 evaluates and shares the metrics with the other ranks.

    With ``step_checkpoints``, mid-epoch states are handed to its ``save`` as well; resuming from
    one (``resume.step > 0``) replays the same batches, learning rates and random draws, so the
    metrics equal those of an uninterrupted run.
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

    mid = resume if resume is not None and resume.step > 0 else None
    if mid is not None and len(mid.partial.get("rng", [])) != world:
        # The RNG states were saved by another number of workers: same batches, other draws.
        logger.warning("mid-epoch checkpoint of %d workers resumed on %d: the rest of epoch %d "
                       "will not match an uninterrupted run exactly",
                       len(mid.partial.get("rng", [])), world, mid.epoch + 1)
    sc = step_checkpoints
    last_ckpt_t = time.perf_counter()
    steps_since_ckpt = 0
    lr = cfg.lr
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
        first_step = 0
        if mid is not None:
            first_step = mid.step
            sums = mid.partial.get("sums", {})
            loss_sum, ce_sum, kl_sum, correct, seen, t_data, t_model = (
                float(sums.get(k, 0.0)) for k in _SUMS)
            if len(mid.partial.get("rng", [])) == world:
                _set_rng_states(mid.partial["rng"][rank], device)
            lr = float(mid.partial.get("lr", cfg.lr))
            mid = None
        epoch_start = time.perf_counter()
        plan = [(perm[sl], flips[sl]) for sl in (slice(s * cfg.batch_size, (s + 1) * cfg.batch_size)
                                                 for s in range(first_step, steps_per_epoch))]
        batches = prefetch(lambda item: _gather(train_set, *item), plan, int(cfg.prefetch_batches))
        try:
            for step in range(first_step, steps_per_epoch):
                t0 = time.perf_counter()
                a, b, labels = _to_device(next(batches), device)
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
                steps_since_ckpt += 1
                if sc is not None and step + 1 < steps_per_epoch:  # the epoch end checkpoints anyway
                    due = bool(sc.every_steps and steps_since_ckpt >= sc.every_steps)
                    due = due or bool(sc.every_s and time.perf_counter() - last_ckpt_t >= sc.every_s)
                    if sc.preempted is not None and (epoch * steps_per_epoch + step + 1) \
                            % PREEMPTION_CHECK_STEPS == 0 and sc.preempted():
                        logger.warning("preemption notice at epoch %d step %d: checkpointing now",
                                       epoch + 1, step + 1)
                        due = True
                    # Time differs between ranks: they agree first, as the gather below needs all.
                    if _agree(due, distributed, device):
                        rngs = [_rng_states(device)]
                        if distributed:
                            gathered: list[Any] = [None] * world
                            dist.all_gather_object(gathered, rngs[0])
                            rngs = gathered
                        if rank == 0:
                            sums = dict(zip(_SUMS, (loss_sum, ce_sum, kl_sum, correct, seen,
                                                    t_data, t_model)))
                            sc.save(EpochState(
                                epoch, {k: v.detach().cpu().clone()
                                        for k, v in model.state_dict().items()},
                                copy.deepcopy(optimizer.state_dict()), best, list(history),
                                step=step + 1, partial={"sums": sums, "rng": rngs, "lr": lr}))
                        steps_since_ckpt = 0
                        last_ckpt_t = time.perf_counter()
        finally:
            batches.close()  # stops the prefetch thread, also when a step raises
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
        mix = model.mix_weight() if isinstance(model, FusionModel) else None
        if mix is not None:
            metrics["train/mix"] = mix  # the learned local-branch weight at the epoch's end
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
        steps_since_ckpt = 0
        last_ckpt_t = time.perf_counter()
        logger.info("epoch %d/%d %s", epoch + 1, cfg.epochs,
                    " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if "/" in k and "time" not in k))
        if report is not None:
            # Copies, not views: the caller may keep a state (the best epoch) while training goes on.
            state = EpochState(epoch + 1,
                               {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                               copy.deepcopy(optimizer.state_dict()), best, list(history))
            report(metrics, state, extras)
    return history
