"""scripts/first_divergence.py: the first sentence where a student departs from its teacher, classed."""

from __future__ import annotations

import json
from pathlib import Path

from tests.script_modules import load_script

HEAD = "Findings: No lines or tubes are seen. "
TAIL = " Impression: Normal chest radiograph."


def write(path: Path, reports: list[tuple[str, bool]]) -> Path:
    path.write_text("\n".join(json.dumps({"sample_id": str(i), "hypothesis": r, "coherence": {"valid": v}})
                              for i, (r, v) in enumerate(reports)))
    return path


def test_classes_by_hand(tmp_path):
    mod = load_script("first_divergence")
    teacher = [HEAD + "No evidence of pneumothorax." + TAIL] * 4
    student = [(teacher[0], True),
               (HEAD + "No pneumothorax is seen." + TAIL, True),  # the same statement, phrased otherwise
               (HEAD + "There is a left pneumothorax." + TAIL, False),  # another finding
               (HEAD + "No evidence of seen." + TAIL, False)]  # a mixture of two phrasings
    out = mod.first_divergence("en", write(tmp_path / "t.jsonl", [(r, True) for r in teacher]),
                               write(tmp_path / "s.jsonl", student))
    assert out == {"language": "en", "studies": 4, "content/student_invalid": 1, "invalid/student_invalid": 1,
                   "rephrase/student_valid": 1, "same": 1}


def test_trajectory_phrasing_counts_sentences_phrased_as_the_reference():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))  # its sibling import
    mod = load_script("trajectory_phrasing")
    refs = {"a": HEAD + "No evidence of pneumothorax." + TAIL, "b": HEAD + "No pneumothorax is seen." + TAIL}
    texts = {"a": refs["a"], "b": HEAD + "No evidence of pneumothorax." + TAIL}
    # a: 3 of 3 sentences as its reference; b: the header sentence and the impression, not the pneumothorax
    assert mod.as_reference_share("en", texts, refs) == round(100 * 5 / 6, 1)
