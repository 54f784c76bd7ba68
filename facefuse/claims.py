"""The paper's claims, checked on an ablation's runs: paired differences over seeds, 90% intervals.

Each claim compares two variants of the ablation grid (``facefuse.ablation.VARIANTS``) on every
evaluated dataset. Selection and reporting use different data: each variant's beta for a
dataset is the one with the best mean over seeds on the dataset's *selection* part
(``<dataset>/sel/<metric>``), and the values compared are the *report* part's
(``<dataset>/test/<metric>``) at that beta, one per seed. Seeds pair the two variants (same
seed, same data order and initialisation), so the claim's number is the mean over seeds of the
per-seed difference, with a Student-t interval at ``LEVEL`` on n-1 degrees of freedom. A claim
*holds* on a dataset when the whole interval is on its side of zero, is *reversed* when the whole
interval is on the other side, and is *not shown* otherwise (or with fewer than two seeds).

The last claim is the platform's own: the best beta moves with image quality. Per seed, each
dataset's best beta is the one with the best selection-part value; the claim's number is, per
seed, the mean log10 best beta on the mixed- and low-quality sets minus that on the
high-quality sets, with the same interval over seeds. It is two-sided: either direction counts,
and the sign says which.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import numpy as np

from facefuse.selection import higher_is_better
from facefuse.stats import LEVEL, mean_interval
from facefuse.tables import format_table



@dataclass(frozen=True)
class Claim:
    """One claim: variant ``a`` is better than variant ``b``."""

    name: str
    a: str
    b: str


CLAIMS: tuple[Claim, ...] = (
    Claim("fusion > ArcFace alone", "full", "arcface_only"),
    Claim("fusion > AdaFace alone", "full", "adaface_only"),
    Claim("local + global > local alone", "full", "local_only"),
    Claim("local + global > global alone", "full", "global_only"),
    Claim("VIB on > off", "full", "no_vib"),
    Claim("attention fusion > concatenation", "full", "concat"),
)
BETA_CLAIM = "best beta moves with quality"
ALL_DATASETS = "all (mean over sets)"


@dataclass
class ClaimResult:
    """One claim on one dataset (or on the mean over datasets): the paired difference over seeds."""

    claim: str
    dataset: str
    quality: str
    diff: float  # mean over seeds of a - b, oriented so that > 0 favours the claim
    low: float
    high: float
    n: int
    verdict: str  # "holds" | "reversed" | "not shown"
    beta_a: Optional[float] = None
    beta_b: Optional[float] = None
    unit: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Returns the result as a plain dict (JSON, CSV)."""
        return asdict(self)


def verdict(low: float, high: float) -> str:
    """Returns "holds" (interval above zero), "reversed" (below) or "not shown"."""
    if math.isnan(low) or math.isnan(high):
        return "not shown"
    if low > 0:
        return "holds"
    if high < 0:
        return "reversed"
    return "not shown"


def _quality(dataset: str) -> str:
    from facefuse.data import DATASETS

    spec = DATASETS.get(dataset)
    return spec.quality if spec is not None else "?"


def _scale(rows: Sequence[dict[str, Any]]) -> float:
    values = [r["test"] for r in rows if r.get("test") is not None]
    return 100.0 if values and all(0.0 <= v <= 1.0 for v in values) else 1.0


def heldout_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Returns the rows that carry both held-out parts (``sel`` and ``test``)."""
    return [r for r in rows if r.get("sel") is not None and r.get("test") is not None]


def _by(rows: Sequence[dict[str, Any]], variant: str, dataset: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["variant"] == variant and r["dataset"] == dataset]


def select_beta(rows: Sequence[dict[str, Any]]) -> Optional[float]:
    """Returns the beta whose selection-part mean over seeds is best (None: no bottleneck)."""
    means: dict[Optional[float], list[float]] = {}
    for r in rows:
        means.setdefault(r["beta"], []).append(float(r["sel"]))
    if not means:
        raise ValueError("no rows to select a beta from")
    sign = 1.0 if higher_is_better(rows[0]["metric"]) else -1.0
    return max(means, key=lambda b: (sign * float(np.mean(means[b])), -(b or 0.0)))


def reported_by_seed(rows: Sequence[dict[str, Any]]) -> tuple[Optional[float], dict[int, float]]:
    """Returns (selected beta, {seed: report-part value at that beta})."""
    beta = select_beta(rows)
    return beta, {int(r["seed"]): float(r["test"]) for r in rows
                  if r["beta"] == beta and r["seed"] is not None}


def check_claims(rows: Sequence[dict[str, Any]], claims: Sequence[Claim] = CLAIMS,
                 level: float = LEVEL) -> list[ClaimResult]:
    """Returns every claim's result per dataset and over the mean of the datasets, then the beta claim.

    ``rows`` are ``facefuse.ablation.rows_from_runs`` rows; those without both held-out parts are
    ignored (a claim needs data to select on that it is not reported on).
    """
    from facefuse.ablation import dataset_order

    rows = heldout_rows(rows)
    datasets = dataset_order({r["dataset"] for r in rows})
    out: list[ClaimResult] = []
    for claim in claims:
        per_dataset: dict[str, dict[int, float]] = {}
        for dataset in datasets:
            ra, rb = _by(rows, claim.a, dataset), _by(rows, claim.b, dataset)
            if not ra or not rb:
                continue
            beta_a, va = reported_by_seed(ra)
            beta_b, vb = reported_by_seed(rb)
            sign = 1.0 if higher_is_better(ra[0]["metric"]) else -1.0
            factor = _scale(ra + rb)
            seeds = sorted(set(va) & set(vb))
            diffs = {s: sign * (va[s] - vb[s]) * factor for s in seeds}
            per_dataset[dataset] = diffs
            mean, low, high = mean_interval(list(diffs.values()), level)
            out.append(ClaimResult(claim.name, dataset, _quality(dataset), mean, low, high,
                                   len(seeds), verdict(low, high), beta_a, beta_b,
                                   " pts" if factor == 100.0 else ""))
        if len(per_dataset) > 1:
            common = set.intersection(*(set(d) for d in per_dataset.values()))
            pooled = [float(np.mean([d[s] for d in per_dataset.values()])) for s in sorted(common)]
            mean, low, high = mean_interval(pooled, level)
            out.append(ClaimResult(claim.name, ALL_DATASETS, "-", mean, low, high, len(pooled),
                                   verdict(low, high), unit=" pts"))
    beta = beta_quality_claim(rows, level=level)
    if beta is not None:
        out.append(beta)
    return out


def best_beta_by_seed(rows: Sequence[dict[str, Any]], variant: str = "full"
                      ) -> dict[str, dict[int, float]]:
    """Returns {dataset: {seed: the beta with the best selection-part value at that seed}}."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in heldout_rows(rows):
        if r["variant"] == variant and r["beta"] is not None and r["seed"] is not None:
            groups.setdefault((r["dataset"], int(r["seed"])), []).append(r)
    out: dict[str, dict[int, float]] = {}
    for (dataset, seed), part in sorted(groups.items()):
        sign = 1.0 if higher_is_better(part[0]["metric"]) else -1.0
        out.setdefault(dataset, {})[seed] = float(
            max(part, key=lambda r: sign * float(r["sel"]))["beta"])
    return out


def beta_quality_claim(rows: Sequence[dict[str, Any]], variant: str = "full",
                       level: float = LEVEL) -> Optional[ClaimResult]:
    """Returns the beta-moves-with-quality claim, or None without both high- and lower-quality sets.

    Its number, per seed: mean log10 best beta on the mixed- and low-quality sets minus the mean
    on the high-quality sets (decades; > 0: lower quality prefers a larger beta).
    """
    best = best_beta_by_seed(rows, variant)
    high = [d for d in best if _quality(d) == "high"]
    lower = [d for d in best if _quality(d) in ("mixed", "low")]
    if not high or not lower:
        return None
    seeds = sorted(set.intersection(*(set(best[d]) for d in high + lower)))
    diffs = [float(np.mean([math.log10(best[d][s]) for d in lower])
                   - np.mean([math.log10(best[d][s]) for d in high])) for s in seeds]
    mean, low, hi = mean_interval(diffs, level)
    result = verdict(low, hi)
    if result != "not shown":
        result = "holds"  # two-sided: either direction is a move
    return ClaimResult(BETA_CLAIM, "lower vs high quality", "-", mean, low, hi, len(seeds),
                       result, unit=" decades")


def claims_markdown(results: Sequence[ClaimResult], level: float = LEVEL) -> str:
    """Returns the claims as a GitHub markdown table with a caption saying how they were computed."""
    if not results:
        return "(no ablation runs with held-out parts: no claim can be checked)\n"

    def num(x: float) -> str:
        return "-" if math.isnan(x) else f"{x:+.2f}"

    def beta(b: Optional[float]) -> str:
        return "-" if b is None else f"{b:g}"

    body = [[r.claim, r.dataset, r.quality, f"{num(r.diff)}{r.unit}",
             f"[{num(r.low)}, {num(r.high)}]", str(r.n), r.verdict,
             f"{beta(r.beta_a)} / {beta(r.beta_b)}"] for r in results]
    header = ["claim", "dataset", "quality", "difference", f"{level:.0%} interval", "seeds",
              "verdict", "betas (a / b)"]
    caption = (f"Paired over seeds: each variant at the beta best on the selection part (mean "
               f"over seeds), the difference taken on the report part; {level:.0%} Student-t "
               "interval of the mean difference. 'holds' = the interval excludes zero on the "
               "claim's side, 'reversed' = on the other side. The beta claim: per seed, mean "
               "log10 best beta on mixed/low-quality sets minus high-quality sets (selection "
               "part); 'holds' = the interval excludes zero, either way.")
    return format_table(header, body) + "\n\n" + caption + "\n"
