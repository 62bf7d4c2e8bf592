"""scripts/tie_losses.py: findings a tie-break loses or gains against the plain argmax, and where decodes part."""

from __future__ import annotations

import json
from pathlib import Path

from tests.script_modules import load_script


def write(path: Path, rows: list[tuple[str, list[str], list[str]]]) -> Path:
    path.write_text("\n".join(json.dumps({"sample_id": str(i), "hypothesis": h, "findings_pred": pred,
                                          "findings_ref": ref}) for i, (h, pred, ref) in enumerate(rows)))
    return path


def test_lost_gained_and_first_differences_by_hand(tmp_path):
    mod = load_script("tie_losses")
    plain = [("Findings: Right lower zone consolidation.", ["consolidation_right_lower"], ["consolidation_right_lower"]),
             ("Findings: The heart is enlarged.", ["cardiomegaly"], ["cardiomegaly"]),
             ("Findings: No pneumothorax.", [], ["pneumothorax_left"]),
             ("Findings: No mass.", ["edema"], [])]
    tied = [("Findings: No focal consolidation.", [], ["consolidation_right_lower"]),  # lost
            ("Findings: The cardiac silhouette is enlarged.", ["cardiomegaly"], ["cardiomegaly"]),  # rephrased
            ("Findings: There is a left pneumothorax.", ["pneumothorax_left"], ["pneumothorax_left"]),  # gained
            ("Findings: No mass.", [], [])]  # the same words: a false positive gone is neither
    out = mod.tie_losses(write(tmp_path / "a.jsonl", plain), write(tmp_path / "b.jsonl", tied))
    assert out["studies"] == 4 and out["reports_differ"] == 3
    assert (out["lost"], out["gained"]) == (1, 1)
    assert out["lost_by_finding"] == {"consolidation_right_lower": 1}
    assert out["gained_by_finding"] == {"pneumothorax_left": 1}
    assert sorted(map(tuple, out["first_differences"])) == [("Findings:", "No", "There", 1),
                                                            ("Findings:", "Right", "No", 1),
                                                            ("Findings: The", "heart", "cardiac", 1)]
