"""Clinical finding F1 (hand-made label sets), the rule-based CheXpert-style labeler on real IU X-ray
reports, speed aggregation, and the table/plot outputs."""

from __future__ import annotations

import json
import re

import pytest

from echocxr.errors import UserError
from echocxr.metrics.chexpert_labeler import OBSERVATIONS, chexpert_findings, label_chexpert, mentions
from echocxr.metrics.finding_f1 import FindingF1, example_f1, label_set_scores
from echocxr.metrics.report import markdown_table, plot_quality_vs_tpf
from echocxr.metrics.speed import aggregate_speed, percentile
from tests.conftest_metrics import iu_reports

# ------------------------------------------------------------------------------------------ finding F1


def test_label_set_scores_hand_computed():
    preds = [{"A", "B"}, {"A"}, set(), {"C"}]
    trues = [{"A"}, {"A", "B"}, set(), {"B"}]
    s = label_set_scores(preds, trues)
    # A: tp 2; B: fp 1, fn 2; C: fp 1 -> micro tp 2, fp 2, fn 2
    assert (s["precision_micro"], s["recall_micro"], s["f1_micro"]) == pytest.approx((0.5, 0.5, 0.5))
    # per label F1: A 1, B 0, C 0 (no support) -> macro 1/3
    assert (s["precision_macro"], s["recall_macro"], s["f1_macro"]) == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert [example_f1(p, t) for p, t in zip(preds, trues, strict=True)] == pytest.approx([2 / 3, 2 / 3, 1.0, 0.0])
    # a fixed vocabulary counts labels nobody used (F1 0) in the macro mean
    assert label_set_scores(preds, trues, labels=["A", "B", "C", "D"])["f1_macro"] == pytest.approx(0.25)


def test_finding_f1_metric_with_a_labeler_callable():
    def labeler(text: str, language: str) -> list[str]:
        return [x for x in text.split(",") if x]

    metric = FindingF1(labeler=labeler)
    result = metric.score(["A,B", "A", "", "C"], ["A", "A,B", "", "B"], "en")
    assert result.corpus == pytest.approx(0.5) and result.extra["finding_f1_macro"] == pytest.approx(1 / 3)
    assert result.sample_extra["findings_pred"][0] == ["A", "B"]
    # ground-truth sets from the manifest replace the labelled references
    with_gt = metric.score(["A,B", "A"], ["ignored", "ignored"], "en", ref_labels=[["A", "B"], ["A"]])
    assert with_gt.corpus == 1.0 and with_gt.info["reference_sets"] == "manifest labels"


def test_finding_f1_with_the_phantom_labeler_and_manifest_labels():
    generate = pytest.importorskip("echocxr.data.phantom.generate")
    pytest.importorskip("echocxr.data.labeler")
    reports = list(generate.phantom_reports(0, 12, variants=("normalised",)))  # EN and ZH
    refs = [r.reference for r in reports]
    langs = [r.language for r in reports]
    truth = [r.case.labels for r in reports]
    exact = FindingF1().score(refs, refs, langs, ref_labels=truth)  # auto -> phantom with manifest labels
    assert exact.info["labeler"] == "phantom" and exact.corpus == 1.0 and exact.extra["finding_f1_macro"] == 1.0
    shifted = FindingF1().score(refs[2:] + refs[:2], refs, langs[2:] + langs[:2], ref_labels=truth)
    assert shifted.corpus < 1.0
    # the labeler's sets on the hypotheses are what the metric compared
    assert shifted.sample_extra["findings_ref"] == [sorted(set(t)) for t in truth]


def test_chexpert_labeler_refuses_chinese():
    with pytest.raises(UserError, match="English"):
        FindingF1(labeler="chexpert").score(["心影增大。"], ["心影增大。"], "zh")


# ----------------------------------------------------------------------------- rule-based labeler

def test_labeler_cues_on_written_sentences():
    lab = label_chexpert("Possible left basilar infiltrate, no pneumothorax. Mild cardiomegaly. "
                         "Pneumonia cannot be excluded. Heart size is normal without effusion.")
    assert lab["Lung Opacity"] == -1 and lab["Pneumothorax"] == 0 and lab["Cardiomegaly"] == 1
    assert lab["Pneumonia"] == -1 and lab["Pleural Effusion"] == 0 and lab["No Finding"] is None
    assert label_chexpert("No pneumothorax, but there is a small right effusion.")["Pleural Effusion"] == 1
    assert label_chexpert("No change in the small calcified nodule.")["Lung Lesion"] == 1
    assert label_chexpert("Left effusion versus scarring.")["Pleural Effusion"] == -1
    assert label_chexpert("The effusion has resolved.")["Pleural Effusion"] == 0
    assert label_chexpert("Interval removal of the chest tube.")["Support Devices"] == 0
    assert chexpert_findings("Lungs are clear.") == ["No Finding"]
    assert chexpert_findings("Borderline cardiomegaly.", uncertain_as_positive=True) == ["Cardiomegaly"]


# report id in the IU X-ray collection -> expected labels (subset); texts are read from torchxrayvision
IU_EXPECTED = {
    "1": {"No Finding": 1, "Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0, "Edema": 0, "Consolidation": 0,
          "Pleural Effusion": 0, "Pneumothorax": 0},
    "3": {"No Finding": 1, "Fracture": 0, "Pneumothorax": 0, "Pleural Effusion": 0},
    "7": {"No Finding": None, "Atelectasis": 1, "Consolidation": 0, "Pleural Effusion": 0, "Cardiomegaly": 0},
    "13": {"No Finding": None, "Cardiomegaly": -1, "Pleural Effusion": 0, "Pneumothorax": 0},
    "153": {"Support Devices": 1, "Pleural Effusion": 1, "Cardiomegaly": 0},
    "465": {"Pneumothorax": 1, "Pleural Effusion": 1, "Lung Opacity": 1, "Atelectasis": 1},
    "498": {"Lung Lesion": 1, "Pneumothorax": 0, "Pleural Effusion": 0, "Cardiomegaly": 0},
    "895": {"Fracture": 1, "Pleural Effusion": 0, "Consolidation": 0},
    "1687": {"No Finding": 1, "Support Devices": 1, "Consolidation": 0},
    "1909": {"Lung Opacity": 1, "Consolidation": 0, "Atelectasis": 0},
    "2556": {"Support Devices": 1, "Cardiomegaly": 1, "Pleural Effusion": 1, "Atelectasis": 1, "Edema": 0,
             "Pneumothorax": 0},
}


def test_labeler_on_real_iu_xray_reports():
    reports = iu_reports()
    for rid, expected in IU_EXPECTED.items():
        findings, impression = reports[rid]
        got = label_chexpert(f"Findings: {findings} Impression: {impression}.")
        assert set(got) == set(OBSERVATIONS)
        assert {k: got[k] for k in expected} == expected, rid


def test_labeler_over_the_whole_iu_collection():
    reports = [f"{f} {i}".strip() for f, i in iu_reports().values()]
    reports = [r for r in reports if r]
    assert len(reports) > 3500
    no_finding = sum(label_chexpert(r)["No Finding"] == 1 for r in reports) / len(reports)
    assert 0.5 < no_finding < 0.8  # IU X-ray is mostly normal studies
    plain_negatives = 0
    for r in reports[:1500]:
        for m in mentions(r):
            if re.fullmatch(r"(there is )?no (pneumothorax|pleural effusion)\.?", m.clause):
                assert m.status == 0, m
                plain_negatives += 1
    assert plain_negatives > 100


# ------------------------------------------------------------------------------------------- speed

def test_speed_aggregation_hand_computed():
    stats = [{"tokens": 8, "forwards": 2, "prefill_s": 0.1, "decode_s": 0.3, "device": "cpu", "dtype": "float32"},
             {"tokens": 4, "forwards": 1, "prefill_s": 0.1, "decode_s": 0.1, "device": "cpu"},
             {"tokens": 12, "forwards": 3, "prefill_s": 0.2, "decode_s": 0.4}]
    s = aggregate_speed(stats)
    assert s["tpf"] == pytest.approx(4.0) and s["tps"] == pytest.approx(30.0)
    assert s["tps_with_prefill"] == pytest.approx(20.0) and s["forwards_per_report"] == pytest.approx(2.0)
    # latencies 0.4, 0.2, 0.6 -> linear percentiles
    assert (s["latency_p50_s"], s["latency_p90_s"], s["latency_p99_s"]) == pytest.approx((0.4, 0.56, 0.596))
    assert s["device"] == "cpu" and s["dtype"] == "float32"
    assert aggregate_speed(stats, device="cuda:0")["device"] == "cuda:0"
    np = pytest.importorskip("numpy")
    xs = [0.3, 1.7, 0.2, 5.0, 2.2]
    for q in (50, 90, 99):
        assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))
    with pytest.raises(ValueError, match="forwards"):
        aggregate_speed([{"tokens": 3, "prefill_s": 0, "decode_s": 1}])


# ------------------------------------------------------------------------------------- table, plot

SUMMARIES = [
    {"name": "ECHO-AR", "tpf": 1.0, "tps": 53.7, "rouge_l": 56.89, "ratescore": 59.18, "semscore": 52.94, "ppl": 20.0},
    {"name": "ECHO blk8", "tpf": 8.0, "tps": 274.2, "rouge_l": 55.21, "ratescore": 56.85, "semscore": 51.40},
    {"name": "native one-step", "tpf": 4.0, "rouge_l": 41.39, "ratescore": 56.39, "semscore": 39.17, "ppl": 25.0},
]


def test_markdown_table_relative_to_a_reference_row():
    table = markdown_table(SUMMARIES, reference_row="ECHO-AR")
    lines = table.splitlines()
    assert lines[0] == "| model | protocol | TPF | TPS | ROUGE-L | RaTE | SemScore | PPL |"
    assert lines[2].startswith("| ECHO-AR | raw | 1.00 | 53.7 | 56.89 | 59.18 |")  # no protocol field: raw
    assert "55.21 (-3.0%)" in lines[3] and "8.00 (+700.0%)" in lines[3] and lines[3].endswith("| - |")
    assert "41.39 (-27.2%)" in lines[4] and "25.00 (+25.0%)" in lines[4]
    assert "relative to ECHO-AR" in table
    with pytest.raises(UserError, match="not among"):
        markdown_table(SUMMARIES, reference_row="nope")


def test_plot_quality_vs_tpf(tmp_path):
    path = plot_quality_vs_tpf(SUMMARIES, tmp_path / "plot.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    with pytest.raises(UserError, match="TPF"):
        plot_quality_vs_tpf([{"name": "x", "rouge_l": 1.0}], tmp_path / "none.png")
    json.dumps(SUMMARIES)  # summaries stay plain JSON
