"""What every metric returns and the few conventions they share (no heavy imports here)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class MetricResult:
    """Scores of one metric over a set of (hypothesis, reference) pairs.

    `per_sample` holds raw values (fractions for ROUGE/METEOR/..., as the reference packages return
    them); None marks a sample the metric could not score (e.g. PPL of an empty report).
    `corpus` is the headline value in the same raw unit; `extra` holds further corpus values
    (e.g. micro/macro precision and recall), `info` says how it was computed (encoder used, ...).
    """

    name: str
    per_sample: list[float | None]
    corpus: float | None
    extra: dict[str, float | None] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    sample_extra: dict[str, list[Any]] = field(default_factory=dict)


class Metric(Protocol):
    name: str
    #: report as a percentage in summaries and tables (ROUGE-L 0.5621 -> 56.21)
    percent: bool
    #: True: per-sample scores do not depend on other samples, so shards can be scored apart and the
    #: corpus value rebuilt from the gathered per-sample list with `aggregate`. False: corpus-level
    #: statistics (document frequencies, BLEU counts) need the whole set at once.
    sharded: bool

    def score(self, hyps: list[str], refs: list[str], language: str | Sequence[str]) -> MetricResult: ...

    def aggregate(self, per_sample: list[float | None]) -> float | None: ...


def mean_or_none(values: Sequence[float | None]) -> float | None:
    """Mean of the scored samples; None when nothing could be scored."""
    vals = [float(v) for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else None


def languages_for(language: str | Sequence[str], n: int) -> list[str]:
    """One language per sample: a single code applies to all, a sequence must match the sample count."""
    if isinstance(language, str):
        langs = [language] * n
    else:
        langs = list(language)
        if len(langs) != n:
            raise ValueError(f"got {len(langs)} languages for {n} samples")
    for lang in set(langs):
        if lang not in ("en", "zh"):
            raise ValueError(f"unsupported language {lang!r} (expected 'en' or 'zh')")
    return langs


def check_pairs(hyps: Sequence[str], refs: Sequence[str]) -> None:
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")


class SampleMeanMetric:
    """Base for metrics whose corpus value is the mean of per-sample scores (the official convention)."""

    name = ""
    percent = True
    sharded = True

    def __init__(self, **_: object) -> None:
        """Options meant for other metrics (model dirs, device) are accepted and ignored."""

    def aggregate(self, per_sample: list[float | None]) -> float | None:
        return mean_or_none(per_sample)
