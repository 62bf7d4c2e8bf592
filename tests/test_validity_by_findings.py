"""scripts/validity_by_findings.py: report validity binned by the findings a phantom study has."""

from __future__ import annotations

import json

from echocxr.data.phantom.generate import phantom_reports
from tests.script_modules import load_script


def test_bins_count_valid_reports_by_findings(tmp_path):
    mod = load_script("validity_by_findings")
    samples, preds = [], []
    reports = phantom_reports(0, 12, languages=("en",), variants=("normalised",))
    for i, r in enumerate(reports):
        report, sid = r.reference, f"s{i}"
        samples.append({"sample_id": sid, "labels": r.case.labels, "language": "en"})
        broken = i % 2 == 1  # every other report gets a doubled word: not valid
        preds.append({"sample_id": sid, "report": report.replace(" is ", " is is ", 1) if broken else report})
    (tmp_path / "m.json").write_text(json.dumps(samples))
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(p) for p in preds))
    out = mod.validity_by_findings(tmp_path / "m.json", tmp_path / "p.jsonl")["report_validity_by_findings"]
    assert sum(b["studies"] for b in out.values()) == 12
    assert sum(b["valid"] for b in out.values()) == 6
    for key, b in out.items():
        n = [len(s["labels"]) for s in samples]
        expected = sum(1 for i, k in enumerate(n) if (str(k) if k < 3 else "3+") == key)
        assert b["studies"] == expected and b["percent"] == round(100 * b["valid"] / b["studies"], 1)
