"""Decoding speed from per-report stats: TPF, TPS (with and without prefill), latency percentiles.

Each report's stats dict has `tokens` (generated tokens kept), `forwards` (denoising forwards;
prefill and vanilla KV-update passes excluded, ECHO-SPEC §5), `prefill_s` and `decode_s` (seconds),
optionally `device` and `dtype`. Ratios are taken of sums (a long report weighs more), as a
throughput should be: tpf = sum(tokens) / sum(forwards); tps = sum(tokens) / sum(decode_s);
tps_with_prefill = sum(tokens) / sum(prefill_s + decode_s). Latency = prefill_s + decode_s per report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

STAT_KEYS = ("tokens", "forwards", "prefill_s", "decode_s")


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default method), q in [0, 100]."""
    xs = sorted(values)
    if not xs:
        raise ValueError("percentile of no values")
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _one(values: set, given: str | None) -> str | None:
    if given:
        return given
    values = {v for v in values if v}
    return None if not values else values.pop() if len(values) == 1 else "mixed: " + ", ".join(sorted(values))


def aggregate_speed(stats: Sequence[dict[str, Any]], device: str | None = None,
                    dtype: str | None = None) -> dict[str, Any]:
    """Summary speed figures; ValueError names the first report with a missing or bad field."""
    if not stats:
        raise ValueError("no speed stats to aggregate")
    for i, s in enumerate(stats):
        for key in STAT_KEYS:
            v = s.get(key) if isinstance(s, dict) else None
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0 or math.isnan(v):
                raise ValueError(f"speed stats of report {i} need a non-negative number {key!r}, got {v!r}")
    tokens = sum(s["tokens"] for s in stats)
    forwards = sum(s["forwards"] for s in stats)
    prefill = sum(s["prefill_s"] for s in stats)
    decode = sum(s["decode_s"] for s in stats)
    latency = [s["prefill_s"] + s["decode_s"] for s in stats]
    n = len(stats)
    return {
        "tpf": tokens / forwards if forwards else None,
        "tps": tokens / decode if decode else None,
        "tps_with_prefill": tokens / (prefill + decode) if prefill + decode else None,
        "forwards_per_report": forwards / n,
        "tokens_per_report": tokens / n,
        "latency_p50_s": percentile(latency, 50),
        "latency_p90_s": percentile(latency, 90),
        "latency_p99_s": percentile(latency, 99),
        "device": _one({str(s.get("device") or "") for s in stats}, device),
        "dtype": _one({str(s.get("dtype") or "") for s in stats}, dtype),
    }


def per_report_speed(s: dict[str, Any]) -> dict[str, float | None]:
    """TPF and TPS of one report (for per_sample.jsonl)."""
    return {"tpf": s["tokens"] / s["forwards"] if s.get("forwards") else None,
            "tps": s["tokens"] / s["decode_s"] if s.get("decode_s") else None}
