"""The quality ladder: the same held-out pairs at graded levels of blur, noise, resolution, JPEG and pose.

Every level is one insightface ``.bin`` verification set (``faces_synth_ladder/synth_q<k>.bin``,
registered as ``synth_q0`` .. ``synth_q4``) holding the same pairs of the same identities with the
same expressions, lighting and backgrounds; only two things grow with the level:

- the degradation strength ``k / (levels - 1)`` of ``facefuse.synth.degrade.degrade`` (blur,
  down- and up-sampling, sensor noise, JPEG quality falling from 95 to about 10); each image
  draws its degradation's random shape once, so a higher level degrades the same image along
  the same direction, only further;
- the spread of head yaw, from ``LADDER_YAW_SD[0]`` to ``LADDER_YAW_SD[1]`` degrees (the same
  standard-normal draw per image, scaled).

Identities are ``SET_CODES["ladder"] * ID_BLOCK + i``: disjoint from the train set and from every
other evaluation set. The levels carry labels in the registry (high .. low), but what selection
uses is the quality ``facefuse.quality.measure_quality`` measures from the images themselves.
Building it is optional (``python -m platform.prepare synth --out DIR --ladder``; jobs that
evaluate a ladder level build it when their data root is the embedded one).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
from tqdm.auto import tqdm

from facefuse.data import write_verification_bin
from facefuse.data._io import atomic_write
from facefuse.data.registry import LADDER_DIR, LADDER_NAMES
from facefuse.errors import ConfigError
from facefuse.synth.suite import (SET_CODES, SUITE_VERSION, ID_BLOCK, ImageSpec, PathLike, Renderer,
                                  make_config, manifest_files_present, plan_verification)

logger = logging.getLogger(__name__)

LADDER_MANIFEST = "synth_ladder_manifest.json"
#: Bump whenever the ladder's planning or levels change what a given (seed, config) produces.
LADDER_VERSION = 1
#: Pairs per level (10 person-disjoint folds, half genuine): the suite's own verification size.
LADDER_PAIRS = 600
#: Yaw spread (degrees, before the suite's nuisance strength) at the first and the last level.
LADDER_YAW_SD = (8.0, 40.0)


@dataclass(frozen=True)
class LadderLevel:
    """One rung: its dataset name, degradation strength in [0, 1] and yaw spread in degrees."""

    name: str
    strength: float
    yaw_sd: float


def ladder_levels() -> list[LadderLevel]:
    """Returns the ladder's levels, cleanest first (one per registered ``synth_q<k>`` set)."""
    n = len(LADDER_NAMES)
    out = []
    for k, name in enumerate(LADDER_NAMES):
        s = k / (n - 1)
        out.append(LadderLevel(name, round(s, 6), LADDER_YAW_SD[0] + s * (LADDER_YAW_SD[1] - LADDER_YAW_SD[0])))
    return out


def plan_ladder(seed: int, pairs: int = LADDER_PAIRS, **size_knobs: Any
                ) -> tuple[dict[str, list[ImageSpec]], list[bool]]:
    """Returns ({level name: 2N image specs}, issame [N]): one pair list, redrawn at every level.

    The base plan is the suite's verification planner on the ladder's own identity block; each
    level keeps every image's key (so its nuisance and degradation draws) and changes only the
    yaw spread and the degradation strength.
    """
    cfg = replace(make_config(**size_knobs), verification_pairs=pairs)
    base, issame = plan_verification(seed, "ladder", cfg)
    levels = {lv.name: [s._replace(yaw_sd=lv.yaw_sd, degradation=lv.strength) for s in base]
              for lv in ladder_levels()}
    return levels, issame


def identity_range() -> tuple[int, int]:
    """Returns the half-open identity-id range the ladder draws from."""
    code = SET_CODES["ladder"]
    return code * ID_BLOCK, (code + 1) * ID_BLOCK


def _manifest_body(seed: int, pairs: int, size_knobs: dict[str, Any]) -> dict[str, Any]:
    return {"version": LADDER_VERSION, "suite_version": SUITE_VERSION, "seed": int(seed),
            "pairs": int(pairs), "config": asdict(make_config(**size_knobs)),
            "levels": [asdict(lv) for lv in ladder_levels()]}


def build_ladder(out: PathLike, seed: int = 0, pairs: int = LADDER_PAIRS, workers: Optional[int] = None,
                 progress: bool = True, **size_knobs: Any) -> Path:
    """Returns ``out`` after writing every ladder level there, manifest last.

    ``size_knobs`` are the suite's SuiteConfig fields (identity spread, nuisance strength, ...);
    ``pairs`` must be a positive multiple of 20. ``workers`` and ``progress`` do not change the
    files.
    """
    if pairs < 20 or pairs % 20:
        raise ConfigError(None, f"pairs={pairs} is not a positive multiple of 20", field="pairs",
                          fix="use e.g. 600 (10 folds, half genuine)")
    out = Path(out)
    folder = out / LADDER_DIR
    folder.mkdir(parents=True, exist_ok=True)
    manifest = out / LADDER_MANIFEST
    manifest.unlink(missing_ok=True)  # an interrupted rebuild must not look complete
    workers = min(2, os.cpu_count() or 1) if workers is None else int(workers)
    cfg = make_config(**size_knobs)
    levels, issame = plan_ladder(seed, pairs, **size_knobs)
    total = sum(len(s) for s in levels.values())
    logger.info("building the quality ladder in %s: %d levels x %d pairs, seed %d", folder, len(levels),
                pairs, seed)
    start = time.perf_counter()
    files: list[str] = []
    with tqdm(total=total, desc="quality ladder", unit="img", disable=not progress) as bar:
        renderer = Renderer(seed, cfg, workers, bar)
        try:
            for name, specs in levels.items():
                bar.set_postfix_str(name)
                images = np.concatenate([r.images for r in renderer.run(specs)])
                write_verification_bin(folder / f"{name}.bin", images, issame)
                files.append(f"{LADDER_DIR}/{name}.bin")
        finally:
            renderer.close()
    body = _manifest_body(seed, pairs, size_knobs)
    body["identity_range"] = list(identity_range())
    body["files"] = {f: (out / f).stat().st_size for f in files}
    body["build_seconds"] = round(time.perf_counter() - start, 1)
    with atomic_write(manifest, "w") as fh:
        json.dump(body, fh, indent=1, sort_keys=True)
    logger.info("quality ladder complete in %s (%.1f s)", folder, body["build_seconds"])
    return out


def ladder_is_complete(out: PathLike, seed: int = 0, pairs: int = LADDER_PAIRS, **size_knobs: Any) -> bool:
    """Returns True when ``out`` holds a finished ladder built with this seed, size and these knobs."""
    knobs = {k: v for k, v in size_knobs.items() if k not in ("workers", "progress")}
    return manifest_files_present(out, LADDER_MANIFEST, _manifest_body(seed, pairs, knobs))
