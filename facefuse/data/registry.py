"""The dataset registry: every benchmark and training set by name, with its format and place."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from facefuse.errors import ConfigError, DataFormatError

PathLike = Union[str, "os.PathLike[str]"]

DATA_ROOT_ENV = "FACEFUSE_DATA"
KINDS = ("verification", "ijb", "recordio", "imagefolder")
QUALITIES = ("high", "mixed", "low")
PRIMARY_METRICS = ("acc", "tar_far_1e-4")


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: its format (kind), path under the data root, quality and primary metric."""

    name: str
    kind: str
    relpath: str
    quality: str
    primary_metric: str
    ijb_name: Optional[str] = None
    synthetic: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"dataset {self.name}: kind {self.kind!r} not in {KINDS}")
        if self.quality not in QUALITIES:
            raise ValueError(f"dataset {self.name}: quality {self.quality!r} not in {QUALITIES}")
        if self.primary_metric not in PRIMARY_METRICS:
            raise ValueError(f"dataset {self.name}: primary_metric {self.primary_metric!r} not in {PRIMARY_METRICS}")
        if (self.kind == "ijb") != (self.ijb_name is not None):
            raise ValueError(f"dataset {self.name}: ijb_name is required for kind 'ijb' and only for it")

    @property
    def is_eval(self) -> bool:
        """Returns True for evaluation sets (verification and IJB), False for training sets."""
        return self.kind in ("verification", "ijb")


VERIFICATION_NAMES = ("lfw", "cfp_fp", "agedb_30", "calfw", "cplfw")
#: The synthetic quality ladder (facefuse.synth.ladder): one .bin per level, cleanest first. The
#: qualities here are labels for grouping; selection uses the quality measured from the images.
LADDER_DIR = "faces_synth_ladder"
LADDER_NAMES = tuple(f"synth_q{k}" for k in range(5))
_LADDER_LABELS = ("high", "high", "mixed", "low", "low")


def _build() -> dict[str, DatasetSpec]:
    specs = [DatasetSpec("ms1mv2", "recordio", "faces_emore", "high", "acc")]
    specs += [DatasetSpec(n, "verification", f"faces_emore/{n}.bin", "high", "acc") for n in VERIFICATION_NAMES]
    specs += [DatasetSpec("ijbb", "ijb", "IJB_release/IJBB", "mixed", "tar_far_1e-4", ijb_name="ijbb"),
              DatasetSpec("ijbc", "ijb", "IJB_release/IJBC", "mixed", "tar_far_1e-4", ijb_name="ijbc"),
              DatasetSpec("synth_train", "recordio", "faces_synth", "high", "acc", synthetic=True)]
    specs += [DatasetSpec(f"synth_{n}", "verification", f"faces_synth/synth_{n}.bin", "high", "acc", synthetic=True)
              for n in VERIFICATION_NAMES]
    specs += [DatasetSpec("synth_ijbb", "ijb", "IJB_synth/SYNTH_IJBB", "mixed", "tar_far_1e-4",
                          ijb_name="synth_ijbb", synthetic=True),
              DatasetSpec("synth_ijbc", "ijb", "IJB_synth/SYNTH_IJBC", "low", "tar_far_1e-4",
                          ijb_name="synth_ijbc", synthetic=True)]
    specs += [DatasetSpec(n, "verification", f"{LADDER_DIR}/{n}.bin", q, "acc", synthetic=True)
              for n, q in zip(LADDER_NAMES, _LADDER_LABELS)]
    return {s.name: s for s in specs}


DATASETS: dict[str, DatasetSpec] = _build()


def get_dataset(name: str) -> DatasetSpec:
    """Returns the spec of a registered dataset; an unknown name is a ConfigError listing the known ones."""
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise ConfigError(None, f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}",
                          field="dataset", fix="use one of the names listed") from None


def resolve_data_root(root: Optional[PathLike] = None) -> Path:
    """Returns the data root: the argument, else $FACEFUSE_DATA, else a ConfigError saying how to set it."""
    if root is None or str(root) == "":
        env = os.environ.get(DATA_ROOT_ENV, "")
        if not env:
            raise ConfigError(None, "no data root given", field="data_root",
                              fix=f"pass --data-root / the job file's data root, or set {DATA_ROOT_ENV}")
        root = env
    return Path(root).expanduser().resolve()


def _required_files(spec: DatasetSpec, path: Path) -> list[Path]:
    if spec.kind == "recordio":
        return [path / "train.rec", path / "train.idx", path / "property"]
    if spec.kind == "ijb":
        meta = path / "meta"
        assert spec.ijb_name is not None
        return [meta / f"{spec.ijb_name}_face_tid_mid.txt", meta / f"{spec.ijb_name}_name_5pts_score.txt",
                meta / f"{spec.ijb_name}_template_pair_label.txt", path / "loose_crop"]
    return []


def dataset_path(name: str, root: Optional[PathLike] = None) -> Path:
    """Returns the absolute path of a dataset (a .bin file or a folder), checking that it exists.

    A missing file or folder is a DataFormatError naming the missing path; for folders the files a
    reader needs (train.rec/.idx/property, the IJB meta files and loose_crop/) are checked too.
    """
    spec = get_dataset(name)
    data_root = resolve_data_root(root)
    path = data_root / spec.relpath
    ladder = " --ladder" if name in LADDER_NAMES else ""
    hint = (f"build it with `python -m platform.prepare synth --out <data root>{ladder}`" if spec.synthetic
            else f"place the released files under {data_root} in the layout documented in facefuse.data.registry")
    if spec.kind == "verification":
        if not path.is_file():
            raise DataFormatError(path, f"dataset {name!r}: file not found", field=name, fix=hint)
        return path
    if not path.is_dir():
        raise DataFormatError(path, f"dataset {name!r}: folder not found", field=name, fix=hint)
    for need in _required_files(spec, path):
        if not need.exists():
            raise DataFormatError(need, f"dataset {name!r}: required file missing", field=name, fix=hint)
    return path
