"""The released tiny backbones: trained once by the release recipe, shipped in the repository.

``facefuse/backbones/release/`` holds the two checkpoints in their official layouts (insightface
``backbone.pth``, AdaFace ``.ckpt``) and ``release.json``: the recipes, the digest of the
synthetic suite they learned from (the content fingerprint of its train set,
``facefuse.data.fingerprint``), each file's sha256, their scores on the suite and the command
that made them. The embedded default installs them instead of pretraining when the suite built on
this machine has that digest (``released_backbones``); on any mismatch (another seed, another
suite version, a file that does not hash to its record) it pretrains with the quick recipe as
before, and says why. ``python -m platform.prepare backbones --recipe release --ship`` trains them
again and rewrites this folder.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Optional, Union

from facefuse.backbones.checkpoints import checkpoint_hash
from facefuse.data._io import atomic_write, atomic_write_json
from facefuse.data.fingerprint import content_fingerprint

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
RELEASE_DIR = Path(__file__).resolve().parent / "release"
MANIFEST = "release.json"
TRAIN_SET = "synth_train"
#: The embedded layout each released file is installed as (``facefuse.embedded.EmbeddedPaths``).
FILES = {"arcface": "arcface_tiny/backbone.pth", "adaface": "adaface_tiny/adaface_tiny.ckpt"}


def suite_digest(data_root: PathLike) -> str:
    """Returns the digest a release is matched on: the content fingerprint of the suite's train set."""
    return content_fingerprint(TRAIN_SET, data_root)


def read_manifest(release_dir: PathLike = RELEASE_DIR) -> Optional[dict[str, Any]]:
    """Returns the release manifest, or None when the folder holds no release."""
    path = Path(release_dir) / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def released_backbones(data_root: PathLike, release_dir: PathLike = RELEASE_DIR,
                       seed: int = 0) -> Optional[dict[str, Path]]:
    """Returns {"arcface": path, "adaface": path} of the shipped checkpoints when they were trained
    on this very suite and hash to their records; None (and the reason, logged) otherwise."""
    manifest = read_manifest(release_dir)
    if manifest is None:
        logger.info("no released tiny backbones in %s", release_dir)
        return None
    if int(manifest.get("suite_seed", -1)) != seed:
        logger.info("released tiny backbones were trained on the suite of seed %s, not %s; "
                    "pretraining", manifest.get("suite_seed"), seed)
        return None
    digest = suite_digest(data_root)
    if manifest.get("suite_digest") != digest:
        logger.info("the synthetic suite in %s (digest %s) is not the one the released tiny "
                    "backbones learned from (%s); pretraining", data_root, digest,
                    manifest.get("suite_digest"))
        return None
    out: dict[str, Path] = {}
    for key in FILES:
        entry = manifest["backbones"][key]
        path = Path(release_dir) / entry["file"]
        if not path.is_file() or checkpoint_hash(path) != entry["sha256"]:
            logger.warning("%s: missing or not the released file (sha256 %s expected); "
                           "pretraining instead", path, entry["sha256"])
            return None
        out[key] = path
    return out


def install_release(files: dict[str, Path], out_dir: PathLike) -> dict[str, Path]:
    """Returns the installed paths after copying released checkpoints into the embedded layout."""
    installed = {}
    for key, src in files.items():
        dst = Path(out_dir) / FILES[key]
        with open(src, "rb") as fh, atomic_write(dst, "wb") as out:
            shutil.copyfileobj(fh, out)
        installed[key] = dst
    return installed


def ship_release(checkpoints: dict[str, Path], data_root: PathLike, recipes: dict[str, Any],
                 scores: dict[str, Any], command: str, seed: int = 0,
                 release_dir: PathLike = RELEASE_DIR) -> Path:
    """Returns the manifest's path after writing two trained checkpoints and their record."""
    release_dir = Path(release_dir)
    entries = {}
    for key, src in checkpoints.items():
        name = Path(FILES[key]).name  # backbone.pth, adaface_tiny.ckpt
        with open(src, "rb") as fh, atomic_write(release_dir / name, "wb") as out:
            shutil.copyfileobj(fh, out)
        entries[key] = {"file": name, "sha256": checkpoint_hash(release_dir / name),
                        "recipe": recipes[key], "scores": scores.get(key, {})}
    manifest = {"suite_seed": seed, "suite_digest": suite_digest(data_root),
                "train_set": TRAIN_SET, "command": command, "backbones": entries}
    atomic_write_json(release_dir / MANIFEST, manifest)
    return release_dir / MANIFEST


#: The sets the resemblance to the real pair is judged on.
HIGH_QUALITY = ("synth_lfw", "synth_cfp_fp", "synth_agedb_30")
LOW_QUALITY = ("synth_ijbb", "synth_ijbc")


def resemblance(arcface: dict[str, float], adaface: dict[str, float]) -> dict[str, Any]:
    """Returns how far a pair's scores (``evaluate_backbone`` keys) resemble the real pair's shape:
    accuracies within 2 points of each other on the high-quality sets, AdaFace ahead at
    TAR@FAR=1e-4 on the low-quality ones."""
    gaps = {s: round(adaface[f"{s}/acc"] - arcface[f"{s}/acc"], 4) for s in HIGH_QUALITY
            if f"{s}/acc" in arcface and f"{s}/acc" in adaface}
    leads = {s: round(adaface[f"{s}/tar_far_0.0001"] - arcface[f"{s}/tar_far_0.0001"], 4)
             for s in LOW_QUALITY
             if f"{s}/tar_far_0.0001" in arcface and f"{s}/tar_far_0.0001" in adaface}
    close = bool(gaps) and all(abs(g) <= 0.02 for g in gaps.values())
    ahead = bool(leads) and all(v > 0 for v in leads.values())
    return {"high_quality_gap": gaps, "low_quality_lead": leads, "close_on_high_quality": close,
            "adaface_ahead_on_low_quality": ahead, "resembles_real_pair": close and ahead}
