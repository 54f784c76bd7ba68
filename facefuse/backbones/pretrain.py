"""Tiny-backbone pretraining for the embedded default: one ArcFace and one AdaFace IResNet.

Both train on the synthetic train set, in memory (the RecordIO set is decoded once), and are
saved in their official layouts, so the embedded default loads them through the same code as
real weights. They differ the way the real pair does: loss (ArcFace m=0.5 vs AdaFace m=0.4,
h=0.333), seed, and augmentation (flip only vs AdaFace's crop / low-resolution / photometric
augmentation), so their errors are not the same errors.

    paths = pretrain_tiny_backbones(data_root, out_dir)   # ~minutes on two cores
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from facefuse.backbones.checkpoints import checkpoint_hash, load_backbone, save_adaface, save_insightface
from facefuse.backbones.iresnet import IResNet, get_model, to_input
from facefuse.backbones.losses import AdaFaceHead
from facefuse.data import get_dataset, load_train_set, load_verification_set
from facefuse.data._io import atomic_write
from facefuse.evaluation import evaluate_ijb, evaluate_verification, roc_curve_auc
from facefuse.errors import ConfigError
from facefuse.model.heads import ArcFaceHead

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

TRAIN_SET = "synth_train"
SUMMARY = "pretrain.json"


@dataclass(frozen=True)
class TinyRecipe:
    """Everything that defines one tiny backbone's training run."""

    name: str
    loss: str  # "arcface" | "adaface"
    layout: str  # checkpoint layout the result is saved in
    filename: str
    seed_offset: int
    augment: str  # "flip" | "adaface"
    arch: str = "ir_nano"
    widths: Optional[tuple[int, int, int, int]] = None  # None: the arch's own
    num_features: Optional[int] = None
    steps: int = 220
    batch_size: int = 64
    optimizer: str = "sgd"  # "sgd" (momentum) | "adamw"
    lr: float = 0.1
    warmup_steps: int = 30
    momentum: float = 0.9
    weight_decay: float = 5e-4
    margin: float = 0.5
    scale: float = 64.0
    h: float = 0.333  # AdaFace only
    t_alpha: float = 0.01  # AdaFace only: EMA rate of the norm statistics
    # The margin ramps linearly from 0 to `margin` over this fraction of the steps: from scratch and
    # with only a few thousand images, the full margin at step 0 keeps the target logit below the
    # others and training stalls (seen: s=64, m=0.5, 170 steps, train accuracy 0, loss 50 -> 40).
    margin_warmup: float = 0.5
    aug_prob: float = 0.2  # AdaFace augmentation: probability of each of aug_ops per image
    aug_ops: tuple[str, ...] = ("crop", "lowres", "photometric")  # which of AdaFace's three to use


ARCFACE_TINY = TinyRecipe(name="arcface_tiny", loss="arcface", layout="insightface",
                          filename="arcface_tiny/backbone.pth", seed_offset=0, augment="flip", margin=0.5)
# AdaFace's quality-degrading augmentations (low resolution, photometric) without its crop: at
# 220 steps the crop (up to 80% of the face zeroed) costs the tiny net 5 points on synth_lfw, and
# the norm statistics need a faster EMA than the 0.01 of a 100k-step run (benchmarks/README.md).
ADAFACE_TINY = TinyRecipe(name="adaface_tiny", loss="adaface", layout="adaface",
                          filename="adaface_tiny/adaface_tiny.ckpt", seed_offset=1, augment="adaface",
                          margin=0.4, aug_ops=("lowres", "photometric"), t_alpha=0.05)
RECIPES = (ARCFACE_TINY, ADAFACE_TINY)
# The release recipe (shipped checkpoints, facefuse/backbones/release): the same losses trained
# long enough that the pair resembles the real one: within 2 points on the high-quality sets,
# AdaFace ahead on the low-quality ones. Chosen by benchmarks/release_recipe_grid.py on a GPU
# (benchmarks/README.md, "The released pair"): ArcFace converges in 3,000 steps (flip only, as
# its MS1MV2 run); AdaFace with low resolution alone at p=0.3 (the photometric jitter and the crop
# cost it points on the high-quality sets at every length tried) needs 4,000. About 4 minutes each
# on a GPU, hours on two CPU cores.
ARCFACE_RELEASE = replace(ARCFACE_TINY, steps=3000, warmup_steps=150)
ADAFACE_RELEASE = replace(ADAFACE_TINY, steps=4000, warmup_steps=200, aug_prob=0.3,
                          aug_ops=("lowres",))
RELEASE_RECIPES = (ARCFACE_RELEASE, ADAFACE_RELEASE)
RECIPE_SETS = {"quick": RECIPES, "release": RELEASE_RECIPES}


# ---------------------------------------------------------------------------------------------
# augmentation, on uint8 batches as float tensors (cheap enough to run in the training process)

def _flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    mask = torch.rand(x.shape[0], generator=gen) < 0.5
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(3), x)


def _crop_with_zero_padding(img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    # AdaFace's crop augmentation: a RandomResizedCrop box (scale 0.2..1, ratio 3/4..4/3) kept in
    # place and everything outside it zeroed, so the face stays aligned but partly missing
    _, h, w = img.shape
    for _ in range(10):
        area = h * w * float(torch.empty(1).uniform_(0.2, 1.0, generator=gen))
        ratio = math.exp(float(torch.empty(1).uniform_(math.log(3 / 4), math.log(4 / 3), generator=gen)))
        cw, ch = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
            out = torch.zeros_like(img)
            out[:, top:top + ch, left:left + cw] = img[:, top:top + ch, left:left + cw]
            return out
    return img


_RESIZE_MODES = ("nearest", "bilinear", "area", "bicubic")


def _low_resolution(img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    # shrink to 20..100% of the side and enlarge back, each way with a random interpolation
    side = img.shape[-1]
    small = max(2, int(side * float(torch.empty(1).uniform_(0.2, 1.0, generator=gen))))
    down = _RESIZE_MODES[int(torch.randint(0, 4, (1,), generator=gen))]
    up = _RESIZE_MODES[int(torch.randint(0, 4, (1,), generator=gen))]
    x = F.interpolate(img[None], size=(small, small), mode=down)
    x = F.interpolate(x, size=(side, side), mode=up if up != "area" else "bilinear")
    return x[0].clamp(0, 255)


def _photometric(img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    # ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5) applied in random order
    factors = torch.empty(3).uniform_(0.5, 1.5, generator=gen)
    for op in torch.randperm(3, generator=gen).tolist():
        f = float(factors[op])
        if op == 0:
            img = img * f
        elif op == 1:
            gray_mean = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]).mean()
            img = (img - gray_mean) * f + gray_mean
        else:
            gray = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2])[None]
            img = (img - gray) * f + gray
        img = img.clamp(0, 255)
    return img


AUG_OPS = ("crop", "lowres", "photometric")


def augment_batch(images: np.ndarray, kind: str, gen: torch.Generator, prob: float = 0.2,
                  ops: Sequence[str] = AUG_OPS) -> torch.Tensor:
    """Returns the augmented batch as float NCHW in [-1, 1] from uint8 [B, 112, 112, 3] RGB.

    ``kind`` "adaface" applies each of ``ops`` (AdaFace's crop, low-resolution and photometric
    augmentations, in that order) to an image with probability ``prob``, after a random flip.
    """
    unknown = sorted(set(ops) - set(AUG_OPS))
    if unknown:
        raise ConfigError(None, f"unknown augmentation op(s) {unknown}", field="aug_ops",
                          fix=f"use a subset of {', '.join(AUG_OPS)}")
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().contiguous()  # [B,H,W,3]->[B,3,H,W]
    x = _flip(x, gen)
    if kind == "adaface":
        draws = torch.rand(x.shape[0], 3, generator=gen) < prob
        for j, op in enumerate(AUG_OPS):  # an op left out is never drawn
            if op not in ops:
                draws[:, j] = False
        for i in torch.nonzero(draws.any(1)).flatten().tolist():
            img = x[i]
            if draws[i, 0]:
                img = _crop_with_zero_padding(img, gen)
            if draws[i, 1]:
                img = _low_resolution(img, gen)
            if draws[i, 2]:
                img = _photometric(img, gen)
            x[i] = img
    elif kind != "flip":
        raise ConfigError(None, f"unknown augmentation {kind!r}", field="augment", fix="use 'flip' or 'adaface'")
    return x.div_(127.5).sub_(1.0)


# ---------------------------------------------------------------------------------------------
# training

def _batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[np.ndarray]:
    while True:  # epoch-wise permutations, the last partial batch dropped (BatchNorm needs > 1 sample)
        perm = torch.randperm(n, generator=gen).numpy()
        for start in range(0, n - batch_size + 1, batch_size):
            yield perm[start:start + batch_size]


def _lr_at(step: int, recipe: TinyRecipe) -> float:
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    return recipe.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_margin(head: torch.nn.Module, margin: float) -> None:
    """Sets the margin of an ArcFaceHead or AdaFaceHead in place (for the margin warm-up)."""
    if isinstance(head, AdaFaceHead):
        head.m = margin
        return
    # ArcFaceHead caches the margin's trigonometry at construction; refresh all of it
    head.margin = margin
    head.cos_m, head.sin_m = math.cos(margin), math.sin(margin)
    head.threshold = math.cos(math.pi - margin)
    head.fallback = math.sin(math.pi - margin) * margin


def train_tiny_backbone(images: np.ndarray, labels: np.ndarray, num_classes: int, recipe: TinyRecipe,
                        seed: int = 0, progress: bool = True, device: str = "cpu"
                        ) -> tuple[IResNet, torch.nn.Module, dict[str, float]]:
    """Returns (trained backbone in eval mode on the CPU, its training head, metrics) for one recipe.

    ``device`` "cuda" trains on a GPU (the release recipe's thousands of steps); the batches,
    their augmentation and every random draw stay on the CPU, so the data a step sees is the
    same on either device.
    """
    torch.manual_seed(seed + recipe.seed_offset)
    gen = torch.Generator().manual_seed(seed + recipe.seed_offset)
    model = get_model(recipe.arch, num_features=recipe.num_features, layout=recipe.layout, widths=recipe.widths)
    emb = model.num_features
    if recipe.loss == "arcface":
        head: torch.nn.Module = ArcFaceHead(emb, num_classes, scale=recipe.scale, margin=recipe.margin)
    elif recipe.loss == "adaface":
        head = AdaFaceHead(emb, num_classes, m=recipe.margin, h=recipe.h, s=recipe.scale, t_alpha=recipe.t_alpha)
    else:
        raise ConfigError(None, f"unknown loss {recipe.loss!r}", field="loss", fix="use 'arcface' or 'adaface'")
    model.to(device)
    head.to(device)
    params = [p for p in list(model.parameters()) + list(head.parameters()) if p.requires_grad]
    if recipe.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum,
                                                     weight_decay=recipe.weight_decay)
    elif recipe.optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    else:
        raise ConfigError(None, f"unknown optimizer {recipe.optimizer!r}", field="optimizer",
                          fix="use 'sgd' or 'adamw'")
    labels_t = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    model.train()
    head.train()
    batches = _batches(len(images), recipe.batch_size, gen)
    start = time.perf_counter()
    losses: list[float] = []
    accuracies: list[float] = []
    bar = tqdm(range(recipe.steps), desc=recipe.name, unit="step", disable=not progress)
    for step in bar:
        idx = next(batches)
        x = augment_batch(images[idx], recipe.augment, gen, recipe.aug_prob, recipe.aug_ops).to(device)
        y = labels_t[idx].to(device)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, recipe)
        ramp = recipe.margin_warmup * recipe.steps
        set_margin(head, recipe.margin * min(1.0, (step + 1) / ramp) if ramp > 0 else recipe.margin)
        out = model(x)
        if recipe.loss == "adaface":
            norms = out.norm(2, 1, True)
            logits = head(out / norms, norms, y)
        else:
            logits = head(out, y)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        losses.append(loss.item())
        accuracies.append(float((logits.detach().argmax(1) == y).float().mean()))
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"{recipe.name}: loss became {losses[-1]} at step {step}")
        if step % 20 == 0 or step == recipe.steps - 1:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.2f}", train_acc=f"{np.mean(accuracies[-20:]):.2f}")
    tail = max(1, recipe.steps // 10)  # the last 10% of steps: a smoothed end-of-training value
    final_loss, final_acc = float(np.mean(losses[-tail:])), float(np.mean(accuracies[-tail:]))
    seconds = time.perf_counter() - start
    model.cpu().eval()
    head.cpu().eval()
    logger.info("%s: %d steps of %d in %.1f s, loss %.3f -> %.3f, train accuracy %.3f", recipe.name,
                recipe.steps, recipe.batch_size, seconds, losses[0], final_loss, final_acc)
    return model, head, {"train_seconds": round(seconds, 1), "first_loss": round(losses[0], 4),
                         "final_loss": round(final_loss, 4), "train_accuracy": round(final_acc, 4),
                         "steps": recipe.steps,
                         "images_seen": recipe.steps * recipe.batch_size}


def _train_and_save(data_root: str, out_dir: str, recipe: TinyRecipe, seed: int, threads: int,
                    progress: bool, device: str = "cpu") -> tuple[str, dict[str, Any]]:
    """Returns (checkpoint path, metrics) after training one recipe; runs in its own process."""
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    train = load_train_set(TRAIN_SET, data_root)
    images = train.images()  # uint8 [N, 112, 112, 3]: decoded once, trained on in memory
    labels = np.asarray(train.labels, dtype=np.int64)
    logger.info("%s: decoded %d training images of %d identities in %.1f s", recipe.name, len(images),
                train.num_classes, time.perf_counter() - t0)
    model, head, metrics = train_tiny_backbone(images, labels, train.num_classes, recipe, seed, progress,
                                               device=device)
    path = Path(out_dir) / recipe.filename
    if recipe.layout == "insightface":
        save_insightface(model, path)
    else:
        save_adaface(model, path, head_state=head.state_dict())
    metrics["num_classes"] = int(train.num_classes)
    metrics["train_images"] = int(len(images))
    return str(path), metrics


def pretrain_tiny_backbones(data_root: PathLike, out_dir: PathLike, seed: int = 0,
                            recipes: Sequence[TinyRecipe] = RECIPES, threads: int = 2,
                            progress: bool = True, parallel: bool = True,
                            device: str = "cpu") -> dict[str, Any]:
    """Returns {"arcface": path, "adaface": path, "metrics": {...}} after training and saving both tiny backbones.

    The ArcFace one is written as out_dir/arcface_tiny/backbone.pth (insightface layout), the
    AdaFace one as out_dir/adaface_tiny/adaface_tiny.ckpt (AdaFace layout); out_dir/pretrain.json
    records the recipes, metrics and checkpoint hashes. With ``parallel`` the recipes train at the
    same time in separate processes of one thread each, which on two cores beats two threads for
    one model after the other (0.98 s/step each side by side vs 0.60 s/step in turn, batch 64).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    summary: dict[str, Any] = {"seed": seed, "data_root": str(Path(data_root).resolve()), "backbones": {}}
    result: dict[str, Any] = {"metrics": {}}
    if parallel and len(recipes) > 1:
        per = max(1, threads // len(recipes))
        with ProcessPoolExecutor(len(recipes), mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_train_and_save, str(data_root), str(out_dir), r, seed, per,
                                   progress and i == 0, device) for i, r in enumerate(recipes)]
            outputs = [f.result() for f in futures]
    else:
        outputs = [_train_and_save(str(data_root), str(out_dir), r, seed, threads, progress, device)
                   for r in recipes]
    for recipe, (path_str, metrics) in zip(recipes, outputs):
        path = Path(path_str)
        result[recipe.loss] = path
        result["metrics"][recipe.name] = metrics
        summary["backbones"][recipe.name] = {"path": str(path.resolve()), "sha256": checkpoint_hash(path),
                                             "recipe": asdict(recipe), "metrics": metrics}
    result["metrics"]["total_seconds"] = round(time.perf_counter() - t0, 1)
    summary["total_seconds"] = result["metrics"]["total_seconds"]
    with atomic_write(out_dir / SUMMARY, "w") as fh:
        json.dump(summary, fh, indent=1, sort_keys=True)
    return result


# ---------------------------------------------------------------------------------------------
# quick evaluation on the synthetic benchmark

SYNTH_EVAL_SETS = ("synth_lfw", "synth_cfp_fp", "synth_agedb_30", "synth_calfw", "synth_cplfw",
                   "synth_ijbb", "synth_ijbc")


@torch.no_grad()
def embed_images(model: IResNet, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Returns (embeddings, embeddings of the mirrored images), float32 [N, E] each."""
    model.eval()
    outs: list[list[np.ndarray]] = [[], []]
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        for k, flip in enumerate((False, True)):
            outs[k].append(model(to_input(chunk, flip=flip)).numpy())
    return np.concatenate(outs[0]), np.concatenate(outs[1])


def evaluate_backbone(path: PathLike, data_root: PathLike, sets: Sequence[str] = SYNTH_EVAL_SETS,
                      threads: int = 2, far: float = 1e-4) -> dict[str, float]:
    """Returns each set's primary metric for one checkpoint: 10-fold accuracy (.bin sets) or TAR@FAR (IJB sets).

    Keys are "<set>/acc", and "<set>/tar_far_<far>" (far 1e-4 by default, as the field reports)
    with "<set>/auc" for the IJB-style sets.
    """

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = load_backbone(path)
        metrics: dict[str, float] = {}
        for name in sets:
            spec = get_dataset(name)
            data = load_verification_set(name, data_root)
            if spec.kind == "verification":
                images, issame = data
                emb, emb_flip = embed_images(model, images)
                metrics[f"{name}/acc"] = round(float(evaluate_verification(emb, emb_flip, issame)[0]), 4)
            else:
                emb, emb_flip = embed_images(model, data.aligned_images())
                tars, scores = evaluate_ijb(data, emb, emb_flip, fars=(far,))
                metrics[f"{name}/tar_far_{far:g}"] = round(float(tars[far]), 4)
                # TAR at 1e-4 of a few thousand impostor pairs rests on the top few impostors;
                # the ROC's area says whether the backbone ranks pairs better than chance (0.5)
                metrics[f"{name}/auc"] = round(float(roc_curve_auc(data.labels, scores)[2]), 4)
            logger.info("%s %s: %s", Path(path).name, name, {k: v for k, v in metrics.items() if k.startswith(name)})
        return metrics
    finally:
        torch.set_num_threads(previous_threads)


def with_overrides(recipe: TinyRecipe, **changes: Any) -> TinyRecipe:
    """Returns a copy of the recipe with fields replaced (for experiments and tests)."""
    return replace(recipe, **changes)
