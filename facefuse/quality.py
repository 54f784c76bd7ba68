"""Image quality measured from the images, and the best beta against it.

The platform's question is which beta suits a dataset of a given quality. A level's label (the
registry's high / mixed / low) is not a measurement, so quality is measured from the images:

- ``adaface_norm``: the mean norm of the AdaFace backbone's embedding over the set's images.
  AdaFace's margin adapts to exactly this norm, its proxy of image quality (low for blurred,
  noisy, small or turned faces); it is measured with the job's own AdaFace checkpoint, so it is
  comparable only between sets measured with the same checkpoint (its sha256 is on the sweep).
- ``sharpness``: the mean log10 variance of the Laplacian of the image at half resolution
  (averaging 2x2 pixels first keeps sensor noise from passing for detail); needs no backbone.

Each score comes with its standard error over the images. A set's quality is the mean over its
own images, so the fit and the prediction treat it as exact when every image was measured and
use the finite-population-corrected error when a subset was (``QualityScore.set_se``). A sweep
whose job sets
``selection: {quality: <measure>}`` logs every evaluated set's score on its parent run
(``facefuse.tracking.schema.quality_key``). ``beta_vs_quality`` chooses each such set's best
beta with its interval (``facefuse.selection.select_beta`` on the held-out selection part) and
fits log10(best beta) against the measured quality (``facefuse.stats.fit_beta_vs_quality``);
``predict_beta`` predicts the beta of a set that was not swept from its measured quality, with a
prediction interval, or refuses (fewer than three levels, or no relation in the data).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np

from facefuse.errors import ConfigError, FacefuseError
from facefuse.tracking import schema as S
from facefuse.tracking.store import experiment_ids, open_tracking, search_all_runs, tracking_call

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

    from facefuse.stats import QualityFit

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

MEASURES = S.QUALITY_MEASURES
DEFAULT_MEASURE = "adaface_norm"
#: Images a score is measured on at most (a seeded subset of bigger sets: IJB-C has 470k).
MAX_IMAGES = 4000
BATCH = 128
_SUBSET_SEED = 0


class NoPredictionError(FacefuseError):
    """The store cannot support a prediction: too few swept levels, or no relation in them."""


@dataclass
class QualityScore:
    """A dataset's measured quality: the mean over images and its standard error."""

    dataset: str
    measure: str
    value: float
    se: float
    n_images: int
    backbone_sha256: str = ""
    #: Images in the set (n_images of them were measured); 0: unknown.
    n_total: int = 0

    @property
    def set_se(self) -> float:
        """Returns the standard error of the value as the quality of this set: ``se`` with the
        finite-population correction, so 0 when every image was measured (a set's quality is the
        mean over its own images; only a subset's mean is uncertain)."""
        if self.n_total <= 0:
            return self.se
        return self.se * math.sqrt(max(0.0, 1.0 - self.n_images / self.n_total))

    def to_json(self) -> dict[str, Any]:
        """Returns the score as plain data."""
        return {"dataset": self.dataset, "measure": self.measure, "value": self.value,
                "se": self.se, "set_se": self.set_se, "n_images": self.n_images,
                "n_total": self.n_total, "backbone_sha256": self.backbone_sha256}


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------
def half_res_sharpness(images: np.ndarray) -> np.ndarray:
    """Returns log10 of the Laplacian variance of each image [N] after 2x2 averaging."""
    from facefuse.synth.degrade import laplacian_variance

    n, h, w, c = images.shape
    g = np.asarray(images, np.float32)[:, : h - h % 2, : w - w % 2]
    half = g.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))  # [N, H, W, 3] -> [N, H/2, W/2, 3]
    return np.log10(np.maximum(laplacian_variance(half), 1e-6))


def _check_measure(measure: str) -> None:
    if measure not in MEASURES:
        raise ConfigError(None, f"unknown quality measure {measure!r}", field="measure",
                          fix=f"use one of {', '.join(MEASURES)}")


def measure_quality(dataset: str, data_root: PathLike, backbone: Optional[PathLike] = None,
                    measure: str = DEFAULT_MEASURE, max_images: int = MAX_IMAGES) -> QualityScore:
    """Returns a registered dataset's quality measured from its (aligned) images.

    ``backbone`` is the AdaFace checkpoint for ``adaface_norm`` (required there, unused for
    ``sharpness``). Sets with more than ``max_images`` images are measured on a seeded subset.
    """
    import torch

    from facefuse.backbones.iresnet import to_input
    from facefuse.features.extract import image_source

    _check_measure(measure)
    if measure == "adaface_norm" and backbone is None:
        raise ConfigError(None, "the adaface_norm quality needs the AdaFace backbone",
                          field="backbone", fix="pass the AdaFace checkpoint (the job's backbones.adaface)")
    t0 = time.perf_counter()
    source = image_source(dataset, Path(data_root))
    idx = np.arange(source.count)
    if source.count > max_images:
        idx = np.sort(np.random.default_rng(_SUBSET_SEED).choice(source.count, max_images, replace=False))
    sha = ""
    model = None
    if measure == "adaface_norm":
        from facefuse.backbones.checkpoints import checkpoint_hash, load_backbone

        assert backbone is not None
        sha = checkpoint_hash(backbone)
        model = load_backbone(backbone).eval()
    values: list[np.ndarray] = []
    for start in range(0, len(idx), BATCH):
        images = source.read(idx[start:start + BATCH])
        if model is None:
            values.append(half_res_sharpness(images))
        else:
            with torch.no_grad():
                emb = model(to_input(images))  # [B, 3, 112, 112] -> [B, D]
            values.append(emb.norm(dim=1).double().numpy())
    v = np.concatenate(values)
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0
    score = QualityScore(dataset, measure, float(v.mean()), se, int(len(v)), sha, int(source.count))
    logger.info("quality of %s: %s = %.4g +- %.2g over %d images (%.1f s)", dataset, measure,
                score.value, score.se, score.n_images, time.perf_counter() - t0)
    return score


# ---------------------------------------------------------------------------------------------
# Quality records on a sweep's parent run
# ---------------------------------------------------------------------------------------------
def log_qualities(tracking_uri: Optional[str], parent_run_id: str,
                  scores: Sequence[QualityScore]) -> None:
    """Logs each score on the sweep's parent run (metrics ``quality/<dataset>/<measure>``,
    ``..._se``, ``..._n`` measured images, ``..._total`` images in the set; tag
    ``facefuse.quality_measure``)."""
    from mlflow.entities import Metric, RunTag

    if not scores:
        return
    client = open_tracking(tracking_uri)
    now = int(time.time() * 1000)
    metrics = []
    for s in scores:
        metrics += [Metric(S.quality_key(s.dataset, s.measure), s.value, now, 0),
                    Metric(S.quality_key(s.dataset, s.measure, S.SE_SUFFIX), s.se, now, 0),
                    Metric(S.quality_key(s.dataset, s.measure, S.QUALITY_N_SUFFIX),
                           float(s.n_images), now, 0),
                    Metric(S.quality_key(s.dataset, s.measure, S.QUALITY_TOTAL_SUFFIX),
                           float(s.n_total), now, 0)]
    measures = sorted({s.measure for s in scores})
    tracking_call("logging dataset qualities", client.log_batch, parent_run_id, metrics=metrics,
                  tags=[RunTag(S.TAG_QUALITY_MEASURE, ",".join(measures))])


def run_qualities(run: "Run", measure: Optional[str] = None) -> dict[str, QualityScore]:
    """Returns {dataset: score} recorded on a sweep's parent run (of ``measure``, else its first)."""
    names = S.tag_list(run.data.tags.get(S.TAG_QUALITY_MEASURE))
    if not names:
        return {}
    measure = measure or names[0]
    m = run.data.metrics
    out: dict[str, QualityScore] = {}
    for key, value in m.items():
        parsed = S.parse_quality_key(key)
        if parsed is None or parsed[1] != measure:
            continue
        dataset = parsed[0]
        out[dataset] = QualityScore(
            dataset, measure, float(value),
            float(m.get(S.quality_key(dataset, measure, S.SE_SUFFIX), 0.0)),
            int(m.get(S.quality_key(dataset, measure, S.QUALITY_N_SUFFIX), 0)),
            run.data.tags.get(S.TAG_ADAFACE_SHA256, "") if measure == "adaface_norm" else "",
            int(m.get(S.quality_key(dataset, measure, S.QUALITY_TOTAL_SUFFIX), 0)))
    return out


def quality_sweeps(client: "MlflowClient", ids: dict[str, str]) -> list["Run"]:
    """Returns the sweeps' parent runs that logged dataset qualities, latest first."""
    parents = search_all_runs(client, ids, S.kind_filter(S.KIND_SWEEP))
    found = [p for p in parents if p.data.tags.get(S.TAG_QUALITY_MEASURE)]
    return sorted(found, key=lambda r: r.info.start_time or 0, reverse=True)


# ---------------------------------------------------------------------------------------------
# Best beta against quality
# ---------------------------------------------------------------------------------------------
@dataclass
class BetaQualityPoint:
    """One swept level: its measured quality and the best beta chosen on it, with intervals."""

    dataset: str
    quality: float
    quality_se: float
    beta: float
    beta_interval: tuple[float, float]
    log_beta_sd: float
    at_edge: bool
    n_trials: int
    verdict: str

    def to_json(self) -> dict[str, Any]:
        """Returns the point as plain data."""
        return {"dataset": self.dataset, "quality": self.quality, "quality_se": self.quality_se,
                "beta": self.beta, "beta_interval": list(self.beta_interval),
                "log_beta_sd": self.log_beta_sd, "at_edge": self.at_edge,
                "n_trials": self.n_trials, "verdict": self.verdict}


@dataclass
class BetaQualityStudy:
    """A sweep's levels, the fitted relation (None with the reason when it cannot be fitted)."""

    sweep_id: str
    parent_run_id: str
    experiment: str
    measure: str
    points: list[BetaQualityPoint]
    fit: Optional["QualityFit"]
    reason: str = ""
    skipped: list[str] = field(default_factory=list)
    qualities: dict[str, QualityScore] = field(default_factory=dict)

    def summary(self) -> str:
        """Returns one line: the relation, that there is none, or why nothing was fitted."""
        head = f"best beta vs {self.measure} (sweep {self.sweep_id}, {len(self.points)} levels)"
        if self.fit is None:
            return f"{head}: no fit: {self.reason}"
        return f"{head}: {self.fit.verdict(self.measure)}"

    def to_json(self) -> dict[str, Any]:
        """Returns the study as plain data."""
        return {"sweep_id": self.sweep_id, "measure": self.measure,
                "points": [p.to_json() for p in self.points],
                "fit": None if self.fit is None else self.fit.to_json(),
                "reason": self.reason, "skipped": self.skipped, "summary": self.summary()}


def _points(tracking_uri: Optional[str], experiment: Optional[str], sweep_id: str,
            qualities: dict[str, QualityScore], exclude: Sequence[str]
            ) -> tuple[list[BetaQualityPoint], list[str]]:
    from facefuse.selection import select_beta
    from facefuse.stats import log_beta_sd

    points, skipped = [], []
    for dataset, q in sorted(qualities.items(), key=lambda kv: kv[1].value):
        if dataset in exclude:
            continue
        try:
            sel = select_beta(tracking_uri, dataset, experiment=experiment, sweep=sweep_id)
        except FacefuseError as exc:
            skipped.append(f"{dataset}: {exc}")
            continue
        if sel.estimate is None or sel.beta_interval is None:
            skipped.append(f"{dataset}: no interval for its best beta ({sel.verdict})")
            continue
        est = sel.estimate
        searched = (est.grid_beta[0], est.grid_beta[-1])
        points.append(BetaQualityPoint(
            dataset=dataset, quality=q.value, quality_se=q.set_se, beta=sel.beta,
            beta_interval=sel.beta_interval,
            log_beta_sd=log_beta_sd(sel.beta_interval, searched, est.level),
            at_edge=est.at_edge, n_trials=est.n_trials, verdict=sel.verdict))
    return points, skipped


def _study_of(tracking_uri: Optional[str], experiment: Optional[str], parent: "Run",
              measure: Optional[str], exclude: Sequence[str]) -> BetaQualityStudy:
    from facefuse.stats import MIN_LEVELS, TooFewLevelsError, fit_beta_vs_quality

    sweep_id = parent.data.tags.get(S.TAG_SWEEP_ID, "")
    qualities = run_qualities(parent, measure)
    measure = next(iter(qualities.values())).measure if qualities else (measure or DEFAULT_MEASURE)
    points, skipped = _points(tracking_uri, experiment, sweep_id, qualities, exclude)
    fit, reason = None, ""
    try:
        fit = fit_beta_vs_quality([p.quality for p in points], [p.quality_se for p in points],
                                  [math.log10(p.beta) for p in points],
                                  [p.log_beta_sd for p in points])
    except TooFewLevelsError as exc:
        reason = (f"{len(points)} swept level(s) with a measured quality and a beta interval "
                  f"({', '.join(p.dataset for p in points) or 'none'}); the relation needs at "
                  f"least {MIN_LEVELS} ({exc})")
    return BetaQualityStudy(sweep_id=sweep_id, parent_run_id=parent.info.run_id,
                            experiment=experiment or "", measure=measure, points=points, fit=fit,
                            reason=reason, skipped=skipped, qualities=qualities)


def _quality_parent(client: "MlflowClient", ids: dict[str, str], sweep: Optional[str],
                    where: str) -> "Run":
    parents = quality_sweeps(client, ids)
    if sweep is not None:
        parents = [p for p in parents if p.data.tags.get(S.TAG_SWEEP_ID) == sweep]
    if not parents:
        scope = f"sweep {sweep}" if sweep else "any sweep"
        raise NoPredictionError(f"no dataset qualities logged by {scope} in {where} -- run a sweep "
                                f"whose job sets selection.quality (jobs/beta_vs_quality.yaml)")
    return parents[0]


def beta_vs_quality(tracking_uri: Optional[str], experiment: Optional[str] = None,
                    sweep: Optional[str] = None, measure: Optional[str] = None,
                    exclude: Sequence[str] = ()) -> BetaQualityStudy:
    """Returns the best beta of every level of a sweep against its measured quality, fitted.

    The sweep is the latest one that logged qualities (``sweep`` names another); ``exclude``
    leaves datasets out of the fit (a leave-one-out prediction). Raises NoPredictionError when
    no sweep logged qualities.
    """
    client = open_tracking(tracking_uri)
    ids = experiment_ids(client, experiment)
    where = f"experiment {experiment!r}" if experiment else "any experiment"
    parent = _quality_parent(client, ids, sweep, where)
    return _study_of(tracking_uri, experiment, parent, measure, exclude)


def studies_of_experiment(tracking_uri: Optional[str], experiment: str) -> list[BetaQualityStudy]:
    """Returns one study per sweep of the experiment that logged qualities, latest first."""
    client = open_tracking(tracking_uri)
    ids = experiment_ids(client, experiment)
    return [_study_of(tracking_uri, experiment, p, None, ()) for p in quality_sweeps(client, ids)]


@dataclass
class BetaPrediction:
    """The beta predicted for a dataset from its measured quality and a sweep's fitted relation."""

    dataset: str
    quality: QualityScore
    beta: float
    beta_interval: tuple[float, float]
    study: BetaQualityStudy
    swept: bool  # the dataset was a level of the sweep (left out of the fit: leave-one-out)
    extrapolated: bool  # its quality lies outside the swept levels' range

    def to_json(self) -> dict[str, Any]:
        """Returns the prediction as plain data."""
        return {"dataset": self.dataset, "predicted": True, "beta": self.beta,
                "beta_interval": list(self.beta_interval), "quality": self.quality.to_json(),
                "swept": self.swept, "extrapolated": self.extrapolated,
                "study": self.study.to_json()}


def _target_quality(dataset: str, study: BetaQualityStudy, parent: "Run",
                    data_root: Optional[PathLike], backbone: Optional[PathLike]) -> QualityScore:
    if dataset in study.qualities:
        return study.qualities[dataset]
    params = parent.data.params
    root = data_root if data_root is not None else params.get("data.root")
    if not root:
        raise ConfigError(None, f"no data root to measure {dataset} in", field="data_root",
                          fix="pass --data-root")
    if study.measure != "adaface_norm":
        return measure_quality(dataset, root, None, study.measure)
    ckpt = backbone if backbone is not None else params.get("backbones.adaface")
    if not ckpt or not Path(ckpt).is_file():
        raise ConfigError(ckpt or None, "the AdaFace checkpoint the sweep measured its levels "
                          "with is not here", field="backbone",
                          fix="pass --backbone <that checkpoint>")
    from facefuse.backbones.checkpoints import checkpoint_hash

    want = parent.data.tags.get(S.TAG_ADAFACE_SHA256, "")
    have = checkpoint_hash(ckpt)
    if want and have != want:
        raise ConfigError(ckpt, f"sha256 {have[:12]} differs from the AdaFace backbone sweep "
                          f"{study.sweep_id} measured its levels with ({want[:12]}); norms of two "
                          f"backbones are not comparable", field="backbone",
                          fix="pass --backbone with the sweep's own AdaFace checkpoint")
    return measure_quality(dataset, root, ckpt, study.measure)


def predict_beta(tracking_uri: Optional[str], dataset: str, experiment: Optional[str] = None,
                 sweep: Optional[str] = None, data_root: Optional[PathLike] = None,
                 backbone: Optional[PathLike] = None) -> BetaPrediction:
    """Returns the beta predicted for ``dataset`` from its measured quality and the relation the
    latest quality sweep (or ``sweep``) fits on its other levels.

    The dataset's quality is the one the sweep logged when it was a level (then it is left out of
    the fit), else it is measured now from ``data_root`` (default: the sweep's) with the sweep's
    AdaFace checkpoint (``backbone`` overrides the path; its sha256 must match). Raises
    NoPredictionError with one line when fewer than three levels remain or the slope's interval
    covers 0.
    """
    from facefuse.data import get_dataset

    get_dataset(dataset)
    client = open_tracking(tracking_uri)
    ids = experiment_ids(client, experiment)
    where = f"experiment {experiment!r}" if experiment else "any experiment"
    parent = _quality_parent(client, ids, sweep, where)
    study = _study_of(tracking_uri, experiment, parent, None, (dataset,))
    swept = dataset in study.qualities
    if study.fit is None:
        raise NoPredictionError(f"{study.reason}{' besides ' + dataset if swept else ''} in sweep "
                                f"{study.sweep_id} -- sweep more levels (jobs/beta_vs_quality.yaml)")
    if not study.fit.relation:
        raise NoPredictionError(f"{study.fit.verdict(study.measure)} in sweep {study.sweep_id}: "
                                f"the data do not support predicting beta from quality")
    q = _target_quality(dataset, study, parent, data_root, backbone)
    centre, (lo, hi) = study.fit.predict(q.value, q.set_se)
    q_lo, q_hi = study.fit.quality_range
    return BetaPrediction(dataset=dataset, quality=q, beta=float(10.0 ** centre),
                          beta_interval=(float(10.0 ** lo), float(10.0 ** hi)), study=study,
                          swept=swept, extrapolated=not q_lo <= q.value <= q_hi)


def measure_datasets(datasets: Sequence[str], data_root: PathLike, adaface: Optional[PathLike],
                     measure: str) -> list[QualityScore]:
    """Returns the measured quality of each dataset (what a quality sweep logs)."""
    return [measure_quality(d, data_root, adaface if measure == "adaface_norm" else None, measure)
            for d in datasets]
