"""`echocxr eval` end to end: registry laziness, a full run on real IU X-ray reports with tiny metric
models, bad input as one-line errors, combining runs, and torchrun sharding equal to one process."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from echocxr.cli import main
from echocxr.metrics.rouge import rouge_l
from tests.conftest_metrics import iu_pairs, save_tiny_causal_lm, save_tiny_encoder, save_tiny_ner, words_of

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict | None = None, module: tuple[str, ...] = ("-m", "echocxr.cli")) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, *module, "eval", *args], capture_output=True, text=True,
                          env=full_env, cwd=ROOT, timeout=300)


def write_eval_set(root: Path, n: int, seed: int = 0) -> tuple[Path, Path, list[dict]]:
    """A manifest of n real IU X-ray reports and predictions (half copied, half another report), with stats."""
    pairs = iu_pairs(n)
    manifest = [{"sample_id": f"iu{k}", "images": [], "ground_truth": {"findings": f, "impression": i},
                 "language": "en"} for k, f, i in pairs]
    rng = random.Random(seed)
    preds = []
    for k, f, i in pairs:
        _, of, oi = rng.choice(pairs) if rng.random() < 0.5 else (k, f, i)
        preds.append({"sample_id": f"iu{k}", "report": f"Findings: {of} Impression: {oi}.",
                      "stats": {"tokens": rng.randint(40, 120), "forwards": rng.randint(8, 30),
                                "prefill_s": 0.01 * rng.randint(1, 5), "decode_s": 0.05 * rng.randint(2, 9),
                                "device": "cpu", "dtype": "float32"}})
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "preds.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    return root / "manifest.json", root / "preds.jsonl", manifest


def test_importing_metrics_loads_nothing_heavy():
    code = ("import sys, echocxr.metrics, echocxr.metrics.suite, echocxr.metrics.report, echocxr.cli.eval\n"
            "from echocxr.metrics import get_metric\n"
            "get_metric('rouge_l'); get_metric('cider'); get_metric('semscore')\n"
            "heavy = {'torch', 'transformers', 'sentence_transformers', 'nltk', 'matplotlib', 'jieba'}\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"  # building SemScore loads no model either


@pytest.fixture(scope="module")
def metric_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    words = words_of([f"{f} {i}" for _, f, i in iu_pairs(24)] + ["Findings: Impression: Review this chest X-ray "
                                                              "and write a report. Use this format: {}, {}."])
    ner_words = {"effusion": "B-ABNORMALITY", "pneumothorax": "B-NON-ABNORMALITY", "cardiomegaly": "B-DISEASE",
                 "heart": "B-ANATOMY", "lungs": "B-ANATOMY", "opacity": "B-ABNORMALITY"}
    return {"ner": save_tiny_ner(root / "ner", ner_words, words), "enc": save_tiny_encoder(root / "enc", words),
            "lm": save_tiny_causal_lm(root / "lm", words)}


def test_eval_end_to_end_on_real_reports(tmp_path, metric_models):
    manifest, preds, records = write_eval_set(tmp_path / "data", 24)
    out = tmp_path / "run"
    metrics = "rouge_l,meteor,bleu4,cider,finding_f1,semscore,ratescore,ppl,speed"
    proc = cli("--predictions", str(preds), "--manifest", str(manifest), "--out", str(out), "--metrics", metrics,
               "--semscore-model", str(metric_models["enc"]), "--ratescore-ner", str(metric_models["ner"]),
               "--ratescore-encoder", str(metric_models["enc"]), "--ppl-model", str(metric_models["lm"]),
               "--device", "cpu", "--batch-size", "4", "--table-out", str(tmp_path / "t.md"),
               "--plot-out", str(tmp_path / "p.png"))
    if proc.returncode != 0 and "WordNet" in proc.stderr:
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "per_sample.jsonl").read_text().splitlines()]
    assert summary["name"] == "run" and summary["n_samples"] == len(rows) == 24
    for key in ("rouge_l", "meteor", "bleu4", "cider", "finding_f1_micro", "finding_f1_macro", "semscore",
                "ratescore", "ppl", "tpf", "tps", "tps_with_prefill", "latency_p90_s"):
        assert isinstance(summary[key], float), key
    assert summary["device"] == "cpu" and summary["metric_info"]["semscore"]["encoder"] == "enc"
    assert summary["metric_info"]["finding_f1"]["labeler"] == "chexpert"
    # the summary is the mean of the per-sample column for per-sample metrics, in percent; the default
    # (official) protocol scores the rebuilt "Finding: .. Impression: .." string
    assert summary["protocol"] == "official" and summary["n_parse_failed"] == 0
    refs = {r["sample_id"]: f"Findings: {r['ground_truth']['findings']} Impression: {r['ground_truth']['impression']}."
            for r in records}
    expected = 100 * sum(rouge_l(row["scored_hypothesis"], refs[row["sample_id"]]) for row in rows) / 24
    assert all(row["scored_hypothesis"].startswith("Finding: ") for row in rows)
    assert summary["rouge_l"] == pytest.approx(expected, abs=1e-9)
    for key in ("rouge_l", "semscore", "ratescore", "ppl"):
        assert summary[key] == pytest.approx(sum(r["scores"][key] for r in rows) / 24, abs=1e-9)
    stats = [json.loads(line)["stats"] for line in preds.read_text().splitlines()]
    assert summary["tpf"] == pytest.approx(sum(s["tokens"] for s in stats) / sum(s["forwards"] for s in stats))
    assert "| run |" in (tmp_path / "t.md").read_text() and (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert "| run |" in proc.stdout


def test_bad_input_is_a_one_line_error_from_the_process(tmp_path):
    manifest, preds, _ = write_eval_set(tmp_path, 3)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(preds.read_text().splitlines()[0] + "\n{not json\n")
    proc = cli("--predictions", str(bad), "--manifest", str(manifest), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"echocxr eval: error: {bad}:2: not valid JSON (Expecting property name enclosed in double quotes)"


@pytest.mark.parametrize("case,needle", [
    ("missing_predictions", "predictions file not found"),
    ("missing_manifest", "manifest not found"),
    ("unknown_id", "sample_id 'nope' is not in the manifest"),
    ("no_report", "\"report\" must be a string"),
    ("duplicate", "duplicate sample_id"),
    ("unknown_metric", "unknown metric 'bleu5'"),
    ("two_sources", "exactly one of"),
    ("no_wordnet", "wordnet-base"),
    ("speed_without_stats", "needs per-report \"stats\""),
])
def test_bad_input_one_liners(tmp_path, capsys, monkeypatch, case, needle):
    manifest, preds, _ = write_eval_set(tmp_path, 3)
    lines = preds.read_text().splitlines()
    args = ["eval", "--predictions", str(preds), "--manifest", str(manifest), "--out", str(tmp_path / "o")]
    edit = {
        "missing_predictions": lambda: args.__setitem__(2, str(tmp_path / "nope.jsonl")),
        "missing_manifest": lambda: args.__setitem__(4, str(tmp_path / "nope.json")),
        "unknown_id": lambda: preds.write_text(lines[0] + "\n" + json.dumps({"sample_id": "nope", "report": "x"})),
        "no_report": lambda: preds.write_text(json.dumps({"sample_id": "x"})),
        "duplicate": lambda: preds.write_text(lines[0] + "\n" + lines[0] + "\n"),
        "unknown_metric": lambda: args.extend(["--metrics", "rouge_l,bleu5"]),
        "two_sources": lambda: args.extend(["--summaries", str(tmp_path)]),
        "no_wordnet": lambda: (args.extend(["--metrics", "meteor"]),
                               monkeypatch.setenv("ECHOCXR_WORDNET_DIR", str(tmp_path / "none"))),
        "speed_without_stats": lambda: (preds.write_text(json.dumps({"sample_id": "iu1", "report": "x"})),
                                        args.extend(["--metrics", "speed"])),
    }
    edit[case]()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("echocxr eval: error: ") and err.count("\n") == 1 and needle in err, err


def test_drop_empty_follows_the_official_script(tmp_path, capsys):
    manifest, preds, _ = write_eval_set(tmp_path, 3)
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    rows[1]["report"] = ""
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for flag, out in (([], "kept"), (["--drop-empty"], "dropped"), (["--protocol", "official"], "official")):
        assert main(["eval", "--predictions", str(preds), "--manifest", str(manifest), "--out", str(tmp_path / out),
                     "--metrics", "rouge_l", *(flag if out == "official" else ["--protocol", "raw", *flag])]) == 0
    kept = json.loads((tmp_path / "kept" / "summary.json").read_text())
    dropped = json.loads((tmp_path / "dropped" / "summary.json").read_text())
    assert (kept["n_samples"], kept["n_empty_reports"]) == (3, 1)
    assert (dropped["n_samples"], dropped["n_dropped_empty"]) == (2, 1)
    assert dropped["rouge_l"] == pytest.approx(kept["rouge_l"] * 3 / 2)  # the empty one scored 0
    # the full official pipeline rebuilds an empty output to "Finding:  Impression: " and scores it
    empty = [json.loads(x) for x in (tmp_path / "official" / "per_sample.jsonl").read_text().splitlines()][1]
    assert empty["scored_hypothesis"] == "Finding:  Impression: " and empty["scores"]["rouge_l"] > 0


def test_model_source_generates_then_scores(tmp_path, tiny_vl_dir, capsys):
    """`eval --model`: reports are generated by the engine (with speed stats), saved, then scored."""
    from echocxr.data.manifest import Sample, save_manifest
    from tests.conftest import random_image

    samples = []
    for i in range(3):
        p = tmp_path / f"im{i}.png"
        random_image(20 + i, 64, 64).save(p)
        samples.append(Sample(f"s{i}", [str(p)], "The heart is normal.", "No acute disease", ["x"] if i else []))
    samples.append(Sample("bad", [str(tmp_path / "missing.png")], "f", "i"))
    save_manifest(samples, tmp_path / "m.json")
    out = tmp_path / "o"
    assert main(["eval", "--model", str(tiny_vl_dir), "--manifest", str(tmp_path / "m.json"), "--out", str(out),
                 "--decoder", "onestep", "--block-length", "4", "--max-new-tokens", "8", "--gen-batch-size", "2",
                 "--metrics", "rouge_l,bleu4,speed"]) == 0
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["sample_id"] for p in preds] == ["s0", "s1", "s2", "bad"] and preds[-1]["report"] == ""
    assert all(p["stats"]["tokens"] == 8 for p in preds[:3])
    summary = json.loads((out / "summary.json").read_text())
    tokens, forwards = (sum(p["stats"][k] for p in preds[:3]) for k in ("tokens", "forwards"))
    assert summary["n_samples"] == 4 and summary["tpf"] == pytest.approx(tokens / forwards)
    assert summary["n_speed_reports"] == 3 and preds[-1]["error"].startswith("image not found")
    assert summary["device"] == "cpu" and "rouge_l" in summary


def test_summaries_are_combined_into_table_and_plot(tmp_path, capsys):
    runs = {"ar": {"tpf": 1.0, "tps": 50.0, "rouge_l": 50.0, "cider": 2.0},
            "blk8": {"tpf": 8.0, "tps": 250.0, "rouge_l": 45.0, "cider": 1.5}}
    for name, values in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({"name": name, **values}))
    table, plot = tmp_path / "t.md", tmp_path / "p.png"
    assert main(["eval", "--summaries", str(tmp_path / "ar"), str(tmp_path / "blk8"), "--table-out", str(table),
                 "--plot-out", str(plot), "--reference-row", "ar"]) == 0
    text = table.read_text()
    # summaries written before protocols existed were scored as written: the table says "raw"
    assert "| blk8 | raw | 8.00 (+700.0%) | 250.0 (+400.0%) | 45.00 (-10.0%) | 1.50 (-25.0%) |" in text
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert text.splitlines()[0] in capsys.readouterr().out


def test_torchrun_sharding_equals_one_process(tmp_path):
    pytest.importorskip("torch.distributed")
    manifest, preds, _ = write_eval_set(tmp_path / "data", 23, seed=3)
    common = ["--predictions", str(preds), "--manifest", str(manifest), "--name", "sharded",
              "--metrics", "rouge_l,bleu4,cider,finding_f1,speed", "--batch-size", "4"]
    proc = cli(*common, "--out", str(tmp_path / "two"),
               module=("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "echocxr.cli"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert main(["eval", *common, "--out", str(tmp_path / "one")]) == 0
    for name in ("summary.json", "per_sample.jsonl"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
