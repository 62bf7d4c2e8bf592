"""`echocxr eval --protocol official|raw`: the official ECHO parse-and-rebuild, its reference strings and
RaTE/SemScore inputs, language from the record or the official CJK rule, K reports per study."""

from __future__ import annotations

import json
import pickle
from collections import defaultdict

import pytest

from echocxr.cli import main
from echocxr.data.phantom import phantom_reports
from echocxr.metrics import get_metric
from echocxr.metrics.base import MetricResult
from echocxr.metrics.k_reports import aggregate_k
from echocxr.metrics.protocol import (
    hypothesis,
    official_hypothesis,
    official_k_hypothesis,
    official_reference,
    parse_k_sections,
    parse_sections,
)
from tests.conftest_metrics import iu_pairs

# ------------------------------------------------------------------------------------------ parsing


def test_parse_follows_the_official_order():
    assert parse_sections("Findings:  Heart ok.\n IMPRESSION: Normal. ") == ("Heart ok.", "Normal.")
    assert parse_sections("所见：心影正常。 结论：未见异常。") == ("心影正常。", "未见异常。")
    # tags win, each on its own; the header parse needs both headers
    assert parse_sections("<findings> a </findings> Findings: x Impression: y") == ("a", "")
    assert parse_sections("Findings: only findings") == ("", "")
    assert parse_sections("Finding: singular header Impression: y") == ("", "")  # the regex wants "Findings:"
    # the K rule takes tags only when both are there
    assert parse_k_sections("<findings> a </findings> Findings: x Impression: y") == ("x", "y")


def test_official_hypothesis_rebuilds_or_keeps_a_failed_parse():
    h = official_hypothesis("Findings: The heart is normal. Impression: No acute disease.", "en")
    assert h.text == "Finding: The heart is normal. Impression: No acute disease."
    assert h.semantic == "Findings: The heart is normal. Impression: No acute disease." and not h.parse_failed
    failed = official_hypothesis("The heart is normal.", "en")
    assert (failed.text, failed.semantic, failed.parse_failed) == ("The heart is normal.",) * 2 + (True,)
    empty = official_hypothesis("", "en")
    assert (empty.text, empty.parse_failed) == ("Finding:  Impression: ", False)  # scored, never skipped
    assert official_k_hypothesis("no headers at all", "en").text == "Finding:  Impression: "
    zh = official_hypothesis("所见：心影正常。 结论：未见异常。", "zh")
    assert zh.text == "Finding: 心影正常。 Impression: 未见异常。" and zh.semantic == "所见：心影正常。 结论：未见异常。"
    assert hypothesis("as written", "en", "raw").text == "as written"


def test_official_references():
    en = official_reference("Heart normal.", "No disease", "en")
    assert (en.text, en.semantic) == ("Findings: Heart normal. Impression: No disease.",
                                      "Findings: Heart normal. Impression: No disease")
    assert official_reference("心影正常。", "未见异常。", "zh").text == "所见：心影正常。 结论：未见异常。"


# -------------------------------------------------------------------------------- end to end, real text

def _run(tmp_path, name, manifest, preds, *extra):
    mpath, ppath = tmp_path / f"{name}_m.json", tmp_path / f"{name}_p.jsonl"
    mpath.write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    ppath.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preds), encoding="utf-8")
    out = tmp_path / name
    assert main(["eval", "--predictions", str(ppath), "--manifest", str(mpath), "--out", str(out), *extra]) == 0
    rows = [json.loads(x) for x in (out / "per_sample.jsonl").read_text(encoding="utf-8").splitlines()]
    return json.loads((out / "summary.json").read_text(encoding="utf-8")), rows


def test_official_protocol_scores_the_rebuilt_text_of_real_reports(tmp_path):
    rouge = pytest.importorskip("rouge")
    pairs = iu_pairs(30)
    manifest = [{"sample_id": k, "images": [], "ground_truth": {"findings": f, "impression": i}, "language": "en"}
                for k, f, i in pairs]
    # each report is written as a model would, with the next study's text half of the time
    preds = [{"sample_id": k, "report": f"Findings: {pairs[(n + n % 2) % 30][1]} Impression: {i}"}
             for n, (k, _, i) in enumerate(pairs)]
    args = ("--metrics", "rouge_1,rouge_2,rouge_l")
    official, rows = _run(tmp_path, "official", manifest, preds, *args)
    raw, raw_rows = _run(tmp_path, "raw", manifest, preds, *args, "--protocol", "raw")
    assert (official["protocol"], raw["protocol"]) == ("official", "raw")
    scorer = rouge.Rouge()
    for row, raw_row, (_, f, i) in zip(rows, raw_rows, pairs, strict=True):
        ref = f"Findings: {f} Impression: {i}.".lower()
        assert row["scored_hypothesis"] == row["hypothesis"].replace("Findings:", "Finding:", 1)
        for key in ("rouge-1", "rouge-2", "rouge-l"):
            want = scorer.get_scores(row["scored_hypothesis"].lower(), ref)[0][key]["f"]
            assert row["scores"][key.replace("-", "_")] == pytest.approx(100 * want, abs=1e-6)
            want_raw = scorer.get_scores(row["hypothesis"].lower(), ref)[0][key]["f"]
            assert raw_row["scores"][key.replace("-", "_")] == pytest.approx(100 * want_raw, abs=1e-6)
    assert official["rouge_l"] < raw["rouge_l"]  # "Finding:" never matches the reference's "Findings:"


def test_chinese_official_json_without_language_is_scored_as_chinese(tmp_path):
    rouge_chinese = pytest.importorskip("rouge_chinese")
    from echocxr.metrics.text import prepare_hypothesis, rouge_text

    reports = [r for r in phantom_reports(5, 12, languages=("zh",)) if r.variant == "normalised"]
    # the official demo json shape: no "language" field
    manifest = [{"sample_id": f"z{n}", "images": [], "ground_truth": {"findings": r.findings, "impression": r.impression}}
                for n, r in enumerate(reports)]
    preds = [{"sample_id": f"z{n}", "report": f"所见：{reports[(n + 1) % 12].findings} 结论：{r.impression}"}
             for n, r in enumerate(reports)]
    preds[0]["report"] = "Findings: The heart is normal. Impression: Normal chest."  # an English answer
    summary, rows = _run(tmp_path, "zh", manifest, preds, "--metrics", "rouge_l")
    assert summary["languages"] == {"zh": 12} and summary["n_language_mismatch"] == 1
    assert any("translates" in note for note in summary["protocol_notes"])
    scorer = rouge_chinese.Rouge()
    for row, r in zip(rows, reports, strict=True):
        hyp = rouge_text(prepare_hypothesis(row["scored_hypothesis"], "zh"), "zh")
        want = scorer.get_scores(hyp, rouge_text(r.reference, "zh"))[0]["rouge-l"]["f"]
        assert row["scores"]["rouge_l"] == pytest.approx(100 * want, abs=1e-6)
    assert summary["rouge_l"] > 40  # scored as English it would be about 0


def test_help_says_which_protocol_reproduces_the_paper(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--protocol {official,raw}" in text and "official (default)" in text
    assert "reproduces the paper's tables" in text


def test_a_language_outside_en_zh_is_a_one_line_error(tmp_path, capsys):
    manifest = [{"sample_id": "a", "images": [], "ground_truth": {"findings": "x", "impression": "y"}, "language": "fr"}]
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    (tmp_path / "p.jsonl").write_text('{"sample_id": "a", "report": "x"}\n')
    assert main(["eval", "--predictions", str(tmp_path / "p.jsonl"), "--manifest", str(tmp_path / "m.json"),
                 "--out", str(tmp_path / "o"), "--metrics", "rouge_l"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'fr'" in err


# ------------------------------------------------------------------------------------------ K reports

class _Fake:
    def __init__(self, name, sharded=True):
        self.name, self.sharded, self.percent = name, sharded, True

    def aggregate(self, xs):
        vals = [x for x in xs if x is not None]
        return sum(vals) / len(vals)


def test_k_aggregation_max_mean_and_ppl_min():
    groups = [0, 0, 1, 1, 1]
    res = [MetricResult("rouge_l", [0.2, 0.6, 0.1, 0.3, None], None),
           MetricResult("ppl", [5.0, 3.0, 9.0, 7.0, 8.0], None)]
    got = aggregate_k(res, [_Fake("rouge_l"), _Fake("ppl")], groups, 2, "max")
    assert got[0].per_sample == [0.6, 0.3] and got[0].corpus == pytest.approx(0.45)
    assert got[1].per_sample == [3.0, 7.0]  # lower is better: "max" keeps the best
    mean = aggregate_k(res, [_Fake("rouge_l"), _Fake("ppl")], groups, 2, "mean")
    assert mean[0].per_sample == pytest.approx([0.4, 0.2]) and mean[1].per_sample == pytest.approx([4.0, 8.0])
    assert got[0].sample_extra["rouge_l_per_report"] == [[0.2, 0.6], [0.1, 0.3, None]]


def test_k_reports_per_study_end_to_end(tmp_path):
    pairs = iu_pairs(6)
    manifest = [{"sample_id": k, "images": [], "ground_truth": {"findings": f, "impression": i}, "language": "en"}
                for k, f, i in pairs]
    preds = [{"sample_id": k, "reports": [f"Findings: {f} Impression: {i}", f"Findings: {pairs[0][1]} Impression: x",
                                          "no headers"]} for k, f, i in pairs]
    for mode in ("max", "mean"):
        summary, rows = _run(tmp_path, mode, manifest, preds, "--metrics", "rouge_l,cider", "--k-aggregate", mode)
        assert summary["k_aggregate"] == mode and summary["n_reports"] == 18 and summary["n_samples"] == 6
        for row in rows:
            per = row["scores_per_report"]["rouge_l"]
            assert len(per) == 3 and row["scored_hypothesis"][2] == "Finding:  Impression: "
            want = max(per) if mode == "max" else sum(per) / 3
            assert row["scores"]["rouge_l"] == pytest.approx(want)
        assert summary["rouge_l"] == pytest.approx(sum(r["scores"]["rouge_l"] for r in rows) / 6)


# ----------------------------------------------------------------------------------------------- CIDEr

def test_cider_official_tokens_drop_punctuation_raw_tokens_keep_it():
    hyp, ref = ["Heart normal, lungs clear."], ["heart normal. lungs clear."]
    official = get_metric("cider").score(hyp * 2 + ["x y"], ref * 2 + ["other text"], "en")
    raw = get_metric("cider", protocol="raw").score(hyp * 2 + ["x y"], ref * 2 + ["other text"], "en")
    assert official.per_sample[0] == pytest.approx(10.0, abs=1e-9)  # punctuation gone: the same 4 words
    assert raw.per_sample[0] < official.per_sample[0]  # "normal," and "clear." never match
    assert "PTB" in official.info["tokens"] and raw.info["tokens"] == "whitespace"


def test_cider_document_frequency_tables(tmp_path):
    hyps, refs = ["heart normal", "lungs clear"], ["heart normal", "lungs are clear"]
    corpus = get_metric("cider").score(hyps, refs, "en")
    df = defaultdict(float)
    for gram in [("heart",), ("normal",), ("heart", "normal"), ("lungs",), ("are",), ("clear",),
                 ("lungs", "are"), ("are", "clear"), ("lungs", "are", "clear")]:
        df[gram] += 1.0
    table = {"ref_len": __import__("math").log(2.0), "df": df}
    (tmp_path / "t.p").write_bytes(pickle.dumps(table))
    from_pickle = get_metric("cider", cider_df=str(tmp_path / "t.p")).score(hyps, refs, "en")
    assert from_pickle.per_sample == pytest.approx(corpus.per_sample)  # the same table as the corpus one
    (tmp_path / "t.json").write_text(json.dumps({"ref_len": 5.0, "df": [[["lungs"], 100]]}))  # a common word
    other = get_metric("cider", cider_df=str(tmp_path / "t.json")).score(hyps, refs, "en")
    assert other.per_sample != pytest.approx(corpus.per_sample) and "t.json" in other.info["document_frequencies"]


def test_a_df_table_that_would_run_code_is_refused(tmp_path):
    from echocxr.errors import UserError

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.p").write_bytes(pickle.dumps({"ref_len": 1.0, "df": Evil()}))
    with pytest.raises(UserError, match="not allowed"):
        get_metric("cider", cider_df=str(tmp_path / "evil.p"))
    with pytest.raises(UserError, match="not found"):
        get_metric("cider", cider_df=str(tmp_path / "missing.p"))
