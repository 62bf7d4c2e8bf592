"""Report metrics behind a small lazy registry.

Importing this package loads no model and imports no torch/transformers: each metric lives in its own
module and is imported only when `get_metric(name)` asks for it, so `echocxr --help` and the pure-text
metrics stay fast.

    from echocxr.metrics import get_metric
    result = get_metric("rouge_l").score(hyps, refs, "en")
    result.per_sample, result.corpus

Semantics follow the official ECHO evaluation (ECHO-SPEC §7); deviations are named in each module.
"""

from __future__ import annotations

import importlib
from typing import Any

from echocxr.metrics.base import Metric, MetricResult

# name -> (module, class). Order = the column order of tables and summaries.
_REGISTRY: dict[str, tuple[str, str]] = {
    "rouge_1": ("echocxr.metrics.rouge", "Rouge1"),
    "rouge_2": ("echocxr.metrics.rouge", "Rouge2"),
    "rouge_l": ("echocxr.metrics.rouge", "RougeL"),
    "meteor": ("echocxr.metrics.meteor", "Meteor"),
    "bleu4": ("echocxr.metrics.bleu", "Bleu4"),
    "cider": ("echocxr.metrics.cider", "Cider"),
    "finding_f1": ("echocxr.metrics.finding_f1", "FindingF1"),
    "coherence": ("echocxr.metrics.coherence", "Coherence"),
    "ratescore": ("echocxr.metrics.ratescore", "RaTEScore"),
    "semscore": ("echocxr.metrics.semscore", "SemScore"),
    "ppl": ("echocxr.metrics.ppl", "Perplexity"),
}


def metric_names() -> list[str]:
    """All registered metric names, in table order."""
    return list(_REGISTRY)


def get_metric(name: str, **options: Any) -> Metric:
    """Build metric `name`; options go to its constructor (model directories, device, batch size)."""
    from echocxr.errors import UserError

    try:
        module_name, class_name = _REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown metric {name!r}; choose from {', '.join(_REGISTRY)}") from None
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**options)


__all__ = ["Metric", "MetricResult", "get_metric", "metric_names"]
