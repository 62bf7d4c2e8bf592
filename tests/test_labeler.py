"""The rule labeler: exact on generated CXR-Phantom reports; negation and laterality on hand-written text."""

from __future__ import annotations

import pytest

from echocxr.data.labeler import label_report
from echocxr.data.phantom import FINDING_LABELS, phantom_reports


def test_exact_on_generated_reports_both_languages_both_variants():
    reports = list(phantom_reports(seed=11, n=520))  # x2 languages x2 variants = 2,080 reports
    assert len(reports) >= 2000
    assert {(r.language, r.variant) for r in reports} == {
        ("en", "normalised"), ("en", "raw"), ("zh", "normalised"), ("zh", "raw")}
    assert sum(bool(r.case.labels) for r in reports) > 1000
    wrong = [(r.language, r.variant, r.case.labels, label_report(r.reference, r.language), r.reference)
             for r in reports if label_report(r.reference, r.language) != r.case.labels]
    assert not wrong, wrong[:3]


def test_findings_and_impression_each_carry_the_labels_of_normalised_reports():
    for r in phantom_reports(seed=12, n=100, variants=("normalised",)):
        non_device = [lab for lab in r.case.labels if not lab.startswith("device_")]
        assert label_report(r.findings, r.language) == r.case.labels
        assert label_report(r.impression, r.language) == non_device


@pytest.mark.parametrize("text, expected", [
    ("No pneumothorax or pleural effusion.", []),
    ("The lungs are clear without consolidation, effusion or pneumothorax.", []),
    ("Cardiomegaly.", ["cardiomegaly"]),
    ("The heart is not enlarged.", []),
    ("Heart size mildly enlarged.", ["cardiomegaly"]),
    ("Cardiomegaly without pulmonary edema.", ["cardiomegaly"]),
    ("Small left pleural effusion. No pneumothorax.", ["effusion_left_small"]),
    ("A large pleural effusion is present on the right.", ["effusion_right_large"]),
    ("Moderate bilateral pleural effusions.", ["effusion_left_large", "effusion_right_large"]),
    ("Pleural effusion.", ["effusion_left_small", "effusion_right_small"]),  # no side, no size: defaults
    ("Pericardial effusion.", []),
    ("Right upper lobe pneumonia, but no effusion.", ["consolidation_right_upper"]),
    ("Lingular consolidation.", ["consolidation_left_middle"]),
    ("Right lower lobe airspace disease and small effusion.", ["consolidation_right_lower", "effusion_right_small"]),
    ("Bibasilar atelectasis.", ["atelectasis_left", "atelectasis_right"]),
    ("A 2 cm nodule in the left mid lung.", ["nodule_left_middle"]),
    ("Anterior mediastinal mass.", []),
    ("Left hilar enlargement.", ["hilar_enlargement_left"]),
    ("The hila are not enlarged.", []),
    ("Pneumothorax is not seen.", []),
    ("No change in the small right pneumothorax.", ["pneumothorax_right"]),
    ("The endotracheal tube has been removed. Nasogastric tube in the stomach.", ["device_ngt"]),
    ("Left subclavian central venous catheter tip in the SVC. Dual-lead pacemaker.",
     ["device_central_line", "device_pacemaker"]),
])
def test_english_negation_and_laterality(text, expected):
    assert label_report(text, "en") == expected


@pytest.mark.parametrize("text, expected", [
    ("双肺未见实变，未见胸腔积液及气胸。", []),
    ("心影增大。", ["cardiomegaly"]),
    ("心影不大，心影大小正常。", []),
    ("右侧少量胸腔积液，未见气胸。", ["effusion_right_small"]),
    ("双侧大量胸腔积液。", ["effusion_left_large", "effusion_right_large"]),
    ("左肺上叶见斑片影。", ["consolidation_left_upper"]),
    ("右肺中野结节。", ["nodule_right_middle"]),
    ("左侧气胸；右肺下叶肺不张。", ["atelectasis_right", "pneumothorax_left"]),
    ("心包积液。", []),
    ("气管插管在位，胃管末端位于胃内。", ["device_ett", "device_ngt"]),
    ("未见肺水肿。", []),
])
def test_chinese_negation_and_laterality(text, expected):
    assert label_report(text, "zh") == expected


def test_output_is_sorted_vocabulary_and_bad_language_is_refused():
    labels = label_report("Small right pleural effusion. Cardiomegaly. Pacemaker.", "en")
    assert labels == sorted(labels) and set(labels) <= set(FINDING_LABELS)
    with pytest.raises(ValueError):
        label_report("text", "fr")
