"""K reports per study: every report is scored, then each study keeps the max or the mean of its K.

Why: the official evaluation (`--k_aggregate_mode max|mean`, default max) scores each of K sampled
reports of a study and aggregates per study before averaging over studies; for PPL, where lower is
better, "max" keeps the lowest. Metrics whose headline value is a mean of per-report scores get the
mean of the per-study values. Corpus-level metrics (BLEU-4, finding F1, coherence pools) keep their
value over all K reports, as there is no per-study form of them; their info says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from echocxr.metrics.base import MetricResult, mean_or_none

MODES = ("max", "mean")
LOWER_IS_BETTER = frozenset({"ppl"})
#: corpus value = mean of the per-study values (the rest are corpus-level statistics)
_MEAN_OF_SAMPLES = frozenset({"cider"})


def _combine(values: list[float | None], mode: str, lower_is_better: bool) -> float | None:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    if mode == "mean":
        return sum(vals) / len(vals)
    return min(vals) if lower_is_better else max(vals)


def aggregate_k(results: Sequence[MetricResult], metrics: Sequence[Any], groups: Sequence[int],
                n_studies: int, mode: str = "max") -> list[MetricResult]:
    """Per-report results (entry i belongs to study groups[i]) -> per-study results."""
    if mode not in MODES:
        raise ValueError(f"unknown K aggregation {mode!r} (max or mean)")
    members: list[list[int]] = [[] for _ in range(n_studies)]
    for i, g in enumerate(groups):
        members[g].append(i)
    out = []
    for res, metric in zip(results, metrics, strict=True):
        per_report = res.per_sample
        per_study = [_combine([per_report[i] for i in idx], mode, res.name in LOWER_IS_BETTER) for idx in members]
        info = dict(res.info)
        info["k_aggregate"] = mode
        if metric.sharded or res.name in _MEAN_OF_SAMPLES:
            corpus = metric.aggregate(per_study) if metric.sharded else mean_or_none(per_study)
            extra = res.extra
        else:
            corpus, extra = res.corpus, res.extra
            info["k_note"] = "corpus value over all K reports of every study"
        sample_extra = {k: [[v[i] for i in idx] for idx in members] for k, v in res.sample_extra.items()}
        sample_extra[f"{res.name}_per_report"] = [[per_report[i] for i in idx] for idx in members]
        out.append(MetricResult(res.name, per_study, corpus, extra=extra, info=info, sample_extra=sample_extra))
    return out
