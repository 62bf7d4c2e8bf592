"""scripts/phrasing_consistency.py: the share of each statement's sentences in its most frequent phrasing."""

from __future__ import annotations

import json
from pathlib import Path

from tests.script_modules import load_script


def write(path: Path, reports: list[str]) -> Path:
    path.write_text("\n".join(json.dumps({"sample_id": str(i), "report": r}) for i, r in enumerate(reports)))
    return path


def test_agreement_by_hand(tmp_path):
    mod = load_script("phrasing_consistency")
    a = "Findings: No evidence of pneumothorax. Impression: Normal chest radiograph."
    b = "Findings: No pneumothorax is seen. Impression: Normal chest radiograph."
    broken = "Findings: No No pneumothorax seen. Impression: Normal chest radiograph."
    # pneumothorax: 2 of 3 in one phrasing; impression: 3 of 3; the broken sentence is not counted
    out = mod.phrasing_consistency("en", write(tmp_path / "p.jsonl", [a, a, b, broken]))
    assert (out["sentences"], out["statements"], out["distinct_phrasings"]) == (7, 2, 3)
    assert out["agreement"] == round(100 * (2 + 4) / 7, 1)
    same = mod.phrasing_consistency("en", write(tmp_path / "q.jsonl", [a, a, a]))
    assert same["agreement"] == 100.0 and same["distinct_phrasings"] == 2


def test_agreement_splits_normal_and_finding_statements(tmp_path):
    mod = load_script("phrasing_consistency")
    a = "Findings: No evidence of pneumothorax. Impression: Normal chest radiograph."
    b = "Findings: No pneumothorax is seen. Impression: Normal chest radiograph."
    left = "Findings: There is a left pneumothorax. Impression: Left-sided pneumothorax."
    other = "Findings: A left-sided pneumothorax is present. Impression: Left-sided pneumothorax."
    out = mod.phrasing_consistency("en", write(tmp_path / "p.jsonl", [a, a, b, left, other]))
    assert out["agreement_normal"] == round(100 * (2 + 3) / 6, 1)  # no pneumothorax 2 of 3, impression 3 of 3
    assert out["agreement_findings"] == 75.0  # the left pneumothorax 1 of 2, its impression 2 of 2
    assert out["agreement"] == round(100 * (5 + 3) / 10, 1)
    only_normal = mod.phrasing_consistency("en", write(tmp_path / "q.jsonl", [a, b]))
    assert only_normal["agreement_findings"] is None
