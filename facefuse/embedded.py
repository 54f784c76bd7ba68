"""The embedded default: everything a sweep needs on one machine with nothing configured.

Layout under the base directory (``.facefuse`` in the directory a command starts from)::

    data/        synthetic benchmark in the real formats (facefuse.synth)
    backbones/   two tiny IResNets pretrained here, in the insightface and AdaFace layouts
    cache/       feature-map cache
    ray_results/ Ray Tune storage (sweep state for resume)

Each step is skipped when its output is already complete.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from facefuse.data._io import atomic_write_json

logger = logging.getLogger(__name__)

EMBEDDED_DIRNAME = ".facefuse"


@dataclass(frozen=True)
class EmbeddedPaths:
    base: Path

    @property
    def data_root(self) -> Path:
        return self.base / "data"

    @property
    def backbones_dir(self) -> Path:
        return self.base / "backbones"

    @property
    def arcface_checkpoint(self) -> Path:
        return self.backbones_dir / "arcface_tiny" / "backbone.pth"

    @property
    def adaface_checkpoint(self) -> Path:
        return self.backbones_dir / "adaface_tiny" / "adaface_tiny.ckpt"

    @property
    def cache_dir(self) -> Path:
        return self.base / "cache"

    @property
    def results_dir(self) -> Path:
        return self.base / "ray_results"


def embedded_paths(cwd: Optional[os.PathLike[str] | str] = None) -> EmbeddedPaths:
    """Returns the embedded default's absolute paths for a starting directory."""
    return EmbeddedPaths(Path(cwd or os.getcwd()).resolve() / EMBEDDED_DIRNAME)


def ensure_synth(data_root: Path, seed: int = 0) -> bool:
    """Builds the synthetic suite unless complete; returns True when it had to build."""
    from facefuse.synth import build_suite, suite_is_complete

    if suite_is_complete(data_root, seed=seed):
        logger.info("synthetic suite in %s is complete; skipping", data_root)
        return False
    t0 = time.perf_counter()
    build_suite(data_root, seed=seed)
    logger.info("built the synthetic suite in %.0fs", time.perf_counter() - t0)
    return True


def ensure_ladder(data_root: Path, seed: int = 0) -> bool:
    """Builds the quality ladder (facefuse.synth.ladder) unless complete; returns True when it had to build."""
    from facefuse.synth import build_ladder, ladder_is_complete

    if ladder_is_complete(data_root, seed=seed):
        logger.info("quality ladder in %s is complete; skipping", data_root)
        return False
    build_ladder(data_root, seed=seed)
    return True


def _backbones_marker(out_dir: Path) -> Path:
    return out_dir / "pretrain_done.json"


def ensure_tiny_backbones(data_root: Path, out_dir: Path, seed: int = 0,
                          release_dir: Optional[Path] = None) -> bool:
    """Pretrains the two tiny backbones unless present; returns True when it had to train.

    When the repository's released checkpoints (``facefuse.backbones.release``) were trained on
    this very suite, they are installed instead of pretraining (minutes saved on a cold start).
    """
    from facefuse.backbones.pretrain import pretrain_tiny_backbones
    from facefuse.backbones.release import RELEASE_DIR, install_release, released_backbones

    paths = EmbeddedPaths(out_dir.parent)
    marker = _backbones_marker(out_dir)
    if marker.exists() and paths.arcface_checkpoint.exists() and paths.adaface_checkpoint.exists():
        try:
            if json.loads(marker.read_text()).get("seed") == seed:
                logger.info("tiny backbones in %s exist; skipping", out_dir)
                return False
        except json.JSONDecodeError:
            pass
    marker.unlink(missing_ok=True)
    released = released_backbones(data_root, release_dir or RELEASE_DIR, seed)
    if released is not None:
        installed = install_release(released, out_dir)
        atomic_write_json(marker, {"seed": seed, "source": "release",
                                   "result": {k: str(v) for k, v in installed.items()}})
        logger.info("installed the released tiny backbones (trained on this very suite) in %s",
                    out_dir)
        return False
    result = pretrain_tiny_backbones(data_root, out_dir, seed=seed)
    atomic_write_json(marker, {"seed": seed, "source": "pretrained", "result": result})
    return True
