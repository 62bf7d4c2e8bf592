"""Run a set of metrics over an evaluation set, on one process or sharded over torchrun ranks.

Sharding: with WORLD_SIZE > 1 (torchrun), every rank scores a contiguous shard with the metrics whose
per-sample scores are independent of the other samples (`metric.sharded`); rank 0 gathers the shards
in order (torch.distributed, gloo) and computes the corpus-level metrics (CIDEr, BLEU, finding F1)
over the whole set. Shards are cut on multiples of the model batch size so that every batch a model
sees is the one it would see on one process: the result equals a one-process run.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from echocxr.errors import UserError
from echocxr.metrics import get_metric
from echocxr.metrics.base import MetricResult

#: metrics run when the user names none (model-based ones join when their directories are given)
DEFAULT_METRICS = ("rouge_1", "rouge_2", "rouge_l", "meteor", "bleu4", "cider", "finding_f1", "semscore")


#: metrics that read the report as written whatever the protocol (they are echocxr's, not the paper's)
AS_WRITTEN_METRICS = ("finding_f1", "coherence")
#: metrics that take the protocol's "semantic" strings (official: `Findings: .. Impression: ..`)
SEMANTIC_METRICS = ("ratescore", "semscore")


@dataclass
class EvalSet:
    """What is evaluated: one entry per scored report, all lists aligned.

    `hyps`/`refs` are what the n-gram metrics and PPL score, `sem_hyps`/`sem_refs` what RaTEScore and
    SemScore score, `raw_hyps` the reports as written (finding F1, coherence); None = same as `hyps`/
    `refs`. With K reports per study, `groups[i]` is the study index of entry i.
    """

    sample_ids: list[str]
    hyps: list[str]
    refs: list[str]
    languages: list[str]
    ref_labels: list[list[str] | None] | None = None
    stats: list[dict | None] = field(default_factory=list)
    sem_hyps: list[str] | None = None
    sem_refs: list[str] | None = None
    raw_hyps: list[str] | None = None
    groups: list[int] | None = None

    def __len__(self) -> int:
        return len(self.sample_ids)

    def texts_for(self, metric_name: str) -> tuple[list[str], list[str]]:
        """(hypotheses, references) metric `metric_name` scores."""
        if metric_name in SEMANTIC_METRICS:
            return self.sem_hyps or self.hyps, self.sem_refs or self.refs
        if metric_name in AS_WRITTEN_METRICS:
            return self.raw_hyps or self.hyps, self.refs
        return self.hyps, self.refs

    def subset(self, idx: Sequence[int]) -> EvalSet:
        def pick(xs):
            return None if xs is None else [xs[i] for i in idx]

        return EvalSet(pick(self.sample_ids), pick(self.hyps), pick(self.refs), pick(self.languages),
                       pick(self.ref_labels), pick(self.stats) if self.stats else [],
                       pick(self.sem_hyps), pick(self.sem_refs), pick(self.raw_hyps), pick(self.groups))


class Dist:
    """The few torch.distributed calls we need; a single process has rank 0 of 1 and no torch import."""

    def __init__(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
        self.rank = int(os.environ.get("RANK", "0") or 0)
        self._dist = None
        if self.world_size > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("gloo")
            self._dist = dist

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_gather(self, obj: Any) -> list[Any]:
        if self._dist is None:
            return [obj]
        out: list[Any] = [None] * self.world_size
        self._dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self._dist is not None and self._dist.is_initialized():
            self._dist.barrier()
            self._dist.destroy_process_group()


def shard_indices(n: int, world_size: int, rank: int, align: int = 1) -> list[int]:
    """Contiguous shard of rank `rank`; shard sizes are multiples of `align` (except the last)."""
    per = math.ceil(math.ceil(n / world_size) / align) * align if n else 0
    return list(range(min(n, rank * per), min(n, (rank + 1) * per)))


def build_metrics(names: Sequence[str], options: dict[str, Any], explicit: bool) -> list[Any]:
    """Metric objects; with `explicit` False (defaults) a metric that cannot run is skipped with a note."""
    metrics = []
    for name in names:
        try:
            metrics.append(get_metric(name, **options))
        except UserError as exc:
            if explicit:
                raise
            print(f"echocxr eval: skipping {name}: {exc}", file=sys.stderr)
    return metrics


def _score(metric: Any, data: EvalSet) -> MetricResult:
    name = getattr(metric, "name", "")
    hyps, refs = data.texts_for(name)
    if name == "finding_f1":
        return metric.score(hyps, refs, data.languages, ref_labels=data.ref_labels)
    return metric.score(hyps, refs, data.languages)


def _log(msg: str, dist: Dist) -> None:
    if dist.is_main:
        print(f"echocxr eval: {msg}", file=sys.stderr, flush=True)


def run_metrics(data: EvalSet, metrics: Sequence[Any], dist: Dist | None = None,
                align: int = 16) -> list[MetricResult] | None:
    """Score `data` with `metrics`; results on rank 0 (None on the other ranks)."""
    dist = dist or Dist()
    mine = data.subset(shard_indices(len(data), dist.world_size, dist.rank, align))
    results: dict[str, MetricResult] = {}
    for metric in metrics:
        if not metric.sharded:
            continue
        t0 = time.perf_counter()
        try:
            res = _score(metric, mine)
        except ValueError as exc:
            raise UserError(f"{metric.name}: {exc}") from None
        parts = dist.all_gather((res.per_sample, res.sample_extra, res.info))
        per_sample = [x for part in parts for x in part[0]]
        sample_extra = {k: [x for part in parts for x in part[1].get(k, [])] for k in res.sample_extra}
        results[metric.name] = MetricResult(metric.name, per_sample, metric.aggregate(per_sample),
                                            info=res.info, sample_extra=sample_extra)
        _log(f"{metric.name} done in {time.perf_counter() - t0:.1f} s", dist)
    if not dist.is_main:
        return None
    for metric in metrics:
        if metric.sharded:
            continue
        t0 = time.perf_counter()
        try:
            results[metric.name] = _score(metric, data)
        except ValueError as exc:
            raise UserError(f"{metric.name}: {exc}") from None
        _log(f"{metric.name} done in {time.perf_counter() - t0:.1f} s", dist)
    return [results[m.name] for m in metrics]
