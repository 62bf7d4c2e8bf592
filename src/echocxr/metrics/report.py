"""Evaluation outputs: per_sample.jsonl + summary.json, a Table-1-style markdown table, a scatter plot.

Units follow the paper: ROUGE-L, METEOR, BLEU-4, RaTEScore, SemScore and finding P/R/F1 in percent;
CIDEr (its definition includes the x10) and PPL raw, as computed; TPF in tokens per forward, TPS in tokens
per second. Each summary records them under `units`, and the table's footnote is written from those.
In a summary, every metric value equals the mean of its per-sample column except the corpus-level
ones (BLEU-4, finding F1 micro/macro).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from echocxr.errors import UserError
from echocxr.metrics.base import MetricResult
from echocxr.metrics.protocol import LEGACY_PROTOCOL

# summary key -> column title, in table order; higher is better unless listed in LOWER_IS_BETTER
COLUMNS: dict[str, str] = {
    "tpf": "TPF", "tps": "TPS", "rouge_1": "ROUGE-1", "rouge_2": "ROUGE-2", "rouge_l": "ROUGE-L", "meteor": "METEOR", "bleu4": "BLEU-4", "cider": "CIDEr",
    "ratescore": "RaTE", "semscore": "SemScore", "finding_f1_micro": "F1 micro", "finding_f1_macro": "F1 macro",
    "report_validity": "Valid rep.", "sentence_validity": "Valid sent.", "repeated_statements": "Repeats",
    "missing_statements": "Missing", "unexpected_statements": "Unexpected", "ppl": "PPL",
}
LOWER_IS_BETTER = {"ppl", "repeated_statements", "missing_statements", "unexpected_statements"}
QUALITY_FOR_PLOT = ("rouge_l", "ratescore", "semscore", "cider", "finding_f1_micro", "report_validity",
                    "sentence_validity")
_PERCENT_KEYS = ("rouge_1", "rouge_2", "rouge_l", "ratescore", "semscore", "meteor", "bleu4", "report_validity", "sentence_validity",
                 "finding_f1_micro", "finding_f1_macro")
_SPEED_KEYS = ("tpf", "tps")
_COUNT_KEYS = ("repeated_statements", "missing_statements", "unexpected_statements")


def _scale(value: float | None, percent: bool) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value) * 100.0 if percent else float(value)


def build_summary(name: str, data: Any, results: Sequence[MetricResult], metrics: Sequence[Any],
                  speed: dict[str, Any] | None = None, n_manifest: int | None = None) -> dict[str, Any]:
    """summary.json content: headline values at top level, how each was computed under `metric_info`."""
    summary: dict[str, Any] = {"name": name, "n_samples": len(data)}
    if n_manifest is not None:
        summary["n_manifest_samples"] = n_manifest
    summary["n_empty_reports"] = sum(1 for h in data.hyps if not h.strip())
    langs: dict[str, int] = {}
    for lang in data.languages:
        langs[lang] = langs.get(lang, 0) + 1
    summary["languages"] = langs
    units: dict[str, str] = {}
    info: dict[str, Any] = {}
    for res, metric in zip(results, metrics, strict=True):
        key = getattr(metric, "summary_key", metric.name)
        summary[key] = _scale(res.corpus, metric.percent)
        units[key] = "percent" if metric.percent else "raw"
        own_units = getattr(metric, "extra_units", {})  # extras in their own unit (counts per report)
        for extra_key, value in res.extra.items():
            summary[extra_key] = _scale(value, metric.percent and extra_key not in own_units)
            units[extra_key] = own_units.get(extra_key, units[key])
        info[metric.name] = res.info
    if speed:
        summary.update(speed)
    summary["units"] = units
    summary["metric_info"] = info
    return summary


def protocol_summary(protocol: str, scored: Any, parse_failed: Sequence[bool], k_aggregate: str | None) -> dict[str, Any]:
    """Summary fields that say what was scored: the protocol, its caveats, parse failures, language
    mismatches between a report and its reference (official rule: over 10% CJK = Chinese)."""
    from echocxr.data.sections import detect_language
    from echocxr.metrics.protocol import protocol_notes

    raw = scored.raw_hyps or scored.hyps
    mismatch = sum(1 for text, lang in zip(raw, scored.languages, strict=True)
                   if text.strip() and detect_language(text) != lang)
    out: dict[str, Any] = {"protocol": protocol, "protocol_notes": protocol_notes(protocol, list(scored.languages))}
    if protocol == "official":
        out["n_parse_failed"] = sum(bool(x) for x in parse_failed)  # scored as written, as officially
    out["n_language_mismatch"] = mismatch
    if k_aggregate is not None:
        out["k_aggregate"] = k_aggregate
        out["n_reports"] = len(raw)
    return out


def add_scored_texts(rows: list[dict[str, Any]], scored: Any, parse_failed: Sequence[bool], protocol: str) -> None:
    """Per-sample rows also show the strings the metrics scored (official protocol) and K reports."""
    by_study: list[list[int]] = [[] for _ in rows]
    for i, g in enumerate(scored.groups if scored.groups is not None else range(len(rows))):
        by_study[g].append(i)
    for row, idx in zip(rows, by_study, strict=True):
        if scored.groups is not None:
            row["hypotheses"] = [scored.raw_hyps[i] for i in idx]
        if protocol == "official":
            texts = [scored.hyps[i] for i in idx]
            row["scored_hypothesis"] = texts if scored.groups is not None else texts[0]
            row["scored_reference"] = scored.refs[idx[0]]
            row["parse_failed"] = [parse_failed[i] for i in idx] if scored.groups is not None else parse_failed[idx[0]]


def per_sample_rows(data: Any, results: Sequence[MetricResult], metrics: Sequence[Any]) -> list[dict[str, Any]]:
    rows = []
    for i, sid in enumerate(data.sample_ids):
        row: dict[str, Any] = {"sample_id": sid, "language": data.languages[i],
                               "hypothesis": data.hyps[i], "reference": data.refs[i], "scores": {}}
        for res, metric in zip(results, metrics, strict=True):
            row["scores"][metric.name] = _scale(res.per_sample[i], metric.percent)
            for key, values in res.sample_extra.items():
                if key == f"{metric.name}_per_report":  # K reports per study: each one's score
                    row.setdefault("scores_per_report", {})[metric.name] = [_scale(v, metric.percent) for v in values[i]]
                else:
                    row[key] = values[i]
        if data.stats and data.stats[i]:
            from echocxr.metrics.speed import per_report_speed

            row["stats"] = data.stats[i]
            row["scores"].update(per_report_speed(data.stats[i]))
        rows.append(row)
    return rows


def write_run(out_dir: str | os.PathLike, summary: dict[str, Any], rows: Sequence[dict[str, Any]]) -> None:
    """Write DIR/per_sample.jsonl and DIR/summary.json (each atomically)."""
    from echocxr.data.manifest import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "per_sample.jsonl",
                      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    atomic_write_text(out / "summary.json", json.dumps(summary, ensure_ascii=False, indent=1) + "\n")


def load_summaries(paths: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """summary.json files, or run directories holding one; names default to the directory name."""
    summaries = []
    for p in paths:
        p = Path(p)
        f = p / "summary.json" if p.is_dir() else p
        if not f.is_file():
            raise UserError(f"no summary.json at {p}")
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read {f}: {exc}") from None
        if not isinstance(data, dict):
            raise UserError(f"{f} is not a summary (expected a JSON object)")
        data.setdefault("name", f.parent.name)
        data.setdefault("protocol", LEGACY_PROTOCOL)  # written before protocols: reports scored as written
        summaries.append(data)
    return summaries


def _fmt(value: Any, key: str) -> str:
    if value is None:
        return "-"
    if key == "tpf":
        return f"{value:.2f}"
    return f"{value:.1f}" if key == "tps" else f"{value:.2f}"


def markdown_table(summaries: Sequence[dict[str, Any]], reference_row: str | None = None) -> str:
    """Rows = runs, columns = metrics present in any run; with `reference_row`, each other cell shows
    its relative change in % against that row (negative = below the reference)."""
    keys = [k for k in COLUMNS if any(isinstance(s.get(k), (int, float)) for s in summaries)]
    ref = None
    if reference_row is not None:
        matches = [s for s in summaries if s.get("name") == reference_row]
        if not matches:
            names = ", ".join(str(s.get("name")) for s in summaries)
            raise UserError(f"reference row {reference_row!r} not among the runs ({names})")
        ref = matches[0]
    lines = ["| model | protocol | " + " | ".join(COLUMNS[k] for k in keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    for s in summaries:
        cells = []
        for k in keys:
            v = s.get(k)
            cell = _fmt(v, k)
            r = ref.get(k) if ref is not None else None
            if ref is not None and s is not ref and isinstance(v, (int, float)) and isinstance(r, (int, float)) and r:
                cell += f" ({100.0 * (v - r) / abs(r):+.1f}%)"
            cells.append(cell)
        lines.append(f"| {s.get('name')} | {s.get('protocol', LEGACY_PROTOCOL)} | " + " | ".join(cells) + " |")
    note = []
    if ref is not None:
        note.append(f"Changes in % are relative to {reference_row}.")
    lower = [COLUMNS[k] for k in keys if k in LOWER_IS_BETTER]
    if lower:
        note.append(", ".join(lower) + ": lower is better.")
    note += _unit_notes(summaries, keys)
    note.append("Protocol official: scored as the official ECHO pipeline does (outputs parsed and rebuilt; "
                "the paper's tables); raw: reports scored as written.")
    return "\n".join(lines) + "\n\n" + " ".join(note) + "\n"


def _unit_notes(summaries: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[str]:
    """The footnote's units, for the columns shown only, as the summaries record them (`units`)."""
    def unit(k: str) -> str:
        recorded = {s.get("units", {}).get(k) for s in summaries} - {None}
        return recorded.pop() if len(recorded) == 1 else ("percent" if k in _PERCENT_KEYS else "raw")

    quality = [k for k in keys if k not in _SPEED_KEYS and k not in _COUNT_KEYS]
    percent = [COLUMNS[k] for k in quality if unit(k) == "percent" and k not in ("report_validity", "sentence_validity")]
    raw = [COLUMNS[k] for k in quality if unit(k) != "percent"]
    out = []
    if any(k in keys for k in _SPEED_KEYS):
        out.append("TPF: tokens per forward; TPS: tokens per second.")
    if percent:
        out.append(", ".join(percent) + " in %.")
    if raw:
        out.append(", ".join(raw) + ": raw, as in summary.json"
                   + (" (CIDEr's usual scale: its definition includes the x10; document frequencies from the "
                      "evaluated references unless a run was given --cider-df)" if "cider" in keys else "") + ".")
    if "report_validity" in keys:
        out.append("Valid rep./sent.: CXR-Phantom reports (sentences) exactly as the grammar writes them, in %; "
                   "Repeats, Missing, Unexpected: statements per report.")
    return out


def plot_panels(summaries: Sequence[dict[str, Any]], metrics: Sequence[str] = QUALITY_FOR_PLOT) -> list[str]:
    """The quality metrics a plot of these runs gets a panel for: those some run has a value of."""
    return [m for m in metrics if any(isinstance(s.get(m), (int, float)) for s in summaries)]


def plot_quality_vs_tpf(summaries: Sequence[dict[str, Any]], path: str | os.PathLike,
                        metrics: Sequence[str] = QUALITY_FOR_PLOT) -> Path:
    """One scatter panel per quality metric (y) against tokens per forward (x); one colour and marker
    per run, named in a shared legend (labels next to points collide when runs cluster)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    usable = [s for s in summaries if isinstance(s.get("tpf"), (int, float))]
    if not usable:
        raise UserError("no run has a TPF (speed stats) to plot against")
    panels = plot_panels(usable, metrics)
    if not panels:
        raise UserError("no quality metric to plot (need one of " + ", ".join(metrics) + ")")
    markers = "osD^vP*Xph<>"
    colours = plt.get_cmap("tab10").colors
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 4.2), squeeze=False)
    max_tpf = max(s["tpf"] for s in usable)
    for ax, key in zip(axes[0], panels, strict=True):
        for i, s in enumerate(usable):
            if isinstance(s.get(key), (int, float)):
                ax.scatter(s["tpf"], s[key], s=60, marker=markers[i % len(markers)],
                           color=colours[i % len(colours)], label=str(s.get("name")), zorder=3)
            if key == "finding_f1_micro" and isinstance(s.get("finding_f1_macro"), (int, float)):
                ax.scatter(s["tpf"], s["finding_f1_macro"], s=60, marker=markers[i % len(markers)],
                           facecolors="none", edgecolors=colours[i % len(colours)], zorder=3)  # macro: hollow
        unit = " (%)" if key in _PERCENT_KEYS else ""
        ax.set_xlabel("tokens per forward (TPF)")
        name = "finding F1" if key == "finding_f1_micro" else COLUMNS.get(key, key)
        ax.set_ylabel(name + unit)
        ax.set_title(f"{name} vs TPF (higher is better)" + (
            "\nfilled: micro, hollow: macro" if key == "finding_f1_micro" else ""), fontsize=10)
        ax.grid(True, alpha=0.3, zorder=0)
        ax.set_xlim(0, max_tpf * 1.1 + 0.5)
    handles, labels = axes[0][0].get_legend_handles_labels()
    seen = dict(zip(labels, handles, strict=True))
    for ax in axes[0][1:]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(lab, h)
    ncol = min(len(seen), 4)
    fig.legend(list(seen.values()), list(seen), loc="lower center", ncol=ncol, fontsize=9, frameon=False)
    rows = math.ceil(len(seen) / ncol)
    fig.tight_layout(rect=(0, 0.06 * rows + 0.02, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
