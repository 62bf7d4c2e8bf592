"""Tables and plots of the CXR-Phantom study (benchmarks/phantom_study.sh), in the shapes of the ECHO paper's
Tables 1-4 and Fig. 5, from the evaluation summaries of a run folder.

    python benchmarks/phantom_study_tables.py RUN_DIR OUT_DIR [--lengths "4 8"] [--ship 4] [--curve-steps "250 500"]

Each row of the study is one evaluation, RUN_DIR/eval-study/<row>-<lang>/summary.json; the rows the built-in run
evaluated already (train_builtin_model.sh: ar, rad-multistep-bL, rad-native-onestep-bL, dcd-onestep-b4) are read
from RUN_DIR/eval/<its row>-<lang>/ when the study has no evaluation of its own. Writes OUT_DIR/results.json (a
list, one entry per evaluated row and language: name, method, label, block_length, language, decoder, data,
reference, step, summary and every metric of the summary), OUT_DIR/tables.md (Tables 1-4 and the Fig. 5 table),
OUT_DIR/quality_vs_tpf_<lang>.png and OUT_DIR/fig5_rad_curve_<lang>.png. Rows without a summary are skipped and
listed under each table, so a partial run gives partial tables.

Paper -> here: the three test sets -> the phantom test split in English and in Chinese (and their mean);
RaTEScore -> finding F1 (the phantom labeler on the report against the study's labels); PPL -> sentence and
report validity (the phantom grammar reads every sentence); Table 1's percentages are relative to AR, Table 3's
to Base decoded natively in one step, Table 4's unnormalised rows to the normalised row of the same stage.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

LANGS = ("en", "zh")
BASELINES = ("dparallel", "cd4lm", "d3llm", "t3d")
BASELINE_LABELS = {"dparallel": "dParallel", "cd4lm": "CD4LM", "d3llm": "d3LLM", "t3d": "T3D"}
# (summary key, column header, digits)
QUALITY = [("rouge_l", "ROUGE-L", 2), ("meteor", "METEOR", 2), ("cider", "CIDEr", 3),
           ("finding_f1_micro", "F1 micro", 2), ("finding_f1_macro", "F1 macro", 2), ("semscore", "SemScore", 2),
           ("sentence_validity", "Sent. valid", 2), ("report_validity", "Report valid", 2)]
SPEED = [("tpf", "TPF", 2), ("tps", "TPS", 1)]
# Fig. 5's four metrics (the paper's ROUGE-L, CIDEr, RaTEScore, SemScore); CIDEr x10 on the plot's scale
CURVE = [("rouge_l", "ROUGE-L", 1.0), ("cider", "CIDEr x10", 10.0), ("finding_f1_micro", "F1 micro", 1.0),
         ("semscore", "SemScore", 1.0)]
NOT_METRICS = {"name", "units", "metric_info", "protocol_notes"}
MULTISTEP = "multistep ({L} steps, low_confidence_dynamic, threshold 0.9)"


@dataclass(frozen=True)
class Row:
    name: str  # the evaluation folder is eval-study/<name>-<lang>
    method: str
    label: str
    block_length: int | None
    decoder: str
    builtin: str | None = None  # the same evaluation in the built-in run: eval/<builtin>-<lang>
    data: str = "normalised"  # training reports
    reference: str = "normalised"  # test reports scored against
    step: int | None = None  # RAD curve: training step of the checkpoint


def _own_decoding(run: Path | None, stage: str, L: int) -> str:
    """A baseline's own decoding, as its model saved it (training/baselines.py `baseline_decoding`)."""
    settings = run / f"{stage}-b{L}" / "final" / "echocxr.json" if run is not None else None
    try:
        d = json.loads(settings.read_text())
        return f"its paper's: {d['decoder']} ({d['steps']} steps, {d['remasking']}, threshold {d['threshold']})"
    except (AttributeError, OSError, ValueError, KeyError):
        return "its paper's (saved with the model)"


def curve_name(ship: int, step: int) -> str:
    return f"rad-curve-b{ship}-step{step:07d}"


def study_rows(lengths=(4, 8), ship: int = 4, curve_steps=(), run: Path | None = None) -> list[Row]:
    """Every row benchmarks/phantom_study.sh evaluates, in table order (`run`: where to read the baselines'
    saved decoding settings)."""
    rows = [Row("ar", "ar", "AR", None, "ar", builtin="ar")]
    for L in lengths:
        rows += [Row(f"base-multistep-b{L}", "base-multistep", "Base (multi-step)", L, MULTISTEP.format(L=L),
                     builtin=f"rad-multistep-b{L}"),
                 Row(f"base-onestep-b{L}", "base-onestep", "Base (native one-step)", L, "onestep",
                     builtin=f"rad-native-onestep-b{L}")]
        for b in BASELINES:
            rows += [Row(f"{b}-b{L}", b, BASELINE_LABELS[b], L, _own_decoding(run, b, L)),
                     Row(f"{b}-onestep-b{L}", b, f"{BASELINE_LABELS[b]} (one-step)", L, "onestep")]
        rows += [Row(f"ce-b{L}", "ce", "hard-label CE", L, "onestep"),
                 Row(f"dcd-hard-b{L}", "dcd-hard", "DCD recipe (hard targets)", L, "onestep",
                     builtin="dcd-onestep-b4" if L == 4 else None),
                 Row(f"dcd-soft-b{L}", "dcd-soft", "DCD (paper: soft, SW, <eos> CE)", L, "onestep")]
    S = ship
    rows += [Row(f"dcd-soft-nosw-b{S}", "dcd-soft-nosw", "DCD without SW", S, "onestep"),
             Row(f"dcd-soft-noeos-b{S}", "dcd-soft-noeos", "DCD without <eos> CE", S, "onestep"),
             Row(f"dcd-soft-rkl-b{S}", "dcd-soft-rkl", "DCD with reverse KL", S, "onestep")]
    for ref, sfx in (("raw", ""), ("normalised", "-normref")):
        rows += [Row(f"raw-ar{sfx}", "raw-ar", "AR (raw reports)", None, "ar", data="raw", reference=ref),
                 Row(f"raw-base-multistep-b{S}{sfx}", "raw-base-multistep", "Base (raw reports, multi-step)", S,
                     MULTISTEP.format(L=S), data="raw", reference=ref),
                 Row(f"raw-dcd-soft-b{S}{sfx}", "raw-dcd-soft", "DCD (raw reports)", S, "onestep", data="raw",
                     reference=ref)]
    rows += [Row(curve_name(S, s), "rad-curve", f"Base (RAD step {s})", S, MULTISTEP.format(L=S), step=s)
             for s in sorted(curve_steps)]
    return rows


def find_curve_steps(run: Path, ship: int) -> list[int]:
    pat = re.compile(rf"^rad-curve-b{ship}-step(\d+)-(?:{'|'.join(LANGS)})$")
    folder = run / "eval-study"
    found = {int(m.group(1)) for p in (folder.iterdir() if folder.is_dir() else []) if (m := pat.match(p.name))}
    return sorted(found)


def load_summary(run: Path, row: Row, lang: str) -> tuple[Path, dict] | None:
    paths = [run / "eval-study" / f"{row.name}-{lang}" / "summary.json"]
    if row.builtin:
        paths.append(run / "eval" / f"{row.builtin}-{lang}" / "summary.json")
    for p in paths:
        if p.is_file():
            try:
                return p, json.loads(p.read_text())
            except (OSError, ValueError) as exc:
                print(f"phantom_study_tables: skipped {p}: {exc}", file=sys.stderr)
    return None


def collect(run: Path, rows: list[Row]) -> tuple[dict, list[dict]]:
    """({(row name, lang): metrics}, results.json entries)."""
    found, entries = {}, []
    for row in rows:
        for lang in LANGS:
            got = load_summary(run, row, lang)
            if got is None:
                continue
            path, summary = got
            metrics = {k: v for k, v in summary.items() if k not in NOT_METRICS}
            found[(row.name, lang)] = metrics
            meta = asdict(row)
            meta.pop("builtin")
            entries.append({**meta, "language": lang, "summary": str(path), **metrics})
    return found, entries


# ---------------------------------------------------------------------------------------------- formatting

def rel(x, ref) -> float | None:
    """Relative change of x against ref, in percent."""
    if not _num(x) or not _num(ref) or ref == 0:
        return None
    return 100.0 * (x - ref) / abs(ref)


def _num(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def cell(x, digits: int = 2, ref=None) -> str:
    if not _num(x):
        return "-"
    s = f"{x:.{digits}f}"
    r = rel(x, ref) if ref is not None else None
    return f"{s} ({r:+.1f}%)" if r is not None else s


def mean_metrics(found: dict, name: str) -> dict | None:
    """The mean over the languages of one row's numeric metrics (None unless every language is there)."""
    if not all((name, lang) in found for lang in LANGS):
        return None
    keys = set.intersection(*(set(found[(name, lang)]) for lang in LANGS))
    return {k: sum(found[(name, lang)][k] for lang in LANGS) / len(LANGS) for k in keys
            if all(_num(found[(name, lang)][k]) for lang in LANGS)}


def views(found: dict) -> list[tuple[str, callable]]:
    """(section title, row name -> metrics or None) for each language and the mean of the languages."""
    out = [(lang.upper(), lambda n, lang=lang: found.get((n, lang))) for lang in LANGS]
    out.append(("mean of " + " and ".join(x.upper() for x in LANGS), lambda n: mean_metrics(found, n)))
    return out


def table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def missing_note(names: list[str], get) -> str:
    gone = [n for n in names if get(n) is None]
    return f"\nNot evaluated (skipped): {', '.join(f'`{n}`' for n in gone)}.\n" if gone else ""


def metric_cells(m: dict, ref: dict | None, keys=QUALITY) -> list[str]:
    return [cell(m.get(k), d, (ref or {}).get(k) if ref is not None else None) for k, _, d in keys]


def has_ppl(found: dict) -> bool:
    return any(_num(m.get("ppl")) for m in found.values())


# ---------------------------------------------------------------------------------------------- tables

def table1(rows: list[Row], found: dict, lengths) -> str:
    names = ["ar"] + [r.name for r in rows if r.block_length in lengths and r.method in (
        "base-multistep", "base-onestep", "ce", "dcd-hard", "dcd-soft", *BASELINES)]
    by = {r.name: r for r in rows}
    parts = ["## Table 1: methods against AR\n",
             "Quality cells: value (relative change against AR of the same language). TPF: tokens per forward "
             "(AR 1.0); TPS: tokens per second of decoding (batch 16, this machine, measured while other jobs "
             "may run: compare within the study).\n"]
    for title, get in views(found):
        ref = get("ar")
        lines = []
        for n in names:
            m = get(n)
            if m is None:
                continue
            r = by[n]
            lines.append([r.label, str(r.block_length or "-"), r.decoder,
                          *metric_cells(m, None if n == "ar" else ref), *metric_cells(m, None, SPEED)])
        parts.append(f"### {title}\n")
        parts.append(table(["Method", "L", "decoder", *(h for _, h, _ in QUALITY), *(h for _, h, _ in SPEED)], lines)
                     if lines else "(no row evaluated yet)")
        if ref is None and lines:
            parts.append("\nAR is not evaluated: no relative changes.")
        parts.append(missing_note(names, get) + "\n")
    return "\n".join(parts)


ABLATIONS = [("dcd-soft-noeos", "soft", True, False, False), ("dcd-soft-nosw", "soft", False, True, False),
             ("dcd-soft", "soft", True, True, False), ("dcd-soft-rkl", "soft", True, True, True),
             ("dcd-hard", "hard", True, True, False), ("ce", "hard", False, False, False)]


def table2(found: dict, ship: int) -> str:
    parts = [f"## Table 2: DCD components (block length {ship})\n",
             "SW: step-wise weighting; CE: the extra <eos> cross-entropy; RKL: reverse KL instead of forward KL. "
             "Targets: soft (the teacher's distributions, the paper) or hard (the tokens it committed). The hard "
             "rows are the shipped recipe and the hard-label CE student, on the same trajectories.\n"]
    ppl = has_ppl(found)
    extra = [("ppl", "PPL", 2)] if ppl else []
    names = [f"{m}-b{ship}" for m, *_ in ABLATIONS]
    for title, get in views(found):
        lines = []
        for (_, target, sw, ce, rkl), n in zip(ABLATIONS, names, strict=True):
            m = get(n)
            if m is None:
                continue
            marks = ["x" if v else "" for v in (sw, ce, rkl)]
            lines.append([n, target, *marks, *metric_cells(m, None, QUALITY + extra), cell(m.get("tpf"))])
        parts.append(f"### {title}\n")
        header = ["Row", "targets", "SW", "CE", "RKL", *(h for _, h, _ in QUALITY + extra), "TPF"]
        parts.append(table(header, lines) if lines else "(no row evaluated yet)")
        parts.append(missing_note(names, get) + "\n")
    if not ppl:
        parts.append("PPL (the paper's judge-model perplexity) is not measured here: sentence and report validity "
                     "are the phantom's structural measure.\n")
    return "\n".join(parts)


def table3(found: dict, lengths) -> str:
    parts = ["## Table 3: DCD against Base decoded natively in one step\n",
             "Cells: value (relative change against Base, native one-step, of the same block length and language).\n"]
    keys = [q for q in QUALITY if q[0] in ("rouge_l", "meteor", "cider", "finding_f1_micro", "finding_f1_macro",
                                           "semscore", "sentence_validity", "report_validity")]
    for title, get in views(found):
        lines, names = [], []
        for L in lengths:
            base = get(f"base-onestep-b{L}")
            for n, label in ((f"base-onestep-b{L}", "Base (native one-step)"),
                             (f"dcd-soft-b{L}", "DCD (paper: soft)"), (f"dcd-hard-b{L}", "DCD recipe (hard)")):
                names.append(n)
                m = get(n)
                if m is None:
                    continue
                ref = None if n.startswith("base-") else base
                lines.append([f"Block {L}", label, *metric_cells(m, ref, keys), cell(m.get("tpf"))])
        parts.append(f"### {title}\n")
        parts.append(table(["Block size", "Model", *(h for _, h, _ in keys), "TPF"], lines)
                     if lines else "(no row evaluated yet)")
        parts.append(missing_note(names, get) + "\n")
    return "\n".join(parts)


def table4(found: dict, ship: int) -> str:
    S = ship
    stages = [("Stage I (AR)", "ar", "raw-ar"), (f"Stage II (RAD, multi-step, L={S})", f"base-multistep-b{S}",
                                                 f"raw-base-multistep-b{S}"),
              (f"Stage III (DCD, one-step, L={S})", f"dcd-soft-b{S}", f"raw-dcd-soft-b{S}")]
    parts = ["## Table 4: normalised against raw (unnormalised) training reports at each stage\n",
             "Normalised: trained and scored on normalised reports. Unnormalised: the same pipeline (AR -> RAD -> "
             "DCD, soft targets) trained on the raw reports, scored against the raw test reports and, as in the "
             "paper, against the normalised ones. Cells of unnormalised rows: value (relative change against the "
             "normalised row of the stage). Finding F1 does not depend on the reference text.\n"]
    names = [n for _, norm, raw in stages for n in (norm, raw, raw + "-normref")]
    for title, get in views(found):
        lines = []
        for stage, norm, raw in stages:
            ref = get(norm)
            for n, data, refs in ((norm, "Normalised", "normalised"), (raw, "Unnormalised", "raw"),
                                  (raw + "-normref", "Unnormalised", "normalised")):
                m = get(n)
                if m is None:
                    continue
                lines.append([stage, data, refs, *metric_cells(m, None if n == norm else ref)])
        parts.append(f"### {title}\n")
        parts.append(table(["Stage", "Data type", "scored against", *(h for _, h, _ in QUALITY)], lines)
                     if lines else "(no row evaluated yet)")
        parts.append(missing_note(names, get) + "\n")
    return "\n".join(parts)


def curve_points(rows: list[Row], get) -> list[tuple[int, dict]]:
    return [(r.step, m) for r in rows if r.method == "rad-curve" and (m := get(r.name)) is not None]


def mean_quality(m: dict) -> float | None:
    vals = [m.get(k) for k, _, _ in CURVE]
    if not all(_num(v) for v in vals):
        return None
    return sum(v * s for v, (_, _, s) in zip(vals, CURVE, strict=True)) / len(CURVE)


def fig5_table(rows: list[Row], found: dict, ship: int) -> str:
    parts = [f"## Fig. 5: quality and TPF of Base against RAD training steps (block length {ship})\n",
             f"A RAD run from the AR model keeping every checkpoint, each decoded multi-step ({MULTISTEP.format(L=ship)}). "
             "Mean quality: the mean of ROUGE-L, CIDEr x10, finding F1 micro and SemScore (the paper's ROUGE-L, "
             "CIDEr, RaTEScore, SemScore). The AR row is the dashed reference of panel (a).\n"]
    names = [r.name for r in rows if r.method == "rad-curve"]
    keys = [(k, h, 3 if k == "cider" else 2) for k, h, _ in CURVE]
    header = ["step", *(h.replace(" x10", "") for _, h, _ in CURVE), "mean quality", "TPF"]
    for title, get in views(found):
        lines = [["AR", *[cell(get("ar").get(k), d) for k, _, d in keys], cell(mean_quality(get("ar"))),
                  cell(get("ar").get("tpf"))]] if get("ar") else []
        for step, m in curve_points(rows, get):
            lines.append([str(step), *[cell(m.get(k), d) for k, _, d in keys], cell(mean_quality(m)),
                          cell(m.get("tpf"))])
        parts.append(f"### {title}\n")
        parts.append(table(header, lines) if curve_points(rows, get) else "(no checkpoint evaluated yet)")
        parts.append((missing_note(names, get) if names else "\nNo RAD-curve evaluations planned or found.\n") + "\n")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------- plots

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_fig5(rows: list[Row], found: dict, lang: str, out: Path) -> bool:
    get = lambda n: found.get((n, lang))  # noqa: E731
    pts = curve_points(rows, get)
    if not pts:
        return False
    plt = _plt()
    steps = [s for s, _ in pts]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    ar = get("ar")
    for i, (k, label, scale) in enumerate(CURVE):
        color = f"C{i}"
        a.plot(steps, [m.get(k, math.nan) * scale for _, m in pts], "o-", color=color, label=label)
        if ar and _num(ar.get(k)):
            a.axhline(ar[k] * scale, color=color, ls="--", lw=1)
    a.set(xlabel="RAD training step", ylabel="score", title=f"(a) quality during RAD ({lang.upper()}; dashed: AR)")
    a.legend(fontsize=8)
    q = [mean_quality(m) for _, m in pts]
    tpf = [m.get("tpf", math.nan) for _, m in pts]
    b.plot(steps, [math.nan if v is None else v for v in q], "o-", color="black", label="mean quality")
    if q[-1] is not None:
        b.axhline(q[-1], color="black", ls="--", lw=1)
    b.set(xlabel="RAD training step", ylabel="mean quality", title="(b) quality and TPF (dashed: final)")
    b2 = b.twinx()
    b2.plot(steps, tpf, "s-", color="red", label="TPF")
    if _num(tpf[-1]):
        b2.axhline(tpf[-1], color="red", ls="--", lw=1)
    b2.set_ylabel("TPF", color="red")
    b.legend(handles=b.get_lines()[:1] + b2.get_lines()[:1], fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return True


def plot_quality_vs_tpf(rows: list[Row], found: dict, lang: str, out: Path, lengths) -> bool:
    pts = [(r, found[(r.name, lang)]) for r in rows if (r.name, lang) in found and r.data == "normalised"
           and r.method != "rad-curve"]
    pts = [(r, m) for r, m in pts if _num(m.get("tpf"))]
    if not pts:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    colors = {L: f"C{i}" for i, L in enumerate(sorted({r.block_length for r, _ in pts if r.block_length}))}
    for ax, (k, label) in zip(axes, (("rouge_l", "ROUGE-L"), ("finding_f1_micro", "finding F1 micro")), strict=True):
        for r, m in pts:
            if not _num(m.get(k)):
                continue
            color = colors.get(r.block_length, "black")
            marker = "*" if r.method.startswith("dcd") else ("s" if r.method.startswith("base") else "o")
            ax.scatter(m["tpf"], m[k], color=color, marker=marker, s=60 if marker == "*" else 30)
            ax.annotate(r.name, (m["tpf"], m[k]), fontsize=6, xytext=(3, 2), textcoords="offset points")
        ax.set(xlabel="tokens per forward (TPF)", ylabel=label, title=f"{label} against TPF ({lang.upper()})")
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=c, marker="o", ls="", label=f"L={L}") for L, c in colors.items()]
    handles += [plt.Line2D([], [], color="black", marker=m, ls="", label=t)
                for m, t in (("*", "DCD"), ("s", "Base"), ("o", "AR / baselines / CE"))]
    axes[1].legend(handles=handles, fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------- main

def _ints(text: str) -> list[int]:
    return [int(x) for x in re.split(r"[\s,]+", text.strip()) if x]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--lengths", default="4 8", help="block lengths of the study's grid (default \"4 8\")")
    p.add_argument("--ship", type=int, default=4, help="the shipped block length: ablations, raw reports, RAD curve")
    p.add_argument("--curve-steps", help="the RAD curve's checkpoint steps (default: those evaluated)")
    args = p.parse_args(argv)
    lengths = tuple(_ints(args.lengths))
    curve = _ints(args.curve_steps) if args.curve_steps else find_curve_steps(args.run_dir, args.ship)
    rows = study_rows(lengths, args.ship, curve, args.run_dir)
    found, entries = collect(args.run_dir, rows)
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(entries, indent=1, ensure_ascii=False) + "\n")
    plots = []
    for lang in LANGS:
        if plot_quality_vs_tpf(rows, found, lang, out / f"quality_vs_tpf_{lang}.png", lengths):
            plots.append(f"quality_vs_tpf_{lang}.png")
        if plot_fig5(rows, found, lang, out / f"fig5_rad_curve_{lang}.png"):
            plots.append(f"fig5_rad_curve_{lang}.png")
    head = [f"# CXR-Phantom study: {args.run_dir}\n",
            f"{len(entries)} of {len(rows) * len(LANGS)} planned evaluations found (block lengths "
            f"{', '.join(map(str, lengths))}; shipped block length {args.ship}). Every metric of every row: "
            "results.json." + (f" Plots: {', '.join(plots)}." if plots else "") + "\n"]
    body = [table1(rows, found, lengths), table2(found, args.ship), table3(found, lengths),
            table4(found, args.ship), fig5_table(rows, found, args.ship)]
    (out / "tables.md").write_text("\n".join(head + body))
    print(f"phantom_study_tables: {len(entries)} of {len(rows) * len(LANGS)} evaluations -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
