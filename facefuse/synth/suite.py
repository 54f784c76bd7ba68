"""Assembles the synthetic benchmark: a RecordIO train set, five .bin verification sets, two IJB sets.

Everything is a pure function of (seed, config). The build is planned in the main process as a list
of image specifications, cut into fixed chunks that worker processes render; results come back in
order, so the files are byte-identical whatever the number of workers. Identity ids are disjoint
by construction: the train set uses ids 0..n-1 and evaluation set number k (1..7) uses ids
k * 1_000_000 + i, look-alike identities k * 1_000_000 + 500_000 + j.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Optional, Sequence, Union

import numpy as np
from tqdm.auto import tqdm

from facefuse.data import write_ijb, write_recordio_dataset, write_verification_bin
from facefuse.data._io import atomic_write
from facefuse.errors import ConfigError
from facefuse.synth import faces
from facefuse.synth.degrade import decode, degrade

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

MANIFEST = "synth_manifest.json"
# bump whenever rendering or planning changes what a given (seed, config) produces
SUITE_VERSION = 2
CHUNK = 16  # images per rendering task; fixed so the output does not depend on the worker count
ID_BLOCK = 1_000_000
TWIN_OFFSET = 500_000

VERIFICATION_SETS = ("lfw", "cfp_fp", "agedb_30", "calfw", "cplfw")
# "ladder": the quality ladder (facefuse.synth.ladder), built apart from the suite
SET_CODES = {"train": 0, "lfw": 1, "cfp_fp": 2, "agedb_30": 3, "calfw": 4, "cplfw": 5, "ijbb": 6, "ijbc": 7,
             "ladder": 8}
IJB_SETS = {"ijbb": ("IJB_synth/SYNTH_IJBB", "synth_ijbb"), "ijbc": ("IJB_synth/SYNTH_IJBC", "synth_ijbc")}


@dataclass(frozen=True)
class SuiteConfig:
    """Size and difficulty knobs of the synthetic suite (every field is a ``build_suite`` keyword)."""

    train_identities: int = 500
    train_images_per_identity: int = 20
    verification_pairs: int = 600  # per set; a multiple of 20 (10 folds, half genuine)
    ijb_identities: int = 120  # per IJB set
    # 1,440 templates of mostly one media each: about 1.03M impostor template pairs, so that
    # TAR@FAR=1e-4 rests on ~100 impostor scores (8,000 pairs gave it one or two).
    ijb_templates_per_identity: int = 12
    ijb_max_media_per_template: int = 1
    ijb_impostor_pairs: int = 1_100_000  # capped at every cross-identity template pair
    crop_size: int = 160
    identity_spread: float = 1.4  # how different identities are (lower = harder)
    nuisance: float = 0.85  # pose, expression, lighting and occlusion strength (higher = harder)
    age_drift: float = 1.0  # how far ageing moves an identity's geometry (agedb_30, calfw)
    lookalike_mix: float = 0.55  # look-alike impostors: fraction of the way to another identity (calfw, cplfw)
    train_degradation: float = 0.15  # fraction of train images mildly degraded
    ijbb_degradation: float = 0.6  # top degradation strength in synth_ijbb (mixed quality)
    ijbc_degradation: float = 1.0  # top degradation strength in synth_ijbc (low quality)

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise ConfigError(None, f"{f.name}={v!r} must be a non-negative number", field=f.name,
                                  fix=f"pass a number >= 0 (default {f.default})")
        if not 2 <= self.train_identities < ID_BLOCK:
            raise ConfigError(None, f"train_identities={self.train_identities} out of range", field="train_identities",
                              fix=f"use 2..{ID_BLOCK - 1}")
        if self.verification_pairs < 20 or self.verification_pairs % 20:
            raise ConfigError(None, f"verification_pairs={self.verification_pairs} is not a positive multiple of 20",
                              field="verification_pairs", fix="use e.g. 600, 800 or 1000 (10 folds, half genuine)")
        if not 2 <= self.ijb_identities < TWIN_OFFSET:
            raise ConfigError(None, f"ijb_identities={self.ijb_identities} out of range", field="ijb_identities",
                              fix="use at least 2")
        if self.ijb_max_media_per_template < 1:
            raise ConfigError(None, "ijb_max_media_per_template must be >= 1",
                              field="ijb_max_media_per_template", fix="use 1 or more")
        if self.ijb_templates_per_identity < 2:
            raise ConfigError(None, "ijb_templates_per_identity must be >= 2 for genuine pairs",
                              field="ijb_templates_per_identity", fix="use 2 or more")
        if self.crop_size < 112:
            raise ConfigError(None, f"crop_size={self.crop_size} is smaller than the aligned face",
                              field="crop_size", fix="use 112 or more (default 160)")
        if self.train_images_per_identity < 1:
            raise ConfigError(None, "train_images_per_identity must be >= 1", field="train_images_per_identity",
                              fix="use e.g. 24")


def make_config(**size_knobs: Any) -> SuiteConfig:
    """Returns the SuiteConfig of ``size_knobs``; an unknown knob is a ConfigError listing the known ones."""
    known = {f.name for f in fields(SuiteConfig)}
    unknown = sorted(set(size_knobs) - known)
    if unknown:
        raise ConfigError(None, f"unknown synthetic-suite knob(s) {unknown}", field=unknown[0],
                          fix=f"use one of {sorted(known)}")
    return SuiteConfig(**size_knobs)


# ----------------------------------------------------------------------------------------------
# plan: one small record per image


class ImageSpec(NamedTuple):
    """What to draw for one image. ``key`` seeds its nuisance; a video frame also has ``frame`` > 0."""

    identity: int
    twin_of: int  # -1, or the identity this look-alike resembles
    age: float
    key: tuple[int, ...]
    yaw: float  # degrees; NaN = drawn from N(0, yaw_sd)
    yaw_sd: float
    crop: bool  # loose crop (IJB) instead of an aligned 112x112 face
    degradation: float  # strength in [0, 1]; for crops the media's level
    frame: int = 0


def _identity_range(code: int) -> tuple[int, int]:
    return code * ID_BLOCK, (code + 1) * ID_BLOCK


def plan_train(seed: int, cfg: SuiteConfig) -> tuple[list[ImageSpec], list[int]]:
    """Returns the train images and their labels (identity i has ids i and label i)."""
    specs, labels = [], []
    for i in range(cfg.train_identities):
        for j in range(cfg.train_images_per_identity):
            rng = np.random.default_rng([seed, 3, 0, i, j])
            age = float(rng.uniform(0.0, 0.7))
            deg = float(rng.uniform(0.0, 0.5)) if rng.random() < cfg.train_degradation else 0.0
            specs.append(ImageSpec(i, -1, age, (0, i, j), math.nan, 22.0, False, deg))
            labels.append(i)
    return specs, labels


def plan_verification(seed: int, name: str, cfg: SuiteConfig) -> tuple[list[ImageSpec], list[bool]]:
    """Returns 2N image specs (pair k = images 2k, 2k+1) and issame [N], in 10 folds of half genuine pairs."""
    code = SET_CODES[name]
    base = code * ID_BLOCK
    rng = np.random.default_rng([seed, 4, code])
    per_fold = cfg.verification_pairs // 10
    half = per_fold // 2
    ids_per_fold = max(2, math.ceil(half / 2))
    lookalike = name in ("calfw", "cplfw")
    specs: list[ImageSpec] = []
    issame: list[bool] = []
    twin = 0
    for fold in range(10):
        pool = base + fold * ids_per_fold + np.arange(ids_per_fold)
        for kind in ("genuine", "impostor"):
            for p in range(half):
                a = int(pool[p % ids_per_fold])
                k = len(issame)
                if kind == "genuine":
                    b_id, b_twin = a, -1
                elif lookalike:
                    b_id, b_twin = base + TWIN_OFFSET + twin, a
                    twin += 1
                else:
                    b_id = int(rng.choice(pool[pool != a]))
                    b_twin = -1
                if name in ("agedb_30", "calfw"):
                    a1 = float(rng.uniform(0.0, 0.3))
                    ages = (a1, a1 + float(rng.uniform(0.4, 0.7)))
                else:
                    ages = (float(rng.uniform(0.0, 0.3)), float(rng.uniform(0.0, 0.3)))
                if name == "cfp_fp":
                    yaws = (float(rng.normal(0, 4)), float(rng.choice([-1, 1]) * rng.uniform(50, 72)))
                elif name == "cplfw":
                    yaws = (float(rng.normal(0, 8)), float(rng.choice([-1, 1]) * rng.uniform(30, 60)))
                else:
                    yaws = (math.nan, math.nan)
                yaw_sd = 10.0 if name in ("agedb_30", "calfw") else 14.0
                specs.append(ImageSpec(a, -1, ages[0], (code, k, 0), yaws[0], yaw_sd, False, 0.0))
                specs.append(ImageSpec(b_id, b_twin, ages[1], (code, k, 1), yaws[1], yaw_sd, False, 0.0))
                issame.append(kind == "genuine")
    return specs, issame


class IJBPlan(NamedTuple):
    specs: list[ImageSpec]
    templates: np.ndarray
    medias: np.ndarray
    p1: np.ndarray
    p2: np.ndarray
    labels: np.ndarray


def plan_ijb(seed: int, name: str, cfg: SuiteConfig) -> IJBPlan:
    """Returns the IJB images (templates of media of video frames) and the template pair list."""
    code = SET_CODES[name]
    rng = np.random.default_rng([seed, 5, code])
    top = cfg.ijbb_degradation if name == "ijbb" else cfg.ijbc_degradation
    specs: list[ImageSpec] = []
    templates: list[int] = []
    medias: list[int] = []
    owner: list[int] = []  # identity of each template
    tid = mid = 0
    for i in range(cfg.ijb_identities):
        ident = code * ID_BLOCK + i
        for _ in range(cfg.ijb_templates_per_identity):
            tid += 1
            owner.append(ident)
            for _ in range(int(rng.integers(1, cfg.ijb_max_media_per_template + 1))):
                mid += 1
                frames = int(rng.integers(2, 5)) if rng.random() < 0.5 else 1
                level = top * (rng.uniform(0.0, 1.0) if name == "ijbb" else rng.uniform(0.4, 1.0))
                yaw = float(np.clip(rng.normal(0, 25), -75, 75))
                age = float(rng.uniform(0.0, 0.5))
                for f in range(frames):
                    specs.append(ImageSpec(ident, -1, age, (code, mid), yaw, 0.0, True, float(level), f))
                    templates.append(tid)
                    medias.append(mid)
    owner_arr = np.asarray(owner)
    t_ids = np.arange(1, tid + 1)
    # Every template pair at once (1M pairs in a Python loop took seconds).
    ia, ib = np.triu_indices(tid, 1)
    same = owner_arr[ia] == owner_arr[ib]
    gen = np.stack([t_ids[ia[same]], t_ids[ib[same]]], 1)
    cross = np.flatnonzero(~same)
    n_imp = min(cfg.ijb_impostor_pairs, len(cross))
    if n_imp < len(cross):
        cross = np.sort(rng.choice(cross, n_imp, replace=False))
    imp = np.stack([t_ids[ia[cross]], t_ids[ib[cross]]], 1)
    arr = np.concatenate([np.column_stack([gen, np.ones(len(gen), np.int64)]),
                          np.column_stack([imp, np.zeros(len(imp), np.int64)])]).astype(np.int64)
    order = rng.permutation(len(arr))
    arr = arr[order] if len(arr) else np.zeros((0, 3), np.int64)
    return IJBPlan(specs, np.asarray(templates, np.int64), np.asarray(medias, np.int64),
                   arr[:, 0], arr[:, 1], arr[:, 2])


# ----------------------------------------------------------------------------------------------
# rendering (runs in worker processes)


@lru_cache(maxsize=4096)
def _base_identity(seed: int, identity: int, spread: float) -> faces.Params:
    return faces.sample_identity(seed, identity, spread)


def identity_params(seed: int, spec: ImageSpec, cfg: SuiteConfig) -> faces.Params:
    """Returns the identity parameters an image spec is drawn with (look-alike blend and age applied)."""
    p = _base_identity(seed, spec.identity, cfg.identity_spread)
    if spec.twin_of >= 0:
        rng = np.random.default_rng([seed, 6, spec.identity])
        t = cfg.lookalike_mix * float(rng.uniform(0.75, 1.25))
        p = faces.blend_identities(_base_identity(seed, spec.twin_of, cfg.identity_spread), p, t)
    return faces.age_identity(p, spec.age, cfg.age_drift)


def _nuisance(seed: int, spec: ImageSpec, cfg: SuiteConfig) -> tuple[faces.Params, np.random.Generator]:
    rng = np.random.default_rng([seed, 2, *spec.key])
    yaw = None if math.isnan(spec.yaw) else spec.yaw
    strength = cfg.nuisance * (1.2 if spec.crop else 1.0)
    n = faces.sample_nuisance(rng, strength, yaw=yaw, yaw_sd=spec.yaw_sd, age=spec.age)
    if spec.frame > 0:  # a later frame of the same video: the media's nuisance, slightly changed
        frng = np.random.default_rng([seed, 7, *spec.key, spec.frame])
        n = faces.perturb_nuisance(n, frng, 1.0)
    return n, rng


class Rendered(NamedTuple):
    """A rendered chunk: aligned uint8 images, or JPEG crops with landmarks and detector scores."""

    images: Optional[np.ndarray]
    crops: Optional[list[bytes]]
    landmarks: Optional[np.ndarray]
    scores: Optional[np.ndarray]


def render_chunk(seed: int, cfg: SuiteConfig, specs: Sequence[ImageSpec]) -> Rendered:
    """Returns the images of ``specs`` (all aligned or all crops), a pure function of its arguments."""
    idents = faces.stack([identity_params(seed, s, cfg) for s in specs])
    nuis_rngs = [_nuisance(seed, s, cfg) for s in specs]
    nuis = faces.stack([n for n, _ in nuis_rngs])
    rngs = [r for _, r in nuis_rngs]
    g = faces.pose_geometry(idents, nuis)
    if not specs[0].crop:
        s = cfg.nuisance
        jitter = np.stack([[r.normal(0, 1.2 * s), r.normal(0, 1.2 * s), r.normal(0, 0.035 * s),
                            np.radians(r.normal(0, 2.0 * s))] for r in rngs])
        a, b = faces.aligned_transform(g["landmarks"], jitter)
        images = faces.render(idents, nuis, a, b, 112)
        for k, spec in enumerate(specs):
            if spec.degradation > 0:
                drng = np.random.default_rng([seed, 8, *spec.key])
                images[k] = decode(degrade(images[k], spec.degradation, drng))
        return Rendered(images, None, None, None)

    size = cfg.crop_size
    a_al, b_al = faces.aligned_transform(g["landmarks"])
    a = np.empty(len(specs), np.complex128)
    b = np.empty(len(specs), np.complex128)
    levels = np.empty(len(specs))
    for k, spec in enumerate(specs):
        mrng = np.random.default_rng([seed, 9, *spec.key])  # shared by the frames of one media
        scale = mrng.uniform(0.55, 0.85) * size / 112.0
        theta = np.radians(mrng.normal(0, 12))
        off = mrng.uniform(-0.08, 0.08, 2) * size
        level = spec.degradation
        if spec.frame > 0:
            frng = np.random.default_rng([seed, 10, *spec.key, spec.frame])
            scale *= math.exp(frng.normal(0, 0.02))
            theta += np.radians(frng.normal(0, 1.0))
            off = off + frng.normal(0, 1.5, 2)
            level = float(np.clip(level + frng.normal(0, 0.04), 0, 1))
        levels[k] = level
        a[k] = a_al[k] * scale * np.exp(1j * theta)
        q0 = (56.0 + 68.0j - b_al[k]) / a_al[k]  # face-frame point at the aligned crop's centre
        b[k] = ((size - 1) / 2 + off[0]) + 1j * ((size - 1) / 2 + off[1]) - a[k] * q0
    images = faces.render(idents, nuis, a, b, size)
    true_lm = faces.apply_similarity(a, b, g["landmarks"])
    crops, lms, scores = [], [], []
    for k, spec in enumerate(specs):
        drng = np.random.default_rng([seed, 11, *spec.key, spec.frame])
        crops.append(degrade(images[k], levels[k], drng))
        lms.append(true_lm[k] + drng.normal(0, 0.6 + 2.0 * levels[k], (5, 2)))
        yaw = abs(float(nuis["yaw"][k]))
        scores.append(np.clip(0.995 - 0.45 * levels[k] ** 2 - 0.3 * (yaw / 1.4) ** 2 + drng.normal(0, 0.02),
                              0.05, 1.0))
    return Rendered(None, crops, np.asarray(lms, np.float32), np.asarray(scores, np.float32))


def _render_task(args: tuple[int, SuiteConfig, Sequence[ImageSpec]]) -> Rendered:
    return render_chunk(*args)


def _chunks(specs: Sequence[ImageSpec]) -> list[list[ImageSpec]]:
    return [list(specs[i:i + CHUNK]) for i in range(0, len(specs), CHUNK)]


class Renderer:
    """Renders chunks in order, in worker processes (or in this one when workers <= 1).

    Workers are spawned, not forked (the caller may hold torch or Ray threads). A worker that cannot
    start (a script calling build_suite without an ``if __name__ == "__main__":`` guard) breaks the
    executor with an error instead of being respawned forever, as a multiprocessing.Pool would.
    """

    def __init__(self, seed: int, cfg: SuiteConfig, workers: int, bar: Any) -> None:
        self.seed, self.cfg, self.bar = seed, cfg, bar
        self.pool = (ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
                     if workers > 1 else None)

    def run(self, specs: Sequence[ImageSpec]) -> Iterator[Rendered]:
        tasks = [(self.seed, self.cfg, c) for c in _chunks(specs)]
        results = self.pool.map(_render_task, tasks) if self.pool else map(_render_task, tasks)
        for task, out in zip(tasks, results):
            self.bar.update(len(task[2]))
            yield out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------------------------
# build


def _manifest_body(seed: int, cfg: SuiteConfig) -> dict[str, Any]:
    return {"version": SUITE_VERSION, "seed": int(seed), "config": asdict(cfg)}


def identity_ranges(cfg: SuiteConfig) -> dict[str, tuple[int, int]]:
    """Returns the half-open identity-id range each part of the suite draws from (disjoint)."""
    ranges = {"synth_train": (0, cfg.train_identities)}
    for name in (*VERIFICATION_SETS, "ijbb", "ijbc"):
        ranges[f"synth_{name}"] = _identity_range(SET_CODES[name])
    return ranges


def build_suite(out: PathLike, seed: int = 0, workers: Optional[int] = None, progress: bool = True,
                **size_knobs: Any) -> Path:
    """Returns ``out`` after writing the whole synthetic suite there, manifest last.

    Layout: faces_synth/{train.rec,train.idx,property}, faces_synth/synth_<set>.bin for lfw, cfp_fp,
    agedb_30, calfw and cplfw, IJB_synth/SYNTH_IJBB and IJB_synth/SYNTH_IJBC, and synth_manifest.json.
    ``size_knobs`` are SuiteConfig fields; ``workers`` (default: up to 2 processes) and ``progress``
    do not change the files.
    """
    cfg = make_config(**size_knobs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / MANIFEST
    manifest.unlink(missing_ok=True)  # an interrupted rebuild must not look complete
    workers = min(2, os.cpu_count() or 1) if workers is None else int(workers)
    start = time.perf_counter()

    train_specs, train_labels = plan_train(seed, cfg)
    ver_plans = {name: plan_verification(seed, name, cfg) for name in VERIFICATION_SETS}
    ijb_plans = {name: plan_ijb(seed, name, cfg) for name in IJB_SETS}
    total = len(train_specs) + sum(len(s) for s, _ in ver_plans.values()) + sum(len(p.specs) for p in ijb_plans.values())
    logger.info("building the synthetic suite in %s: %d images, seed %d, %d worker(s)", out, total, seed, workers)
    files: list[str] = []
    with tqdm(total=total, desc="synthetic suite", unit="img", disable=not progress) as bar:
        renderer = Renderer(seed, cfg, workers, bar)
        try:
            folder = out / "faces_synth"
            bar.set_postfix_str("synth_train")
            train_iter = (im for r in renderer.run(train_specs) for im in r.images)
            write_recordio_dataset(folder, train_iter, train_labels)
            files += ["faces_synth/train.rec", "faces_synth/train.idx", "faces_synth/property"]
            for name, (specs, issame) in ver_plans.items():
                bar.set_postfix_str(f"synth_{name}")
                images = np.concatenate([r.images for r in renderer.run(specs)])
                write_verification_bin(folder / f"synth_{name}.bin", images, issame)
                files.append(f"faces_synth/synth_{name}.bin")
            for name, plan in ijb_plans.items():
                relpath, ijb_name = IJB_SETS[name]
                bar.set_postfix_str(ijb_name)
                parts = list(renderer.run(plan.specs))
                crops = [c for r in parts for c in r.crops]
                image_names = [f"{j + 1}.jpg" for j in range(len(crops))]
                write_ijb(out / relpath, ijb_name, crops, image_names, plan.templates, plan.medias,
                          np.concatenate([r.landmarks for r in parts]), np.concatenate([r.scores for r in parts]),
                          plan.p1, plan.p2, plan.labels)
                files += [f"{relpath}/meta/{ijb_name}_{s}.txt"
                          for s in ("face_tid_mid", "template_pair_label", "name_5pts_score")]
        except BrokenProcessPool as exc:
            raise ConfigError(None, f"a rendering worker process died ({exc})", field="workers",
                              fix="call build_suite under `if __name__ == '__main__':` (workers are spawned), "
                                  "or pass workers=1") from exc
        finally:
            renderer.close()

    body = _manifest_body(seed, cfg)
    body["identity_ranges"] = {k: list(v) for k, v in identity_ranges(cfg).items()}
    body["files"] = {f: (out / f).stat().st_size for f in files}
    body["counts"] = {"train_images": len(train_specs), "verification_pairs": cfg.verification_pairs,
                      **{f"synth_{n}_faces": len(p.specs) for n, p in ijb_plans.items()},
                      **{f"synth_{n}_pairs": int(p.labels.size) for n, p in ijb_plans.items()}}
    body["build_seconds"] = round(time.perf_counter() - start, 1)
    with atomic_write(manifest, "w") as fh:
        json.dump(body, fh, indent=1, sort_keys=True)
    logger.info("synthetic suite complete in %s (%.1f s)", out, body["build_seconds"])
    return out


def suite_is_complete(out: PathLike, seed: int = 0, **size_knobs: Any) -> bool:
    """Returns True when ``out`` holds a finished suite built with this seed and these knobs.

    Finished means the manifest (written last) exists, names the same version, seed and config, and
    every file it lists is present with the size it recorded.
    """
    knobs = {k: v for k, v in size_knobs.items() if k not in ("workers", "progress")}
    return manifest_files_present(out, MANIFEST, _manifest_body(seed, make_config(**knobs)))


def manifest_files_present(out: PathLike, manifest: str, want: dict[str, Any]) -> bool:
    """Returns True when ``out/manifest`` holds every key of ``want`` with the same value and every
    file it lists is present with the size it recorded (what "built and complete" means here)."""
    path = Path(out) / manifest
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if any(body.get(k) != v for k, v in want.items()):
        return False
    files = body.get("files")
    if not isinstance(files, dict) or not files:
        return False
    for rel, size in files.items():
        f = Path(out) / rel
        if not f.is_file() or f.stat().st_size != size:
            return False
    return True
