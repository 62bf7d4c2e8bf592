"""`echocxr eval`: score reports against a manifest, or combine earlier runs into a table and a plot.

    echocxr eval --predictions preds.jsonl --manifest test.json --out runs/echo-blk8
    echocxr eval --model DIR --manifest test.json --out runs/echo-blk8      # generate, then score
    echocxr eval --summaries runs/ar runs/echo-blk8 --table-out t.md --plot-out p.png --reference-row ar
    torchrun --nproc_per_node 2 -m echocxr.cli eval ...                      # sharded scoring

Predictions: JSON lines `{"sample_id": ..., "report": ...}` (optionally "stats": {tokens, forwards,
prefill_s, decode_s}, or "reports": [...] for K sampled reports of one study); writes
OUT/per_sample.jsonl and OUT/summary.json.

--protocol official (default) scores what the official ECHO pipeline scores (outputs parsed into
Findings/Impression and rebuilt; its reference strings; its RaTEScore/SemScore inputs): the protocol
that reproduces the paper's tables. --protocol raw scores the reports as written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from echocxr.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("what to evaluate (one of)")
    src.add_argument("--predictions", metavar="FILE.jsonl", help="generated reports, one JSON object per line")
    src.add_argument("--model", metavar="DIR", help="generate the reports with this model (a directory or 'builtin') first, then score them")
    src.add_argument("--summaries", nargs="+", metavar="DIR", help="combine earlier runs (DIR/summary.json)")
    parser.add_argument("--manifest", metavar="FILE", help="evaluation manifest with the reference reports")
    parser.add_argument("--out", metavar="DIR", help="output folder for per_sample.jsonl and summary.json")
    parser.add_argument("--name", help="row name of this run in tables (default: the --out folder name)")
    parser.add_argument("--metrics", metavar="LIST",
                        help="comma-separated: rouge_1,rouge_2,rouge_l,meteor,bleu4,cider,finding_f1,coherence,semscore,"
                             "ratescore,ppl,"
                             "speed (default: the text metrics + semscore, coherence on CXR-Phantom, plus "
                             "ratescore/ppl when their models are given)")
    parser.add_argument("--protocol", choices=("official", "raw"), default="official",
                        help="official (default): score what the official ECHO pipeline scores (outputs parsed "
                             "into Findings/Impression and rebuilt as 'Finding: .. Impression: ..', its reference "
                             "strings and RaTEScore/SemScore inputs); this reproduces the paper's tables. "
                             "raw: score the reports as written")
    parser.add_argument("--k-aggregate", choices=("max", "mean"), default="max",
                        help="studies with K reports (\"reports\": [...]): keep the best (PPL: lowest) or the mean "
                             "of each metric per study (default max, as the official script)")
    parser.add_argument("--drop-empty", action="store_true",
                        help="leave samples with an empty report out of every mean, as the official evaluation.py "
                             "does with an empty response (the full official pipeline rebuilds an empty output "
                             "to 'Finding:  Impression: ' and scores it; default: kept)")
    parser.add_argument("--cider-df", metavar="FILE",
                        help="CIDEr document frequencies from a COCO-style table (cidereval's coco-val.p or the "
                             "same as JSON; the official run uses MS-COCO's; default: the evaluated references)")
    models = parser.add_argument_group("metric models (local directories)")
    models.add_argument("--semscore-model", metavar="DIR",
                        help="SemScore encoder (official: sembscore; default: the bundled all-MiniLM-L6-v2)")
    models.add_argument("--ratescore-ner", metavar="DIR", help="RaTEScore NER model (RaTE-NER-Deberta)")
    models.add_argument("--ratescore-encoder", metavar="DIR", help="RaTEScore entity encoder (BioLORD-2023-C)")
    models.add_argument("--ppl-model", metavar="DIR", help="judge causal LM for PPL (official: Qwen3-1.7B)")
    models.add_argument("--labeler", default="auto", choices=("auto", "phantom", "chexpert"),
                        help="finding labeler for clinical F1 (auto: phantom when the manifest has labels)")
    models.add_argument("--device", default="auto", help="device for metric models (auto, cpu, cuda, cuda:1)")
    models.add_argument("--dtype", default="auto", help="dtype of the PPL judge (auto, float32, bfloat16, float16)")
    models.add_argument("--batch-size", type=int, default=16, help="batch size of metric models")
    from echocxr.cli.report import add_decode_arguments

    add_decode_arguments(parser, model_args=False)  # --model: decoding options (--device/--dtype shared)
    parser.add_argument("--gen-batch-size", type=int, default=1,
                        help="--model: studies decoded together (default 1, the paper's speed setting)")
    parser.add_argument("--lang", choices=["en", "zh"], help="--model: prompt language (default: each sample's)")
    out = parser.add_argument_group("tables and plots")
    out.add_argument("--table-out", metavar="FILE.md", help="write a Table-1-style markdown table")
    out.add_argument("--plot-out", metavar="FILE.png", help="write a quality-vs-TPF scatter plot")
    out.add_argument("--reference-row", metavar="NAME", help="show relative change in %% against this row")


def run(args: argparse.Namespace) -> int:
    sources = [x for x in ("predictions", "model", "summaries") if getattr(args, x)]
    if len(sources) != 1:
        raise UserError("give exactly one of --predictions FILE, --model DIR or --summaries DIR...")
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if args.summaries:
        return _combine(args)
    if not args.manifest or not args.out:
        raise UserError("--manifest FILE and --out DIR are required to score reports")
    return _evaluate(args)


# ---------------------------------------------------------------------------------------------- inputs

def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    """Predictions file -> list of {"sample_id", "report", "stats"?}; UserError names the bad line.

    A line with an "error" and no report (`echocxr report --out` rows of unreadable studies) is skipped and
    counted on stderr, so report output chains into eval as it is."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"predictions file not found: {path}")
    preds, seen, errors = [], set(), 0
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read predictions {path}: {exc}") from None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(rec, dict) or "sample_id" not in rec:
            raise UserError(f"{path}:{lineno}: expected an object with \"sample_id\" and \"report\"")
        reports = rec.get("reports")
        if reports is not None:
            if not isinstance(reports, list) or not reports or not all(isinstance(r, str) for r in reports):
                raise UserError(f"{path}:{lineno}: \"reports\" must be a non-empty list of strings")
        report = rec.get("report", rec.get("response", reports[0] if reports else None))
        if report is None and rec.get("error"):
            errors += 1
            continue
        if not isinstance(report, str):
            raise UserError(f"{path}:{lineno}: \"report\" must be a string")
        sid = str(rec["sample_id"])
        if sid in seen:
            raise UserError(f"{path}:{lineno}: duplicate sample_id {sid!r}")
        seen.add(sid)
        stats = rec.get("stats")
        if stats is not None and not isinstance(stats, dict):
            raise UserError(f"{path}:{lineno}: \"stats\" must be an object")
        preds.append({"sample_id": sid, "report": report, "stats": stats,
                      **({"reports": list(reports)} if reports is not None else {})})
    if errors:
        print(f"echocxr eval: note: skipped {errors} line{'s' * (errors != 1)} of {path} with an error and no "
              "report (studies the generator could not read)", file=sys.stderr)
    if not preds:
        raise UserError(f"no predictions in {path}"
                        + (f" ({errors} line{'s' * (errors != 1)} with an error, skipped)" if errors else ""))
    return preds


def _eval_set(preds: list[dict[str, Any]], samples: list[Any], source: str):
    """The studies as one EvalSet (the reports as written), matched against the manifest."""
    from echocxr.metrics.suite import EvalSet

    by_id = {s.sample_id: s for s in samples}
    missing = [p["sample_id"] for p in preds if p["sample_id"] not in by_id]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"{source}: sample_id {missing[0]!r}{more} is not in the manifest")
    chosen = [by_id[p["sample_id"]] for p in preds]
    have_labels = any(s.labels for s in chosen)
    stats = [p.get("stats") for p in preds]
    return EvalSet(
        sample_ids=[s.sample_id for s in chosen], hyps=[p["report"] for p in preds],
        refs=[s.reference() for s in chosen], languages=[s.language for s in chosen],
        ref_labels=[list(s.labels) for s in chosen] if have_labels else None,
        stats=stats if any(x for x in stats) else [])


def _scored_set(preds: list[dict[str, Any]], samples: list[Any], data: Any, protocol: str):
    """What the metrics score: one entry per report (K per study when "reports" is given), with the
    strings of `protocol` (official: the ECHO pipeline's rebuilt text, its references, its RaTE inputs)."""
    from echocxr.metrics.protocol import hypothesis, reference
    from echocxr.metrics.suite import EvalSet

    by_id = {s.sample_id: s for s in samples}
    rows: dict[str, list] = {k: [] for k in ("ids", "hyps", "refs", "langs", "sem_h", "sem_r", "raw", "labels", "groups")}
    failed = []
    for g, p in enumerate(preds):
        s = by_id[p["sample_id"]]
        ref = reference(s.findings, s.impression, s.language, protocol)
        k_mode = "reports" in p
        for out in p.get("reports") or [p["report"]]:
            hyp = hypothesis(out, s.language, protocol, k_sample=k_mode)
            failed.append(hyp.parse_failed)
            for key, value in (("ids", s.sample_id), ("hyps", hyp.text), ("refs", ref.text), ("langs", s.language),
                               ("sem_h", hyp.semantic), ("sem_r", ref.semantic), ("raw", out),
                               ("labels", list(s.labels)), ("groups", g)):
                rows[key].append(value)
    k_used = any("reports" in p for p in preds)
    scored = EvalSet(rows["ids"], rows["hyps"], rows["refs"], rows["langs"],
                     ref_labels=rows["labels"] if data.ref_labels is not None else None,
                     sem_hyps=rows["sem_h"], sem_refs=rows["sem_r"], raw_hyps=rows["raw"],
                     groups=rows["groups"] if k_used else None)
    return scored, failed


def _metric_names(args: argparse.Namespace, data: Any) -> tuple[list[str], bool, bool]:
    """(metric names, explicit?, speed?) from --metrics or the defaults (which skip what cannot run)."""
    from echocxr.metrics import metric_names
    from echocxr.metrics.suite import DEFAULT_METRICS

    if args.metrics:
        names = [m.strip() for m in args.metrics.split(",") if m.strip()]
        known = set(metric_names()) | {"speed"}
        bad = [m for m in names if m not in known]
        if bad:
            raise UserError(f"unknown metric {bad[0]!r}; choose from {', '.join(sorted(known))}")
        speed = "speed" in names
        if speed and not data.stats:
            raise UserError("--metrics speed needs per-report \"stats\" in the predictions")
        return [m for m in names if m != "speed"], True, speed
    names = list(DEFAULT_METRICS)
    if data.ref_labels is None and args.labeler != "phantom" and "zh" in data.languages:
        print("echocxr eval: skipping finding_f1: no manifest labels and the rule-based labeler reads English only",
              file=sys.stderr)
        names.remove("finding_f1")
    from echocxr.metrics.coherence import is_phantom_eval

    if is_phantom_eval(data.refs, data.languages, data.ref_labels):  # CXR-Phantom: the grammar can read reports
        names.append("coherence")
    if args.ratescore_ner or args.ratescore_encoder:
        names.append("ratescore")
    if args.ppl_model:
        names.append("ppl")
    return names, False, bool(data.stats) and all(data.stats)


def _generate(args: argparse.Namespace, samples: list[Any], dist: Any) -> list[dict[str, Any]]:
    """Reports from --model: each rank generates for its shard (echocxr.eval_generation), all ranks get all."""
    try:
        from echocxr.eval_generation import generate_predictions
    except ModuleNotFoundError as exc:
        if exc.name == "echocxr.eval_generation":
            raise UserError("--model needs echocxr.eval_generation (report generation for evaluation), "
                            "which this installation does not have yet; use --predictions") from None
        raise
    from echocxr.metrics.suite import shard_indices

    mine = [samples[i] for i in shard_indices(len(samples), dist.world_size, dist.rank, 1)]
    produced = list(generate_predictions(args, mine))
    preds = [p for part in dist.all_gather(produced) for p in part]
    return [{"sample_id": str(p["sample_id"]), "report": str(p.get("report", "")), "stats": p.get("stats"),
             **({"error": p["error"]} if p.get("error") else {})} for p in preds]


# ----------------------------------------------------------------------------------------------- verbs

def _evaluate(args: argparse.Namespace) -> int:
    from echocxr.data.manifest import load_manifest
    from echocxr.metrics import report
    from echocxr.metrics.suite import Dist, build_metrics, run_metrics

    samples = load_manifest(args.manifest)
    preds = read_predictions(args.predictions) if args.predictions else None
    out = Path(args.out)
    name = args.name or out.resolve().name
    dist = Dist()
    try:
        if preds is None:
            preds = _generate(args, samples, dist)
            if dist.is_main:
                out.mkdir(parents=True, exist_ok=True)
                (out / "predictions.jsonl").write_text(
                    "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds), encoding="utf-8")
        n_preds = len(preds)
        if args.drop_empty:
            preds = [p for p in preds if p["report"] != ""]  # the official test is `response == ""`
            if not preds:
                raise UserError("every report is empty: nothing left to evaluate with --drop-empty")
        data = _eval_set(preds, samples, args.predictions or "generated reports")
        scored, parse_failed = _scored_set(preds, samples, data, args.protocol)
        names, explicit, want_speed = _metric_names(args, data)
        options = {"semscore_model": args.semscore_model, "ratescore_ner": args.ratescore_ner,
                   "ratescore_encoder": args.ratescore_encoder, "ppl_model": args.ppl_model,
                   "labeler": args.labeler, "device": args.device, "dtype": args.dtype,
                   "batch_size": args.batch_size, "protocol": args.protocol, "cider_df": args.cider_df}
        metrics = build_metrics(names, options, explicit)
        results = run_metrics(scored, metrics, dist, align=args.batch_size)
        if not dist.is_main:
            return 0
        if scored.groups is not None:
            from echocxr.metrics.k_reports import aggregate_k

            results = aggregate_k(results, metrics, scored.groups, len(data), args.k_aggregate)
        speed = _speed(data, args) if want_speed else None
        summary = report.build_summary(name, data, results, metrics, speed, n_manifest=len(samples))
        what = report.protocol_summary(args.protocol, scored, parse_failed,
                                       args.k_aggregate if scored.groups is not None else None)
        summary = {"name": summary.pop("name"), **what, **summary}
        if args.drop_empty:
            summary["n_dropped_empty"] = n_preds - len(data)
        rows = report.per_sample_rows(data, results, metrics)
        report.add_scored_texts(rows, scored, parse_failed, args.protocol)
        report.write_run(out, summary, rows)
        if len(data) < len(samples):
            print(f"echocxr eval: note: {len(data)} of {len(samples)} manifest samples have predictions",
                  file=sys.stderr)
        print(report.markdown_table([summary]), end="")
        _tables(args, [summary])
        print(f"wrote {out / 'summary.json'} and {out / 'per_sample.jsonl'}")
        return 0
    finally:
        dist.close()


def _speed(data: Any, args: argparse.Namespace) -> dict[str, Any]:
    from echocxr.metrics.speed import aggregate_speed

    stats = [s for s in data.stats if s]
    if len(stats) != len(data) and not (args.model and stats):
        # --model: a study whose image could not be read has no decode, hence no speed figures
        raise UserError(f"speed needs \"stats\" on every prediction ({len(stats)} of {len(data)} have them)")
    try:
        return {**aggregate_speed(stats), "n_speed_reports": len(stats)}
    except ValueError as exc:
        raise UserError(f"bad speed stats: {exc}") from None


def _tables(args: argparse.Namespace, summaries: list[dict[str, Any]]) -> None:
    from echocxr.metrics import report

    if args.table_out:
        Path(args.table_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.table_out).write_text(report.markdown_table(summaries, args.reference_row), encoding="utf-8")
        print(f"wrote {args.table_out}")
    if args.plot_out:
        report.plot_quality_vs_tpf(summaries, args.plot_out)
        print(f"wrote {args.plot_out}")


def _combine(args: argparse.Namespace) -> int:
    from echocxr.metrics import report

    summaries = report.load_summaries(args.summaries)
    print(report.markdown_table(summaries, args.reference_row), end="")
    _tables(args, summaries)
    return 0
